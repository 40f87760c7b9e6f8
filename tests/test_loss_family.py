"""API.md "Beyond the standard-normal VAE": learned priors (prior_mu, prior_logvar),
a learned likelihood log-scale (recon_logvar), an added per-element loss
(recon_offset), element weights (weight) and recon="l1", for the fused op and
the reference alike. Expected values come from torch.distributions,
torch.nn.functional and the formulas of the code bases they replace, in
float64 ("every formula holds in float64 to 1e-10 relative, gradients included,
for every reduction")."""
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

import vae_fused
from .helpers import (LOW_PRECISION, REDUCTIONS, check_low_precision, raises_and_leaves_inputs, recon_elements_f,
                      reduce_as)

IMPLEMENTATIONS = [pytest.param(vae_fused.vae_loss_terms, id="fused"),
                   pytest.param(vae_fused.reference.vae_loss_terms, id="reference")]
OPTION_NAMES = ("prior_mu", "prior_logvar", "recon_logvar", "recon_offset", "weight")
RTOL = 1e-10  # the contract's float64 tolerance, values and gradients
B, C, H, W = 3, 2, 4, 5
IMAGE = (B, C, H, W)
LATENT = (B, 6)


# ---------------------------------------------------------------------------
# Inputs and oracles.
def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _images(recon="l1", shape=IMAGE, seed=0, gap=0.0):
    """recon_x, x in float64; for "l1" with gap > 0, |recon_x - x| >= gap everywhere
    (finite differences never straddle the kink)."""
    g = _gen(seed)
    if recon in ("bce", "cbce"):
        return (torch.rand(shape, generator=g, dtype=torch.float64) * 0.9 + 0.05,
                torch.rand(shape, generator=g, dtype=torch.float64))
    if recon == "bce_logits":
        return (torch.randn(shape, generator=g, dtype=torch.float64) * 2,
                torch.rand(shape, generator=g, dtype=torch.float64))
    recon_x = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    if gap > 0:
        sign = torch.where(torch.rand(shape, generator=g, dtype=torch.float64) < 0.5, -1.0, 1.0)
        return recon_x, recon_x + sign * (gap + torch.rand(shape, generator=g, dtype=torch.float64) * 0.5)
    return recon_x, torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1


def _latents(shape=LATENT, seed=1):
    g = _gen(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64),
            torch.randn(shape, generator=g, dtype=torch.float64) * 0.5)


def _option(name, shape, seed):
    """A float64 value for an option: priors ~ N(0, 0.25) / N(0, 0.5^2), log-scales around
    -0.5, offsets in [0, 1) (a perceptual loss is >= 0), weights in [0.5, 1.5)."""
    g = _gen(seed)
    if name == "weight":
        return torch.rand(shape, generator=g, dtype=torch.float64) + 0.5
    if name == "recon_offset":
        return torch.rand(shape, generator=g, dtype=torch.float64)
    if name == "recon_logvar":
        return torch.randn(shape, generator=g, dtype=torch.float64) * 0.3 - 0.5
    return torch.randn(shape, generator=g, dtype=torch.float64) * 0.5


def _kl_oracle(mu, logvar, prior_mu=None, prior_logvar=None):
    """Per unit, by torch.distributions (logvar = 2 log sigma); a missing prior is 0."""
    if prior_mu is None and prior_logvar is None:
        return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())
    pmu = torch.zeros((), dtype=mu.dtype) if prior_mu is None else prior_mu
    plv = torch.zeros((), dtype=mu.dtype) if prior_logvar is None else prior_logvar
    kl = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(pmu, torch.exp(0.5 * plv)))
    return kl.expand(torch.broadcast_shapes(kl.shape, mu.shape))


def _recon_oracle(recon_x, x, recon, recon_logvar=None, recon_offset=None, weight=None):
    """Per element: torch.nn.functional's loss, + o, then latent diffusion's
    rec / exp(logvar) + logvar (l1) or half of it (mse: the Gaussian NLL), times w."""
    if recon == "l1":
        loss = F.l1_loss(recon_x, x, reduction="none")
    else:
        loss = recon_elements_f(recon_x, x, recon)
    if recon_offset is not None:
        loss = loss + recon_offset
    if recon_logvar is not None:
        loss = loss / torch.exp(recon_logvar) + recon_logvar
        if recon == "mse":
            loss = loss / 2
    if weight is not None:
        loss = weight * loss
    return loss.expand(torch.broadcast_shapes(loss.shape, recon_x.shape))


def oracle(recon_x, x, mu, logvar, *, recon="l1", reduction="sum", kl_reduction=None, beta=1.0,
           free_bits=0.0, prior_mu=None, prior_logvar=None, recon_logvar=None, recon_offset=None, weight=None):
    """(loss, recon_term, kl_term)."""
    kl_reduction = kl_reduction or reduction
    r = reduce_as(_recon_oracle(recon_x, x, recon, recon_logvar, recon_offset, weight), reduction)
    kl = _kl_oracle(mu, logvar, prior_mu, prior_logvar)
    if free_bits > 0:
        rows = kl.reshape(kl.shape[0], -1)
        floored = rows.mean(0).clamp_min(free_bits).sum()  # Kingma et al. 2016, on the new kl_ij
        k = {"batchmean": floored, "sum": floored * rows.shape[0], "mean": floored / rows.shape[1]}[kl_reduction]
    else:
        k = reduce_as(kl, kl_reduction)
    return r + beta * k, r, k


