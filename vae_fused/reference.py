"""The VAE loss in plain PyTorch: the specification of vae_fused in readable
code, with the same signature, options, errors and result dtypes. Slow (about
fifteen eager kernels, a few more with the options of API.md's "Beyond the
standard-normal VAE"); use it to read, test and compare, not to train."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._ops import check_inputs_op, check_options, check_tensor_types

__all__ = ["vae_loss", "vae_loss_terms", "kl_elements", "recon_elements", "cb_log_norm"]

_HALF_TYPES = (torch.float16, torch.bfloat16)

# log(atanh(x)/x) = sum_k c_k x^(2k), used near p = 1/2 where the closed form is 0/0.
_LOG_ATANH_SERIES = (1 / 3, 13 / 90, 251 / 2835, 3551 / 56700, 22417 / 467775,
                     147636491 / 3831077250, 61425277 / 1915538625, 9718892317 / 355245345000)


def cb_log_norm(p: torch.Tensor) -> torch.Tensor:
    """log C(p) of the continuous Bernoulli, C(p) = 2 atanh(1-2p)/(1-2p), C(1/2) = 2,
    C(0) = C(1) = inf. Away from 1/2, 2 atanh(1-2p) = log(1-p) - log(p), taken on p
    itself: finite for tiny p, where 1 - 2p rounds to 1."""
    x = 1 - 2 * p
    window = 0.1 if p.dtype == torch.float64 else 0.4
    inside = x.abs() < window
    y = x * x
    series = sum(c * y ** (k + 1) for k, c in enumerate(_LOG_ATANH_SERIES))
    safe_p = torch.where(inside, torch.full_like(p, 0.25), p)  # no 0/0 in the branch not taken
    closed = torch.log((torch.log1p(-safe_p) - torch.log(safe_p)) / (2 * (1 - 2 * safe_p)))
    return math.log(2) + torch.where(inside, series, closed)


def _clamped_log_ratio(p: torch.Tensor) -> torch.Tensor:
    """log(1-p) - log p, each log clamped at -100 as in the BCE loss."""
    return torch.log1p(-p).clamp(min=-100) - torch.log(p).clamp(min=-100)


def _bce(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """F.binary_cross_entropy, with API.md's gradient in the target: the clamped
    log ratio above, finite at p = 0 and 1 (F's is -logit(p), +-inf there). The
    added term is an exact 0 whose t-gradient is that ratio; it also carries the
    mixed second derivative. (p is in [0, 1]: F raises otherwise.)"""
    if not t.requires_grad:
        return F.binary_cross_entropy(p, t, reduction="none")
    inside = (p > 0) & (p < 1)
    # The ratio's own gradient at p = 0 or 1 would be 0 * inf: those lanes take it detached.
    ratio = torch.where(inside, _clamped_log_ratio(torch.where(inside, p, 0.5)),
                        _clamped_log_ratio(p.detach()))
    return F.binary_cross_entropy(p, t.detach(), reduction="none") + (t - t.detach()) * ratio


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype a term is computed in: float32 for half inputs, else the input's."""
    return torch.float32 if t.dtype in _HALF_TYPES else t.dtype


def recon_elements(recon_x: torch.Tensor, x: torch.Tensor, recon: str, recon_logvar=None,
                   recon_offset=None, weight=None) -> torch.Tensor:
    """Per-element reconstruction loss over recon_x's shape, computed in float32
    for half inputs. With the options of API.md: ℓ' = ℓ + o, then for a learned
    log-scale s  "l1": ℓ'·e^-s + s,  "mse": 0.5·(ℓ'·e^-s + s);  then times w.
    s, o and w broadcast to recon_x's shape and are read in the compute dtype."""
    dtype = _compute_dtype(recon_x)
    recon_x = recon_x.to(dtype)
    x = x.to(dtype)
    if recon == "bce":
        loss = _bce(recon_x, x)
    elif recon == "bce_logits":
        loss = F.binary_cross_entropy_with_logits(recon_x, x, reduction="none")
    elif recon == "mse":
        loss = F.mse_loss(recon_x, x, reduction="none")
    elif recon == "l1":
        loss = F.l1_loss(recon_x, x, reduction="none")  # gradient sign(p - t), 0 at a tie
    elif recon == "cbce":
        loss = _bce(recon_x, x) - cb_log_norm(recon_x)
    else:
        raise ValueError(recon)
    if recon_offset is not None:
        loss = loss + recon_offset.to(dtype)
    if recon_logvar is not None:
        s = recon_logvar.to(dtype)
        loss = loss * torch.exp(-s) + s        # Laplace NLL (l1), 2 x Gaussian NLL (mse), up to constants
        if recon == "mse":
            loss = 0.5 * loss                  # = F.gaussian_nll_loss(p, t, var=e^s), full=False, no eps
    if weight is not None:
        loss = loss * weight.to(dtype)
    return loss  # recon_x's shape: s, o and w broadcast to it (checked by the caller)


def kl_elements(mu: torch.Tensor, logvar: torch.Tensor, prior_mu=None, prior_logvar=None) -> torch.Tensor:
    """KL(N(mu, e^logvar) || N(prior_mu, e^prior_logvar)) per latent unit, over mu's
    shape, float32 for half inputs. Without a prior it is KL(N(mu, e^logvar) || N(0, 1));
    a prior given alone takes 0 for the other."""
    dtype = _compute_dtype(mu)
    mu, logvar = mu.to(dtype), logvar.to(dtype)
    if prior_mu is None and prior_logvar is None:
        return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())
    diff = mu if prior_mu is None else mu - prior_mu.to(dtype)
    if prior_logvar is None:
        # 0.5·(e^lv + (mu - pmu)² - 1 - lv)
        kl = 0.5 * (torch.expm1(logvar) - logvar + diff.pow(2))
    else:
        # 0.5·(plv - lv + (e^lv + (mu - pmu)²)·e^-plv - 1), written with d = lv - plv as
        # 0.5·((e^d - 1) - d + (mu - pmu)²·e^-plv): the same value, without the 1 - 1 cancellation
        prior_logvar = prior_logvar.to(dtype)
        d = logvar - prior_logvar
        kl = 0.5 * (torch.expm1(d) - d + diff.pow(2) * torch.exp(-prior_logvar))
    return kl  # mu's shape: the priors broadcast to it


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


