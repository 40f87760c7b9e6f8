"""Builds vae_fused._C: the op schemas, the CPU kernels (one object per x86
instruction set, picked at run time) and, when CUDA is available, the CUDA
kernels.

Environment:
  VAE_FUSED_CUDA=0|1      force the CUDA build off / on (default: on when this
                          torch has CUDA and nvcc is found via CUDA_HOME)
  TORCH_CUDA_ARCH_LIST    CUDA archs (default "8.0;8.6;8.9;9.0+PTX")
  MAX_JOBS                parallel compile jobs (ninja)

Torch must be installed first and the build must see it:
  pip install --no-build-isolation .
"""
import os
import platform
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from setuptools import setup

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:  # pragma: no cover - the message is the point
    sys.exit(
        "vae_fused: building needs PyTorch installed first (pip install torch), then\n"
        "  pip install --no-build-isolation .\n"
        "(build isolation would hide the installed torch from the build)."
    )

ROOT = Path(__file__).parent.resolve()
CSRC = ROOT / "csrc"

# The CPU kernel file and the flags of each build of it. ATen uses the same
# instruction sets and defines; the dispatcher in vae_loss_cpu.cpp picks one.
ISA_KERNEL = "csrc/cpu/row_loss_kernels.cpp"
ISA_FLAGS = {"DEFAULT": []}
if platform.machine().lower() in ("x86_64", "amd64"):
    ISA_FLAGS["AVX2"] = ["-mavx2", "-mfma", "-mf16c"]
    ISA_FLAGS["AVX512"] = ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c"]

# -Wno-unknown-pragmas / -Wno-maybe-uninitialized silence hundreds of lines
# from ATen's vec headers and gcc's AVX-512 intrinsics headers, not ours.
CXX_FLAGS = ["-O3", "-std=c++20", "-fPIC", "-Wall", "-Wno-unused-function",
             "-Wno-unknown-pragmas", "-Wno-maybe-uninitialized"]


def find_cuda_home():
    """The CUDA toolkit root: $CUDA_HOME, torch's guess, or /usr/local/cuda,
    whichever first has both nvcc and the runtime library. (torch derives the
    root from `which nvcc`, which is wrong when nvcc is a wrapper script
    outside the toolkit, e.g. /usr/local/bin/nvcc; linking then fails.)"""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
                  cpp_extension.CUDA_HOME, "/usr/local/cuda"]
    for root in filter(None, candidates):
        root = Path(root)
        if (root / "bin" / "nvcc").exists() and any((root / "lib64").glob("libcudart.so*")):
            return str(root)
    return None


def want_cuda():
    forced = os.environ.get("VAE_FUSED_CUDA")
    cuda_home = find_cuda_home()
    if cuda_home is not None:
        os.environ["CUDA_HOME"] = cuda_home
        cpp_extension.CUDA_HOME = cuda_home  # read by CUDAExtension and the nvcc rules
    available = torch.version.cuda is not None and cuda_home is not None
    if forced == "0":
        return False
    if forced == "1":
        if not available:
            sys.exit(
                "vae_fused: VAE_FUSED_CUDA=1 but this torch has no CUDA "
                f"(torch.version.cuda={torch.version.cuda}) or nvcc was not found "
                f"(CUDA_HOME={cuda_home})."
            )
        return True
    return available


class BuildWithIsaKernels(cpp_extension.BuildExtension):
    """BuildExtension that first compiles the CPU kernel once per instruction
    set, each with its own flags, and links those objects into the extension.
    (BuildExtension gives every source the same flags.)"""

    def build_extensions(self):
        abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
        include_dirs = [str(CSRC)] + cpp_extension.include_paths()
        build_temp = Path(self.build_temp)

        def compile_isa(item):
            isa, flags = item
            out_dir = build_temp / f"isa_{isa}"
            obj = out_dir / (Path(ISA_KERNEL).with_suffix(".o"))
            deps = list(CSRC.rglob("*.h")) + [ROOT / ISA_KERNEL, Path(__file__)]
            if obj.exists() and obj.stat().st_mtime > max(d.stat().st_mtime for d in deps):
                return str(obj)
            objs = self.compiler.compile(
                [ISA_KERNEL],
                output_dir=str(out_dir),
                macros=[("CPU_CAPABILITY", isa), (f"CPU_CAPABILITY_{isa}", None)],
                include_dirs=include_dirs,
                extra_postargs=CXX_FLAGS + [abi] + flags,
            )
            return objs[0]

        jobs = int(os.environ.get("MAX_JOBS", os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            isa_objects = list(pool.map(compile_isa, ISA_FLAGS.items()))
        for ext in self.extensions:
            # The DEFAULT build links first, so where the linker has to pick one
            # copy of an inline function from a header it picks the baseline one.
            ext.extra_objects = isa_objects + list(ext.extra_objects)
        super().build_extensions()


def write_build_info(with_cuda: bool):
    """vae_fused/_build_info.py: what this build compiled, for users and for the
    test that a CUDA build registered its kernels."""
    (ROOT / "vae_fused" / "_build_info.py").write_text(
        "# Written by setup.py at build time.\n"
        f"WITH_CUDA = {with_cuda}\n"
        f"CUDA_FORCED_OFF = {os.environ.get('VAE_FUSED_CUDA') == '0'}\n"
        f"TORCH_VERSION = {torch.__version__!r}\n"
        f"CPU_KERNEL_BUILDS = {list(ISA_FLAGS)!r}\n"
    )


def make_extension():
    sources = ["csrc/vae_loss.cpp", "csrc/cpu/vae_loss_cpu.cpp", "csrc/cpu/gradient_pool.cpp"]
    macros = [(f"VAE_FUSED_HAVE_{isa}", None) for isa in ISA_FLAGS if isa != "DEFAULT"]
    cxx = CXX_FLAGS
    with_cuda = want_cuda()
    write_build_info(with_cuda)
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;8.6;8.9;9.0+PTX")
        sources += sorted(str(p.relative_to(ROOT)) for p in (CSRC / "cuda").glob("*.cu"))
        macros.append(("VAE_FUSED_WITH_CUDA", None))
        nvcc = ["-O3", "-std=c++20", "--threads", "2", "-lineinfo"]
        return cpp_extension.CUDAExtension(
            "vae_fused._C", sources, define_macros=macros, include_dirs=[str(CSRC)],
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
        )
    return cpp_extension.CppExtension(
        "vae_fused._C", sources, define_macros=macros, include_dirs=[str(CSRC)],
        extra_compile_args={"cxx": cxx},
    )


setup(
    ext_modules=[make_extension()],
    cmdclass={"build_ext": BuildWithIsaKernels},
)
