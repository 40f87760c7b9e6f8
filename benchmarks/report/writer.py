"""The outputs: the stdout report, results.csv, report.md (and the plots,
plots.py). Every figure shown is read from the rows (nothing here is measured
or assumed)."""
from __future__ import annotations

import csv
from pathlib import Path

from benchmarks import cases
from benchmarks.report import notes, sections, tables
from benchmarks.report.breakdown import breakdown, breakdown_notes, breakdown_table, profile_section
from benchmarks.report.fmt import md_table, text_table
from benchmarks.report.plots import make_plots
from benchmarks.report.rows import FIELDS, Results

TITLE = ("{device} — median ms; fused vs X = X's time / fused's (> 1× = fused is faster); "
         "fused / floor = fused's time / the floor's")


def stdout_report(rows, env) -> str:
    res = Results(rows)
    warning = notes.load_warning(env, res)
    parts = [warning, ""] if warning else []
    for device in tables.devices_of(res):
        parts += [TITLE.format(device=device.upper()), tables.comparison_table(res, device, text_table), ""]
    suspect, _ = tables.suspects(res)
    if tables.suspect_text(res, env):
        parts += tables.suspect_text(res, env)
        if suspect:
            parts += [text_table(tables.SUSPECT_HEAD, suspect)]
        parts += [""]
    if tables.disagreements(res):
        parts += [tables.DISAGREE_TEXT, text_table(tables.DISAGREE_HEAD, tables.disagreements(res)), ""]
    target_lines = tables.targets_lines(res)
    if target_lines:
        parts += ["Targets (CPU, float32, BCE: issue 11's \"Done when\"):"] + ["  " + line for line in target_lines] + [""]
    if sections.host_body(res):
        parts += [f"Host overhead — {sections.HOST_NOTE}",
                  text_table(sections.HOST_HEAD, sections.host_body(res)), ""]
    if sections.binary_body(res):
        parts += ["Binary vs continuous targets (BCE):",
                  text_table(sections.BINARY_HEAD, sections.binary_body(res)), ""]
    b = breakdown(res, cases.BIG)
    if b is not None:
        parts += [f"Where the time goes ({cases.BIG.name}, CPU float32):",
                  text_table(["", "ms", ""], breakdown_table(b)), ""]
    if sections.e2e_body(res):
        parts += ["End to end (pytorch/examples VAE 784-400-20, batch 128, Adam):",
                  sections.e2e_table(res, text_table), ""]
    if tables.errors(res):
        parts += ["Errors:", text_table(tables.ERRORS_HEAD, tables.errors(res))]
    return "\n".join(parts).rstrip()


def write_all(rows, profiles, env, out_dir: Path, command: str, elapsed: float, plots=True) -> list[str]:
    """Writes results.csv, the plots (unless plots is False) and report.md;
    returns the names of the plots written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(rows, env, out_dir / "results.csv")
    plot_names = make_plots(rows, out_dir) if plots else []
    (out_dir / "report.md").write_text(markdown(rows, profiles, env, command, elapsed, plot_names))
    return plot_names


def write_csv(rows, env, path: Path):
    machine = {"cpu": env["cpu"], "cpu_kernels": env["cpu_kernels"], "inductor_isa": env.get("inductor_isa", "")}
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in {**r, **machine}.items()})


def markdown(rows, profiles, env, command, elapsed, plot_names) -> str:
    res = Results(rows)
    lines = ["# vae_fused benchmark report", "", *notes.environment_lines(env, command, elapsed), "",
             notes.METHOD, ""]
    if any(recon in ("ldm", "vdvae") for _, recon in res.loss_groups(sweep=False)):
        lines += [notes.FAMILY_METHOD, ""]
    warning = notes.load_warning(env, res)
    if warning:
        lines += [f"**{warning}**", ""]
    for device in tables.devices_of(res):
        lines += [f"## {device.upper()}", "", tables.comparison_table(res, device, md_table), ""]
    suspect, _ = tables.suspects(res)
    if tables.suspect_text(res, env):
        lines += ["## Suspect compiled baselines", "", *tables.suspect_text(res, env), ""]
        if suspect:
            lines += [md_table(tables.SUSPECT_HEAD, suspect), ""]
    if tables.disagreements(res):
        lines += ["## Values that disagree with eager", "", tables.DISAGREE_TEXT, "",
                  md_table(tables.DISAGREE_HEAD, tables.disagreements(res)), ""]
    target_lines = tables.targets_lines(res)
    if target_lines:
        lines += ["## Targets (CPU, float32, BCE: issue 11's \"Done when\")", "", "```",
                  *target_lines, "```", ""]
    lines += breakdown_section(res, env, profiles)
    if sections.host_body(res):
        lines += ["## Host overhead", "", sections.HOST_NOTE, "",
                  md_table(sections.HOST_HEAD, sections.host_body(res)), ""]
    if sections.binary_body(res):
        lines += ["## Binary vs continuous targets", "", sections.BINARY_NOTE, "",
                  md_table(sections.BINARY_HEAD, sections.binary_body(res)), ""]
    if sections.e2e_body(res):
        lines += ["## End to end: a training step of the pytorch/examples VAE", "",
                  "784-400-20-400-784 MLP (`examples/models.py` `ExampleVAE`), batch 128, Adam, float32; "
                  "the loss alone is the MNIST forward+backward row above.", "",
                  sections.e2e_table(res, md_table), ""]
    if sections.memory_body(res):
        lines += ["## Memory and page faults", "",
                  "memory: on the CPU, bytes autograd keeps from the forward to the backward besides "
                  "the inputs (fused keeps the recon_x gradient it computed in the forward; it becomes "
                  "`.grad` without a copy, while eager and compiled allocate theirs during the backward); "
                  "on CUDA, the step's peak allocation. faults/step: minor page faults of the process "
                  "per step (first touches of freshly mapped memory).", "",
                  md_table(sections.MEMORY_HEAD, sections.memory_body(res)), ""]
    if sections.compile_body(res):
        lines += ["## torch.compile warm-up (excluded from the timings)", "",
                  "First call = compile + one step; cache = inductor's FX graph cache.", "",
                  md_table(sections.COMPILE_HEAD, sections.compile_body(res)), ""]
    for device in tables.devices_of(res):
        if tables.comparison_body(res, device, sweep=True):
            lines += [f"## Size sweep ({device.upper()}, batch 64 × D)", "",
                      tables.comparison_table(res, device, md_table, sweep=True), ""]
    lines += [f"![{name}]({name})" for name in plot_names]
    if tables.errors(res):
        lines += ["", "## Errors", "", md_table(tables.ERRORS_HEAD, tables.errors(res))]
    return "\n".join(lines).rstrip() + "\n"


def breakdown_section(res: Results, env, profiles) -> list[str]:
    """'Where the time goes' at the target shapes, and the op profiles."""
    lines = []
    for shape in cases.TARGET_SHAPES:
        b = breakdown(res, shape)
        if b is None:
            continue
        lines += [f"**{shape.name}**, CPU float32:", "",
                  md_table(["", "ms", "what it says"], breakdown_table(b)), ""]
        lines += [f"- {note}" for note in breakdown_notes(b, env["l3_bytes"])] + [""]
    if lines or profiles:
        lines = ["## Where the time goes", ""] + lines
    return lines + profile_section(profiles)
