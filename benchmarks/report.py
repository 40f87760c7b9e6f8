"""Turns measurements into the stdout table, results.csv, report.md and plots."""
from __future__ import annotations

import csv
import datetime
import os
import platform
import re
from collections import defaultdict
from pathlib import Path

import torch

import vae_fused
from benchmarks import cases

FIELDS = ["shape", "elements", "dtype", "device", "pass", "candidate", "recon", "median_ms",
          "iqr_ms", "compile_s", "memory_bytes", "error"]


def row(shape, dtype, device, pass_name, cand, median=None, iqr=None, compile_s=0.0, memory=0, error=""):
    return {
        "shape": shape.name, "elements": shape.elements, "dtype": str(dtype).replace("torch.", ""),
        "device": device, "pass": pass_name, "candidate": cand.name, "recon": cand.recon,
        "median_ms": None if median is None else median * 1e3,
        "iqr_ms": None if iqr is None else iqr * 1e3,
        "compile_s": round(compile_s, 3), "memory_bytes": memory, "error": error,
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(threads: int) -> dict:
    model = cpu_model()
    short = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")[:24]
    env = {
        "cpu": model, "cores": os.cpu_count(), "threads": threads, "torch": torch.__version__,
        "vae_fused": vae_fused.__version__, "cpu_kernels": vae_fused.cpu_capability(),
        "date": datetime.date.today().isoformat(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
    }
    env["tag"] = f"cpu-{short}-{threads}t"
    return env


def header(env) -> str:
    return (f"vae_fused {env['vae_fused']} benchmarks — CPU: {env['cpu']} ({env['cores']} cores, "
            f"{env['threads']} torch threads, kernels {env['cpu_kernels']}), GPU: {env['gpu']}, "
            f"torch {env['torch']}, {env['date']}")


def _groups(rows):
    """(shape, elements, dtype, device, pass, recon) -> {candidate: row}, with the
    floor and fresh-buffer rows shared by every recon of the case."""
    shared = defaultdict(dict)
    groups = defaultdict(dict)
    for r in rows:
        key = (r["shape"], r["elements"], r["dtype"], r["device"], r["pass"])
        if r["recon"] == "-":
            shared[key][r["candidate"]] = r
        else:
            groups[key + (r["recon"],)][r["candidate"]] = r
    for key, cands in groups.items():
        cands.update(shared[key[:5]])
    return groups


def _ms(cands, name):
    r = cands.get(name)
    return None if r is None or r["median_ms"] is None else r["median_ms"]


def _ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def derived(key, cands):
    shape, elements, dtype, device, pass_name, recon = key
    fused, eager, compiled, floor = (_ms(cands, n) for n in ("fused", "eager", "compiled", "floor"))
    itemsize = torch.empty((), dtype=getattr(torch, dtype)).element_size()
    moved = cases.PASS_TENSORS[pass_name] * elements * itemsize
    return {
        "vs_eager": _ratio(eager, fused), "vs_compiled": _ratio(compiled, fused),
        "gbps": None if fused is None else moved / (fused * 1e-3) / 1e9,
        "of_floor": _ratio(fused, floor),  # fused time as a multiple of the floor
        "fused": fused, "eager": eager, "compiled": compiled, "floor": floor,
        "fresh": _ms(cands, "fresh-buffer"),
    }


def _fmt(v, spec="{:.2f}", none="—"):
    return none if v is None else spec.format(v)


def table_rows(rows, realistic_only=True):
    sweep_names = {s for s in (r["shape"] for r in rows) if s.startswith("2^")}
    out = []
    for key, cands in sorted(_groups(rows).items(), key=lambda kv: (kv[0][3], kv[0][2], kv[0][4], kv[0][5], kv[0][1])):
        if realistic_only and key[0] in sweep_names:
            continue
        d = derived(key, cands)
        out.append([key[0], key[2], key[3], key[4], key[5], _fmt(d["eager"], "{:.3f}"),
                    _fmt(d["compiled"], "{:.3f}"), _fmt(d["fused"], "{:.3f}"), _fmt(d["floor"], "{:.3f}"),
                    _fmt(d["vs_eager"], "{:.1f}×"), _fmt(d["vs_compiled"], "{:.2f}×"),
                    _fmt(d["gbps"], "{:.1f}"), _fmt(d["of_floor"], "{:.1f}×")])
    return out


TABLE_HEAD = ["shape", "dtype", "device", "pass", "recon", "eager ms", "compiled ms", "fused ms", "floor ms",
              "fused vs eager", "fused vs compiled", "fused GB/s", "fused / floor"]


def _text_table(head, body):
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)] if body else [len(h) for h in head]
    line = lambda cells: "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in body])


