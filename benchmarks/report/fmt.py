"""Number formats and the two table renderers (padded text, markdown)."""
from __future__ import annotations

import re
import statistics


def fmt_ms(v):
    if v is None:
        return "—"
    if v == 0:
        return "0"
    return f"{v:.3f}" if v < 1 else (f"{v:.2f}" if v < 10 else f"{v:.1f}")


def fmt_us(ms):
    """A time given in ms, shown in µs."""
    return "—" if ms is None else (f"{ms * 1e3:.1f}" if ms < 0.1 else f"{ms * 1e3:.0f}")


def fmt_delta(v):
    return "—" if v is None else ("+" if v >= 0 else "−") + fmt_ms(abs(v))


def fmt_x(v, digits=1):
    return "—" if v is None else f"{v:.{digits}f}×"


def median_and_range(ratios):
    """(median, lowest, highest) of alternated rounds' ratios; None without rounds."""
    ratios = sorted(ratios)
    return (statistics.median(ratios), ratios[0], ratios[-1]) if ratios else None


def fmt_range(lowest, highest, digits=2):
    return f"{fmt_x(lowest, digits)}–{fmt_x(highest, digits)}"


def fmt(v, spec="{:.1f}"):
    return "—" if v is None else spec.format(v)


def fmt_bytes(v):
    if v is None:
        return "—"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if v >= size:
            return f"{v / size:.1f} {unit}"
    return f"{v:.0f} B"


NUMERIC = re.compile(r"^[-—≈\d.,×%/ †]*$")


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
