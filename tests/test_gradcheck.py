"""torch.autograd.gradcheck on every mode and reduction; torch.library.opcheck
on the op; backward with retain_graph, autograd.grad and upstream gradients."""
import pytest
import torch

import vae_fused
from conftest import RECON_MODES, REDUCTIONS, grads, make_inputs, oracle_loss

MODE_CODE = {"bce": 0, "bce_logits": 1, "mse": 2, "cbce": 3}
REDUCTION_CODE = {"none": 0, "mean": 1, "sum": 2, "batchmean": 3}


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("recon", RECON_MODES)
def test_gradcheck(recon, reduction):
    inputs = [t.requires_grad_() for t in make_inputs((3, 7), (3, 2), recon=recon, lo=0.05, hi=0.95)]
    fn = lambda *a: vae_fused.vae_loss(*a, recon=recon, reduction=reduction, beta=0.7)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("kwargs", [
    dict(free_bits=0.3, reduction="batchmean"), dict(free_bits=0.3, reduction="sum"),
    dict(free_bits=0.3, reduction="mean"), dict(reduction="mean", kl_reduction="batchmean"),
    dict(reduction="none", kl_reduction="sum"),
])
def test_gradcheck_kl_options(kwargs):
    recon_x, x, mu, logvar = make_inputs((4, 6), (4, 3))
    mu = mu * 0.8  # some units above the floor, some under it, none at it
    inputs = [t.requires_grad_() for t in (recon_x, x, mu, logvar)]
    assert torch.autograd.gradcheck(lambda *a: vae_fused.vae_loss(*a, **kwargs), inputs)


def test_gradcheck_cbce_across_the_unit_interval():
    p = torch.tensor([[0.03, 0.2, 0.45, 0.499, 0.5, 0.501, 0.51, 0.55, 0.74, 0.76, 0.97]],
                     dtype=torch.float64).requires_grad_()
    t = torch.rand_like(p).requires_grad_()
    mu = torch.zeros(1, 1, dtype=torch.float64)
    logvar = torch.zeros(1, 1, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: vae_fused.vae_loss(a, b, mu, logvar, recon="cbce"), [p, t])


def _op_args(recon="bce", reduction="sum", kl_reduction="sum", free_bits=0.0, grads=(True, True, True, True),
             dtype=torch.float64):
    inputs = make_inputs((3, 5), (3, 2), recon=recon, dtype=dtype)
    inputs = [t.requires_grad_(g) for t, g in zip(inputs, grads)]
    return (*inputs, MODE_CODE[recon], REDUCTION_CODE[reduction], REDUCTION_CODE[kl_reduction],
            free_bits, *grads)


@pytest.mark.parametrize("args", [
    _op_args(),
    _op_args("bce_logits", "none", "none"),
    _op_args("mse", "mean", "batchmean", grads=(True, False, True, False)),
    _op_args("cbce", "batchmean", "batchmean", free_bits=0.2),
    _op_args("bce", "sum", "mean", grads=(False, False, False, False)),
    _op_args("bce", "sum", "sum", dtype=torch.float32),
    _op_args("bce", "none", "sum", dtype=torch.bfloat16, grads=(True, False, True, True)),
], ids=["bce-sum", "logits-none", "mse-mean", "cbce-freebits", "nograd", "float32", "bf16-none"])
def test_opcheck(args):
    torch.library.opcheck(torch.ops.vae_fused.vae_loss_forward.default, args)


@pytest.mark.parametrize("shape,scale_shape,dtype", [
    ((4, 3000), (), torch.float32), ((4, 3000), (4, 1), torch.float32), ((5, 2, 3), (5, 1, 1), torch.bfloat16),
    ((6, 7), (), torch.float64)])
def test_scale_gradient_op(shape, scale_shape, dtype):
    grad = torch.randn(shape).to(dtype)
    scale = torch.rand(scale_shape) + 0.5
    out = torch.ops.vae_fused.scale_gradient(grad, scale)
    assert out.dtype == dtype and out.shape == grad.shape
    torch.testing.assert_close(out, (grad.double() * scale.double()).to(dtype))
    torch.library.opcheck(torch.ops.vae_fused.scale_gradient.default, (grad, scale))


def test_scaled_backward_keeps_dtypes():
    inputs = [t.bfloat16().requires_grad_() for t in make_inputs((4, 50), (4, 3))]
    (vae_fused.vae_loss(*inputs, reduction="none") * torch.tensor([1.0, 2.0, 0.5, 3.0])).sum().backward()
    (vae_fused.vae_loss(*inputs) * 0.25).backward()
    for t in inputs:
        if t.requires_grad:
            assert t.grad.dtype == torch.bfloat16 and torch.isfinite(t.grad.float()).all()


def test_retain_graph_and_second_backward():
    inputs = [t.requires_grad_() for t in make_inputs((5, 9), (5, 3))]
    expected = grads(oracle_loss(*inputs), inputs)
    loss = vae_fused.vae_loss(*inputs)
    loss.backward(retain_graph=True)
    first = [t.grad.clone() for t in inputs]
    loss.backward()
    for t, f, e in zip(inputs, first, expected):
        torch.testing.assert_close(f, e)
        torch.testing.assert_close(t.grad, 2 * e)  # accumulated, saved gradients untouched


def test_autograd_grad_twice_and_scaled_upstream():
    inputs = [t.requires_grad_() for t in make_inputs((5, 9), (5, 3))]
    expected = grads(oracle_loss(*inputs), inputs)
    loss = vae_fused.vae_loss(*inputs)
    g1 = torch.autograd.grad(loss, inputs, retain_graph=True)
    g3 = torch.autograd.grad(loss * 3, inputs, retain_graph=True)
    g1_again = torch.autograd.grad(loss, inputs)
    for a, b, c, e in zip(g1, g3, g1_again, expected):
        torch.testing.assert_close(a, e)
        torch.testing.assert_close(b, 3 * e)
        torch.testing.assert_close(c, e)


@pytest.mark.parametrize("recon", RECON_MODES)
def test_per_sample_upstream_gradient(recon):
    inputs = [t.requires_grad_() for t in make_inputs((6, 11), (6, 4), recon=recon)]
    weights = torch.rand(6, dtype=torch.float64)
    got = grads(vae_fused.vae_loss(*inputs, reduction="none", recon=recon) * weights, inputs)
    expected = grads(oracle_loss(*inputs, reduction="none", recon=recon) * weights, inputs)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12)


def test_only_some_inputs_require_grad():
    recon_x, x, mu, logvar = make_inputs((4, 8), (4, 2))
    mu.requires_grad_()
    (g,) = torch.autograd.grad(vae_fused.vae_loss(recon_x, x, mu, logvar, reduction="batchmean"), [mu])
    torch.testing.assert_close(g, mu.detach() / 4)
