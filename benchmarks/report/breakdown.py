"""Where the time goes: the fused loss's measured components at one shape
(floor, MSE's loop, BCE's arithmetic, threads, the backward, fresh buffers,
page faults), and torch.profiler's op lists."""
from __future__ import annotations

import re

import torch

from benchmarks import cases
from benchmarks.report.fmt import fmt, fmt_bytes, fmt_delta, fmt_ms, fmt_x, md_table
from benchmarks.report.rows import Results, ratio


def breakdown(res: Results, shape: cases.Shape, device="cpu", dtype="float32"):
    """Measured components of the fused loss on one shape, or None."""
    fwd = (device, dtype, "fwd", shape.name)
    fb = (device, dtype, "fwdbwd", shape.name)
    b = {
        "floor_fwd": res.ms(fwd, "-", "floor"), "floor_fb": res.ms(fb, "-", "floor"),
        "mse_fwd": res.ms(fwd, "mse", "fused"), "bce_fwd": res.ms(fwd, "bce", "fused"),
        "bce_fwd_1t": res.ms(fwd, "bce", "fused@1t"), "bce_fb": res.ms(fb, "bce", "fused"),
        "eager_fb": res.ms(fb, "bce", "eager"), "compiled_fb": res.ms(fb, "bce", "compiled"),
        "fill_fresh": res.ms(fb, "-", "fill-fresh"), "fill_reused": res.ms(fb, "-", "fill-reused"),
    }
    if b["bce_fwd"] is None and b["bce_fb"] is None:
        return None
    fresh_row = res.get(fb, "-", "fill-fresh")
    b["fill_faults"] = None if fresh_row is None else fresh_row["faults_per_step"]
    for name in cases.LOSS_CANDIDATES:
        r = res.get(fb, "bce", name)
        b[f"{name}_faults"] = None if r is None else r["faults_per_step"]
    b["fault_ms"] = None if None in (b["fill_fresh"], b["fill_reused"]) else b["fill_fresh"] - b["fill_reused"]
    b["ms_per_fault"] = ms_per_fault(res, device)
    b["bytes_fwd"] = cases.bytes_moved(shape, getattr(torch, dtype), "fwd")
    return b


def ms_per_fault(res: Results, device: str):
    """Cost of one first-touch page fault on this machine: (fresh fill - reused
    fill) / faults, from the largest fresh-buffer measurement that faulted."""
    best = None
    for key, cands in res.cases.items():
        fresh, reused = cands.get(("-", "fill-fresh")), cands.get(("-", "fill-reused"))
        if key[0] != device or fresh is None or reused is None or not fresh["faults_per_step"]:
            continue
        if best is None or fresh["faults_per_step"] > best[0]:
            cost = (fresh["median_ms"] - reused["median_ms"]) / fresh["faults_per_step"]
            best = (fresh["faults_per_step"], cost)
    return None if best is None else best[1]


def _minus(a, b):
    return None if a is None or b is None else a - b


def fresh_buffer_note(b) -> str:
    if not b["fill_faults"]:
        return ("no page faults: a buffer this size comes back from the allocator already "
                "mapped (below glibc's mmap threshold)")
    per_fault = "" if b["ms_per_fault"] is None else f", {b['ms_per_fault'] * 1e3:.2f} µs each"
    return (f"{fmt_ms(b['fault_ms'])} ms of first-touch page faults "
            f"({b['fill_faults']:.0f} faults{per_fault}): the allocator had returned the block to the OS")


