"""The ops: loading the compiled library, the option codes that travel in the
op schemas (their one Python home; csrc/codes.h is the C++ one), the checks
of the string options, and the fake kernels torch.compile traces with. The
autograd formula and the tensor checks are C++ (csrc/autograd.cpp,
csrc/inputs.cpp); the reference's kernel is registered here."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

try:
    from . import _C  # noqa: F401  (loading it registers the ops)
except ImportError as err:  # pragma: no cover - exercised by hand
    raise ImportError(
        "vae_fused: the compiled extension vae_fused._C could not be loaded:\n"
        f"  {err}\n"
        "There is no pure-Python fallback. Build it against the torch you have installed "
        f"(torch {torch.__version__}):\n"
        "  pip install --no-build-isolation .        (from a checkout of vae_fused)\n"
        "A build made for another torch version must be rebuilt the same way."
    ) from err

_OPS = ("vae_loss", "vae_loss_forward", "scale_gradient", "scale_gradient_", "reference_terms",
        "check_inputs", "cpu_capability")
_missing = [name for name in _OPS if not hasattr(torch.ops.vae_fused, name)]
if _missing:
    raise ImportError(
        f"vae_fused: the compiled library {_C.__file__} is older than this Python package "
        f"(it lacks the op(s) {', '.join(_missing)}). Rebuild it:\n"
        "  pip install --no-build-isolation .      (or -e . for an editable install)"
    )

# The codes of the op schemas; csrc/codes.h has the same table.
RECON_MODES = {"bce": 0, "bce_logits": 1, "mse": 2, "cbce": 3, "l1": 4}
REDUCTIONS = {"none": 0, "mean": 1, "sum": 2, "batchmean": 3}
RECON_NAMES = {code: name for name, code in RECON_MODES.items()}
REDUCTION_NAMES = {code: name for name, code in REDUCTIONS.items()}
# Schema order of the tensor arguments (and of vae_loss_forward's gradients).
TENSOR_ARGS = ("recon_x", "x", "mu", "logvar", "prior_mu", "prior_logvar", "recon_logvar",
               "recon_offset", "weight")

loss_op = torch.ops.vae_fused.vae_loss
check_inputs_op = torch.ops.vae_fused.check_inputs


@dataclass(frozen=True)
class LossOptions:
    """Validated keyword options of vae_loss, with their schema codes."""

    beta: float | torch.Tensor
    reduction: str
    kl_reduction: str
    recon: str
    free_bits: float

    @property
    def codes(self) -> tuple:
        return (RECON_MODES[self.recon], REDUCTIONS[self.reduction], REDUCTIONS[self.kl_reduction],
                self.free_bits)


def _choice(name: str, value, allowed: dict) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(
            f"vae_fused: {name}={value!r} is not supported; allowed values: "
            + ", ".join(repr(k) for k in allowed)
        )
    return value


def _check_beta(beta) -> None:
    if isinstance(beta, torch.Tensor):
        if beta.dim() != 0 or not beta.is_floating_point():
            raise ValueError(
                f"vae_fused: beta must be a Python float or a 0-d floating tensor, got a "
                f"{beta.dtype} tensor of shape {tuple(beta.shape)}"
            )
        # Reading the value is free for a CPU tensor outside tracing; on CUDA it
        # would be a host sync, so a CUDA beta is taken as given.
        # (Plain tensors and parameters only: a subclass may do more than compare.)
        if beta.device.type == "cpu" and not torch.compiler.is_compiling() and \
                type(beta) in (torch.Tensor, torch.nn.Parameter):
            if bool(beta < 0) or bool(torch.isnan(beta)):
                raise ValueError(f"vae_fused: beta must be >= 0, got {beta.item()}")
    elif isinstance(beta, (int, float)) and not isinstance(beta, bool):
        if not beta >= 0:  # also rejects NaN
            raise ValueError(f"vae_fused: beta must be >= 0, got {beta}")
    else:
        raise TypeError(f"vae_fused: beta must be a float or a 0-d tensor, got {type(beta).__name__}")


# Validated (reduction, kl_reduction, recon, free_bits, type(free_bits)) ->
# schema codes: a training loop passes the same options every step, and
# checking them anew cost ~1 us of a ~40 us small-batch step. Bounded: it is
# only filled with valid options, which are few unless free_bits varies.
_CODES_CACHE: dict = {}
_CODES_CACHE_MAX = 256


def option_codes(beta, reduction, kl_reduction, recon, free_bits) -> tuple:
    """check_options(...).codes, remembered per distinct option set; beta is
    checked every call (it may be a tensor, and changes between steps)."""
    if torch.compiler.is_compiling():  # traced once: no cache in the graph
        return check_options(beta, reduction, kl_reduction, recon, free_bits).codes
    _check_beta(beta)
    key = (reduction, kl_reduction, recon, free_bits, type(free_bits))
    try:
        return _CODES_CACHE[key]
    except (KeyError, TypeError):  # not seen yet, or unhashable (then invalid)
        codes = check_options(beta, reduction, kl_reduction, recon, free_bits).codes
        if len(_CODES_CACHE) < _CODES_CACHE_MAX:
            _CODES_CACHE[key] = codes
        return codes


def check_options(beta=1.0, reduction="sum", kl_reduction=None, recon="bce", free_bits=0.0) -> LossOptions:
    reduction = _choice("reduction", reduction, REDUCTIONS)
    kl_reduction = reduction if kl_reduction is None else _choice("kl_reduction", kl_reduction, REDUCTIONS)
    recon = _choice("recon", recon, RECON_MODES)
    _check_beta(beta)
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


def check_tensor_types(tensors) -> None:
    """Python-level types of the tensor arguments, given in schema order
    (TENSOR_ARGS): the op's schema would reject a list with a less helpful
    message. Everything else about the tensors is checked in C++. The common
    case (all tensors, absent optionals None) costs two passes of isinstance."""
    if all(isinstance(t, torch.Tensor) for t in tensors[:4]) and \
            all(t is None or isinstance(t, torch.Tensor) for t in tensors[4:]):
        return
    for name, t in zip(TENSOR_ARGS, tensors):
        if not isinstance(t, torch.Tensor) and not (t is None and name not in TENSOR_ARGS[:4]):
            raise TypeError(f"vae_fused: {name} must be a torch.Tensor, got {type(t).__name__}")


def under_functorch(tensors) -> bool:
    if torch.compiler.is_compiling() or not torch._C._are_functorch_transforms_active():
        return False
    return any(torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors)


def strict_mode() -> bool:
    """VAE_FUSED_STRICT=1: turn a CUDA NaN loss from out-of-range BCE input into
    PyTorch's RuntimeError, at the cost of one host sync."""
    return os.environ.get("VAE_FUSED_STRICT", "0") not in ("", "0")


