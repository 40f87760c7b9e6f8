"""Values and gradients against torch.nn.functional + the closed-form KL, in
float64, for every recon mode, reduction and a range of shapes and layouts."""
import pytest
import torch
import torch.nn.functional as F

import vae_fused
from .helpers import (DEVICE_PARAMS, GRAD_TOL, LOW_PRECISION, RECON_MODES, REDUCTIONS, TOL,
                      check_low_precision, examples_loss, grads, leaf, make_inputs, oracle_loss,
                      oracle_terms, use_kernel_build)

SHAPES = [
    ((8, 20), (8, 5)),                   # flat features, 1-D latents
    ((4, 3, 8, 8), (4, 4, 2)),           # images, 2-D latents
    ((1, 784), (1, 20)),                 # B = 1
    ((5, 2100), (5, 3)),                 # rows longer than a typical chunk / vector block
    ((3, 1), (3, 1)),                    # D = L = 1
    ((2, 3, 5, 7), (2, 5)),              # odd sizes: vector tails everywhere
]


def _assert_grads_match(got_loss, expected_loss, inputs, tol=GRAD_TOL[torch.float64]):
    got = grads(got_loss, inputs)
    expected = grads(expected_loss, inputs)
    assert len(got) == len(expected) > 0
    for g, e, t in zip(got, expected, [t for t in inputs if t.requires_grad]):
        assert g.shape == t.shape and g.dtype == t.dtype
        torch.testing.assert_close(g, e, **tol)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shapes", SHAPES, ids=str)
@pytest.mark.parametrize("recon", RECON_MODES)
def test_value_and_all_gradients_float64(device, reduction, shapes, recon):
    # all four inputs require grad, x (the target) included
    inputs = make_inputs(*shapes, device=device, recon=recon, requires_grad=True)
    expected = oracle_loss(*inputs, reduction=reduction, recon=recon)
    got = vae_fused.vae_loss(*inputs, reduction=reduction, recon=recon)
    assert got.shape == expected.shape and got.dtype == torch.float64 and got.device == inputs[0].device
    torch.testing.assert_close(got, expected, **TOL[torch.float64])
    _assert_grads_match(got, expected, inputs)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("x_requires_grad", [False, True])
def test_pytorch_examples_loss_is_the_default(device, x_requires_grad):
    recon_x, x, mu, logvar = make_inputs((16, 784), (16, 20), device=device)
    inputs = [recon_x.requires_grad_(), x.requires_grad_(x_requires_grad), mu.requires_grad_(),
              logvar.requires_grad_()]
    expected = examples_loss(*inputs)
    got = vae_fused.vae_loss(*inputs)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    _assert_grads_match(got, expected, inputs, dict(rtol=1e-10, atol=1e-13))