def breakdown_table(b) -> list[list[str]]:
    """[label, ms, what it says] lines; lines with nothing measured are left out."""
    arithmetic = _minus(b["bce_fwd"], b["mse_fwd"])
    backward = _minus(b["bce_fb"], b["bce_fwd"])
    floor_fresh = None if b["floor_fb"] is None or b["fault_ms"] is None else b["floor_fb"] + b["fault_ms"]
    faults = [b[f"{n}_faults"] for n in cases.LOSS_CANDIDATES]
    cost = [None if f is None or b["ms_per_fault"] is None else f * b["ms_per_fault"] for f in faults]
    lines = [  # (label, values, note)
        ("floor, forward: copy of recon_x + x's bytes", [b["floor_fwd"]], "memory (or cache) bandwidth"),
        ("fused forward with MSE (same loop, a subtract and a multiply)", [b["mse_fwd"]],
         f"reading recon_x and x in this loop: {fmt_x(ratio(b['mse_fwd'], b['floor_fwd']))} the floor"
         if b["floor_fwd"] else "reading recon_x and x in this loop"),
        ("fused forward with BCE", [b["bce_fwd"]],
         "" if arithmetic is None else f"{fmt_delta(arithmetic)} ms over MSE: BCE's per-element math (log p, log(1−p))"),
        ("fused forward with BCE, 1 thread", [b["bce_fwd_1t"]],
         f"the extra threads give {fmt_x(ratio(b['bce_fwd_1t'], b['bce_fwd']), 2)}"),
        ("fused forward+backward (BCE)", [b["bce_fb"]],
         "" if backward is None else f"{fmt_delta(backward)} ms over the forward: the gradient (computed and written) and autograd"),
        ("floor, forward+backward: copy of recon_x + x + gradient's bytes", [b["floor_fb"]], ""),
        ("fill of a gradient-sized buffer: reused / fresh each step", [b["fill_reused"], b["fill_fresh"]],
         fresh_buffer_note(b)),
        ("floor incl. fresh gradient allocation", [floor_fresh],
         "what a loss that allocates its gradient every step cannot go below"),
        ("page faults per training step: eager / compiled / fused", faults,
         "≈ " + " / ".join(fmt_ms(c) for c in cost) + " ms of each step"),
    ]
    out = []
    for label, values, note in lines:
        if all(v is None for v in values):
            continue
        show = (lambda v: fmt(v, "{:.0f}")) if label.startswith("page faults") else fmt_ms
        out.append([label, " / ".join(show(v) for v in values), note])
    return out


def breakdown_notes(b, l3_bytes) -> list[str]:
    notes = []
    if l3_bytes and b["bytes_fwd"] <= l3_bytes:
        notes.append(f"recon_x and x ({fmt_bytes(b['bytes_fwd'])}) fit in the {fmt_bytes(l3_bytes)} "
                     "last-level cache, so the copy floor here runs at cache, not memory, bandwidth.")
    of_floor = ratio(b["bce_fwd"], b["floor_fwd"])
    share = ratio(_minus(b["bce_fwd"], b["mse_fwd"]), b["bce_fwd"])
    if of_floor is not None and share is not None:
        notes.append(f"The fused forward takes {fmt_x(of_floor)} the floor; "
                     f"{100 * share:.0f}% of it is BCE's arithmetic (BCE minus MSE in the same loop), "
                     f"the rest is streaming the inputs.")
    return notes


def op_label(op: str) -> str:
    op = re.sub(r"## Call CompiledFxGraph (\w{8})\w* ##", r"inductor graph \1…", op)
    return op if len(op) <= 70 else op[:69] + "…"


PROFILE_NOTE = (
    "torch.profiler, self time per step (time in the op itself, not in the ops it calls). "
    "The fused kernel (the terms and the element gradients, in one pass) runs in "
    "`vae_fused::vae_loss_forward`, which the C++ Autograd kernel of `vae_fused::vae_loss` "
    "calls once in the forward, so its time is listed under `vae_fused::vae_loss_forward`; "
    "the backward node (`torch::autograd::CppNode<…VaeLossFunction>`) only applies the "
    "upstream gradient to the saved gradients; "
    "compiled graphs are listed by inductor's name for them.")


def profile_section(profiles) -> list[str]:
    if not profiles:
        return []
    lines = [PROFILE_NOTE, ""]
    for (device, name), ops in profiles.items():
        lines += [f"**{name}** ({device}, {cases.BIG.name}, float32, BCE, forward+backward):", "",
                  md_table(["op", "self ms per step"], [[f"`{op_label(op)}`", fmt_ms(ms)] for op, ms in ops]), ""]
    return lines
