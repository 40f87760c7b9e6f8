"""vae_fused benchmark suite: fused vs eager vs torch.compile vs the memory
floor. Run `python -m benchmarks --quick` (see --help)."""
