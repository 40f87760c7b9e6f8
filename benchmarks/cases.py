"""What is measured: the shapes, the candidates (loss functions), the two
passes a training loop runs, the memory-bandwidth floor and the end-to-end
training step. The latent-diffusion and VDVAE losses are in family.py."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

import vae_fused
from benchmarks import family
from examples.models import ExampleVAE


# ---------------------------------------------------------------------------
# Shapes

@dataclass(frozen=True)
class Shape:
    name: str
    data: tuple    # recon_x / x shape (B, ...)
    latent: tuple  # mu / logvar shape (B, L)
    binary: bool = False  # targets x exactly 0 or 1 (binarized images), else in [0, 1]

    @property
    def elements(self) -> int:
        return math.prod(self.data)

    @property
    def latent_elements(self) -> int:
        return math.prod(self.latent)


MNIST = Shape("MNIST 128x784", (128, 784), (128, 20))
CIFAR = Shape("CIFAR 256x3x32x32", (256, 3, 32, 32), (256, 128))
CELEBA = Shape("CelebA 64x3x64x64", (64, 3, 64, 64), (64, 128))
M3 = Shape("3.1M 64x3x128x128", (64, 3, 128, 128), (64, 512))
M12 = Shape("12.6M 64x3x256x256", (64, 3, 256, 256), (64, 512))

REALISTIC = [MNIST, CIFAR, CELEBA, M3, M12]
QUICK = [MNIST, M3, M12]
# Binarized MNIST (targets exactly 0/1), beside the same shapes with continuous targets.
MNIST_BINARY = Shape("MNIST 128x784 binary", MNIST.data, MNIST.latent, binary=True)
M3_BINARY = Shape("3.1M 64x3x128x128 binary", M3.data, M3.latent, binary=True)
BINARY = [MNIST_BINARY, M3_BINARY]
BINARY_OF = {MNIST_BINARY.name: MNIST.name, M3_BINARY.name: M3.name}
# Binary against continuous targets, and the fused op against eager at the
# host-overhead size, are also timed in alternation, this many rounds
# (runner.run_paired): the ratios those targets check.
PAIRED_ROUNDS = 5


def paired_candidate(round_index: int, candidate: str = "fused") -> str:
    """The candidate name of a timing in round i (1-based) of an alternated
    measurement: the fused op's (binary/continuous), or eager's (host overhead)."""
    return f"{candidate}, paired round {round_index}"


def is_paired(candidate: str) -> bool:
    return ", paired round " in candidate
# A tiny batch: what a call costs the host (Python, dispatch, autograd), in µs.
HOST = Shape("host overhead 8x16", (8, 16), (8, 8))
# The loss family (family.py): a Stable-Diffusion-VAE-like size, and a VDVAE
# layer's KL against a learned prior (L = 16x32x32 per sample) with a small image.
LDM = Shape("latent diffusion 8x3x256x256", (8, 3, 256, 256), (8, 4, 32, 32))
VDVAE = Shape("VDVAE prior KL 32x16x32x32", (32, 3, 32, 32), (32, 16, 32, 32))
FAMILY = [(LDM, "ldm"), (VDVAE, "vdvae")]
NAMED = REALISTIC + BINARY + [HOST, LDM, VDVAE]
# The targets are stated at these two (CPU, float32, BCE).
TARGET_SHAPES = [M3, M12]
BIG = M12  # where the report breaks the time down

SWEEP_BATCH = 64
QUICK_SWEEP = list(range(14, 25, 2))  # 2^14 .. 2^24 elements
FULL_SWEEP = list(range(12, 27, 2))   # 2^12 .. 2^26 elements


def sweep_shape(elements: int) -> Shape:
    """A batch of 64 rows (1 when the count is not a multiple of 64) with 128
    latents: the size sweep varies only the reconstruction size."""
    batch = SWEEP_BATCH if elements % SWEEP_BATCH == 0 else 1
    name = f"2^{elements.bit_length() - 1}" if elements & (elements - 1) == 0 else str(elements)
    return Shape(name, (batch, elements // batch), (batch, 128))


def is_sweep(shape_name: str) -> bool:
    return shape_name not in {s.name for s in NAMED}


# ---------------------------------------------------------------------------
# Loss functions. "eager" is the pytorch/examples loss, verbatim, and its
# analogues for the other reconstruction terms.

def kl_sum(mu, logvar):
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


def eager_bce(recon_x, x, mu, logvar):
    BCE = F.binary_cross_entropy(recon_x, x, reduction="sum")
    KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return BCE + KLD


def eager_bce_logits(recon_x, x, mu, logvar):
    return F.binary_cross_entropy_with_logits(recon_x, x, reduction="sum") + kl_sum(mu, logvar)


def eager_mse(recon_x, x, mu, logvar):
    return F.mse_loss(recon_x, x, reduction="sum") + kl_sum(mu, logvar)


def eager_cbce(recon_x, x, mu, logvar):
    # No torch.nn.functional form exists: the project's plain-PyTorch reference.
    return vae_fused.reference.vae_loss(recon_x, x, mu, logvar, recon="cbce")


EAGER = {"bce": eager_bce, "bce_logits": eager_bce_logits, "mse": eager_mse, "cbce": eager_cbce}
RECONS = list(EAGER)
DEFAULT_RECONS = ["bce", "bce_logits", "mse"]


def fused_loss(recon: str):
    def fused(recon_x, x, mu, logvar):
        return vae_fused.vae_loss(recon_x, x, mu, logvar, recon=recon)
    return fused


@dataclass(frozen=True)
class Loss:
    """One loss the suite times (its name is the 'recon' column): the eager
    function, the fused call, its inputs and which of them need a gradient,
    and the bytes a pass over its tensors must move at least."""
    name: str
    eager: Callable
    fused: Callable
    make_inputs: Callable          # (shape, dtype, device) -> [tensors], eager's argument order
    needs_grad: tuple              # per input: a leaf that gets a gradient in training
    passes: dict | None = None     # pass -> (passes over the data, over the latents); None: PASS_TENSORS


STANDARD_NEEDS_GRAD = (True, False, True, True)  # recon_x, x (the data: no), mu, logvar


def _standard(recon: str) -> Loss:
    return Loss(recon, EAGER[recon], fused_loss(recon),
                lambda shape, dtype, device: make_inputs(shape, dtype, device, recon), STANDARD_NEEDS_GRAD)


LOSSES = {recon: _standard(recon) for recon in RECONS}
LOSSES["ldm"] = Loss("ldm", family.eager_ldm, family.fused_ldm, family.ldm_inputs,
                     family.LDM_NEEDS_GRAD, family.LDM_PASSES)
LOSSES["vdvae"] = Loss("vdvae", family.eager_vdvae, family.fused_vdvae, family.vdvae_inputs,
                       family.VDVAE_NEEDS_GRAD, family.VDVAE_PASSES)


@dataclass
class Candidate:
    name: str   # "eager", "compiled" or "fused"
    recon: str
    fn: object = field(repr=False)


LOSS_CANDIDATES = ("eager", "compiled", "fused")


def compiled(fn):
    """torch.compile in its default mode with static shapes. Dynamo is reset
    first: every case compiles its own graph (its cost is reported), and no
    case can run into the recompile limit and silently fall back to eager."""
    torch._dynamo.reset()
    return torch.compile(fn, dynamic=False)


def make_candidate(name: str, recon: str) -> Candidate:
    loss = LOSSES[recon]
    if name == "eager":
        return Candidate(name, recon, loss.eager)
    if name == "compiled":
        return Candidate(name, recon, compiled(loss.eager))
    if name == "fused":
        return Candidate(name, recon, loss.fused)
    raise ValueError(name)


def case_inputs(shape: Shape, dtype, device, recon: str):
    """The inputs of `recon`'s loss at this shape, the same for every candidate."""
    return LOSSES[recon].make_inputs(shape, dtype, device)


