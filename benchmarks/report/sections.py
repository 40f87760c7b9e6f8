"""The smaller tables: host overhead (µs), binary vs continuous targets, the
end-to-end training step, torch.compile's warm-up, memory and page faults."""
from __future__ import annotations


from benchmarks import cases
from benchmarks.report.fmt import fmt, fmt_bytes, fmt_ms, fmt_range, fmt_us, fmt_x, median_and_range
from benchmarks.report.rows import BUSY, Results, ratio
from benchmarks.report.tables import busy_mark

HOST_HEAD = ["device", "pass", "eager µs", "compiled µs", "fused µs", "fused vs eager", "fused vs compiled",
             "alternated: fused vs eager, median (range)"]
HOST_NOTE = (f"{cases.HOST.name} (float32, BCE): a batch this small measures what a call costs the host "
             "(Python, dispatch, autograd, thread start-up), not the arithmetic. *alternated* times eager "
             f"and the fused op in {cases.PAIRED_ROUNDS} alternated rounds and gives the median and the range "
             "of the rounds' ratios, which the target checks (this machine class's host speed drifts "
             "between minutes).")


def _alternated(ratios) -> str:
    """'median (lowest–highest)' of the alternated rounds' ratios, '—' without rounds."""
    summary = median_and_range(ratios)
    if summary is None:
        return "—"
    median, lowest, highest = summary
    return f"{fmt_x(median, 2)} ({fmt_range(lowest, highest)})"


def host_body(res: Results):
    body = []
    for key, recon in res.loss_groups(sweep=False, host=True):
        d = res.compare(key, recon)
        body.append([key[0], key[2], fmt_us(d["eager"]), fmt_us(d["compiled"]), fmt_us(d["fused"]),
                     fmt_x(d["vs_eager"], 2), fmt_x(d["vs_compiled"], 2),
                     _alternated(1 / r for r in res.paired_ratios(key, recon))])
    return body


BINARY_HEAD = ["shape", "device", "dtype", "pass", "eager continuous ms", "eager binary ms",
               "fused continuous ms", "fused binary ms", "fused binary / continuous",
               "alternated: median (range)"]
BINARY_NOTE = ("BCE with targets exactly 0 or 1 (binarized images) against the same shape with "
               "targets in [0, 1]; < 1× = the binary targets are cheaper for the fused op. The ms "
               "columns are the main table's, taken minutes apart; *alternated* times the fused op "
               f"on the two in {cases.PAIRED_ROUNDS} alternated rounds and gives the median and the "
               "range of the rounds' ratios, which the target checks (this machine class's memory "
               "bandwidth drifts between minutes).")


def binary_body(res: Results):
    body = []
    for key, recon in res.loss_groups(sweep=False):
        twin = cases.BINARY_OF.get(key[3])
        if twin is None:
            continue
        cont = key[:3] + (twin,)
        eager_c, eager_b = res.ms(cont, recon, "eager"), res.ms(key, recon, "eager")
        fused_c, fused_b = res.ms(cont, recon, "fused"), res.ms(key, recon, "fused")
        alternated = _alternated(res.paired_ratios(key, recon))
        body.append([twin, key[0], key[1], key[2], fmt_ms(eager_c), fmt_ms(eager_b),
                     fmt_ms(fused_c), fmt_ms(fused_b), fmt_x(ratio(fused_b, fused_c), 2), alternated])
    return body


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


def busy_lines(res: Results) -> int:
    return (sum(bool(busy_mark(res, key, recon)) for sweep in (False, True)
                for key, recon in res.loss_groups(sweep))
            + sum(bool(row[-1]) for row in e2e_body(res)))


COMPILE_HEAD = ["device", "shape", "dtype", "pass", "recon", "first call s", "cache"]


def compile_body(res: Results):
    body = []
    for r in res.rows:
        if r["candidate"] == "compiled" and r["first_call_s"] is not None:
            body.append([r["device"], r["shape"], r["dtype"], r["pass"], r["recon"],
                         f"{r['first_call_s']:.2f}", r["compile_cache"] or "—"])
    return body


MEMORY_HEAD = ["device", "shape", "dtype", "pass", "recon", "eager memory", "compiled memory",
               "fused memory", "eager faults/step", "compiled faults/step", "fused faults/step"]


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
