"""A small convolutional VAE on 3-channel 32x32 images (synthetic smooth blobs,
generated on the fly), trained with recon="bce_logits" under bf16 autocast,
with linear KL annealing through a 0-d tensor beta (no recompiles).

  python examples/conv_vae.py                      # CPU, bf16 autocast, ~20 s
  python examples/conv_vae.py --device cuda --compile
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import vae_fused


def synthetic_batch(n, generator, device):
    """Images of 1-3 soft coloured blobs on a gradient background, in [0, 1]."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    images = torch.rand(n, 3, 1, 1, generator=generator) * 0.3 * (1 + yy)  # background
    for _ in range(3):
        cx, cy = (torch.rand(2, n, 1, 1, generator=generator) * 1.6 - 0.8)
        width = torch.rand(n, 1, 1, generator=generator) * 0.3 + 0.1
        colour = torch.rand(n, 3, 1, 1, generator=generator)
        blob = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * width ** 2))
        images = images + colour * blob.unsqueeze(1)
    return images.clamp(0, 1).to(device)


class ConvVAE(nn.Module):
    def __init__(self, latent=32):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 32, 4, 2, 1), nn.ReLU(),     # 16x16
            nn.Conv2d(32, 64, 4, 2, 1), nn.ReLU(),    # 8x8
            nn.Conv2d(64, 128, 4, 2, 1), nn.ReLU(),   # 4x4
            nn.Flatten(), nn.Linear(128 * 16, 2 * latent))
        self.decoder = nn.Sequential(
            nn.Linear(latent, 128 * 16), nn.ReLU(), nn.Unflatten(1, (128, 4, 4)),
            nn.ConvTranspose2d(128, 64, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(32, 3, 4, 2, 1))      # logits: no sigmoid with bce_logits
        self.latent = latent

    def forward(self, x):
        h = self.encoder(x)
        mu, logvar = h[:, : self.latent], h[:, self.latent:]
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decoder(z), mu, logvar


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--steps-per-epoch", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--beta", type=float, default=1.0, help="final KL weight")
    p.add_argument("--kl-anneal-steps", type=int, default=40, help="linear warm-up of beta")
    p.add_argument("--no-autocast", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    model = ConvVAE().to(device)
    forward = torch.compile(model) if args.compile else model
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    beta = torch.zeros((), device=device)  # a tensor, so annealing never recompiles
    data = torch.Generator().manual_seed(args.seed)
    use_autocast = not args.no_autocast
    print(f"ConvVAE on synthetic 3x32x32 images; {args.device}, "
          f"{'bf16 autocast' if use_autocast else 'float32'}{', compiled' if args.compile else ''}")
    print("epoch |     loss |    recon |      kl | beta | seconds")
    step = 0
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        sums = torch.zeros(3)
        for _ in range(args.steps_per_epoch):
            x = synthetic_batch(args.batch_size, data, device)
            beta.fill_(args.beta * min(1.0, step / max(1, args.kl_anneal_steps)))
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_autocast):
                logits, mu, logvar = forward(x)
                terms = vae_fused.vae_loss_terms(logits, x, mu, logvar, beta=beta,
                                                 recon="bce_logits", reduction="batchmean")
            terms.loss.backward()
            opt.step()
            sums += torch.stack([terms.loss.detach(), terms.recon.detach(), terms.kl.detach()]).float().cpu()
            step += 1
        loss, recon, kl = (sums / args.steps_per_epoch).tolist()
        print(f"{epoch:5d} | {loss:8.2f} | {recon:8.2f} | {kl:7.2f} | {beta.item():4.2f} | "
              f"{time.perf_counter() - start:7.2f}")
    print(f"logits dtype under autocast: {logits.dtype}; loss dtype: {terms.loss.dtype}")


if __name__ == "__main__":
    main()