@pytest.mark.parametrize("cap", ["default", "avx2", "avx512"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("targets", ["continuous", "binary", "mixed"])
def test_bce_gradient_has_eagers_bits(monkeypatch, cap, dtype, targets):
    """The BCE gradient is F.binary_cross_entropy's to the bit (reduction
    "sum", upstream gradient 1): the same formula, IEEE division, in every CPU
    kernel build -- for binary-target blocks too, and at p = 0, 1 and tiny p."""
    use_kernel_build(monkeypatch, cap)
    g = torch.Generator().manual_seed(21)
    p = torch.rand(6, 1031, generator=g, dtype=dtype)
    p[0, :8] = torch.tensor([0.0, 1.0, 1e-30, 1e-7, 1 - 2**-24, 0.5, 1e-12, 0.999999], dtype=dtype)
    t = torch.rand(6, 1031, generator=g, dtype=dtype)
    if targets != "continuous":
        rows = slice(None) if targets == "binary" else slice(0, 3)
        t[rows] = (t[rows] > 0.5).to(dtype)
    mu, logvar = torch.randn(6, 4, generator=g, dtype=dtype), torch.randn(6, 4, generator=g, dtype=dtype)
    ours, eager = p.clone().requires_grad_(), p.clone().requires_grad_()
    vae_fused.vae_loss(ours, t, mu, logvar).backward()
    F.binary_cross_entropy(eager, t, reduction="sum").backward()
    assert torch.equal(ours.grad, eager.grad)


@pytest.mark.parametrize("reduction,kl_reduction", [
    ("mean", "batchmean"), ("sum", "mean"), ("batchmean", "sum"), ("none", "none"),
    ("mean", "sum"), ("sum", "batchmean"), ("none", "sum"), ("sum", "none"), ("batchmean", "mean"),
])
@pytest.mark.parametrize("recon", ["bce", "mse"])
def test_kl_reduction_overrides_the_kl_term_only(reduction, kl_reduction, recon):
    inputs = make_inputs((6, 30), (6, 4), recon=recon, requires_grad=True)
    e_loss, e_recon, e_kl = oracle_terms(*inputs, reduction=reduction, kl_reduction=kl_reduction, beta=0.3,
                                         recon=recon)
    terms = vae_fused.vae_loss_terms(*inputs, reduction=reduction, kl_reduction=kl_reduction, beta=0.3,
                                     recon=recon)
    torch.testing.assert_close(terms.recon, e_recon, **TOL[torch.float64])
    torch.testing.assert_close(terms.kl, e_kl, **TOL[torch.float64])
    # a (B,) term plus a () term broadcasts to (B,)
    torch.testing.assert_close(terms.loss, e_loss, **TOL[torch.float64])
    _assert_grads_match(terms.loss, e_loss, inputs)


def test_pytorch_vae_recipe():
    # PyTorch-VAE (AntixK) models/vanilla_vae.py loss_function, verbatim:
    #   recons_loss = F.mse_loss(recons, input)
    #   kld_loss = torch.mean(-0.5 * torch.sum(1 + log_var - mu ** 2 - log_var.exp(), dim = 1), dim = 0)
    #   loss = recons_loss + kld_weight * kld_loss
    inputs = make_inputs((4, 3, 8, 8), (4, 16), recon="mse", requires_grad=True)
    recons, input_, mu, log_var = inputs
    kld_weight = 0.00025
    recons_loss = F.mse_loss(recons, input_)
    kld_loss = torch.mean(-0.5 * torch.sum(1 + log_var - mu ** 2 - log_var.exp(), dim=1), dim=0)
    expected = recons_loss + kld_weight * kld_loss
    got = vae_fused.vae_loss(*inputs, recon="mse", reduction="mean", kl_reduction="batchmean",
                             beta=kld_weight)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    _assert_grads_match(got, expected, inputs)
    # and the same with BCE, the other common PyTorch-VAE setting
    inputs = make_inputs((4, 3, 8, 8), (4, 16), requires_grad=True)
    expected = (F.binary_cross_entropy(inputs[0], inputs[1])
                + kld_weight * torch.mean(-0.5 * torch.sum(1 + inputs[3] - inputs[2] ** 2 - inputs[3].exp(), dim=1)))
    got = vae_fused.vae_loss(*inputs, reduction="mean", kl_reduction="batchmean", beta=kld_weight)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    _assert_grads_match(got, expected, inputs)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1, 4.0,
                                  torch.tensor(2.5, dtype=torch.float64),
                                  torch.tensor(0.25, dtype=torch.float32),
                                  torch.tensor(0.0, dtype=torch.float64)],
                         ids=["0.0", "0.5", "int1", "4.0", "t2.5f64", "t0.25f32", "t0f64"])
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_beta_float_or_tensor(beta, reduction):
    inputs = make_inputs(requires_grad=True)
    b = float(beta) if isinstance(beta, torch.Tensor) else beta
    before = beta.clone() if isinstance(beta, torch.Tensor) else None
    got = vae_fused.vae_loss(*inputs, beta=beta, reduction=reduction)
    expected = oracle_loss(*inputs, beta=b, reduction=reduction)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, **TOL[torch.float64])
    _assert_grads_match(got, expected, inputs)
    if before is not None:
        assert torch.equal(beta, before)


