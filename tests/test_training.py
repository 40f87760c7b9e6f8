"""A short float64 training run of the pytorch/examples VAE: the fused loss
gives the same loss curve as the PyTorch loss, to 1e-9 relative, at every step."""
import copy

import pytest
import torch

import vae_fused
from examples.models import ExampleVAE

from .helpers import examples_loss


def _train(model, loss_fn, data, noise, epochs=3, batch=16):
    model = copy.deepcopy(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    curve = []
    step = 0
    for _ in range(epochs):
        for i in range(0, len(data), batch):
            x = data[i:i + batch]
            opt.zero_grad()
            recon_x, mu, logvar = model(x, noise[step])
            loss = loss_fn(recon_x, x.view(-1, 784), mu, logvar)
            loss.backward()
            opt.step()
            curve.append(loss.item())
            step += 1
    return curve, model


@pytest.mark.parametrize("fused_loss", [
    pytest.param(vae_fused.vae_loss, id="vae_loss"),
    pytest.param(vae_fused.VAELoss(), id="VAELoss"),
])
def test_float64_training_curve_matches_pytorch(fused_loss):
    g = torch.Generator().manual_seed(1)
    data = torch.rand(64, 1, 28, 28, generator=g, dtype=torch.float64)  # 64 samples, batch 16
    noise = [torch.randn(16, 20, generator=g, dtype=torch.float64) for _ in range(12)]
    torch.manual_seed(0)
    model = ExampleVAE().double()  # identical initial weights for both runs
    reference, ref_model = _train(model, examples_loss, data, noise)
    fused, fused_model = _train(model, fused_loss, data, noise)
    assert len(reference) == len(fused) == 12
    assert reference[-1] < reference[0]  # it trains
    for step, (r, f) in enumerate(zip(reference, fused)):
        assert abs(r - f) <= 1e-9 * abs(r), f"step {step}: torch {r!r} vs fused {f!r}"
    for (name, a), b in zip(ref_model.named_parameters(), fused_model.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12, msg=name)  # the 1e-9 contract
