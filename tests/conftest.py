"""Shared helpers. Expected values always come from torch.nn.functional or a
closed formula, never from vae_fused itself."""
import pytest
import torch
import torch.nn.functional as F

REDUCTIONS = ["sum", "mean", "batchmean", "none"]
RECON_MODES = ["bce", "bce_logits", "mse", "cbce"]

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# Parametrize over this to run a test on every device; CUDA cases carry the
# `cuda` mark (select or deselect with -m) and exist only where a GPU does.
DEVICE_PARAMS = [pytest.param(d, marks=pytest.mark.cuda) if d == "cuda" else d for d in DEVICES]

# Tolerances of a fused result against a float64 oracle, per input dtype.
TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=2e-5, atol=1e-6),
    torch.bfloat16: dict(rtol=2e-2, atol=1e-3),
    torch.float16: dict(rtol=5e-3, atol=1e-4),
}


def make_inputs(shape=(8, 20), latent=(8, 5), dtype=torch.float64, device="cpu", recon="bce",
                seed=0, lo=0.02, hi=0.98):
    """recon_x (probabilities, or logits for bce_logits, or [-1, 1] for mse), x, mu, logvar."""
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
    return [t.to(device=device, dtype=dtype) for t in (recon_x, x, mu, logvar)]


def cb_log_norm_closed(p):
    """log C(p) for the continuous Bernoulli, float64, from the textbook
    formula C = 2 atanh(1-2p)/(1-2p) with its limit 2 at p = 1/2."""
    p = p.double()
    x = 1 - 2 * p
    safe = torch.where(x == 0, torch.ones_like(x), x)
    return torch.where(x == 0, torch.full_like(x, 2.0).log(), torch.log(2 * torch.atanh(safe) / safe))


def recon_elements_f(recon_x, x, recon):
    if recon == "bce":
        return F.binary_cross_entropy(recon_x, x, reduction="none")
    if recon == "bce_logits":
        return F.binary_cross_entropy_with_logits(recon_x, x, reduction="none")
    if recon == "mse":
        return F.mse_loss(recon_x, x, reduction="none")
    return F.binary_cross_entropy(recon_x, x, reduction="none") - cb_log_norm_closed(recon_x)


def kl_elements_closed(mu, logvar):
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())


def reduce_as(elements, reduction):
    rows = elements.reshape(elements.shape[0], -1)
    if reduction == "sum":
        return rows.sum()
    if reduction == "mean":
        return rows.sum() / rows.numel()
    if reduction == "batchmean":
        return rows.sum() / rows.shape[0]
    return rows.sum(dim=1)


def oracle_loss(recon_x, x, mu, logvar, reduction="sum", kl_reduction=None, recon="bce", beta=1.0):
    """The loss from torch.nn.functional and the closed-form KL (any dtype)."""
    kl_reduction = kl_reduction or reduction
    r = reduce_as(recon_elements_f(recon_x, x, recon), reduction)
    k = reduce_as(kl_elements_closed(mu, logvar), kl_reduction)
    return r + beta * k


def examples_loss(recon_x, x, mu, logvar):
    """The pytorch/examples VAE loss, verbatim."""
    BCE = F.binary_cross_entropy(recon_x, x, reduction="sum")
    KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return BCE + KLD


def grads(loss, inputs):
    """Gradients of loss (summed if not scalar) w.r.t. the inputs that require grad."""
    wanted = [t for t in inputs if t.requires_grad]
    return torch.autograd.grad(loss.sum(), wanted)
