"""vae_fused benchmark suite: the fused VAE loss against the pytorch/examples
loss (eager), the same loss under torch.compile, and the memory-bandwidth
floor. Run `python -m benchmarks --quick`, or see `python -m benchmarks --help`.

Modules: cases (shapes, candidates, passes, floor), timing (how each figure is
measured, the machine), report (stdout table, CSV, markdown, plots).
"""
