"""A small latent-diffusion-style KL autoencoder (image -> 4-channel latent grid,
diagonal Gaussian posterior), trained with the generator loss of latent
diffusion's LPIPSWithDiscriminator (ldm/modules/losses/contperceptual.py, without
the discriminator), written out in PyTorch, with vae_fused, or both side by side.
Runs offline: scikit-learn's 8x8 digits, upsampled to 32x32, values in [-1, 1].

  python examples/train_autoencoder_kl.py                    # both losses, float64, 30 steps, a few s
  python examples/train_autoencoder_kl.py --dtype float32    # both, float32, with ms per step
  python examples/train_autoencoder_kl.py --loss fused --steps 300
  python examples/train_autoencoder_kl.py --device cuda --dtype float32

The loss, per batch: an L1 pixel loss plus a per-sample "perceptual" offset
(shape (B, 1, 1, 1); LPIPS needs downloaded weights, so a cheap differentiable
stand-in: the mean squared difference of the 2x2-average-pooled images) times
perceptual_weight 1.0, under a learned 0-d log-scale s (an nn.Parameter, init
0, latent diffusion's `self.logvar`), plus kl_weight 1e-6 times the posterior's
KL. With --loss both, two identical models (same seed, same initial weights)
see the same batches in the same order and the same posterior noise; the only
difference is the loss function, so the loss curves (and s) must agree
(float64: to 1e-9 relative; float32: to 1e-4, which holds for short runs only:
float32 rounding differences compound and the curves drift apart after ~100
steps). Exit status 1 if they don't.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import vae_fused

EMBED_DIM = 4          # latent channels (ldm's kl-f8: embed_dim 4, z_channels 4)
KL_WEIGHT = 1e-6       # ldm's kl_weight
PERCEPTUAL_WEIGHT = 1.0
LOGVAR_INIT = 0.0      # ldm's logvar_init


# ---------------------------------------------------------------- model

class DiagonalGaussianDistribution:
    """ldm.modules.distributions.distributions.DiagonalGaussianDistribution
    (the same in diffusers' AutoencoderKL), with `sample` taking its noise as an
    argument so that two runs can share it."""

    def __init__(self, parameters):
        self.parameters = parameters
        self.mean, self.logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(self.logvar, -30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, eps):
        return self.mean + self.std * eps

    def kl(self):
        return 0.5 * torch.sum(torch.pow(self.mean, 2) + self.var - 1.0 - self.logvar, dim=[1, 2, 3])

    def mode(self):
        return self.mean


def _block(cin, cout, *, down=False, up=False):
    """GroupNorm, SiLU, then a stride-2 conv (down), or nearest x2 + conv (up), or a conv."""
    layers = [nn.GroupNorm(8, cin, eps=1e-6), nn.SiLU()]
    if up:
        layers.append(nn.Upsample(scale_factor=2.0, mode="nearest"))
    layers.append(nn.Conv2d(cin, cout, 3, stride=2 if down else 1, padding=1))
    return nn.Sequential(*layers)


class TinyAutoencoderKL(nn.Module):
    """ldm's AutoencoderKL in miniature: encoder -> 2*embed_dim channels (mean and
    logvar) -> quant_conv (1x1) -> posterior; z -> post_quant_conv (1x1) -> decoder.
    1x32x32 images -> a 4x8x8 latent grid (f = 4). No output activation (as ldm)."""

    def __init__(self, in_ch=1, ch=8, embed_dim=EMBED_DIM):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(in_ch, ch, 3, padding=1),
            _block(ch, 2 * ch, down=True),                  # 16x16
            _block(2 * ch, 2 * ch, down=True),              # 8x8
            _block(2 * ch, 2 * embed_dim),                  # conv_out: mean and logvar ("double_z")
        )
        self.quant_conv = nn.Conv2d(2 * embed_dim, 2 * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, embed_dim, 1)
        self.decoder = nn.Sequential(
            nn.Conv2d(embed_dim, 2 * ch, 3, padding=1),
            _block(2 * ch, 2 * ch, up=True),                # 16x16
            _block(2 * ch, ch, up=True),                    # 32x32
            _block(ch, in_ch),                              # conv_out
        )

    def encode(self, x):
        return DiagonalGaussianDistribution(self.quant_conv(self.encoder(x)))

    def decode(self, z):
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x, eps=None):
        posterior = self.encode(x)
        z = posterior.mode() if eps is None else posterior.sample(eps)
        return self.decode(z), posterior


# ---------------------------------------------------------------- losses

def perceptual_proxy(inputs, reconstructions):
    """Stands in for LPIPS (whose weights would have to be downloaded): per sample,
    the mean squared difference of the 2x2-average-pooled images, shape (B, 1, 1, 1)
    like lpips.LPIPS's output. Differentiable; computed the same way for both losses."""
    d = F.avg_pool2d(inputs, 2) - F.avg_pool2d(reconstructions, 2)
    return d.pow(2).mean(dim=(1, 2, 3), keepdim=True)


