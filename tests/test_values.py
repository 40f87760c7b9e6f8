"""Values and gradients against torch.nn.functional + the closed-form KL."""
import pytest
import torch

import vae_fused
from conftest import (DEVICE_PARAMS, RECON_MODES, REDUCTIONS, TOL, examples_loss, grads,
                      make_inputs, oracle_loss)

SHAPES = [
    ((8, 20), (8, 5)),                   # flat features, 1-D latents
    ((4, 3, 8, 8), (4, 4, 2)),           # images, 2-D latents
    ((1, 784), (1, 20)),                 # B = 1
    ((5, 2100), (5, 3)),                 # rows longer than one 2048-element chunk
    ((3, 1), (3, 1)),                    # D = L = 1
]


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shapes", SHAPES, ids=str)
@pytest.mark.parametrize("recon", RECON_MODES)
def test_value_and_all_gradients_float64(device, reduction, shapes, recon):
    inputs = [t.requires_grad_() for t in make_inputs(*shapes, device=device, recon=recon)]
    expected = oracle_loss(*inputs, reduction=reduction, recon=recon)
    got = vae_fused.vae_loss(*inputs, reduction=reduction, recon=recon)
    assert got.shape == expected.shape and got.dtype == torch.float64
    torch.testing.assert_close(got, expected, **TOL[torch.float64])
    for g, e in zip(grads(got, inputs), grads(expected, inputs)):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_pytorch_examples_loss_is_the_default(device):
    inputs = [t.requires_grad_() for t in make_inputs((16, 784), (16, 20), device=device)]
    expected = examples_loss(*inputs)
    got = vae_fused.vae_loss(*inputs)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    for g, e in zip(grads(got, inputs), grads(expected, inputs)):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("reduction,kl_reduction", [("mean", "batchmean"), ("sum", "mean"),
                                                     ("batchmean", "sum"), ("none", "none")])
def test_kl_reduction_overrides_the_kl_term_only(reduction, kl_reduction):
    inputs = [t.requires_grad_() for t in make_inputs((6, 30), (6, 4))]
    expected = oracle_loss(*inputs, reduction=reduction, kl_reduction=kl_reduction, beta=0.3)
    got = vae_fused.vae_loss(*inputs, reduction=reduction, kl_reduction=kl_reduction, beta=0.3)
    torch.testing.assert_close(got, expected, **TOL[torch.float64])
    for g, e in zip(grads(got, inputs), grads(expected, inputs)):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12)


def test_pytorch_vae_recipe():
    # PyTorch-VAE (AntixK): recons_loss = F.mse_loss(recons, input) (mean) and
    # kld_loss = mean over batch of the per-sample KL sum; loss = recons + kld_weight * kld.
    recon_x, x, mu, logvar = make_inputs((4, 3, 8, 8), (4, 16), recon="mse")
    kld_weight = 0.00025
    recons = torch.nn.functional.mse_loss(recon_x, x)
    kld = torch.mean(-0.5 * torch.sum(1 + logvar - mu ** 2 - logvar.exp(), dim=1), dim=0)
    got = vae_fused.vae_loss(recon_x, x, mu, logvar, recon="mse", reduction="mean",
                             kl_reduction="batchmean", beta=kld_weight)
    torch.testing.assert_close(got, recons + kld_weight * kld, rtol=1e-12, atol=0)


@pytest.mark.parametrize("beta", [0.0, 0.5, 4.0, torch.tensor(2.5, dtype=torch.float64)])
def test_beta_float_or_tensor(beta):
    inputs = [t.requires_grad_() for t in make_inputs()]
    b = float(beta) if isinstance(beta, torch.Tensor) else beta
    got = vae_fused.vae_loss(*inputs, beta=beta)
    expected = oracle_loss(*inputs, beta=b)
    torch.testing.assert_close(got, expected, **TOL[torch.float64])
    for g, e in zip(grads(got, inputs), grads(expected, inputs)):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12)


