"""vae_fused benchmark suite: the fused VAE loss against the pytorch/examples
loss (eager), the same loss under torch.compile, and the memory-bandwidth
floor; and the loss family (latent diffusion, VDVAE prior KL) against the same
losses written in plain PyTorch. Run `python -m benchmarks --quick`, or see
`python -m benchmarks --help`.

Modules: __main__ (the command line), plan (which cases run), cases (shapes,
candidates, passes, floor), family (the latent-diffusion and VDVAE losses),
runner (measuring a case), timing (how each figure is measured), machine (the
CPU, the ISAs, other load), report/ (stdout, CSV, markdown, plots), check
(`python -m benchmarks.check`: every candidate computes eager's loss and
gradients, float64).
"""
import sys
from pathlib import Path

# The end-to-end row's model is examples/models.py: the repository root must be
# importable (it is when run from there, `python -m benchmarks`, or by run.py).
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
