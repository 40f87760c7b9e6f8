"""The recon modes against their PyTorch / closed-form definitions (logits
incl. huge and infinite z, MSE, the continuous Bernoulli near p = 1/2), free
bits, and the recipes of docs/recipes.md against hand-written PyTorch."""
import math

import pytest
import torch
import torch.nn.functional as F

import vae_fused
from .helpers import (DEVICE_PARAMS, GRAD_TOL, REDUCTIONS, TOL, cb_log_norm_grad_scalar, cb_log_norm_scalar,
                      check_low_precision, grads, make_inputs, oracle_loss, oracle_terms, reduce_as, use_kernel_build,
                      zero_latents)


def _kl_sum(mu, logvar):
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


# ---------------------------------------------------------------------------
# bce_logits
@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_logits_match_bce_with_logits(device, reduction):
    z, x, mu, logvar = make_inputs((6, 3, 5, 5), (6, 8), recon="bce_logits", device=device, requires_grad=True)
    got = vae_fused.vae_loss(z, x, mu, logvar, recon="bce_logits", reduction=reduction)
    rows = F.binary_cross_entropy_with_logits(z, x, reduction="none")
    expected = reduce_as(rows, reduction) + reduce_as(-0.5 * (1 + logvar - mu ** 2 - logvar.exp()), reduction)
    torch.testing.assert_close(got, expected, **TOL[torch.float64])
    for g, e in zip(grads(got, [z, x, mu, logvar]), grads(expected, [z, x, mu, logvar])):
        torch.testing.assert_close(g, e, **GRAD_TOL[torch.float64])
    if reduction == "mean":  # F's own reduction, not ours
        torch.testing.assert_close(vae_fused.vae_loss_terms(z, x, mu, logvar, recon="bce_logits",
                                                            reduction="mean").recon,
                                   F.binary_cross_entropy_with_logits(z, x), **TOL[torch.float64])


LOGITS = [50.0, -50.0, 1e4, -1e4, 0.0, 1e-30, 700.0, -800.0, 1e300, -1e300,
          math.inf, -math.inf, math.inf, -math.inf, math.inf, -math.inf]
TARGETS = [0.3, 0.3, 1.0, 0.0, 0.5, 0.7, 0.2, 0.9, 0.0, 1.0,
           1.0, 1.0, 0.0, 0.0, 0.5, 0.5]


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_logits_large_and_infinite_like_pytorch(device, dtype):
    """Finite z of any size is stable; +-inf gives exactly what PyTorch gives
    (NaN where PyTorch computes 0 * inf), for the value and both gradients."""
    keep = [i for i, v in enumerate(LOGITS) if dtype == torch.float64 or abs(v) < 1e38 or math.isinf(v)]
    zs = [LOGITS[i] for i in keep]
    ts = [TARGETS[i] for i in keep]
    z = torch.tensor(zs, dtype=dtype, device=device).view(-1, 1).requires_grad_()
    t = torch.tensor(ts, dtype=dtype, device=device).view(-1, 1).requires_grad_()
    mu, logvar = zero_latents(len(zs), dtype, device)
    got = vae_fused.vae_loss(z, t, mu, logvar, reduction="none", recon="bce_logits")
    z_f, t_f = z.detach().clone().requires_grad_(), t.detach().clone().requires_grad_()
    expected = F.binary_cross_entropy_with_logits(z_f, t_f, reduction="none").view(-1)
    finite_z = torch.isfinite(z.detach().view(-1))
    assert torch.isfinite(got[finite_z]).all()  # stable for any finite z
    assert torch.equal(torch.isnan(got), torch.isnan(expected))
    torch.testing.assert_close(got, expected, rtol=1e-12 if dtype == torch.float64 else 1e-6, atol=1e-12,
                               equal_nan=True)
    gz, gt = torch.autograd.grad(got.sum(), [z, t])
    ez, et = torch.autograd.grad(expected.sum(), [z_f, t_f])
    for g, e in ((gz, ez), (gt, et)):
        assert torch.equal(torch.isnan(g), torch.isnan(e))
        torch.testing.assert_close(g, e, rtol=1e-12 if dtype == torch.float64 else 1e-6, atol=1e-12,
                                   equal_nan=True)


