"""Shared test helpers (import with `from .helpers import ...`). Expected values always come from torch.nn.functional or a
closed formula evaluated in float64, never from vae_fused itself (the
`reference` module is tested against the same oracles, not used as one)."""
import math

import pytest
import torch
import torch.nn.functional as F

import vae_fused

REDUCTIONS = ["sum", "mean", "batchmean", "none"]
RECON_MODES = ["bce", "bce_logits", "mse", "cbce"]
LOW_PRECISION = [torch.bfloat16, torch.float16]

# ---------------------------------------------------------------------------
# Devices. DEVICES is what the machine has; parametrize over DEVICE_PARAMS
# (or device_params()) to run a test on each. CUDA cases carry the `cuda`
# mark (select or deselect them with -m) and a skip when no GPU is there, so a
# CPU-only run shows no failures and no collection errors.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def device_params(names=None):
    """pytest.param per device; "cuda" ones marked `cuda` and skipped without a GPU."""
    names = DEVICES if names is None else names
    return [pytest.param(d, marks=[pytest.mark.cuda, requires_cuda], id=d) if d.startswith("cuda")
            else pytest.param(d, id=d) for d in names]


DEVICE_PARAMS = device_params()


# ---------------------------------------------------------------------------
# Tolerances of a fused result against a float64 oracle, per input dtype. The
# half types are not judged by a fixed table but by check_low_precision below.
TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.bfloat16: dict(rtol=2e-2, atol=1e-3),
    torch.float16: dict(rtol=5e-3, atol=1e-4),
}
# gradients (elementwise, so no cancellation in a sum helps them)
GRAD_TOL = {
    torch.float64: dict(rtol=1e-9, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.bfloat16: dict(rtol=2e-2, atol=1e-2),
    torch.float16: dict(rtol=5e-3, atol=1e-3),
}


def max_abs_err(a, b):
    a, b = a.double(), b.double()
    if a.numel() == 0:
        return 0.0
    return (a - b).abs().max().item()


def check_low_precision(got, expected64, reference_low, atol=0.0, factor=2.0, what="value"):
    """Flash-attention style: the fused result's error against the float64
    oracle is at most `factor` times the error that PyTorch itself makes when
    it runs the same computation in low precision, plus a small atol."""
    assert got.shape == expected64.shape, (got.shape, expected64.shape)
    err = max_abs_err(got, expected64)
    ref_err = max_abs_err(reference_low, expected64)
    assert err <= factor * ref_err + atol, (
        f"{what}: fused error {err:.3e} > {factor} x low-precision PyTorch error {ref_err:.3e} + {atol:.1e}")


# ---------------------------------------------------------------------------
# Inputs.
def make_inputs(shape=(8, 20), latent=(8, 5), dtype=torch.float64, device="cpu", recon="bce",
                seed=0, lo=0.02, hi=0.98, requires_grad=False):
    """recon_x, x, mu, logvar (drawn in float64, then converted):
    recon_x in [lo, hi] inside (0, 1) (logits ~ N(0, 9) for bce_logits, [-1, 1] for mse),
    x in [0, 1] ([-1, 1] for mse), mu ~ N(0, 1), logvar ~ N(0, 0.25)."""
    g = torch.Generator().manual_seed(seed)
    if recon == "bce_logits":
        recon_x = torch.randn(shape, generator=g, dtype=torch.float64) * 3
        x = torch.rand(shape, generator=g, dtype=torch.float64)
    elif recon == "mse":
        recon_x = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
        x = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    else:
        recon_x = torch.rand(shape, generator=g, dtype=torch.float64) * (hi - lo) + lo
        x = torch.rand(shape, generator=g, dtype=torch.float64)
    mu = torch.randn(latent, generator=g, dtype=torch.float64)
    logvar = torch.randn(latent, generator=g, dtype=torch.float64) * 0.5
    out = [t.to(device=device, dtype=dtype) for t in (recon_x, x, mu, logvar)]
    if requires_grad:
        out = [t.requires_grad_() for t in out]
    return out


def leaf(tensors, requires_grad=True):
    """Fresh float leaves (detached copies' views), optionally requiring grad."""
    return [t.detach().clone().requires_grad_(requires_grad) for t in tensors]


# ---------------------------------------------------------------------------
# Oracles.
def examples_loss(recon_x, x, mu, logvar):
    """The pytorch/examples VAE loss (vae/main.py), verbatim."""
    BCE = F.binary_cross_entropy(recon_x, x, reduction="sum")
    KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return BCE + KLD


def _two_atanh_scalar(p: float) -> float:
    """2 atanh(1 - 2p) in float64 to a few ulps for every p in (0, 1): atanh
    of x = 1 - 2p near 1/2 (x exact there), log(1 - p) - log(p) (= log((1+x)/(1-x))
    on p itself, which stays finite for tiny p where x rounds to 1) elsewhere."""
    x = 1.0 - 2.0 * p
    if abs(x) < 0.5:
        return 2.0 * math.atanh(x)
    return math.log1p(-p) - math.log(p)


def cb_log_norm_scalar(p: float) -> float:
    """log C(p) of the continuous Bernoulli for one float64 p, with Python's
    math: C(p) = 2 atanh(1-2p)/(1-2p), C(1/2) = 2, C(0) = C(1) = inf. The
    value is accurate to a few 1e-16 absolute everywhere (atanh(x)/x is well
    conditioned; only its derivative cancels near 1/2)."""
    x = 1.0 - 2.0 * p
    if x == 0.0:
        return math.log(2.0)
    if p in (0.0, 1.0):
        return math.inf
    return math.log(_two_atanh_scalar(p) / x)


def cb_log_norm_grad_scalar(p: float) -> float:
    """d/dp log C(p), float64: the closed form away from 1/2 (1 - x^2 formed
    as 4 p (1 - p)), the Taylor series of log(atanh(x)/x) = x^2/3 + 13 x^4/90
    + 251 x^6/2835 + ... close to it."""
    x = 1.0 - 2.0 * p
    if abs(x) < 2e-3:
        dlog_dx = 2 * x / 3 + 4 * 13 * x ** 3 / 90 + 6 * 251 * x ** 5 / 2835
    else:
        dlog_dx = 2.0 / (4.0 * p * (1.0 - p) * _two_atanh_scalar(p)) - 1.0 / x
    return -2.0 * dlog_dx


def cb_log_norm_closed(p):
    """Elementwise cb_log_norm_scalar on a tensor (float64 result)."""
    flat = [cb_log_norm_scalar(v) for v in p.detach().double().reshape(-1).tolist()]
    return torch.tensor(flat, dtype=torch.float64, device=p.device).reshape(p.shape)


class _CbLogNorm(torch.autograd.Function):
    """log C(p) with its closed-form derivative, so the cbce oracle has gradients."""

    @staticmethod
    def forward(ctx, p):
        ctx.save_for_backward(p)
        return cb_log_norm_closed(p).to(p.dtype)

    @staticmethod
    def backward(ctx, grad):
        (p,) = ctx.saved_tensors
        flat = [cb_log_norm_grad_scalar(v) for v in p.detach().double().reshape(-1).tolist()]
        d = torch.tensor(flat, dtype=torch.float64, device=p.device).reshape(p.shape).to(p.dtype)
        return grad * d


def recon_elements_f(recon_x, x, recon):
    if recon == "bce":
        return F.binary_cross_entropy(recon_x, x, reduction="none")
    if recon == "bce_logits":
        return F.binary_cross_entropy_with_logits(recon_x, x, reduction="none")
    if recon == "mse":
        return F.mse_loss(recon_x, x, reduction="none")
    if recon == "l1":
        return F.l1_loss(recon_x, x, reduction="none")
    assert recon == "cbce"
    return F.binary_cross_entropy(recon_x, x, reduction="none") - _CbLogNorm.apply(recon_x)


def kl_elements_closed(mu, logvar):
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())


