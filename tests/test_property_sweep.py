"""Property-based sweep (hypothesis) of vae_fused.vae_loss_terms against
torch.nn.functional and the closed-form KL in float64: shapes (B = 0, 1,
primes; D = 1 up to large), layouts (non-contiguous, channels_last, stride-0
expanded inputs), dtypes (float64 / float32 / bfloat16 / float16, mixed
half output with float32 data), edge values (0, 1, denormals, 1 - 2^-24,
+-80 logits, logvar +-30), every recon mode, reduction, kl_reduction and
free bits. Values and gradients are checked, and the inputs must be unchanged.

The run is derandomized (the same examples every time). The default is 1000
examples (about 20 s); VAE_FUSED_HYPOTHESIS_EXAMPLES=5000 runs more, and
VAE_FUSED_HYPOTHESIS_SHRINK=0 reports a failure without minimising it."""
import math
import os

import pytest
import torch
import torch.nn.functional as F

import vae_fused
from .helpers import (LOW_PRECISION, RECON_MODES, REDUCTIONS, check_low_precision, kl_elements_closed,
                      kl_term_oracle, recon_elements_f, reduce_as)

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

PHASES = (list(hypothesis.Phase) if os.environ.get("VAE_FUSED_HYPOTHESIS_SHRINK", "1") != "0"
          else [hypothesis.Phase.explicit, hypothesis.Phase.generate])
EXAMPLES = int(os.environ.get("VAE_FUSED_HYPOTHESIS_EXAMPLES", "1000"))
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
BATCHES = [0, 1, 2, 3, 5, 7, 13, 31]
FEATURES = [1, 2, 3, 7, 16, 17, 64, 257, 1031]
LARGE_FEATURES = [4099, 65537]  # several vector blocks and chunks per row
LATENTS = [1, 2, 5, 16, 37]
LAYOUTS = ["contiguous", "transposed", "sliced", "channels_last", "expanded"]


# ---------------------------------------------------------------------------
# Oracle (float64, torch.nn.functional + closed forms)
def _cb_log_norm_torch(p):
    """log C(p) written with torch ops, differentiated by autograd, in p's own
    dtype: what PyTorch computes for the continuous Bernoulli in float32 or
    half (only the error scale of the low-precision runs; the float64 oracle
    is helpers' closed form). Series x^2/3 + 13x^4/90 + 251x^6/2835 near p = 1/2."""
    x = 1 - 2 * p
    small = x.abs() < 0.05
    safe = torch.where(small, torch.full_like(x, 0.5), x)
    x2 = x * x
    series = math.log(2.0) + x2 / 3 + 13 * x2 * x2 / 90 + 251 * x2 * x2 * x2 / 2835
    return torch.where(small, series, torch.log(2 * torch.atanh(safe) / safe))


def _recon_elements(recon_x, x, recon):
    """F's elements; for BCE/cbce the target derivative is API.md's clamped
    max(log(1-p), -100) - max(log p, -100) (F's own is unclamped: +-inf at p in
    {0, 1}); the value and the p-derivative stay exactly F's."""
    if x.dtype != recon_x.dtype:
        x = x.to(recon_x.dtype)
    if recon == "cbce" and recon_x.dtype != torch.float64:
        elements = F.binary_cross_entropy(recon_x, x.detach(), reduction="none") - _cb_log_norm_torch(recon_x)
    else:
        elements = recon_elements_f(recon_x, x.detach() if recon in ("bce", "cbce") else x, recon)
    if recon in ("bce", "cbce") and x.requires_grad:
        p = recon_x.detach()
        d_target = torch.log1p(-p).clamp_min(-100) - torch.log(p).clamp_min(-100)
        elements = elements + (x - x.detach()) * d_target
    return elements


def _oracle_terms(recon_x, x, mu, logvar, reduction, kl_reduction, recon, free_bits):
    r = reduce_as(_recon_elements(recon_x, x, recon), reduction)
    return r, kl_term_oracle(mu, logvar, kl_reduction, free_bits)


