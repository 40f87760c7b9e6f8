"""vae_fused: the VAE loss (reconstruction + beta * Gaussian KL) as one fused
op, forward and backward, on CPU and CUDA. The contract is API.md; the readable
specification is vae_fused.reference."""
from __future__ import annotations

from typing import NamedTuple

import torch

from . import reference
from ._args import RECON_MODES, REDUCTIONS, check_options, check_tensors
from ._ops import cpu_capability, fused_terms, strict_mode

__all__ = ["vae_loss", "vae_loss_terms", "VAELoss", "VAELossTerms", "reference", "cpu_capability"]
__version__ = "0.1.0"


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
                   recon="bce", free_bits=0.0) -> VAELossTerms:
    """Like vae_loss, but also returns the two terms (from the same op call)."""
    opts = check_options(beta, reduction, kl_reduction, recon, free_bits)
    recon_x, x, mu, logvar = check_tensors(recon_x, x, mu, logvar)
    _check_unit_range_strict(recon_x, x, opts.recon)
    recon_term, kl_term = fused_terms(recon_x, x, mu, logvar, opts)
    beta = opts.beta.to(kl_term.dtype) if isinstance(opts.beta, torch.Tensor) else opts.beta
    return VAELossTerms(recon_term + beta * kl_term, recon_term, kl_term)


def vae_loss(recon_x, x, mu, logvar, *, beta=1.0, reduction="sum", kl_reduction=None,
             recon="bce", free_bits=0.0) -> torch.Tensor:
    """recon_term + beta * kl_term in one fused pass. See API.md for the
    options; defaults reproduce pytorch/examples' VAE loss
    F.binary_cross_entropy(recon_x, x, reduction="sum") + KL."""
    return vae_loss_terms(recon_x, x, mu, logvar, beta=beta, reduction=reduction,
                          kl_reduction=kl_reduction, recon=recon, free_bits=free_bits).loss


class VAELoss(torch.nn.Module):
    """nn.Module form of vae_loss; `beta` may be reassigned between steps
    (a float or a 0-d tensor) for annealing schedules."""

    def __init__(self, beta=1.0, reduction="sum", kl_reduction=None, recon="bce", free_bits=0.0):
        super().__init__()
        check_options(beta, reduction, kl_reduction, recon, free_bits)
        self.beta = beta
        self.reduction = reduction
        self.kl_reduction = kl_reduction
        self.recon = recon
        self.free_bits = free_bits

    def forward(self, recon_x, x, mu, logvar):
        return vae_loss(recon_x, x, mu, logvar, beta=self.beta, reduction=self.reduction,
                        kl_reduction=self.kl_reduction, recon=self.recon, free_bits=self.free_bits)

    def extra_repr(self):
        return (f"beta={self.beta}, reduction={self.reduction!r}, kl_reduction={self.kl_reduction!r}, "
                f"recon={self.recon!r}, free_bits={self.free_bits}")
