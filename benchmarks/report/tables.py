"""The comparison tables (eager / compiled / fused / floor per case), the
marks on them (busy machine, suspect compiled baseline), the issue's targets
and the errors."""
from __future__ import annotations

from benchmarks import cases
from benchmarks.report.fmt import fmt, fmt_ms, fmt_range, fmt_x, median_and_range
from benchmarks.report.rows import BUSY, Results, ratio

TABLE_HEAD = ["shape", "dtype", "pass", "recon", "eager ms", "compiled ms", "fused ms", "floor ms",
              "fused vs eager", "fused vs compiled", "fused GB/s", "fused / floor", "busy"]
# A compiled baseline less than this much faster than eager is suspect: inductor
# may not have vectorized (no vector ISA picked, ATEN_CPU_CAPABILITY, a graph
# break), so 'fused vs compiled' would overstate the gain over a working compile.
SUSPECT = 1.3
SUSPECT_MARK = " †"


def is_suspect(d) -> bool:
    return d["compiled_vs_eager"] is not None and d["compiled_vs_eager"] < SUSPECT


def comparison_body(res: Results, device: str, sweep: bool = False):
    body = []
    for key, recon in res.loss_groups(sweep):
        if key[0] != device:
            continue
        d = res.compare(key, recon)
        compiled = fmt_ms(d["compiled"]) + (SUSPECT_MARK if is_suspect(d) else "")
        body.append([key[3], key[1], key[2], recon, fmt_ms(d["eager"]), compiled,
                     fmt_ms(d["fused"]), fmt_ms(d["floor"]), fmt_x(d["vs_eager"]),
                     fmt_x(d["vs_compiled"]), fmt(d["gbps"]), fmt_x(d["of_floor"]),
                     busy_mark(res, key, recon)])
    return body


def busy_mark(res: Results, key, recon) -> str:
    """'⚠ 0.8' when other processes used more than BUSY cores while the
    line's figures were taken (its own case or the floor's)."""
    values = [r["others_cores"] for (rc, cand), r in res.cases[key].items()
              if rc in (recon, "-") and not cases.is_paired(cand) and r.get("others_cores") is not None]
    worst = max(values, default=None)
    return f"⚠ {worst:.2f}" if worst is not None and worst > BUSY else ""


def comparison_table(res: Results, device: str, render, sweep: bool = False) -> str:
    """The comparison table; its 'busy' column only when a line was busy."""
    body = comparison_body(res, device, sweep)
    if any(row[-1] for row in body):
        return render(TABLE_HEAD, body)
    return render(TABLE_HEAD[:-1], [row[:-1] for row in body])


def devices_of(res: Results):
    return sorted({key[0] for key in res.cases}, key=lambda d: d != "cpu")


def errors(res: Results):
    return [[r["device"], r["dtype"], r["pass"], r["shape"], r["recon"], r["candidate"], r["error"]]
            for r in res.rows if r["error"]]


ERRORS_HEAD = ["device", "dtype", "pass", "shape", "recon", "candidate", "error"]


# ---------------------------------------------------------------------------
# Suspect compiled baselines

def suspects(res: Results):
    """(lines, sweep count): the table lines outside the sweep whose compiled
    time is within SUSPECT of eager's, as [device, shape, dtype, pass, recon,
    eager/compiled], and how many size-sweep lines are."""
    lines = []
    for key, recon in res.loss_groups(sweep=False):
        d = res.compare(key, recon)
        if is_suspect(d):
            lines.append([key[0], key[3], key[1], key[2], recon, fmt_x(d["compiled_vs_eager"], 2)])
    in_sweep = sum(is_suspect(res.compare(key, recon)) for key, recon in res.loss_groups(sweep=True))
    return lines, in_sweep


def suspect_text(res: Results, env) -> list[str]:
    """The explanation above the list of suspect lines, or [] when none is."""
    lines, in_sweep = suspects(res)
    if not lines and not in_sweep:
        return []
    isa = env.get("inductor_isa") or "none (scalar code)"
    where = f"{len(lines)} line(s)" + (f" and {in_sweep} size-sweep line(s)" if in_sweep else "")
    return [f"SUSPECT compiled baseline ({SUSPECT_MARK.strip()}): on {where} torch.compile is less than "
            f"{SUSPECT}× faster than eager (torch.compile's vector ISA here: {isa}). Either inductor did not "
            "vectorize the loss (no vector ISA, ATEN_CPU_CAPABILITY, a graph break) or the case is bound by "
            "per-call overhead; 'fused vs compiled' on these lines may overstate the gain over a working "
            "compile."]


