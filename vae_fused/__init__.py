"""vae_fused: the VAE loss (reconstruction + beta * Gaussian KL) as one fused
op, forward and backward, on CPU and CUDA. The contract is API.md; the
readable specification is vae_fused.reference."""
from . import reference
from ._ops import cpu_capability
from .api import VAELoss, VAELossTerms, vae_loss, vae_loss_terms

__all__ = ["vae_loss", "vae_loss_terms", "VAELoss", "VAELossTerms", "reference", "cpu_capability"]
__version__ = "0.1.0"
