"""The loss family beyond the standard-normal VAE (API.md, "Beyond the
standard-normal VAE"): two rows, each a loss as a real code base writes it in
plain PyTorch (eager; the same under torch.compile) against the one fused call.

  ldm    latent diffusion's autoencoder generator loss without its
         discriminator part, as CompVis `LPIPSWithDiscriminator` computes it:
         an L1 pixel loss plus a given perceptual loss, a learned scalar
         log-scale s, posterior KL weighted 1e-6, both terms per sample.
  vdvae  a VDVAE/NVAE-style KL between two diagonal Gaussians with a learned
         prior (both prior tensors (B, L) and needing a gradient), plus a small
         MSE reconstruction term.

Inputs are listed in the order the eager function takes them; NEEDS_GRAD says
which are leaves that receive a gradient in a training step.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import vae_fused

LDM_KL_WEIGHT = 1e-6  # latent diffusion's kl_weight (its autoencoder configs)


# ---------------------------------------------------------------------------
# Latent diffusion (CompVis latent-diffusion, ldm/modules/losses/contperceptual.py)

def eager_ldm(rec, x, mu, logvar, s, p_loss):
    """LPIPSWithDiscriminator's generator loss (optimizer_idx 0) without the
    discriminator: weights=None, p_loss given (perceptual_weight * LPIPS,
    shape (B, 1, 1, 1)), s = its `self.logvar`, kl_weight 1e-6."""
    rec_loss = torch.abs(x.contiguous() - rec.contiguous()) + p_loss
    nll_loss = rec_loss / torch.exp(s) + s
    weights = None
    weighted_nll_loss = nll_loss if weights is None else weights * nll_loss
    weighted_nll_loss = torch.sum(weighted_nll_loss) / weighted_nll_loss.shape[0]
    # DiagonalGaussianDistribution.kl(): 0.5 * sum(mean^2 + var - 1 - logvar) over C, H, W
    kl = 0.5 * torch.sum(torch.pow(mu, 2) + torch.exp(logvar) - 1.0 - logvar, dim=[1, 2, 3])
    kl_loss = torch.sum(kl) / kl.shape[0]
    return weighted_nll_loss + LDM_KL_WEIGHT * kl_loss


def fused_ldm(rec, x, mu, logvar, s, p_loss):
    return vae_fused.vae_loss(rec, x, mu, logvar, recon="l1", recon_logvar=s, recon_offset=p_loss,
                              weight=None, reduction="batchmean", beta=LDM_KL_WEIGHT)


def ldm_inputs(shape, dtype, device):
    """rec, x in [-1, 1] (images), mu, logvar (latents), s (0-d, latent
    diffusion's logvar_init 0.0), p_loss >= 0 of shape (B, 1, 1, 1)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.rand(shape.data, generator=g) * 2 - 1
    rec = (x + 0.1 * torch.randn(shape.data, generator=g)).clamp(-1, 1)
    mu = torch.randn(shape.latent, generator=g)
    logvar = torch.randn(shape.latent, generator=g) * 0.5 - 1
    s = torch.zeros(())
    p_loss = torch.rand(shape.data[0], 1, 1, 1, generator=g) * 0.3
    return [t.to(device=device, dtype=dtype) for t in (rec, x, mu, logvar, s, p_loss)]


# rec, x, mu, logvar, s, p_loss: all but the data need a gradient (p_loss comes from LPIPS)
LDM_NEEDS_GRAD = (True, False, True, True, True, True)


# ---------------------------------------------------------------------------
# VDVAE-style prior KL (openai/vdvae vae_helpers.gaussian_analytical_kl, in logvar form)

def eager_vdvae(recon_x, x, mu, logvar, prior_mu, prior_logvar):
    """MSE reconstruction summed + KL(N(mu, e^logvar) || N(prior_mu, e^prior_logvar))
    summed over every latent unit (reduction "sum", beta 1)."""
    recon = F.mse_loss(recon_x, x, reduction="sum")
    kl = 0.5 * (prior_logvar - logvar + (torch.exp(logvar) + (mu - prior_mu) ** 2)
                * torch.exp(-prior_logvar) - 1)
    return recon + kl.sum()


def fused_vdvae(recon_x, x, mu, logvar, prior_mu, prior_logvar):
    return vae_fused.vae_loss(recon_x, x, mu, logvar, recon="mse",
                              prior_mu=prior_mu, prior_logvar=prior_logvar)


def vdvae_inputs(shape, dtype, device):
    """recon_x, x in [-1, 1] (a small image), and four (B, L) latent tensors:
    the posterior's and the learned prior's mean and log-variance."""
    g = torch.Generator(device="cpu").manual_seed(0)
    recon_x = torch.rand(shape.data, generator=g) * 2 - 1
    x = torch.rand(shape.data, generator=g) * 2 - 1
    flat = (shape.latent[0], math.prod(shape.latent[1:]))
    mu = torch.randn(flat, generator=g)
    logvar = torch.randn(flat, generator=g) * 0.5
    prior_mu = torch.randn(flat, generator=g) * 0.5
    prior_logvar = torch.randn(flat, generator=g) * 0.5
    return [t.to(device=device, dtype=dtype) for t in (recon_x, x, mu, logvar, prior_mu, prior_logvar)]


VDVAE_NEEDS_GRAD = (True, False, True, True, True, True)


# ---------------------------------------------------------------------------
# Bytes each pass must move at least: (passes over the data, passes over the latents)

LDM_PASSES = {"fwd": (2, 2), "fwdbwd": (3, 4)}    # rec, x (+ rec's grad); mu, logvar (+ grads)
VDVAE_PASSES = {"fwd": (2, 4), "fwdbwd": (3, 8)}  # 4 latent tensors in, 4 gradients out
