"""PyTorch's BCE edge rules (-100 log clamp, 1e-12 gradient eps), infinite
logits, and the continuous Bernoulli near p = 1/2."""
import math

import pytest
import torch
import torch.nn.functional as F

import vae_fused
from conftest import DEVICE_PARAMS, cb_log_norm_closed


def _zero_latents(n, dtype, device):
    return torch.zeros(n, 1, dtype=dtype, device=device), torch.zeros(n, 1, dtype=dtype, device=device)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_bce_clamp_and_eps_at_the_boundaries(device, dtype):
    grid = [(p, t) for p in (0.0, 1.0) for t in (0.0, 1.0, 0.3)]
    p = torch.tensor([g[0] for g in grid], dtype=dtype, device=device).view(-1, 1).requires_grad_()
    t = torch.tensor([g[1] for g in grid], dtype=dtype, device=device).view(-1, 1)
    mu, logvar = _zero_latents(len(grid), dtype, device)
    got = vae_fused.vae_loss(p, t, mu, logvar, reduction="none")
    expected = F.binary_cross_entropy(p, t, reduction="none").view(-1)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-5)
    assert torch.isfinite(got).all()  # -100 clamp: p in {0, 1} stays finite
    (g,) = torch.autograd.grad(got.sum(), [p])
    (e,) = torch.autograd.grad(expected.sum(), [p])
    torch.testing.assert_close(g, e, rtol=1e-6, atol=0)  # (p - t) / max(p(1-p), 1e-12)
    assert g.abs().max() > 1e11  # the eps, not an infinity


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_target_gradient_clamped(dtype):
    p = torch.tensor([[0.0], [1e-50], [0.3], [1.0]], dtype=dtype)
    t = torch.full_like(p, 0.4).requires_grad_()
    mu, logvar = _zero_latents(4, dtype, "cpu")
    (g,) = torch.autograd.grad(vae_fused.vae_loss(p, t, mu, logvar), [t])
    log_p = torch.log(p).clamp_min(-100)
    log_1mp = torch.log1p(-p).clamp_min(-100)
    torch.testing.assert_close(g, log_1mp - log_p, rtol=1e-6, atol=1e-6)


def test_bce_tiny_probabilities_keep_relative_accuracy():
    # log(1 - p) for tiny p must not round to 0: compare with log1p in float64.
    p = torch.tensor([[1e-12], [1e-9], [3e-8], [1e-4]], dtype=torch.float32)
    t = torch.zeros_like(p)
    mu, logvar = _zero_latents(4, torch.float32, "cpu")
    got = vae_fused.vae_loss(p, t, mu, logvar, reduction="none")
    expected = -torch.log1p(-p.double()).view(-1)
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_logits_large_and_infinite_like_pytorch(device):
    z = torch.tensor([50.0, -50.0, 1e4, -1e4, 0.0, math.inf, -math.inf, math.inf, -math.inf],
                     dtype=torch.float64, device=device)
    t = torch.tensor([0.3, 0.3, 1.0, 0.0, 0.5, 1.0, 1.0, 0.0, 0.0], dtype=torch.float64, device=device)
    z = z.view(-1, 1).requires_grad_()
    t = t.view(-1, 1)
    mu, logvar = _zero_latents(9, torch.float64, device)
    got = vae_fused.vae_loss(z, t, mu, logvar, reduction="none", recon="bce_logits")
    expected = F.binary_cross_entropy_with_logits(z, t, reduction="none").view(-1)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12, equal_nan=True)
    (g,) = torch.autograd.grad(got[:5].sum(), [z])
    (e,) = torch.autograd.grad(expected[:5].sum(), [z])
    torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_continuous_bernoulli_near_one_half(dtype):
    offsets = [0.0, 1e-9, -1e-9, 1e-4, -1e-4, 0.03, -0.03, 0.2, -0.2, 0.049, 0.051, 0.124, 0.126]
    p = torch.tensor([0.5 + o for o in offsets], dtype=torch.float64)
    t = torch.full_like(p, 0.7)
    mu, logvar = _zero_latents(len(p), dtype, "cpu")
    got = vae_fused.vae_loss(p.to(dtype).view(-1, 1), t.to(dtype).view(-1, 1), mu, logvar,
                             reduction="none", recon="cbce")
    pr = p.to(dtype).double()
    expected = F.binary_cross_entropy(pr, t.to(dtype).double(), reduction="none") - cb_log_norm_closed(pr)
    # the closed form itself is only reliable away from 1/2; there use its limit / series
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-6, atol=1e-6)
    far = (pr - 0.5).abs() > 1e-3
    torch.testing.assert_close(got.double()[far], expected[far], **tol)
    # at p = 1/2 exactly: C = 2, so the loss is BCE(1/2, t) - log 2 = log 2 - log 2 = 0
    half = torch.tensor([[0.5]], dtype=dtype)
    v = vae_fused.vae_loss(half, torch.tensor([[0.7]], dtype=dtype), *_zero_latents(1, dtype, "cpu"),
                           recon="cbce")
    assert abs(v.item()) < 1e-6
    assert torch.isfinite(got).all()


def test_continuous_bernoulli_gradient_is_smooth_across_one_half():
    p = torch.linspace(0.3, 0.7, 4001, dtype=torch.float64).view(-1, 1).requires_grad_()
    t = torch.full_like(p, 0.25)
    mu, logvar = _zero_latents(p.shape[0], torch.float64, "cpu")
    (g,) = torch.autograd.grad(vae_fused.vae_loss(p, t, mu, logvar, recon="cbce"), [p])
    g = g.view(-1)
    assert torch.isfinite(g).all()
    # consecutive gradient values differ by a smooth amount (no jump at the window edge)
    step = (g[1:] - g[:-1]).abs()
    assert step.max() < 20 * step.median()
    # d/dp of -log C at p = 1/2 is 0: the gradient there equals BCE's (p - t)/(p(1-p))
    mid = g[2000].item()
    assert mid == pytest.approx((0.5 - 0.25) / 0.25, rel=1e-12)
