"""The CUDA kernels' logic, run on the CPU (marker `cuda_logic`; no GPU, and
no CUDA build needed): csrc/cuda_logic_probe.cpp exposes the kernels' host /
device functions (csrc/cuda/launch_plan.h, csrc/cuda/term_pass.h) and an
emulation of the CUDA op that runs every launch block by block and thread by
thread. Expected values come from float64 torch.nn.functional or closed
forms (and plain Python arithmetic for the index math), never from vae_fused.
"""
import itertools
import math

import pytest
import torch

import vae_fused  # noqa: F401  (loads the ops)
from vae_fused._ops import RECON_MODES, REDUCTIONS

from .helpers import kl_elements_closed, recon_elements_f, reduce_as

pytestmark = pytest.mark.cuda_logic

ops = torch.ops.vae_fused
THREADS, TILE, FB_CHUNK, VECTOR_BYTES = ops._cuda_constants()
ALL_MASK = 0b1111  # recon_x, x, mu, logvar

DTYPE_PAIRS = [
    (torch.float64, torch.float64), (torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
    (torch.float16, torch.float16), (torch.float16, torch.float32), (torch.bfloat16, torch.float32),
]


def _pair_id(p):
    return f"{str(p[0])[6:]}-{str(p[1])[6:]}"


# ---------------------------------------------------------------------------
# Oracles (float64).
def recon_elements(p, t, recon):
    return recon_elements_f(p.double(), t.double(), recon)


def cbce_grad_closed(p, t):
    from .helpers import cb_log_norm_grad_scalar

    d = torch.tensor([cb_log_norm_grad_scalar(v) for v in p.double().reshape(-1).tolist()],
                     dtype=torch.float64).reshape(p.shape)
    p, t = p.double(), t.double()
    return (p - t) / (p * (1 - p)).clamp_min(1e-12) - d


def scale_of(reduction, shape):
    numel = math.prod(shape)
    return {"mean": 1.0 / numel if numel else float("nan"), "batchmean": 1.0 / shape[0] if shape[0] else float("nan")}.get(
        reduction, 1.0)


def oracle(inputs, recon="bce", reduction="sum", kl_reduction=None, extras=None):
    """(recon_term, kl_term, grads of the four main inputs as d(term)/d(input))."""
    kl_reduction = kl_reduction or reduction
    extras = extras or {}
    leaves = [t.detach().double().requires_grad_() for t in inputs]
    p, t, mu, lv = leaves
    if recon == "cbce":
        el = recon_elements(p.detach(), t.detach(), recon)
        # closed-form gradient spliced in (the log-normaliser has no autograd form here)
        d = cbce_grad_closed(p.detach(), t.detach())
        el = el + (p - p.detach()) * d + (t - t.detach()) * (
            torch.log1p(-p.detach()) - torch.log(p.detach())).clamp(-100, 100)
    else:
        el = recon_elements(p, t, recon)
    if extras:
        s = extras.get("recon_logvar")
        o = extras.get("recon_offset")
        w = extras.get("weight")
        half = 0.5 if (recon == "mse" and s is not None) else 1.0
        s = torch.zeros(()) if s is None else s
        o = torch.zeros(()) if o is None else o
        w = torch.ones(()) if w is None else w
        el = half * w * ((el + o) * torch.exp(-s) + s)
    r = reduce_as(el, reduction)
    kl = kl_elements_closed(mu, lv)
    k = reduce_as(kl, kl_reduction)
    g = torch.autograd.grad((r.sum(), k.sum()), leaves, allow_unused=True)
    return r.detach(), k.detach(), list(g)


def emulate(inputs, recon="bce", reduction="sum", kl_reduction=None, free_bits=0.0, mask=ALL_MASK,
            sms=132, blocks_per_sm=8, prior_mu=None, prior_logvar=None, recon_logvar=None,
            recon_offset=None, weight=None):
    kl_reduction = kl_reduction or reduction
    return ops._cuda_emulate(*inputs, prior_mu, prior_logvar, recon_logvar, recon_offset, weight,
                             RECON_MODES[recon], REDUCTIONS[reduction], REDUCTIONS[kl_reduction],
                             free_bits, mask, sms, blocks_per_sm)


def make(shape=(4, 50), latent=(4, 6), recon="bce", dtypes=(torch.float64, torch.float64), seed=0):
    g = torch.Generator().manual_seed(seed)
    if recon == "bce_logits":
        p = torch.randn(shape, generator=g, dtype=torch.float64) * 3
    elif recon in ("mse", "l1"):
        p = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    else:
        p = torch.rand(shape, generator=g, dtype=torch.float64) * 0.9 + 0.05
    t = torch.rand(shape, generator=g, dtype=torch.float64)
    mu = torch.randn(latent, generator=g, dtype=torch.float64)
    lv = torch.randn(latent, generator=g, dtype=torch.float64) * 0.5
    latent_dtype = dtypes[0]
    return [p.to(dtypes[0]), t.to(dtypes[1]), mu.to(latent_dtype), lv.to(latent_dtype)]


def tol(dtype):
    if dtype == torch.float64:
        return dict(rtol=1e-9, atol=1e-12)
    if dtype == torch.float32:
        return dict(rtol=2e-4, atol=1e-5)
    return dict(rtol=2e-2, atol=2e-3)


def check_against_oracle(inputs, got, recon, reduction, kl_reduction=None, extras=None):
    kl_reduction = kl_reduction or reduction
    r, k, g = oracle(inputs, recon, reduction, kl_reduction, extras)
    value_tol = tol(torch.float64 if inputs[0].dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(got[0].double(), r, **value_tol)
    torch.testing.assert_close(got[1].double(), k, **value_tol)
    scales = [scale_of(reduction, inputs[0].shape)] * 2 + [scale_of(kl_reduction, inputs[2].shape)] * 2
    for i in range(4):
        grad = got[2][i]
        # stored in the accumulation dtype: float32 for half inputs
        acc = torch.float64 if inputs[i].dtype == torch.float64 else torch.float32
        assert grad.dtype == acc and grad.shape == inputs[i].shape
        torch.testing.assert_close(grad.double(), g[i], **tol(inputs[i].dtype))


# ---------------------------------------------------------------------------
# 1-10: the index, tiling, alignment, grid-size and fold-order functions.
def test_constants_and_vector_groups():
    assert THREADS % 32 == 0 and TILE == 16 * THREADS and VECTOR_BYTES == 16
    assert ops._cuda_group_elems(8, 8) == 2
    assert ops._cuda_group_elems(4, 4) == 4
    assert ops._cuda_group_elems(2, 2) == 8
    assert ops._cuda_group_elems(2, 4) == 8  # half recon_x with float32 x: one + two 128-bit loads


@pytest.mark.parametrize("rows", [0, 1, 3])
@pytest.mark.parametrize("cols", [0, 1, 7, TILE - 1, TILE, TILE + 1, 2 * TILE + 1])
def test_tiling_counts(rows, cols):
    tiles, units, per_unit, per_row_tiles = ops._cuda_tiling(rows, cols, False, TILE)
    assert tiles == units == -(-rows * cols // TILE) and per_unit == 1
    tiles, units, per_unit, per_row_tiles = ops._cuda_tiling(rows, cols, True, TILE)
    expect = 1 if cols <= TILE else -(-cols // TILE)
    assert per_row_tiles == per_unit == expect and units == rows and tiles == rows * expect


@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("rows,cols,tile", [(3, 10, 4), (2, 4, 4), (5, 9, 4), (1, 1, 4), (4, 3, 8), (3, 17, 16)])
def test_tile_ranges_cover_each_element_once(per_row, rows, cols, tile):
    tiles = ops._cuda_tiling(rows, cols, per_row, tile)[0]
    seen = []
    for k in range(tiles):
        begin, end, row = ops._cuda_tile_range(rows, cols, per_row, tile, k)
        assert 0 <= begin <= end <= rows * cols and end - begin <= tile
        if per_row:
            assert row * cols <= begin and end <= (row + 1) * cols
        else:
            assert row == -1
        seen += range(begin, end)
    assert seen == list(range(rows * cols))


def test_index_math_past_2_31_elements():
    # by arithmetic only: nothing is allocated
    rows, cols = 70_000, 40_003  # 2.8e9 elements
    numel = rows * cols
    tiles = ops._cuda_tiling(rows, cols, False, TILE)[0]
    assert tiles == -(-numel // TILE) and tiles > 2**19
    assert ops._cuda_tile_range(rows, cols, False, TILE, tiles - 1)[1] == numel
    assert ops._cuda_tile_range(rows, cols, False, TILE, tiles - 1)[0] == (tiles - 1) * TILE
    per_row_tiles = ops._cuda_tiling(rows, cols, True, TILE)[3]
    last = rows * per_row_tiles - 1
    assert ops._cuda_tile_range(rows, cols, True, TILE, last) == [
        (rows - 1) * cols + (per_row_tiles - 1) * TILE, numel, rows - 1]
    big = 2**33 + 3
    assert ops._cuda_split(big, big + 100, 8, True) == [2**33 + 8, 2**33 + 8 + 88]
    assert ops._cuda_tiling(3, 2**31 + 5, True, TILE)[3] == -(-(2**31 + 5) // TILE)
    assert ops._cuda_grid_size(2**40, 8, 132) == 8 * 132


@pytest.mark.parametrize("group", [2, 4, 8])
@pytest.mark.parametrize("begin,end", [(0, 0), (0, 1), (0, 7), (3, 3), (3, 40), (5, 6), (16, 64), (1, 8), (9, 100)])
def test_split_head_body_tail(group, begin, end):
    head_end, body_end = ops._cuda_split(begin, end, group, True)
    assert begin <= head_end <= body_end <= end
    assert (body_end - head_end) % group == 0
    if head_end < end:
        assert head_end % group == 0 and head_end - begin < group
    assert end - body_end < group
    assert ops._cuda_split(begin, end, group, False) == [begin, begin]  # unaligned: all scalar


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("begin,end,group,threads", [(0, 100, 4, 8), (3, 77, 8, 4), (5, 5, 2, 4), (1, 2, 8, 32),
                                                      (0, 4096, 4, 256), (7, 4103, 8, 256)])
def test_thread_visits_partition_the_tile(aligned, begin, end, group, threads):
    visited = [ops._cuda_thread_elements(begin, end, group, aligned, t, threads) for t in range(threads)]
    flat = sorted(itertools.chain.from_iterable(visited))
    assert flat == list(range(begin, end))
    for v in visited:
        assert v == sorted(v)
    head_end, body_end = ops._cuda_split(begin, end, group, aligned)
    if body_end > head_end:  # a warp's groups are adjacent: thread t starts at group t
        for t in range(min(threads, (body_end - head_end) // group)):
            body = [i for i in visited[t] if head_end <= i < body_end]
            assert body[:group] == list(range(head_end + t * group, head_end + (t + 1) * group))


def test_alignment_check():
    assert ops._cuda_all_aligned([0, 16, 32, 4096])
    assert ops._cuda_all_aligned([])
    assert not ops._cuda_all_aligned([16, 20])
    assert not ops._cuda_all_aligned([2])
    assert ops._cuda_all_aligned([0, 0])  # absent pointers


def test_grid_size_from_occupancy():
    assert ops._cuda_grid_size(0, 8, 132) == 1      # one block folds an empty term
    assert ops._cuda_grid_size(5, 8, 132) == 5      # never more blocks than tiles
    assert ops._cuda_grid_size(10_000, 3, 132) == 396
    assert ops._cuda_grid_size(10_000, 0, 132) == 132  # occupancy 0 read as 1
    assert ops._cuda_grid_size(10_000, 16, 1) == 16


def _python_tree(values):
    v = list(values)
    warps = []
    for w in range(0, len(v), 32):
        lane = v[w:w + 32]
        off = 16
        while off:
            for i in range(off):
                lane[i] += lane[i + off]
            off //= 2
        warps.append(lane[0])
    warps += [0.0] * (32 - len(warps))
    off = 16
    while off:
        for i in range(off):
            warps[i] += warps[i + off]
        off //= 2
    return warps[0]


def test_block_tree_fold_order():
    g = torch.Generator().manual_seed(1)
    v = (torch.randn(THREADS, generator=g, dtype=torch.float64) * 10.0 ** torch.randint(-8, 17, (THREADS,), generator=g))
    got = ops._cuda_block_tree(v)
    assert got == _python_tree(v.tolist())  # bitwise: the same order
    assert math.isclose(got, math.fsum(v.tolist()), rel_tol=1e-6, abs_tol=1e-6 * v.abs().max().item())
    # the order is fixed: cancellation that a sequential sum gets wrong, the tree gets right here
    w = torch.zeros(THREADS, dtype=torch.float64)
    w[0], w[1], w[16] = 1e16, 1.0, -1e16
    assert ops._cuda_block_tree(w) == _python_tree(w.tolist())


# ---------------------------------------------------------------------------
# 11-: the emulated op against float64 oracles.
@pytest.mark.parametrize("reduction", ["sum", "mean", "batchmean", "none"])
@pytest.mark.parametrize("pair", DTYPE_PAIRS, ids=_pair_id)
@pytest.mark.parametrize("recon", list(RECON_MODES))
def test_emulated_every_mode_dtype_pair_reduction(recon, pair, reduction):
    inputs = make((3, 37), (3, 5), recon, pair)
    got = emulate(inputs, recon, reduction)
    check_against_oracle(inputs, got, recon, reduction)


@pytest.mark.parametrize("reduction", ["sum", "none"])
@pytest.mark.parametrize("rows", [0, 1, 3])
@pytest.mark.parametrize("cols", [1, TILE - 1, TILE, TILE + 1])
def test_emulated_rows_and_cols_around_the_tile(rows, cols, reduction):
    inputs = make((rows, cols), (rows, 3), "mse", (torch.float32, torch.float32), seed=rows + cols)
    got = emulate(inputs, "mse", reduction)
    check_against_oracle(inputs, got, "mse", reduction)


@pytest.mark.parametrize("reduction", ["sum", "mean", "batchmean", "none"])
def test_emulated_empty_batch(reduction):
    inputs = make((0, 5), (0, 3), "bce")
    r, k, g = emulate(inputs, "bce", reduction)
    if reduction == "none":
        assert r.shape == (0,) and k.shape == (0,)
    elif reduction == "sum":
        assert r.item() == 0.0 and k.item() == 0.0
    else:
        assert math.isnan(r.item()) and math.isnan(k.item())
    assert all(t.shape == i.shape for t, i in zip(g[:4], inputs))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_emulated_unaligned_pointers(dtype):
    base = make((3, 4 * TILE // 3 + 5), (3, 4), "bce", (dtype, dtype))
    # storage offset 1: every pointer off 16-byte alignment -> the scalar path
    shifted = []
    for t in base:
        buf = torch.empty(t.numel() + 1, dtype=t.dtype)
        view = buf[1:].view(t.shape)
        view.copy_(t)
        assert view.data_ptr() % 16 != 0
        shifted.append(view)
    for reduction in ("sum", "none"):
        got = emulate(shifted, "bce", reduction)
        check_against_oracle(base, got, "bce", reduction)
        aligned = emulate(base, "bce", reduction)
        for a, b in zip(got[2][:4], aligned[2][:4]):  # element gradients: the same math either way
            assert torch.equal(a, b)


@pytest.mark.parametrize("reduction", ["sum", "none", "mean"])
def test_emulated_result_independent_of_grid_size(reduction):
    inputs = make((5, 3 * TILE + 17), (5, 9), "bce", (torch.float32, torch.float32))
    runs = [emulate(inputs, "bce", reduction, free_bits=0.0, sms=s, blocks_per_sm=b)
            for s, b in [(1, 1), (2, 3), (132, 8), (7, 1)]]
    for other in runs[1:]:
        assert torch.equal(other[0], runs[0][0]) and torch.equal(other[1], runs[0][1])
        for a, b in zip(other[2], runs[0][2]):
            assert torch.equal(a, b)


@pytest.mark.parametrize("kl_reduction", ["sum", "mean", "batchmean"])
@pytest.mark.parametrize("rows", [5, FB_CHUNK + 3])
def test_emulated_free_bits_grid_wide(kl_reduction, rows):
    inputs = make((rows, 4), (rows, 300), "bce")
    inputs[2] = inputs[2] * torch.linspace(0, 2, 300, dtype=torch.float64)  # some units under the floor
    inputs[3] = inputs[3] * torch.linspace(0, 2, 300, dtype=torch.float64)
    fb = 0.3
    _, k, g = emulate(inputs, "bce", "sum", kl_reduction, free_bits=fb)
    kl = kl_elements_closed(inputs[2], inputs[3])
    means = kl.mean(0)
    floored = means.clamp_min(fb).sum()
    expected = {"batchmean": floored, "sum": floored * rows, "mean": floored / 300}[kl_reduction]
    torch.testing.assert_close(k, expected, rtol=1e-12, atol=1e-12)
    under = means < fb
    assert under.any() and (~under).any()
    assert (g[2][:, under] == 0).all() and (g[3][:, under] == 0).all()
    scale = scale_of(kl_reduction, (rows, 300))
    torch.testing.assert_close(g[2][:, ~under], (inputs[2] * scale)[:, ~under])
    torch.testing.assert_close(g[3][:, ~under], (0.5 * (inputs[3].exp() - 1) * scale)[:, ~under])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_emulated_free_bits_half_latents(dtype):
    # The latent gradients are float32 for half inputs: the mask zeroes float32
    # elements (half-sized writes once left units under the floor live).
    inputs = make((6, 4), (6, 40), "bce")
    scales = torch.linspace(0, 2, 40, dtype=torch.float64)
    inputs[2], inputs[3] = (inputs[2] * scales).to(dtype), (inputs[3] * scales).to(dtype)
    fb = 0.3
    _, k, g = emulate(inputs, "bce", "sum", "batchmean", free_bits=fb)
    mu, lv = inputs[2].double(), inputs[3].double()
    means = kl_elements_closed(mu, lv).mean(0)
    torch.testing.assert_close(k.double(), means.clamp_min(fb).sum(), rtol=1e-6, atol=1e-6)
    under = means < fb
    assert under.any() and (~under).any()
    assert g[2].dtype == torch.float32 and g[3].dtype == torch.float32
    assert (g[2][:, under] == 0).all() and (g[3][:, under] == 0).all()
    torch.testing.assert_close(g[2][:, ~under].double(), (mu / 6)[:, ~under], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(g[3][:, ~under].double(), (0.5 * (lv.exp() - 1) / 6)[:, ~under],
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kl_reduction", ["sum", "mean", "batchmean"])
def test_emulated_free_bits_zero_width_latent(kl_reduction):
    # L = 0: no column, yet one block runs (and writes its 0 partial somewhere)
    inputs = make((3, 4), (3, 0), "bce")
    r, k, g = emulate(inputs, "bce", "sum", kl_reduction, free_bits=0.5)
    expected = float("nan") if kl_reduction == "mean" else 0.0  # "mean" divides by L = 0
    torch.testing.assert_close(k, torch.tensor(expected, dtype=k.dtype), equal_nan=True)
    assert g[2].shape == (3, 0) and g[3].shape == (3, 0)
    torch.testing.assert_close(r, oracle(inputs, "bce", "sum", kl_reduction)[0])


def test_emulated_free_bits_with_prior_masks_prior_gradients():
    inputs = make((6, 4), (6, 5), "bce")
    pm = torch.randn(6, 5, dtype=torch.float64)
    pl = torch.zeros(6, 5, dtype=torch.float64)
    _, _, g = emulate(inputs, "bce", "sum", "batchmean", free_bits=5.0, mask=0b111111,
                      prior_mu=pm, prior_logvar=pl)
    for i in (2, 3, 4, 5):  # everything under a floor of 5 nats
        assert g[i].shape == (6, 5) and (g[i] == 0).all()


@pytest.mark.parametrize("recon", ["bce", "cbce"])
@pytest.mark.parametrize("bad", [1.5, -0.5, float("nan")])
@pytest.mark.parametrize("where", ["input", "target"])
def test_emulated_bad_bce_input_nan_loss_and_gradients(recon, bad, where):
    inputs = make((3, 40), (3, 4), recon, (torch.float32, torch.float32))
    i = 0 if where == "input" else 1
    inputs[i][1, 7] = bad
    r, k, g = emulate(inputs, recon, "sum")
    assert math.isnan(r.item()) and not math.isnan(k.item())
    for grad in g[:2]:
        assert math.isnan(grad[1, 7].item())  # NaN, not ~1e12
        finite = torch.ones_like(grad, dtype=torch.bool)
        finite[1, 7] = False
        assert torch.isfinite(grad[finite]).all()


@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
@pytest.mark.parametrize("recon", ["mse", "l1"])
def test_emulated_likelihood_extras(recon, reduction):
    shape = (3, 4, 5, 6)
    inputs = make(shape, (3, 4), recon)
    g = torch.Generator().manual_seed(5)
    s = torch.randn(3, 1, 1, 1, generator=g, dtype=torch.float64) * 0.3      # per sample
    o = torch.rand(shape, generator=g, dtype=torch.float64)                    # per element
    w = torch.rand(1, 4, 1, 1, generator=g, dtype=torch.float64) + 0.5        # per channel
    extras = dict(recon_logvar=s, recon_offset=o, weight=w)
    got = emulate(inputs, recon, reduction, mask=0b11001111, **extras)
    check_against_oracle(inputs, got, recon, reduction, extras=extras)
    # the extras' gradients: s per sample (B,), o per element, both d(term)/d(.)
    leaves = {k: v.clone().requires_grad_() for k, v in extras.items() if k != "weight"}
    p, t = inputs[0], inputs[1]
    el = recon_elements(p, t, recon)
    half = 0.5 if recon == "mse" else 1.0
    term = reduce_as(half * w * ((el + leaves["recon_offset"]) * torch.exp(-leaves["recon_logvar"])
                                   + leaves["recon_logvar"]), reduction)
    ds, do = torch.autograd.grad(term.sum(), [leaves["recon_logvar"], leaves["recon_offset"]])
    assert got[2][6].shape == (3,)
    torch.testing.assert_close(got[2][6], ds.reshape(3), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got[2][7], do, rtol=1e-9, atol=1e-12)


def test_emulated_prior_extras_closed_form():
    inputs = make((4, 5), (4, 6), "bce")
    g = torch.Generator().manual_seed(7)
    pm = torch.randn(4, 6, generator=g, dtype=torch.float64)          # per element
    pl = torch.randn(4, 1, generator=g, dtype=torch.float64) * 0.3     # per sample
    _, k, grads = emulate(inputs, "bce", "sum", "mean", mask=0b111111, prior_mu=pm, prior_logvar=pl)
    mu, lv = [t.clone().requires_grad_() for t in inputs[2:]]
    pmv, plv = pm.clone().requires_grad_(), pl.clone().requires_grad_()
    kl = 0.5 * (plv - lv + (lv.exp() + (mu - pmv) ** 2) * torch.exp(-plv) - 1)
    expected = kl.mean()
    torch.testing.assert_close(k, expected.detach(), rtol=1e-12, atol=1e-14)
    d = torch.autograd.grad(expected, [mu, lv, pmv, plv])
    torch.testing.assert_close(grads[2], d[0])
    torch.testing.assert_close(grads[3], d[1])
    torch.testing.assert_close(grads[4], d[2])
    torch.testing.assert_close(grads[5], d[3].reshape(4))  # per-sample sums, shape (B,)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_emulated_half_gradients_stored_in_float32(dtype):
    # scaled by 1/N in float32: neither underflows (as 1/N in half would) nor
    # overflows (as an unscaled fp16 gradient does for p near 0)
    inputs = make((4, 300), (4, 8), "bce", (dtype, dtype))
    inputs[0].view(-1)[0] = 6e-8 if dtype == torch.float16 else 1e-30
    _, _, g = emulate(inputs, "bce", "mean")
    assert g[0].dtype == torch.float32
    p, t = inputs[0].double(), inputs[1].double()
    element_grad = (p - t) / (p * (1 - p)).clamp_min(1e-12) / p.numel()
    torch.testing.assert_close(g[0].double(), element_grad, rtol=1e-5, atol=1e-9)
    assert torch.isfinite(g[0]).all()


def test_channels_last_read_as_laid_out():
    inputs = make((2, 3, 4, 5), (2, 3), "bce", (torch.float32, torch.float32))
    cl = [t.contiguous(memory_format=torch.channels_last) for t in inputs[:2]] + inputs[2:]
    assert ops._cuda_keeps_layout(cl[0], cl[1])
    assert not ops._cuda_keeps_layout(cl[0], inputs[1])          # different strides: copied
    assert not ops._cuda_keeps_layout(inputs[0].transpose(0, 1), inputs[1].transpose(0, 1))  # batch not outermost
    for reduction in ("sum", "none"):
        got = emulate(cl, "bce", reduction)
        assert got[2][0].stride() == cl[0].stride() and got[2][1].stride() == cl[1].stride()
        check_against_oracle(inputs, got, "bce", reduction)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("per_sample", [False, True])
def test_emulated_scale_gradient_one_pass(dtype, per_sample):
    g = torch.Generator().manual_seed(3)
    grad = torch.randn(4, 3, 5, generator=g, dtype=torch.float64).to(dtype)
    upstream = torch.rand(4 if per_sample else (), generator=g, dtype=torch.float64).to(
        torch.float64 if dtype == torch.float64 else torch.float32)
    factor = (upstream.double() * 0.125).reshape(-1, 1, 1) if per_sample else upstream.double() * 0.125
    out = ops._cuda_emulate_scale(grad, upstream, 0.125, False)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    expected = (grad.to(acc) * factor.to(acc)).to(dtype)  # computed in float32, rounded once
    assert torch.equal(out, expected)
    before = grad.clone()
    same = ops._cuda_emulate_scale(grad, upstream, 0.125, True)
    assert same.data_ptr() == grad.data_ptr() and torch.equal(grad, expected)
    # factor exactly 1, in place: early exit, untouched
    one = torch.tensor(8.0, dtype=acc)
    ident = before.clone()
    ops._cuda_emulate_scale(ident, one, 0.125, True)
    assert torch.equal(ident, before)


@pytest.mark.parametrize("mask", [0, 0b1, 0b10, 0b1100, 0b1111])
def test_emulated_gradient_list_layout_matches_the_op(mask):
    inputs = make((3, 8), (3, 2), "bce", (torch.float16, torch.float32))
    inputs[2], inputs[3] = inputs[2].float(), inputs[3].float()
    got = emulate(inputs, "bce", "mean", mask=mask)
    cpu = ops.vae_loss_forward(*inputs, None, None, None, None, None, 0, 1, 1, 0.0, mask)
    assert len(got[2]) == len(cpu[2]) == 9
    for a, b in zip(got[2], cpu[2]):
        assert a.shape == b.shape and a.dtype == b.dtype
    assert got[0].dtype == cpu[0].dtype and got[0].shape == cpu[0].shape
