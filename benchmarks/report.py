"""Turns measurements into the stdout report, results.csv, report.md and the
size-sweep plots. Every figure shown is read from the rows (nothing here is
measured or assumed)."""
from __future__ import annotations

import csv
import re
from collections import defaultdict
from pathlib import Path

import torch

from benchmarks import cases

FIELDS = ["device", "dtype", "pass", "shape", "elements", "latent_elements", "recon", "candidate",
          "threads", "median_ms", "iqr_ms", "mean_ms", "runs", "number_per_run", "bytes_moved",
          "gbps", "first_call_s", "compile_cache", "memory_bytes", "faults_per_step", "others_cores", "error"]

DTYPE_ORDER = ["float32", "bfloat16", "float16", "float64"]
PASS_ORDER = ["fwd", "fwdbwd", "train-step"]
SHAPE_ORDER = [s.name for s in cases.REALISTIC]
RECON_ORDER = cases.RECONS
# Cores' worth of other processes' work above which figures are marked noisy:
# on a 2-core machine any other runnable process stalls a 2-thread parallel
# region for a scheduler slice.
BUSY = 0.25


def dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def make_row(shape, dtype, device, pass_name, recon, candidate, threads, timing=None,
             first_call_s=None, compile_cache="", memory_bytes=None, faults=None, error="") -> dict:
    """One CSV row: a candidate's measurement on one case."""
    if candidate.startswith("fill-"):
        moved = shape.elements * torch.empty((), dtype=dtype).element_size()  # one write
    elif pass_name in cases.PASS_TENSORS:
        moved = cases.bytes_moved(shape, dtype, pass_name)
    else:
        moved = None
    median = None if timing is None else timing.median
    return {
        "device": device, "dtype": dtype_name(dtype), "pass": pass_name, "shape": shape.name,
        "elements": shape.elements, "latent_elements": shape.latent_elements, "recon": recon,
        "candidate": candidate, "threads": threads,
        "median_ms": None if timing is None else timing.median * 1e3,
        "iqr_ms": None if timing is None else timing.iqr * 1e3,
        "mean_ms": None if timing is None else timing.mean * 1e3,
        "runs": None if timing is None else timing.runs,
        "number_per_run": None if timing is None else timing.number,
        "bytes_moved": moved,
        "gbps": None if not (moved and median) else moved / median / 1e9,
        "first_call_s": first_call_s, "compile_cache": compile_cache,
        "memory_bytes": memory_bytes, "faults_per_step": faults, "others_cores": None,
        "error": error,
    }


# ---------------------------------------------------------------------------
# Looking rows up

class Results:
    """Rows indexed by case: (device, dtype, pass, shape) -> {(recon, candidate): row}.
    The floor rows (recon "-") serve every recon of their case."""

    def __init__(self, rows):
        self.rows = rows
        self.cases = defaultdict(dict)
        for r in rows:
            self.cases[(r["device"], r["dtype"], r["pass"], r["shape"])][(r["recon"], r["candidate"])] = r

    def ms(self, key, recon, candidate):
        r = self.cases.get(key, {}).get((recon, candidate))
        return None if r is None or r["median_ms"] is None else r["median_ms"]

    def get(self, key, recon, candidate):
        return self.cases.get(key, {}).get((recon, candidate))

    def loss_groups(self, sweep: bool):
        """[(key, recon)] of cases with loss candidates, in reading order."""
        out = []
        for key, cands in self.cases.items():
            if key[2] == "train-step" or cases.is_sweep(key[3]) != sweep:
                continue
            for recon in {rc for rc, _ in cands if rc != "-"}:
                if any((recon, c) in cands for c in cases.LOSS_CANDIDATES):
                    out.append((key, recon))
        return sorted(out, key=lambda kr: order_key(kr[0], kr[1], self.cases[kr[0]]))

    def compare(self, key, recon) -> dict:
        """The figures of one table line."""
        eager, compiled, fused = (self.ms(key, recon, c) for c in cases.LOSS_CANDIDATES)
        floor = self.ms(key, "-", "floor")
        fused_row = self.get(key, recon, "fused")
        return {
            "eager": eager, "compiled": compiled, "fused": fused, "floor": floor,
            "vs_eager": ratio(eager, fused), "vs_compiled": ratio(compiled, fused),
            "of_floor": ratio(fused, floor),
            "gbps": None if fused_row is None else fused_row["gbps"],
        }


def order_key(key, recon, cands):
    device, dtype, pass_name, shape = key
    elements = next(iter(cands.values()))["elements"]
    return (device, _index(DTYPE_ORDER, dtype), _index(PASS_ORDER, pass_name),
            _index(SHAPE_ORDER, shape), elements, _index(RECON_ORDER, recon))


