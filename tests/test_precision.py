"""Half-precision gradients keep eager's precision under a GradScaler-sized
upstream gradient; binary targets take a faster path with the same results;
BCE-with-logits' accuracy bound over the whole logit range, in every build."""
import math

import pytest
import torch
import torch.nn.functional as F

import vae_fused
from .helpers import use_kernel_build


def _zero_fraction(t):
    return (t == 0).double().mean().item()


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_mean_reduction_times_grad_scaler_does_not_underflow(dtype):
    # 4M half elements, reduction="mean": 1/N = 2.4e-7 is below fp16's normal range;
    # eager scales in float before rounding, and so must the op
    g = torch.Generator().manual_seed(0)
    n_rows, d = 4096, 1024
    p = (torch.rand(n_rows, d, generator=g) * 0.98 + 0.01).to(dtype).requires_grad_()
    x = torch.rand(n_rows, d, generator=g)
    mu = torch.randn(n_rows, 8, generator=g).to(dtype).requires_grad_()
    lv = (torch.randn(n_rows, 8, generator=g) * 0.5).to(dtype).requires_grad_()
    upstream = 65536.0
    (vae_fused.vae_loss(p, x, mu, lv, reduction="mean") * upstream).backward()
    fused = p.grad.clone()
    p.grad = None
    eager = F.binary_cross_entropy(p.float(), x, reduction="mean").to(dtype)  # what autocast users get
    (eager * upstream).backward()
    assert abs(_zero_fraction(fused) - _zero_fraction(p.grad)) <= 1e-3
    # and the values agree with float64 to half precision
    expected = ((p.double() - x.double()) / (p.double() * (1 - p.double()))) * upstream / p.numel()
    rel = ((fused.double() - expected).abs() / expected.abs().clamp_min(1e-30))
    assert rel.median() < (2e-2 if dtype == torch.bfloat16 else 2e-3)


