"""The size-sweep plots: time against size, log-log, one PNG per (device,
pass, dtype), with the floor."""
from __future__ import annotations

from pathlib import Path

from benchmarks import cases


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
