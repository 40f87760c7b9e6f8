"""Bit-identical results across thread counts and calls; every CPU kernel
build (instruction set) agrees with float64; float32 sums stay accurate."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import vae_fused
from .helpers import RECON_MODES, TOL, grads, make_inputs, oracle_loss, use_kernel_build

ORDER = ["DEFAULT", "AVX2", "AVX512"]


def _machine_capability():
    top = torch.backends.cpu.get_cpu_capability()
    return top if top in ORDER else "DEFAULT"


def _loss_and_grads(inputs, **kwargs):
    inputs = [t.detach().requires_grad_() for t in inputs]
    loss = vae_fused.vae_loss(*inputs, **kwargs)
    return [loss.detach()] + list(grads(loss, inputs))


@pytest.fixture
def restore_threads():
    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)


@pytest.mark.parametrize("recon,reduction,dtype", [
    ("bce", "sum", torch.float32), ("bce", "none", torch.float32), ("bce", "mean", torch.float32),
    ("cbce", "batchmean", torch.float32), ("bce_logits", "sum", torch.float32), ("mse", "sum", torch.float32),
    ("bce", "sum", torch.float64), ("bce", "sum", torch.bfloat16),
])
def test_bit_identical_across_thread_counts_and_calls(restore_threads, recon, reduction, dtype):
    # 786k elements per image batch: several chunks and threads
    inputs = make_inputs((64, 3, 64, 64), (64, 128), dtype=dtype, seed=3, recon=recon)
    results = []
    for threads in (1, 2, 3, 1):
        torch.set_num_threads(threads)
        results.append(_loss_and_grads(inputs, reduction=reduction, recon=recon, beta=0.7))
        results.append(_loss_and_grads(inputs, reduction=reduction, recon=recon, beta=0.7))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert a.dtype == b.dtype and torch.equal(a, b)
    # and the result is right, not only repeatable (float64: float64's tolerance)
    expected = oracle_loss(*[t.double() for t in inputs], reduction=reduction, recon=recon, beta=0.7)
    tol = TOL[torch.float64] if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results[0][0].double(), expected, **tol)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_summed_terms_do_not_depend_on_where_rows_break(reduction):
    # A term reduced to one number without extras is cut into tasks
    # over its flat elements, so re-batching the same elements -- (B, D) as
    # (B/2, 2D) -- gives the same bits, for both terms; per-row tasks would
    # sum in another order (float64: float32 would round the double totals
    # alike). 3 x 2048 + 5 columns: tasks straddle rows.
    recon_x, x, mu, logvar = make_inputs((96, 6149), (96, 16), dtype=torch.float64, seed=11)
    terms = vae_fused.vae_loss_terms(recon_x, x, mu, logvar, reduction=reduction)
    halved = [t.reshape(48, -1) for t in (recon_x, x, mu, logvar)]
    terms_halved = vae_fused.vae_loss_terms(*halved, reduction=reduction)
    assert torch.equal(terms.recon, terms_halved.recon)
    assert torch.equal(terms.kl, terms_halved.kl)
    expected = F.binary_cross_entropy(recon_x, x, reduction=reduction)  # float64 already
    torch.testing.assert_close(terms.recon, expected, rtol=1e-10, atol=0)


def test_bit_identical_with_free_bits_and_threads(restore_threads):
    inputs = make_inputs((257, 1000), (257, 64), dtype=torch.float32, seed=5)  # odd batch size
    runs = []
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        runs.append(_loss_and_grads(inputs, reduction="batchmean", free_bits=1.0))
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_shared_extras_summed_in_the_pass_are_bit_identical_and_right(restore_threads, dtype):
    # a learned (1, L) prior and a per-channel offset / log-scale: their gradients
    # are summed over the samples inside the pass, each column chunk down the rows
    # in order -- L = 5000 (three chunks, a tail), an odd batch, 1-3 threads
    g = torch.Generator().manual_seed(9)
    B, L = 7, 5000
    mu, logvar = torch.randn(B, L, generator=g, dtype=dtype), torch.randn(B, L, generator=g, dtype=dtype)
    prior_mu, prior_logvar = torch.randn(1, L, generator=g, dtype=dtype), torch.randn(L, generator=g, dtype=dtype)
    recon_x, x = torch.rand(B, 3, 40, 40, generator=g, dtype=dtype), torch.rand(B, 3, 40, 40, generator=g, dtype=dtype)
    s, o = torch.randn(1, 3, 1, 1, generator=g, dtype=dtype), torch.rand(1, 3, 40, 40, generator=g, dtype=dtype)
    leaves = [recon_x, x, mu, logvar, prior_mu, prior_logvar, s, o]

    def run(fn):
        ts = [t.detach().clone().requires_grad_() for t in leaves]
        loss = fn(*ts[:4], prior_mu=ts[4], prior_logvar=ts[5], recon_logvar=ts[6], recon_offset=ts[7],
                  recon="l1", reduction="batchmean")
        return [loss.detach()] + list(torch.autograd.grad(loss, ts[:1] + ts[2:]))

    runs = []
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        runs.append(run(vae_fused.vae_loss))
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)
    expected = run(lambda *a, **k: vae_fused.reference.vae_loss(*[t.double() for t in a],
                                                                **{n: v.double() for n, v in k.items()
                                                                   if isinstance(v, torch.Tensor)},
                                                                recon="l1", reduction="batchmean"))
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=1e-4)
    for got, want in zip(runs[0], expected):
        assert got.shape == want.shape
        torch.testing.assert_close(got.double(), want.double(), **tol)


@pytest.mark.parametrize("cap", ["default", "avx2", "avx512"])
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_row_folds_its_chunk_partials_in_order(monkeypatch, cap, reduction):
    # The fold order is fixed (what makes the bits independent of threads): a
    # row's 2048-column chunk sums are added first to last. Chunk 0 sums to
    # 2^53, chunks 1 and 2 to 1 each: in order, 2^53 + 1 + 1 rounds to 2^53
    # twice; any other order gives 2^53 + 2.
    use_kernel_build(monkeypatch, cap)
    p = torch.zeros(1, 3 * 2048, dtype=torch.float64)
    p[0, :2] = 2.0 ** 26
    p[0, 2048] = p[0, 4096] = 1.0
    mu = torch.zeros(1, 2, dtype=torch.float64)
    got = vae_fused.vae_loss(p, torch.zeros_like(p), mu, mu, recon="mse", reduction=reduction)
    assert got.reshape(()).item() == 2.0 ** 53


@pytest.mark.parametrize("cap", ["default", "avx2", "avx512"])
def test_capability_is_reported_capped(monkeypatch, cap):
    """VAE_FUSED_CPU_CAPABILITY (read on every call) picks the kernel build;
    cpu_capability() says which one runs: the requested one, capped by what
    torch says the machine supports."""
    top = _machine_capability()
    monkeypatch.setenv("VAE_FUSED_CPU_CAPABILITY", cap)
    got = vae_fused.cpu_capability()
    expected = ORDER[min(ORDER.index(cap.upper()), ORDER.index(top))]
    assert got == expected
    assert ORDER.index(got) <= ORDER.index(top)


def test_capability_default_is_the_machines(monkeypatch):
    monkeypatch.delenv("VAE_FUSED_CPU_CAPABILITY", raising=False)
    assert vae_fused.cpu_capability() == _machine_capability()
    # re-read on every call: lowering and unsetting take effect immediately
    monkeypatch.setenv("VAE_FUSED_CPU_CAPABILITY", "default")
    assert vae_fused.cpu_capability() == "DEFAULT"
    monkeypatch.delenv("VAE_FUSED_CPU_CAPABILITY")
    assert vae_fused.cpu_capability() == _machine_capability()


@pytest.mark.parametrize("cap", ["default", "avx2", "avx512"])
@pytest.mark.parametrize("recon", RECON_MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
def test_every_cpu_kernel_build(monkeypatch, cap, recon, dtype):
    use_kernel_build(monkeypatch, cap)
    inputs64 = make_inputs((5, 1000), (5, 37), recon=recon, seed=7)  # partial vector blocks included
    low = [t.to(dtype).requires_grad_() for t in inputs64]
    rounded = [t.detach().double().requires_grad_() for t in low]
    for reduction in ("none", "sum"):
        expected = oracle_loss(*rounded, recon=recon, reduction=reduction)
        got = vae_fused.vae_loss(*low, recon=recon, reduction=reduction)
        # float32 tolerance for every non-float64 path (half types accumulate in float32)
        tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got.double(), expected, **tol)
    gtol = {torch.float64: dict(rtol=1e-9, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=5e-5),
            torch.bfloat16: dict(rtol=1e-2, atol=1e-2), torch.float16: dict(rtol=2e-3, atol=2e-3)}[dtype]
    for g, e in zip(grads(got, low), grads(expected, rounded)):
        assert g.dtype == dtype
        torch.testing.assert_close(g.double(), e, **gtol)


def test_kernel_builds_agree_with_each_other(monkeypatch):
    inputs = make_inputs((16, 4099), (16, 33), dtype=torch.float32, seed=11, recon="cbce")
    results = {}
    caps = [c for c in ("default", "avx2", "avx512") if ORDER.index(c.upper()) <= ORDER.index(_machine_capability())]
    if len(caps) < 2:
        pytest.skip(f"only the DEFAULT kernel build runs here (torch reports {torch.backends.cpu.get_cpu_capability()})")
    for cap in caps:
        monkeypatch.setenv("VAE_FUSED_CPU_CAPABILITY", cap)
        assert vae_fused.cpu_capability() == cap.upper()
        results[cap] = _loss_and_grads(inputs, recon="cbce", reduction="none")
    for cap in caps[1:]:
        for a, b in zip(results["default"], results[cap]):
            torch.testing.assert_close(a, b, rtol=2e-5, atol=1e-5)


def _with_every_extra(dtype, rows, cols, seed):
    """Inputs with a per-element recon_logvar and weight (a constant) and a
    learned prior, so every element output of the pass (the gradients of
    recon_x, x, recon_logvar, mu, logvar and the prior; element losses) is
    written."""
    g = torch.Generator().manual_seed(seed)
    recon_x = torch.rand(rows, cols, generator=g, dtype=torch.float64).clamp(1e-3, 1 - 1e-3)
    x = torch.rand(rows, cols, generator=g, dtype=torch.float64)
    x[: rows // 2] = x[: rows // 2].round()  # binary-target blocks too
    mu, logvar = torch.randn(rows, 40, generator=g, dtype=torch.float64), torch.randn(rows, 40, generator=g, dtype=torch.float64)
    extras = dict(recon_logvar=torch.randn(rows, cols, generator=g, dtype=torch.float64) * 0.1,
                  weight=torch.rand(rows, cols, generator=g, dtype=torch.float64),
                  prior_mu=torch.randn(rows, 40, generator=g, dtype=torch.float64),
                  prior_logvar=torch.randn(rows, 40, generator=g, dtype=torch.float64))
    return [t.to(dtype) for t in (recon_x, x, mu, logvar)], {k: v.to(dtype) for k, v in extras.items()}


def _all_outputs(inputs, extras, **kwargs):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    extra_leaves = {k: v.detach().clone().requires_grad_(k != "weight") for k, v in extras.items()}
    loss = vae_fused.vae_loss(*leaves, **extra_leaves, **kwargs)
    wrt = leaves + [v for v in extra_leaves.values() if v.requires_grad]
    return [loss.detach()] + list(torch.autograd.grad(loss.sum(), wrt))


@pytest.mark.parametrize("cap", ["default", "avx2", "avx512"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(6, 1000), (4, 4096)], ids=["odd-rows", "aligned-rows"])
def test_streaming_stores_change_no_bit(monkeypatch, cap, dtype, shape):
    """Large passes write their element outputs with non-temporal stores
    (VAE_FUSED_STREAMING_STORES forces either way): the same bits either way,
    with and without the extras, row starts aligned or not, tails included."""
    use_kernel_build(monkeypatch, cap)
    inputs, extras = _with_every_extra(dtype, *shape, seed=13)
    for recon, reduction, with_extras in [("bce", "sum", False), ("bce", "none", False),
                                          ("mse", "mean", True), ("l1", "none", True)]:
        runs = {}
        for stream in ("0", "1"):
            monkeypatch.setenv("VAE_FUSED_STREAMING_STORES", stream)
            runs[stream] = _all_outputs(inputs, extras if with_extras else {}, recon=recon, reduction=reduction)
        for a, b in zip(runs["0"], runs["1"]):
            assert a.dtype == b.dtype and torch.equal(a, b), (recon, reduction, with_extras)


@pytest.mark.parametrize("cap", ["default", "avx2", "avx512"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("s_shape", [(1, 3, 1, 1), (1, 3, 7, 9)], ids=["per-channel", "per-feature"])
def test_shared_recon_logvar_gives_the_bits_of_the_same_values_per_element(monkeypatch, cap, dtype, s_shape):
    """A recon_logvar shared by every sample has e^-s taken once per column
    before the pass; the loss and the gradients of recon_x and recon_offset
    are bit for bit those of the same s materialized per sample (e^-s per
    element). 189 features: full blocks and a tail in every build."""
    use_kernel_build(monkeypatch, cap)
    g = torch.Generator().manual_seed(21)
    shape = (5, 3, 7, 9)
    recon_x = (torch.rand(shape, generator=g) * 0.98 + 0.01).to(dtype).requires_grad_()
    x = torch.rand(shape, generator=g).to(dtype)
    mu, logvar = torch.randn(5, 4, generator=g).to(dtype), torch.randn(5, 4, generator=g).to(dtype)
    offset = torch.rand(5, 1, 1, 1, generator=g).to(dtype).requires_grad_()
    s = (torch.randn(s_shape, generator=g) * 2).to(dtype)
    for recon, reduction in [("mse", "sum"), ("l1", "mean"), ("mse", "none")]:
        runs = []
        for s_arg in (s.requires_grad_(), s.detach().expand(shape).contiguous().requires_grad_()):
            loss = vae_fused.vae_loss(recon_x, x, mu, logvar, recon=recon, reduction=reduction,
                                      recon_logvar=s_arg, recon_offset=offset)
            g_x, g_o, g_s = torch.autograd.grad(loss.sum(), [recon_x, offset, s_arg])
            runs.append((loss.detach(), g_x, g_o, g_s.double().sum_to_size(s_shape)))
        for a, b in zip(runs[0][:3], runs[1][:3]):
            assert a.dtype == b.dtype and torch.equal(a, b), (recon, reduction)
        # s's own gradient: summed over the samples inside the pass, or per
        # element (each rounded to dtype) and summed here
        tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 3e-2}[dtype]
        torch.testing.assert_close(runs[0][3], runs[1][3], rtol=tol, atol=tol * runs[1][3].abs().max().item())


def test_streaming_stores_chosen_for_large_gradients_change_no_bit(monkeypatch):
    # 9.4M float32 gradients (38 MB): more than this machine class's last-level
    # cache, so the default streams them; forced off gives the same bits
    inputs = make_inputs((48, 196_000), (48, 64), dtype=torch.float32, seed=17)
    monkeypatch.delenv("VAE_FUSED_STREAMING_STORES", raising=False)
    auto = _loss_and_grads(inputs)
    monkeypatch.setenv("VAE_FUSED_STREAMING_STORES", "0")
    plain = _loss_and_grads(inputs)
    for a, b in zip(auto, plain):
        assert torch.equal(a, b)


@pytest.mark.parametrize("variable,value,message", [
    ("VAE_FUSED_CPU_CAPABILITY", "sse9", "VAE_FUSED_CPU_CAPABILITY must be one of"),
    ("VAE_FUSED_CPU_CAPABILITY", "AVX1024", "VAE_FUSED_CPU_CAPABILITY must be one of"),
    ("VAE_FUSED_CPU_CAPABILITY", "fast", "VAE_FUSED_CPU_CAPABILITY must be one of"),
    ("VAE_FUSED_STREAMING_STORES", "2", "VAE_FUSED_STREAMING_STORES must be 0 or 1"),
    ("VAE_FUSED_STREAMING_STORES", "yes", "VAE_FUSED_STREAMING_STORES must be 0 or 1"),
    ("VAE_FUSED_STREAMING_STORES", "auto", "VAE_FUSED_STREAMING_STORES must be 0 or 1"),
])
def test_invalid_environment_setting_is_a_clear_error(monkeypatch, variable, value, message):
    inputs = make_inputs()
    monkeypatch.setenv(variable, value)
    with pytest.raises(RuntimeError, match=message):
        vae_fused.vae_loss(*inputs)
    monkeypatch.delenv(variable)
    assert torch.isfinite(vae_fused.vae_loss(*inputs))  # fine again once unset


def test_aten_cpu_capability_lowers_the_build():
    # torch reads ATEN_CPU_CAPABILITY at start-up; the fused kernels follow it
    code = ("import torch, vae_fused; "
            "print(torch.backends.cpu.get_cpu_capability()); print(vae_fused.cpu_capability())")
    env = {k: v for k, v in os.environ.items() if k != "VAE_FUSED_CPU_CAPABILITY"}
    env["ATEN_CPU_CAPABILITY"] = "default"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    torch_cap, ours = out.stdout.splitlines()
    # older torch (2.6 here) calls its default build "NO AVX"
    assert torch_cap in ("DEFAULT", "NO AVX") and ours == "DEFAULT"


@pytest.mark.parametrize("recon", ["bce", "mse", "cbce"])
def test_float32_sum_accuracy_at_4m_elements(recon):
    g = torch.Generator().manual_seed(0)
    p = torch.rand(16, 250_000, generator=g) * 0.98 + 0.01
    t = torch.rand(16, 250_000, generator=g)
    if recon == "mse":
        p, t = p * 2 - 1, t * 2 - 1
    mu = torch.randn(16, 64, generator=g)
    logvar = torch.randn(16, 64, generator=g)
    got = vae_fused.vae_loss(p, t, mu, logvar, recon=recon).double()
    expected = oracle_loss(p.double(), t.double(), mu.double(), logvar.double(), recon=recon) if recon != "cbce" else (
        F.binary_cross_entropy(p.double(), t.double(), reduction="sum")
        - torch.log(2 * torch.atanh(1 - 2 * p.double()) / (1 - 2 * p.double())).nan_to_num(nan=0.6931471805599453).sum()
        - 0.5 * torch.sum(1 + logvar.double() - mu.double() ** 2 - logvar.double().exp()))
    assert abs(got.item() - expected.item()) <= 1e-6 * abs(expected.item())
