"""Bit-identical results across thread counts and calls; every CPU kernel
build (instruction set) agrees with float64; float32 sums stay accurate."""
import pytest
import torch
import torch.nn.functional as F

import vae_fused
from conftest import grads, make_inputs, oracle_loss


def _loss_and_grads(inputs, **kwargs):
    inputs = [t.detach().requires_grad_() for t in inputs]
    loss = vae_fused.vae_loss(*inputs, **kwargs)
    return [loss.detach()] + list(grads(loss, inputs))


@pytest.mark.parametrize("reduction", ["sum", "none", "mean"])
def test_bit_identical_across_thread_counts_and_calls(reduction):
    inputs = make_inputs((64, 3, 64, 64), (64, 128), dtype=torch.float32, seed=3)
    saved = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3, 1):
            torch.set_num_threads(threads)
            results.append(_loss_and_grads(inputs, reduction=reduction))
            results.append(_loss_and_grads(inputs, reduction=reduction))
    finally:
        torch.set_num_threads(saved)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def _capabilities():
    top = torch.backends.cpu.get_cpu_capability()
    order = ["DEFAULT", "AVX2", "AVX512"]
    caps = ["default"]
    if top in ("AVX2", "AVX512"):
        caps.append("avx2")
    if top == "AVX512":
        caps.append("avx512")
    return caps, order


@pytest.mark.parametrize("cap", _capabilities()[0])
@pytest.mark.parametrize("recon", ["bce", "bce_logits", "mse", "cbce"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_every_cpu_kernel_build(monkeypatch, cap, recon, dtype):
    monkeypatch.setenv("VAE_FUSED_CPU_CAPABILITY", cap)
    assert vae_fused.cpu_capability() == cap.upper()
    inputs64 = make_inputs((5, 1000), (5, 37), recon=recon, seed=7)  # partial blocks included
    low = [t.to(dtype).requires_grad_() for t in inputs64]
    rounded = [t.detach().double().requires_grad_() for t in low]
    expected = oracle_loss(*rounded, recon=recon, reduction="none")
    got = vae_fused.vae_loss(*low, recon=recon, reduction="none")
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.double(), expected, **tol)
    gtol = dict(rtol=1e-9, atol=1e-12) if dtype == torch.float64 else (
        dict(rtol=1e-5, atol=5e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2))
    for g, e in zip(grads(got, low), grads(expected, rounded)):
        torch.testing.assert_close(g.double(), e, **gtol)


def test_capability_is_capped_by_the_machine(monkeypatch):
    caps, order = _capabilities()
    top = torch.backends.cpu.get_cpu_capability()
    monkeypatch.setenv("VAE_FUSED_CPU_CAPABILITY", "avx512")
    got = vae_fused.cpu_capability()
    assert got in order and order.index(got) <= max(order.index(top) if top in order else 0, 0)
    monkeypatch.delenv("VAE_FUSED_CPU_CAPABILITY")
    assert vae_fused.cpu_capability() == (top if top in order else "DEFAULT")


def test_invalid_capability_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("VAE_FUSED_CPU_CAPABILITY", "sse9")
    with pytest.raises(RuntimeError, match="VAE_FUSED_CPU_CAPABILITY"):
        vae_fused.vae_loss(*make_inputs())


@pytest.mark.slow
def test_float32_sum_accuracy_at_4m_elements():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(16, 250_000, generator=g) * 0.98 + 0.01
    t = torch.rand(16, 250_000, generator=g)
    mu = torch.randn(16, 64, generator=g)
    logvar = torch.randn(16, 64, generator=g)
    got = vae_fused.vae_loss(p, t, mu, logvar).double()
    expected = (F.binary_cross_entropy(p.double(), t.double(), reduction="sum")
                - 0.5 * torch.sum(1 + logvar.double() - mu.double() ** 2 - logvar.double().exp()))
    assert abs(got.item() - expected.item()) / expected.item() < 1e-6
