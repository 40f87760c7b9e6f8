"""vae_fused benchmarks: the fused VAE loss against the pytorch/examples loss
(eager), the same loss under torch.compile, and the memory-bandwidth floor;
the latent-diffusion and VDVAE losses against their plain-PyTorch forms.

  python -m benchmarks --quick          # CPU float32 (+ one bfloat16 row), < 4 min on 2 cores
  python -m benchmarks                  # every shape, recon term, dtype and pass (15+ min on 2 cores)
  python -m benchmarks --family only    # only the latent-diffusion and VDVAE rows
  python -m benchmarks --device cuda --dtype float16 --pass fwdbwd --sizes 16:27:2
  ATEN_CPU_CAPABILITY=avx2 python -m benchmarks --quick   # the op and torch.compile on AVX2
  python -m benchmarks --quick --inductor-simdlen 256     # torch.compile's AVX2 code on an AVX-512 host

Prints a table; writes results.csv, report.md and plots to
benchmarks/results/<machine>/, named by the CPU, the ISA of the op's kernels
and the thread count, e.g. cpu-amd-epyc-avx512-2t.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from benchmarks import cases, machine, report
from benchmarks.plan import build_plan, comma_list, loss_candidates, pick_devices
from benchmarks.runner import (Settings, progress_bar, run_case, run_end_to_end, run_paired,
                               run_profiles)

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="CPU float32, the MNIST / 3.1M / 12.6M batches (and the first two with binary "
                        "targets), BCE, a short size sweep, the 8x16 host-overhead row, one bfloat16 "
                        "row, the latent-diffusion and VDVAE rows and the end-to-end step")
    p.add_argument("--device", default=None, choices=["cpu", "cuda", "all"],
                   help="default: cpu with --quick, otherwise all devices present")
    p.add_argument("--dtype", default=None,
                   help="comma list of float32,bfloat16,float16,float64 "
                        "(default: float32,bfloat16 on CPU, float32,float16,bfloat16 on CUDA)")
    p.add_argument("--pass", dest="passes", default="fwd,fwdbwd", help="comma list of fwd,fwdbwd")
    p.add_argument("--recon", default=None,
                   help=f"comma list of {','.join(cases.RECONS)} (default: bce with --quick, "
                        f"else {','.join(cases.DEFAULT_RECONS)}); the sweep is BCE only")
    p.add_argument("--sizes", default=None,
                   help="size sweep: exponents as LO:HI[:STEP] (HI excluded) or a comma list of "
                        "exponents (<= 40) or element counts; 'none' skips the sweep "
                        "(default 12:27:2, --quick 14:25:2)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for every timing (default: torch's, i.e. the cores)")
    p.add_argument("--min-run-time", type=float, default=None,
                   help="seconds per measurement (default 1.0, --quick 0.3; the floor gets 3x)")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results/<machine>)")
    p.add_argument("--family", default="include", choices=["include", "skip", "only"],
                   help="the loss-family rows (latent diffusion: L1 + learned log-scale + perceptual "
                        "offset; VDVAE: KL against a learned prior): include them (default), skip "
                        "them, or run only them")
    p.add_argument("--inductor-simdlen", type=int, default=None, choices=[256, 512],
                   help="the vector width torch.compile's C++ code is generated for "
                        "(torch._inductor.config.cpp.simdlen). Default: inductor's own pick, except "
                        "256 under ATEN_CPU_CAPABILITY=avx2, where torch 2.14's own pick on an "
                        "AVX-512 host computed half of the loss (measured: rel. error 0.5)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile candidate")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    simdlen = args.inductor_simdlen
    if simdlen is None and os.environ.get("ATEN_CPU_CAPABILITY", "").lower() == "avx2":
        simdlen = 256
    if simdlen is not None:
        import torch._inductor.config as inductor_config
        inductor_config.cpp.simdlen = simdlen
    others = machine.OtherLoad()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = pick_devices(args.device, args.quick)
    settings = Settings(torch.get_num_threads(), args.min_run_time or (0.3 if args.quick else 1.0))
    env = machine.environment(settings.threads, devices)
    out_dir = Path(args.out) if args.out else RESULTS / env["tag"]
    print(report.header(env), flush=True)

    plan = build_plan(args, devices)
    losses = loss_candidates(args)
    # the end-to-end row is a training step of the pytorch/examples loss
    training = "fwdbwd" in comma_list(args.passes, cases.PASSES, "pass") and args.family != "only"
    rows = []
    bar = progress_bar(len(plan) + 3)
    for case in plan:
        bar.set_description(f"{case.device} {report.dtype_name(case.dtype)} {case.pass_name} "
                            f"{case.recon} {case.shape.name}")
        rows += run_case(case, settings)
        bar.update()
    bar.set_description("binary vs continuous, alternated")
    rows += run_paired(plan, settings)
    bar.update()
    bar.set_description("profiles")
    profiles = run_profiles(devices, losses, plan)
    bar.update()
    bar.set_description("end to end")
    if training:
        rows += run_end_to_end(devices, losses, settings)
    bar.update()
    bar.close()

    elapsed = time.perf_counter() - started
    env["others_cores"] = others.cores()
    command = "python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv)
    plots = report.write_all(rows, profiles, env, out_dir, command.strip(), elapsed, plots=not args.no_plots)
    print(report.stdout_report(rows, env))
    written = "results.csv, report.md and plots" if plots else "results.csv and report.md"
    print(f"\n{len(rows)} measurements in {elapsed:.0f} s; {written} in {out_dir}")


if __name__ == "__main__":
    main()
