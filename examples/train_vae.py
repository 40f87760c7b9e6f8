"""The pytorch/examples VAE (784-400-20 MLP), trained with PyTorch's loss or
vae_fused's. Runs offline: MNIST from a local torchvision-format folder if
given (--mnist PATH), otherwise the 8x8 digits that scikit-learn ships.

  python examples/train_vae.py --demo                 # both losses, float64, side by side
  python examples/train_vae.py --loss fused --epochs 5
  python examples/train_vae.py --loss both --mnist ~/data --device cuda
"""
from __future__ import annotations

import argparse
import gzip
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import vae_fused


class VAE(nn.Module):
    def __init__(self, d: int, hidden: int = 400, latent: int = 20):
        super().__init__()
        self.fc1 = nn.Linear(d, hidden)
        self.fc21 = nn.Linear(hidden, latent)
        self.fc22 = nn.Linear(hidden, latent)
        self.fc3 = nn.Linear(latent, hidden)
        self.fc4 = nn.Linear(hidden, d)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def decode(self, z):
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z))))

    def forward(self, x, eps):
        mu, logvar = self.encode(x)
        z = mu + eps * torch.exp(0.5 * logvar)
        return self.decode(z), mu, logvar


def torch_loss(recon_x, x, mu, logvar):
    """pytorch/examples vae/main.py, verbatim."""
    BCE = F.binary_cross_entropy(recon_x, x, reduction="sum")
    KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return BCE + KLD


LOSSES = {"torch": torch_loss, "fused": vae_fused.vae_loss}


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_data(mnist: str | None):
    """(train, test) float tensors in [0, 1], one row per image, and the side length."""
    if mnist:
        raw = Path(mnist).expanduser() / "MNIST" / "raw"
        def find(stem):
            for name in (stem, stem + ".gz"):
                if (raw / name).exists():
                    return raw / name
            raise SystemExit(f"train_vae: {raw / stem}[.gz] not found (torchvision's MNIST layout)")
        train = _read_idx(find("train-images-idx3-ubyte")).reshape(-1, 784) / 255.0
        test = _read_idx(find("t10k-images-idx3-ubyte")).reshape(-1, 784) / 255.0
        return torch.tensor(train), torch.tensor(test), 28
    from sklearn.datasets import load_digits

    digits = load_digits().data / 16.0  # 1797 images of 8x8, in [0, 1]
    data = torch.tensor(digits)
    return data[:1500], data[1500:], 8


def train(loss_name, train_x, test_x, args, dtype, device):
    """Trains one model; returns the per-epoch (train loss, test loss, seconds)."""
    torch.manual_seed(args.seed)
    model = VAE(train_x.shape[1]).to(device=device, dtype=dtype)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = LOSSES[loss_name]
    shuffle = torch.Generator().manual_seed(args.seed)
    noise = torch.Generator().manual_seed(args.seed + 1)
    history = []
    steps = 0
    for _ in range(args.epochs):
        start = time.perf_counter()
        model.train()
        total = 0.0
        for idx in torch.randperm(len(train_x), generator=shuffle).split(args.batch_size):
            x = train_x[idx].to(device=device, dtype=dtype)
            eps = torch.randn(len(idx), 20, generator=noise, dtype=dtype).to(device)
            opt.zero_grad(set_to_none=True)
            recon_x, mu, logvar = model(x, eps)
            loss = loss_fn(recon_x, x, mu, logvar)
            loss.backward()
            opt.step()
            total += loss.item()
            steps += 1
            if args.max_steps and steps >= args.max_steps:
                break
        seconds = time.perf_counter() - start
        model.eval()
        with torch.no_grad():
            x = test_x.to(device=device, dtype=dtype)
            mu, logvar = model.encode(x)
            test = loss_fn(model.decode(mu), x, mu, logvar).item() / len(test_x)
        history.append((total / len(train_x), test, seconds))
        if args.max_steps and steps >= args.max_steps:
            break
    return model, history


def save_pictures(model, test_x, side, out: Path, tag, dtype, device):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        x = test_x[:8].to(device=device, dtype=dtype)
        mu, _ = model.encode(x)
        recon = model.decode(mu).cpu().float()
        samples = model.decode(torch.randn(16, 20, dtype=dtype, device=device)).cpu().float()
    fig, axes = plt.subplots(2, 8, figsize=(8, 2.2))
    for i in range(8):
        axes[0, i].imshow(x[i].cpu().float().view(side, side), cmap="gray")
        axes[1, i].imshow(recon[i].view(side, side), cmap="gray")
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("top: test images, bottom: reconstructions")
    fig.savefig(out / f"reconstruction_{tag}.png", dpi=100)
    plt.close(fig)
    fig, axes = plt.subplots(2, 8, figsize=(8, 2.2))
    for ax, img in zip(axes.flat, samples):
        ax.imshow(img.view(side, side), cmap="gray")
        ax.axis("off")
    fig.suptitle("samples from the prior")
    fig.savefig(out / f"samples_{tag}.png", dpi=100)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--loss", choices=["fused", "torch", "both"], default="fused")
    p.add_argument("--device", default="cpu")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--mnist", default=None, help="folder holding MNIST/raw/*-idx3-ubyte[.gz]")
    p.add_argument("--out", default="examples/out")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (smoke runs)")
    p.add_argument("--demo", action="store_true",
                   help="3 epochs with both losses in float64 on the bundled digits; prints the comparison")
    args = p.parse_args(argv)
    if args.demo:
        args.loss, args.dtype, args.epochs, args.mnist = "both", "float64", 3, None

    dtype = getattr(torch, args.dtype)
    train_x, test_x, side = load_data(args.mnist)
    print(f"data: {len(train_x)} train / {len(test_x)} test images of {side}x{side}; "
          f"{args.dtype} on {args.device}; vae_fused CPU kernels: {vae_fused.cpu_capability()}")
    names = ["torch", "fused"] if args.loss == "both" else [args.loss]
    results = {}
    for name in names:
        model, history = train(name, train_x, test_x, args, dtype, args.device)
        results[name] = history
        save_pictures(model, test_x, side, Path(args.out), name, dtype, args.device)

    if len(names) == 1:
        print("epoch | train loss/sample | test loss/sample | seconds")
        for i, (tr, te, s) in enumerate(results[names[0]], 1):
            print(f"{i:5d} | {tr:17.6f} | {te:16.6f} | {s:7.2f}")
    else:
        print("epoch | torch loss/sample | fused loss/sample | rel. diff | torch s | fused s")
        worst = 0.0
        for i, (a, b) in enumerate(zip(results["torch"], results["fused"]), 1):
            rel = abs(a[0] - b[0]) / abs(a[0])
            worst = max(worst, rel)
            print(f"{i:5d} | {a[0]:17.9f} | {b[0]:17.9f} | {rel:9.1e} | {a[2]:7.2f} | {b[2]:7.2f}")
        bound = 1e-9 if dtype == torch.float64 else 1e-4
        verdict = "agree" if worst <= bound else "DIFFER"
        print(f"fused and torch losses {verdict}: largest relative difference {worst:.1e} (bound {bound:.0e})")
    print(f"pictures in {args.out}/")


if __name__ == "__main__":
    main()
