"""The import error without a compiled extension, and the examples as README
shows them."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_missing_extension_says_why_and_how_to_build():
    code = (
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'vae_fused._C':\n"
        "            raise ImportError('simulated: no compiled library')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import vae_fused\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode != 0
    assert "ImportError" in out.stderr
    assert "simulated: no compiled library" in out.stderr
    assert "pip install --no-build-isolation ." in out.stderr
    assert "no pure-Python fallback" in out.stderr


@pytest.mark.slow
def test_train_vae_demo_agrees(tmp_path):
    out = subprocess.run([sys.executable, "examples/train_vae.py", "--demo", "--out", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "fused and torch losses agree" in out.stdout
    assert (tmp_path / "reconstruction_fused.png").exists() and (tmp_path / "samples_torch.png").exists()


@pytest.mark.slow
def test_conv_vae_runs(tmp_path):
    out = subprocess.run([sys.executable, "examples/conv_vae.py", "--epochs", "1", "--steps-per-epoch", "3",
                          "--batch-size", "16"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "loss dtype: torch.float32" in out.stdout


@pytest.mark.slow
def test_train_autoencoder_kl_curves_agree(tmp_path):
    out = subprocess.run([sys.executable, "examples/train_autoencoder_kl.py", "--steps", "4", "--log-every", "2",
                          "--batch-size", "4", "--out", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "fused and torch losses agree to 1e-09 (float64)" in out.stdout
    rows = [line.split("|") for line in out.stdout.splitlines() if line.split("|")[0].strip().isdigit()]
    assert [int(r[0]) for r in rows] == [2, 4]
    for row in rows:  # step | torch loss | fused loss | rel. diff | torch logvar s | fused logvar s | ...
        torch_loss, fused_loss, torch_s, fused_s = (float(row[i]) for i in (1, 2, 4, 5))
        assert fused_loss == pytest.approx(torch_loss, rel=1e-9, abs=0)
        assert fused_s == pytest.approx(torch_s, rel=1e-9, abs=1e-15)
    assert (tmp_path / "autoencoder_kl_reconstruction.png").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps (Linux)")
def test_passes_are_built_with_openmp_and_share_torchs_runtime():
    # at::parallel_for splits work only where the translation unit was built
    # with OpenMP; without -fopenmp every CPU pass silently ran on one thread.
    # The extension must call into OpenMP, and the process must hold a single
    # OpenMP runtime (the one torch loaded), not a second copy.
    import torch
    import vae_fused

    if "OpenMP" not in torch.__config__.parallel_info():
        pytest.skip("this torch is not built with OpenMP")
    library = Path(vae_fused._C.__file__).read_bytes()
    assert b"GOMP_parallel" in library, "vae_fused._C was built without -fopenmp"
    with open("/proc/self/maps") as maps:
        runtimes = {line.split()[-1] for line in maps if "libgomp" in line or "libiomp" in line}
    assert len(runtimes) == 1, f"more than one OpenMP runtime loaded: {sorted(runtimes)}"
