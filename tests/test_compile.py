"""torch.compile(fullgraph=True), beta schedules without recompiles, no_grad
and CPU autocast."""
import pytest
import torch

import vae_fused
from conftest import grads, make_inputs, oracle_loss


class CountingBackend:
    """A torch.compile backend that counts graph compilations (then runs inductor)."""

    def __init__(self):
        self.compiles = 0

    def __call__(self, gm, example_inputs):
        from torch._inductor.compile_fx import compile_fx

        self.compiles += 1
        return compile_fx(gm, example_inputs)


@pytest.mark.slow
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_compile_fullgraph_forward_backward_equals_eager(reduction):
    torch._dynamo.reset()
    inputs = [t.float().requires_grad_() for t in make_inputs((8, 50), (8, 6))]

    def step(recon_x, x, mu, logvar):
        return vae_fused.vae_loss(recon_x, x, mu, logvar, reduction=reduction, beta=0.5).sum()

    compiled = torch.compile(step, fullgraph=True)
    got = compiled(*inputs)
    expected = step(*inputs)
    torch.testing.assert_close(got, expected)
    for g, e in zip(grads(got, inputs), grads(expected, inputs)):
        torch.testing.assert_close(g, e)


@pytest.mark.slow
def test_beta_schedule_does_not_recompile():
    torch._dynamo.reset()
    inputs = [t.float().requires_grad_() for t in make_inputs((8, 50), (8, 6))]
    backend = CountingBackend()

    @torch.compile(fullgraph=True, backend=backend)
    def step(recon_x, x, mu, logvar, beta):
        return vae_fused.vae_loss(recon_x, x, mu, logvar, beta=beta)

    beta = torch.tensor(0.0)
    for i in range(4):
        beta.fill_(i / 4)
        loss = step(*inputs, beta)
        loss.backward()
        expected = oracle_loss(*[t.detach().double() for t in inputs], beta=i / 4)
        torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=0)
    assert backend.compiles == 1
    # A Python float beta: traced symbolically by this torch, so at most one
    # compile more for the new argument kind, none per value.
    for b in (0.1, 0.2, 0.3, 0.4):
        step(*inputs, b)
    assert backend.compiles <= 2


def test_no_grad_matches_grad_mode():
    inputs = [t.requires_grad_() for t in make_inputs()]
    with torch.no_grad():
        a = vae_fused.vae_loss(*inputs, reduction="none")
    b = vae_fused.vae_loss(*inputs, reduction="none")
    assert torch.equal(a, b.detach())


@pytest.mark.parametrize("recon", ["bce", "bce_logits", "mse"])
def test_cpu_autocast_bf16(recon):
    torch.manual_seed(0)
    decoder = torch.nn.Linear(16, 40)
    encoder = torch.nn.Linear(40, 8)
    x = torch.rand(6, 40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = encoder(x)
        mu, logvar = h[:, :4], h[:, 4:]
        out = decoder(torch.cat([mu, logvar], dim=1).repeat(1, 2))
        recon_x = torch.sigmoid(out) if recon == "bce" else out
        loss = vae_fused.vae_loss(recon_x, x, mu, logvar, recon=recon)
    assert recon_x.dtype == torch.bfloat16 and loss.dtype == torch.float32
    loss.backward()
    assert decoder.weight.grad.dtype == torch.float32 and torch.isfinite(decoder.weight.grad).all()
    # against float64 on the same (bf16-rounded) activations
    expected = oracle_loss(recon_x.detach().double(), x.double(), mu.detach().double(),
                           logvar.detach().double(), recon=recon)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-4)