def test_beta_tensor_gets_a_gradient():
    recon_x, x, mu, logvar = make_inputs()
    beta = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    terms = vae_fused.vae_loss_terms(recon_x, x, mu, logvar, beta=beta)
    (g,) = torch.autograd.grad(terms.loss, [beta])
    torch.testing.assert_close(g, oracle_terms(recon_x, x, mu, logvar)[2], **TOL[torch.float64])


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("recon", RECON_MODES)
def test_loss_terms_are_consistent_with_functional(reduction, recon):
    inputs = make_inputs((6, 40), (6, 7), recon=recon, requires_grad=True)
    terms = vae_fused.vae_loss_terms(*inputs, beta=0.25, reduction=reduction, recon=recon)
    assert isinstance(terms, vae_fused.VAELossTerms) and isinstance(terms, tuple)
    loss, recon_term, kl_term = terms  # unpacks as a plain tuple
    assert terms.loss is loss and terms.recon is recon_term and terms.kl is kl_term
    e_loss, e_recon, e_kl = oracle_terms(*inputs, beta=0.25, reduction=reduction, recon=recon)
    torch.testing.assert_close(recon_term, e_recon, **TOL[torch.float64])
    torch.testing.assert_close(kl_term, e_kl, **TOL[torch.float64])
    torch.testing.assert_close(loss, e_loss, **TOL[torch.float64])
    torch.testing.assert_close(loss, recon_term + 0.25 * kl_term, rtol=1e-15, atol=0)
    # the same as vae_loss
    torch.testing.assert_close(loss, vae_fused.vae_loss(*inputs, beta=0.25, reduction=reduction, recon=recon),
                               rtol=0, atol=0)
    # each term differentiates on its own: recon only reaches recon_x and x, kl only mu and logvar
    recon_x, x, mu, logvar = inputs
    g = torch.autograd.grad(recon_term.sum(), inputs, retain_graph=True, allow_unused=True)
    e = torch.autograd.grad(e_recon.sum(), [recon_x, x], retain_graph=True)
    torch.testing.assert_close(g[0], e[0], **GRAD_TOL[torch.float64])
    torch.testing.assert_close(g[1], e[1], **GRAD_TOL[torch.float64])
    assert all(t is None or torch.count_nonzero(t) == 0 for t in g[2:])
    g = torch.autograd.grad(kl_term.sum(), inputs, allow_unused=True)
    e = torch.autograd.grad(e_kl.sum(), [mu, logvar])
    assert all(t is None or torch.count_nonzero(t) == 0 for t in g[:2])
    torch.testing.assert_close(g[2], e[0], **GRAD_TOL[torch.float64])
    torch.testing.assert_close(g[3], e[1], **GRAD_TOL[torch.float64])


def test_module_equals_function():
    inputs = make_inputs(recon="mse")
    module = vae_fused.VAELoss(beta=0.5, reduction="mean", recon="mse", kl_reduction="batchmean")
    assert isinstance(module, torch.nn.Module)
    kwargs = dict(beta=0.5, reduction="mean", recon="mse", kl_reduction="batchmean")
    torch.testing.assert_close(module(*inputs), vae_fused.vae_loss(*inputs, **kwargs), rtol=0, atol=0)
    torch.testing.assert_close(module(*inputs), oracle_loss(*inputs, **kwargs), **TOL[torch.float64])
    module.beta = 2.0  # schedules reassign it
    kwargs["beta"] = 2.0
    torch.testing.assert_close(module(*inputs), vae_fused.vae_loss(*inputs, **kwargs), rtol=0, atol=0)
    module.beta = torch.tensor(3.0, dtype=torch.float64)
    kwargs["beta"] = 3.0
    torch.testing.assert_close(module(*inputs), oracle_loss(*inputs, **kwargs), **TOL[torch.float64])
    # defaults are pytorch/examples' loss
    inputs = make_inputs(requires_grad=True)
    default = vae_fused.VAELoss()(*inputs)
    expected = examples_loss(*inputs)
    torch.testing.assert_close(default, expected, rtol=1e-12, atol=0)
    _assert_grads_match(default, expected, inputs)
    # free_bits through the module
    inputs = make_inputs()
    got = vae_fused.VAELoss(reduction="batchmean", free_bits=0.4)(*inputs)
    torch.testing.assert_close(got, oracle_loss(*inputs, reduction="batchmean", free_bits=0.4),
                               **TOL[torch.float64])


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("recon", RECON_MODES)
def test_reference_matches_functional(reduction, recon):
    """vae_fused.reference is checked against F like the fused path (it is
    never the only oracle of anything)."""
    inputs = make_inputs((5, 12), (5, 3), recon=recon, requires_grad=True)
    terms = vae_fused.reference.vae_loss_terms(*inputs, reduction=reduction, recon=recon, beta=0.6)
    e_loss, e_recon, e_kl = oracle_terms(*inputs, reduction=reduction, recon=recon, beta=0.6)
    torch.testing.assert_close(terms.recon, e_recon, **TOL[torch.float64])
    torch.testing.assert_close(terms.kl, e_kl, **TOL[torch.float64])
    got = vae_fused.reference.vae_loss(*inputs, reduction=reduction, recon=recon, beta=0.6)
    torch.testing.assert_close(got, e_loss, **TOL[torch.float64])
    _assert_grads_match(got, e_loss, inputs)