def _assert_close(got, expected, what=""):
    assert got.shape == expected.shape, (what, got.shape, expected.shape)
    assert got.dtype == expected.dtype, (what, got.dtype, expected.dtype)
    scale = expected.detach().abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(got, expected, rtol=RTOL, atol=1e-13 * max(scale, 1e-3), msg=lambda m: f"{what}: {m}")


def _check_against_oracle(fn, tensors, kwargs, wrt):
    """Values (all three terms) and gradients of `loss.sum()` for the tensors named in wrt."""
    tensors = {k: (v.detach().clone().requires_grad_(k in wrt) if v is not None else None)
               for k, v in tensors.items()}
    args = [tensors[k] for k in ("recon_x", "x", "mu", "logvar")]
    options = {k: tensors[k] for k in OPTION_NAMES if tensors.get(k) is not None}
    got = fn(*args, **kwargs, **options)
    expected = oracle(*args, **kwargs, **options)
    for name, g, e in zip(("loss", "recon", "kl"), got, expected):
        _assert_close(g, e, name)
    leaves = [tensors[k] for k in wrt]
    g_got = torch.autograd.grad(got.loss.sum(), leaves)
    g_exp = torch.autograd.grad(expected[0].sum(), leaves)
    for name, g, e, t in zip(wrt, g_got, g_exp, leaves):
        assert g.shape == t.shape, (name, g.shape, t.shape)
        _assert_close(g, e, f"grad {name}")
    return tensors, g_got


# ---------------------------------------------------------------------------
# Learned priors: KL(N(mu, e^lv) || N(pmu, e^plv)) = torch.distributions.kl_divergence.
PRIOR_SHAPES = {"BL": LATENT, "1L": (1, LATENT[1]), "L": (LATENT[1],), "11": (1, 1), "0d": ()}


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
@pytest.mark.parametrize("given", ["both", "prior_mu", "prior_logvar"])
@pytest.mark.parametrize("prior_shape", list(PRIOR_SHAPES), ids=str)
@pytest.mark.parametrize("kl_reduction", REDUCTIONS)
def test_prior_kl_is_torch_distributions_kl(fn, given, prior_shape, kl_reduction):
    recon_x, x = _images("mse")
    mu, logvar = _latents()
    shape = PRIOR_SHAPES[prior_shape]
    tensors = dict(recon_x=recon_x, x=x, mu=mu, logvar=logvar,
                   prior_mu=_option("prior_mu", shape, 5) if given in ("both", "prior_mu") else None,
                   prior_logvar=_option("prior_logvar", shape, 6) if given in ("both", "prior_logvar") else None)
    wrt = ["mu", "logvar"] + [k for k in ("prior_mu", "prior_logvar") if tensors[k] is not None]
    _check_against_oracle(fn, tensors, dict(recon="mse", reduction="sum", kl_reduction=kl_reduction, beta=0.7),
                          wrt)


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
def test_prior_kl_gradients_closed_form(fn):
    # d/dmu = (mu - pmu) e^-plv, d/dlv = 0.5 (e^(lv - plv) - 1), d/dpmu = -(mu - pmu) e^-plv,
    # d/dplv = 0.5 (1 - (e^lv + (mu - pmu)^2) e^-plv)
    recon_x, x = _images("mse")
    mu, logvar = _latents()
    pmu, plv = _option("prior_mu", LATENT, 5), _option("prior_logvar", LATENT, 6)
    leaves = [t.clone().requires_grad_() for t in (mu, logvar, pmu, plv)]
    kl = fn(recon_x, x, leaves[0], leaves[1], prior_mu=leaves[2], prior_logvar=leaves[3], recon="mse").kl
    got = torch.autograd.grad(kl, leaves)
    expected = ((mu - pmu) * torch.exp(-plv), 0.5 * torch.expm1(logvar - plv), -(mu - pmu) * torch.exp(-plv),
                0.5 * (1 - (logvar.exp() + (mu - pmu) ** 2) * torch.exp(-plv)))
    for name, g, e in zip(("mu", "logvar", "prior_mu", "prior_logvar"), got, expected):
        _assert_close(g, e, name)


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
def test_prior_equal_to_the_posterior_gives_zero_kl(fn):
    recon_x, x = _images("mse")
    mu, logvar = _latents()
    kl = fn(recon_x, x, mu, logvar, recon="mse", prior_mu=mu.clone(), prior_logvar=logvar.clone(),
            reduction="none").kl
    torch.testing.assert_close(kl, torch.zeros(B, dtype=torch.float64), rtol=0, atol=1e-15)


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
@pytest.mark.parametrize("kl_reduction", ["sum", "mean", "batchmean"])
@pytest.mark.parametrize("given", ["both", "prior_mu", "prior_logvar"])
def test_free_bits_with_a_prior(fn, kl_reduction, given):
    recon_x, x = _images("mse")
    mu, logvar = _latents((8, 6))
    recon_x, x = recon_x[:1].expand(8, -1, -1, -1).contiguous(), x[:1].expand(8, -1, -1, -1).contiguous()
    pmu = _option("prior_mu", (1, 6), 5) if given != "prior_logvar" else None
    plv = _option("prior_logvar", (1, 6), 6) if given != "prior_mu" else None
    per_unit = _kl_oracle(mu, logvar, pmu, plv).mean(0)
    middle = per_unit.sort().values[2:4]
    floor = float(middle.mean())  # half the units under the floor, half above, none at it
    assert (per_unit < floor - 1e-3).any() and (per_unit > floor + 1e-3).any()
    tensors = dict(recon_x=recon_x, x=x, mu=mu, logvar=logvar, prior_mu=pmu, prior_logvar=plv)
    wrt = ["mu", "logvar"] + [k for k, v in (("prior_mu", pmu), ("prior_logvar", plv)) if v is not None]
    kwargs = dict(recon="mse", reduction="sum", kl_reduction=kl_reduction, free_bits=floor, beta=0.5)
    _, g = _check_against_oracle(fn, tensors, kwargs, wrt)
    # units under the floor: no KL gradient to anything on the latent side
    under = per_unit < floor
    for name, gi in zip(wrt, g):
        gi = gi.expand(8, 6) if gi.shape != (8, 6) else gi
        assert torch.all(gi[:, under] == 0), name
        assert torch.all(gi[:, ~under].abs().sum(0) > 0), name


