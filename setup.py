"""Builds vae_fused._C: the op schemas, the CPU kernels (one object per x86
instruction set, picked at run time) and, when CUDA is available, the CUDA
kernels.

Environment:
  VAE_FUSED_CUDA=0|1      force the CUDA build off / on (default: on when this
                          torch has CUDA and nvcc is found via CUDA_HOME)
  VAE_FUSED_SANITIZE=1    build the C++ code with -fsanitize=address,undefined
                          (for the sanitizer stage of .ci/run; run it with
                          libasan and libstdc++ preloaded)
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

# Sources in csrc/cpu/isa/ are compiled once per instruction set, with that
# set's flags (ATen uses the same sets and defines); the CPU op picks one build
# at run time. Everything else in csrc/ and csrc/cpu/ is compiled once with
# baseline flags.
ISA_SOURCES = sorted(str(p.relative_to(ROOT)) for p in (CSRC / "cpu" / "isa").glob("*.cpp"))
BASE_SOURCES = sorted(str(p.relative_to(ROOT)) for p in [*CSRC.glob("*.cpp"), *(CSRC / "cpu").glob("*.cpp")])
ISA_FLAGS = {"DEFAULT": []}
if platform.machine().lower() in ("x86_64", "amd64"):
    ISA_FLAGS["AVX2"] = ["-mavx2", "-mfma", "-mf16c"]
    ISA_FLAGS["AVX512"] = ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c"]

# -Wno-unknown-pragmas / -Wno-maybe-uninitialized silence hundreds of lines
# from ATen's vec headers and gcc's AVX-512 intrinsics headers, not ours.
# -fopenmp: at::parallel_for is inline and splits work across threads only
# in a translation unit compiled with OpenMP (ATen/ParallelOpenMP.h); without
# it every pass ran on one thread (measured: 2 threads, BCE 3.1M forward
# 2.5 ms either way). The linked libgomp.so.1 is the one torch has already
# loaded (same soname), so there is one OpenMP runtime in the process.
OPENMP_FLAGS = ["-fopenmp"] if sys.platform.startswith("linux") else []
CXX_FLAGS = ["-O3", "-std=c++20", "-fPIC", "-Wall", "-Wno-unused-function",
             "-Wno-unknown-pragmas", "-Wno-maybe-uninitialized"] + OPENMP_FLAGS
SANITIZE = os.environ.get("VAE_FUSED_SANITIZE") == "1"
SANITIZER_FLAGS = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined", "-g"]
if SANITIZE:
    CXX_FLAGS = [f for f in CXX_FLAGS if f != "-O3"] + ["-O1"] + SANITIZER_FLAGS


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
            (isa, flags), source = item
            out_dir = build_temp / f"isa_{isa}"
            obj = out_dir / (Path(source).with_suffix(".o"))
            deps = list(CSRC.rglob("*.h")) + [ROOT / source, Path(__file__)]
            if obj.exists() and obj.stat().st_mtime > max(d.stat().st_mtime for d in deps):
                return str(obj)
            objs = self.compiler.compile(
                [source],
                output_dir=str(out_dir),
                macros=[("CPU_CAPABILITY", isa), (f"CPU_CAPABILITY_{isa}", None)],
                include_dirs=include_dirs,
                extra_postargs=CXX_FLAGS + [abi] + flags,
            )
            return objs[0]

        jobs = int(os.environ.get("MAX_JOBS", os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            work = [(item, source) for item in ISA_FLAGS.items() for source in ISA_SOURCES]
            isa_objects = list(pool.map(compile_isa, work))
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
    sources = list(BASE_SOURCES)
    macros = [(f"VAE_FUSED_HAVE_{isa}", None) for isa in ISA_FLAGS if isa != "DEFAULT"]
    cxx = CXX_FLAGS
    link = OPENMP_FLAGS + (SANITIZER_FLAGS if SANITIZE else [])
    with_cuda = want_cuda()
    write_build_info(with_cuda)
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;8.6;8.9;9.0+PTX")
        sources += sorted(str(p.relative_to(ROOT)) for p in (CSRC / "cuda").glob("*.cu"))
        nvcc = ["-O3", "-std=c++20", "--threads", "2", "-lineinfo"]
        return cpp_extension.CUDAExtension(
            "vae_fused._C", sources, define_macros=macros, include_dirs=[str(CSRC)],
            extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=link,
        )
    return cpp_extension.CppExtension(
        "vae_fused._C", sources, define_macros=macros, include_dirs=[str(CSRC)],
        extra_compile_args={"cxx": cxx}, extra_link_args=link,
    )


setup(
    ext_modules=[make_extension()],
    cmdclass={"build_ext": BuildWithIsaKernels},
)
