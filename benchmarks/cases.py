"""What is measured: the shapes, the candidates (loss functions), the two
passes a training loop runs, the memory-bandwidth floor and the end-to-end
training step."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

import vae_fused


# ---------------------------------------------------------------------------
# Shapes

@dataclass(frozen=True)
class Shape:
    name: str
    data: tuple    # recon_x / x shape (B, ...)
    latent: tuple  # mu / logvar shape (B, L)

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
    return shape_name not in {s.name for s in REALISTIC}


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
    if name == "eager":
        return Candidate(name, recon, EAGER[recon])
    if name == "compiled":
        return Candidate(name, recon, compiled(EAGER[recon]))
    if name == "fused":
        return Candidate(name, recon, fused_loss(recon))
    raise ValueError(name)


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
    if recon == "mse":
        x = x * 2 - 1
    mu = torch.randn(shape.latent, generator=g)
    logvar = torch.randn(shape.latent, generator=g) * 0.5
    return [t.to(device=device, dtype=dtype) for t in (recon_x, x, mu, logvar)]


def training_leaves(inputs):
    """recon_x, mu and logvar as leaves that need a gradient (what the decoder
    and encoder outputs are to the loss); x, the data, does not."""
    recon_x, x, mu, logvar = inputs
    return [recon_x.detach().requires_grad_(), x,
            mu.detach().requires_grad_(), logvar.detach().requires_grad_()]


def forward_step(fn, inputs):
    """Eval/inference loss: forward only, no autograd graph."""
    def step():
        with torch.no_grad():
            return fn(*inputs)
    return step


def training_step(fn, inputs):
    """Training loss: forward + backward into fresh .grad every step
    (set_to_none, the optimizer's default), as a training loop sees it --
    including the first-touch cost of any newly allocated gradient buffer."""
    leaves = training_leaves(inputs)
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


def bytes_moved(shape: Shape, dtype, pass_name: str) -> int:
    itemsize = torch.empty((), dtype=dtype).element_size()
    return PASS_TENSORS[pass_name] * shape.elements * itemsize


# ---------------------------------------------------------------------------
# The floor and the cost of fresh memory. Rows of these carry recon "-".

def floor_step(shape: Shape, dtype, device, pass_name: str):
    """A copy that streams the pass's bytes (half read, half written) between
    two buffers allocated once: the memory-bandwidth floor of the pass."""
    n = shape.elements * PASS_TENSORS[pass_name] // 2
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
# The end-to-end row: pytorch/examples' VAE, one training step

class ExampleVAE(nn.Module):
    """pytorch/examples vae/main.py: 784-400-20-400-784 MLP."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def forward(self, x):
        h1 = F.relu(self.fc1(x))
        mu, logvar = self.fc21(h1), self.fc22(h1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, logvar


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