def _index(seq, value):
    return seq.index(value) if value in seq else len(seq)


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


# ---------------------------------------------------------------------------
# Formatting

def fmt_ms(v):
    if v is None:
        return "—"
    if v == 0:
        return "0"
    return f"{v:.3f}" if v < 1 else (f"{v:.2f}" if v < 10 else f"{v:.1f}")


def fmt_delta(v):
    return "—" if v is None else ("+" if v >= 0 else "−") + fmt_ms(abs(v))


def fmt_x(v, digits=1):
    return "—" if v is None else f"{v:.{digits}f}×"


def fmt(v, spec="{:.1f}"):
    return "—" if v is None else spec.format(v)


def fmt_bytes(v):
    if v is None:
        return "—"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if v >= size:
            return f"{v / size:.1f} {unit}"
    return f"{v:.0f} B"


NUMERIC = re.compile(r"^[-—≈\d.,×%/ ]*$")


def text_table(head, body) -> str:
    """Columns padded to width; figures right-aligned, words left-aligned."""
    cols = list(zip(head, *body)) if body else [(h,) for h in head]
    widths = [max(len(str(c)) for c in col) for col in cols]
    numeric = [all(NUMERIC.match(str(c)) for c in col[1:]) for col in cols]

    def line(cells):
        return "  ".join(str(c).rjust(w) if num else str(c).ljust(w)
                         for c, w, num in zip(cells, widths, numeric)).rstrip()
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in body])


def md_table(head, body) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(str(c) for c in r) + " |" for r in body])


# ---------------------------------------------------------------------------
# The tables

TABLE_HEAD = ["shape", "dtype", "pass", "recon", "eager ms", "compiled ms", "fused ms", "floor ms",
              "fused vs eager", "fused vs compiled", "fused GB/s", "fused / floor", "busy"]


def comparison_body(res: Results, device: str, sweep: bool = False):
    body = []
    for key, recon in res.loss_groups(sweep):
        if key[0] != device:
            continue
        d = res.compare(key, recon)
        body.append([key[3], key[1], key[2], recon, fmt_ms(d["eager"]), fmt_ms(d["compiled"]),
                     fmt_ms(d["fused"]), fmt_ms(d["floor"]), fmt_x(d["vs_eager"]),
                     fmt_x(d["vs_compiled"]), fmt(d["gbps"]), fmt_x(d["of_floor"]),
                     busy_mark(res, key, recon)])
    return body


def busy_mark(res: Results, key, recon) -> str:
    """'⚠ 0.8' when other processes used more than BUSY cores while the
    line's figures were taken (its own case or the floor's)."""
    values = [r["others_cores"] for (rc, _), r in res.cases[key].items()
              if rc in (recon, "-") and r.get("others_cores") is not None]
    worst = max(values, default=None)
    return f"⚠ {worst:.2f}" if worst is not None and worst > BUSY else ""


def comparison_table(res: Results, device: str, render, sweep: bool = False) -> str:
    """The comparison table; its 'busy' column only when a line was busy."""
    body = comparison_body(res, device, sweep)
    if any(row[-1] for row in body):
        return render(TABLE_HEAD, body)
    return render(TABLE_HEAD[:-1], [row[:-1] for row in body])


def busy_lines(res: Results) -> int:
    return (sum(bool(busy_mark(res, key, recon)) for sweep in (False, True)
                for key, recon in res.loss_groups(sweep))
            + sum(bool(row[-1]) for row in e2e_body(res)))


def devices_of(res: Results):
    return sorted({key[0] for key in res.cases}, key=lambda d: d != "cpu")


def errors(res: Results):
    return [[r["device"], r["dtype"], r["pass"], r["shape"], r["recon"], r["candidate"], r["error"]]
            for r in res.rows if r["error"]]


TARGETS = [  # (pass, label, figure, comparison, bound)
    ("fwdbwd", "fused ≥ 8× faster than eager", "vs_eager", ">=", 8.0),
    ("fwdbwd", "fused ≥ 1.5× faster than compiled", "vs_compiled", ">=", 1.5),
    ("fwdbwd", "fused within 3× of the floor", "of_floor", "<=", 3.0),
    ("fwd", "fused within 2× of the floor", "of_floor", "<=", 2.0),
]