# ---------------------------------------------------------------------------
# Inputs and the two passes

def make_inputs(shape: Shape, dtype, device, recon: str):
    """recon_x, x, mu, logvar, the same for every candidate (seeded), in the
    range each reconstruction term expects."""
    g = torch.Generator(device="cpu").manual_seed(0)
    if recon == "bce_logits":
        recon_x = torch.randn(shape.data, generator=g) * 2
    elif recon == "mse":
        recon_x = torch.rand(shape.data, generator=g) * 2 - 1
    else:  # probabilities, away from 0 and 1
        recon_x = torch.rand(shape.data, generator=g) * 0.98 + 0.01
    x = torch.rand(shape.data, generator=g)
    if shape.binary:  # binarized images: every target exactly 0 or 1
        x = (x >= 0.5).float()
    if recon == "mse":
        x = x * 2 - 1
    mu = torch.randn(shape.latent, generator=g)
    logvar = torch.randn(shape.latent, generator=g) * 0.5
    return [t.to(device=device, dtype=dtype) for t in (recon_x, x, mu, logvar)]


def training_leaves(inputs, needs_grad=STANDARD_NEEDS_GRAD):
    """The inputs, those marked in needs_grad as leaves that need a gradient
    (recon_x, mu and logvar: what the decoder and encoder outputs are to the
    loss; x, the data, does not)."""
    return [t.detach().requires_grad_() if grad else t for t, grad in zip(inputs, needs_grad)]


