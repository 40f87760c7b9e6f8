"""Models shared by the examples, the benchmarks and the tests. Plain PyTorch:
nothing here imports vae_fused.

  from examples.models import ExampleVAE      # from the repository root
  model = ExampleVAE()                         # pytorch/examples vae/main.py: 784-400-20
  recon_x, mu, logvar = model(x)               # x: (B, 784) or (B, 1, 28, 28)
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ExampleVAE(nn.Module):
    """The pytorch/examples VAE (vae/main.py): a D-400-20-400-D MLP, ReLU,
    sigmoid output, reparameterization z = mu + eps * exp(0.5 * logvar).

    `ExampleVAE()` is that model exactly (D = 784, the same layers created in
    the same order, so the same seed gives the same initial weights), and
    `model(x)` returns (recon_x, mu, logvar) with eps drawn by
    `torch.randn_like`, as there. Two additions for the callers that need them:
    `d`, `hidden` and `latent` sizes (e.g. d=64 for scikit-learn's 8x8 digits),
    and an optional `eps` argument to forward and reparameterize, so that two
    runs can share the same noise."""

    def __init__(self, d: int = 784, hidden: int = 400, latent: int = 20):
        super().__init__()
        self.d = d
        self.fc1 = nn.Linear(d, hidden)
        self.fc21 = nn.Linear(hidden, latent)
        self.fc22 = nn.Linear(hidden, latent)
        self.fc3 = nn.Linear(latent, hidden)
        self.fc4 = nn.Linear(hidden, d)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar, eps=None):
        std = torch.exp(0.5 * logvar)
        if eps is None:
            eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x, eps=None):
        mu, logvar = self.encode(x.view(-1, self.d))
        z = self.reparameterize(mu, logvar, eps)
        return self.decode(z), mu, logvar
