"""The VAE loss in plain PyTorch: the specification of vae_fused in readable
code, with the same signature, options, errors and result dtypes. Slow (about
fifteen eager kernels); use it to read, test and compare, not to train."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._ops import check_inputs_op, check_options, check_tensor_types

__all__ = ["vae_loss", "vae_loss_terms", "kl_elements", "recon_elements", "cb_log_norm"]

# log(atanh(x)/x) = sum_k c_k x^(2k), used near p = 1/2 where the closed form is 0/0.
_LOG_ATANH_SERIES = (1 / 3, 13 / 90, 251 / 2835, 3551 / 56700, 22417 / 467775,
                     147636491 / 3831077250, 61425277 / 1915538625, 9718892317 / 355245345000)


def cb_log_norm(p: torch.Tensor) -> torch.Tensor:
    """log C(p) of the continuous Bernoulli, C(p) = 2 atanh(1-2p)/(1-2p), C(1/2) = 2."""
    x = 1 - 2 * p
    window = 0.1 if p.dtype == torch.float64 else 0.4
    y = x * x
    series = sum(c * y ** (k + 1) for k, c in enumerate(_LOG_ATANH_SERIES))
    safe_x = torch.where(x.abs() < window, torch.ones_like(x), x)
    closed = torch.log(torch.atanh(safe_x) / safe_x)
    return math.log(2) + torch.where(x.abs() < window, series, closed)


def recon_elements(recon_x: torch.Tensor, x: torch.Tensor, recon: str) -> torch.Tensor:
    """Per-element reconstruction loss, computed in float32 for half inputs."""
    if recon_x.dtype in (torch.float16, torch.bfloat16):
        recon_x = recon_x.float()
    x = x.to(recon_x.dtype)
    if recon == "bce":
        return F.binary_cross_entropy(recon_x, x, reduction="none")
    if recon == "bce_logits":
        return F.binary_cross_entropy_with_logits(recon_x, x, reduction="none")
    if recon == "mse":
        return F.mse_loss(recon_x, x, reduction="none")
    if recon == "cbce":
        return F.binary_cross_entropy(recon_x, x, reduction="none") - cb_log_norm(recon_x)
    raise ValueError(recon)


def kl_elements(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) per latent unit, float32 for half inputs."""
    if mu.dtype in (torch.float16, torch.bfloat16):
        mu, logvar = mu.float(), logvar.float()
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())


def _per_sample(elements: torch.Tensor) -> torch.Tensor:
    """(B, *) -> (B, features); also for B = 0, where reshape(0, -1) is ambiguous."""
    return elements.reshape(elements.shape[0], math.prod(elements.shape[1:]))


def _reduce(elements: torch.Tensor, reduction: str) -> torch.Tensor:
    per_sample = _per_sample(elements)
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "mean":
        return per_sample.sum() / per_sample.numel()  # 0/0 = nan for an empty batch
    if reduction == "batchmean":
        return per_sample.sum() / per_sample.shape[0]
    return per_sample.sum(dim=1)  # "none"


def _kl_term(mu, logvar, kl_reduction: str, free_bits: float) -> torch.Tensor:
    kl = kl_elements(mu, logvar)
    if free_bits <= 0:
        return _reduce(kl, kl_reduction)
    per_sample = _per_sample(kl)
    # Kingma et al. 2016: a floor of free_bits nats on each unit's batch mean.
    floored = per_sample.mean(dim=0).clamp_min(free_bits).sum()
    if kl_reduction == "sum":
        return floored * per_sample.shape[0]
    if kl_reduction == "mean":
        return floored / per_sample.shape[1]
    return floored  # "batchmean"


def _checked_tensors(recon_x, x, mu, logvar, opts):
    """The same checks as the fused op (one C++ home), then x and mu/logvar in
    the dtypes the loss is computed in."""
    check_tensor_types(dict(recon_x=recon_x, x=x, mu=mu, logvar=logvar))
    check_inputs_op(recon_x, x, mu, logvar, None, None, None, None, None, *opts.codes)
    if x.dtype != recon_x.dtype:
        x = x.to(torch.float32 if recon_x.dtype in (torch.float16, torch.bfloat16) else recon_x.dtype)
    common = torch.promote_types(mu.dtype, logvar.dtype)
    return recon_x, x, mu.to(common), logvar.to(common)


def vae_loss_terms(recon_x, x, mu, logvar, *, beta=1.0, reduction="sum", kl_reduction=None,
                   recon="bce", free_bits=0.0):
    from .api import VAELossTerms

    opts = check_options(beta, reduction, kl_reduction, recon, free_bits)
    recon_x, x, mu, logvar = _checked_tensors(recon_x, x, mu, logvar, opts)
    recon_term = _reduce(recon_elements(recon_x, x, opts.recon), opts.reduction)
    kl_term = _kl_term(mu, logvar, opts.kl_reduction, opts.free_bits)
    beta = opts.beta.to(kl_term.dtype) if isinstance(opts.beta, torch.Tensor) else opts.beta
    return VAELossTerms(recon_term + beta * kl_term, recon_term, kl_term)


def vae_loss(recon_x, x, mu, logvar, **options) -> torch.Tensor:
    """Same signature and semantics as vae_fused.vae_loss."""
    return vae_loss_terms(recon_x, x, mu, logvar, **options).loss
