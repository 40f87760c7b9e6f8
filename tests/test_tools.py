"""tools/rule_loop_bench.cpp builds against the op's element rules and runs:
the binary-target and general BCE rules agree bit for bit in its bare loop,
and it prints both timing lines."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from torch.utils import cpp_extension

ROOT = Path(__file__).resolve().parent.parent

# The per-ISA flags of setup.py's ISA_FLAGS.
ISA_FLAGS = {
    "AVX2": ["-mavx2", "-mfma", "-mf16c"],
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c"],
}
HOST_ISAS = {"AVX512": ["AVX2", "AVX512"], "AVX2": ["AVX2"]}.get(torch.backends.cpu.get_cpu_capability(), [])


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
@pytest.mark.parametrize("isa", ["AVX2", "AVX512"])
def test_rule_loop_bench_builds_agrees_and_times(isa, tmp_path):
    if isa not in HOST_ISAS:
        pytest.skip(f"this CPU does not run {isa} code")
    binary = tmp_path / f"rule_loop_{isa.lower()}"
    build = subprocess.run(
        ["g++", "-O2", "-std=c++20", "-fopenmp", "-Icsrc", f"-I{cpp_extension.include_paths()[0]}",
         f"-DCPU_CAPABILITY={isa}", f"-DCPU_CAPABILITY_{isa}", *ISA_FLAGS[isa],
         "tools/rule_loop_bench.cpp", "-o", str(binary)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run([str(binary), "65536"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith(f"{isa}, ")
    assert "agree bit for bit" in run.stdout
    ratios = re.findall(r"of the bests (\d+\.\d+)", run.stdout)
    assert len(ratios) == 2 and all(float(r) > 0 for r in ratios), run.stdout