def test_beta_tensor_gets_a_gradient():
    recon_x, x, mu, logvar = make_inputs()
    beta = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    terms = vae_fused.vae_loss_terms(recon_x, x, mu, logvar, beta=beta)
    (g,) = torch.autograd.grad(terms.loss, [beta])
    torch.testing.assert_close(g, terms.kl.detach())


def test_loss_terms_are_consistent_with_functional():
    inputs = make_inputs((6, 40), (6, 7))
    terms = vae_fused.vae_loss_terms(*inputs, beta=0.25, reduction="batchmean")
    assert isinstance(terms, vae_fused.VAELossTerms)
    recon_x, x, mu, logvar = inputs
    bce = torch.nn.functional.binary_cross_entropy(recon_x, x, reduction="sum") / 6
    kl = (-0.5 * (1 + logvar - mu ** 2 - logvar.exp())).sum() / 6
    torch.testing.assert_close(terms.recon, bce, rtol=1e-12, atol=0)
    torch.testing.assert_close(terms.kl, kl, rtol=1e-12, atol=0)
    torch.testing.assert_close(terms.loss, bce + 0.25 * kl, rtol=1e-12, atol=0)


def test_module_equals_function():
    inputs = make_inputs()
    module = vae_fused.VAELoss(beta=0.5, reduction="mean", recon="cbce")
    torch.testing.assert_close(module(*inputs),
                               vae_fused.vae_loss(*inputs, beta=0.5, reduction="mean", recon="cbce"),
                               rtol=0, atol=0)
    module.beta = 2.0  # schedules reassign it
    torch.testing.assert_close(module(*inputs),
                               vae_fused.vae_loss(*inputs, beta=2.0, reduction="mean", recon="cbce"),
                               rtol=0, atol=0)
    assert "beta=2.0" in repr(module)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("recon", RECON_MODES)
