"""The pytorch/examples VAE (D-400-20-400-D MLP: ExampleVAE, examples/models.py),
trained with PyTorch's loss, vae_fused's, or both side by side. Runs offline:
MNIST from a local torchvision-format folder if given (--mnist PATH), otherwise
the 8x8 digits that scikit-learn ships.

  python examples/train_vae.py --demo                 # both losses, float64, ~5 s
  python examples/train_vae.py                        # fused loss, 50 epochs of the digits, ~6 s
  python examples/train_vae.py --loss both --dtype float64 --epochs 5
  python examples/train_vae.py --loss both --mnist ~/data --device cuda

With --loss both, two identical models (same seed, same initial weights) see
the same batches in the same order and the same reparameterization noise; the
only difference is the loss function, so their loss curves must agree
(float64: to ~1e-9 relative; float32: to ~1e-4).
"""
from __future__ import annotations

import argparse
import gzip
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

import vae_fused

if __package__:  # imported as examples.train_vae
    from .models import ExampleVAE
else:  # run as a file, python examples/train_vae.py: this folder is sys.path[0]
    from models import ExampleVAE

LATENT = 20  # ExampleVAE's latent size (pytorch/examples')


def torch_loss(recon_x, x, mu, logvar):
    """pytorch/examples vae/main.py loss_function, verbatim."""
    BCE = F.binary_cross_entropy(recon_x, x, reduction="sum")
    KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return BCE + KLD


def fused_loss(recon_x, x, mu, logvar):
    """The same loss, one fused op (defaults: recon="bce", reduction="sum", beta=1)."""
    return vae_fused.vae_loss(recon_x, x, mu, logvar)


LOSSES = {"torch": torch_loss, "fused": fused_loss}


# ---------------------------------------------------------------- data