@pytest.mark.parametrize("shape", [(7, 33), (4, 3000), (1, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_binary_targets_give_the_general_paths_results(shape, dtype):
    # The same loss with a target of exactly 0/1 and one where a single element is
    # 0.5 (that vector block takes the general path): the untouched elements'
    # gradients must be bit-identical, and the loss must match float64 F.bce.
    g = torch.Generator().manual_seed(1)
    p = (torch.rand(shape, generator=g, dtype=torch.float64) * 0.98 + 0.01).to(dtype).requires_grad_()
    x = (torch.rand(shape, generator=g, dtype=torch.float64) > 0.5).to(dtype)
    mu, lv = torch.zeros(shape[0], 1), torch.zeros(shape[0], 1)
    loss = vae_fused.vae_loss(p, x, mu, lv, reduction="none")
    (grad_binary,) = torch.autograd.grad(loss.sum(), p)
    expected = F.binary_cross_entropy(p.detach().double(), x.double(), reduction="none").sum(1)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype != torch.float64 else dict(rtol=1e-12, atol=0)
    if dtype == torch.bfloat16:
        tol = dict(rtol=2e-2, atol=1e-3)
    torch.testing.assert_close(loss.double(), expected, **tol)
    # a generic target that happens to be binary, read through the general rule
    x_mixed = x.clone()
    x_mixed.view(-1)[-1] = 0.5
    (grad_mixed,) = torch.autograd.grad(vae_fused.vae_loss(p, x_mixed, mu, lv).sum(), p)
    flat_b, flat_m = grad_binary.reshape(-1)[:-64], grad_mixed.reshape(-1)[:-64]
    assert torch.equal(flat_b, flat_m)


@pytest.mark.parametrize("cap", ["default", "avx2", "avx512"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_binary_path_is_bit_identical_to_the_general_path(monkeypatch, cap, dtype):
    # The same binary targets twice: without a target gradient (blocks of 0/1
    # targets take the one-log path) and with one (every block takes the
    # general rule). Losses and recon_x gradients must agree bit for bit, in
    # every kernel build; -0.0 targets, p at 0 and 1, and a row whose blocks
    # mix binary and general ones included.
    use_kernel_build(monkeypatch, cap)
    g = torch.Generator().manual_seed(5)
    shape = (6, 1000)
    p = (torch.rand(shape, generator=g, dtype=torch.float64) * 0.98 + 0.01).to(dtype)
    p[0, :8] = torch.tensor([0.0, 1.0, 0.0, 1.0, 1e-30, 1 - 2.0 ** -24, 0.5, 2.0 ** -130], dtype=dtype)
    x = (torch.rand(shape, generator=g) > 0.5).to(dtype)
    x[0, :4] = torch.tensor([0.0, 1.0, -0.0, 0.0], dtype=dtype)
    x[1, ::97] = 0.25  # general blocks among binary ones in this row
    mu, lv = torch.zeros(shape[0], 1, dtype=dtype), torch.zeros(shape[0], 1, dtype=dtype)
    runs = []
    for target_grad in (False, True):
        pp = p.clone().requires_grad_()
        xx = x.clone().requires_grad_(target_grad)
        loss = vae_fused.vae_loss(pp, xx, mu, lv, reduction="none")
        runs.append((loss.detach(), torch.autograd.grad(loss.sum(), pp)[0]))
    (loss_fast, grad_fast), (loss_general, grad_general) = runs
    assert torch.equal(loss_fast, loss_general)
    assert torch.equal(grad_fast, grad_general)
    # and both are F.binary_cross_entropy's (float64 oracle, -100 clamp included)
    expected = F.binary_cross_entropy(p.double(), x.double().abs(), reduction="none").sum(1)
    torch.testing.assert_close(loss_fast.double(), expected, rtol=1e-5 if dtype == torch.float32 else 1e-12,
                               atol=0)


@pytest.mark.parametrize("shape", [(5, 37), (3, 4099), (1, 1), (2, 70000)])
@pytest.mark.parametrize("reduction", ["sum", "none"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_gradient_rounded_once_from_float(shape, reduction, dtype):
    # The backward of a half input: the float32 element gradient times the
    # upstream gradient (one factor per sample under "none"), rounded once to
    # the input's dtype -- every element, tails and row ends included.
    g = torch.Generator().manual_seed(3)
    p = (torch.rand(shape, generator=g) * 0.98 + 0.01).to(dtype).requires_grad_()
    x = torch.rand(shape, generator=g).to(dtype)
    mu = torch.randn(shape[0], 3, generator=g).to(dtype).requires_grad_()
    lv = torch.randn(shape[0], 3, generator=g).to(dtype).requires_grad_()
    loss = vae_fused.vae_loss(p, x, mu, lv, reduction=reduction)
    upstream = torch.rand(loss.shape, generator=g) * 100 + 1
    loss.backward(upstream.to(dtype))
    # float64 oracle of F.binary_cross_entropy's gradient, times the upstream
    pd, xd = p.detach().double(), x.double()
    up = upstream.to(dtype).double()
    factor = up.reshape(-1, 1) if reduction == "none" else up
    expected = (pd - xd) / (pd * (1 - pd)).clamp_min(1e-12) * factor
    # rounded once from float32: within half an ulp of dtype (+ float32's error)
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(p.grad.double(), expected, rtol=eps * 0.5 + 1e-5, atol=0)
    assert p.grad.dtype == dtype


def _ulp(y):
    """ulp of float32(|y|), floored at the denormal spacing."""
    y = y.float().abs()
    scale = (y.view(torch.int32) & 0x7F800000).view(torch.float32)
    return torch.clamp(scale.double() * 2.0 ** -23, min=2.0 ** -149)


# The bound of BCE-with-logits in float32 (every build; measured maxima on an
# AMD EPYC: loss 2.17 / 2.37 ulp, gradient 3.5 (AVX2) / 2.7 ulp): against the
# exact value where t is 0 or 1 (no cancellation in the formula, so the
# result itself is accurate, however small), else against the larger of the
# terms that cancel (|z| for the loss, max(sigmoid(z), t) for the gradient).
LOGITS_LOSS_ULP, LOGITS_GRAD_ULP = 3.0, 4.0


@pytest.mark.parametrize("cap", ["default", "avx2", "avx512"])
def test_bce_logits_accuracy_over_the_logit_range(monkeypatch, cap):
    use_kernel_build(monkeypatch, cap)
    # every 512th float32 logit in [-110, 110]: e^-|z| from 1 down to denormals
    bits = torch.arange(0, 0x42DC0000 + 1, 512, dtype=torch.int32)  # 0 .. 110.0
    z = torch.cat([bits.view(torch.float32), -bits.view(torch.float32)]).reshape(-1, 1)
    zeros = torch.zeros(z.shape[0], 1)
    zd = z.double()
    for t in (0.0, 1.0, 0.3, 0.5, 0.7):
        tt = torch.full_like(z, t)
        zr = z.clone().requires_grad_()
        loss = vae_fused.vae_loss(zr, tt, zeros, zeros, recon="bce_logits", reduction="none")
        grad, = torch.autograd.grad(loss.sum(), zr)
        td = tt.double()
        # exact, arranged without cancellation: log1p(e^-|z|) + (1 - t) relu(z) + t relu(-z)
        exact = torch.log1p(torch.exp(-zd.abs())) + zd.clamp(min=0) * (1 - td) + (-zd).clamp(min=0) * td
        exact_grad = torch.where(zd >= 0, (1 - td) - torch.sigmoid(-zd), torch.sigmoid(zd) - td)
        if t in (0.0, 1.0):
            loss_unit, grad_unit = _ulp(exact), _ulp(exact_grad)
        else:
            loss_unit = _ulp(torch.maximum(zd.abs(), exact))
            grad_unit = _ulp(torch.maximum(torch.sigmoid(zd), td))
        loss_err = ((loss.reshape(-1, 1).double() - exact).abs() / loss_unit).max().item()
        grad_err = ((grad.double() - exact_grad).abs() / grad_unit).max().item()
        assert loss_err <= LOGITS_LOSS_ULP, f"{cap} t={t}: loss off by {loss_err} ulp"
        assert grad_err <= LOGITS_GRAD_ULP, f"{cap} t={t}: gradient off by {grad_err} ulp"
        assert not math.isnan(loss_err) and not math.isnan(grad_err)