def reduce_as(elements, reduction):
    # math.prod, not -1: reshape(0, -1) is ambiguous for an empty batch
    rows = elements.reshape(elements.shape[0], math.prod(elements.shape[1:]))
    if reduction == "sum":
        return rows.sum()
    if reduction == "mean":
        return rows.sum() / rows.numel()  # 0/0 = nan for an empty batch, like torch.mean
    if reduction == "batchmean":
        return rows.sum() / rows.shape[0]
    assert reduction == "none"
    return rows.sum(dim=1)


def kl_term_oracle(mu, logvar, kl_reduction, free_bits=0.0):
    kl = kl_elements_closed(mu, logvar)
    if free_bits <= 0:
        return reduce_as(kl, kl_reduction)
    rows = kl.reshape(kl.shape[0], math.prod(kl.shape[1:]))
    # Kingma et al. 2016; only units strictly below the floor lose their
    # gradient (API.md), which clamp_min does not give at equality
    means = rows.mean(dim=0)
    floored = torch.where(means < free_bits, free_bits, means).sum()
    # an empty batch: the unit means are 0/0, but "sum" sums over no samples (API.md: 0)
    total = floored * rows.shape[0] if rows.shape[0] else rows.sum()
    return {"batchmean": floored, "sum": total, "mean": floored / rows.shape[1]}[kl_reduction]