def _md_table(head, body):
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(str(c) for c in r) + " |" for r in body])


def e2e_rows(e2e, rows):
    out = []
    for device, times in e2e.items():
        for name, seconds in times.items():
            loss = [r for r in rows if r["shape"] == "MNIST 128x784" and r["dtype"] == "float32"
                    and r["device"] == device and r["pass"] == "fwdbwd" and r["candidate"] == name
                    and r["recon"] == "bce" and r["median_ms"] is not None]
            share = None if not loss else loss[0]["median_ms"] / (seconds * 1e3) * 100
            out.append([device, name, f"{seconds * 1e3:.3f}", _fmt(share, "{:.0f}%")])
    return out


E2E_HEAD = ["device", "loss", "training step ms (VAE 784-400-20, batch 128, Adam)", "loss fwd+bwd share"]


def stdout_table(rows, e2e) -> str:
    return (_text_table(TABLE_HEAD, table_rows(rows)) + "\n\nEnd to end:\n"
            + _text_table(E2E_HEAD, e2e_rows(e2e, rows)))


def targets(rows):
    """The CPU float32 targets of the benchmark issue, at 3M and 12.6M."""
    checks = []
    for key, cands in _groups(rows).items():
        shape, _, dtype, device, pass_name, recon = key
        if shape not in cases.TARGET_SHAPES or dtype != "float32" or device != "cpu" or recon != "bce":
            continue
        d = derived(key, cands)
        if pass_name == "fwdbwd":
            checks.append((shape, "fwd+bwd: fused ≥ 8× eager", d["vs_eager"], d["vs_eager"] is not None and d["vs_eager"] >= 8))
            checks.append((shape, "fwd+bwd: fused ≥ 1.5× compiled", d["vs_compiled"], d["vs_compiled"] is not None and d["vs_compiled"] >= 1.5))
            checks.append((shape, "fwd+bwd: fused ≤ 3× floor", d["of_floor"], d["of_floor"] is not None and d["of_floor"] <= 3))
        else:
            checks.append((shape, "fwd: fused ≤ 2× floor", d["of_floor"], d["of_floor"] is not None and d["of_floor"] <= 2))
    return sorted(checks)


def targets_text(rows) -> str:
    lines = ["Targets (CPU float32, BCE):"]
    for shape, what, value, ok in targets(rows):
        lines.append(f"  [{'PASS' if ok else 'MISS'}] {shape}: {what} — measured {_fmt(value, '{:.2f}')}")
    return "\n".join(lines)