# ---------------------------------------------------------------------------
# Inputs: a base tensor per input (the leaf that gets the gradient) and a view
# of it with the drawn layout (what the loss sees).
def _base_shape(shape, layout):
    if layout == "transposed":
        return shape[:-2] + (shape[-1], shape[-2]) if len(shape) > 2 else (shape[1], shape[0])
    if layout == "sliced":
        return shape[:-1] + (2 * shape[-1],)
    if layout == "expanded":
        return (1,) + shape[1:]
    return shape


def _view(base, shape, layout):
    if layout == "transposed":
        return base.transpose(-1, -2) if len(shape) > 2 else base.t()
    if layout == "sliced":
        return base[..., ::2]
    if layout == "expanded":
        return base.expand(shape)
    return base


def _draw_values(data, shape, kind, recon, dtype, gen):
    """float64 values for one input, with edge values mixed in."""
    n = math.prod(shape)
    if kind == "recon_x":
        if recon == "bce_logits":
            v = torch.randn(shape, generator=gen, dtype=torch.float64) * 4
            edges = [0.0, 80.0, -80.0, 17.0, -17.0, 1e-300]
        elif recon == "mse":
            v = torch.randn(shape, generator=gen, dtype=torch.float64) * 2
            edges = [0.0, 1.0, -1.0, 1e-300, 100.0]
        else:
            v = torch.rand(shape, generator=gen, dtype=torch.float64) * 0.98 + 0.01
            edges = [0.5, 1 - 2.0 ** -24, 2.0 ** -24, 1e-3, 0.999]
            if recon == "bce":  # the -100 log clamp and the 1e-12 backward eps
                edges += [0.0, 1.0, 1e-300]
    elif kind == "x":
        if recon in ("bce", "cbce"):
            v = torch.rand(shape, generator=gen, dtype=torch.float64)
            edges = [0.0, 1.0, 1e-300, 1 - 2.0 ** -24, 0.5]
        else:  # logits / mse targets: any real for mse, [0, 1] soft labels for logits
            v = torch.rand(shape, generator=gen, dtype=torch.float64)
            edges = [0.0, 1.0, 1e-300] + ([-3.0, 5.0] if recon == "mse" else [])
    elif kind == "mu":
        v = torch.randn(shape, generator=gen, dtype=torch.float64)
        edges = [0.0, 1e-300, 8.0, -8.0]
    else:
        v = torch.randn(shape, generator=gen, dtype=torch.float64) * 0.5
        edges = [0.0, 30.0, -30.0, 1e-300]
    if n > 0 and data.draw(st.booleans(), label=f"{kind} edge values"):
        count = data.draw(st.integers(1, min(n, 8)), label=f"{kind} edge count")
        flat = v.view(-1)
        for _ in range(count):
            flat[data.draw(st.integers(0, n - 1))] = data.draw(st.sampled_from(edges))
    v = v.to(dtype)
    if kind == "recon_x" and recon == "cbce":  # log C(p) is infinite at p in {0, 1}: the nearest inside
        fi = torch.finfo(dtype)
        v = v.clamp(fi.smallest_normal, 1 - fi.eps / 2)
    # a denormal of the input's own dtype where 1e-300 was drawn
    tiny = torch.finfo(dtype).smallest_normal / 4
    return torch.where((v == 0) & (v.double() != 0), torch.as_tensor(tiny, dtype=dtype), v) if dtype != torch.float64 \
        else v