class TorchLoss(nn.Module):
    """LPIPSWithDiscriminator's generator part (optimizer_idx 0), as written there,
    without the discriminator term (disc_factor 0, as before disc_start)."""

    def __init__(self, logvar_init=LOGVAR_INIT, kl_weight=KL_WEIGHT, perceptual_weight=PERCEPTUAL_WEIGHT):
        super().__init__()
        self.kl_weight = kl_weight
        self.perceptual_weight = perceptual_weight
        self.perceptual_loss = perceptual_proxy
        self.logvar = nn.Parameter(torch.ones(size=()) * logvar_init)

    def forward(self, inputs, reconstructions, posteriors, weights=None):
        rec_loss = torch.abs(inputs.contiguous() - reconstructions.contiguous())
        if self.perceptual_weight > 0:
            p_loss = self.perceptual_loss(inputs.contiguous(), reconstructions.contiguous())
            rec_loss = rec_loss + self.perceptual_weight * p_loss
        nll_loss = rec_loss / torch.exp(self.logvar) + self.logvar
        weighted_nll_loss = nll_loss
        if weights is not None:
            weighted_nll_loss = weights * nll_loss
        weighted_nll_loss = torch.sum(weighted_nll_loss) / weighted_nll_loss.shape[0]
        kl_loss = posteriors.kl()
        kl_loss = torch.sum(kl_loss) / kl_loss.shape[0]
        return weighted_nll_loss + self.kl_weight * kl_loss


class FusedLoss(nn.Module):
    """The same loss: the perceptual stand-in runs on its own, everything else is one
    vae_fused call. vae_fused.VAELoss owns s as an nn.Parameter (recon_logvar=0.0)."""

    def __init__(self, logvar_init=LOGVAR_INIT, kl_weight=KL_WEIGHT, perceptual_weight=PERCEPTUAL_WEIGHT):
        super().__init__()
        self.perceptual_weight = perceptual_weight
        self.perceptual_loss = perceptual_proxy
        self.vae_loss = vae_fused.VAELoss(recon="l1", reduction="batchmean", beta=kl_weight,
                                          recon_logvar=logvar_init)

    @property
    def logvar(self):
        return self.vae_loss.recon_logvar

    def forward(self, inputs, reconstructions, posteriors, weights=None):
        p_loss = self.perceptual_loss(inputs.contiguous(), reconstructions.contiguous())
        return self.vae_loss(reconstructions, inputs, posteriors.mean, posteriors.logvar,
                             recon_offset=self.perceptual_weight * p_loss, weight=weights)
        # functional form: vae_fused.vae_loss(reconstructions, inputs, posteriors.mean,
        #     posteriors.logvar, recon="l1", recon_logvar=s, recon_offset=pw * p_loss,
        #     weight=weights, reduction="batchmean", beta=kl_weight)


LOSSES = {"torch": TorchLoss, "fused": FusedLoss}


# ---------------------------------------------------------------- data