def cpu_capability() -> str:
    """The CPU kernel build this process runs: 'AVX512', 'AVX2' or 'DEFAULT'
    (lowered by ATEN_CPU_CAPABILITY or VAE_FUSED_CPU_CAPABILITY)."""
    return torch.ops.vae_fused.cpu_capability()


# ---------------------------------------------------------------------------
# Fake kernels: output shapes and dtypes only (csrc/plan.h says the same).
def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _term_like(t: torch.Tensor, reduction: int, dtype: torch.dtype) -> torch.Tensor:
    shape = (t.shape[0],) if reduction == REDUCTIONS["none"] else ()
    return t.new_empty(shape, dtype=_acc_dtype(dtype))


def _extra_grad_shape(extra: torch.Tensor, target: torch.Tensor, prior: bool, free_bits: float,
                      reduction: int) -> tuple:
    """The shape of an extra's gradient as the op returns it (C++ twin:
    extra_grad_kind in csrc/plan.cpp): (B,) per-sample sums, (1, ...) sums over
    the samples, or the target's shape (per element)."""
    padded = (1,) * (target.dim() - extra.dim()) + tuple(extra.shape)
    if prior and free_bits > 0:
        return tuple(target.shape)
    if all(d == 1 for d in padded[1:]):
        return (target.shape[0],)
    if padded[0] == 1 and reduction != REDUCTIONS["none"]:
        return (1, *target.shape[1:])
    return tuple(target.shape)


