"""Which cases run: one Case per (shape, dtype, device, pass, loss), from the
command line's choices."""
from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from benchmarks import cases

ALL_DTYPES = ("float32", "bfloat16", "float16", "float64")


@dataclass
class Case:
    shape: cases.Shape
    dtype: torch.dtype
    device: str
    pass_name: str
    recon: str
    candidates: tuple          # names from cases.LOSS_CANDIDATES, or "fused@1t"
    floor: bool = True         # also measure the floor (once per shape/dtype/device/pass)
    fills: bool = True         # and, training, the fresh/reused gradient-buffer fills


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


def loss_candidates(args) -> tuple:
    return tuple(c for c in cases.LOSS_CANDIDATES if not (c == "compiled" and args.no_compile))


def build_plan(args, devices) -> list[Case]:
    passes = comma_list(args.passes, cases.PASSES, "pass")
    losses = loss_candidates(args)
    plan = []
    for device in devices:
        if args.family != "only":
            plan += core_cases(args, device, passes, losses)
        if args.family != "skip":
            plan += family_cases(device, passes, losses, args.dtype)
    return plan


def core_cases(args, device, passes, losses) -> list[Case]:
    """The pytorch/examples loss and its analogues: realistic shapes (with BCE
    also the binarized-target twins), the size sweep, the host-overhead row
    (float32 training), and the breakdown's extra measurements."""
    quick = args.quick
    recons = comma_list(args.recon, cases.RECONS, "recon") if args.recon else (
        ["bce"] if quick else cases.DEFAULT_RECONS)
    shapes = cases.QUICK if quick else cases.REALISTIC
    sweep = [cases.sweep_shape(n) for n in sweep_sizes(args.sizes, quick)]
    plan = []
    dtypes = comma_list(args.dtype, ALL_DTYPES, "dtype") if args.dtype else default_dtypes(device, quick)
    for dtype in (getattr(torch, d) for d in dtypes):
        for pass_name in passes:
            for shape in shapes:
                for i, recon in enumerate(recons):
                    plan.append(Case(shape, dtype, device, pass_name, recon, losses, floor=i == 0))
            if "bce" in recons:
                # binary targets: the floor is the continuous twin's (same bytes)
                for shape in cases.BINARY:
                    plan.append(Case(shape, dtype, device, pass_name, "bce", losses, floor=False))
            for shape in sweep:
                plan.append(Case(shape, dtype, device, pass_name, "bce", losses))
        if "fwdbwd" in passes and dtype == torch.float32:
            plan.append(Case(cases.HOST, dtype, device, "fwdbwd", "bce", losses, floor=False))
    return plan + breakdown_cases(device, passes, recons, losses, quick, args.dtype)


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


def family_cases(device, passes, losses, dtype_arg) -> list[Case]:
    """The latent-diffusion and VDVAE rows (family.py), float32 unless --dtype
    says otherwise, each pass, with their floor (no gradient-buffer fills)."""
    dtypes = comma_list(dtype_arg, ALL_DTYPES, "dtype") if dtype_arg else ["float32"]
    return [Case(shape, getattr(torch, d), device, pass_name, recon, losses, fills=False)
            for d in dtypes for pass_name in passes for shape, recon in cases.FAMILY]
