"""A small convolutional VAE on 3-channel 32x32 images (synthetic: soft coloured
blobs on a gradient background, generated on the fly from a seed), trained with

  * recon="bce_logits": the decoder outputs logits, no sigmoid; the loss is
    stable for any logit (F.binary_cross_entropy_with_logits semantics),
  * torch.autocast(bfloat16) around forward + loss (the loss accumulates in
    float32 and returns float32, like PyTorch's autocast losses),
  * linear KL annealing: beta is a 0-d tensor filled in place every step, so a
    torch.compile'd step is compiled once, not once per beta value,
  * vae_fused.vae_loss_terms: loss, recon and kl from one op call.

  python examples/conv_vae.py                            # CPU, bf16 autocast, ~10 s
  python examples/conv_vae.py --no-autocast              # float32
  python examples/conv_vae.py --compile                  # torch.compile(model + loss, fullgraph=True)
  python examples/conv_vae.py --device cuda --compile --epochs 10 --steps-per-epoch 200
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

import vae_fused


def synthetic_batch(n, generator, device):
    """n images (n, 3, 32, 32) in [0, 1]: three soft coloured Gaussian blobs of
    random position, width and colour on a vertical colour gradient."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    images = torch.rand(n, 3, 1, 1, generator=generator) * 0.3 * (1 + yy)  # background gradient
    for _ in range(3):
        cx, cy = torch.rand(2, n, 1, 1, generator=generator) * 1.6 - 0.8
        width = torch.rand(n, 1, 1, generator=generator) * 0.3 + 0.1
        colour = torch.rand(n, 3, 1, 1, generator=generator)
        blob = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * width ** 2))
        images = images + colour * blob.unsqueeze(1)
    return images.clamp(0, 1).to(device)


class ConvVAE(nn.Module):
    def __init__(self, latent=32):
        super().__init__()
        self.latent = latent
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 32, 4, 2, 1), nn.ReLU(),     # 16x16
            nn.Conv2d(32, 64, 4, 2, 1), nn.ReLU(),    # 8x8
            nn.Conv2d(64, 128, 4, 2, 1), nn.ReLU(),   # 4x4
            nn.Flatten(), nn.Linear(128 * 16, 2 * latent))
        self.decoder = nn.Sequential(
            nn.Linear(latent, 128 * 16), nn.ReLU(), nn.Unflatten(1, (128, 4, 4)),
            nn.ConvTranspose2d(128, 64, 4, 2, 1), nn.ReLU(),   # 8x8
            nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(),    # 16x16
            nn.ConvTranspose2d(32, 3, 4, 2, 1))               # 32x32 logits: no sigmoid with bce_logits

    def encode(self, x):
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def forward(self, x):
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)  # reparameterization
        return self.decoder(z), mu, logvar


