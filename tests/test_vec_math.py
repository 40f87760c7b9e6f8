"""Accuracy of the fast float32 log / log1p / exp (csrc/cpu/vec_math.h), per
instruction-set build, through the test-only op vae_fused::_math_probe.

Error is measured in ulps of the float32-rounded exact value:
|got - exact| / ulp(float32(exact)), exact = the float64 function, ulp floored
at 2^-149 (the denormal spacing). A result equal to float32(exact) counts as
0 (this also covers exp overflowing to inf exactly where rounding does).

The default run sweeps every 64th float of each range plus every float of the
most used stretches; the exhaustive sweeps (every float) are marked `slow`.
"""
import math
import struct

import pytest
import torch

import vae_fused  # noqa: F401  (loads the library that registers the op)

ISAS = ["DEFAULT", "AVX2", "AVX512"]
# The contract of vec_math.h: <= 2 ulp everywhere (measured maximum: 1.23 ulp;
# BCE-with-logits as a whole is checked in tests/test_precision.py).
BOUND_ULP = 2.0
CHUNK = 1 << 24


def probe(x, fn, isa):
    return torch.ops.vae_fused._math_probe(x, fn, isa)


def _isa_unavailable(isa):
    """None if this build and this CPU run `isa`, else the reason why not."""
    try:
        probe(torch.ones(1), "log", isa)
    except RuntimeError as e:
        return str(e).splitlines()[0]
    return None


def isa_params():
    params = []
    for isa in ISAS:
        reason = _isa_unavailable(isa)
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        params.append(pytest.param(isa, id=isa, marks=marks))
    return params


ISA_PARAMS = isa_params()


def bits(f):
    """The int32 bit pattern of float32 f."""
    return struct.unpack("<i", struct.pack("<f", f))[0]


def floats(lo, hi, stride=1, negate=False):
    """Chunks covering every stride-th float32 from lo to hi (0 <= lo <= hi,
    both floats; bit patterns are monotonic there), negated if asked."""
    b, end = bits(lo), bits(hi) + 1
    while b < end:
        e = min(b + CHUNK * stride, end)
        x = torch.arange(b, e, stride, dtype=torch.int32).view(torch.float32)
        yield x.neg() if negate else x
        b = e


def max_ulp_error(got, exact):
    """Largest error of got (float32) against exact (float64), in ulps."""
    y = exact.float()
    bad = got != y
    if not bool(bad.any()):
        return 0.0
    got, exact, y = got[bad], exact[bad], y[bad]
    # a NaN or an infinity where the rounded exact value has none is never OK
    if not bool(torch.isfinite(got).all()):
        return math.inf
    scale = (y.view(torch.int32) & 0x7F800000).view(torch.float32)  # 2^exponent, 0 for denormals
    ulp = torch.clamp(scale.double() * 2.0 ** -23, min=2.0 ** -149)
    return (got.double() - exact).abs_().div_(ulp).max().item()


def sweep(fn, ranges, isa, reference=None):
    """Max ulp error of fn over chunks from `ranges` (iterables of float32 tensors)."""
    reference = reference or getattr(torch, fn)
    worst = 0.0
    for chunks in ranges:
        for x in chunks:
            worst = max(worst, max_ulp_error(probe(x, fn, isa), reference(x.double())))
    return worst


# ---------------------------------------------------------------------------
# Strided sweeps (default run).

@pytest.mark.parametrize("isa", ISA_PARAMS)
def test_log_accuracy(isa):
    worst = sweep("log", [floats(2.0 ** -126, 1.0, stride=64),  # every 64th float of [2^-126, 1]
                          floats(0.5, 1.0),                      # every float of [0.5, 1]
                          floats(1.0, 3.4e38, stride=4099),      # above 1 and up to FLT_MAX
                          floats(2.0 ** -149, 2.0 ** -126, stride=61)], isa)  # denormals
    assert worst <= BOUND_ULP, f"{isa}: log max error {worst} ulp"


@pytest.mark.parametrize("isa", ISA_PARAMS)
def test_log_unit_interval_accuracy(isa):
    # BCE's log (no special-value handling): the same bound on (0, 1].
    worst = sweep("log_unit_interval", [floats(2.0 ** -126, 1.0, stride=64), floats(0.5, 1.0),
                                        floats(2.0 ** -149, 2.0 ** -126, stride=61)],
                  isa, reference=torch.log)
    assert worst <= BOUND_ULP, f"{isa}: log_unit_interval max error {worst} ulp"