def where_the_time_goes(rows) -> str:
    groups = _groups(rows)
    lines = []
    for shape in cases.TARGET_SHAPES:
        keys = {k[4]: k for k in groups
                if k[0] == shape and k[2] == "float32" and k[3] == "cpu" and k[5] == "bce"}
        if "fwd" not in keys or "fwdbwd" not in keys:
            continue
        fwd, fb = derived(keys["fwd"], groups[keys["fwd"]]), derived(keys["fwdbwd"], groups[keys["fwdbwd"]])
        mse_key = keys["fwd"][:5] + ("mse",)
        streaming = _ms(groups[mse_key], "fused") if mse_key in groups else None
        elements = keys["fwd"][1]
        per_element = None if fwd["fused"] is None else fwd["fused"] * 1e6 / elements
        extra = None if fb["fused"] is None or fwd["fused"] is None else fb["fused"] - fwd["fused"]
        lines += [
            f"**{shape}** (float32, CPU):",
            f"- forward: fused {_fmt(fwd['fused'])} ms against a floor of {_fmt(fwd['floor'], '{:.3f}')} ms "
            f"({_fmt(per_element, '{:.2f}')} ns per element). The same fused loop with MSE's arithmetic "
            f"(a subtract and a multiply) takes {_fmt(streaming)} ms: that is what reading the two tensors "
            "costs this loop; the rest is BCE's arithmetic, two logs (log p, log(1 − p)) and a division "
            "per element. The second vCPU adds no throughput on this machine (torch's own `torch.log` "
            "runs at the same speed on 1 and 2 threads), so only cheaper arithmetic would close the gap.",
            f"- forward+backward: fused {_fmt(fb['fused'])} ms, the forward plus {_fmt(extra)} ms for the "
            "gradient (a division per element, one more stream to memory) and autograd's bookkeeping; the "
            "backward hands over the gradient computed in the forward when the upstream gradient is 1.",
            f"- first touch of a freshly allocated gradient-sized buffer: {_fmt(fb['fresh'])} ms. A loss "
            "whose gradient buffer is new every step pays this every step once buffers are big enough for "
            "glibc to return them to the OS on free (> 32 MB); vae_fused recycles its gradient buffers "
            "through a two-block pool and pays it once.",
            "",
        ]
    if lines:
        lines.append(
            "At 3M elements both tensors (25 MB) sit in the 32 MB L3 cache, so the copy \"floor\" there "
            "is cache bandwidth, not memory bandwidth; no kernel that evaluates two logs per element "
            "on one core reaches it.")
    return "\n".join(lines)


def write_all(rows, e2e, env, out_dir: Path, args, elapsed, plots=True):
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    compile_rows = sorted({(r["shape"], r["pass"], r["dtype"], r["compile_s"]) for r in rows
                           if r["candidate"] == "compiled" and r["compile_s"]})
    lines = [
        "# vae_fused benchmark report", "",
        f"- CPU: {env['cpu']}, {env['cores']} cores, {env['threads']} torch threads, "
        f"vae_fused CPU kernels: {env['cpu_kernels']}",
        f"- GPU: {env['gpu']}", f"- torch {env['torch']}, vae_fused {env['vae_fused']}, {env['date']}",
        f"- command: `python -m benchmarks {' '.join(os.sys.argv[1:])}` ({elapsed:.0f} s)", "",
        "Times are medians of `torch.utils.benchmark` blocked_autorange (IQR in results.csv). "
        "Forward+backward includes `.backward()` and fresh `.grad` each step (set_to_none). "
        "floor = a copy streaming the bytes of the minimal pass (fwd: read recon_x and x; "
        "fwd+bwd: also write the gradient). Ratios > 1× mean fused is faster.", "",
        _md_table(TABLE_HEAD, table_rows(rows)), "",
        "## Targets", "", "```", targets_text(rows), "```", "",
        "## Where the time goes", "", where_the_time_goes(rows), "",
        "## End to end", "", _md_table(E2E_HEAD, e2e_rows(e2e, rows)), "",
        "## torch.compile warm-up (excluded from the timings)", "",
        _md_table(["shape", "pass", "dtype", "compile s"], [list(r) for r in compile_rows]), "",
        "## Size sweep", "",
        _md_table(TABLE_HEAD, [r for r in table_rows(rows, realistic_only=False) if r[0].startswith("2^")]),
    ]
    if plots:
        for name in make_plots(rows, out_dir):
            lines += ["", f"![{name}]({name})"]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")


def make_plots(rows, out_dir: Path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    names = []
    sweep = [r for r in rows if r["shape"].startswith("2^") and r["median_ms"] is not None]
    for device, pass_name, dtype in sorted({(r["device"], r["pass"], r["dtype"]) for r in sweep}):
        fig, ax = plt.subplots(figsize=(6, 4.2))
        sel = [r for r in sweep if (r["device"], r["pass"], r["dtype"]) == (device, pass_name, dtype)]
        for cand, style in (("eager", "o-"), ("compiled", "s-"), ("fused", "^-"), ("floor", "k--")):
            pts = sorted((r["elements"], r["median_ms"]) for r in sel if r["candidate"] == cand)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=cand)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("elements of recon_x (B·D)")
        ax.set_ylabel("median time (ms)")
        ax.set_title(f"{pass_name} · {dtype} · {device}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        name = f"sizes_{device}_{pass_name}_{dtype}.png"
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        names.append(name)
    return names
