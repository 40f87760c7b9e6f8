"""Soak tests (marked `slow` and `soak`; CI runs them with `-m soak`, the
default run skips them): a long training loop must not grow the process
(the CPU gradient pool must not leak), and threads calling the op at once
must get bit-identical results to one thread."""
import os
import threading

import pytest
import torch

import vae_fused
from .helpers import grads, make_inputs, oracle_loss

pytestmark = [pytest.mark.slow, pytest.mark.soak]

STEPS = int(os.environ.get("VAE_FUSED_SOAK_STEPS", "2000"))
WARMUP = 200


def _rss_bytes():
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc/self/statm (Linux)")
@pytest.mark.parametrize("recon", ["bce_logits", "bce"])
def test_training_loop_does_not_grow_the_process(recon):
    """2,000 optimizer steps on 1M-element reconstructions (4 MB float32
    gradients: the pooled size) with the fused loss: after warm-up the
    resident set grows by less than 5%, and the loss stays right."""
    torch.manual_seed(0)
    batch, features, latent = 64, 16384, 32  # 1,048,576 elements
    x = torch.rand(batch, features)
    logits = torch.nn.Parameter(torch.randn(batch, features) * 0.1)
    mu = torch.nn.Parameter(torch.randn(batch, latent))
    logvar = torch.nn.Parameter(torch.randn(batch, latent) * 0.1)
    opt = torch.optim.SGD([logits, mu, logvar], lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        recon_x = logits if recon == "bce_logits" else torch.sigmoid(logits)
        loss = vae_fused.vae_loss(recon_x, x, mu, logvar, recon=recon, reduction="batchmean")
        loss.backward()
        opt.step()
        return loss.item()

    first = step()
    for _ in range(WARMUP):
        step()
    baseline = _rss_bytes()
    peak = baseline
    for i in range(STEPS):
        last = step()
        if i % 100 == 0:
            peak = max(peak, _rss_bytes())
    end = max(peak, _rss_bytes())
    growth = (end - baseline) / baseline
    assert growth < 0.05, (f"resident set grew {growth:.1%} over {STEPS} steps "
                           f"({baseline / 2**20:.0f} MiB -> {end / 2**20:.0f} MiB)")
    assert last < first  # it trained
    # and the loss is still the float64 PyTorch loss of the current parameters
    with torch.no_grad():
        recon_x = logits if recon == "bce_logits" else torch.sigmoid(logits)
        got = vae_fused.vae_loss(recon_x, x, mu, logvar, recon=recon, reduction="batchmean")
        expected = oracle_loss(recon_x.double(), x.double(), mu.double(), logvar.double(), recon=recon,
                               reduction="batchmean")
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=0)


def _loss_and_grads(inputs, **kwargs):
    leaves = [t.detach().requires_grad_() for t in inputs]
    loss = vae_fused.vae_loss(*leaves, **kwargs)
    return [loss.detach()] + list(grads(loss, leaves))


@pytest.mark.parametrize("kwargs", [dict(recon="bce", reduction="sum"),
                                    dict(recon="cbce", reduction="none", beta=0.5),
                                    dict(recon="bce_logits", reduction="batchmean", free_bits=0.5)],
                         ids=["bce-sum", "cbce-none", "logits-freebits"])
def test_four_threads_at_once_are_bit_identical_to_one(kwargs):
    """4 Python threads call the op concurrently (each on its own inputs,
    large enough for pooled gradient buffers, plus one input set shared by
    all), many times: every result equals, bit for bit, the one computed
    alone on one thread beforehand."""
    recon = kwargs["recon"]
    own = [make_inputs((16, 65536), (16, 32), dtype=torch.float32, recon=recon, seed=s) for s in range(4)]
    shared = make_inputs((8, 40000), (8, 16), dtype=torch.float32, recon=recon, seed=99)
    expected_own = [_loss_and_grads(inputs, **kwargs) for inputs in own]
    expected_shared = _loss_and_grads(shared, **kwargs)
    rounds = 25
    barrier = threading.Barrier(4)
    failures = []

    def worker(k):
        try:
            barrier.wait()
            for r in range(rounds):
                inputs, expected = (own[k], expected_own[k]) if (r + k) % 2 == 0 else (shared, expected_shared)
                got = _loss_and_grads(inputs, **kwargs)
                for i, (a, b) in enumerate(zip(got, expected)):
                    if a.dtype != b.dtype or not torch.equal(a, b):
                        failures.append(f"thread {k} round {r} output {i}: "
                                        f"max diff {(a.double() - b.double()).abs().max().item():.3e}")
                        return
        except Exception as err:  # noqa: BLE001 - reported below
            failures.append(f"thread {k}: {type(err).__name__}: {err}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not failures, "\n".join(failures)
    # the single-thread results are themselves right
    for inputs, expected in zip(own[:1] + [shared], expected_own[:1] + [expected_shared]):
        e = oracle_loss(*[t.double() for t in inputs], **kwargs)
        torch.testing.assert_close(expected[0].double(), e, rtol=1e-5, atol=1e-3)
