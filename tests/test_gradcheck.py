"""torch.autograd.gradcheck on every mode and reduction; torch.library.opcheck
on the op; backward with retain_graph, autograd.grad, upstream gradients
other than 1, and gradient buffers the caller owns."""
import pytest
import torch

import vae_fused
from .helpers import (GRAD_TOL, RECON_MODES, REDUCTIONS, check_low_precision, grads, leaf, make_inputs, oracle_loss,
                      oracle_terms)

# The op schema's codes, from their one Python home (tests/test_codes.py checks
# each against the C++ side).
from vae_fused._ops import RECON_MODES as RECON_CODES, REDUCTIONS as REDUCTION_CODES  # noqa: E402


def _gradcheck_inputs(recon, shape=(3, 7), latent=(3, 2), x_requires_grad=True, seed=0):
    # p in [0.05, 0.95]: away from BCE's clamp kinks, where finite differences
    # would straddle a non-differentiable point
    inputs = make_inputs(shape, latent, recon=recon, lo=0.05, hi=0.95, seed=seed)
    return [t.requires_grad_(i != 1 or x_requires_grad) for i, t in enumerate(inputs)]


@pytest.mark.parametrize("x_requires_grad", [True, False], ids=["x_grad", "x_nograd"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("recon", RECON_MODES)
def test_gradcheck(recon, reduction, x_requires_grad):
    inputs = _gradcheck_inputs(recon, x_requires_grad=x_requires_grad)
    fn = lambda *a: vae_fused.vae_loss(*a, recon=recon, reduction=reduction, beta=0.7)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("recon", RECON_MODES)
def test_gradcheck_images_and_terms(recon):
    # 4-D images, 2-D latents, both outputs of vae_loss_terms with their own upstream weights
    inputs = _gradcheck_inputs(recon, shape=(2, 3, 2, 3), latent=(2, 2, 2), seed=1)

    def fn(*a):
        terms = vae_fused.vae_loss_terms(*a, recon=recon, reduction="none", beta=0.3)
        return terms.recon * 1.5, terms.kl * -0.5, terms.loss

    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("kwargs", [
    dict(free_bits=0.5, reduction="batchmean"), dict(free_bits=0.5, reduction="sum"),
    dict(free_bits=0.5, reduction="mean"), dict(reduction="mean", kl_reduction="batchmean"),
    dict(reduction="none", kl_reduction="sum"), dict(reduction="sum", kl_reduction="mean"),
    dict(reduction="batchmean", kl_reduction="none"),
    dict(free_bits=0.5, reduction="none", kl_reduction="batchmean"),
    dict(free_bits=0.5, reduction="mean", kl_reduction="sum", recon="cbce"),
    dict(free_bits=0.5, reduction="batchmean", recon="bce_logits"),
], ids=str)
def test_gradcheck_kl_options(kwargs):
    recon_x, x = make_inputs((4, 6), (4, 3), recon=kwargs.get("recon", "bce"), lo=0.05, hi=0.95)[:2]
    mu, logvar = make_inputs((4, 6), (4, 3))[2:]
    mu = mu * 0.8  # some units above the 0.5 floor, some under it, none at it
    inputs = [t.requires_grad_() for t in (recon_x, x, mu, logvar)]
    per_unit = (-0.5 * (1 + logvar - mu ** 2 - logvar.exp())).mean(0)
    if "free_bits" in kwargs:
        assert (per_unit < 0.5).any() and (per_unit > 0.5).any()
        assert ((per_unit - 0.5).abs() > 1e-3).all()
    assert torch.autograd.gradcheck(lambda *a: vae_fused.vae_loss(*a, **kwargs), inputs)


def test_gradcheck_beta_tensor_and_non_contiguous():
    recon_x, x, mu, logvar = make_inputs((4, 10), (4, 6), lo=0.05, hi=0.95)
    base = [t.requires_grad_() for t in (recon_x, x, mu, logvar)]
    beta = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)

    def fn(r, t, m, lv, b):
        return vae_fused.vae_loss(r.t().contiguous().t()[:, ::2], t[:, ::2], m[:, 1::2], lv[:, 1::2], beta=b,
                                  reduction="none")

    assert torch.autograd.gradcheck(fn, base + [beta])


def _op_args(recon="bce", reduction="sum", kl_reduction="sum", free_bits=0.0, grads=(True, True, True, True),
             dtype=torch.float64, shape=(3, 5), latent=(3, 2), extras=None):
    """Arguments of the public op vae_fused::vae_loss (schema order)."""
    inputs = make_inputs(shape, latent, recon=recon, dtype=dtype)
    inputs = [t.requires_grad_(g) for t, g in zip(inputs, grads)]
    extras = extras or {}
    optional = [extras.get(name) for name in ("prior_mu", "prior_logvar", "recon_logvar", "recon_offset", "weight")]
    return (*inputs, *optional, RECON_CODES[recon], REDUCTION_CODES[reduction], REDUCTION_CODES[kl_reduction], free_bits)


def _learned(shape, value=0.1):
    return torch.full(shape, value, dtype=torch.float64, requires_grad=True)


OP_CASES = {
    "bce-sum": _op_args(),
    "logits-none": _op_args("bce_logits", "none", "none"),
    "mse-mean": _op_args("mse", "mean", "batchmean", grads=(True, False, True, False)),
    "cbce-freebits": _op_args("cbce", "batchmean", "batchmean", free_bits=0.2),
    "nograd": _op_args("bce", "sum", "mean", grads=(False, False, False, False)),
    "float32": _op_args("bce", "sum", "sum", dtype=torch.float32),
    "bf16-none": _op_args("bce", "none", "sum", dtype=torch.bfloat16, grads=(True, False, True, True)),
    "fp16-cbce": _op_args("cbce", "mean", "mean", dtype=torch.float16, grads=(True, True, False, False)),
    "mse-4d": _op_args("mse", "batchmean", "none", grads=(False, True, False, True), shape=(3, 2, 2, 2),
                       latent=(3, 2, 2)),
    "empty": _op_args("bce", "sum", "sum", shape=(0, 4), latent=(0, 2)),
    "l1-latent-diffusion": _op_args("l1", "batchmean", "batchmean", shape=(3, 2, 2, 2), latent=(3, 2), extras=dict(
        recon_logvar=_learned(()), recon_offset=_learned((3, 1, 1, 1)), weight=torch.rand(3, 2, 2, 2, dtype=torch.float64))),
    "mse-per-channel-scale": _op_args("mse", "none", "sum", shape=(3, 2, 2, 2), latent=(3, 2), extras=dict(
        recon_logvar=_learned((1, 2, 1, 1)), recon_offset=_learned((3, 2, 2, 2)))),
    "learned-prior": _op_args("bce", "mean", "mean", extras=dict(prior_mu=_learned((1, 2)), prior_logvar=_learned((3, 2)))),
    "prior-free-bits": _op_args("mse", "sum", "sum", free_bits=0.1, extras=dict(prior_mu=_learned(()),
                                                                               prior_logvar=_learned((1, 2)))),
}


@pytest.mark.parametrize("args", OP_CASES.values(), ids=OP_CASES.keys())
def test_opcheck(args):
    torch.library.opcheck(torch.ops.vae_fused.vae_loss.default, args)


@pytest.mark.parametrize("args", [OP_CASES["bce-sum"], OP_CASES["l1-latent-diffusion"], OP_CASES["learned-prior"]],
                         ids=["bce-sum", "l1-latent-diffusion", "learned-prior"])
def test_opcheck_kernel_op(args):
    # the kernels' op, with every gradient asked for
    torch.library.opcheck(torch.ops.vae_fused.vae_loss_forward.default, (*args, 0b11111111))


def test_kernel_op_outputs_follow_the_mask():
    # the kernels' op: terms of the right shapes/dtypes, element gradients only where asked
    recon_x, x, mu, logvar = make_inputs((3, 5), (3, 2))
    recon_term, kl_term, g = torch.ops.vae_fused.vae_loss_forward(
        recon_x, x, mu, logvar, None, None, None, None, None, 0, REDUCTION_CODES["none"], REDUCTION_CODES["sum"], 0.0,
        0b1001)
    assert len(g) == 9
    assert recon_term.shape == (3,) and kl_term.shape == ()
    assert g[0].shape == recon_x.shape and g[3].shape == logvar.shape
    assert all(g[i].numel() == 0 for i in (1, 2, 4, 5, 6, 7, 8))
    e_recon = oracle_terms(recon_x, x, mu, logvar, reduction="none", kl_reduction="sum")[1]
    torch.testing.assert_close(recon_term, e_recon, rtol=1e-12, atol=0)
    torch.testing.assert_close(g[3], 0.5 * (logvar.exp() - 1), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(g[0], (recon_x - x) / (recon_x * (1 - recon_x)), rtol=1e-12, atol=0)


@pytest.mark.parametrize("shape,upstream_shape,dtype", [
    ((4, 3000), (), torch.float32), ((4, 3000), (4,), torch.float32), ((5, 2, 3), (5,), torch.bfloat16),
    ((6, 7), (), torch.float64), ((3, 8), (), torch.float16)])
@pytest.mark.parametrize("scale", [1.0, 2.5e-8])
def test_scale_gradient_ops(shape, upstream_shape, dtype, scale):
    grad = torch.randn(shape).to(dtype)
    upstream = torch.rand(upstream_shape) * 65536 + 0.5
    factor = upstream.double().reshape((-1,) + (1,) * (len(shape) - 1)) if upstream_shape else upstream.double()
    # the product is formed in float32 (float64 for double) and rounded once
    expected = (grad.double() * (factor * scale).to(torch.float64 if dtype == torch.float64 else torch.float32)
                .double()).to(dtype)
    out = torch.ops.vae_fused.scale_gradient(grad, upstream, scale, dtype)
    assert out.dtype == dtype and out.shape == grad.shape
    torch.testing.assert_close(out, expected, rtol=1e-6 if dtype in (torch.float32, torch.float64) else 0, atol=0)
    in_place = grad.clone()
    torch.ops.vae_fused.scale_gradient_(in_place, upstream, scale)
    torch.testing.assert_close(in_place, out, rtol=0, atol=0)
    torch.library.opcheck(torch.ops.vae_fused.scale_gradient.default, (grad, upstream, scale, dtype))
    if dtype in (torch.float16, torch.bfloat16):
        # a half input's gradient comes from its float32 element gradient, rounded once
        g32 = grad.float() * 3.0
        half = torch.ops.vae_fused.scale_gradient(g32, upstream, scale, dtype)
        expected32 = (g32.double() * (factor * scale).float().double()).to(dtype)
        assert half.dtype == dtype
        torch.testing.assert_close(half, expected32, rtol=0, atol=0)
    torch.library.opcheck(torch.ops.vae_fused.scale_gradient_.default, (grad.clone(), upstream, scale))


def _oracle_grads(inputs_low, objective):
    """(float64 gradients of objective on the numbers actually passed in, the
    same gradients computed by PyTorch in the inputs' own low dtype)."""
    rounded = [t.detach().double().requires_grad_() for t in inputs_low]
    low = [t.detach().clone().requires_grad_() for t in inputs_low]
    return grads(objective(rounded), rounded), grads(objective(low), low)


def _check_grad(got, expected64, reference_low, what):
    dtype = got.dtype
    scale = expected64.abs().max().item()
    if dtype in (torch.float32, torch.float64):
        tol = GRAD_TOL[torch.float64] if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6 * scale)
        torch.testing.assert_close(got.double(), expected64, **tol, msg=what)
    else:
        check_low_precision(got, expected64, reference_low, atol=2e-3 * scale, what=what)


def test_scaled_backward_keeps_dtypes():
    """bf16 inputs, two backward passes that accumulate into .grad: per-sample
    upstream weights (reduction "none"), then a scaled sum. Gradients stay
    bf16 and equal float64 PyTorch's within the error PyTorch makes in bf16."""
    inputs = [t.bfloat16().requires_grad_() for t in make_inputs((4, 50), (4, 3))]
    w = torch.tensor([1.0, 2.0, 0.5, 3.0])
    (vae_fused.vae_loss(*inputs, reduction="none") * w).sum().backward()
    (vae_fused.vae_loss(*inputs) * 0.25).backward()

    def two_passes(leaves):  # the same two backward passes, accumulated the same way
        g1 = grads((oracle_loss(*leaves, reduction="none") * w.to(leaves[0].dtype)).sum(), leaves)
        g2 = grads(oracle_loss(*leaves) * 0.25, leaves)
        return [(a + b) for a, b in zip(g1, g2)]

    rounded = [t.detach().double().requires_grad_() for t in inputs]
    low = [t.detach().clone().requires_grad_() for t in inputs]
    for name, t, e, r in zip(("recon_x", "x", "mu", "logvar"), inputs, two_passes(rounded), two_passes(low)):
        assert t.grad.dtype == torch.bfloat16 and t.grad.shape == t.shape
        _check_grad(t.grad, e, r, f"grad {name}")


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_retain_graph_and_second_backward(reduction):
    inputs = make_inputs((5, 9), (5, 3), requires_grad=True)
    expected = grads(oracle_loss(*inputs, reduction=reduction), inputs)
    loss = vae_fused.vae_loss(*inputs, reduction=reduction).sum()
    loss.backward(retain_graph=True)
    first = [t.grad.clone() for t in inputs]
    loss.backward()
    for t, f, e in zip(inputs, first, expected):
        torch.testing.assert_close(f, e, **GRAD_TOL[torch.float64])
        torch.testing.assert_close(t.grad, 2 * e, **GRAD_TOL[torch.float64])  # accumulated


def test_retain_graph_after_grads_are_zeroed_in_place():
    # an optimizer zeroes .grad in place between the two backward calls; the
    # saved state of the graph must not be what .grad points to
    inputs = make_inputs((5, 9), (5, 3), requires_grad=True)
    expected = grads(oracle_loss(*inputs), inputs)
    loss = vae_fused.vae_loss(*inputs)
    loss.backward(retain_graph=True)
    for t in inputs:
        t.grad.zero_()
    loss.backward()
    for t, e in zip(inputs, expected):
        torch.testing.assert_close(t.grad, e, **GRAD_TOL[torch.float64])


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_autograd_grad_twice_and_scaled_upstream(reduction):
    inputs = make_inputs((5, 9), (5, 3), requires_grad=True)
    expected = grads(oracle_loss(*inputs, reduction=reduction), inputs)
    loss = vae_fused.vae_loss(*inputs, reduction=reduction).sum()
    g1 = torch.autograd.grad(loss, inputs, retain_graph=True)
    g3 = torch.autograd.grad(loss * 3, inputs, retain_graph=True)
    g1_again = torch.autograd.grad(loss, inputs, retain_graph=True)
    gneg = torch.autograd.grad(loss, inputs, grad_outputs=torch.tensor(-0.5, dtype=torch.float64))
    for a, b, c, d, e in zip(g1, g3, g1_again, gneg, expected):
        torch.testing.assert_close(a, e, **GRAD_TOL[torch.float64])
        torch.testing.assert_close(b, 3 * e, **GRAD_TOL[torch.float64])
        torch.testing.assert_close(c, e, **GRAD_TOL[torch.float64])
        torch.testing.assert_close(d, -0.5 * e, **GRAD_TOL[torch.float64])
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(g1, g3))