def test_reference_matches_functional(reduction, recon):
    inputs = [t.requires_grad_() for t in make_inputs((5, 12), (5, 3), recon=recon)]
    got = vae_fused.reference.vae_loss(*inputs, reduction=reduction, recon=recon)
    expected = oracle_loss(*inputs, reduction=reduction, recon=recon)
    torch.testing.assert_close(got, expected, **TOL[torch.float64])


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_non_contiguous_inputs(device):
    base = make_inputs((6, 3, 10, 10), (6, 16), device=device)
    recon_x = base[0].transpose(2, 3)
    x = base[1].transpose(2, 3)
    mu = base[2][:, ::2]
    logvar = base[3][:, ::2]
    assert not recon_x.is_contiguous() and not mu.is_contiguous()
    inputs = [t.detach().requires_grad_() for t in (recon_x, x, mu, logvar)]
    got = vae_fused.vae_loss(*inputs, reduction="none")
    expected = oracle_loss(*inputs, reduction="none")
    torch.testing.assert_close(got, expected, **TOL[torch.float64])
    for g, e in zip(grads(got, inputs), grads(expected, inputs)):
        assert g.shape == e.shape
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_batch(device, reduction):
    inputs = [t.requires_grad_() for t in make_inputs((0, 7), (0, 3), device=device)]
    got = vae_fused.vae_loss(*inputs, reduction=reduction)
    if reduction == "none":
        assert got.shape == (0,)
    elif reduction == "sum":
        assert got.item() == 0.0
    else:
        assert torch.isnan(got)  # 0/0, like torch.mean of nothing
    if reduction in ("sum", "none"):
        for g, t in zip(grads(got, inputs), inputs):
            assert g.shape == t.shape


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_inputs_are_never_modified(device):
    inputs = [t.requires_grad_() for t in make_inputs((4, 50), (4, 6), device=device)]
    before = [t.detach().clone() for t in inputs]
    for reduction in REDUCTIONS:
        loss = vae_fused.vae_loss(*inputs, reduction=reduction, beta=0.5)
        loss.sum().backward()
    for t, b in zip(inputs, before):
        assert torch.equal(t.detach(), b)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_x_gradient_only_when_requested(device):
    recon_x, x, mu, logvar = make_inputs((4, 9), (4, 2), device=device)
    recon_x.requires_grad_()
    loss = vae_fused.vae_loss(recon_x, x, mu, logvar)
    (g,) = torch.autograd.grad(loss, [recon_x])
    assert x.grad is None and g.shape == recon_x.shape
    # and when x does require grad: d/dt BCE = log(1-p) - log(p)
    x.requires_grad_()
    loss = vae_fused.vae_loss(recon_x, x, mu, logvar)
    (gx,) = torch.autograd.grad(loss, [x])
    p = recon_x.detach()
    torch.testing.assert_close(gx, torch.log1p(-p) - torch.log(p), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("recon", RECON_MODES)
def test_low_precision_against_float64(dtype, recon):
    """Like flash-attention: the fused error against float64 is at most a small
    multiple of the error of PyTorch's own loss run in the same dtype."""
    inputs64 = make_inputs((16, 300), (16, 10), recon=recon)
    expected = oracle_loss(*inputs64, recon=recon)
    low = [t.to(dtype).requires_grad_() for t in inputs64]
    got = vae_fused.vae_loss(*low, recon=recon)
    assert got.dtype == (torch.float32 if dtype != torch.float64 else dtype)
    baseline_inputs = [t.detach().to(dtype).float() if dtype != torch.float32 else t.detach()
                       for t in low]
    baseline = oracle_loss(*baseline_inputs, recon=recon)
    err = (got.double() - expected).abs().item()
    ref_err = (baseline.double() - expected).abs().item()
    assert err <= 2 * ref_err + 1e-5 * expected.abs().item()
    for g, t in zip(grads(got, low), low):
        assert g.dtype == t.dtype and g.shape == t.shape
    # gradients against float64 on the same (rounded) inputs
    rounded = [t.detach().double().requires_grad_() for t in low]
    g_expected = grads(oracle_loss(*rounded, recon=recon), rounded)
    tol = dict(rtol=2e-2, atol=2e-2) if dtype != torch.float32 else dict(rtol=1e-4, atol=1e-5)
    for g, e in zip(grads(vae_fused.vae_loss(*low, recon=recon), low), g_expected):
        torch.testing.assert_close(g.double(), e, **tol)


def test_mixed_dtypes_x_and_latents():
    recon_x, x, mu, logvar = make_inputs((4, 33), (4, 5))
    expected = oracle_loss(recon_x.float().double(), x, mu, logvar)
    # float32 model output against float64 data; bf16 output against float32 data
    got = vae_fused.vae_loss(recon_x.float(), x, mu.float(), logvar.double())
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=0)
    got_bf16 = vae_fused.vae_loss(recon_x.bfloat16(), x.float(), mu.bfloat16(), logvar.bfloat16())
    assert got_bf16.dtype == torch.float32
    exp_bf16 = oracle_loss(recon_x.bfloat16().double(), x.float().double(),
                           mu.bfloat16().double(), logvar.bfloat16().double())
    torch.testing.assert_close(got_bf16.double(), exp_bf16, rtol=1e-5, atol=0)


def test_no_grad_path_allocates_no_gradients():
    inputs = [t.requires_grad_() for t in make_inputs()]
    with torch.no_grad():
        got = vae_fused.vae_loss(*inputs)
    assert not got.requires_grad
    torch.testing.assert_close(got, oracle_loss(*[t.detach() for t in inputs]), **TOL[torch.float64])
    outputs = torch.ops.vae_fused.vae_loss_forward(*[t.detach() for t in inputs], 0, 2, 2, 0.0,
                                                   False, False, False, False)
    assert all(o.numel() == 0 for o in outputs[2:])
