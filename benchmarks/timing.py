"""How things are measured: torch.utils.benchmark timings, the first call
(torch.compile's warm-up), memory, page faults, an op profile, and the
machine the figures come from."""
from __future__ import annotations

import contextlib
import datetime
import os
import platform
import re
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils import benchmark

import vae_fused


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
    """Runs the step once; returns (seconds, cache) where cache says whether
    torch.compile's graphs came from inductor's on-disk cache ("hit"), were
    compiled ("miss"), or nothing was compiled ("")."""
    hits, misses = inductor_cache_counts()
    sync(device)
    start = time.perf_counter()
    step()
    sync(device)
    seconds = time.perf_counter() - start
    new_hits, new_misses = inductor_cache_counts()
    cache = "miss" if new_misses > misses else ("hit" if new_hits > hits else "")
    return seconds, cache


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


# ---------------------------------------------------------------------------
# The machine

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def l3_cache_bytes() -> int | None:
    """The last-level cache of CPU 0 (Linux sysfs), or None if unknown."""
    caches = sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"))
    best = None
    for index in caches:
        try:
            level = int((index / "level").read_text())
            size = (index / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        value = int(re.sub(r"\D", "", size) or 0) * units.get(size[-1:], 1)
        if best is None or level > best[0]:
            best = (level, value)
    return None if best is None else best[1]


def short_name(model: str) -> str:
    """'Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.0GHz' -> 'intel-xeon-platinum-8480'."""
    model = re.sub(r"\((r|tm)\)|@.*$|\bcpu\b|\bprocessor\b|\d+-core", " ", model.lower())
    return re.sub(r"[^a-z0-9]+", "-", model).strip("-")[:32]


def load_average() -> float | None:
    """The 1-minute load average: above ~0.5 on a small machine, other work
    is competing with the benchmark for the cores."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _busy_cpu_seconds() -> float | None:
    """CPU seconds all processes have used since boot (plus time the hypervisor
    gave to other guests: steal), from /proc/stat."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    """CPU seconds of this process, its finished children, and its live
    descendants and theirs (torch.compile's compile workers)."""
    t = os.times()
    total = t.user + t.system + t.children_user + t.children_system
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parts = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(parts[1]), []).append((int(stat.parent.name), sum(int(v) for v in parts[11:15])))
    todo, ticks = [os.getpid()], 0
    while todo:
        for pid, cpu in children.get(todo.pop(), []):
            ticks += cpu
            todo.append(pid)
    return total + ticks / os.sysconf("SC_CLK_TCK")


class OtherLoad:
    """How many cores other processes (and other guests) kept busy while the
    benchmark ran: total busy CPU time minus this process tree's, per second."""

    def __init__(self):
        self.start = time.perf_counter(), _busy_cpu_seconds(), _own_cpu_seconds()

    def cores(self) -> float | None:
        wall, busy, own = self.start
        now_busy = _busy_cpu_seconds()
        if busy is None or now_busy is None:
            return None
        elapsed = time.perf_counter() - wall
        return max(0.0, (now_busy - busy) - (_own_cpu_seconds() - own)) / elapsed


def environment(threads: int, devices) -> dict:
    model = cpu_model()
    gpu = torch.cuda.get_device_name() if "cuda" in devices else ""
    tags = []
    if "cuda" in devices:
        tags.append(f"cuda-{short_name(gpu)}")
    if "cpu" in devices:
        tags.append(f"cpu-{short_name(model)}-{threads}t")
    return {
        "cpu": model, "cores": os.cpu_count(), "threads": threads, "l3_bytes": l3_cache_bytes(),
        "torch": torch.__version__, "vae_fused": vae_fused.__version__,
        "cpu_kernels": vae_fused.cpu_capability(), "gpu": gpu or "none",
        "cuda": torch.version.cuda or "none", "devices": list(devices),
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "load": load_average(),
        "tag": "_".join(tags),
    }
