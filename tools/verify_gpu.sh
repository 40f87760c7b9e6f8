#!/usr/bin/env bash
# One command on a machine with an NVIDIA GPU (NOT YET RUN ON HARDWARE):
#   tools/verify_gpu.sh [--quick]
# 1. builds vae_fused from source against that machine's torch, in a Python 3.12
#    venv that sees the system torch (--system-site-packages; the image's torch
#    2.11 or newer), with setuptools and ninja installed (3.12 venvs ship
#    without setuptools);
# 2. runs the CUDA logic tests and tests/test_cuda.py (every CUDA test compares
#    with float64 torch.nn.functional or closed forms);
# 3. runs compute-sanitizer memcheck, racecheck, initcheck and synccheck on
#    small cases;
# 4. runs `python -m benchmarks --device cuda` (fused vs eager vs compile and
#    the copy-bandwidth floor), which writes benchmarks/results/<gpu-name>/.
# Exits non-zero at the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=${1:-}
PY=${PYTHON:-python3.12}
command -v "$PY" >/dev/null || PY=python3
VENV=${VENV:-.venv-gpu}

echo "== 1. build"
"$PY" -m venv --system-site-packages "$VENV"
. "$VENV/bin/activate"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible'; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
pip install -q setuptools ninja wheel pytest numpy
# this GPU's arch only (a faster build); override with TORCH_CUDA_ARCH_LIST
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$(python -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")}
VAE_FUSED_CUDA=1 pip install -q --no-build-isolation .
cd /tmp && python -c "
import torch, vae_fused
assert torch._C._dispatch_has_kernel_for_dispatch_key('vae_fused::vae_loss_forward', 'CUDA')
print('installed:', vae_fused.__file__)" && cd - >/dev/null

echo "== 2. tests"
# run against the installed package, not the checkout's vae_fused/
TESTDIR=$(mktemp -d)
cp -r tests "$TESTDIR/" && cp pyproject.toml "$TESTDIR/"
(cd "$TESTDIR" && python -m pytest -q -m cuda_logic tests/test_cuda_logic.py)
(cd "$TESTDIR" && python -m pytest -q -rs tests/test_cuda.py)

echo "== 3. compute-sanitizer"
SAN=${COMPUTE_SANITIZER:-$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)}
cat > "$TESTDIR/sanitize_case.py" <<'PY'
import torch, vae_fused
torch.manual_seed(0)
for recon, shape in [("bce", (3, 1000)), ("mse", (2, 3, 5, 7)), ("cbce", (4, 4097))]:
    for dtype in (torch.float32, torch.float16):
        p = (torch.rand(shape, device="cuda") * 0.9 + 0.05).to(dtype).requires_grad_()
        x = torch.rand(shape, device="cuda").to(dtype)
        mu = torch.randn(shape[0], 7, device="cuda", requires_grad=True)
        lv = torch.randn(shape[0], 7, device="cuda", requires_grad=True)
        for reduction in ("sum", "none", "mean"):
            loss = vae_fused.vae_loss(p, x, mu, lv, recon=recon, reduction=reduction)
            loss.sum().backward()
        vae_fused.vae_loss(p, x, mu, lv, recon=recon, reduction="batchmean", free_bits=0.1).backward()
        cl = torch.rand(2, 3, 8, 8, device="cuda").to(memory_format=torch.channels_last).requires_grad_()
        vae_fused.vae_loss(cl, torch.rand_like(cl), mu[:2], lv[:2], recon="mse").backward()
torch.cuda.synchronize()
print("sanitize case ok")
PY
for tool in memcheck racecheck initcheck synccheck; do
  echo "-- $tool"
  "$SAN" --tool "$tool" --error-exitcode 1 python "$TESTDIR/sanitize_case.py"
done

echo "== 4. benchmarks"
# run from a copy so that the installed vae_fused is imported (the checkout's
# vae_fused/ has no compiled library); results come back to benchmarks/results/
GPU_TAG=$(python -c "import re, torch; print(re.sub(r'[^a-z0-9]+', '-', torch.cuda.get_device_name().lower()).strip('-'))")
OUT="$PWD/benchmarks/results/$GPU_TAG"
cp -r benchmarks "$TESTDIR/"
if [ "$QUICK" = "--quick" ]; then
  (cd "$TESTDIR" && python -m benchmarks --device cuda --dtype float32 --pass fwdbwd --sizes 20:26:2 --out "$OUT")
else
  (cd "$TESTDIR" && python -m benchmarks --device cuda --out "$OUT")
fi
# the copy-bandwidth floor: each fused row's time against the floor row of its case
python - "$OUT/results.csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
floor = {(r["dtype"], r["pass"], r["shape"]): float(r["median_ms"]) for r in rows
         if r["candidate"] == "floor" and r["median_ms"]}
for r in rows:
    key = (r["dtype"], r["pass"], r["shape"])
    if r["candidate"] == "fused" and key in floor and r["median_ms"]:
        print(f"{r['shape']:>24} {r['dtype']:>9} {r['pass']:>6} {r['recon']:>10}: "
              f"fused {float(r['median_ms']):.4f} ms = {float(r['median_ms']) / floor[key]:.2f} x copy floor")
PY
echo "verify_gpu: all steps passed"
