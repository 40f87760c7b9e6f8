"""PyTorch's BCE edge rules: the -100 log clamp, the 1e-12 backward epsilon,
the clamped target gradient, tiny and near-one probabilities. (Infinite
logits and the continuous Bernoulli near p = 1/2 are in test_modes.py.)"""
import math

import pytest
import torch
import torch.nn.functional as F

import vae_fused
from .helpers import DEVICE_PARAMS, zero_latents

GRID = [(p, t) for p in (0.0, 1.0) for t in (0.0, 1.0, 0.3)]


def _column(values, dtype, device, requires_grad=False):
    return torch.tensor(values, dtype=dtype, device=device).view(-1, 1).requires_grad_(requires_grad)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_bce_clamp_and_eps_at_the_boundaries(device, dtype, reduction):
    """p in {0, 1} x t in {0, 1, 0.3}: value (-100 clamp) and gradient
    ((p - t) / max(p(1-p), 1e-12)) as F.binary_cross_entropy's."""
    p = _column([g[0] for g in GRID], dtype, device, requires_grad=True)
    t = _column([g[1] for g in GRID], dtype, device)
    mu, logvar = zero_latents(len(GRID), dtype, device)
    got = vae_fused.vae_loss(p, t, mu, logvar, reduction=reduction)
    expected = F.binary_cross_entropy(p, t, reduction="none").view(-1)
    if reduction == "sum":
        expected = expected.sum()
    elif reduction == "mean":
        expected = expected.mean()
    assert got.dtype == dtype
    torch.testing.assert_close(got, expected, rtol=1e-7 if dtype == torch.float32 else 1e-15, atol=1e-6)
    assert torch.isfinite(got).all()  # -100 clamp: p in {0, 1} stays finite
    if reduction == "none":
        # the exact clamp values: 0, 100, 30 for p = 0; 100, 0, 70 for p = 1
        torch.testing.assert_close(got.double().cpu(), torch.tensor([0.0, 100.0, 30.0, 100.0, 0.0, 70.0],
                                                                    dtype=torch.float64),
                                   rtol=1e-7, atol=1e-5)
    (g,) = torch.autograd.grad(got.sum(), [p])
    (e,) = torch.autograd.grad(expected.sum(), [p])
    torch.testing.assert_close(g, e, rtol=1e-6, atol=0)
    assert torch.isfinite(g).all()
    if reduction != "mean":
        assert g.abs().max() > 1e11  # the eps, not an infinity
        torch.testing.assert_close(g.double().view(-1).cpu(),
                                   torch.tensor([0.0, -1e12, -3e11, 1e12, 0.0, 7e11], dtype=torch.float64),
                                   rtol=1e-6, atol=0)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_target_gradient_clamped(device, dtype):
    """d/dt = max(log(1-p), -100) - max(log p, -100) (API.md). PyTorch's own
    target gradient is not clamped (it gives +-inf at p in {0, 1}); API.md
    promises the clamped form, which equals PyTorch's wherever that is finite
    and inside the clamp."""
    tiny = 1e-50 if dtype == torch.float64 else 1e-40  # a float32 denormal
    ps = [0.0, tiny, 1e-30, 1e-12, 0.3, 0.5, 1 - 1e-7, 1.0]
    p = _column(ps, dtype, device)
    t = torch.full_like(p, 0.4).requires_grad_()
    mu, logvar = zero_latents(len(ps), dtype, device)
    (g,) = torch.autograd.grad(vae_fused.vae_loss(p, t, mu, logvar), [t])
    p64 = p.double()
    expected = torch.log1p(-p64).clamp_min(-100) - torch.log(p64).clamp_min(-100)
    torch.testing.assert_close(g.double(), expected, rtol=1e-6, atol=1e-6)
    assert g.dtype == dtype and torch.isfinite(g).all()
    assert g[0].item() == pytest.approx(100.0) and g[-1].item() == pytest.approx(-100.0)
    # where PyTorch's unclamped target gradient is finite and inside the clamp, they agree
    t_f = t.detach().clone().requires_grad_()
    (e_f,) = torch.autograd.grad(F.binary_cross_entropy(p, t_f, reduction="sum"), [t_f])
    inside = torch.isfinite(e_f) & (e_f.abs() < 99)
    assert inside.sum() >= 4
    torch.testing.assert_close(g[inside], e_f[inside], rtol=1e-6, atol=1e-6)
    # the reference (the spec) and the create_graph path (which differentiates
    # the reference) give the same clamped gradient, finite at p = 0 and 1
    for loss_fn, create_graph in ((vae_fused.reference.vae_loss, False), (vae_fused.vae_loss, True)):
        t_r = t.detach().clone().requires_grad_()
        (g_r,) = torch.autograd.grad(loss_fn(p, t_r, mu, logvar), [t_r], create_graph=create_graph)
        torch.testing.assert_close(g_r.double(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_finite_wherever_pytorch_is_finite(device, dtype):
    """Probabilities at the edges of the representable range: every value and
    gradient equals PyTorch's, finite where PyTorch's is."""
    eps = torch.finfo(dtype).eps
    tiny = torch.finfo(dtype).tiny
    ps = [0.0, tiny / 4, tiny, 1e-30, 1e-20, eps / 4, eps, 1e-3, 0.5, 1 - 1e-3, 1 - eps, 1 - eps / 2, 1.0]
    ts = [0.0, 1.0, 0.3, 0.999]
    pairs = [(a, b) for a in ps for b in ts]
    p = _column([a for a, _ in pairs], dtype, device, requires_grad=True)
    t = _column([b for _, b in pairs], dtype, device)
    mu, logvar = zero_latents(len(pairs), dtype, device)
    got = vae_fused.vae_loss(p, t, mu, logvar, reduction="none")
    expected = F.binary_cross_entropy(p, t, reduction="none").view(-1)
    assert torch.equal(torch.isfinite(got), torch.isfinite(expected))
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, rtol=2e-6 if dtype == torch.float32 else 1e-13, atol=1e-6)
    (g,) = torch.autograd.grad(got.sum(), [p])
    (e,) = torch.autograd.grad(expected.sum(), [p])
    assert torch.equal(torch.isfinite(g), torch.isfinite(e))
    # (float64 at 1e-8: the eps itself is pinned to the bit by the test below)
    torch.testing.assert_close(g, e, rtol=2e-6 if dtype == torch.float32 else 1e-8, atol=1e-6)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_bce_backward_eps_is_pytorchs(device, dtype):
    """Where p(1-p) < 1e-12 the gradient is (p - t) / eps. PyTorch's eps is the
    float constant 1e-12f (= 9.99999996e-13) in every dtype, so in float64
    F.binary_cross_entropy gives (p - t) * 1.000000004e12, not (p - t) * 1e12.
    API.md promises F's backward exactly; in float64 the two differ by 4e-9
    relative, more than the 1e-9 that float64 training must match to."""
    ps = [0.0, 1e-300, 1e-14, 1e-13, 1.0]
    ts = [1.0, 1.0, 0.0, 0.5, 0.0]
    p = _column(ps, dtype, device, requires_grad=True)
    t = _column(ts, dtype, device)
    mu, logvar = zero_latents(len(ps), dtype, device)
    (g,) = torch.autograd.grad(vae_fused.vae_loss(p, t, mu, logvar), [p])
    p_f = p.detach().clone().requires_grad_()
    (e,) = torch.autograd.grad(F.binary_cross_entropy(p_f, t, reduction="sum"), [p_f])
    torch.testing.assert_close(g, e, rtol=4 * torch.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bce_tiny_probabilities_keep_relative_accuracy(dtype):
    # log(1 - p) for tiny p must not round to 0: compare with log1p in float64.
    ps = [1e-12, 1e-9, 3e-8, 1e-6, 1e-4, 0.1, 0.3]
    p = _column(ps, dtype, "cpu")
    t = torch.zeros_like(p)
    mu, logvar = zero_latents(len(ps), dtype, "cpu")
    got = vae_fused.vae_loss(p, t, mu, logvar, reduction="none")
    expected = -torch.log1p(-p.double()).view(-1)
    torch.testing.assert_close(got.double(), expected, rtol=1e-6 if dtype == torch.float32 else 1e-14, atol=0)
    # and log(p) for p near one, t = 1
    q = _column([1 - x for x in (1e-7, 1e-4, 0.1, 0.3)], dtype, "cpu")
    mu, logvar = zero_latents(4, dtype, "cpu")
    got = vae_fused.vae_loss(q, torch.ones_like(q), mu, logvar, reduction="none")
    expected = -torch.log(q.double()).view(-1)
    torch.testing.assert_close(got.double(), expected, rtol=1e-6 if dtype == torch.float32 else 1e-14, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_boundaries(dtype):
    """p in {0, 1} in half precision: the same clamp, a float32 loss, finite
    gradients in the input dtype (computed in float32, rounded once)."""
    p = _column([g[0] for g in GRID], dtype, "cpu", requires_grad=True)
    t = _column([g[1] for g in GRID], dtype, "cpu")
    mu, logvar = zero_latents(len(GRID), dtype, "cpu")
    got = vae_fused.vae_loss(p, t, mu, logvar, reduction="none")
    assert got.dtype == torch.float32
    expected = F.binary_cross_entropy(p.detach().double(), t.double(), reduction="none").view(-1)
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-5)
    (g,) = torch.autograd.grad(got.sum(), [p])
    assert g.dtype == dtype
    if dtype == torch.bfloat16:  # 1e12 is representable in bf16, not in fp16 (max 65504)
        e = (p.detach().double() - t.double()) / torch.clamp_min(p.detach().double() * (1 - p.detach().double()), 1e-12)
        torch.testing.assert_close(g.double(), e, rtol=1e-2, atol=0)
    else:
        assert torch.equal(torch.isinf(g).view(-1), torch.tensor([False, True, True, True, False, True]))


def test_kl_extreme_but_finite():
    # exp(logvar) near float32's limit: finite value and gradients like the closed form
    mu = torch.tensor([[0.0, 1e18]], dtype=torch.float32, requires_grad=True)
    logvar = torch.tensor([[80.0, -80.0]], dtype=torch.float32, requires_grad=True)
    r = torch.full((1, 2), 0.5)
    got = vae_fused.vae_loss_terms(r, r, mu, logvar).kl
    m64, l64 = mu.detach().double(), logvar.detach().double()
    expected = (-0.5 * (1 + l64 - m64 ** 2 - l64.exp())).sum()
    assert math.isfinite(got.item())
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=0)
    gm, gl = torch.autograd.grad(got, [mu, logvar])
    torch.testing.assert_close(gm, mu.detach(), rtol=0, atol=0)
    torch.testing.assert_close(gl.double(), 0.5 * (l64.exp() - 1), rtol=1e-6, atol=0)
