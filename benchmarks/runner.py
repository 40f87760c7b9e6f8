"""Measuring the plan: each case's candidates, its floor, the op profiles and
the end-to-end training step. A candidate that fails (an op without a kernel
for a dtype, a fused argument the installed op does not take yet) becomes an
error row; the run goes on."""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass

import torch

from benchmarks import cases, machine, timing
from benchmarks.plan import Case
from benchmarks.report import make_row


@dataclass
class Settings:
    threads: int
    min_run_time: float


def error_text(err: Exception) -> str:
    first_line = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {first_line[:160]}"


def run_candidate(case: Case, name: str, inputs, settings: Settings) -> dict:
    threads = 1 if name == "fused@1t" else settings.threads
    row = dict(shape=case.shape, dtype=case.dtype, device=case.device, pass_name=case.pass_name,
               recon=case.recon, candidate=name, threads=threads)
    needs_grad = cases.LOSSES[case.recon].needs_grad
    try:
        cand = cases.make_candidate(name.split("@")[0], case.recon)
        step = cases.PASSES[case.pass_name](cand.fn, inputs, needs_grad)
        first_s, cache, loss = timing.first_call(step, case.device)
    except Exception as err:  # e.g. an op without a kernel for this dtype: record, go on
        return make_row(**row, error=error_text(err))
    value = loss.detach().double().item()
    measured = timing.measure(step, threads, settings.min_run_time)
    if case.device == "cuda":
        memory = timing.cuda_peak_bytes(step)
    elif case.pass_name == "fwdbwd":
        memory = timing.saved_for_backward_bytes(cand.fn, cases.training_leaves(inputs, needs_grad))
    else:
        memory = None
    faults = timing.minor_faults_per_step(step, case.device)
    return make_row(**row, timing=measured, first_call_s=first_s, compile_cache=cache,
                    memory_bytes=memory, faults=faults, value=value)


def compare_values(rows):
    """Each candidate's loss relative to eager's on the same inputs (its
    first call's): a candidate that computes another loss is not a baseline."""
    eager = next((r["value"] for r in rows if r["candidate"] == "eager" and r["value"] is not None), None)
    for r in rows:
        if eager is not None and r["value"] is not None and r["candidate"] != "eager":
            r["rel_diff_vs_eager"] = abs(r["value"] - eager) / max(abs(eager), 1e-30)


def run_floor(case: Case, settings: Settings) -> list[dict]:
    """The copy floor, and for training the cost of a fresh gradient buffer."""
    steps = {"floor": cases.floor_step(case.shape, case.dtype, case.device, case.pass_name, case.recon)}
    if case.pass_name == "fwdbwd" and case.fills:
        for name, make in cases.MEMORY_STEPS.items():
            steps[name] = make(case.shape, case.dtype, case.device)
    rows = []
    for name, step in steps.items():
        step()
        # every ratio is taken against these: give them more samples
        measured = timing.measure(step, settings.threads, 3 * settings.min_run_time)
        rows.append(make_row(
            shape=case.shape, dtype=case.dtype, device=case.device, pass_name=case.pass_name,
            recon="-", candidate=name, threads=settings.threads, timing=measured,
            faults=timing.minor_faults_per_step(step, case.device),
            floor_of=case.recon if name == "floor" else "bce"))
    return rows


def run_case(case: Case, settings: Settings) -> list[dict]:
    others = machine.OtherLoad()
    inputs = cases.case_inputs(case.shape, case.dtype, case.device, case.recon)
    rows = [run_candidate(case, name, inputs, settings) for name in case.candidates]
    compare_values(rows)
    if case.floor:
        rows += run_floor(case, settings)
    # other work on the machine while this case ran: the report marks busy cases
    busy = others.cores()
    for r in rows:
        r["others_cores"] = busy
    return rows


def alternated_pair(case: Case):
    """[(shape, candidate, step)] the two timings run_paired alternates for
    this case, or None when no target checks their ratio."""
    if case.shape == cases.HOST and {"eager", "fused"} <= set(case.candidates):
        shapes_and_names = [(case.shape, "eager"), (case.shape, "fused")]
    elif case.shape.binary and case.recon == "bce" and "fused" in case.candidates:
        twin = dataclasses.replace(case.shape, name=cases.BINARY_OF[case.shape.name], binary=False)
        shapes_and_names = [(twin, "fused"), (case.shape, "fused")]
    else:
        return None
    needs_grad = cases.LOSSES[case.recon].needs_grad
    return [(shape, name, cases.PASSES[case.pass_name](
                cases.make_candidate(name, case.recon).fn,
                cases.case_inputs(shape, case.dtype, case.device, case.recon), needs_grad))
            for shape, name in shapes_and_names]


def run_paired(plan, settings: Settings) -> list[dict]:
    """Two timings whose ratio a target checks, taken in alternation
    (cases.PAIRED_ROUNDS rounds, the order flipped every round): the fused op
    on binary targets and on their continuous twin, and at the host-overhead
    size the fused op and eager. The main table times each pair minutes
    apart, and this machine class drifts between minutes (the same 3.1M
    continuous fwd+bwd measured 0.53 and 1.43 ms in two runs; the same 8x16
    fused call 79 and 153 µs): a ratio of two table rows can be off by 2x for
    reasons that have nothing to do with the targets. Each round's pair
    shares the machine's state; the report takes the median of the rounds'
    ratios."""
    rows = []
    for case in plan:
        pair = alternated_pair(case)
        if pair is None:
            continue
        for _, _, step in pair:
            step()
        for i in range(1, cases.PAIRED_ROUNDS + 1):
            others = machine.OtherLoad()
            for shape, name, step in (pair if i % 2 else pair[::-1]):
                rows.append(make_row(
                    shape=shape, dtype=case.dtype, device=case.device, pass_name=case.pass_name,
                    recon=case.recon, candidate=cases.paired_candidate(i, name), threads=settings.threads,
                    timing=timing.measure(step, settings.threads, settings.min_run_time)))
            busy = others.cores()
            rows[-1]["others_cores"] = rows[-2]["others_cores"] = busy
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
            others = machine.OtherLoad()
            step = cases.e2e_training_step(cases.make_candidate(name, "bce").fn, device)
            row = dict(shape=shape, dtype=torch.float32, device=device, pass_name="train-step",
                       recon="bce", candidate=name, threads=settings.threads)
            try:
                first_s, cache, _ = timing.first_call(step, device)
            except Exception as err:
                rows.append(make_row(**row, error=error_text(err)))
                continue
            rows.append(make_row(
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