def _read_idx_images(path: Path) -> np.ndarray:
    """An idx3-ubyte image file (optionally gzipped) as a (N, rows*cols) uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 16 or data[0] != 0 or data[1] != 0 or data[2] != 0x08 or data[3] != 3:
        raise SystemExit(f"train_vae: {path} is not an idx3-ubyte image file")
    n, rows, cols = (int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(3))
    pixels = np.frombuffer(data, dtype=np.uint8, offset=16)
    if pixels.size != n * rows * cols:
        raise SystemExit(f"train_vae: {path} is truncated ({pixels.size} of {n * rows * cols} pixels)")
    return pixels.reshape(n, rows * cols)


def load_data(mnist: str | None, dtype):
    """(train, test, side): images in [0, 1], one flattened row per image."""
    if mnist:
        root = Path(mnist).expanduser()
        raw = root / "MNIST" / "raw"

        def find(stem):
            for name in (stem, stem + ".gz"):
                if (raw / name).exists():
                    return raw / name
            raise SystemExit(f"train_vae: {raw / stem}[.gz] not found "
                             f"(expected torchvision's layout: PATH/MNIST/raw/{stem}[.gz])")

        train = _read_idx_images(find("train-images-idx3-ubyte"))
        test = _read_idx_images(find("t10k-images-idx3-ubyte"))
        side = int(round(train.shape[1] ** 0.5))
        to = lambda a: torch.from_numpy(a.copy()).to(dtype) / 255  # noqa: E731
        return to(train), to(test), side
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("train_vae: the default data set is scikit-learn's digits: "
                         "pip install scikit-learn (or pass --mnist PATH)") from None

    digits = torch.from_numpy(load_digits().data).to(dtype) / 16  # 1797 images of 8x8, values 0..16
    return digits[:1500], digits[1500:], 8


# ---------------------------------------------------------------- training

class Run:
    """One model, its optimizer and its own random streams, trained with one loss."""

    def __init__(self, loss_name, d, args, dtype, device):
        self.name = loss_name
        self.loss_fn = LOSSES[loss_name]
        torch.manual_seed(args.seed)  # same initial weights for every run
        self.model = ExampleVAE(d).to(device=device, dtype=dtype)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=args.lr)
        self.shuffle = torch.Generator().manual_seed(args.seed)      # batch order
        self.noise = torch.Generator().manual_seed(args.seed + 1)    # reparameterization eps
        self.dtype, self.device = dtype, device
        self.steps = 0

    def train_epoch(self, train_x, batch_size, max_steps):
        """One pass over train_x (or until max_steps); returns (loss per sample, seconds)."""
        self.model.train()
        total, seen = 0.0, 0
        _sync(self.device)
        start = time.perf_counter()
        for idx in torch.randperm(len(train_x), generator=self.shuffle).split(batch_size):
            if max_steps and self.steps >= max_steps:
                break
            x = train_x[idx.to(train_x.device)]
            eps = torch.randn(len(idx), LATENT, generator=self.noise, dtype=self.dtype).to(self.device)
            self.opt.zero_grad()
            recon_x, mu, logvar = self.model(x, eps)
            loss = self.loss_fn(recon_x, x, mu, logvar)
            loss.backward()
            self.opt.step()
            total += loss.item()
            seen += len(idx)
            self.steps += 1
        _sync(self.device)
        return total / max(seen, 1), time.perf_counter() - start

    @torch.no_grad()
    def test_loss(self, test_x):
        """Loss per sample on the test set, decoding z = mu (no sampling noise)."""
        self.model.eval()
        mu, logvar = self.model.encode(test_x)
        return self.loss_fn(self.model.decode(mu), test_x, mu, logvar).item() / len(test_x)


def warm_up(d, dtype, device):
    """One throwaway step per loss on a scratch model, so that the first timed
    epoch doesn't pay for the process's one-time setup (kernel selection,
    allocator, lazy imports). Uses the global RNG only, which the runs don't."""
    model = ExampleVAE(d).to(device=device, dtype=dtype)
    opt = torch.optim.Adam(model.parameters())
    x = torch.rand(8, d, dtype=dtype, device=device)
    for loss_fn in LOSSES.values():
        opt.zero_grad()
        recon_x, mu, logvar = model(x, torch.randn(8, LATENT, dtype=dtype, device=device))
        loss_fn(recon_x, x, mu, logvar).backward()
        opt.step()
    _sync(device)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- pictures

