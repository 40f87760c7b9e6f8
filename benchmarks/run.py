"""Runs the suite: `python -m benchmarks [--quick] ...` or `python benchmarks/run.py`."""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import torch
from torch.utils import benchmark

import vae_fused
from benchmarks import cases, report


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--quick", action="store_true",
                   help="CPU float32, the MNIST/3M/12.6M shapes, a short sweep (< 3 min on 2 cores)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "all"])
    p.add_argument("--dtype", default=None, help="comma list: float32,bfloat16,float16")
    p.add_argument("--pass", dest="passes", default="fwd,fwdbwd", help="comma list: fwd,fwdbwd")
    p.add_argument("--recon", default=None, help="comma list: bce,bce_logits,mse")
    p.add_argument("--sizes", default=None, help="sweep exponents, e.g. 12:27:2 or 14,18,22")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--min-run-time", type=float, default=None, help="seconds per measurement")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results/<machine>)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile candidate")
    p.add_argument("--no-plots", action="store_true")
    return p.parse_args(argv)


def exponents(spec: str | None, quick: bool):
    if spec is None:
        return list(range(14, 25, 2)) if quick else list(range(12, 27, 2))
    if ":" in spec:
        lo, hi, *step = (int(v) for v in spec.split(":"))
        return list(range(lo, hi, step[0] if step else 1))
    return [int(v) for v in spec.split(",")]


def measure(step, device, threads, min_run_time):
    timer = benchmark.Timer("step()", globals={"step": step}, num_threads=threads)
    m = timer.blocked_autorange(min_run_time=min_run_time)
    return m.median, m.iqr


def peak_cuda_bytes(step):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


def run_case(shape, dtype, device, pass_name, cands, threads, min_run_time, rows, progress):
    """Times every candidate and the floor on one (shape, dtype, device, pass)."""
    for recon in sorted({c.recon for c in cands}):
        inputs = cases.make_inputs(shape, dtype, device, recon)
        for cand in (c for c in cands if c.recon == recon):
            step = cases.PASSES[pass_name](cand.fn, inputs)
            try:
                compile_s = cases.warm_up(step, device)
            except Exception as err:  # e.g. PyTorch's BCE refusing a dtype
                rows.append(report.row(shape, dtype, device, pass_name, cand, error=f"{type(err).__name__}: {err}"))
                progress()
                continue
            median, iqr = measure(step, device, threads, min_run_time)
            memory = peak_cuda_bytes(step) if device == "cuda" else (
                cases.saved_bytes(cand.fn, inputs) if pass_name == "fwdbwd" else 0)
            rows.append(report.row(shape, dtype, device, pass_name, cand, median=median, iqr=iqr,
                                   compile_s=compile_s if cand.name == "compiled" else 0.0,
                                   memory=memory))
            progress()
    floor = cases.floor_step(shape, dtype, device, pass_name)
    # the floor is the yardstick of every ratio: give it more samples than the rest
    median, iqr = measure(floor, device, threads, max(1.0, min_run_time))
    rows.append(report.row(shape, dtype, device, pass_name, cases.Candidate("floor", "-", None),
                           median=median, iqr=iqr))
    if pass_name == "fwdbwd":
        fresh = cases.fresh_buffer_step(shape, dtype, device)
        median, iqr = measure(fresh, device, threads, min_run_time)
        rows.append(report.row(shape, dtype, device, pass_name,
                               cases.Candidate("fresh-buffer", "-", None), median=median, iqr=iqr))
    progress()


def end_to_end(device, threads, min_run_time, with_compile):
    """A full pytorch/examples VAE training step (784-400-20, batch 128, Adam)
    with each loss; returns {candidate: seconds per step}."""
    from torch import nn
    from torch.nn import functional as F

    class VAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc21, self.fc22 = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)
            self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)

        def forward(self, x):
            h1 = F.relu(self.fc1(x))
            mu, logvar = self.fc21(h1), self.fc22(h1)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, logvar

    x = torch.rand(128, 784, device=device)
    out = {}
    losses = {"eager": cases.eager_bce, "fused": cases.fused("bce")}
    if with_compile:
        losses["compiled"] = torch.compile(cases.eager_bce, dynamic=False)
    for name, loss_fn in losses.items():
        torch.manual_seed(0)
        model = VAE().to(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step():
            opt.zero_grad(set_to_none=True)
            recon_x, mu, logvar = model(x)
            loss_fn(recon_x, x, mu, logvar).backward()
            opt.step()

        cases.warm_up(step, device)
        out[name] = measure(step, device, threads, min_run_time)[0]
    return out


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        if args.device == "cuda":
            sys.exit("benchmarks: --device cuda but no CUDA device is available")
        devices = ["cpu"]
    passes = args.passes.split(",")
    recons = args.recon.split(",") if args.recon else (["bce"] if args.quick else ["bce", "bce_logits", "mse"])
    min_run_time = args.min_run_time or (0.3 if args.quick else 1.0)
    shapes = cases.QUICK if args.quick else cases.REALISTIC
    sweep = cases.sweep(exponents(args.sizes, args.quick))
    with_compile = not args.no_compile

    env = report.environment(threads)
    out_dir = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / env["tag"]
    print(report.header(env))

    started = time.perf_counter()
    rows = []
    jobs = []
    for device in devices:
        dtypes = args.dtype.split(",") if args.dtype else (
            ["float32"] if args.quick else (["float32", "bfloat16"] if device == "cpu" else ["float32", "float16", "bfloat16"]))
        for dtype_name in dtypes:
            dtype = getattr(torch, dtype_name)
            for pass_name in passes:
                for shape in shapes:
                    jobs.append((shape, dtype, device, pass_name, recons, with_compile))
                # the sweep is for the plot: eager, fused and the floor (compiled
                # would add a compile per size)
                for shape in sweep:
                    jobs.append((shape, dtype, device, pass_name, ["bce"], False))
        if args.quick:
            # one bf16 row: the half-precision path on the big shape
            jobs.append((cases.QUICK[-1], torch.bfloat16, device, "fwdbwd", ["bce"], False))
            # MSE's arithmetic is trivial, so its fused forward is the loop's memory cost:
            # the report uses it to split the BCE forward into memory and arithmetic
            for shape in cases.QUICK[1:]:
                jobs.append((shape, torch.float32, device, "fwd", ["mse"], False))

    bar = None
    if not args.quick:
        try:
            from tqdm import tqdm
            bar = tqdm(total=len(jobs), unit="case")
        except ImportError:
            bar = None
    for shape, dtype, device, pass_name, case_recons, case_compile in jobs:
        cands = cases.candidates(case_recons, case_compile)
        run_case(shape, dtype, device, pass_name, cands, threads, min_run_time, rows, lambda: None)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    e2e = {device: end_to_end(device, threads, min_run_time, with_compile) for device in devices}

    elapsed = time.perf_counter() - started
    report.write_all(rows, e2e, env, out_dir, args, elapsed, plots=not args.no_plots)
    print(report.stdout_table(rows, e2e))
    print(report.targets_text(rows))
    print(f"\n{len(rows)} figures in {elapsed:.0f} s; CSV, report and plots in {out_dir}")


if __name__ == "__main__":
    main()