def load_data(dtype):
    """(train, test): scikit-learn's 8x8 digits upsampled (bilinear) to 1x32x32, in [-1, 1]."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("train_autoencoder_kl: the data set is scikit-learn's digits: "
                         "pip install scikit-learn") from None
    digits = torch.from_numpy(load_digits().data).to(dtype).reshape(-1, 1, 8, 8) / 16  # values 0..16
    images = F.interpolate(digits * 2 - 1, size=(32, 32), mode="bilinear", align_corners=False)
    return images[:1500], images[1500:]


# ---------------------------------------------------------------- training

class Run:
    """One model, its loss module (which owns s), its optimizer and its own random streams."""

    def __init__(self, loss_name, args, dtype, device):
        self.name = loss_name
        torch.manual_seed(args.seed)  # same initial weights for every run
        self.model = TinyAutoencoderKL(ch=args.channels).to(device=device, dtype=dtype)
        self.loss = LOSSES[loss_name]().to(device=device, dtype=dtype)
        # ldm's Adam betas (0.5, 0.9); s is trained with the model's parameters
        self.opt = torch.optim.Adam([*self.model.parameters(), *self.loss.parameters()],
                                    lr=args.lr, betas=(0.5, 0.9))
        self.shuffle = torch.Generator().manual_seed(args.seed)      # batch order
        self.noise = torch.Generator().manual_seed(args.seed + 1)    # posterior samples
        self.order = iter(())
        self.dtype, self.device = dtype, device
        self.batch_size = args.batch_size

    def next_batch(self, train_x):
        idx = next(self.order, None)
        if idx is None or len(idx) < self.batch_size:  # a new epoch; drop the short last batch
            self.order = iter(torch.randperm(len(train_x), generator=self.shuffle).split(self.batch_size))
            idx = next(self.order)
        return train_x[idx.to(train_x.device)]

    def step(self, train_x):
        """One training step; returns (loss, seconds)."""
        x = self.next_batch(train_x)
        eps = torch.randn(len(x), EMBED_DIM, 8, 8, generator=self.noise, dtype=self.dtype).to(self.device)
        _sync(self.device)
        start = time.perf_counter()
        self.opt.zero_grad()
        reconstructions, posterior = self.model(x, eps)
        loss = self.loss(x, reconstructions, posterior)
        loss.backward()
        self.opt.step()
        _sync(self.device)
        return loss.item(), time.perf_counter() - start

    @torch.no_grad()
    def test_loss(self, test_x):
        """The loss on the whole test set as one batch ('batchmean'), decoding z = posterior mean."""
        self.model.eval()
        reconstructions, posterior = self.model(test_x)
        loss = self.loss(test_x, reconstructions, posterior).item()
        self.model.train()
        return loss


def warm_up(args, dtype, device):
    """One throwaway step per loss on a scratch model (one-time setup costs out of
    the timed steps). Uses the global RNG only, which the runs don't."""
    model = TinyAutoencoderKL(ch=args.channels).to(device=device, dtype=dtype)
    x = torch.rand(4, 1, 32, 32, dtype=dtype, device=device) * 2 - 1
    for cls in LOSSES.values():
        loss_fn = cls().to(device=device, dtype=dtype)
        reconstructions, posterior = model(x, torch.randn(4, EMBED_DIM, 8, 8, dtype=dtype, device=device))
        loss_fn(x, reconstructions, posterior).backward()
    _sync(device)


def time_loss_alone(args, dtype, device, reps=50):
    """Median microseconds of forward + backward of each loss alone, on random
    tensors of this run's shapes (batch, 1x32x32 images, 4x8x8 latents)."""
    g = torch.Generator().manual_seed(0)
    b = args.batch_size
    make = lambda *shape: (torch.rand(*shape, generator=g, dtype=dtype) * 2 - 1).to(device)  # noqa: E731
    x = make(b, 1, 32, 32)
    rec = make(b, 1, 32, 32).requires_grad_()
    params = make(b, 2 * EMBED_DIM, 8, 8).requires_grad_()
    out = {}
    for name, cls in LOSSES.items():
        loss_fn = cls().to(device=device, dtype=dtype)
        times = []
        for _ in range(reps + 5):
            _sync(device)
            start = time.perf_counter()
            loss_fn(x, rec, DiagonalGaussianDistribution(params)).backward()
            _sync(device)
            times.append(time.perf_counter() - start)
        out[name] = statistics.median(times[5:]) * 1e6
    return out


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- pictures