def forward_and_loss(model, x, beta, use_autocast: bool):
    """The part of the training step that --compile hands to torch.compile."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=use_autocast):
        logits, mu, logvar = model(x)
        return vae_fused.vae_loss_terms(logits, x, mu, logvar, beta=beta,
                                        recon="bce_logits", reduction="batchmean")


def save_pictures(model, x, out: Path):
    try:
        import matplotlib
    except ImportError:
        print("(matplotlib is not installed: no pictures; pip install matplotlib)")
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    with torch.no_grad():
        mu, _ = model.encode(x[:8])
        recon = torch.sigmoid(model.decoder(mu))
        z = torch.randn(16, model.latent, generator=torch.Generator().manual_seed(0)).to(x.device)
        samples = torch.sigmoid(model.decoder(z))
    model.train()

    def grid(images, cols):  # (N, 3, 32, 32) -> one (H, W, 3) image, white 2-pixel gaps
        images = images.float().cpu().clamp(0, 1)
        rows = -(-len(images) // cols)
        canvas = torch.ones(3, rows * 34 + 2, cols * 34 + 2)
        for i, img in enumerate(images):
            r, c = divmod(i, cols)
            canvas[:, 2 + r * 34: 2 + r * 34 + 32, 2 + c * 34: 2 + c * 34 + 32] = img
        return canvas.permute(1, 2, 0).numpy()

    paths = []
    for name, img, title in (
        ("conv_reconstruction.png", grid(torch.cat([x[:8], recon]), 8),
         "top: inputs, bottom: sigmoid(decoder(mu))"),
        ("conv_samples.png", grid(samples, 8), "16 samples, z ~ N(0, I)"),
    ):
        fig, ax = plt.subplots(figsize=(6, 1.9))
        ax.imshow(img, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        paths.append(str(out / name))
    return paths


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--steps-per-epoch", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate")
    p.add_argument("--beta", type=float, default=1.0, help="final KL weight")
    p.add_argument("--kl-anneal-steps", type=int, default=100,
                   help="beta goes linearly from 0 to --beta over this many steps (0: constant --beta)")
    p.add_argument("--no-autocast", action="store_true", help="train in float32")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile(fullgraph=True) the model's forward and the loss")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="examples/out", help="where the PNGs go (default: examples/out)")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.steps_per_epoch < 1 or args.batch_size < 1:
        p.error("--epochs, --steps-per-epoch and --batch-size must be >= 1")
    if args.beta < 0 or args.kl_anneal_steps < 0:
        p.error("--beta and --kl-anneal-steps must be >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("conv_vae: --device cuda, but torch.cuda.is_available() is False")
    started = time.perf_counter()

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    model = ConvVAE().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    step_fn = torch.compile(forward_and_loss, fullgraph=True) if args.compile else forward_and_loss
    beta = torch.zeros((), device=device)  # a tensor filled in place: annealing never recompiles
    data = torch.Generator().manual_seed(args.seed)
    use_autocast = not args.no_autocast
    print(f"ConvVAE on synthetic 3x32x32 images, batch {args.batch_size}; {args.device}, "
          f"{'bf16 autocast' if use_autocast else 'float32'}{', torch.compile' if args.compile else ''}; "
          + (f"KL weight 0 -> {args.beta} over {args.kl_anneal_steps} steps" if args.kl_anneal_steps
             else f"KL weight {args.beta} (no annealing)"))
    print("per image (reduction='batchmean'), averaged over the epoch's steps; beta at the epoch's end")
    print("epoch |     loss |    recon |      kl | beta | seconds")
    step, betas = 0, set()
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        sums = torch.zeros(3, device=device)
        for _ in range(args.steps_per_epoch):
            x = synthetic_batch(args.batch_size, data, device)
            ramp = min(1.0, step / args.kl_anneal_steps) if args.kl_anneal_steps else 1.0
            beta.fill_(args.beta * ramp)
            betas.add(args.beta * ramp)
            opt.zero_grad()
            terms = step_fn(model, x, beta, use_autocast)
            terms.loss.backward()
            opt.step()
            sums += torch.stack([t.detach().float() for t in terms])  # no host sync per step
            step += 1
        loss, recon, kl = (sums / args.steps_per_epoch).tolist()
        print(f"{epoch:5d} | {loss:8.2f} | {recon:8.2f} | {kl:7.2f} | {beta.item():4.2f} | "
              f"{time.perf_counter() - start:7.2f}", flush=True)

    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_autocast):
        logits_dtype = model(x)[0].dtype
    print(f"logits dtype: {logits_dtype}; loss dtype: {terms.loss.dtype} (terms: {', '.join(terms._fields)})")
    if args.compile:
        from torch._dynamo.utils import counters
        print(f"torch.compile: {counters['stats']['unique_graphs']} graph(s) compiled for {step} steps "
              f"with {len(betas)} different beta values")
    pictures = save_pictures(model, synthetic_batch(8, torch.Generator().manual_seed(12345), device), Path(args.out))
    if pictures:
        print(f"pictures: {', '.join(pictures)}")
    print(f"total {time.perf_counter() - started:.1f} s (data, training, pictures; not counting import torch)")


if __name__ == "__main__":
    main()
