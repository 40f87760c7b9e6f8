"""torch.compile(fullgraph=True), beta schedules without recompiles, no_grad,
dynamic batch sizes, CPU autocast and half-precision inputs."""
import copy

import pytest
import torch

import vae_fused
from .helpers import (GRAD_TOL, LOW_PRECISION, TOL, check_low_precision, grads, leaf, make_inputs,
                      oracle_loss)


class CountingBackend:
    """A torch.compile backend that counts graph compilations, then hands the
    graph to `inner` (inductor, or aot_eager where only tracing matters)."""

    def __init__(self, inner="inductor"):
        self.compiles = 0
        self.inner = inner
        self.graphs = []

    def __call__(self, gm, example_inputs):
        self.compiles += 1
        self.graphs.append(gm)
        if self.inner == "inductor":
            from torch._inductor.compile_fx import compile_fx

            return compile_fx(gm, example_inputs)
        return torch._dynamo.lookup_backend(self.inner)(gm, example_inputs)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _ops_in(backend):
    return [str(n.target) for gm in backend.graphs for n in gm.graph.nodes if n.op == "call_function"]


@pytest.mark.slow
@pytest.mark.parametrize("kwargs", [
    dict(reduction="sum"),
    dict(reduction="none", recon="cbce", beta=0.5),
    dict(reduction="mean", kl_reduction="batchmean", recon="mse", beta=0.01),
    dict(reduction="batchmean", recon="bce_logits", free_bits=0.3),
], ids=["bce-sum", "cbce-none", "mse-mean", "logits-freebits"])
def test_compile_fullgraph_forward_backward_equals_eager(kwargs):
    recon = kwargs.get("recon", "bce")
    inputs = make_inputs((8, 50), (8, 6), dtype=torch.float32, recon=recon, requires_grad=True)
    backend = CountingBackend("inductor")

    def step(recon_x, x, mu, logvar):
        return (vae_fused.vae_loss(recon_x, x, mu, logvar, **kwargs) * 1.5).sum()

    compiled = torch.compile(step, fullgraph=True, backend=backend)
    got = compiled(*inputs)
    expected = step(*inputs)
    assert backend.compiles == 1
    assert any("vae_fused" in op for op in _ops_in(backend))  # the op itself is in the graph
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    oracle = oracle_loss(*[t.detach().double() for t in inputs], **kwargs).sum() * 1.5
    torch.testing.assert_close(got.double(), oracle, rtol=1e-5, atol=1e-5)
    for g, e in zip(grads(got, inputs), grads(expected, inputs)):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-7)
    # a second call with new values reuses the graph and stays right
    inputs2 = make_inputs((8, 50), (8, 6), dtype=torch.float32, recon=recon, seed=9, requires_grad=True)
    torch.testing.assert_close(compiled(*inputs2), step(*inputs2), rtol=1e-6, atol=1e-6)
    assert backend.compiles == 1


@pytest.mark.slow
def test_beta_schedule_does_not_recompile(capsys):
    inputs = make_inputs((8, 50), (8, 6), dtype=torch.float32, requires_grad=True)
    backend = CountingBackend("inductor")

    @torch.compile(fullgraph=True, backend=backend)
    def step(recon_x, x, mu, logvar, beta):
        return vae_fused.vae_loss(recon_x, x, mu, logvar, beta=beta)

    beta = torch.tensor(0.0)
    for i in range(5):
        beta.fill_(i / 4)  # a KL-annealing schedule, updated in place
        loss = step(*inputs, beta)
        g = grads(loss, inputs)
        expected = oracle_loss(*[t.detach().double() for t in inputs], beta=i / 4)
        torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=0)
        torch.testing.assert_close(g[2], (i / 4) * inputs[2].detach(), rtol=1e-6, atol=1e-7)  # d/dmu = beta mu
    assert backend.compiles == 1
    # a new 0-d tensor object each step (not updated in place) does not recompile either
    for b in (0.3, 0.7):
        loss = step(*inputs, torch.tensor(b))
        torch.testing.assert_close(loss.double(), oracle_loss(*[t.detach().double() for t in inputs], beta=b),
                                   rtol=1e-5, atol=0)
    assert backend.compiles == 1



