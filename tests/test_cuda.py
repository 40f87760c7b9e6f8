"""GPU behaviour (marked `cuda`, skipped without a GPU), plus the check that a
CUDA build registered its kernels, which runs wherever the build had CUDA."""
import os
import subprocess
import sys

import pytest
import torch

import vae_fused
from conftest import RECON_MODES, REDUCTIONS, grads, make_inputs

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _cuda_build_expected():
    """Whether setup.py should have built CUDA here: torch has CUDA, nvcc is
    there, and the build was not forced CPU-only with VAE_FUSED_CUDA=0."""
    from torch.utils import cpp_extension

    from vae_fused import _build_info

    if _build_info.CUDA_FORCED_OFF:
        return False, "built with VAE_FUSED_CUDA=0"
    if torch.version.cuda is None:
        return False, "this torch has no CUDA"
    roots = [os.environ.get("CUDA_HOME"), cpp_extension.CUDA_HOME, "/usr/local/cuda"]
    if not any(r and os.path.exists(os.path.join(r, "bin", "nvcc")) for r in roots):
        return False, "no nvcc"
    return True, ""


_expected, _why_not = _cuda_build_expected()


@pytest.mark.skipif(not _expected, reason=_why_not)
def test_cuda_kernels_registered():
    # Runs in CI without a GPU: the CUDA build must compile, link and register.
    from vae_fused import _build_info

    assert _build_info.WITH_CUDA
    for op in ("vae_fused::vae_loss_forward", "vae_fused::scale_gradient"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA"), op


def _on(device, tensors):
    return [t.detach().to(device).requires_grad_() for t in tensors]


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("recon", RECON_MODES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_cuda_matches_cpu(recon, reduction, dtype):
    inputs = make_inputs((6, 3000), (6, 7), recon=recon, dtype=dtype)
    cpu = _on("cpu", inputs)
    gpu = _on("cuda", inputs)
    a = vae_fused.vae_loss(*cpu, recon=recon, reduction=reduction)
    b = vae_fused.vae_loss(*gpu, recon=recon, reduction=reduction)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(b.cpu(), a, **tol)
    gtol = tol if dtype in (torch.float64, torch.float32) else dict(rtol=2e-2, atol=2e-2)
    for g, e in zip(grads(b, gpu), grads(a, cpu)):
        torch.testing.assert_close(g.cpu().double(), e.double(), **gtol)


@pytest.mark.cuda
@needs_gpu
def test_cuda_free_bits_and_kl_reduction():
    inputs = make_inputs((16, 40), (16, 9))
    for kwargs in (dict(free_bits=0.4, reduction="batchmean"), dict(reduction="mean", kl_reduction="batchmean")):
        cpu, gpu = _on("cpu", inputs), _on("cuda", inputs)
        a = vae_fused.vae_loss(*cpu, **kwargs)
        b = vae_fused.vae_loss(*gpu, **kwargs)
        torch.testing.assert_close(b.cpu(), a, rtol=1e-10, atol=1e-12)
        for g, e in zip(grads(b, gpu), grads(a, cpu)):
            torch.testing.assert_close(g.cpu(), e, rtol=1e-10, atol=1e-12)


@pytest.mark.cuda
@needs_gpu
def test_cuda_bitwise_deterministic():
    inputs = _on("cuda", make_inputs((64, 3, 64, 64), (64, 128), dtype=torch.float32))
    runs = []
    for _ in range(3):
        loss = vae_fused.vae_loss(*inputs)
        runs.append([loss.detach()] + list(grads(loss, inputs)))
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)


@pytest.mark.cuda
@needs_gpu
def test_cuda_no_host_sync():
    inputs = _on("cuda", make_inputs((32, 500), (32, 8), dtype=torch.float32))
    vae_fused.vae_loss(*inputs).backward()  # warm up allocations
    torch.cuda.set_sync_debug_mode("error")
    try:
        for reduction in ("sum", "none"):
            loss = vae_fused.vae_loss(*inputs, reduction=reduction, beta=torch.tensor(0.5, device="cuda"))
            loss.sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.cuda
@needs_gpu
def test_cuda_graph_capture_and_replay():
    recon_x, x, mu, logvar = [t.cuda() for t in make_inputs((16, 300), (16, 8), dtype=torch.float32)]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            vae_fused.vae_loss(recon_x, x, mu, logvar)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = vae_fused.vae_loss(recon_x, x, mu, logvar)
    expected = vae_fused.vae_loss(recon_x, x, mu, logvar)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static_loss, expected)
    recon_x.copy_(recon_x.flip(0))
    graph.replay()
    torch.testing.assert_close(static_loss, vae_fused.vae_loss(recon_x, x, mu, logvar))


@pytest.mark.cuda
@needs_gpu
def test_cuda_side_stream_and_second_device():
    inputs = make_inputs((8, 100), (8, 4), dtype=torch.float32)
    expected = vae_fused.vae_loss(*inputs)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        got = vae_fused.vae_loss(*[t.cuda() for t in inputs])
    side.synchronize()
    torch.testing.assert_close(got.cpu(), expected)
    if torch.cuda.device_count() > 1:
        got1 = vae_fused.vae_loss(*[t.to("cuda:1") for t in inputs])
        assert got1.device == torch.device("cuda:1")
        torch.testing.assert_close(got1.cpu(), expected)


@pytest.mark.cuda
@needs_gpu
def test_cuda_bad_input_is_nan_and_context_survives():
    recon_x, x, mu, logvar = [t.cuda() for t in make_inputs((4, 50), (4, 2), dtype=torch.float32)]
    bad = recon_x.clone()
    bad[1, 3] = 1.5
    loss = vae_fused.vae_loss(bad, x, mu, logvar)
    assert torch.isnan(loss).item()
    # the context still works
    torch.testing.assert_close(vae_fused.vae_loss(recon_x, x, mu, logvar).cpu(),
                               vae_fused.vae_loss(recon_x.cpu(), x.cpu(), mu.cpu(), logvar.cpu()))


@pytest.mark.cuda
@needs_gpu
def test_cuda_strict_mode_raises():
    code = (
        "import torch, vae_fused\n"
        "p = torch.rand(4, 5, device='cuda'); p[0, 0] = 2.0\n"
        "x = torch.rand(4, 5, device='cuda'); m = torch.zeros(4, 2, device='cuda')\n"
        "try:\n"
        "    vae_fused.vae_loss(p, x, m, m)\n"
        "except RuntimeError as e:\n"
        "    print('RAISED', e)\n"
        "print(vae_fused.vae_loss(p.clamp(0, 1), x, m, m).item())\n"
    )
    env = dict(os.environ, VAE_FUSED_STRICT="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert "RAISED all elements of input should be between 0 and 1" in out.stdout


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast(dtype):
    torch.manual_seed(0)
    dec = torch.nn.Linear(8, 64).cuda()
    z = torch.randn(16, 8, device="cuda")
    x = torch.rand(16, 64, device="cuda")
    mu = torch.randn(16, 8, device="cuda", requires_grad=True)
    logvar = torch.randn(16, 8, device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=dtype):
        recon_x = torch.sigmoid(dec(z))
        loss = vae_fused.vae_loss(recon_x, x, mu, logvar)
        logits_loss = vae_fused.vae_loss(dec(z), x, mu, logvar, recon="bce_logits")
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    (loss + logits_loss).backward()
    assert torch.isfinite(dec.weight.grad).all()