SUSPECT_HEAD = ["device", "shape", "dtype", "pass", "recon", "compiled vs eager"]


# ---------------------------------------------------------------------------
# The targets (CPU, float32, BCE): issue 11's "Done when"

TARGETS = [  # (shape, pass, label, figure, comparison, bound)
    *[(shape, "fwdbwd", label, figure, ">=", bound)
      for shape in cases.TARGET_SHAPES
      for label, figure, bound in (("fused ≥ 10× faster than eager", "vs_eager", 10.0),
                                   ("fused ≥ 2× faster than compiled", "vs_compiled", 2.0))],
    *[(shape, "fwd", "fused ≥ 1.5× faster than compiled", "vs_compiled", ">=", 1.5)
      for shape in cases.TARGET_SHAPES],
    (cases.MNIST, "fwdbwd", "fused ≥ 1.5× faster than compiled", "vs_compiled", ">=", 1.5),
    # at most 0.7x eager's time per call
    (cases.HOST, "fwdbwd", "fused ≥ 1/0.7 = 1.43× faster than eager", "vs_eager", ">=", 1 / 0.7),
    (cases.M3_BINARY, "fwdbwd", "binary targets ≥ 1.5× faster than continuous", "vs_continuous", ">=", 1.5),
]


def _figure(res: Results, key, figure):
    """(value, how it was measured: "" or a note for the target line)."""
    # the alternated rounds where they were run (binary against continuous
    # targets; fused against eager at the host-overhead size): the table's two
    # rows are minutes apart, and this machine class drifts
    alternated = figure == "vs_continuous" or (figure == "vs_eager" and key[3] == cases.HOST.name)
    paired = res.paired_ratios(key) if alternated else []
    if paired:
        median, lowest, highest = median_and_range(1 / r for r in paired)
        return median, f" (median of {len(paired)} alternated rounds, {fmt_range(lowest, highest)})"
    if figure == "vs_continuous":
        twin = key[:3] + (cases.BINARY_OF[key[3]],)
        return ratio(res.ms(twin, "bce", "fused"), res.ms(key, "bce", "fused")), ""
    return res.compare(key, "bce")[figure], ""


def targets(res: Results):
    """[(shape, pass, label, measured, ok, busy mark, how it was measured)] for
    the targets whose case was run; measured None means a candidate was missing."""
    out = []
    for shape, pass_name, label, figure, op, bound in TARGETS:
        key = ("cpu", "float32", pass_name, shape.name)
        if key not in res.cases:
            continue
        value, how = _figure(res, key, figure)
        ok = value is not None and (value >= bound if op == ">=" else value <= bound)
        out.append((shape.name, pass_name, label, value, ok, busy_mark(res, key, "bce"), how))
    return out


def targets_lines(res: Results):
    lines = []
    for shape, pass_name, label, value, ok, busy, how in targets(res):
        verdict = "PASS" if ok else ("FAIL" if value is not None else "n/a ")
        noisy = f" ({busy} cores of other work: noisy)" if busy else ""
        lines.append(f"[{verdict}] {shape}, {cases.PASS_NAMES[pass_name]}: {label} — measured "
                     f"{fmt_x(value, 2)}{how}{noisy}")
    return lines


# ---------------------------------------------------------------------------
# Values: every candidate must compute eager's loss

VALUE_TOLERANCE = {"float64": 1e-9, "float32": 1e-4, "float16": 1e-2, "bfloat16": 2e-2}
DISAGREE_HEAD = ["device", "dtype", "pass", "shape", "recon", "candidate", "loss", "eager's loss",
                 "relative difference"]


def disagreements(res: Results):
    """Lines of candidates whose first-call loss differs from eager's (same
    inputs) by more than the dtype's tolerance: a timing of another loss."""
    out = []
    for r in res.rows:
        diff = r.get("rel_diff_vs_eager")
        if diff is None or diff <= VALUE_TOLERANCE.get(r["dtype"], 1e-4):
            continue
        key = (r["device"], r["dtype"], r["pass"], r["shape"])
        eager = res.get(key, r["recon"], "eager")
        out.append([r["device"], r["dtype"], r["pass"], r["shape"], r["recon"], r["candidate"],
                    f"{r['value']:.7g}", f"{eager['value']:.7g}", f"{diff:.1e}"])
    return out


DISAGREE_TEXT = ("DISAGREE: these candidates' loss differs from eager's on the same inputs by more than "
                 + ", ".join(f"{v:g} ({k})" for k, v in VALUE_TOLERANCE.items())
                 + " relative: their timings are not of the same loss.")