def targets(res: Results):
    """The issue's targets: CPU float32 BCE at 3.1M and 12.6M elements.
    [(shape, pass, label, measured, ok, busy mark)]; measured None means not run."""
    out = []
    for shape in cases.TARGET_SHAPES:
        for pass_name, label, figure, op, bound in TARGETS:
            key = ("cpu", "float32", pass_name, shape.name)
            if key not in res.cases:
                continue
            value = res.compare(key, "bce")[figure]
            ok = value is not None and (value >= bound if op == ">=" else value <= bound)
            out.append((shape.name, pass_name, label, value, ok, busy_mark(res, key, "bce")))
    return out


def targets_lines(res: Results):
    lines = []
    for shape, pass_name, label, value, ok, busy in targets(res):
        verdict = "PASS" if ok else ("FAIL" if value is not None else "n/a ")
        noisy = f" ({busy} cores of other work: noisy)" if busy else ""
        lines.append(f"[{verdict}] {shape}, {cases.PASS_NAMES[pass_name]}: {label} — measured "
                     f"{fmt_x(value, 2)}{noisy}")
    return lines


E2E_HEAD = ["device", "loss", "training step ms", "step vs eager", "loss alone ms (fwd+bwd)",
            "loss share of step", "busy"]


def e2e_body(res: Results):
    body = []
    for key, cands in res.cases.items():
        if key[2] != "train-step":
            continue
        device = key[0]
        eager_step = res.ms(key, "bce", "eager")
        mnist = (device, "float32", "fwdbwd", cases.MNIST.name)
        for name in cases.LOSS_CANDIDATES:
            step = res.ms(key, "bce", name)
            if step is None:
                continue
            alone = res.ms(mnist, "bce", name)
            share = ratio(alone, step)
            others = cands[("bce", name)]["others_cores"]
            busy = f"⚠ {others:.2f}" if others is not None and others > BUSY else ""
            body.append([device, name, fmt_ms(step), fmt_x(ratio(eager_step, step), 2), fmt_ms(alone),
                         "—" if share is None else f"{100 * share:.0f}%", busy])
    return body


def e2e_table(res: Results, render) -> str:
    body = e2e_body(res)
    if any(row[-1] for row in body):
        return render(E2E_HEAD, body)
    return render(E2E_HEAD[:-1], [row[:-1] for row in body])


def compile_body(res: Results):
    body = []
    for r in res.rows:
        if r["candidate"] == "compiled" and r["first_call_s"] is not None:
            body.append([r["device"], r["shape"], r["dtype"], r["pass"], r["recon"],
                         f"{r['first_call_s']:.2f}", r["compile_cache"] or "—"])
    return body


def memory_body(res: Results):
    """Memory and page faults of each loss candidate on the realistic shapes
    (training, and anything measured on CUDA)."""
    body = []
    for key, recon in res.loss_groups(sweep=False):
        if key[2] != "fwdbwd" and key[0] != "cuda":
            continue
        rows = [res.get(key, recon, c) for c in cases.LOSS_CANDIDATES]
        mem = [fmt_bytes(None if r is None else r["memory_bytes"]) for r in rows]
        faults = [fmt(None if r is None else r["faults_per_step"], "{:.0f}") for r in rows]
        body.append([key[0], key[3], key[1], key[2], recon] + mem + faults)
    return body


MEMORY_HEAD = ["device", "shape", "dtype", "pass", "recon", "eager memory", "compiled memory",
               "fused memory", "eager faults/step", "compiled faults/step", "fused faults/step"]


# ---------------------------------------------------------------------------
# Where the time goes

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
    "The fused kernel runs inside the autograd node torch.library wraps around "
    "`vae_fused::vae_loss_forward`, so its time is listed under `GeneratedBackwardFor_…`; "
    "compiled graphs are listed by inductor's name for them.")


def profile_section(profiles) -> list[str]:
    if not profiles:
        return []
    lines = [PROFILE_NOTE, ""]
    for (device, name), ops in profiles.items():
        lines += [f"**{name}** ({device}, {cases.BIG.name}, float32, BCE, forward+backward):", "",
                  md_table(["op", "self ms per step"], [[f"`{op_label(op)}`", fmt_ms(ms)] for op, ms in ops]), ""]
    return lines


# ---------------------------------------------------------------------------
# Outputs

def load_text(env) -> str:
    parts = []
    if env.get("load") is not None:
        parts.append(f"load average {env['load']:.2f} at the start")
    if env.get("others_cores") is not None:
        parts.append(f"other processes used {env['others_cores']:.2f} cores during the run")
    return ", ".join(parts)