def oracle_terms(recon_x, x, mu, logvar, reduction="sum", kl_reduction=None, recon="bce", beta=1.0,
                 free_bits=0.0):
    """(loss, recon_term, kl_term) from torch.nn.functional and the closed-form KL.
    Run it on float64 tensors for an oracle (it works in any dtype, which is
    how the low-precision PyTorch baselines are made)."""
    kl_reduction = kl_reduction or reduction
    if recon_x.dtype != x.dtype:
        x = x.to(recon_x.dtype)
    r = reduce_as(recon_elements_f(recon_x, x, recon), reduction)
    k = kl_term_oracle(mu, logvar, kl_reduction, free_bits)
    return r + beta * k, r, k


def oracle_loss(*inputs, **kwargs):
    return oracle_terms(*inputs, **kwargs)[0]


def grads(loss, inputs):
    """Gradients of loss (summed if not a scalar) w.r.t. the inputs that require grad."""
    wanted = [t for t in inputs if t.requires_grad]
    return torch.autograd.grad(loss.sum(), wanted)


def zero_latents(n, dtype=torch.float64, device="cpu"):
    """mu = logvar = 0: a KL of exactly 0, to look at the reconstruction term alone."""
    return (torch.zeros(n, 1, dtype=dtype, device=device), torch.zeros(n, 1, dtype=dtype, device=device))


def raises_and_leaves_inputs(fn, args, kwargs, exc, *needles):
    """fn(*args, **kwargs) raises exc with every needle in its message, and
    leaves every tensor argument as it was (values, and no .grad)."""
    tensors = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]
    before = [t.detach().clone() if t.device.type != "meta" else None for t in tensors]
    with pytest.raises(exc) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    for t, b in zip(tensors, before):
        if b is not None:
            torch.testing.assert_close(t.detach(), b, rtol=0, atol=0, equal_nan=True)
        assert not t.is_leaf or t.grad is None
    return message


def use_kernel_build(monkeypatch, cap):
    """Selects the CPU kernel build `cap`; skips (with the reason) where this
    machine cannot run it, instead of silently testing a lower build."""
    monkeypatch.setenv("VAE_FUSED_CPU_CAPABILITY", cap)
    running = vae_fused.cpu_capability()
    if running != cap.upper():
        pytest.skip(f"the {cap.upper()} kernel build cannot run here: this CPU/torch runs {running} "
                    f"(torch reports {torch.backends.cpu.get_cpu_capability()})")
