"""What is measured: the shapes, the candidates (loss functions) and the
memory-bandwidth floor."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import vae_fused


@dataclass(frozen=True)
class Shape:
    name: str
    data: tuple   # recon_x / x shape
    latent: tuple  # mu / logvar shape

    @property
    def elements(self) -> int:
        n = 1
        for d in self.data:
            n *= d
        return n


REALISTIC = [
    Shape("MNIST 128x784", (128, 784), (128, 20)),
    Shape("CIFAR 256x3x32x32", (256, 3, 32, 32), (256, 128)),
    Shape("CelebA 64x3x64x64", (64, 3, 64, 64), (64, 128)),
    Shape("3M 64x3x128x128", (64, 3, 128, 128), (64, 512)),
    Shape("12.6M 64x3x256x256", (64, 3, 256, 256), (64, 512)),
]
QUICK = [REALISTIC[0], REALISTIC[3], REALISTIC[4]]
TARGET_SHAPES = ("3M 64x3x128x128", "12.6M 64x3x256x256")


def sweep(exponents) -> list[Shape]:
    return [Shape(f"2^{k}", (64, 2 ** k // 64), (64, 128)) for k in exponents]


# ---------------------------------------------------------------------------
# Loss functions. "eager" is pytorch/examples' loss, verbatim.

def eager_bce(recon_x, x, mu, logvar):
    BCE = F.binary_cross_entropy(recon_x, x, reduction="sum")
    KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return BCE + KLD


def eager_bce_logits(recon_x, x, mu, logvar):
    rec = F.binary_cross_entropy_with_logits(recon_x, x, reduction="sum")
    return rec - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


def eager_mse(recon_x, x, mu, logvar):
    rec = F.mse_loss(recon_x, x, reduction="sum")
    return rec - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


EAGER = {"bce": eager_bce, "bce_logits": eager_bce_logits, "mse": eager_mse}


def fused(recon: str):
    return lambda recon_x, x, mu, logvar: vae_fused.vae_loss(recon_x, x, mu, logvar, recon=recon)


@dataclass
class Candidate:
    name: str     # "eager", "compiled", "fused"
    recon: str
    fn: object
    compile_seconds: float = 0.0


def candidates(recons, with_compile: bool) -> list[Candidate]:
    out = []
    for recon in recons:
        out.append(Candidate("eager", recon, EAGER[recon]))
        if with_compile:
            out.append(Candidate("compiled", recon, torch.compile(EAGER[recon], dynamic=False)))
        out.append(Candidate("fused", recon, fused(recon)))
    return out


# ---------------------------------------------------------------------------
# Inputs and the two passes a training loop runs.

def make_inputs(shape: Shape, dtype, device, recon: str):
    g = torch.Generator(device="cpu").manual_seed(0)
    if recon == "bce_logits":
        recon_x = torch.randn(shape.data, generator=g) * 2
    elif recon == "mse":
        recon_x = torch.rand(shape.data, generator=g) * 2 - 1
    else:
        recon_x = torch.rand(shape.data, generator=g) * 0.98 + 0.01
    x = torch.rand(shape.data, generator=g)
    mu = torch.randn(shape.latent, generator=g)
    logvar = torch.randn(shape.latent, generator=g) * 0.5
    return [t.to(device=device, dtype=dtype) for t in (recon_x, x, mu, logvar)]


def forward_step(fn, inputs):
    """Eval loss: forward only, no autograd graph."""
    def step():
        with torch.no_grad():
            return fn(*inputs)
    return step


def training_step(fn, inputs):
    """Training loss: forward + backward into fresh .grad (set_to_none), as a
    training loop sees it; recon_x, mu and logvar are leaves needing grad."""
    leaves = [inputs[0].detach().requires_grad_(), inputs[1],
              inputs[2].detach().requires_grad_(), inputs[3].detach().requires_grad_()]

    def step():
        loss = fn(*leaves)
        loss.backward()
        leaves[0].grad = None
        leaves[2].grad = None
        leaves[3].grad = None
        return loss
    return step


PASSES = {"fwd": forward_step, "fwdbwd": training_step}
# Tensor passes over B x D data the minimal kernel makes: read recon_x and x
# (+ write the recon_x gradient when training).
PASS_TENSORS = {"fwd": 2, "fwdbwd": 3}


def warm_up(step, device) -> float:
    """Runs the step once (torch.compile compiles here) and returns seconds."""
    sync(device)
    start = time.perf_counter()
    step()
    sync(device)
    return time.perf_counter() - start


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------
# The floor: a copy that streams the same number of bytes.

def floor_step(shape: Shape, dtype, device, pass_name: str):
    """A copy moving PASS_TENSORS tensors' worth of bytes (it reads half and
    writes half), allocated once: the memory-bandwidth floor of the pass."""
    n = shape.elements * PASS_TENSORS[pass_name] // 2
    src = torch.rand(n, device=device).to(dtype)
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


def fresh_buffer_step(shape: Shape, dtype, device):
    """Filling a newly allocated gradient-sized buffer: the first-touch (page
    fault) cost a loss pays when its gradient buffer is new every step."""
    return lambda: torch.empty(shape.data, dtype=dtype, device=device).fill_(0)


def saved_bytes(fn, inputs) -> int:
    """Bytes of tensors autograd saves for backward (CPU peak-memory proxy)."""
    leaves = [inputs[0].detach().requires_grad_(), inputs[1],
              inputs[2].detach().requires_grad_(), inputs[3].detach().requires_grad_()]
    total = 0
    seen = set()

    def pack(t):
        nonlocal total
        key = (t.untyped_storage().data_ptr(), t.dtype, tuple(t.shape))
        if key not in seen and t.untyped_storage().data_ptr() not in {i.data_ptr() for i in leaves}:
            seen.add(key)
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*leaves)
    return total
