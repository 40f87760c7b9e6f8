"""The public API: vae_loss, vae_loss_terms, VAELoss. Each call validates the
string options, runs the fused op once and forms recon + beta * kl. The
contract is API.md; the readable specification is vae_fused.reference."""
from __future__ import annotations

from typing import NamedTuple

import torch

from ._ops import check_options, check_tensor_types, loss_op, option_codes, strict_mode, under_functorch


class VAELossTerms(NamedTuple):
    loss: torch.Tensor   # recon + beta * kl
    recon: torch.Tensor  # the reconstruction term, reduced
    kl: torch.Tensor     # the KL term, reduced, before beta


def _check_unit_range_strict(recon_x, x, recon: str) -> None:
    # The CUDA kernel reports bad BCE input as a NaN loss (no device assert, no
    # sync); VAE_FUSED_STRICT=1 pays one sync to raise PyTorch's error instead.
    # The CPU kernel always raises.
    if recon not in ("bce", "cbce") or recon_x.device.type == "cpu" or not strict_mode():
        return
    outside = [((t < 0) | (t > 1) | torch.isnan(t)).any() for t in (recon_x, x)]
    input_bad, target_bad = torch.stack(outside).tolist()  # the one sync
    if input_bad:
        raise RuntimeError("all elements of input should be between 0 and 1")
    if target_bad:
        raise RuntimeError("all elements of target should be between 0 and 1")


def vae_loss_terms(recon_x, x, mu, logvar, *, beta=1.0, reduction="sum", kl_reduction=None,
                   recon="bce", free_bits=0.0, prior_mu=None, prior_logvar=None, recon_logvar=None,
                   recon_offset=None, weight=None) -> VAELossTerms:
    """Like vae_loss, but also returns the two terms (from the same op call)."""
    # Host cost matters at small batches: the string options are checked once
    # per distinct set (option_codes), everything about the tensors in C++.
    codes = option_codes(beta, reduction, kl_reduction, recon, free_bits)
    tensors = (recon_x, x, mu, logvar, prior_mu, prior_logvar, recon_logvar, recon_offset, weight)
    check_tensor_types(tensors)
    if under_functorch(tensors[:4]):
        raise RuntimeError(
            "vae_fused: torch.func transforms (grad, vmap, jacrev, ...) are not supported; "
            "compute gradients with loss.backward() or torch.autograd.grad, and batch "
            "several losses by concatenating them along the batch with reduction='none'"
        )
    _check_unit_range_strict(recon_x, x, recon)
    recon_term, kl_term = loss_op(*tensors, *codes)
    if isinstance(beta, torch.Tensor):
        loss = recon_term + beta.to(kl_term.dtype) * kl_term
    elif not torch.compiler.is_compiling() and beta == 1:
        # 1 * kl is kl exactly: one op and one backward node less. (Not when
        # tracing: comparing a symbolic beta would guard on it and recompile.)
        loss = recon_term + kl_term
    else:
        loss = recon_term + beta * kl_term
    return VAELossTerms(loss, recon_term, kl_term)


def vae_loss(recon_x, x, mu, logvar, *, beta=1.0, reduction="sum", kl_reduction=None, recon="bce",
             free_bits=0.0, prior_mu=None, prior_logvar=None, recon_logvar=None, recon_offset=None,
             weight=None) -> torch.Tensor:
    """recon_term + beta * kl_term in one fused pass. See API.md for the
    options; defaults reproduce pytorch/examples' VAE loss
    F.binary_cross_entropy(recon_x, x, reduction="sum") + KL."""
    return vae_loss_terms(recon_x, x, mu, logvar, beta=beta, reduction=reduction,
                          kl_reduction=kl_reduction, recon=recon, free_bits=free_bits,
                          prior_mu=prior_mu, prior_logvar=prior_logvar, recon_logvar=recon_logvar,
                          recon_offset=recon_offset, weight=weight).loss


class VAELoss(torch.nn.Module):
    """nn.Module form of vae_loss; `beta` may be reassigned between steps
    (a float or a 0-d tensor) for annealing schedules.

    `recon_logvar`: a float (or tensor) makes the module own the learned
    log-scale of the likelihood as an nn.Parameter of that value's shape --
    latent diffusion's `self.logvar = nn.Parameter(torch.ones(()) * logvar_init)`
    (needs recon="l1" or "mse")."""

    def __init__(self, beta=1.0, reduction="sum", kl_reduction=None, recon="bce", free_bits=0.0,
                 recon_logvar=None):
        super().__init__()
        check_options(beta, reduction, kl_reduction, recon, free_bits)
        if recon_logvar is not None and recon not in ("l1", "mse"):
            raise ValueError(
                f"vae_fused: recon_logvar (a learned log-scale of the likelihood) needs recon='l1' "
                f"or recon='mse', not recon={recon!r}")
        self.beta = beta
        self.reduction = reduction
        self.kl_reduction = kl_reduction
        self.recon = recon
        self.free_bits = free_bits
        if recon_logvar is None:
            self.recon_logvar = None
        elif isinstance(recon_logvar, torch.nn.Parameter):
            self.recon_logvar = recon_logvar
        else:
            self.recon_logvar = torch.nn.Parameter(
                torch.as_tensor(recon_logvar, dtype=torch.get_default_dtype()).clone())

    def forward(self, recon_x, x, mu, logvar, *, recon_offset=None, weight=None, prior_mu=None,
                prior_logvar=None):
        return vae_loss(recon_x, x, mu, logvar, beta=self.beta, reduction=self.reduction,
                        kl_reduction=self.kl_reduction, recon=self.recon, free_bits=self.free_bits,
                        prior_mu=prior_mu, prior_logvar=prior_logvar, recon_logvar=self.recon_logvar,
                        recon_offset=recon_offset, weight=weight)

    def extra_repr(self):
        return (f"beta={self.beta}, reduction={self.reduction!r}, kl_reduction={self.kl_reduction!r}, "
                f"recon={self.recon!r}, free_bits={self.free_bits}")