def save_picture(runs, test_x, out: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    x = test_x[:8]
    rows = [x]
    with torch.no_grad():
        for run in runs:
            run.model.eval()
            rows.append(run.model(x)[0])
            run.model.train()
    side = 32
    grid = np.full((len(rows) * (side + 1) + 1, 8 * (side + 1) + 1, 3), (0.25, 0.45, 0.8), dtype=np.float32)
    for r, row in enumerate(rows):
        for c, img in enumerate(((row.cpu().float() + 1) / 2).clamp(0, 1).numpy()):
            y0, x0 = 1 + r * (side + 1), 1 + c * (side + 1)
            grid[y0: y0 + side, x0: x0 + side] = img[0][..., None]
    fig, ax = plt.subplots(figsize=(8, 1.3 * len(rows)))
    ax.imshow(grid, interpolation="nearest")
    ax.set_title("top: test images; below: reconstructions (z = posterior mean), "
                 + ", ".join(run.name for run in runs), fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    path = out / "autoencoder_kl_reconstruction.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- main

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--loss", choices=["fused", "torch", "both"], default="both")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--log-every", type=int, default=5, help="print the mean loss of every N steps")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--channels", type=int, default=8, help="the model's base width (a multiple of 8)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (betas 0.5, 0.9, as ldm)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="examples/out", help="where the PNG goes (default: examples/out)")
    p.add_argument("--demo", action="store_true",
                   help="the default check, spelled out: both losses, float64, 30 steps")
    args = p.parse_args(argv)
    started = time.perf_counter()
    if args.demo:
        args.loss, args.dtype, args.steps = "both", "float64", 30
    if args.steps < 1 or args.batch_size < 1 or args.log_every < 1 or args.channels < 8 or args.channels % 8:
        p.error("--steps, --batch-size and --log-every must be >= 1, --channels a multiple of 8")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("train_autoencoder_kl: --device cuda, but torch.cuda.is_available() is False")

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    train_x, test_x = load_data(dtype)
    train_x, test_x = train_x.to(device), test_x.to(device)
    names = ["torch", "fused"] if args.loss == "both" else [args.loss]
    runs = [Run(name, args, dtype, device) for name in names]
    n_params = sum(p.numel() for p in runs[0].model.parameters())
    print(f"data: {len(train_x)} train / {len(test_x)} test images, sklearn digits upsampled to 1x32x32 in "
          f"[-1, 1]; latent {EMBED_DIM}x8x8; {n_params} parameters; {args.dtype} on {args.device}; batch "
          f"{args.batch_size}, Adam lr {args.lr}, seed {args.seed}; torch {torch.__version__}, "
          f"vae_fused {vae_fused.__version__} ({vae_fused.cpu_capability()})")
    print(f"loss: L1 + {PERCEPTUAL_WEIGHT} * perceptual stand-in, under a learned logvar s (init "
          f"{LOGVAR_INIT}), + {KL_WEIGHT:g} * KL; 'batchmean'")
    warm_up(args, dtype, device)
    worst = 0.0
    bound = 1e-9 if dtype == torch.float64 else 1e-4
    if len(runs) == 1:
        print(f" step | {runs[0].name + ' loss':>15} |      logvar s | ms/step")
    else:
        print(" step |      torch loss |      fused loss | rel. diff |  torch logvar s |  fused logvar s "
              "| torch ms | fused ms")
    sums = [[0.0, 0.0] for _ in runs]
    count = 0
    for step in range(1, args.steps + 1):
        for run, acc in zip(runs, sums):  # side by side: one step of each run, alternating
            loss, secs = run.step(train_x)
            acc[0] += loss
            acc[1] += secs
        count += 1
        if step % args.log_every and step != args.steps:
            continue
        means = [(acc[0] / count, acc[1] / count * 1e3, run.loss.logvar.item()) for run, acc in zip(runs, sums)]
        if len(runs) == 1:
            (a, ta, sa), = means
            print(f"{step:5d} | {a:15.9f} | {sa:13.9f} | {ta:7.2f}", flush=True)
        else:
            (a, ta, sa), (b, tb, sb) = means
            rel = abs(a - b) / max(abs(a), 1e-12)
            rel_s = abs(sa - sb) / max(abs(sa), 1e-12)
            worst = max(worst, rel, rel_s)
            print(f"{step:5d} | {a:15.9f} | {b:15.9f} | {rel:9.1e} | {sa:15.12f} | {sb:15.12f} "
                  f"| {ta:8.2f} | {tb:8.2f}", flush=True)
        sums = [[0.0, 0.0] for _ in runs]
        count = 0

    try:
        print(f"picture: {save_picture(runs, test_x, Path(args.out))}")
    except ImportError:
        print("(matplotlib is not installed: no picture; pip install matplotlib)")
    tests = [run.test_loss(test_x) for run in runs]
    print("test loss (batchmean, z = posterior mean): "
          + ", ".join(f"{run.name} {t:.9f}" for run, t in zip(runs, tests)))
    alone = time_loss_alone(args, dtype, device)
    print(f"loss alone, forward + backward, batch {args.batch_size}: torch {alone['torch']:.0f} us, "
          f"fused {alone['fused']:.0f} us (median of 50)")
    agree = True
    if len(runs) == 2:
        worst = max(worst, abs(tests[0] - tests[1]) / max(abs(tests[0]), 1e-12))
        agree = worst <= bound
        print(f"fused and torch losses {'agree' if agree else 'DIFFER'} to {bound:.0e} ({args.dtype}): "
              f"largest relative difference over {args.steps} step(s) (loss, logvar s, test loss) {worst:.1e}")
    print(f"total {time.perf_counter() - started:.1f} s (data, training, timing, picture; not counting import torch)")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
