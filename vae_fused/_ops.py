"""The fused op: loading the compiled library, its fake (meta) kernel and its
autograd formula. The only module that knows the op's schema."""
from __future__ import annotations

import os

import torch

from ._args import RECON_MODES, REDUCTIONS, LossOptions

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

_OPS = ("vae_loss_forward", "scale_gradient", "cpu_capability")
_missing = [name for name in _OPS if not hasattr(torch.ops.vae_fused, name)]
if _missing:
    raise ImportError(
        f"vae_fused: the compiled library {_C.__file__} is older than this Python package "
        f"(it lacks the op(s) {', '.join(_missing)}). Rebuild it:\n"
        "  pip install --no-build-isolation .      (or -e . for an editable install)"
    )

_forward_op = torch.ops.vae_fused.vae_loss_forward
_scale_op = torch.ops.vae_fused.scale_gradient


def _term_like(t: torch.Tensor, reduction: int) -> torch.Tensor:
    shape = (t.shape[0],) if reduction == REDUCTIONS["none"] else ()
    dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
    return t.new_empty(shape, dtype=dtype)


def _grad_like(t: torch.Tensor, wanted: bool) -> torch.Tensor:
    return t.new_empty(t.shape) if wanted else t.new_empty((0,))


@torch.library.register_fake("vae_fused::vae_loss_forward")
def _vae_loss_forward_fake(recon_x, x, mu, logvar, recon_mode, reduction, kl_reduction,
                           free_bits, grad_recon_x, grad_x, grad_mu, grad_logvar):
    torch._check(recon_x.shape == x.shape, lambda: "recon_x and x must have the same shape")
    torch._check(mu.shape == logvar.shape, lambda: "mu and logvar must have the same shape")
    return (
        _term_like(recon_x, reduction),
        _term_like(mu, kl_reduction),
        _grad_like(recon_x, grad_recon_x),
        _grad_like(x, grad_x),
        _grad_like(mu, grad_mu),
        _grad_like(logvar, grad_logvar),
    )


@torch.library.register_fake("vae_fused::scale_gradient")
def _scale_gradient_fake(grad, scale):
    return grad.new_empty(grad.shape)


def _setup_context(ctx, inputs, output):
    recon_x, x, mu, logvar, *_ = inputs
    element_grads = output[2:]
    ctx.mark_non_differentiable(*element_grads)
    # Otherwise autograd would fill a zero "gradient" the size of each element
    # gradient output before calling backward: a wasted B x D pass.
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(*element_grads)
    ctx.input_numels = tuple(t.numel() for t in (recon_x, x, mu, logvar))


def _graph_is_retained() -> bool:
    try:
        return torch._C._autograd._get_current_graph_task_keep_graph()
    except (AttributeError, RuntimeError):  # unknown: assume it is
        return True


def _can_hand_over_saved(grad: torch.Tensor) -> bool:
    """Whether backward may return a saved element gradient itself: the
    upstream gradient is exactly 1, and the graph is freed after this backward
    (with retain_graph the caller could modify the returned tensor in place and
    a later backward would read it). Free to ask on the CPU in eager mode;
    never while tracing (fake or functional tensors have no value) and never on
    CUDA (a host sync)."""
    if grad.dim() != 0 or grad.device.type != "cpu" or type(grad) is not torch.Tensor:
        return False
    if torch.compiler.is_compiling() or _graph_is_retained():
        return False
    try:
        return bool(grad == 1)
    except RuntimeError:  # e.g. a functorch wrapper
        return False


def _scaled(element_grad: torch.Tensor, grad_output: torch.Tensor, hand_over: bool) -> torch.Tensor:
    """element_grad * grad_output, as a new tensor (the saved one is never
    modified, so retain_graph and torch.autograd.grad stay right); the saved
    tensor itself when _can_hand_over_saved said so (autograd then moves it
    into .grad without a copy)."""
    if grad_output.dim() == 0:
        if hand_over:
            return element_grad
        return _scale_op(element_grad, grad_output)
    # reduction "none": one factor per sample
    return _scale_op(element_grad, grad_output.reshape((-1,) + (1,) * (element_grad.dim() - 1)))


def _backward(ctx, grad_recon, grad_kl, *_unused_element_grad_grads):
    saved = ctx.saved_tensors
    recon_hand_over = grad_recon is not None and _can_hand_over_saved(grad_recon)
    kl_hand_over = grad_kl is not None and _can_hand_over_saved(grad_kl)
    upstream = ((grad_recon, recon_hand_over), (grad_recon, recon_hand_over),
                (grad_kl, kl_hand_over), (grad_kl, kl_hand_over))
    outputs = []
    for i, (element_grad, (grad_output, hand_over)) in enumerate(zip(saved, upstream)):
        if not ctx.needs_input_grad[i] or grad_output is None:
            outputs.append(None)
        elif element_grad.numel() != ctx.input_numels[i]:
            if ctx.input_numels[i] == 0:
                outputs.append(None)
                continue
            raise RuntimeError(
                "vae_fused: backward needs the element gradient of input "
                f"{i}, but vae_loss_forward was called with its grad flag off; "
                "call vae_fused.vae_loss (which sets the flags) instead of the raw op"
            )
        else:
            outputs.append(_scaled(element_grad, grad_output, hand_over))
    return tuple(outputs) + (None,) * 8


torch.library.register_autograd(
    "vae_fused::vae_loss_forward", _backward, setup_context=_setup_context
)


def _under_functorch(tensors) -> bool:
    if torch.compiler.is_compiling():
        return False
    return any(torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors)


def fused_terms(recon_x, x, mu, logvar, opts: LossOptions):
    """Runs the op once: (recon_term, kl_term), both unweighted."""
    if _under_functorch((recon_x, x, mu, logvar)):
        # torch.library's autograd registration has no functorch support yet;
        # say so plainly instead of PyTorch's note about setup_context.
        raise RuntimeError(
            "vae_fused: torch.func transforms (grad, vmap, jacrev, ...) are not supported; "
            "compute gradients with loss.backward() or torch.autograd.grad, and batch "
            "several losses by concatenating them along the batch with reduction='none'"
        )
    needs = torch.is_grad_enabled()
    recon_term, kl_term, *_ = _forward_op(
        recon_x, x, mu, logvar,
        RECON_MODES[opts.recon], REDUCTIONS[opts.reduction], REDUCTIONS[opts.kl_reduction],
        opts.free_bits,
        needs and recon_x.requires_grad, needs and x.requires_grad,
        needs and mu.requires_grad, needs and logvar.requires_grad,
    )
    return recon_term, kl_term


def strict_mode() -> bool:
    """VAE_FUSED_STRICT=1: turn a CUDA NaN loss from out-of-range BCE input into
    PyTorch's RuntimeError, at the cost of one host sync."""
    return os.environ.get("VAE_FUSED_STRICT", "0") not in ("", "0")


def cpu_capability() -> str:
    """The CPU kernel build this process runs: 'AVX512', 'AVX2' or 'DEFAULT'
    (lowered by ATEN_CPU_CAPABILITY or VAE_FUSED_CPU_CAPABILITY)."""
    return torch.ops.vae_fused.cpu_capability()