@pytest.mark.parametrize("isa", ISA_PARAMS)
def test_log_unit_interval_zero_is_below_the_clamp(isa):
    # +-0 give -150 ln 2 (the vector builds) or -inf (DEFAULT, per lane): below
    # BCE's -100 clamp either way, so the loss is PyTorch's; a vector mixing
    # zeros, denormals and normals keeps each lane.
    x = torch.tensor([0.0, -0.0, 2.0 ** -149, 0.5, 1.0, 2.0 ** -130, 1e-45, 0.25] * 4)
    got = probe(x, "log_unit_interval", isa)
    nonzero = x != 0
    assert all(v in (-math.inf, pytest.approx(-150 * math.log(2), rel=1e-6)) for v in got[~nonzero].tolist())
    assert torch.equal(got[nonzero].view(torch.int32), probe(x, "log", isa)[nonzero].view(torch.int32))


@pytest.mark.parametrize("isa", ISA_PARAMS)
def test_log1p_accuracy(isa):
    worst = sweep("log1p", [floats(2.0 ** -149, 1.0, stride=64),
                            floats(2.0 ** -149, 1.0 - 2.0 ** -24, stride=64, negate=True),
                            floats(2.0 ** -24, 2.0 ** -22),           # small, dense
                            floats(0.25, 0.5), floats(0.25, 0.5, negate=True),
                            floats(1.0, 3.4e38, stride=4099)], isa)
    assert worst <= BOUND_ULP, f"{isa}: log1p max error {worst} ulp"


@pytest.mark.parametrize("isa", ISA_PARAMS)
def test_exp_accuracy(isa):
    worst = sweep("exp", [floats(0.0, 89.0, stride=64),
                          floats(0.0, 104.0, stride=64, negate=True),
                          floats(87.0, 89.0), floats(86.0, 104.0, negate=True)], isa)  # over/underflow edges
    assert worst <= BOUND_ULP, f"{isa}: exp max error {worst} ulp"


@pytest.mark.parametrize("isa", ISA_PARAMS)
def test_log_one_to_two_accuracy(isa):
    # BCE-with-logits' log(1 + e^-|z|): every float of [1, 2] (2^23 of them);
    # relative accuracy holds down to log(1 + 2^-23) (the table's c = 1 there)
    worst = sweep("log_one_to_two", [floats(1.0, 2.0)], isa, reference=torch.log)
    assert worst <= BOUND_ULP, f"{isa}: log_one_to_two max error {worst} ulp"


# ---------------------------------------------------------------------------
# Exhaustive sweeps: every float (minutes per ISA).

@pytest.mark.slow
@pytest.mark.parametrize("isa", ISA_PARAMS)
def test_log_accuracy_exhaustive(isa):
    # every float below 2: denormals, and every table interval on both sides of 1
    worst = sweep("log", [floats(2.0 ** -149, 2.0)], isa)
    assert worst <= BOUND_ULP, f"{isa}: log max error {worst} ulp"


@pytest.mark.slow
@pytest.mark.parametrize("isa", ISA_PARAMS)
def test_log_unit_interval_accuracy_exhaustive(isa):
    worst = sweep("log_unit_interval", [floats(2.0 ** -149, 1.0)], isa, reference=torch.log)
    assert worst <= BOUND_ULP, f"{isa}: log_unit_interval max error {worst} ulp"


@pytest.mark.slow
@pytest.mark.parametrize("isa", ISA_PARAMS)
def test_log1p_accuracy_exhaustive(isa):
    worst = sweep("log1p", [floats(0.0, 1.0), floats(2.0 ** -149, 1.0 - 2.0 ** -24, negate=True)], isa)
    assert worst <= BOUND_ULP, f"{isa}: log1p max error {worst} ulp"


@pytest.mark.slow
@pytest.mark.parametrize("isa", ISA_PARAMS)
def test_exp_accuracy_exhaustive(isa):
    worst = sweep("exp", [floats(0.0, 89.0), floats(2.0 ** -149, 104.0, negate=True)], isa)
    assert worst <= BOUND_ULP, f"{isa}: exp max error {worst} ulp"


# ---------------------------------------------------------------------------
# Special values: exactly those of std::log / log1p / exp.

