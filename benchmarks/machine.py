"""The machine the figures come from: the CPU, its cache, the instruction sets
the fused op's kernels and torch.compile's generated code use, and how busy
other processes kept the cores."""
from __future__ import annotations

import datetime
import os
import platform
import re
import time
from pathlib import Path

import torch

import vae_fused


def cpu_model() -> str:
    """The CPU's model name; where it names no model number (a VM's generic
    'AMD EPYC'), with the family and model numbers, which tell hosts of one
    name apart (AMD family 25 is Zen 3/4, 26 is Zen 5) so that their results
    land in separate folders."""
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if not key.strip():
                break  # the first processor's block only
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if not re.search(r"\d", name) and "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


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


def inductor_vec_isa() -> tuple[str, str]:
    """(name, full name) of the vector instruction set torch.compile's C++
    code generator picks on this machine (torch._inductor.cpu_vec_isa.
    pick_vec_isa, which follows ATEN_CPU_CAPABILITY), e.g. ("avx512",
    "avx512 avx512_vnni"); ("", "") when it picks none: its code is then
    scalar, and a compiled baseline is no faster than eager."""
    try:
        from torch._inductor.cpu_vec_isa import pick_vec_isa
        isa = pick_vec_isa()
    except Exception:  # no C++ compiler, or an inductor without this module
        return "", ""
    if not isa:
        return "", ""
    full = str(isa)
    return full.split()[0], full


def machine_tag(devices, threads: int, cpu: str, op_isa: str, compile_isa: str, gpu: str) -> str:
    """The results folder's name: the GPU, and the CPU with the ISA of the
    fused op's CPU kernels and its thread count, e.g. cpu-amd-epyc-avx512-2t
    (ATEN_CPU_CAPABILITY=avx2 gives cpu-amd-epyc-avx2-2t). When torch.compile
    vectorizes with another ISA than the op (or not at all) that is named too:
    cpu-amd-epyc-avx2-inductor-avx512-2t, ...-inductor-scalar-2t."""
    tags = []
    if "cuda" in devices:
        tags.append(f"cuda-{short_name(gpu)}")
    if "cpu" in devices:
        isa = op_isa.lower()
        if compile_isa != isa:
            isa += f"-inductor-{compile_isa or 'scalar'}"
        tags.append(f"cpu-{short_name(cpu)}-{isa}-{threads}t")
    return "_".join(tags)


def environment(threads: int, devices) -> dict:
    model = cpu_model()
    gpu = torch.cuda.get_device_name() if "cuda" in devices else ""
    op_isa = vae_fused.cpu_capability()
    compile_isa, compile_isa_full = inductor_vec_isa()
    return {
        "cpu": model, "cores": os.cpu_count(), "threads": threads, "l3_bytes": l3_cache_bytes(),
        "torch": torch.__version__, "vae_fused": vae_fused.__version__,
        "cpu_kernels": op_isa, "inductor_isa": compile_isa, "inductor_isa_full": compile_isa_full,
        "aten_cpu_capability": os.environ.get("ATEN_CPU_CAPABILITY", ""),
        "gpu": gpu or "none", "cuda": torch.version.cuda or "none", "devices": list(devices),
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "load": load_average(),
        "tag": machine_tag(devices, threads, model, op_isa, compile_isa, gpu),
    }