@torch.library.register_fake("vae_fused::vae_loss")
def _vae_loss_fake(recon_x, x, mu, logvar, prior_mu, prior_logvar, recon_logvar, recon_offset, weight,
                   recon_mode, reduction, kl_reduction, free_bits):
    # The C++ checks run on fake and meta tensors too: the same errors as the
    # real kernels (also for a CPU call with one meta input, which lands here).
    check_inputs_op(recon_x, x, mu, logvar, prior_mu, prior_logvar, recon_logvar, recon_offset, weight,
                    recon_mode, reduction, kl_reduction, free_bits)
    latent = torch.promote_types(mu.dtype, logvar.dtype)
    return _term_like(recon_x, reduction, recon_x.dtype), _term_like(mu, kl_reduction, latent)


@torch.library.register_fake("vae_fused::vae_loss_forward")
def _vae_loss_forward_fake(recon_x, x, mu, logvar, prior_mu, prior_logvar, recon_logvar, recon_offset,
                           weight, recon_mode, reduction, kl_reduction, free_bits, grad_mask):
    recon_term, kl_term = _vae_loss_fake(recon_x, x, mu, logvar, prior_mu, prior_logvar, recon_logvar,
                                         recon_offset, weight, recon_mode, reduction, kl_reduction, free_bits)
    tensors = (recon_x, x, mu, logvar, prior_mu, prior_logvar, recon_logvar, recon_offset, weight)
    grads = []
    for i, t in enumerate(tensors):
        if t is None or i == 8 or not (grad_mask >> i) & 1:
            grads.append(recon_x.new_empty((0,)))
        elif i < 4:  # stored in the accumulation dtype (float32 for half inputs)
            grads.append(t.new_empty(t.shape, dtype=_acc_dtype(t.dtype)))
        else:
            target = mu if i < 6 else recon_x
            shape = _extra_grad_shape(t, target, i < 6, free_bits, kl_reduction if i < 6 else reduction)
            grads.append(target.new_empty(shape, dtype=_acc_dtype(target.dtype)))
    return recon_term, kl_term, grads


@torch.library.register_fake("vae_fused::scale_gradient")
def _scale_gradient_fake(grad, upstream, scale, dtype):
    return grad.new_empty(grad.shape, dtype=dtype)


@torch.library.register_fake("vae_fused::scale_gradient_")
def _scale_gradient_inplace_fake(grad, upstream, scale):
    return None


@torch.library.impl("vae_fused::reference_terms", "CompositeImplicitAutograd")
def _reference_terms(recon_x, x, mu, logvar, prior_mu, prior_logvar, recon_logvar, recon_offset, weight,
                     recon_mode, reduction, kl_reduction, free_bits):
    from . import reference

    # Its codes are checked before they are mapped to the reference's names.
    check_inputs_op(recon_x, x, mu, logvar, prior_mu, prior_logvar, recon_logvar, recon_offset, weight,
                    recon_mode, reduction, kl_reduction, free_bits)
    extras = dict(prior_mu=prior_mu, prior_logvar=prior_logvar, recon_logvar=recon_logvar,
                  recon_offset=recon_offset, weight=weight)
    terms = reference.vae_loss_terms(
        recon_x, x, mu, logvar, recon=RECON_NAMES[recon_mode], reduction=REDUCTION_NAMES[reduction],
        kl_reduction=REDUCTION_NAMES[kl_reduction], free_bits=free_bits,
        **{k: v for k, v in extras.items() if v is not None})
    return terms.recon, terms.kl

