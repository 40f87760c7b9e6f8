"""How things are measured: torch.utils.benchmark timings, the first call
(torch.compile's warm-up), memory, page faults and an op profile. The machine
the figures come from is machine.py."""
from __future__ import annotations

import contextlib
import os
import resource
import sys
import time
from dataclasses import dataclass

import torch
from torch.utils import benchmark


@dataclass
class Timing:
    median: float  # seconds
    iqr: float
    mean: float
    runs: int      # blocks measured (each of `number` calls)
    number: int


def measure(step, threads: int, min_run_time: float) -> Timing:
    """Median and IQR of blocked_autorange. torch.utils.benchmark pins torch's
    thread count to `threads` for the measurement and synchronizes CUDA around
    each block (its default timer calls torch.accelerator.synchronize)."""
    timer = benchmark.Timer("step()", globals={"step": step}, num_threads=threads)
    m = timer.blocked_autorange(min_run_time=min_run_time)
    return Timing(m.median, m.iqr, m.mean, len(m.times), m.number_per_run)


def sync(device: str):
    if device == "cuda":
        torch.cuda.synchronize()


def inductor_cache_counts():
    """(hits, misses) of inductor's FX graph cache so far in this process."""
    from torch._dynamo.utils import counters
    c = counters["inductor"]
    return c["fxgraph_cache_hit"], c["fxgraph_cache_miss"]


def first_call(step, device: str):
    """Runs the step once; returns (seconds, cache, what the step returned)
    where cache says whether torch.compile's graphs came from inductor's
    on-disk cache ("hit"), were compiled ("miss"), or nothing was compiled ("")."""
    hits, misses = inductor_cache_counts()
    sync(device)
    start = time.perf_counter()
    out = step()
    sync(device)
    seconds = time.perf_counter() - start
    new_hits, new_misses = inductor_cache_counts()
    cache = "miss" if new_misses > misses else ("hit" if new_hits > hits else "")
    return seconds, cache, out


def minor_faults_per_step(step, device: str, steps: int = 3) -> float:
    """Minor page faults of the process per call (first touches of memory the
    OS just mapped): on the CPU, the cost of fresh buffers made visible."""
    if device != "cpu":
        return 0.0
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / steps


def cuda_peak_bytes(step) -> int:
    """Peak CUDA memory one call allocates beyond what was already held."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def saved_for_backward_bytes(fn, leaves) -> int:
    """Bytes of the tensors autograd keeps from the forward to the backward,
    not counting the inputs themselves (the CPU has no allocator statistics;
    this is the part of a training step's peak memory the loss controls)."""
    inputs = {t.untyped_storage().data_ptr() for t in leaves}
    storages = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in inputs:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*leaves)
    return sum(storages.values())


@contextlib.contextmanager
def quiet_stderr():
    """Silences file descriptor 2: the profiler's C++ backend (kineto) prints
    start/stop lines there that Python cannot turn off."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def profile_ops(step, device: str, steps: int = 3, top: int = 8):
    """[(op name, self ms per step)] of the busiest ops, from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with quiet_stderr(), profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync(device)
    key = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    return [(e.key, getattr(e, key) / 1e3 / steps) for e in events[:top] if getattr(e, key) > 0]
