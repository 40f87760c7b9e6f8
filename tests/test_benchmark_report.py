"""The benchmark report's arithmetic on made-up timings: what a target line
prints must follow from the rows, in particular the binary-target ratio, which
comes from the alternated rounds when they were run (benchmarks/runner.py
run_paired) and from the main table's two rows otherwise."""
import pytest
import torch

pytest.importorskip("benchmarks.report")

from benchmarks import cases  # noqa: E402
from benchmarks.report import make_row  # noqa: E402
from benchmarks.report import sections, tables  # noqa: E402
from benchmarks.report.rows import Results  # noqa: E402
from benchmarks.timing import Timing  # noqa: E402


def row(shape, candidate, ms, pass_name="fwdbwd"):
    return make_row(shape=shape, dtype=torch.float32, device="cpu", pass_name=pass_name, recon="bce",
                    candidate=candidate, threads=2, timing=Timing(ms / 1e3, 0.0, ms / 1e3, 5, 1))


def binary_target(res):
    (line,) = [t for t in tables.targets(res) if t[0] == cases.M3_BINARY.name]
    return line


def test_binary_target_uses_the_main_rows_without_alternated_rounds():
    res = Results([row(cases.M3, "fused", 1.2), row(cases.M3_BINARY, "fused", 0.6)])
    _, _, _, value, ok, _, how = binary_target(res)
    assert value == pytest.approx(2.0) and ok and how == ""


def test_binary_target_takes_the_median_of_the_alternated_rounds():
    # the main rows (taken minutes apart) say 2x; the rounds say 1.25x-1.6x
    rows = [row(cases.M3, "fused", 1.2), row(cases.M3_BINARY, "fused", 0.6)]
    for i, (cont, binary) in enumerate([(1.0, 0.8), (1.0, 0.75), (1.6, 1.0), (1.0, 0.7), (0.9, 0.7)], 1):
        name = cases.paired_candidate(i)
        rows += [row(cases.M3, name, cont), row(cases.M3_BINARY, name, binary)]
    res = Results(rows)
    faster = sorted([1.25, 1.0 / 0.75, 1.6, 1.0 / 0.7, 0.9 / 0.7])
    _, _, _, value, ok, _, how = binary_target(res)
    assert value == pytest.approx(faster[2])  # the median round, 1/0.75: not the 2x of the main rows
    assert not ok  # below 1.5
    assert "median of 5 alternated rounds" in how and "1.25×" in how and "1.60×" in how
    line = [ln for ln in tables.targets_lines(res) if "binary targets" in ln][0]
    assert line.startswith("[FAIL]") and "measured 1.33×" in line
    # the binary section shows both: the main rows' 0.50x and the rounds' median 0.75x
    (body,) = sections.binary_body(res)
    assert body[8] == "0.50×" and body[9] == "0.75× (0.62×–0.80×)"


def test_alternated_rounds_do_not_mark_the_main_line_busy():
    name = cases.paired_candidate(1)
    rows = [row(cases.M3, "fused", 1.2), row(cases.M3_BINARY, "fused", 0.6),
            row(cases.M3, name, 1.0), row(cases.M3_BINARY, name, 0.8)]
    rows[2]["others_cores"] = rows[3]["others_cores"] = 1.5  # a round taken while the machine was busy
    res = Results(rows)
    key = ("cpu", "float32", "fwdbwd", cases.M3_BINARY.name)
    assert tables.busy_mark(res, key, "bce") == ""


def host_target(res):
    (line,) = [t for t in tables.targets(res) if t[0] == cases.HOST.name]
    return line


def test_host_target_takes_the_median_of_the_alternated_rounds():
    # the main rows (minutes apart, the host slowed down in between) say 1.2x;
    # the rounds, each pair timed back to back, say 1.5x-1.8x
    rows = [row(cases.HOST, "eager", 0.120), row(cases.HOST, "fused", 0.100)]
    for i, (eager, fused) in enumerate([(0.15, 0.10), (0.16, 0.10), (0.27, 0.15), (0.13, 0.08), (0.18, 0.10)], 1):
        rows += [row(cases.HOST, cases.paired_candidate(i, "eager"), eager),
                 row(cases.HOST, cases.paired_candidate(i), fused)]
    res = Results(rows)
    faster = sorted([1.5, 1.6, 1.8, 1.625, 1.8])
    _, _, _, value, ok, _, how = host_target(res)
    assert value == pytest.approx(faster[2]) and ok  # 1.625x, not the main rows' 1.2x
    assert "median of 5 alternated rounds" in how and "1.50×" in how and "1.80×" in how
    (body,) = sections.host_body(res)
    assert body[5] == "1.20×" and body[7] == "1.62× (1.50×–1.80×)"


def test_host_target_uses_the_main_rows_without_alternated_rounds():
    res = Results([row(cases.HOST, "eager", 0.120), row(cases.HOST, "fused", 0.100)])
    _, _, _, value, ok, _, how = host_target(res)
    assert value == pytest.approx(1.2) and not ok and how == ""
    (body,) = sections.host_body(res)
    assert body[7] == "—"
