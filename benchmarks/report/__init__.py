"""Turns measurements into the stdout report, results.csv, report.md and the
size-sweep plots.

  rows       one row per measurement (the CSV), Results: rows by case
  fmt        number formats, text and markdown tables
  tables     comparison tables, busy and suspect-compiled marks, targets, errors
  sections   host overhead, binary targets, end to end, compile warm-up, memory
  breakdown  where the time goes, op profiles
  notes      the machine and ISAs, load warnings, what the figures mean
  plots      the size-sweep PNGs
  writer     stdout report, results.csv, report.md
"""
from benchmarks.report.notes import header
from benchmarks.report.rows import dtype_name, make_row
from benchmarks.report.writer import stdout_report, write_all

__all__ = ["header", "dtype_name", "make_row", "stdout_report", "write_all"]
