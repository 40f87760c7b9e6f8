"""Rows: one measurement each (the CSV's lines), and Results, which indexes
them by case for the tables."""
from __future__ import annotations

from collections import defaultdict

import torch

from benchmarks import cases

FIELDS = ["device", "dtype", "pass", "shape", "elements", "latent_elements", "recon", "candidate",
          "threads", "median_ms", "iqr_ms", "mean_ms", "runs", "number_per_run", "bytes_moved",
          "gbps", "first_call_s", "compile_cache", "memory_bytes", "faults_per_step", "others_cores", "error",
          "value", "rel_diff_vs_eager",  # the loss of the first call, and how far it is from eager's
          # the machine, on every line, so CSVs of several machines can be concatenated
          "cpu", "cpu_kernels", "inductor_isa"]

DTYPE_ORDER = ["float32", "bfloat16", "float16", "float64"]
PASS_ORDER = ["fwd", "fwdbwd", "train-step"]
SHAPE_ORDER = [s.name for s in (cases.MNIST, cases.MNIST_BINARY, cases.CIFAR, cases.CELEBA, cases.M3,
                                cases.M3_BINARY, cases.M12, cases.HOST, cases.LDM, cases.VDVAE)]
RECON_ORDER = list(cases.LOSSES)
# Cores' worth of other processes' work above which figures are marked noisy:
# on a 2-core machine any other runnable process stalls a 2-thread parallel
# region for a scheduler slice.
BUSY = 0.25


def dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def make_row(shape, dtype, device, pass_name, recon, candidate, threads, timing=None,
             first_call_s=None, compile_cache="", memory_bytes=None, faults=None, error="",
             floor_of=None, value=None) -> dict:
    """One CSV row: a candidate's measurement on one case. A floor row (recon
    "-") moves the bytes of the loss named by floor_of."""
    if candidate.startswith("fill-"):
        moved = shape.elements * torch.empty((), dtype=dtype).element_size()  # one write
    elif pass_name in cases.PASS_TENSORS:
        moved = cases.bytes_moved(shape, dtype, pass_name, floor_of or recon)
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
        "error": error, "value": value, "rel_diff_vs_eager": None,
    }


class Results:
    """Rows indexed by case: (device, dtype, pass, shape) -> {(recon, candidate): row}.
    The floor rows (recon "-") serve every recon of their case; a binary-target
    shape uses its continuous twin's floor (the same bytes)."""

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

    def floor_ms(self, key):
        twin = cases.BINARY_OF.get(key[3])
        return self.ms(key if twin is None else key[:3] + (twin,), "-", "floor")

    def paired_ratios(self, key, recon="bce"):
        """One ratio per round of the alternated measurement (runner.run_paired)
        of this case, [] when it was not run: for a binary-target case the
        fused op's binary / continuous time, for the host-overhead case the
        fused op's time / eager's."""
        host = key[3] == cases.HOST.name
        twin = key if host else key[:3] + (cases.BINARY_OF[key[3]],)
        other = "eager" if host else "fused"
        out = []
        for i in range(1, cases.PAIRED_ROUNDS + 1):
            ratio_i = ratio(self.ms(key, recon, cases.paired_candidate(i)),
                            self.ms(twin, recon, cases.paired_candidate(i, other)))
            if ratio_i is not None:
                out.append(ratio_i)
        return out

    def loss_groups(self, sweep: bool, host: bool = False):
        """[(key, recon)] of cases with loss candidates, in reading order: the
        size sweep's, or the others'; the host-overhead row only if asked."""
        out = []
        for key, cands in self.cases.items():
            if key[2] == "train-step" or cases.is_sweep(key[3]) != sweep or (key[3] == cases.HOST.name) != host:
                continue
            for recon in {rc for rc, _ in cands if rc != "-"}:
                if any((recon, c) in cands for c in cases.LOSS_CANDIDATES):
                    out.append((key, recon))
        return sorted(out, key=lambda kr: order_key(kr[0], kr[1], self.cases[kr[0]]))

    def compare(self, key, recon) -> dict:
        """The figures of one table line."""
        eager, compiled, fused = (self.ms(key, recon, c) for c in cases.LOSS_CANDIDATES)
        floor = self.floor_ms(key)
        fused_row = self.get(key, recon, "fused")
        return {
            "eager": eager, "compiled": compiled, "fused": fused, "floor": floor,
            "vs_eager": ratio(eager, fused), "vs_compiled": ratio(compiled, fused),
            "compiled_vs_eager": ratio(eager, compiled),
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
