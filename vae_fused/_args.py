"""Argument checking and normalisation shared by the fused path and the
reference, so both raise the same errors (see API.md, "Bad input")."""
from __future__ import annotations

from dataclasses import dataclass

import torch

# The codes travel in the op schema; csrc/vae_loss_modes.h has the same table.
RECON_MODES = {"bce": 0, "bce_logits": 1, "mse": 2, "cbce": 3}
REDUCTIONS = {"none": 0, "mean": 1, "sum": 2, "batchmean": 3}

_HALF_TYPES = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class LossOptions:
    """Validated keyword options of vae_loss."""

    beta: float | torch.Tensor
    reduction: str
    kl_reduction: str
    recon: str
    free_bits: float


def _choice(name: str, value, allowed: dict) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(
            f"vae_fused: {name}={value!r} is not supported; allowed values: "
            + ", ".join(repr(k) for k in allowed)
        )
    return value


def check_options(beta=1.0, reduction="sum", kl_reduction=None, recon="bce", free_bits=0.0) -> LossOptions:
    reduction = _choice("reduction", reduction, REDUCTIONS)
    kl_reduction = reduction if kl_reduction is None else _choice("kl_reduction", kl_reduction, REDUCTIONS)
    recon = _choice("recon", recon, RECON_MODES)
    if isinstance(beta, torch.Tensor):
        if beta.dim() != 0 or not beta.is_floating_point():
            raise ValueError(
                f"vae_fused: beta must be a Python float or a 0-d floating tensor, got a "
                f"{beta.dtype} tensor of shape {tuple(beta.shape)}"
            )
        # Reading the value is free for a CPU tensor outside tracing; on CUDA it
        # would be a host sync, so a CUDA beta is taken as given.
        if beta.device.type == "cpu" and not torch.compiler.is_compiling() and type(beta) is torch.Tensor:
            if bool(beta < 0) or bool(torch.isnan(beta)):
                raise ValueError(f"vae_fused: beta must be >= 0, got {beta.item()}")
    elif isinstance(beta, (int, float)) and not isinstance(beta, bool):
        if not beta >= 0:  # also rejects NaN
            raise ValueError(f"vae_fused: beta must be >= 0, got {beta}")
    else:
        raise TypeError(f"vae_fused: beta must be a float or a 0-d tensor, got {type(beta).__name__}")
    if isinstance(free_bits, bool) or not isinstance(free_bits, (int, float)):
        raise TypeError(f"vae_fused: free_bits must be a float, got {type(free_bits).__name__}")
    if not (free_bits >= 0 and free_bits != float("inf")):
        raise ValueError(f"vae_fused: free_bits must be finite and >= 0, got {free_bits}")
    if free_bits > 0 and kl_reduction == "none":
        raise ValueError(
            "vae_fused: free_bits > 0 is defined on the batch mean of each latent unit, "
            "so it needs kl_reduction 'sum', 'mean' or 'batchmean', not 'none'"
        )
    return LossOptions(beta, reduction, kl_reduction, recon, float(free_bits))


def _check_float(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"vae_fused: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(
            f"vae_fused: {name} must be a floating point tensor "
            f"(float64, float32, float16 or bfloat16), got {t.dtype}"
        )


def check_tensors(recon_x, x, mu, logvar):
    """Checks the four tensors and returns them with x and logvar converted to
    the dtypes the kernels read (x: recon_x's dtype, or float32 data against a
    half-precision recon_x; mu/logvar: one common dtype)."""
    for name, t in (("recon_x", recon_x), ("x", x), ("mu", mu), ("logvar", logvar)):
        _check_float(name, t)
    devices = {t.device for t in (recon_x, x, mu, logvar)}
    if len(devices) > 1:
        raise ValueError(
            "vae_fused: all inputs must be on one device, got recon_x on "
            f"{recon_x.device}, x on {x.device}, mu on {mu.device}, logvar on {logvar.device}"
        )
    if recon_x.dim() == 0 or mu.dim() == 0:
        raise ValueError(
            "vae_fused: recon_x and mu need a batch dimension (B, *), got shapes "
            f"{tuple(recon_x.shape)} and {tuple(mu.shape)}"
        )
    if recon_x.shape != x.shape:
        raise ValueError(
            f"vae_fused: recon_x and x must have the same shape, got {tuple(recon_x.shape)} "
            f"and {tuple(x.shape)}"
        )
    if mu.shape != logvar.shape:
        raise ValueError(
            f"vae_fused: mu and logvar must have the same shape, got {tuple(mu.shape)} "
            f"and {tuple(logvar.shape)}"
        )
    if recon_x.shape[0] != mu.shape[0]:
        raise ValueError(
            f"vae_fused: batch sizes differ: recon_x has shape {tuple(recon_x.shape)}, "
            f"mu has shape {tuple(mu.shape)}"
        )
    if x.dtype != recon_x.dtype:
        if recon_x.dtype in _HALF_TYPES:
            x = x.to(torch.float32)  # read as float32, never rounded to half
        else:
            x = x.to(recon_x.dtype)
    if mu.dtype != logvar.dtype:
        common = torch.promote_types(mu.dtype, logvar.dtype)
        mu, logvar = mu.to(common), logvar.to(common)
    return recon_x, x, mu, logvar
