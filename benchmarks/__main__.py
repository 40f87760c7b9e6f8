"""vae_fused benchmarks: the fused VAE loss against the pytorch/examples loss
(eager), the same loss under torch.compile, and the memory-bandwidth floor.

  python -m benchmarks --quick          # CPU float32 (+ one bfloat16 row), < 3 min on 2 cores
  python -m benchmarks                  # every shape, recon term, dtype and pass (15+ min on 2 cores)
  python -m benchmarks --device cuda --dtype float16 --pass fwdbwd --sizes 16:27:2

Prints a table; writes results.csv, report.md and plots to benchmarks/results/<machine>/.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks import cases, report, timing

RESULTS = Path(__file__).resolve().parent / "results"
ALL_DTYPES = ("float32", "bfloat16", "float16", "float64")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="CPU float32, the MNIST / 3.1M / 12.6M batches, BCE, a short size sweep, "
                        "one bfloat16 row and the end-to-end step")
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
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile candidate")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return p.parse_args(argv)


def comma_list(value: str, allowed, what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        sys.exit(f"benchmarks: unknown {what} {bad or value!r}; choose from {', '.join(allowed)}")
    return items


def sweep_sizes(spec: str | None, quick: bool) -> list[int]:
    """Element counts of the size sweep."""
    if spec is None:
        exps = cases.QUICK_SWEEP if quick else cases.FULL_SWEEP
        return [2 ** k for k in exps]
    if spec == "none":
        return []
    if ":" in spec:
        lo, hi, *step = (int(v) for v in spec.split(":"))
        return [2 ** k for k in range(lo, hi, step[0] if step else 1)]
    values = [int(v) for v in spec.split(",")]
    return [2 ** v if v <= 40 else v for v in values]


def pick_devices(choice: str | None, quick: bool) -> list[str]:
    has_cuda = torch.cuda.is_available()
    if choice == "cuda" and not has_cuda:
        sys.exit("benchmarks: --device cuda, but torch sees no CUDA device")
    if choice in ("cpu", "cuda"):
        return [choice]
    if choice is None and quick:
        return ["cpu"]
    return ["cpu", "cuda"] if has_cuda else ["cpu"]


def default_dtypes(device: str, quick: bool) -> list[str]:
    if quick:
        return ["float32"]
    return ["float32", "bfloat16"] if device == "cpu" else ["float32", "float16", "bfloat16"]


# ---------------------------------------------------------------------------
# The plan: one Case per (shape, dtype, device, pass, recon)

@dataclass
class Case:
    shape: cases.Shape
    dtype: torch.dtype
    device: str
    pass_name: str
    recon: str
    candidates: tuple          # names from cases.LOSS_CANDIDATES, or "fused@1t"
    floor: bool = True         # also measure the floor (once per shape/dtype/device/pass)


def loss_candidates(args) -> tuple:
    return tuple(c for c in cases.LOSS_CANDIDATES if not (c == "compiled" and args.no_compile))


def build_plan(args, devices) -> list[Case]:
    quick = args.quick
    passes = comma_list(args.passes, cases.PASSES, "pass")
    recons = comma_list(args.recon, cases.RECONS, "recon") if args.recon else (
        ["bce"] if quick else cases.DEFAULT_RECONS)
    losses = loss_candidates(args)
    shapes = cases.QUICK if quick else cases.REALISTIC
    sweep = [cases.sweep_shape(n) for n in sweep_sizes(args.sizes, quick)]

    plan = []
    for device in devices:
        dtypes = comma_list(args.dtype, ALL_DTYPES, "dtype") if args.dtype else default_dtypes(device, quick)
        for dtype in (getattr(torch, d) for d in dtypes):
            for pass_name in passes:
                for shape in shapes:
                    for i, recon in enumerate(recons):
                        plan.append(Case(shape, dtype, device, pass_name, recon, losses, floor=i == 0))
                for shape in sweep:
                    plan.append(Case(shape, dtype, device, pass_name, "bce", losses))
        plan += breakdown_cases(device, passes, recons, losses, quick, args.dtype)
    return plan


def breakdown_cases(device, passes, recons, losses, quick, dtype_arg) -> list[Case]:
    """The extra measurements 'where the time goes' reads, on the CPU at the
    target shapes (float32): the same fused loop with MSE's trivial arithmetic
    (its memory cost), and the fused BCE forward on one thread (its thread
    scaling). --quick also adds one bfloat16 training row on the big shape."""
    extra = []
    if device == "cpu" and "fwd" in passes and (not dtype_arg or "float32" in dtype_arg.split(",")):
        for shape in cases.TARGET_SHAPES:
            if "mse" not in recons:
                extra.append(Case(shape, torch.float32, device, "fwd", "mse", ("eager", "fused"), floor=False))
            extra.append(Case(shape, torch.float32, device, "fwd", "bce", ("fused@1t",), floor=False))
    if quick and not dtype_arg and "fwdbwd" in passes:
        extra.append(Case(cases.BIG, torch.bfloat16, device, "fwdbwd", "bce", losses))
    return extra


# ---------------------------------------------------------------------------
# Running it

@dataclass
class Settings:
    threads: int
    min_run_time: float


def error_text(err: Exception) -> str:
    first_line = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {first_line[:160]}"


def run_candidate(case: Case, name: str, inputs, settings: Settings) -> dict:
    threads = 1 if name == "fused@1t" else settings.threads
    cand = cases.make_candidate(name.split("@")[0], case.recon)
    step = cases.PASSES[case.pass_name](cand.fn, inputs)
    row = dict(shape=case.shape, dtype=case.dtype, device=case.device, pass_name=case.pass_name,
               recon=case.recon, candidate=name, threads=threads)
    try:
        first_s, cache = timing.first_call(step, case.device)
    except Exception as err:  # e.g. an op without a kernel for this dtype: record, go on
        return report.make_row(**row, error=error_text(err))
    measured = timing.measure(step, threads, settings.min_run_time)
    if case.device == "cuda":
        memory = timing.cuda_peak_bytes(step)
    elif case.pass_name == "fwdbwd":
        memory = timing.saved_for_backward_bytes(cand.fn, cases.training_leaves(inputs))
    else:
        memory = None
    faults = timing.minor_faults_per_step(step, case.device)
    return report.make_row(**row, timing=measured, first_call_s=first_s, compile_cache=cache,
                           memory_bytes=memory, faults=faults)


def run_floor(case: Case, settings: Settings) -> list[dict]:
    """The copy floor, and for training the cost of a fresh gradient buffer."""
    steps = {"floor": cases.floor_step(case.shape, case.dtype, case.device, case.pass_name)}
    if case.pass_name == "fwdbwd":
        for name, make in cases.MEMORY_STEPS.items():
            steps[name] = make(case.shape, case.dtype, case.device)
    rows = []
    for name, step in steps.items():
        step()
        # every ratio is taken against these: give them more samples
        measured = timing.measure(step, settings.threads, 3 * settings.min_run_time)
        rows.append(report.make_row(
            shape=case.shape, dtype=case.dtype, device=case.device, pass_name=case.pass_name,
            recon="-", candidate=name, threads=settings.threads, timing=measured,
            faults=timing.minor_faults_per_step(step, case.device)))
    return rows


def run_case(case: Case, settings: Settings) -> list[dict]:
    others = timing.OtherLoad()
    inputs = cases.make_inputs(case.shape, case.dtype, case.device, case.recon)
    rows = [run_candidate(case, name, inputs, settings) for name in case.candidates]
    if case.floor:
        rows += run_floor(case, settings)
    # other work on the machine while this case ran: the report marks busy cases
    busy = others.cores()
    for r in rows:
        r["others_cores"] = busy
    return rows


def run_profiles(devices, losses, plan) -> dict:
    """Op profiles of one training step at the big shape (float32, BCE):
    where eager's ~15 kernels spend the time, and the fused op's share."""
    profiles = {}
    for device in devices:
        if not any(c.shape == cases.BIG and c.device == device and c.dtype == torch.float32
                   and c.pass_name == "fwdbwd" and c.recon == "bce" for c in plan):
            continue
        inputs = cases.make_inputs(cases.BIG, torch.float32, device, "bce")
        for name in losses:
            step = cases.training_step(cases.make_candidate(name, "bce").fn, inputs)
            try:
                step()
            except Exception:  # already recorded as an error row by run_candidate
                continue
            profiles[(device, name)] = timing.profile_ops(step, device)
    return profiles


def run_end_to_end(devices, losses, settings: Settings) -> list[dict]:
    """A full training step of the pytorch/examples VAE with each loss."""
    rows = []
    shape = cases.Shape("VAE 784-400-20 step, batch 128", (cases.E2E_BATCH, 784), (cases.E2E_BATCH, 20))
    for device in devices:
        for name in losses:
            others = timing.OtherLoad()
            step = cases.e2e_training_step(cases.make_candidate(name, "bce").fn, device)
            row = dict(shape=shape, dtype=torch.float32, device=device, pass_name="train-step",
                       recon="bce", candidate=name, threads=settings.threads)
            try:
                first_s, cache = timing.first_call(step, device)
            except Exception as err:
                rows.append(report.make_row(**row, error=error_text(err)))
                continue
            rows.append(report.make_row(
                **row, timing=timing.measure(step, settings.threads, settings.min_run_time),
                first_call_s=first_s, compile_cache=cache))
            rows[-1]["others_cores"] = others.cores()
    return rows


class NoBar:
    """Stands in for tqdm when it is not installed."""

    def update(self, n=1):
        pass

    def set_description(self, desc):
        pass

    def close(self):
        pass


def progress_bar(total: int):
    try:
        from tqdm import tqdm
    except ImportError:
        return NoBar()
    # disable=None: a bar on a terminal, nothing in a log file
    return tqdm(total=total, unit="case", file=sys.stderr, leave=False, dynamic_ncols=True, disable=None)


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    others = timing.OtherLoad()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = pick_devices(args.device, args.quick)
    settings = Settings(torch.get_num_threads(), args.min_run_time or (0.3 if args.quick else 1.0))
    env = timing.environment(settings.threads, devices)
    out_dir = Path(args.out) if args.out else RESULTS / env["tag"]
    print(report.header(env), flush=True)

    plan = build_plan(args, devices)
    losses = loss_candidates(args)
    training = "fwdbwd" in comma_list(args.passes, cases.PASSES, "pass")
    rows = []
    bar = progress_bar(len(plan) + 2)
    for case in plan:
        bar.set_description(f"{case.device} {report.dtype_name(case.dtype)} {case.pass_name} "
                            f"{case.recon} {case.shape.name}")
        rows += run_case(case, settings)
        bar.update()
    bar.set_description("profiles")
    profiles = run_profiles(devices, losses, plan)
    bar.update()
    bar.set_description("end to end")
    if training:  # the end-to-end row is a training step
        rows += run_end_to_end(devices, losses, settings)
    bar.update()
    bar.close()

    elapsed = time.perf_counter() - started
    env["others_cores"] = others.cores()
    command = "python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv)
    report.write_all(rows, profiles, env, out_dir, command.strip(), elapsed, plots=not args.no_plots)
    print(report.stdout_report(rows, env))
    print(f"\n{len(rows)} measurements in {elapsed:.0f} s; results.csv, report.md and plots in {out_dir}")


if __name__ == "__main__":
    main()