def _grid(images, side, cols):
    """(N, side*side) grey images in [0, 1] -> one RGB array, `cols` per row,
    separated by 1-pixel blue lines (so they can't be mistaken for pixels)."""
    images = images.reshape(-1, side, side).cpu().float().clamp(0, 1).numpy()
    rows = -(-len(images) // cols)
    out = np.empty((rows * (side + 1) + 1, cols * (side + 1) + 1, 3), dtype=np.float32)
    out[:] = (0.25, 0.45, 0.8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        y, x = 1 + r * (side + 1), 1 + c * (side + 1)
        out[y: y + side, x: x + side] = img[..., None]
    return out


def save_pictures(run: Run, test_x, side, out: Path, seed):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    model = run.model.eval()
    with torch.no_grad():
        x = test_x[:8]
        mu, _ = model.encode(x)
        recon = model.decode(mu)
        z = torch.randn(64, LATENT, generator=torch.Generator().manual_seed(seed), dtype=run.dtype)
        samples = model.decode(z.to(run.device))
    paths = []
    for fname, img, title, size in (
        (f"reconstruction_{run.name}.png", _grid(torch.cat([x, recon]), side, 8),
         f"{run.name} loss - top: test images, bottom: reconstructions", (8, 2.6)),
        (f"samples_{run.name}.png", _grid(samples, side, 8),
         f"{run.name} loss - 64 samples decoded from z ~ N(0, I)", (6, 6.4)),
    ):
        fig, ax = plt.subplots(figsize=size)
        ax.imshow(img, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
        fig.tight_layout()
        fig.savefig(out / fname, dpi=100)
        plt.close(fig)
        paths.append(out / fname)
    return paths


# ---------------------------------------------------------------- main

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--loss", choices=["fused", "torch", "both"], default="fused")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--epochs", type=int, default=None,
                   help="default: 10 with --mnist (as pytorch/examples), 50 on the digits (12 steps an epoch)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--mnist", default=None, metavar="PATH",
                   help="folder holding MNIST/raw/{train,t10k}-images-idx3-ubyte[.gz] (torchvision's layout); "
                        "default: scikit-learn's 8x8 digits")
    p.add_argument("--out", default="examples/out", help="where the PNGs go (default: examples/out)")
    p.add_argument("--max-steps", type=int, default=0, help="stop each run after this many steps (smoke runs)")
    p.add_argument("--demo", action="store_true",
                   help="3 epochs with both losses in float64 on the bundled digits; prints the comparison")
    args = p.parse_args(argv)
    started = time.perf_counter()
    if args.demo:
        args.loss, args.dtype, args.epochs, args.mnist = "both", "float64", 3, None
    if args.epochs is None:
        args.epochs = 10 if args.mnist else 50
    if args.epochs < 1 or args.batch_size < 1 or args.max_steps < 0:
        p.error("--epochs and --batch-size must be >= 1, --max-steps >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("train_vae: --device cuda, but torch.cuda.is_available() is False")

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    train_x, test_x, side = load_data(args.mnist, dtype)
    train_x, test_x = train_x.to(device), test_x.to(device)
    print(f"data: {len(train_x)} train / {len(test_x)} test images of {side}x{side} "
          f"({'MNIST' if args.mnist else 'sklearn digits'}); {args.dtype} on {args.device}; "
          f"batch {args.batch_size}, Adam lr {args.lr}, seed {args.seed}; "
          f"torch {torch.__version__}, vae_fused {vae_fused.__version__} ({vae_fused.cpu_capability()})")

    names = ["torch", "fused"] if args.loss == "both" else [args.loss]
    runs = [Run(name, train_x.shape[1], args, dtype, device) for name in names]
    warm_up(train_x.shape[1], dtype, device)
    worst = 0.0
    bound = 1e-9 if dtype == torch.float64 else 1e-4
    if len(runs) == 1:
        print("epoch | train loss/sample | test loss/sample | epoch s")
    else:
        print("epoch |    torch loss |    fused loss | rel. diff | torch s | fused s")
    for epoch in range(1, args.epochs + 1):
        # Side by side: each epoch of each run, then one line comparing them.
        results = [run.train_epoch(train_x, args.batch_size, args.max_steps) for run in runs]
        if len(runs) == 1:
            (loss, secs), = results
            print(f"{epoch:5d} | {loss:17.6f} | {runs[0].test_loss(test_x):16.6f} | {secs:7.2f}", flush=True)
        else:
            (a, ta), (b, tb) = results
            rel = abs(a - b) / abs(a)
            worst = max(worst, rel)
            print(f"{epoch:5d} | {a:13.9f} | {b:13.9f} | {rel:9.1e} | {ta:7.2f} | {tb:7.2f}", flush=True)
        if args.max_steps and all(run.steps >= args.max_steps for run in runs):
            break

    try:
        pictures = [path for run in runs for path in save_pictures(run, test_x, side, Path(args.out), args.seed)]
        print(f"pictures: {', '.join(map(str, pictures))}")
    except ImportError:
        print("(matplotlib is not installed: no pictures; pip install matplotlib)")
    if len(runs) == 2:
        test_a, test_b = (run.test_loss(test_x) for run in runs)
        print(f"test loss/sample: torch {test_a:.9f}, fused {test_b:.9f}")
        agree = worst <= bound
        print(f"fused and torch losses {'agree' if agree else 'DIFFER'} to {bound:.0e} ({args.dtype}): "
              f"largest relative difference over {epoch} epoch(s) {worst:.1e}")
    print(f"total {time.perf_counter() - started:.1f} s (data, training, pictures; not counting import torch)")
    return 0 if len(runs) == 1 or agree else 1


if __name__ == "__main__":
    sys.exit(main())