def forward_step(fn, inputs, needs_grad=None):
    """Eval/inference loss: forward only, no autograd graph."""
    def step():
        with torch.no_grad():
            return fn(*inputs)
    return step


def training_step(fn, inputs, needs_grad=STANDARD_NEEDS_GRAD):
    """Training loss: forward + backward into fresh .grad every step
    (set_to_none, the optimizer's default), as a training loop sees it --
    including the first-touch cost of any newly allocated gradient buffer."""
    leaves = training_leaves(inputs, needs_grad)
    with_grad = [t for t in leaves if t.requires_grad]

    def step():
        loss = fn(*leaves)
        loss.backward()
        for t in with_grad:
            t.grad = None
        return loss
    return step


PASSES = {"fwd": forward_step, "fwdbwd": training_step}
PASS_NAMES = {"fwd": "forward (no_grad)", "fwdbwd": "forward+backward"}
# Passes over a B x D tensor the minimal kernel makes: read recon_x and x,
# and write the recon_x gradient when training.
PASS_TENSORS = {"fwd": 2, "fwdbwd": 3}


def bytes_moved(shape: Shape, dtype, pass_name: str, recon: str = "bce") -> int:
    """The standard losses count the data passes only (the latents are tiny
    next to them); the family's losses count both."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    passes = LOSSES[recon].passes if recon in LOSSES else None
    if passes is None:
        return PASS_TENSORS[pass_name] * shape.elements * itemsize
    data, latent = passes[pass_name]
    return (data * shape.elements + latent * shape.latent_elements) * itemsize


# ---------------------------------------------------------------------------
# The floor and the cost of fresh memory. Rows of these carry recon "-".

def floor_step(shape: Shape, dtype, device, pass_name: str, recon: str = "bce"):
    """A copy that streams the pass's bytes (half read, half written) between
    two buffers allocated once: the memory-bandwidth floor of the pass."""
    n = bytes_moved(shape, dtype, pass_name, recon) // torch.empty((), dtype=dtype).element_size() // 2
    src = torch.rand(n, device=device).to(dtype)
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


def fresh_fill_step(shape: Shape, dtype, device):
    """Fills a newly allocated gradient-sized buffer each call: what writing a
    gradient into fresh memory costs, page faults included (glibc hands blocks
    above its mmap threshold, at most 32 MB, back to the OS at every free)."""
    return lambda: torch.empty(shape.data, dtype=dtype, device=device).fill_(0)


def reused_fill_step(shape: Shape, dtype, device):
    """Fills the same gradient-sized buffer each call: the write alone."""
    buf = torch.empty(shape.data, dtype=dtype, device=device)
    return lambda: buf.fill_(0)


MEMORY_STEPS = {"fill-fresh": fresh_fill_step, "fill-reused": reused_fill_step}


# ---------------------------------------------------------------------------
# The end-to-end row: pytorch/examples' VAE (examples/models.py), one training step

E2E_BATCH = 128


def e2e_training_step(loss_fn, device):
    """One step of the example's training loop (Adam, lr 1e-3) on a 128 x 784
    batch, with the given loss."""
    torch.manual_seed(0)
    model = ExampleVAE().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = torch.rand(E2E_BATCH, 784, device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        recon_x, mu, logvar = model(data)
        loss = loss_fn(recon_x, data, mu, logvar)
        loss.backward()
        opt.step()
        return loss
    return step