@pytest.mark.parametrize("kwargs", [dict(free_bits=0.5, reduction="batchmean"),
                                    dict(free_bits=0.5, reduction="sum"),
                                    dict(free_bits=0.5, reduction="mean"),
                                    dict(reduction="mean", kl_reduction="batchmean", beta=0.01)])
def test_reference_kl_options_match_closed_form(kwargs):
    inputs = make_inputs((8, 12), (8, 6), requires_grad=True)
    got = vae_fused.reference.vae_loss(*inputs, **kwargs)
    expected = oracle_loss(*inputs, **kwargs)
    torch.testing.assert_close(got, expected, **TOL[torch.float64])
    _assert_grads_match(got, expected, inputs)


def _layouts(base):
    """Non-contiguous views of (6, 3, 10, 10) images and (6, 16) latents."""
    recon_x, x, mu, logvar = base
    return {
        "transposed": (recon_x.transpose(2, 3), x.transpose(2, 3), mu[:, ::2], logvar[:, ::2]),
        "sliced": (recon_x[::2, :, 1:9, ::3], x[::2, :, 1:9, ::3], mu[::2, 3:11], logvar[::2, 3:11]),
        "channels_last": (recon_x.contiguous(memory_format=torch.channels_last),
                          x.contiguous(memory_format=torch.channels_last),
                          mu.t().contiguous().t(), logvar.t().contiguous().t()),
        "expanded_x": (recon_x, x[:1].expand_as(x), mu, logvar.t().contiguous().t()),
        "batch_reversed": (recon_x.flip(0)[:, :, :, 1:], x.flip(0)[:, :, :, 1:], mu.flip(0), logvar.flip(0)),
    }


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("layout", ["transposed", "sliced", "channels_last", "expanded_x", "batch_reversed"])
@pytest.mark.parametrize("reduction", ["sum", "none", "mean"])
@pytest.mark.parametrize("recon", RECON_MODES)
def test_non_contiguous_inputs(device, layout, reduction, recon):
    base = make_inputs((6, 3, 10, 10), (6, 16), device=device, recon=recon)
    views = _layouts(base)[layout]
    if layout != "channels_last":
        assert not all(v.is_contiguous() for v in views)
    before = [v.clone() for v in views]
    got = vae_fused.vae_loss(*views, reduction=reduction, recon=recon)
    torch.testing.assert_close(got, oracle_loss(*views, reduction=reduction, recon=recon), **TOL[torch.float64])
    for v, b in zip(views, before):
        assert torch.equal(v, b)
    # gradients: leaves that are views of a bigger tensor come back in the leaf's shape
    bases = [t.clone().requires_grad_() for t in base]
    views = _layouts(bases)[layout]
    g_got = torch.autograd.grad(vae_fused.vae_loss(*views, reduction=reduction, recon=recon).sum(), bases)
    g_exp = torch.autograd.grad(oracle_loss(*views, reduction=reduction, recon=recon).sum(), bases)
    for g, e, b in zip(g_got, g_exp, bases):
        assert g.shape == b.shape
        torch.testing.assert_close(g, e, **GRAD_TOL[torch.float64])


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("recon", RECON_MODES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_empty_batch(device, reduction, recon, dtype):
    inputs = make_inputs((0, 3, 4), (0, 3), device=device, recon=recon, dtype=dtype, requires_grad=True)
    terms = vae_fused.vae_loss_terms(*inputs, reduction=reduction, recon=recon)
    got = terms.loss
    assert got.dtype == (torch.float32 if dtype == torch.bfloat16 else dtype)
    if reduction == "none":
        assert got.shape == (0,) and terms.recon.shape == (0,) and terms.kl.shape == (0,)
    elif reduction == "sum":
        assert got.shape == () and got.item() == 0.0 and terms.recon.item() == 0.0 and terms.kl.item() == 0.0
    else:
        assert got.shape == () and torch.isnan(got)  # 0/0, like torch.mean of nothing
        assert torch.isnan(terms.recon) and torch.isnan(terms.kl)
    # backward works and gives zero-size gradients in each input's shape
    g = torch.autograd.grad(got.sum(), inputs, allow_unused=True)
    for gi, t in zip(g, inputs):
        assert gi is None or (gi.shape == t.shape and gi.dtype == t.dtype)
    if reduction in ("sum", "none"):
        assert all(gi is not None for gi in g)


def test_empty_feature_dimension():
    # D = 0 with B > 0: an empty sum is 0 (not an error), as in PyTorch.
    recon_x = torch.rand(3, 0, dtype=torch.float64, requires_grad=True)
    x = torch.rand(3, 0, dtype=torch.float64)
    mu, logvar = make_inputs((3, 2), (3, 4))[2:]
    got = vae_fused.vae_loss_terms(recon_x, x, mu, logvar, reduction="none")
    torch.testing.assert_close(got.recon, torch.zeros(3, dtype=torch.float64), rtol=0, atol=0)
    torch.testing.assert_close(got.kl, oracle_terms(recon_x, x, mu, logvar, reduction="none")[2],
                               **TOL[torch.float64])


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("recon", RECON_MODES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_inputs_are_never_modified(device, recon, dtype):
    inputs = make_inputs((4, 50), (4, 6), device=device, recon=recon, dtype=dtype, requires_grad=True)
    before = [t.detach().clone() for t in inputs]
    for reduction in REDUCTIONS:
        for fn in (vae_fused.vae_loss, vae_fused.reference.vae_loss):
            loss = fn(*inputs, reduction=reduction, beta=0.5, recon=recon)
            (loss.sum() * 2).backward()
    with torch.no_grad():
        vae_fused.vae_loss(*inputs, recon=recon)
    for t, b in zip(inputs, before):
        assert torch.equal(t.detach(), b)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("recon", RECON_MODES)
def test_x_gradient_only_when_requested(device, recon):
    """API.md: "The gradient w.r.t. x is computed only when x.requires_grad".
    Observable through what the graph keeps for backward: whatever the op
    saves (through autograd's saved-tensor hooks, Python or C++ autograd
    alike), with x not requiring grad it must be at least one x-sized
    buffer smaller than with x requiring grad, and x is not in the graph."""
    shape = (4, 9)
    x_bytes = shape[0] * shape[1] * torch.finfo(torch.float64).bits // 8

    def saved_bytes(x_requires_grad):
        recon_x, x, mu, logvar = make_inputs(shape, (4, 2), device=device, recon=recon)
        inputs = [recon_x.requires_grad_(), x.requires_grad_(x_requires_grad), mu.requires_grad_(),
                  logvar.requires_grad_()]
        packed = []

        def pack(t):
            packed.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = vae_fused.vae_loss(*inputs, recon=recon)
        got = torch.autograd.grad(loss, [t for t in inputs if t.requires_grad])
        expected = grads(oracle_loss(*inputs, recon=recon), inputs)
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, **GRAD_TOL[torch.float64])
        if not x_requires_grad:  # and x is not in the graph at all
            with pytest.raises(RuntimeError, match="does not require grad"):
                torch.autograd.grad(vae_fused.vae_loss(*inputs, recon=recon), [x])
        return sum(packed)

    with_x, without_x = saved_bytes(True), saved_bytes(False)
    assert with_x >= x_bytes, f"the op saved {with_x} bytes for backward; the hooks see nothing"
    assert without_x <= with_x - x_bytes, (
        f"x does not require grad, yet the graph keeps {without_x} bytes vs {with_x} with x requiring grad "
        f"(an x gradient is {x_bytes} bytes)")
    recon_x, x, mu, logvar = make_inputs(shape, (4, 2), device=device, recon=recon)
    recon_x.requires_grad_()
    # x requiring grad: the target derivative of each mode (API.md)
    x.requires_grad_()
    (gx,) = torch.autograd.grad(vae_fused.vae_loss(recon_x, x, mu, logvar, recon=recon), [x])
    p = recon_x.detach()
    expected = {
        "bce": torch.log1p(-p) - torch.log(p),
        "cbce": torch.log1p(-p) - torch.log(p),      # log C(p) does not depend on t
        "mse": 2 * (x.detach() - p),
        "bce_logits": -p,
    }[recon]
    torch.testing.assert_close(gx, expected, rtol=1e-12, atol=1e-12)


def _cast(t, dtype):
    return t.detach().to(dtype).requires_grad_()


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("recon", RECON_MODES)
def test_float32_against_float64(reduction, recon):
    inputs64 = make_inputs((16, 300), (16, 10), recon=recon)
    low = [_cast(t, torch.float32) for t in inputs64]
    rounded = [_cast(t, torch.float64) for t in low]  # the same numbers, in float64
    got = vae_fused.vae_loss(*low, recon=recon, reduction=reduction)
    expected = oracle_loss(*rounded, recon=recon, reduction=reduction)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, **TOL[torch.float32])
    for g, e, t in zip(grads(got, low), grads(expected, rounded), low):
        assert g.dtype == torch.float32 and g.shape == t.shape
        scale = e.abs().max().item()
        torch.testing.assert_close(g.double(), e, rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("recon", RECON_MODES)
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_half_precision_against_float64(dtype, recon, reduction):
    """Flash-attention style: the fused error against float64 PyTorch on the
    original inputs is at most twice the error of PyTorch's own computation
    run in the low-precision dtype (plus a small atol), for the loss and for
    every gradient. The loss comes back float32, gradients in the input dtype."""
    inputs64 = make_inputs((16, 300), (16, 10), recon=recon, requires_grad=True)
    expected = oracle_loss(*inputs64, recon=recon, reduction=reduction)
    low = [_cast(t, dtype) for t in inputs64]
    got = vae_fused.vae_loss(*low, recon=recon, reduction=reduction)
    assert got.dtype == torch.float32
    low_ref_inputs = [_cast(t, dtype) for t in inputs64]
    reference_low = oracle_loss(*low_ref_inputs, recon=recon, reduction=reduction)
    assert reference_low.dtype == dtype
    check_low_precision(got, expected, reference_low, atol=1e-4 * expected.abs().max().item(), what="loss")
    for name, g, e, r, t in zip(("recon_x", "x", "mu", "logvar"), grads(got, low), grads(expected, inputs64),
                                grads(reference_low, low_ref_inputs), low):
        assert g.dtype == dtype and g.shape == t.shape
        check_low_precision(g, e, r, atol=2e-3 * e.abs().max().item(), what=f"grad {name}")


def test_mixed_dtypes_x_and_latents():
    recon_x, x, mu, logvar = make_inputs((4, 33), (4, 5))
    # float32 model output against float64 data: x is converted to float32 (like PyTorch would
    # need), mu float32 with logvar float64: promoted
    got = vae_fused.vae_loss(recon_x.float(), x, mu.float(), logvar)
    expected = oracle_loss(recon_x.float().double(), x.float().double(), mu.float().double(), logvar)
    # (API.md does not say which dtype a loss of mixed float32/float64 terms has)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=0)
    # bf16 output against float32 data: the data is not rounded to bf16
    got_bf16 = vae_fused.vae_loss(recon_x.bfloat16(), x.float(), mu.bfloat16(), logvar.bfloat16())
    assert got_bf16.dtype == torch.float32
    exp_bf16 = oracle_loss(recon_x.bfloat16().double(), x.float().double(),
                           mu.bfloat16().double(), logvar.bfloat16().double())
    torch.testing.assert_close(got_bf16.double(), exp_bf16, rtol=1e-5, atol=0)
    # gradients come back in each input's own dtype
    leaves = [recon_x.bfloat16().requires_grad_(), x.double().requires_grad_(),
              mu.float().requires_grad_(), logvar.double().requires_grad_()]
    for g, t in zip(grads(vae_fused.vae_loss(*leaves), leaves), leaves):
        assert g.dtype == t.dtype, (g.dtype, t.dtype)


@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("recon", RECON_MODES)
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_half_recon_x_with_float32_x(dtype, recon, reduction):
    """A half-precision output against float32 data (API.md: the data is read
    as is, never rounded to half): the loss is float64 PyTorch's on the exact
    numbers passed in to float32 accuracy; recon_x/mu/logvar gradients are that
    float64 gradient rounded to their half dtype, x's gradient is float32 and
    float32-accurate."""
    inputs64 = make_inputs((16, 300), (16, 10), recon=recon)
    leaves = [inputs64[0].to(dtype), inputs64[1].float(), inputs64[2].to(dtype), inputs64[3].to(dtype)]
    leaves = [t.requires_grad_() for t in leaves]
    assert any((leaves[1] != leaves[1].to(dtype).float()).flatten().tolist())  # x is not representable in half
    rounded = [t.detach().double().requires_grad_() for t in leaves]
    got = vae_fused.vae_loss(*leaves, recon=recon, reduction=reduction)
    expected = oracle_loss(*rounded, recon=recon, reduction=reduction)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6 * expected.abs().max().item())
    for name, g, e, t in zip(("recon_x", "x", "mu", "logvar"), grads(got, leaves), grads(expected, rounded), leaves):
        assert g.dtype == t.dtype and g.shape == t.shape, name
        scale = e.abs().max().item()
        if t.dtype == torch.float32:
            tol = dict(rtol=1e-5, atol=1e-6 * scale)
        else:  # one rounding to half of a float32-accurate value (subnormal spacing for tiny `mean` gradients)
            fi = torch.finfo(dtype)
            tol = dict(rtol=fi.eps, atol=1e-5 * scale + fi.smallest_normal * fi.eps)
        torch.testing.assert_close(g.double(), e, **tol, msg=lambda m: f"grad {name}: {m}")