def test_logits_half_precision_extremes():
    z = torch.tensor([[60000.0, -60000.0, 20.0, -20.0, 0.0]], dtype=torch.float16, requires_grad=True)
    t = torch.tensor([[0.25, 0.75, 1.0, 0.0, 0.5]], dtype=torch.float16)
    mu, logvar = torch.zeros(1, 1, dtype=torch.float16), torch.zeros(1, 1, dtype=torch.float16)
    got = vae_fused.vae_loss(z, t, mu, logvar, recon="bce_logits")
    expected = F.binary_cross_entropy_with_logits(z.detach().double(), t.double(), reduction="sum")
    assert got.dtype == torch.float32 and torch.isfinite(got)
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-6)
    (g,) = torch.autograd.grad(got, [z])
    assert g.dtype == torch.float16
    torch.testing.assert_close(g.double(), torch.sigmoid(z.detach().double()) - t.double(), rtol=1e-3, atol=1e-4)


# ---------------------------------------------------------------------------
# mse
@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_mse_matches_mse_loss(device, reduction, dtype):
    p, x, mu, logvar = make_inputs((5, 2, 7, 7), (5, 3), recon="mse", device=device, dtype=dtype,
                                   requires_grad=True)
    got = vae_fused.vae_loss_terms(p, x, mu, logvar, recon="mse", reduction=reduction, beta=0.0)
    p64, x64 = p.detach().double().requires_grad_(), x.detach().double().requires_grad_()
    expected = reduce_as(F.mse_loss(p64, x64, reduction="none"), reduction)
    if reduction == "mean":
        torch.testing.assert_close(expected, F.mse_loss(p64, x64), rtol=1e-14, atol=0)
    if reduction == "sum":
        torch.testing.assert_close(expected, F.mse_loss(p64, x64, reduction="sum"), rtol=1e-14, atol=0)
    torch.testing.assert_close(got.recon.double(), expected, **TOL[dtype])
    torch.testing.assert_close(got.loss, got.recon, rtol=0, atol=0)  # beta = 0
    gp, gx = torch.autograd.grad(got.loss.sum(), [p, x])
    ep, ex = torch.autograd.grad(expected.sum(), [p64, x64])
    torch.testing.assert_close(gp.double(), ep, **GRAD_TOL[dtype])
    torch.testing.assert_close(gx.double(), ex, **GRAD_TOL[dtype])  # 2(t - p), scaled


def test_mse_takes_any_range():
    # MSE is for data in [-1, 1] but is plain squared error for any value
    p = torch.tensor([[-3.0, 0.0, 2.5, 1e3]], dtype=torch.float64, requires_grad=True)
    x = torch.tensor([[1.0, -1.0, 2.5, -1e3]], dtype=torch.float64)
    mu, logvar = zero_latents(1)
    got = vae_fused.vae_loss(p, x, mu, logvar, recon="mse")
    torch.testing.assert_close(got, F.mse_loss(p, x, reduction="sum"), rtol=1e-15, atol=0)
    (g,) = torch.autograd.grad(got, [p])
    torch.testing.assert_close(g, 2 * (p.detach() - x), rtol=0, atol=0)


# ---------------------------------------------------------------------------
# cbce: BCE - log C(p), C(p) = 2 atanh(1 - 2p) / (1 - 2p), C(1/2) = 2
NEAR_HALF = [0.0, 1e-9, -1e-9, 1e-4, -1e-4, 0.03, -0.03, 0.2, -0.2]
# where a float32 / float64 kernel might switch formulas (series vs closed form)
WINDOW_EDGES = [0.049, 0.051, -0.049, -0.051, 0.199, 0.201, -0.199, -0.201, 0.124, 0.126]
ACROSS = [0.001, 0.01, 0.05, 0.1, 0.3, 0.7, 0.9, 0.95, 0.99, 0.999]