def _kl_term(mu, logvar, kl_reduction: str, free_bits: float, prior_mu=None, prior_logvar=None) -> torch.Tensor:
    kl = kl_elements(mu, logvar, prior_mu, prior_logvar)
    if free_bits <= 0:
        return _reduce(kl, kl_reduction)
    per_sample = _per_sample(kl)
    # Kingma et al. 2016: a floor of free_bits nats on each unit's batch mean.
    # Only units strictly below it lose their gradient (clamp_min's gradient
    # is 0 at equality too); a NaN mean is not below it.
    means = per_sample.mean(dim=0)
    floored = torch.where(means < free_bits, free_bits, means).sum()
    if kl_reduction == "sum":  # an empty batch sums to 0 (its unit means are NaN)
        return floored * per_sample.shape[0] if per_sample.shape[0] else per_sample.sum()
    if kl_reduction == "mean":
        return floored / per_sample.shape[1]
    return floored  # "batchmean"


def _checked_tensors(tensors: dict, opts):
    """The fused op's own checks (one C++ home, so both raise the same errors),
    then x and mu/logvar in the dtypes the loss is computed in."""
    check_tensor_types(tuple(tensors.values()))
    check_inputs_op(*tensors.values(), *opts.codes)
    recon_x, x, mu, logvar = (tensors[k] for k in ("recon_x", "x", "mu", "logvar"))
    if x.dtype != recon_x.dtype:
        x = x.to(torch.float32 if recon_x.dtype in _HALF_TYPES else recon_x.dtype)
    common = torch.promote_types(mu.dtype, logvar.dtype)
    return recon_x, x, mu.to(common), logvar.to(common)


def vae_loss_terms(recon_x, x, mu, logvar, *, beta=1.0, reduction="sum", kl_reduction=None,
                   recon="bce", free_bits=0.0, prior_mu=None, prior_logvar=None,
                   recon_logvar=None, recon_offset=None, weight=None):
    from .api import VAELossTerms

    opts = check_options(beta, reduction, kl_reduction, recon, free_bits)
    recon_x, x, mu, logvar = _checked_tensors(
        dict(recon_x=recon_x, x=x, mu=mu, logvar=logvar, prior_mu=prior_mu, prior_logvar=prior_logvar,
             recon_logvar=recon_logvar, recon_offset=recon_offset, weight=weight), opts)
    elements = recon_elements(recon_x, x, opts.recon, recon_logvar, recon_offset, weight)
    recon_term = _reduce(elements, opts.reduction)  # divisors do not depend on weight
    kl_term = _kl_term(mu, logvar, opts.kl_reduction, opts.free_bits, prior_mu, prior_logvar)
    beta = opts.beta.to(kl_term.dtype) if isinstance(opts.beta, torch.Tensor) else opts.beta
    return VAELossTerms(recon_term + beta * kl_term, recon_term, kl_term)


def vae_loss(recon_x, x, mu, logvar, **options) -> torch.Tensor:
    """Same signature and semantics as vae_fused.vae_loss."""
    return vae_loss_terms(recon_x, x, mu, logvar, **options).loss