def test_autograd_grad_results_belong_to_the_caller():
    """A gradient returned by torch.autograd.grad is the caller's tensor: modifying
    it in place (gradient clipping, a penalty term) must not disturb a retained
    graph, as with any PyTorch loss."""
    inputs = make_inputs((5, 9), (5, 3), requires_grad=True)
    expected = grads(oracle_loss(*inputs), inputs)
    loss = vae_fused.vae_loss(*inputs)
    first = torch.autograd.grad(loss, inputs, retain_graph=True)
    for g in first:
        g.mul_(0.5).add_(1.0)
    second = torch.autograd.grad(loss, inputs)
    for g, e in zip(second, expected):
        torch.testing.assert_close(g, e, **GRAD_TOL[torch.float64])


def test_gradient_buffers_are_independent_across_calls():
    # large gradients (which may come from a buffer pool) held across later calls stay intact
    a = make_inputs((4, 100_000), (4, 8), dtype=torch.float32, seed=1, requires_grad=True)
    b = make_inputs((4, 100_000), (4, 8), dtype=torch.float32, seed=2, requires_grad=True)
    ga = torch.autograd.grad(vae_fused.vae_loss(*a), a)
    snapshot = [g.clone() for g in ga]
    for _ in range(3):
        gb = torch.autograd.grad(vae_fused.vae_loss(*b) * 2, b)
        del gb
    gb = torch.autograd.grad(vae_fused.vae_loss(*b), b)
    for g, s in zip(ga, snapshot):
        assert torch.equal(g, s)
    ea = [t.detach().double().requires_grad_() for t in a]
    for g, e in zip(ga, grads(oracle_loss(*ea), ea)):
        torch.testing.assert_close(g.double(), e, rtol=1e-5, atol=1e-6 * e.abs().max().item())
    assert all(x.data_ptr() != y.data_ptr() for x, y in zip(ga, gb))


