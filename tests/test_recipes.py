"""docs/recipes.md: each recipe equals its hand-written PyTorch form."""
import torch
import torch.nn.functional as F

import vae_fused
from conftest import grads, make_inputs


def _hand_terms(recon_x, x, mu, logvar):
    """Per-sample BCE and per-unit KL, written out."""
    bce = F.binary_cross_entropy(recon_x, x, reduction="none").flatten(1)
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).flatten(1)
    return bce, kl


def test_beta_vae():
    inputs = [t.requires_grad_() for t in make_inputs((6, 30), (6, 5))]
    bce, kl = _hand_terms(*inputs)
    expected = bce.sum() + 4.0 * kl.sum()
    got = vae_fused.vae_loss(*inputs, beta=4.0)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    for g, e in zip(grads(got, inputs), grads(expected, inputs)):
        torch.testing.assert_close(g, e)


def test_kl_annealing_with_a_tensor_beta():
    inputs = make_inputs((6, 30), (6, 5))
    bce, kl = _hand_terms(*inputs)
    beta = torch.tensor(0.0, dtype=torch.float64)
    for step in range(5):
        beta.fill_(min(1.0, step / 3))
        got = vae_fused.vae_loss(*inputs, beta=beta)
        torch.testing.assert_close(got, bce.sum() + min(1.0, step / 3) * kl.sum(), rtol=1e-12, atol=0)


def test_free_bits():
    recon_x, x, mu, logvar = make_inputs((8, 30), (8, 6))
    mu = mu * torch.tensor([0.1, 0.2, 1.5, 2.0, 0.05, 3.0], dtype=torch.float64)  # some units collapsed
    logvar = logvar * 0.1
    inputs = [t.requires_grad_() for t in (recon_x, x, mu, logvar)]
    lam = 0.5
    per_unit = _hand_terms(*inputs)[1].mean(dim=0).detach()
    assert (per_unit < lam).any() and (per_unit > lam).any()
    for reduction in ("batchmean", "sum", "mean"):
        bce, kl = _hand_terms(*inputs)
        floored = kl.mean(dim=0).clamp_min(lam).sum()
        expected = {"batchmean": bce.sum() / 8 + floored, "sum": bce.sum() + 8 * floored,
                    "mean": bce.mean() + floored / 6}[reduction]
        got = vae_fused.vae_loss(*inputs, reduction=reduction, free_bits=lam)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
        for g, e in zip(grads(got, inputs), grads(expected, inputs)):
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-14)
    # units under the floor get no KL gradient
    (g_mu,) = torch.autograd.grad(vae_fused.vae_loss(*inputs, reduction="batchmean", free_bits=lam), [inputs[2]])
    assert torch.all(g_mu[:, per_unit < lam] == 0)
    assert torch.all(g_mu[:, per_unit > lam] != 0)


def test_capacity_objective():
    inputs = [t.requires_grad_() for t in make_inputs((6, 30), (6, 5))]
    bce, kl = _hand_terms(*inputs)
    gamma, capacity = 100.0, 2.5
    expected = bce.sum() / 6 + gamma * (kl.sum() / 6 - capacity).abs()
    terms = vae_fused.vae_loss_terms(*inputs, reduction="batchmean")
    got = terms.recon + gamma * (terms.kl - capacity).abs()
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    for g, e in zip(grads(got, inputs), grads(expected, inputs)):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


def test_pythae_keras_batchmean():
    inputs = make_inputs((6, 30), (6, 5))
    bce, kl = _hand_terms(*inputs)
    expected = (bce.sum(dim=1) + kl.sum(dim=1)).mean()
    torch.testing.assert_close(vae_fused.vae_loss(*inputs, reduction="batchmean"), expected,
                               rtol=1e-12, atol=0)