@st.composite
def cases(draw):
    recon = draw(st.sampled_from(RECON_MODES))
    reduction = draw(st.sampled_from(REDUCTIONS))
    kl_reduction = draw(st.sampled_from([None] + REDUCTIONS))
    effective_kl = kl_reduction or reduction
    free_bits = 0.0
    if effective_kl != "none" and draw(st.booleans()):
        free_bits = draw(st.sampled_from([0.05, 0.3, 1.0, 4.0]))
    beta = draw(st.sampled_from([1.0, 0.0, 0.25, 3.0]))
    dtype = draw(st.sampled_from(DTYPES))
    x_dtype = dtype
    if dtype in LOW_PRECISION and draw(st.booleans()):
        x_dtype = torch.float32  # half output against float32 data
    latent_dtype = draw(st.sampled_from([dtype, dtype, torch.float32, torch.float64]))
    batch = draw(st.sampled_from(BATCHES))
    four_d = draw(st.booleans())
    if four_d:
        features = (draw(st.sampled_from([1, 2, 3])), draw(st.sampled_from([1, 3, 8])), draw(st.sampled_from([1, 5, 9])))
    elif batch <= 3 and draw(st.integers(0, 9)) == 0:
        features = (draw(st.sampled_from(LARGE_FEATURES)),)
    else:
        features = (draw(st.sampled_from(FEATURES)),)
    latent = (draw(st.sampled_from(LATENTS)),)
    flat_layouts = [layout for layout in LAYOUTS if layout != "channels_last"]
    layouts = [draw(st.sampled_from(LAYOUTS if four_d and name in ("recon_x", "x") else flat_layouts),
                    label=f"layout {name}") for name in ("recon_x", "x", "mu", "logvar")]
    wants = draw(st.lists(st.booleans(), min_size=4, max_size=4), label="requires_grad")
    return dict(recon=recon, reduction=reduction, kl_reduction=kl_reduction, free_bits=free_bits, beta=beta,
                dtypes=(dtype, x_dtype, latent_dtype, latent_dtype), shapes=((batch,) + features,) * 2
                + ((batch,) + latent,) * 2, layouts=layouts, wants=wants)


# ---------------------------------------------------------------------------
# Comparison: float64/float32 against fixed tolerances; half precision by
# check_low_precision against PyTorch's own low-precision error.
def _close(got, expected64, reference_low, what, magnitude):
    """got: the fused result; expected64: float64 oracle on the numbers passed
    in; reference_low: PyTorch's result computed in got's low precision (None
    for float32/float64); magnitude: the size of the quantity (for atol)."""
    assert got.shape == expected64.shape, (what, got.shape, expected64.shape)
    dtype = got.dtype
    # what a correctly rounded result is: inf where it overflows the dtype
    target = expected64.to(dtype).double() if dtype in LOW_PRECISION else expected64
    got64 = got.detach().double()
    if reference_low is not None:
        # where PyTorch's own low-precision run overflows to inf/NaN (exp(30) in
        # float16 times beta = 0, inf - inf of expanded-input sums, ...) a
        # non-finite result is no worse than PyTorch's
        excused = ~torch.isfinite(reference_low.detach().double()) & ~torch.isfinite(got64)
        got64 = torch.where(excused, target, got64)
    special = ~torch.isfinite(target)
    torch.testing.assert_close(got64[special], target[special], rtol=0, atol=0, equal_nan=True,
                               msg=lambda m: f"{what}: non-finite entries differ\n{m}")
    ok = ~special
    g, e = got64[ok], expected64[ok]
    if dtype == torch.float64:
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-11 * magnitude + 1e-300, msg=lambda m: f"{what}\n{m}")
    elif dtype == torch.float32:
        allowed = 2e-5 * e.abs() + 2e-6 * magnitude + 1e-30
        if reference_low is not None:
            # elementwise: or within 4x PyTorch's own float32 error (cbce: log C
            # differentiated in float32 loses ~eps / (4p(1-p)) near p = 0 or 1)
            r_err = (reference_low.detach().double()[ok] - e).abs()
            allowed = torch.maximum(allowed, 4 * r_err.nan_to_num(nan=0.0, posinf=0.0))
        err = (g - e).abs()
        worst = (err - allowed).argmax() if err.numel() else None
        assert err.numel() == 0 or bool((err <= allowed).all()), (
            f"{what}: float32 error {err[worst].item():.3e} > allowed {allowed[worst].item():.3e} "
            f"(got {g[worst].item()!r}, expected {e[worst].item()!r})")
    else:
        r = reference_low.detach().double()[ok]
        fi = torch.finfo(dtype)
        # where PyTorch's own low-precision run overflows (exp(30) in float16,
        # ...) its error says nothing: judge by one rounding to the dtype
        rounded = e.to(dtype).double()
        r = torch.where(torch.isfinite(r), r, rounded)
        # atol: one unit in the last place of the dtype at the quantity's size
        # (PyTorch's own error can be 0 where its computation happens to be
        # exact, e.g. power-of-two scales), plus the subnormal spacing
        check_low_precision(g, e, r, atol=fi.eps * magnitude + fi.smallest_normal * fi.eps, what=what)