def _cbce_expected(p, t):
    """Per element, Python math in float64: BCE as F (clamped logs) - log C(p), and its p-derivative."""
    log_p, log_1mp = max(math.log(p), -100.0), max(math.log1p(-p), -100.0)
    value = -(t * log_p + (1 - t) * log_1mp) - cb_log_norm_scalar(p)
    grad = (p - t) / max(p * (1 - p), 1e-12) - cb_log_norm_grad_scalar(p)
    return value, grad


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("target", [0.0, 0.25, 0.5, 0.7, 1.0])
def test_cbce_closed_form(device, dtype, target):
    ps = [0.5 + o for o in NEAR_HALF + WINDOW_EDGES] + ACROSS
    p = torch.tensor(ps, dtype=dtype, device=device).view(-1, 1).requires_grad_()
    t = torch.full_like(p, target)
    mu, logvar = zero_latents(len(ps), dtype, device)
    got = vae_fused.vae_loss(p, t, mu, logvar, reduction="none", recon="cbce")
    (g,) = torch.autograd.grad(got.sum(), [p])
    assert torch.isfinite(got).all() and torch.isfinite(g).all()
    pr = p.detach().double().view(-1).tolist()  # the numbers actually passed in
    expected = [_cbce_expected(v, float(t[0, 0])) for v in pr]
    e_val = torch.tensor([e[0] for e in expected], dtype=torch.float64)
    e_grad = torch.tensor([e[1] for e in expected], dtype=torch.float64)
    if dtype == torch.float64:
        torch.testing.assert_close(got.double().cpu(), e_val, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(g.double().view(-1).cpu(), e_grad, rtol=1e-9, atol=1e-10)
    else:
        torch.testing.assert_close(got.double().cpu(), e_val, rtol=2e-6, atol=2e-6)
        torch.testing.assert_close(g.double().view(-1).cpu(), e_grad, rtol=2e-5, atol=2e-5)


# close to 0 and 1, where 1 - 2p rounds (from p < 2^-25 it is 1 and atanh(x)
# infinite): the op takes 2 atanh(1 - 2p) = log(1 - p) - log(p) on p itself
NEAR_ENDS = [2e-38, 1e-30, 1e-12, 1e-9, 3e-8, 1e-6, 1e-4, 0.01, 0.2, 0.8, 0.99, 1 - 1e-4, 1 - 1e-6,
             1 - 2.0 ** -24]


@pytest.mark.parametrize("cap", ["default", "avx2", "avx512"])
@pytest.mark.parametrize("target", [0.0, 0.4, 1.0])
def test_cbce_accurate_near_zero_and_one(monkeypatch, cap, target):
    use_kernel_build(monkeypatch, cap)
    p = torch.tensor(NEAR_ENDS, dtype=torch.float32).view(-1, 1).requires_grad_()
    t = torch.full_like(p, target)
    mu, logvar = zero_latents(len(NEAR_ENDS), torch.float32)
    got = vae_fused.vae_loss(p, t, mu, logvar, reduction="none", recon="cbce")
    (g,) = torch.autograd.grad(got.sum(), [p])
    expected = [_cbce_expected(v, target) for v in p.detach().double().view(-1).tolist()]
    e_val = torch.tensor([e[0] for e in expected], dtype=torch.float64)
    e_grad = torch.tensor([e[1] for e in expected], dtype=torch.float64)
    # relative to the size of the terms summed (BCE up to 100, log C up to ~4.5)
    torch.testing.assert_close(got.double(), e_val, rtol=1e-6, atol=4e-6)
    torch.testing.assert_close(g.double().view(-1), e_grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cap", ["default", "avx2", "avx512"])
def test_cbce_at_the_ends_and_below_the_normal_range(monkeypatch, cap):
    use_kernel_build(monkeypatch, cap)
    # p = 0 or 1: C is infinite, the loss -inf and the p-derivative NaN (as the
    # closed form); denormal p: a finite loss and a finite (saturated) derivative
    p = torch.tensor([0.0, 1.0, 2.0 ** -149, 1e-40, 2.0 ** -126], dtype=torch.float32).view(-1, 1)
    p.requires_grad_()
    t = torch.full_like(p, 0.3)
    mu, logvar = zero_latents(5, torch.float32)
    got = vae_fused.vae_loss(p, t, mu, logvar, reduction="none", recon="cbce")
    (g,) = torch.autograd.grad(got.sum(), [p])
    assert got[:2].tolist() == [-math.inf, -math.inf]
    assert torch.isnan(g[:2]).all()
    assert torch.isfinite(got[2:]).all() and torch.isfinite(g[2:]).all() and (g[2:] > 1e35).all()
    expected = torch.tensor([_cbce_expected(v, 0.3)[0] for v in p[2:].detach().double().view(-1).tolist()],
                            dtype=torch.float64)
    torch.testing.assert_close(got[2:].double(), expected, rtol=1e-6, atol=0)


def test_cbce_at_exactly_one_half_is_zero():
    # C(1/2) = 2 and BCE(1/2, t) = log 2 for any t: the loss is exactly 0 up to rounding
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        half = torch.full((3, 4), 0.5, dtype=dtype, requires_grad=True)
        t = torch.rand(3, 4).to(dtype)
        mu, logvar = zero_latents(3, dtype)
        v = vae_fused.vae_loss(half, t, mu, logvar, recon="cbce")
        assert abs(v.item()) < 1e-6
        (g,) = torch.autograd.grad(v, [half])
        # d/dp log C = 0 at 1/2, so the gradient is BCE's: (1/2 - t) / (1/4)
        torch.testing.assert_close(g.double(), (0.5 - t.double()) * 4, rtol=1e-2 if dtype == torch.bfloat16 else 1e-6,
                                   atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cbce_is_smooth_across_one_half(dtype):
    p = torch.linspace(0.2, 0.8, 6001, dtype=torch.float64).to(dtype).view(-1, 1).requires_grad_()
    t = torch.full_like(p, 0.25)
    mu, logvar = zero_latents(p.shape[0], dtype)
    loss = vae_fused.vae_loss(p, t, mu, logvar, recon="cbce", reduction="none")
    (g,) = torch.autograd.grad(loss.sum(), [p])
    g = g.view(-1).double()
    v = loss.double()
    assert torch.isfinite(g).all() and torch.isfinite(v).all()
    # no jump at any window edge: consecutive values/gradients differ smoothly
    for seq, limit in ((v, 20), (g, 20)):
        step = (seq[1:] - seq[:-1]).abs()
        assert step.max() < limit * step.median(), (step.max().item(), step.median().item())
    # second differences stay small too (no kink in the gradient)
    curv = (g[2:] - 2 * g[1:-1] + g[:-2]).abs()
    tol = 1e-8 if dtype == torch.float64 else 2e-3
    assert curv.max() < tol + 20 * curv.median()


def test_cbce_gradcheck_across_the_unit_interval():
    ps = [0.03, 0.2, 0.3, 0.45, 0.499, 0.5 - 1e-4, 0.5, 0.5 + 1e-4, 0.501, 0.51, 0.55, 0.7, 0.74, 0.76, 0.97]
    p = torch.tensor([ps], dtype=torch.float64, requires_grad=True)
    t = torch.rand(p.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_()
    mu = torch.zeros(1, 1, dtype=torch.float64)
    logvar = torch.zeros(1, 1, dtype=torch.float64)
    for reduction in ("none", "sum", "mean"):
        assert torch.autograd.gradcheck(
            lambda a, b: vae_fused.vae_loss(a, b, mu, logvar, recon="cbce", reduction=reduction), [p, t])


# ---------------------------------------------------------------------------
# free bits
def _free_bits_inputs(dtype=torch.float64):
    recon_x, x, mu, logvar = make_inputs((8, 30), (8, 6), dtype=torch.float64)
    mu = mu * torch.tensor([0.1, 0.2, 1.5, 2.0, 0.05, 3.0], dtype=torch.float64)  # some units collapsed
    logvar = logvar * 0.1
    return [t.to(dtype).requires_grad_() for t in (recon_x, x, mu, logvar)]


def _per_unit_kl(mu, logvar):
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).flatten(1)


@pytest.mark.parametrize("reduction", ["batchmean", "sum", "mean"])
@pytest.mark.parametrize("lam", [0.05, 0.5, 2.0, 100.0])
def test_free_bits(reduction, lam):
    inputs = _free_bits_inputs()
    recon_x, x, mu, logvar = inputs
    kl = _per_unit_kl(mu, logvar)                      # (B, L)
    floored = kl.mean(dim=0).clamp_min(lam).sum()     # sum_j max(lam, mean_i kl_ij)
    bce = F.binary_cross_entropy(recon_x, x, reduction="none").flatten(1)
    B, L = kl.shape
    expected = {"batchmean": bce.sum() / B + floored,
                "sum": bce.sum() + B * floored,
                "mean": bce.mean() + floored / L}[reduction]
    terms = vae_fused.vae_loss_terms(*inputs, reduction=reduction, free_bits=lam)
    torch.testing.assert_close(terms.loss, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(terms.kl, {"batchmean": floored, "sum": B * floored, "mean": floored / L}[reduction],
                               rtol=1e-12, atol=0)
    for g, e in zip(grads(terms.loss, inputs), grads(expected, inputs)):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-14)
    # units under the floor get zero KL gradient, the others the usual one
    per_unit = kl.mean(dim=0).detach()
    under = per_unit < lam
    g_mu, g_lv = torch.autograd.grad(vae_fused.vae_loss(*inputs, reduction=reduction, free_bits=lam),
                                     [mu, logvar])
    assert torch.all(g_mu[:, under] == 0) and torch.all(g_lv[:, under] == 0)
    assert torch.all(g_mu[:, ~under] != 0)
    if lam == 100.0:  # every unit under the floor: KL = L * lam (batchmean) whatever mu is
        assert under.all()
        torch.testing.assert_close(terms.kl, {"batchmean": L * lam, "sum": B * L * lam, "mean": lam}[reduction]
                                   * torch.ones((), dtype=torch.float64), rtol=1e-15, atol=0)


@pytest.mark.parametrize("fn", [vae_fused.vae_loss, vae_fused.reference.vae_loss], ids=["fused", "reference"])
def test_free_bits_unit_exactly_at_the_floor_keeps_its_gradient(fn):
    # Only units *below* the floor lose their gradient (as torch's clamp_min:
    # its gradient passes at equality). Unit 0's KL is 0.5 mu^2 = 0.5 exactly
    # in every row (logvar 0), so its batch mean is exactly the floor.
    recon_x, x, _, _ = make_inputs((4, 6), (4, 3))
    mu = torch.tensor([[1.0, 0.1, 2.0]] * 4, dtype=torch.float64, requires_grad=True)
    logvar = torch.zeros(4, 3, dtype=torch.float64, requires_grad=True)
    (g_mu,) = torch.autograd.grad(fn(recon_x, x, mu, logvar, free_bits=0.5, reduction="batchmean"), [mu])
    torch.testing.assert_close(g_mu[:, 0], torch.full((4,), 0.25, dtype=torch.float64), rtol=0, atol=0)
    assert (g_mu[:, 1] == 0).all() and (g_mu[:, 2] == 0.5).all()  # under the floor; above it


@pytest.mark.parametrize("fn", [vae_fused.vae_loss, vae_fused.reference.vae_loss], ids=["fused", "reference"])
def test_free_bits_nan_unit_makes_the_loss_nan_and_keeps_its_gradient(fn):
    # A NaN in mu makes its unit's batch mean NaN: the loss is NaN, and the
    # unit counts as above the floor (torch.maximum(mean, lam)'s rule; clamp_min
    # would zero the whole unit's gradient), so its finite elements keep the
    # plain KL gradient mu / B and the NaN element's is NaN. Other units are
    # untouched: unit 1 is under the floor, unit 2 above it.
    recon_x, x, _, _ = make_inputs((4, 6), (4, 3))
    mu = torch.tensor([[1.0, 0.1, 2.0]] * 4, dtype=torch.float64)
    mu[2, 0] = float("nan")
    mu.requires_grad_()
    logvar = torch.zeros(4, 3, dtype=torch.float64, requires_grad=True)
    loss = fn(recon_x, x, mu, logvar, free_bits=0.5, reduction="batchmean")
    assert torch.isnan(loss)
    g_mu, g_lv = torch.autograd.grad(loss, [mu, logvar])
    assert torch.isnan(g_mu[2, 0]) and torch.isnan(g_mu).sum() == 1
    torch.testing.assert_close(g_mu[[0, 1, 3], 0], torch.full((3,), 0.25, dtype=torch.float64), rtol=0, atol=0)
    assert (g_mu[:, 1] == 0).all() and (g_mu[:, 2] == 0.5).all()
    assert torch.isfinite(g_lv).all() and (g_lv == 0).all()  # logvar 0: 0.5 (e^0 - 1) / B


def test_free_bits_zero_is_plain_kl_and_float32():
    inputs = _free_bits_inputs()
    plain = vae_fused.vae_loss(*inputs, reduction="batchmean")
    torch.testing.assert_close(vae_fused.vae_loss(*inputs, reduction="batchmean", free_bits=0.0), plain,
                               rtol=0, atol=0)
    torch.testing.assert_close(vae_fused.vae_loss(*inputs, reduction="batchmean", free_bits=1e-9), plain,
                               rtol=1e-14, atol=0)  # every unit above a tiny floor
    low = _free_bits_inputs(torch.float32)
    got = vae_fused.vae_loss(*low, reduction="batchmean", free_bits=0.5)
    expected = oracle_loss(*[t.detach().double() for t in low], reduction="batchmean", free_bits=0.5)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=0)


@pytest.mark.parametrize("reduction", ["batchmean", "sum", "mean"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_free_bits_half_precision(dtype, reduction):
    """Free bits with half inputs: loss and every gradient against float64
    PyTorch on the same (rounded) numbers, within twice PyTorch's own error in
    that dtype; units under the floor get exactly zero KL gradient."""
    lam = 0.5
    low = _free_bits_inputs(dtype)
    rounded = [t.detach().double().requires_grad_() for t in low]
    ref_low = [t.detach().clone().requires_grad_() for t in low]
    per_unit = _per_unit_kl(*rounded[2:]).mean(dim=0).detach()
    assert (per_unit < lam).any() and (per_unit > lam).any()
    assert ((per_unit - lam).abs() > 1e-2).all()  # no unit at the floor, whatever the rounding
    got = vae_fused.vae_loss_terms(*low, reduction=reduction, free_bits=lam)
    assert got.loss.dtype == got.kl.dtype == torch.float32
    e_loss, _, e_kl = oracle_terms(*rounded, reduction=reduction, free_bits=lam)
    r_loss, _, r_kl = oracle_terms(*ref_low, reduction=reduction, free_bits=lam)
    # the KL term is accumulated in float32: float32 accuracy on the rounded numbers
    torch.testing.assert_close(got.kl.double(), e_kl, rtol=1e-5, atol=1e-6)
    check_low_precision(got.loss, e_loss, r_loss, atol=1e-5 * abs(e_loss.item()), what="loss")
    for name, g, e, r, t in zip(("recon_x", "x", "mu", "logvar"), grads(got.loss, low), grads(e_loss, rounded),
                                grads(r_loss, ref_low), low):
        assert g.dtype == dtype and g.shape == t.shape
        check_low_precision(g, e, r, atol=2e-3 * e.abs().max().item(), what=f"grad {name}")
        if name in ("mu", "logvar"):
            assert torch.all(g[:, per_unit < lam] == 0)
            assert torch.all(g[:, per_unit > lam].abs().amax(dim=0) > 0)


def test_free_bits_with_kl_reduction():
    # reduction applies to recon; kl_reduction (not 'none') carries the floor
    inputs = _free_bits_inputs()
    recon_x, x, mu, logvar = inputs
    floored = _per_unit_kl(mu, logvar).mean(dim=0).clamp_min(0.5).sum()
    got = vae_fused.vae_loss(*inputs, reduction="mean", kl_reduction="batchmean", free_bits=0.5, beta=0.1)
    expected = F.binary_cross_entropy(recon_x, x) + 0.1 * floored
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    for g, e in zip(grads(got, inputs), grads(expected, inputs)):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-14)
    # per-sample recon with a floored (scalar) KL broadcasts
    got = vae_fused.vae_loss(*inputs, reduction="none", kl_reduction="batchmean", free_bits=0.5)
    expected = F.binary_cross_entropy(recon_x, x, reduction="none").sum(1) + floored
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("kwargs", [dict(reduction="none"), dict(reduction="sum", kl_reduction="none")])
def test_free_bits_with_none_is_an_error(kwargs):
    with pytest.raises(ValueError, match="free_bits"):
        vae_fused.vae_loss(*make_inputs(), free_bits=0.5, **kwargs)


# ---------------------------------------------------------------------------
# recipes (docs/recipes.md), each against its hand-written PyTorch form
def _hand_terms(recon_x, x, mu, logvar):
    """Per-sample BCE and per-unit KL, written out."""
    bce = F.binary_cross_entropy(recon_x, x, reduction="none").flatten(1)
    kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).flatten(1)
    return bce, kl


def test_beta_vae():
    inputs = make_inputs((6, 30), (6, 5), requires_grad=True)
    recon_x, x, mu, logvar = inputs
    expected = F.binary_cross_entropy(recon_x, x, reduction="sum") + 4.0 * _kl_sum(mu, logvar)
    got = vae_fused.vae_loss(*inputs, beta=4.0)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    for g, e in zip(grads(got, inputs), grads(expected, inputs)):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("as_tensor", [True, False])
def test_kl_annealing(as_tensor):
    inputs = make_inputs((6, 30), (6, 5), requires_grad=True)
    recon_x, x, mu, logvar = inputs
    warmup = 3
    beta = torch.tensor(0.0, dtype=torch.float64)
    for step in range(6):
        b = min(1.0, step / warmup)
        beta.fill_(b)
        got = vae_fused.vae_loss(*inputs, beta=beta if as_tensor else b)
        expected = F.binary_cross_entropy(recon_x, x, reduction="sum") + b * _kl_sum(mu, logvar)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
        for g, e in zip(grads(got, inputs), grads(expected, inputs)):
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("capacity", [0.5, 2.5, 50.0])
def test_capacity_objective(capacity):
    # Burgess et al. 2018: recon + gamma * |KL - C|, both sides of the kink
    inputs = make_inputs((6, 30), (6, 5), requires_grad=True)
    bce, kl = _hand_terms(*inputs)
    gamma = 100.0
    expected = bce.sum() / 6 + gamma * (kl.sum() / 6 - capacity).abs()
    terms = vae_fused.vae_loss_terms(*inputs, reduction="batchmean")
    got = terms.recon + gamma * (terms.kl - capacity).abs()
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    for g, e in zip(grads(got, inputs), grads(expected, inputs)):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


def test_pythae_keras_batchmean():
    inputs = make_inputs((6, 30), (6, 5), requires_grad=True)
    bce, kl = _hand_terms(*inputs)
    expected = (bce.sum(dim=1) + kl.sum(dim=1)).mean()
    got = vae_fused.vae_loss(*inputs, reduction="batchmean")
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    for g, e in zip(grads(got, inputs), grads(expected, inputs)):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-13)


def test_continuous_bernoulli_recipe():
    # recon="cbce" = F.binary_cross_entropy(sum) - sum log C(p), by hand with torch ops away from 1/2
    inputs = make_inputs((6, 30), (6, 5), lo=0.05, hi=0.45, requires_grad=True)
    recon_x, x, mu, logvar = inputs
    y = 1 - 2 * recon_x
    log_c = torch.log(2 * torch.atanh(y) / y)
    expected = F.binary_cross_entropy(recon_x, x, reduction="sum") - log_c.sum() + _kl_sum(mu, logvar)
    got = vae_fused.vae_loss(*inputs, recon="cbce")
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    for g, e in zip(grads(got, inputs), grads(expected, inputs)):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12)