# ---------------------------------------------------------------------------
# The learned likelihood scale, recon_offset and weight.
S_SHAPES = {"0d": (), "sample": (B, 1, 1, 1), "channel": (1, C, 1, 1), "element": IMAGE}


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
@pytest.mark.parametrize("s_shape", list(S_SHAPES), ids=str)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_mse_with_recon_logvar_is_gaussian_nll_loss(fn, s_shape, reduction):
    # F.gaussian_nll_loss(full=False) with its eps clamp made a no-op (1e-300 in float64)
    recon_x, x = [t.requires_grad_() for t in _images("mse")]
    mu, logvar = [t * 0 for t in _latents()]  # a KL of exactly 0
    s = _option("recon_logvar", S_SHAPES[s_shape], 3).requires_grad_()
    expected = F.gaussian_nll_loss(recon_x, x, torch.exp(s).expand_as(recon_x), full=False, eps=1e-300,
                                   reduction=reduction)
    terms = fn(recon_x, x, mu, logvar, recon="mse", recon_logvar=s, reduction=reduction)
    _assert_close(terms.recon, expected, "recon")
    _assert_close(terms.loss, expected, "loss")
    for name, g, e in zip(("recon_x", "x", "recon_logvar"), torch.autograd.grad(terms.loss, [recon_x, x, s]),
                          torch.autograd.grad(expected, [recon_x, x, s])):
        assert g.shape == e.shape
        _assert_close(g, e, name)


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_l1_is_f_l1_loss_with_zero_gradient_at_ties(fn, reduction):
    recon_x, x = _images("l1")
    tie = torch.rand(IMAGE, generator=_gen(9)) < 0.3
    x = torch.where(tie, recon_x, x)  # p == t exactly on about 30% of the elements
    assert tie.any()
    recon_x, x = recon_x.requires_grad_(), x.requires_grad_()
    mu, logvar = [t.requires_grad_() for t in _latents()]
    f_reduction = {"sum": "sum", "mean": "mean"}.get(reduction)
    rows = F.l1_loss(recon_x, x, reduction="none").reshape(B, -1)
    expected = {"sum": None, "mean": None, "batchmean": rows.sum() / B, "none": rows.sum(1)}[reduction]
    if f_reduction is not None:
        expected = F.l1_loss(recon_x, x, reduction=f_reduction)
    terms = fn(recon_x, x, mu, logvar, recon="l1", reduction=reduction)
    _assert_close(terms.recon, expected, "recon")
    g_got = torch.autograd.grad(terms.recon.sum(), [recon_x, x])
    g_exp = torch.autograd.grad(expected.sum(), [recon_x, x])
    for name, g, e in zip(("recon_x", "x"), g_got, g_exp):
        _assert_close(g, e, name)
        assert torch.all(g[tie] == 0), f"{name}: gradient at a tie must be 0 (sign(0) = 0)"
    scale = {"sum": 1.0, "none": 1.0, "batchmean": 1.0 / B, "mean": 1.0 / recon_x.numel()}[reduction]
    torch.testing.assert_close(g_got[0], torch.sign(recon_x - x).detach() * scale, rtol=1e-15, atol=0)


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
@pytest.mark.parametrize("recon", ["l1", "mse"])
@pytest.mark.parametrize("s_shape", list(S_SHAPES) + [None], ids=str)
@pytest.mark.parametrize("o_shape", [None, "0d", "sample", "element"], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_recon_logvar_and_offset_every_reduction(fn, recon, s_shape, o_shape, reduction):
    recon_x, x = _images(recon)
    mu, logvar = _latents()
    tensors = dict(recon_x=recon_x, x=x, mu=mu, logvar=logvar,
                   recon_logvar=None if s_shape is None else _option("recon_logvar", S_SHAPES[s_shape], 3),
                   recon_offset=None if o_shape is None else _option("recon_offset", S_SHAPES[o_shape], 4))
    wrt = ["recon_x", "x", "mu", "logvar"] + [k for k in ("recon_logvar", "recon_offset") if tensors[k] is not None]
    _check_against_oracle(fn, tensors, dict(recon=recon, reduction=reduction, beta=0.3), wrt)


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
@pytest.mark.parametrize("recon", ["bce", "bce_logits", "cbce", "mse", "l1"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_offset_and_weight_with_every_mode(fn, recon, reduction):
    # recon_offset and weight are not limited to the scaled modes
    recon_x, x = _images(recon)
    mu, logvar = _latents()
    tensors = dict(recon_x=recon_x, x=x, mu=mu, logvar=logvar, recon_offset=_option("recon_offset", (B, 1, 1, 1), 4),
                   weight=_option("weight", (1, 1, H, W), 7))
    _check_against_oracle(fn, tensors, dict(recon=recon, reduction=reduction), ["recon_x", "x", "recon_offset"])


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
@pytest.mark.parametrize("recon", ["l1", "mse"])
@pytest.mark.parametrize("reduction,kl_reduction", [
    ("sum", None), ("mean", None), ("batchmean", None), ("none", None),
    ("mean", "batchmean"), ("none", "sum"), ("sum", "none"), ("batchmean", "mean"),
])
def test_everything_at_once(fn, recon, reduction, kl_reduction):
    recon_x, x = _images(recon)
    mu, logvar = _latents()
    tensors = dict(recon_x=recon_x, x=x, mu=mu, logvar=logvar,
                   prior_mu=_option("prior_mu", LATENT, 5), prior_logvar=_option("prior_logvar", (1, 6), 6),
                   recon_logvar=_option("recon_logvar", (1, C, 1, 1), 3),
                   recon_offset=_option("recon_offset", (B, 1, 1, 1), 4), weight=_option("weight", IMAGE, 7))
    wrt = ["recon_x", "x", "mu", "logvar", "prior_mu", "prior_logvar", "recon_logvar", "recon_offset"]
    _check_against_oracle(fn, tensors, dict(recon=recon, reduction=reduction, kl_reduction=kl_reduction,
                                            beta=torch.tensor(0.25, dtype=torch.float64)), wrt)


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
@pytest.mark.parametrize("recon", ["l1", "mse", "bce"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("mask_shape", [IMAGE, (B, 1, H, W)], ids=["element", "per_pixel"])
def test_zero_weights_mask_elements_out(fn, recon, reduction, mask_shape):
    recon_x, x = [t.requires_grad_() for t in _images(recon)]
    mu, logvar = _latents()
    mask = (torch.rand(mask_shape, generator=_gen(11)) < 0.6).to(torch.float64)
    assert (mask == 0).any() and (mask == 1).any()
    kwargs = dict(recon=recon, reduction=reduction, weight=mask)
    if recon != "bce":
        kwargs["recon_logvar"] = _option("recon_logvar", (), 3)
    got = fn(recon_x, x, mu, logvar, **kwargs)
    expected = oracle(recon_x, x, mu, logvar, **kwargs)
    for name, g, e in zip(("loss", "recon", "kl"), got, expected):
        _assert_close(g, e, name)
    # the divisors do not change: "mean" is still over all B*D elements
    kept = _recon_oracle(recon_x, x, recon, kwargs.get("recon_logvar"))
    kept = torch.where(mask.expand(IMAGE) == 1, kept, torch.zeros((), dtype=torch.float64))
    _assert_close(got.recon, reduce_as(kept, reduction), "masked recon")
    g_got = torch.autograd.grad(got.loss.sum(), [recon_x, x])
    g_exp = torch.autograd.grad(expected[0].sum(), [recon_x, x])
    masked = (mask == 0).expand(IMAGE)
    for name, g, e in zip(("recon_x", "x"), g_got, g_exp):
        _assert_close(g, e, name)
        assert torch.all(g[masked] == 0), f"{name}: nonzero gradient under a zero weight"
        assert torch.all(g[~masked] != 0), name


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
def test_options_are_never_modified_and_gradients_accumulate(fn):
    recon_x, x = _images("l1")
    mu, logvar = _latents()
    opts = dict(prior_mu=_option("prior_mu", (1, 6), 5), prior_logvar=_option("prior_logvar", LATENT, 6),
                recon_logvar=_option("recon_logvar", (), 3), recon_offset=_option("recon_offset", (B, 1, 1, 1), 4),
                weight=_option("weight", IMAGE, 7))
    for k in OPTION_NAMES[:4]:
        opts[k].requires_grad_()
    before = {k: v.detach().clone() for k, v in opts.items()}
    for _ in range(2):
        fn(recon_x, x, mu, logvar, recon="l1", reduction="batchmean", **opts).loss.backward()
    (o_loss, *_) = oracle(recon_x, x, mu, logvar, recon="l1", reduction="batchmean", **opts)
    expected = torch.autograd.grad(o_loss, [opts[k] for k in OPTION_NAMES[:4]])
    for k, e in zip(OPTION_NAMES[:4], expected):
        _assert_close(opts[k].grad, 2 * e, f"accumulated grad {k}")
    for k, v in opts.items():
        assert torch.equal(v.detach(), before[k]), k
    assert opts["weight"].grad is None


# ---------------------------------------------------------------------------
# Latent diffusion (CompVis ldm/modules/losses/contperceptual.py,
# LPIPSWithDiscriminator.forward, optimizer_idx 0, without the discriminator term).
def _latent_diffusion_generator_loss(inputs, reconstructions, posterior_mean, posterior_logvar, p_loss,
                                     logvar, perceptual_weight, kl_weight, weights=None):
    rec_loss = torch.abs(inputs.contiguous() - reconstructions.contiguous())
    rec_loss = rec_loss + perceptual_weight * p_loss
    nll_loss = rec_loss / torch.exp(logvar) + logvar
    weighted_nll_loss = nll_loss
    if weights is not None:
        weighted_nll_loss = weights * nll_loss
    weighted_nll_loss = torch.sum(weighted_nll_loss) / weighted_nll_loss.shape[0]
    # DiagonalGaussianDistribution.kl(): 0.5 * sum(mean^2 + var - 1 - logvar, dim=[1, 2, 3])
    kl_loss = 0.5 * torch.sum(torch.pow(posterior_mean, 2) + torch.exp(posterior_logvar) - 1.0 - posterior_logvar,
                              dim=[1, 2, 3])
    kl_loss = torch.sum(kl_loss) / kl_loss.shape[0]
    return weighted_nll_loss + kl_weight * kl_loss


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
@pytest.mark.parametrize("kl_weight", [1e-6, 0.5])
@pytest.mark.parametrize("weights", ["none", "element", "per_pixel"])
def test_latent_diffusion_autoencoder_loss(fn, kl_weight, weights):
    shape = (2, 3, 8, 8)
    inputs, rec = _images("l1", shape=shape, seed=20)
    mean, lv = _latents((2, 4, 2, 2), seed=21)
    p_loss = torch.rand(2, 1, 1, 1, generator=_gen(22), dtype=torch.float64)  # LPIPS: (B, 1, 1, 1)
    logvar = torch.tensor(-0.3, dtype=torch.float64)  # nn.Parameter(torch.ones(size=()) * logvar_init)
    w = {"none": None, "element": _option("weight", shape, 23), "per_pixel": _option("weight", (2, 1, 8, 8), 23)}[weights]
    leaves = [t.clone().requires_grad_() for t in (rec, mean, lv, logvar, p_loss)]
    rec_, mean_, lv_, logvar_, p_loss_ = leaves
    pw = 1.0 if weights == "none" else 0.7
    expected = _latent_diffusion_generator_loss(inputs, rec_, mean_, lv_, p_loss_, logvar_, pw, kl_weight, w)
    got = fn(rec_, inputs, mean_, lv_, recon="l1", recon_logvar=logvar_, recon_offset=pw * p_loss_, weight=w,
             reduction="batchmean", beta=kl_weight).loss
    _assert_close(got, expected, "loss")
    names = ("reconstructions", "posterior mean", "posterior logvar", "logvar", "p_loss")
    for name, g, e in zip(names, torch.autograd.grad(got, leaves), torch.autograd.grad(expected, leaves)):
        _assert_close(g, e, name)


@pytest.mark.parametrize("impl", [
    pytest.param("fused", id="fused"),
    pytest.param("reference", id="reference",
                 marks=pytest.mark.skip(reason="vae_fused.reference has functions only, no nn.Module")),
])
def test_module_owns_a_learned_recon_logvar(impl):
    # latent diffusion's `self.logvar = nn.Parameter(torch.ones(size=()) * logvar_init)`, in the loss module
    module = vae_fused.VAELoss(recon="l1", reduction="batchmean", beta=1e-6, recon_logvar=0.0).double()
    param = module.recon_logvar
    assert isinstance(param, torch.nn.Parameter) and param.shape == () and param.requires_grad
    assert float(param) == 0.0
    assert any(p is param for p in module.parameters())
    assert "recon_logvar" in dict(module.named_parameters())
    shape = (2, 3, 8, 8)
    inputs, rec = _images("l1", shape=shape, seed=30)
    rec.requires_grad_()
    mean, lv = _latents((2, 4, 2, 2), seed=31)
    p_loss = torch.rand(2, 1, 1, 1, generator=_gen(32), dtype=torch.float64)
    weights = _option("weight", shape, 33)
    with torch.no_grad():
        param.fill_(-0.3)
    loss = module(rec, inputs, mean, lv, recon_offset=0.5 * p_loss, weight=weights)
    loss.backward()
    logvar = torch.tensor(-0.3, dtype=torch.float64, requires_grad=True)
    rec64 = rec.detach().clone().requires_grad_()
    expected = _latent_diffusion_generator_loss(inputs, rec64, mean, lv, p_loss, logvar, 0.5, 1e-6, weights)
    expected.backward()
    _assert_close(loss, expected, "loss")
    _assert_close(param.grad, logvar.grad, "recon_logvar grad")
    _assert_close(rec.grad, rec64.grad, "reconstructions grad")


# ---------------------------------------------------------------------------
# gradcheck / gradgradcheck over every new argument (float64).
GRADCHECK_CASES = {
    "prior_mu_BL": ("mse", dict(prior_mu=LATENT)),
    "prior_mu_1L": ("mse", dict(prior_mu=(1, 6))),
    "prior_logvar_BL": ("mse", dict(prior_logvar=LATENT)),
    "prior_logvar_1L": ("mse", dict(prior_logvar=(1, 6))),
    "prior_logvar_0d": ("mse", dict(prior_logvar=())),
    "priors_BL_1L": ("mse", dict(prior_mu=LATENT, prior_logvar=(1, 6))),
    "recon_logvar_0d_l1": ("l1", dict(recon_logvar=())),
    "recon_logvar_sample_l1": ("l1", dict(recon_logvar=(B, 1, 1, 1))),
    "recon_logvar_channel_l1": ("l1", dict(recon_logvar=(1, C, 1, 1))),
    "recon_logvar_element_l1": ("l1", dict(recon_logvar=IMAGE)),
    "recon_logvar_0d_mse": ("mse", dict(recon_logvar=())),
    "recon_logvar_sample_mse": ("mse", dict(recon_logvar=(B, 1, 1, 1))),
    "recon_logvar_channel_mse": ("mse", dict(recon_logvar=(1, C, 1, 1))),
    "recon_logvar_element_mse": ("mse", dict(recon_logvar=IMAGE)),
    "recon_offset_0d_mse": ("mse", dict(recon_offset=())),
    "recon_offset_sample_l1": ("l1", dict(recon_offset=(B, 1, 1, 1))),
    "recon_offset_element_bce": ("bce", dict(recon_offset=IMAGE)),
    "offset_and_logvar_l1": ("l1", dict(recon_offset=(B, 1, 1, 1), recon_logvar=())),
    "everything_mse": ("mse", dict(prior_mu=(1, 6), prior_logvar=LATENT, recon_logvar=(1, C, 1, 1),
                                   recon_offset=IMAGE, weight=(B, 1, H, W))),
    "everything_l1": ("l1", dict(prior_mu=LATENT, prior_logvar=(), recon_logvar=IMAGE, recon_offset=(),
                                 weight=IMAGE)),
}


def _gradcheck_setup(case, seed=40):
    recon, shapes = GRADCHECK_CASES[case]
    recon_x, x = _images(recon, seed=seed, gap=0.05)  # l1: |p - t| >= 0.05, away from the kink
    mu, logvar = _latents(seed=seed + 1)
    names = ["recon_x", "x", "mu", "logvar"]
    tensors = [recon_x, x, mu, logvar]
    constants = {}
    for i, (name, shape) in enumerate(shapes.items()):
        value = _option(name, shape, seed + 2 + i)
        if name == "weight":
            constants[name] = value
        else:
            names.append(name)
            tensors.append(value)
    return recon, names, [t.requires_grad_() for t in tensors], constants


def _as_function(fn, names, recon, constants, **kwargs):
    def f(*tensors):
        named = dict(zip(names, tensors))
        terms = fn(named.pop("recon_x"), named.pop("x"), named.pop("mu"), named.pop("logvar"), recon=recon,
                   **named, **constants, **kwargs)
        return terms.recon, terms.kl, terms.loss
    return f


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", list(GRADCHECK_CASES))
def test_gradcheck_new_arguments(fn, case, reduction):
    recon, names, tensors, constants = _gradcheck_setup(case)
    f = _as_function(fn, names, recon, constants, reduction=reduction, beta=0.6)
    assert torch.autograd.gradcheck(f, tensors)


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", ["priors_BL_1L", "recon_logvar_channel_mse", "offset_and_logvar_l1",
                                  "everything_mse"])
@pytest.mark.parametrize("reduction", ["batchmean", "none"])
def test_gradgradcheck_new_arguments(fn, case, reduction):
    recon, names, tensors, constants = _gradcheck_setup(case)
    f = _as_function(fn, names, recon, constants, reduction=reduction, beta=0.6)
    assert torch.autograd.gradgradcheck(f, tensors)


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
def test_create_graph_gradient_penalty_on_recon_logvar(fn):
    # d/ds of d(loss)/d(recon_x): exact second derivatives through the learned scale
    recon, names, tensors, constants = _gradcheck_setup("recon_logvar_channel_mse")
    recon_x, x, mu, logvar, s = tensors
    loss = fn(recon_x, x, mu, logvar, recon="mse", recon_logvar=s, reduction="sum").loss
    (g,) = torch.autograd.grad(loss, [recon_x], create_graph=True)
    penalty = g.pow(2).sum()
    (gs,) = torch.autograd.grad(penalty, [s])
    # g = (p - t) e^-s  =>  penalty = sum (p - t)^2 e^-2s,  d/ds = -2 sum over broadcast dims
    d = (recon_x - x).detach()
    expected = (-2 * d.pow(2) * torch.exp(-2 * s.detach())).sum(dim=(0, 2, 3), keepdim=True)
    _assert_close(gs, expected, "d penalty / d recon_logvar")


# ---------------------------------------------------------------------------
# Bad input: the contract's exceptions, inputs left as they were.
def _bad_input_args(recon="l1"):
    recon_x, x = _images(recon, shape=(4, 10))
    mu, logvar = _latents((4, 3))
    return tuple(t.requires_grad_() for t in (recon_x, x, mu, logvar))


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
@pytest.mark.parametrize("name,shape,target", [
    ("recon_logvar", (2, 3), "(4, 10)"), ("recon_logvar", (1, 4, 10), "(4, 10)"),
    ("recon_offset", (4, 1, 1), "(4, 10)"), ("recon_offset", (3, 1), "(4, 10)"),
    ("weight", (5, 10), "(4, 10)"), ("weight", (9,), "(4, 10)"),
    ("prior_mu", (4, 2), "(4, 3)"), ("prior_mu", (2, 1), "(4, 3)"),
    ("prior_logvar", (1, 4, 3), "(4, 3)"), ("prior_logvar", (5,), "(4, 3)"),
], ids=str)
def test_unbroadcastable_shapes_name_both(fn, name, shape, target):
    value = torch.zeros(shape, dtype=torch.float64, requires_grad=name != "weight")
    message = raises_and_leaves_inputs(fn, _bad_input_args(), {"recon": "l1", name: value}, ValueError,
                                        name, "broadcast", str(tuple(shape)), target)
    assert ("recon_x" if target == "(4, 10)" else "mu") in message


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
@pytest.mark.parametrize("recon", ["bce", "bce_logits", "cbce"])
def test_learned_scale_needs_l1_or_mse(fn, recon):
    s = torch.zeros((), dtype=torch.float64, requires_grad=True)
    raises_and_leaves_inputs(fn, _bad_input_args(recon), dict(recon=recon, recon_logvar=s), ValueError,
                              "recon_logvar", recon)


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
@pytest.mark.parametrize("shape", [(), (4, 10)], ids=str)
def test_weight_requiring_grad_is_an_error(fn, shape):
    w = torch.ones(shape, dtype=torch.float64, requires_grad=True)
    raises_and_leaves_inputs(fn, _bad_input_args(), dict(recon="l1", weight=w), ValueError,
                              "weight", "must not require grad")


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
@pytest.mark.parametrize("name", OPTION_NAMES)
@pytest.mark.parametrize("bad_dtype", [torch.int64, torch.bool], ids=str)
def test_non_floating_options_are_type_errors(fn, name, bad_dtype):
    shape = (4, 3) if name.startswith("prior") else (4, 10)
    value = torch.ones(shape, dtype=bad_dtype)  # e.g. a bool mask passed as weight
    raises_and_leaves_inputs(fn, _bad_input_args(), {"recon": "l1", name: value}, TypeError, name, str(bad_dtype))


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
@pytest.mark.parametrize("name", OPTION_NAMES)
def test_option_on_another_device_is_a_value_error(fn, name):
    other = "cuda" if torch.cuda.is_available() else "meta"
    shape = (4, 3) if name.startswith("prior") else (4, 10)
    value = torch.zeros(shape, dtype=torch.float64, device=other)
    raises_and_leaves_inputs(fn, _bad_input_args(), {"recon": "l1", name: value}, ValueError, "device", other)


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
def test_unknown_recon_lists_l1(fn):
    message = raises_and_leaves_inputs(fn, _bad_input_args(), dict(recon="laplace"), ValueError, "recon",
                                        "'laplace'")
    for allowed in ("bce", "bce_logits", "mse", "l1", "cbce"):
        assert repr(allowed) in message or f'"{allowed}"' in message, (allowed, message)


# ---------------------------------------------------------------------------
# Half precision: bf16/fp16 model tensors, float32 scale/offset/weight/priors.
def _cast(t, dtype):
    return t.detach().to(dtype).requires_grad_(t.requires_grad)


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("recon", ["l1", "mse"])
@pytest.mark.parametrize("reduction", ["sum", "mean", "batchmean", "none"])
def test_half_precision_against_float64(fn, dtype, recon, reduction):
    """The error against float64 on the same (rounded) inputs is at most twice eager PyTorch's
    own error on the low-precision tensors (plus a small atol), loss and every gradient;
    the loss comes back float32, each gradient in its input's dtype."""
    shape = (8, 3, 16, 16)
    recon_x, x = _images(recon, shape=shape, seed=50)
    mu, logvar = _latents((8, 12), seed=51)
    low = {"recon_x": recon_x.to(dtype), "x": x.to(dtype), "mu": mu.to(dtype), "logvar": logvar.to(dtype),
           "prior_mu": _option("prior_mu", (1, 12), 52).float(),
           "prior_logvar": _option("prior_logvar", (8, 12), 53).float(),
           "recon_logvar": _option("recon_logvar", (1, 3, 1, 1), 54).float(),
           "recon_offset": _option("recon_offset", (8, 1, 1, 1), 55).float(),
           "weight": _option("weight", shape, 56).float()}
    wrt = ["recon_x", "mu", "logvar", "prior_mu", "prior_logvar", "recon_logvar", "recon_offset"]

    def leaves(dtype_of):
        return {k: v.detach().to(dtype_of(v)).requires_grad_(k in wrt) for k, v in low.items()}

    def split(t):
        return [t[k] for k in ("recon_x", "x", "mu", "logvar")], {k: t[k] for k in OPTION_NAMES}

    kwargs = dict(recon=recon, reduction=reduction, beta=0.5)
    got_in = leaves(lambda v: v.dtype)
    args, opts = split(got_in)
    got = fn(*args, **opts, **kwargs).loss
    assert got.dtype == torch.float32
    exp_in = leaves(lambda v: torch.float64)
    args, opts = split(exp_in)
    expected = oracle(*args, **opts, **kwargs)[0]
    ref_in = leaves(lambda v: v.dtype)
    args, opts = split(ref_in)
    reference_low = oracle(*args, **opts, **kwargs)[0]  # eager PyTorch on the same mixed-precision tensors
    check_low_precision(got, expected, reference_low, atol=1e-4 * expected.abs().max().item(), what="loss")
    g_got = torch.autograd.grad(got.sum(), [got_in[k] for k in wrt])
    g_exp = torch.autograd.grad(expected.sum(), [exp_in[k] for k in wrt])
    g_ref = torch.autograd.grad(reference_low.sum(), [ref_in[k] for k in wrt])
    for name, g, e, r in zip(wrt, g_got, g_exp, g_ref):
        assert g.dtype == got_in[name].dtype and g.shape == got_in[name].shape, name
        check_low_precision(g, e, r, atol=2e-3 * e.abs().max().item(), what=f"grad {name}")


# ---------------------------------------------------------------------------
# docs/recipes.md: the blocks marked <!-- recipe-check --> run as written (their asserts
# compare against the eager forms, their printed numbers are checked here too).
def _recipe_blocks():
    import pathlib
    import re
    text = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "recipes.md").read_text()
    return re.findall(r"<!-- recipe-check -->\n```python\n(.*?)```", text, re.S)


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
@pytest.mark.parametrize("index", range(len(_recipe_blocks())))
def test_recipes_run(fn, index, capsys):
    import re
    import types
    code = _recipe_blocks()[index]
    namespace = vae_fused
    if fn is vae_fused.reference.vae_loss_terms:
        namespace = types.SimpleNamespace(vae_loss=vae_fused.reference.vae_loss,
                                          vae_loss_terms=vae_fused.reference.vae_loss_terms)
    code = code.replace("import vae_fused\n", "")
    exec(compile(code, f"docs/recipes.md block {index}", "exec"), {"vae_fused": namespace, "__name__": "recipe"})
    printed = capsys.readouterr().out.splitlines()
    claimed = [m.group(1).strip() for m in re.finditer(r"print\(.*\)\s*#\s*([^(\n]+)", code)]
    assert len(printed) == len(claimed) > 0
    for out, comment in zip(printed, claimed):
        assert out.strip() == comment, (out, comment)


def test_retained_graph_keeps_the_saved_gradients_of_the_options_intact():
    # autograd.grad with retain_graph may hand back a tensor the caller modifies
    # in place; a second backward must still see the original saved gradients
    g = torch.Generator().manual_seed(5)
    mu = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    lv = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    pmu = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    s = torch.zeros((), dtype=torch.float64, requires_grad=True)
    p = torch.rand(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.rand(4, 5, generator=g, dtype=torch.float64)
    loss = vae_fused.vae_loss(p, x, mu, lv, recon="l1", recon_logvar=s, prior_mu=pmu)
    first = torch.autograd.grad(loss, [p, pmu, s], retain_graph=True)
    expected = [t.clone() for t in first]
    for t in first:
        t.mul_(-7.0)
    second = torch.autograd.grad(loss, [p, pmu, s])
    for a, b in zip(second, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("reduction", ["sum", "batchmean", "none"])
def test_shared_extras_are_summed_over_samples_in_the_pass(reduction):
    # the CPU forward keeps a (1, L) prior's and a per-channel option's
    # gradient as one row (summed in the pass, no B x L buffer); per-sample
    # upstream gradients ("none") need the elements, as does free bits
    mu, logvar = torch.randn(4, 6), torch.randn(4, 6)
    recon_x, x = torch.rand(4, 3, 2, 2), torch.rand(4, 3, 2, 2)
    prior_mu, s = torch.randn(1, 6), torch.randn(1, 3, 1, 1)
    codes = vae_fused._ops
    red = codes.REDUCTIONS[reduction]
    grad_mask = (1 << 4) | (1 << 6)
    for free_bits in (0.0, 0.5):
        if free_bits and reduction == "none":
            continue
        _, _, saved = torch.ops.vae_fused.vae_loss_forward(
            recon_x, x, mu, logvar, prior_mu, None, s, None, None, codes.RECON_MODES["l1"], red, red,
            free_bits, grad_mask)
        per_feature = reduction != "none"
        assert saved[4].shape == ((1, 6) if per_feature and not free_bits else (4, 6))
        assert saved[6].shape == ((1, 3, 2, 2) if per_feature else (4, 3, 2, 2))