TINY = 2.0 ** -149
SPECIAL = {
    "log": [0.0, -0.0, -1.0, -TINY, -math.inf, math.nan, math.inf, TINY, 2.0 ** -127, 2.0 ** -126,
            1.0 - 2.0 ** -24, 1.0, 2.0, 3.4028234663852886e38],
    "log1p": [0.0, -0.0, -1.0, -1.0 - 2.0 ** -23, -2.0, -math.inf, math.nan, math.inf, TINY, -TINY,
              2.0 ** -25, -2.0 ** -25, 1e-30, -1e-30, -1.0 + 2.0 ** -24, 1.0 - 2.0 ** -24, 1.0, 2.0 ** 24,
              3.4028234663852886e38],
    "exp": [0.0, -0.0, math.nan, math.inf, -math.inf, TINY, -TINY, 88.72283172607422, 88.72283935546875,
            89.0, 1000.0, -87.33654022216797, -103.97207641601562, -103.97208404541016, -104.0, -1000.0],
}


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("fn", ["log", "log1p", "exp"])
def test_special_values(fn, isa):
    x = torch.tensor(SPECIAL[fn], dtype=torch.float32)
    got = probe(x, fn, isa)
    expected = getattr(torch, fn)(x.double()).float()
    for xi, g, e in zip(x.tolist(), got.tolist(), expected.tolist()):
        if math.isnan(e):
            assert math.isnan(g), f"{isa} {fn}({xi!r}) = {g!r}, expected NaN"
        else:
            assert g == e and math.copysign(1.0, g) == math.copysign(1.0, e), \
                f"{isa} {fn}({xi!r}) = {g!r}, expected {e!r}"


@pytest.mark.parametrize("isa", ISA_PARAMS)
def test_log1p_tiny_is_identity(isa):
    # |x| < 2^-24: log1p(x) = x, denormals included
    x = torch.cat([t for t in floats(TINY, 2.0 ** -24, stride=997)] +
                  [t for t in floats(TINY, 2.0 ** -24, stride=997, negate=True)])
    x = x[x.abs() < 2.0 ** -24]
    assert torch.equal(probe(x, "log1p", isa), x)


# ---------------------------------------------------------------------------
# The probe itself: tails, agreement of the vector builds, argument checks.

@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("fn", ["log", "log1p", "exp"])
def test_tail_lanes_match_full_vectors(fn, isa):
    x = torch.rand(1024) * 2 - 0.5 if fn == "log1p" else torch.rand(1024) * 20 + 1e-3
    full = probe(x, fn, isa)
    for n in (1, 3, 7, 15, 17, 33, 1023):
        assert torch.equal(probe(x[:n].contiguous(), fn, isa), full[:n])


@pytest.mark.parametrize("fn", ["log", "log1p", "exp", "log_unit_interval", "log_one_to_two"])
def test_avx2_and_avx512_agree_bitwise(fn):
    for isa in ("AVX2", "AVX512"):
        reason = _isa_unavailable(isa)
        if reason:
            pytest.skip(reason)
    lo, hi = {"log": (0.0, 3.4e38), "log1p": (0.0, 3.4e38), "exp": (0.0, 104.0),
              "log_unit_interval": (0.0, 1.0), "log_one_to_two": (1.0, 2.0)}[fn]
    negative_hi = {"log1p": 1.0, "log_unit_interval": 0.0, "log_one_to_two": None}.get(fn, hi)
    chunks = [*floats(lo, hi, stride=1021)]
    if negative_hi is not None:
        chunks += [*floats(0.0, negative_hi, stride=1021, negate=True)]
    for x in chunks:
        a, b = probe(x, fn, "AVX2"), probe(x, fn, "AVX512")
        assert torch.equal(a.view(torch.int32), b.view(torch.int32))


def test_probe_argument_checks():
    x = torch.ones(4)
    with pytest.raises(RuntimeError, match="fn must be one of"):
        probe(x, "sin", "DEFAULT")
    with pytest.raises(RuntimeError, match="isa must be one of"):
        probe(x, "log", "SSE4")
    with pytest.raises(RuntimeError, match="float32"):
        probe(x.double(), "log", "DEFAULT")
    with pytest.raises(RuntimeError, match="contiguous"):
        probe(torch.ones(4, 4).t(), "log", "DEFAULT")