@pytest.mark.parametrize("kl_reduction", [None, "sum"])
@pytest.mark.parametrize("recon", RECON_MODES)
def test_per_sample_upstream_gradient(recon, kl_reduction):
    inputs = make_inputs((6, 11), (6, 4), recon=recon, requires_grad=True)
    weights = torch.rand(6, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 4 - 1
    kwargs = dict(reduction="none", kl_reduction=kl_reduction, recon=recon, beta=0.8)
    got = grads(vae_fused.vae_loss(*inputs, **kwargs) * weights, inputs)
    expected = grads(oracle_loss(*inputs, **kwargs) * weights, inputs)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, **GRAD_TOL[torch.float64])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_upstream_scaling_in_low_precision(dtype):
    # a non-1 upstream gradient scales in the input's dtype, keeps it, and the
    # result is float64 PyTorch's (not only consistent with the unscaled call)
    inputs = make_inputs((4, 300), (4, 3), dtype=dtype, requires_grad=True)
    w = torch.tensor([1.0, 2.0, 0.5, 4.0])
    objectives = {
        "plain": lambda t, f: f(*t, beta=0.5),
        "scaled": lambda t, f: f(*t, beta=0.5) * 0.25,  # a power of two: exact
        "per_row": lambda t, f: (f(*t, reduction="none", beta=0.5) * w.to(t[0].dtype)).sum(),
    }
    got = {k: grads(obj(inputs, vae_fused.vae_loss), inputs) for k, obj in objectives.items()}
    for k, obj in objectives.items():
        expected, reference_low = _oracle_grads(inputs, lambda t: obj(t, oracle_loss))
        for name, g, e, r, t in zip(("recon_x", "x", "mu", "logvar"), got[k], expected, reference_low, inputs):
            assert g.dtype == dtype and g.shape == t.shape
            _check_grad(g, e, r, f"{k} grad {name}")
    for p, s, r in zip(got["plain"], got["scaled"], got["per_row"]):
        assert torch.equal(s, p * 0.25)
        assert torch.equal(r, p * w.to(dtype).view(-1, *([1] * (p.dim() - 1))))


def test_only_some_inputs_require_grad():
    recon_x, x, mu, logvar = make_inputs((4, 8), (4, 2))
    mu.requires_grad_()
    (g,) = torch.autograd.grad(vae_fused.vae_loss(recon_x, x, mu, logvar, reduction="batchmean"), [mu])
    torch.testing.assert_close(g, mu.detach() / 4, rtol=1e-15, atol=0)
    # only x (e.g. a learned target): the clamped BCE target derivative
    x.requires_grad_()
    (gx,) = torch.autograd.grad(vae_fused.vae_loss(recon_x, x, mu.detach(), logvar, reduction="mean"), [x])
    torch.testing.assert_close(gx, (torch.log1p(-recon_x) - torch.log(recon_x)) / x.numel(), rtol=1e-12, atol=0)
    # nothing requires grad: a plain tensor
    out = vae_fused.vae_loss(recon_x, x.detach(), mu.detach(), logvar)
    assert not out.requires_grad