def load_warning(env, res: Results) -> str:
    """Other work on the machine skews every figure: say so next to them."""
    # The load average also counts this benchmark's own recent work; the
    # measured CPU use of other processes does not.
    if env.get("others_cores") is not None and env["others_cores"] > BUSY:
        return (f"WARNING: the machine was busy ({load_text(env)}; quiet is < {BUSY}): "
                "other processes competed for the cores, so these timings are noisy.")
    if busy_lines(res):
        return (f"WARNING: {busy_lines(res)} table line(s) were measured while other processes used "
                f"more than {BUSY} cores (column 'busy'); those figures are noisy.")
    return ""


def header(env) -> str:
    load = f", load average {env['load']:.2f}" if env.get("load") is not None else ""
    return (f"vae_fused {env['vae_fused']} benchmarks — CPU: {env['cpu']} ({env['cores']} cores, "
            f"{env['threads']} torch threads, vae_fused CPU kernels {env['cpu_kernels']}); "
            f"GPU: {env['gpu']}; torch {env['torch']}; {env['date']}{load}")


def stdout_report(rows, env) -> str:
    res = Results(rows)
    warning = load_warning(env, res)
    parts = [warning, ""] if warning else []
    for device in devices_of(res):
        title = (f"{device.upper()} — median ms; fused vs X = X's time / fused's (> 1× = fused is faster); "
                 "fused / floor = fused's time / the floor's")
        parts += [title, comparison_table(res, device, text_table), ""]
    if targets(res):
        parts += ["Targets (CPU, float32, BCE):"] + ["  " + line for line in targets_lines(res)] + [""]
    b = breakdown(res, cases.BIG)
    if b is not None:
        parts += [f"Where the time goes ({cases.BIG.name}, CPU float32):",
                  text_table(["", "ms", ""], breakdown_table(b)), ""]
    if e2e_body(res):
        parts += ["End to end (pytorch/examples VAE 784-400-20, batch 128, Adam):",
                  e2e_table(res, text_table), ""]
    if errors(res):
        parts += ["Errors:", text_table(["device", "dtype", "pass", "shape", "recon", "candidate", "error"],
                                        errors(res))]
    return "\n".join(parts).rstrip()


METHOD = (
    "Times are medians of `torch.utils.benchmark.Timer.blocked_autorange` (IQR and every raw "
    "figure in [results.csv](results.csv)), all candidates in one process on identical inputs. "
    "*eager* is the pytorch/examples loss (`F.binary_cross_entropy(..., reduction=\"sum\")` + "
    "`-0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())`; for `bce_logits`/`mse` the "
    "`F.binary_cross_entropy_with_logits`/`F.mse_loss` sum + the same KL); *compiled* is that "
    "function under `torch.compile(dynamic=False)` (compile time excluded, listed below); *fused* "
    "is `vae_fused.vae_loss`. *forward* runs under `torch.no_grad()`; *forward+backward* times "
    "`loss = fn(recon_x, x, mu, logvar); loss.backward()` and then sets every `.grad` to None, "
    "so each step allocates its gradients as a training loop does (page faults included). "
    "*floor* is a copy that streams the bytes the pass must move at least (forward: read recon_x "
    "and x; forward+backward: also write the recon_x gradient), between buffers allocated once. "
    "*fused vs eager* = eager's time / fused's time (> 1× = fused is faster); *fused / floor* = "
    "fused's time / the floor's; GB/s = those bytes / fused's time. Memory: CPU — bytes autograd keeps from the forward to "
    "the backward besides the inputs (fused keeps the gradient it computed in the forward, which "
    "becomes `.grad` without a copy); CUDA — peak `max_memory_allocated` above what was held.")


def write_all(rows, profiles, env, out_dir: Path, command: str, elapsed: float, plots=True):
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out_dir / "results.csv")
    plot_names = make_plots(rows, out_dir) if plots else []
    (out_dir / "report.md").write_text(markdown(rows, profiles, env, command, elapsed, plot_names))