def test_no_grad_path_matches_and_tracks_nothing():
    inputs = make_inputs(requires_grad=True)
    with torch.no_grad():
        got = vae_fused.vae_loss(*inputs)
    assert not got.requires_grad and got.grad_fn is None
    torch.testing.assert_close(got, oracle_loss(*leaf(inputs, False)), **TOL[torch.float64])
    with torch.inference_mode():
        inf = vae_fused.vae_loss(*[t.detach() for t in inputs])
    torch.testing.assert_close(inf, got, rtol=0, atol=0)


def test_large_latent_values_kl():
    # KL with big |mu| and logvar: exp(logvar) large, both gradients as the closed form
    mu = torch.tensor([[30.0, -30.0, 0.0, 1e-8]], dtype=torch.float64, requires_grad=True)
    logvar = torch.tensor([[10.0, -20.0, 0.0, 1e-8]], dtype=torch.float64, requires_grad=True)
    recon_x = torch.full((1, 3), 0.5, dtype=torch.float64)
    x = torch.full((1, 3), 0.5, dtype=torch.float64)
    got = vae_fused.vae_loss_terms(recon_x, x, mu, logvar).kl
    expected = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum()
    torch.testing.assert_close(got, expected, rtol=1e-14, atol=0)
    g = torch.autograd.grad(got, [mu, logvar])
    torch.testing.assert_close(g[0], mu.detach(), rtol=0, atol=0)  # d/dmu = mu exactly
    torch.testing.assert_close(g[1], 0.5 * (logvar.detach().exp() - 1), rtol=1e-15, atol=1e-300)