def test_python_float_beta_compiles_at_most_twice(capsys):
    """A Python-float beta, fresh function. Observed on torch 2.14: the first
    value is specialised (one compile), the second triggers one recompile with
    the float made symbolic (automatic dynamic), then none for any value."""
    inputs = make_inputs((8, 50), (8, 6), dtype=torch.float32, requires_grad=True)
    backend = CountingBackend("aot_eager")

    @torch.compile(fullgraph=True, backend=backend)
    def step(recon_x, x, mu, logvar, beta):
        return vae_fused.vae_loss(recon_x, x, mu, logvar, beta=beta)

    counts = []
    for b in (0.1, 0.2, 0.3, 0.4, 1.0, 0.0, 2.5):
        loss = step(*inputs, b)
        counts.append(backend.compiles)
        torch.testing.assert_close(loss.double(), oracle_loss(*[t.detach().double() for t in inputs], beta=b),
                                   rtol=1e-5, atol=0)
        g = grads(loss, inputs)
        torch.testing.assert_close(g[2], b * inputs[2].detach(), rtol=1e-6, atol=1e-7)
    with capsys.disabled():
        print(f"\n[test_compile] Python-float beta, compiles after each of 7 values: {counts}")
    assert counts[-1] <= 2  # the first compile + at most one recompile
    assert counts[2:] == [counts[1]] * (len(counts) - 2)  # nothing after the second value


def test_no_grad_matches_grad_mode():
    inputs = make_inputs(requires_grad=True)
    with torch.no_grad():
        a = vae_fused.vae_loss(*inputs, reduction="none")
    b = vae_fused.vae_loss(*inputs, reduction="none")
    assert not a.requires_grad and b.requires_grad
    assert torch.equal(a, b.detach())
    backend = CountingBackend("aot_eager")
    compiled = torch.compile(lambda *t: vae_fused.vae_loss(*t, reduction="none"), fullgraph=True, backend=backend)
    with torch.no_grad():
        c = compiled(*inputs)
    assert not c.requires_grad
    torch.testing.assert_close(c, b.detach(), rtol=1e-15, atol=0)


def test_dynamic_batch_size_does_not_recompile_per_size():
    backend = CountingBackend("aot_eager")
    compiled = torch.compile(lambda *t: vae_fused.vae_loss(*t, reduction="none", recon="cbce"),
                             fullgraph=True, backend=backend, dynamic=True)
    after_first = None
    for b in (4, 7, 9, 16):
        inputs = make_inputs((b, 30), (b, 5), seed=b, requires_grad=True)
        got = compiled(*inputs)
        # (dynamo may call the backend twice for the first, symbolic, trace: a
        # restart inside torch; what matters is that no size adds a compile)
        after_first = after_first or backend.compiles
        expected = oracle_loss(*inputs, reduction="none", recon="cbce")
        assert got.shape == (b,)
        torch.testing.assert_close(got, expected, **TOL[torch.float64])
        for g, e in zip(grads(got, inputs), grads(expected, inputs)):
            torch.testing.assert_close(g, e, **GRAD_TOL[torch.float64])
    assert backend.compiles == after_first <= 2


@pytest.mark.parametrize("recon", ["bce", "bce_logits", "mse"])
def test_cpu_autocast_bf16(recon):
    torch.manual_seed(0)
    encoder = torch.nn.Linear(40, 8)
    decoder = torch.nn.Linear(4, 40)
    x = torch.rand(6, 40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = encoder(x)
        mu, logvar = h[:, :4], h[:, 4:]
        out = decoder(mu)
        recon_x = torch.sigmoid(out) if recon == "bce" else out
        recon_x.retain_grad()
        h.retain_grad()
        loss = vae_fused.vae_loss(recon_x, x, mu, logvar, recon=recon)
    assert recon_x.dtype == torch.bfloat16 and mu.dtype == torch.bfloat16
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    # gradients come back in each input's own dtype, then flow into float32 parameters
    assert recon_x.grad.dtype == torch.bfloat16 and h.grad.dtype == torch.bfloat16
    for p in (*encoder.parameters(), *decoder.parameters()):
        assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
    # against float64 on the same (bf16-rounded) activations
    r64, m64, l64 = (t.detach().double().requires_grad_() for t in (recon_x, mu, logvar))
    expected = oracle_loss(r64, x.double(), m64, l64, recon=recon)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-4)
    (e_r,) = torch.autograd.grad(expected, [r64])
    torch.testing.assert_close(recon_x.grad.double(), e_r, rtol=1e-2, atol=1e-2 * e_r.abs().max().item())


