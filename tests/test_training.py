"""A short float64 training run of the pytorch/examples VAE: the fused loss
gives the same loss curve as the PyTorch loss, to 1e-9 relative."""
import torch
from torch import nn
from torch.nn import functional as F

import vae_fused
from conftest import examples_loss


class VAE(nn.Module):
    """pytorch/examples vae/main.py."""

    def __init__(self, d=784, hidden=400, latent=20):
        super().__init__()
        self.fc1 = nn.Linear(d, hidden)
        self.fc21 = nn.Linear(hidden, latent)
        self.fc22 = nn.Linear(hidden, latent)
        self.fc3 = nn.Linear(latent, hidden)
        self.fc4 = nn.Linear(hidden, d)

    def forward(self, x, eps):
        h1 = F.relu(self.fc1(x))
        mu, logvar = self.fc21(h1), self.fc22(h1)
        z = mu + eps * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, logvar


def _train(loss_fn, data, noise, steps=12):
    torch.manual_seed(0)
    model = VAE().double()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    curve = []
    for step in range(steps):
        x = data[step % len(data)]
        opt.zero_grad(set_to_none=True)
        recon_x, mu, logvar = model(x, noise[step])
        loss = loss_fn(recon_x, x, mu, logvar)
        loss.backward()
        opt.step()
        curve.append(loss.item())
    return curve


def test_float64_training_curve_matches_pytorch():
    g = torch.Generator().manual_seed(1)
    data = [torch.rand(16, 784, generator=g, dtype=torch.float64) for _ in range(4)]
    noise = [torch.randn(16, 20, generator=g, dtype=torch.float64) for _ in range(12)]
    reference = _train(examples_loss, data, noise)
    fused = _train(vae_fused.vae_loss, data, noise)
    assert reference[-1] < reference[0]  # it trains
    for r, f in zip(reference, fused):
        assert abs(r - f) <= 1e-9 * abs(r)