def write_csv(rows, path: Path):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def markdown(rows, profiles, env, command, elapsed, plot_names) -> str:
    res = Results(rows)
    gpu = "" if env["gpu"] == "none" else f"; GPU: {env['gpu']} (CUDA {env['cuda']})"
    load = f"; {load_text(env)}" if load_text(env) else ""
    lines = [
        "# vae_fused benchmark report", "",
        f"- CPU: {env['cpu']}, {env['cores']} cores, last-level cache {fmt_bytes(env['l3_bytes'])}, "
        f"{env['threads']} torch threads (`torch.get_num_threads()`), vae_fused CPU kernels "
        f"`{env['cpu_kernels']}`{gpu}",
        f"- torch {env['torch']}, vae_fused {env['vae_fused']}; {env['date']}{load}",
        f"- `{command}`, {elapsed:.0f} s", "", METHOD, "",
    ]
    if load_warning(env, res):
        lines += [f"**{load_warning(env, res)}**", ""]
    for device in devices_of(res):
        lines += [f"## {device.upper()}", "", comparison_table(res, device, md_table), ""]
    if targets(res):
        lines += ["## Targets (CPU, float32, BCE, forward+backward unless noted)", "", "```",
                  *targets_lines(res), "```", ""]
    lines += ["## Where the time goes", ""]
    for shape in cases.TARGET_SHAPES:
        b = breakdown(res, shape)
        if b is None:
            continue
        lines += [f"**{shape.name}**, CPU float32:", "",
                  md_table(["", "ms", "what it says"], breakdown_table(b)), ""]
        lines += [f"- {note}" for note in breakdown_notes(b, env["l3_bytes"])] + [""]
    lines += profile_section(profiles)
    if e2e_body(res):
        lines += ["## End to end: a training step of the pytorch/examples VAE", "",
                  "784-400-20-400-784 MLP, batch 128, Adam, float32; the loss alone is the MNIST "
                  "forward+backward row above.", "", e2e_table(res, md_table), ""]
    if memory_body(res):
        lines += ["## Memory and page faults", "",
                  "memory: on the CPU, bytes autograd keeps from the forward to the backward besides "
                  "the inputs (fused keeps the recon_x gradient it computed in the forward; it becomes "
                  "`.grad` without a copy, while eager and compiled allocate theirs during the backward); "
                  "on CUDA, the step's peak allocation. faults/step: minor page faults of the process "
                  "per step (first touches of freshly mapped memory).", "",
                  md_table(MEMORY_HEAD, memory_body(res)), ""]
    if compile_body(res):
        lines += ["## torch.compile warm-up (excluded from the timings)", "",
                  "First call = compile + one step; cache = inductor's FX graph cache.", "",
                  md_table(["device", "shape", "dtype", "pass", "recon", "first call s", "cache"],
                           compile_body(res)), ""]
    for device in devices_of(res):
        if comparison_body(res, device, sweep=True):
            lines += [f"## Size sweep ({device.upper()}, batch 64 × D)", "",
                      comparison_table(res, device, md_table, sweep=True), ""]
    lines += [f"![{name}]({name})" for name in plot_names]
    if errors(res):
        lines += ["", "## Errors", "",
                  md_table(["device", "dtype", "pass", "shape", "recon", "candidate", "error"], errors(res))]
    return "\n".join(lines).rstrip() + "\n"


PLOT_STYLES = [("eager", "o-", "C0"), ("compiled", "s-", "C1"), ("fused", "^-", "C2")]


def make_plots(rows, out_dir: Path) -> list[str]:
    """Time vs size, log-log, one PNG per (device, pass, dtype), the floor as a
    line. Returns the file names."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("benchmarks: matplotlib is not installed; no plots")
        return []
    for old in out_dir.glob("sizes_*.png"):  # a previous run's, possibly of other dtypes
        old.unlink()
    sweep = [r for r in rows if cases.is_sweep(r["shape"]) and r["pass"] in cases.PASS_TENSORS
             and r["median_ms"] is not None and r["recon"] in ("bce", "-")]
    names = []
    for device, pass_name, dtype in sorted({(r["device"], r["pass"], r["dtype"]) for r in sweep}):
        sel = [r for r in sweep if (r["device"], r["pass"], r["dtype"]) == (device, pass_name, dtype)]

        def points(candidate):
            return sorted((r["elements"], r["median_ms"]) for r in sel if r["candidate"] == candidate)

        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for cand, style, color in PLOT_STYLES:
            pts = points(cand)
            if pts:
                ax.plot(*zip(*pts), style, color=color, label=cand)
        floor = points("floor")
        if floor:
            ax.plot(*zip(*floor), "--", color="k", label="floor (copy of the same bytes)")
        fresh, reused = dict(points("fill-fresh")), dict(points("fill-reused"))
        with_alloc = [(n, ms + fresh[n] - reused[n]) for n, ms in floor if n in fresh and n in reused]
        if with_alloc:
            ax.plot(*zip(*with_alloc), ":", color="0.4", label="floor incl. fresh gradient")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("elements of recon_x (B·D)")
        ax.set_ylabel("median time per step (ms)")
        ax.set_title(f"{cases.PASS_NAMES[pass_name]} · {dtype} · {device}, BCE")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        name = f"sizes_{device}_{pass_name}_{dtype}.png"
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        names.append(name)
    return names