def _magnitude(t):
    t = t.detach().double()
    t = t[torch.isfinite(t)]
    return t.abs().max().item() if t.numel() else 0.0


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None, print_blob=True,
          phases=PHASES,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(case=cases(), data=st.data())
def test_property_sweep_against_functional(case, data):
    recon, reduction, kl_reduction = case["recon"], case["reduction"], case["kl_reduction"]
    free_bits, beta = case["free_bits"], case["beta"]
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2 ** 31 - 1), label="seed"))
    names = ("recon_x", "x", "mu", "logvar")
    bases = [_draw_values(data, _base_shape(shape, layout), name, recon, dtype, gen)
             for name, shape, layout, dtype in zip(names, case["shapes"], case["layouts"], case["dtypes"])]
    bases = [b.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else b
             for b, layout in zip(bases, case["layouts"])]
    bases = [b.requires_grad_(w) for b, w in zip(bases, case["wants"])]
    views = [_view(b, shape, layout) for b, shape, layout in zip(bases, case["shapes"], case["layouts"])]
    kl_red = kl_reduction or reduction
    batch = case["shapes"][0][0]
    if free_bits > 0 and batch > 0:
        # keep every latent unit's batch-mean KL off the floor, where the
        # gradient switches on or off (rounding could put it on either side)
        mu64, lv64 = (v.detach().double() for v in views[2:])
        per_unit = (-0.5 * (1 + lv64 - mu64 ** 2 - lv64.exp())).reshape(batch, -1).mean(0)
        assume(bool(((per_unit - free_bits).abs() > 1e-2 * max(1.0, free_bits)).all()))
    before = [b.detach().clone() for b in bases]

    kwargs = dict(reduction=reduction, kl_reduction=kl_reduction, recon=recon, free_bits=free_bits, beta=beta)
    terms = vae_fused.vae_loss_terms(*views, **kwargs)

    # float64 oracle on the very numbers passed in (views of float64 copies of the bases)
    bases64 = [b.detach().double().requires_grad_(b.requires_grad) for b in bases]
    views64 = [_view(b, shape, layout) for b, shape, layout in zip(bases64, case["shapes"], case["layouts"])]
    e_recon, e_kl = _oracle_terms(*views64, reduction, kl_red, recon, free_bits)
    e_loss = e_recon + beta * e_kl

    low = case["dtypes"][0] in LOW_PRECISION
    # PyTorch itself in the inputs' own dtypes (data converted to the output's,
    # half results summed in float32): the error the low-precision checks scale by
    bases_low = [b.detach().clone().requires_grad_(b.requires_grad) for b in bases]
    views_low = [_view(b, shape, layout) for b, shape, layout in zip(bases_low, case["shapes"], case["layouts"])]
    r_recon, r_kl = _oracle_terms(*views_low, reduction, kl_red, recon, free_bits)
    r_loss = (r_recon.float() if r_recon.dtype in LOW_PRECISION else r_recon) + beta * (
        r_kl.float() if r_kl.dtype in LOW_PRECISION else r_kl)

    # half inputs compute and accumulate in float32 and return float32 terms
    recon_dtype = torch.float32 if low else case["dtypes"][0]
    kl_dtype = torch.float32 if case["dtypes"][2] in LOW_PRECISION else case["dtypes"][2]
    assert terms.recon.dtype == recon_dtype and terms.kl.dtype == kl_dtype
    assert terms.loss.shape == e_loss.shape and terms.recon.shape == e_recon.shape and terms.kl.shape == e_kl.shape
    # the size of a term is that of its elements reduced in absolute value (cbce
    # elements of both signs cancel: the error is relative to what was summed)
    with torch.no_grad():
        magnitude_r = _magnitude(reduce_as(_recon_elements(*views64[:2], recon).abs(), reduction))
        magnitude_k = max(_magnitude(e_kl), _magnitude(reduce_as(kl_elements_closed(*views64[2:]).abs(), kl_red)))
    # values: float32 accuracy (on the rounded numbers) wherever a float32 or
    # half input feeds the term, float64 accuracy otherwise; the half terms
    # must also be within PyTorch's own low-precision error
    for what, got, e, r, mag, exact in (
            ("recon term", terms.recon, e_recon, r_recon, magnitude_r, recon_dtype == torch.float64),
            ("kl term", terms.kl, e_kl, r_kl, magnitude_k, kl_dtype == torch.float64),
            ("loss", terms.loss, e_loss, r_loss, magnitude_r + beta * magnitude_k,
             recon_dtype == kl_dtype == torch.float64)):
        _close(got if exact else got.float(), e, None, what, mag)

    # gradients of a weighted sum (per-sample weights for 'none')
    wanted = [i for i, b in enumerate(bases) if b.requires_grad]
    if wanted:
        w = torch.linspace(-1.5, 2.0, max(terms.loss.numel(), 1), dtype=torch.float64)[:terms.loss.numel()]
        w = w.reshape(terms.loss.shape)
        got_grads = torch.autograd.grad((terms.loss * w.to(terms.loss.dtype)).sum(), [bases[i] for i in wanted],
                                        allow_unused=True)
        exp_grads = torch.autograd.grad((e_loss * w).sum(), [bases64[i] for i in wanted], allow_unused=True,
                                        retain_graph=True)
        # the size of each base gradient: its element gradients summed in
        # absolute value (an expanded, stride-0 input sums B of them, with
        # weights of both signs)
        view_grads = torch.autograd.grad((e_loss * w).sum(), [views64[i] for i in wanted], allow_unused=True)
        magnitudes = [0.0 if gv is None else _magnitude(torch.autograd.grad(
            views64[i], bases64[i], grad_outputs=gv.abs(), retain_graph=True)[0]) for i, gv in zip(wanted, view_grads)]
        ref_grads = torch.autograd.grad((r_loss * w.to(r_loss.dtype)).sum(), [bases_low[i] for i in wanted],
                                        allow_unused=True)
        for i, g, e, r, mag in zip(wanted, got_grads, exp_grads, ref_grads, magnitudes):
            b = bases[i]
            if e is None:
                e = torch.zeros_like(bases64[i])
            if g is None:
                g = torch.zeros_like(b)
            if r is None:  # PyTorch's run does not reach this input (a zero gradient)
                r = torch.zeros_like(bases_low[i])
            assert g.dtype == b.dtype and g.shape == b.shape, (names[i], g.dtype, b.dtype, g.shape, b.shape)
            if b.dtype == torch.float64 and terms.loss.dtype != torch.float64:
                # a float64 KL under a float32 loss (PyTorch's promotion of a 0-d
                # term): the upstream gradient was float32
                g = g.float()
            _close(g, e, None if g.dtype == torch.float64 else r, f"grad {names[i]}", mag)

    for name, b, saved in zip(names, bases, before):
        torch.testing.assert_close(b.detach(), saved, rtol=0, atol=0, equal_nan=True,
                                   msg=lambda m: f"{name} was modified\n{m}")