@pytest.mark.slow
def test_cpu_autocast_bf16_compiled():
    """A bf16-autocast decoder + the fused logits loss, compiled: the loss and
    the gradients of mu, logvar and the decoder weight against the same
    pipeline in float64 with torch.nn.functional, within (twice) the error
    PyTorch itself makes running that pipeline under the same autocast."""
    torch.manual_seed(0)
    decoder = torch.nn.Linear(4, 40)
    x = torch.rand(6, 40)
    mu = torch.randn(6, 4, requires_grad=True)
    logvar = torch.randn(6, 4, requires_grad=True)

    def step(x, mu, logvar, loss_fn=vae_fused.vae_loss, dec=decoder):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return loss_fn(dec(mu), x, mu, logvar, recon="bce_logits")

    def loss_and_grads(fn, dec, *inputs):
        loss = fn(*inputs)
        return loss, torch.autograd.grad(loss, [inputs[1], inputs[2], dec.weight])

    compiled, g_comp = loss_and_grads(torch.compile(step, fullgraph=True), decoder, x, mu, logvar)
    eager, g_eager = loss_and_grads(step, decoder, x, mu, logvar)
    assert compiled.dtype == eager.dtype == torch.float32
    # float64 oracle: the same decoder and loss, no autocast
    dec64 = copy.deepcopy(decoder).double()
    inputs64 = [x.double(), mu.detach().double().requires_grad_(), logvar.detach().double().requires_grad_()]
    expected, g_exp = loss_and_grads(lambda *t: oracle_loss(dec64(t[1]), *t, recon="bce_logits"), dec64, *inputs64)
    # PyTorch's own bf16-autocast run of the same pipeline
    dec_low = copy.deepcopy(decoder)
    ref_inputs = [x, mu.detach().clone().requires_grad_(), logvar.detach().clone().requires_grad_()]
    reference_low, g_ref = loss_and_grads(
        lambda *t: step(*t, loss_fn=lambda *a, **k: oracle_loss(*a, **k), dec=dec_low), dec_low, *ref_inputs)
    for got in (compiled, eager):
        check_low_precision(got, expected, reference_low, atol=1e-4 * abs(expected.item()), what="loss")
    for name, c, e_, exp, ref in zip(("mu", "logvar", "decoder.weight"), g_comp, g_eager, g_exp, g_ref):
        assert c.dtype == e_.dtype == torch.float32
        for got in (c, e_):
            check_low_precision(got, exp, ref, atol=2e-3 * exp.abs().max().item(), what=f"grad {name}")
        torch.testing.assert_close(c, e_, rtol=2e-2, atol=2e-2)  # and compiled agrees with eager


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["eager", "compiled"])
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_half_precision_inputs(dtype, compiled):
    inputs64 = make_inputs((16, 200), (16, 8), requires_grad=True)
    expected = oracle_loss(*inputs64, reduction="batchmean")
    low = leaf([t.to(dtype) for t in inputs64])
    fn = lambda *t: vae_fused.vae_loss(*t, reduction="batchmean")  # noqa: E731
    if compiled:
        fn = torch.compile(fn, fullgraph=True)
    got = fn(*low)
    assert got.dtype == torch.float32
    reference_low = oracle_loss(*(ref_low := leaf([t.to(dtype) for t in inputs64])), reduction="batchmean")
    check_low_precision(got, expected, reference_low, atol=1e-4 * abs(expected.item()))
    for g, e, r, t in zip(grads(got, low), grads(expected, inputs64), grads(reference_low, ref_low), low):
        assert g.dtype == dtype and g.shape == t.shape
        check_low_precision(g, e, r, atol=2e-3 * e.abs().max().item(), what="grad")
