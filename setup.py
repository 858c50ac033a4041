"""Builds adain_ext._C: the CPU kernels always, the CUDA kernels when a CUDA toolkit and a CUDA
build of torch are present.

Environment overrides:
  ADAIN_EXT_CUDA=0      never build CUDA kernels      FORCE_CUDA=1   build them or fail
  TORCH_CUDA_ARCH_LIST  the archs to build for (default when no GPU is visible: 8.0;9.0)
  ADAIN_EXT_DEBUG=1     -O0 -g builds
"""
from __future__ import annotations

import glob
import os
import shutil
import sys
import sysconfig

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _find_cuda_home() -> str | None:
    """The CUDA toolkit folder. torch guesses it from the `nvcc` on PATH, which on some machines
    is a wrapper script in /usr/local/bin (giving CUDA_HOME=/usr/local, which has no headers), so
    prefer an explicit CUDA_HOME, then the standard /usr/local/cuda symlink, then nvcc's real path.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for folder in candidates:
        if folder and os.path.isfile(os.path.join(folder, "bin", "nvcc")) and os.path.isdir(
            os.path.join(folder, "include")
        ):
            return os.path.realpath(folder)
    return None


CUDA_HOME = _find_cuda_home()
if CUDA_HOME:
    # Must be set before torch.utils.cpp_extension is imported: it reads CUDA_HOME at import.
    os.environ["CUDA_HOME"] = CUDA_HOME

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _wheel_cuda_includes() -> list[str]:
    """Headers torch's CUDA headers include (cublas_v2.h, cusparse.h, ...) that some toolkits lack
    but the nvidia-* pip wheels that come with a CUDA build of torch carry. They lie beside the
    torch that builds (in a venv made with --system-site-packages, not in the venv's own
    site-packages), or in this interpreter's."""
    found = []
    for site in {os.path.dirname(os.path.dirname(torch.__file__)), sysconfig.get_paths()["purelib"]}:
        found += glob.glob(os.path.join(site, "nvidia", "cu*", "include"))
        found += glob.glob(os.path.join(site, "nvidia", "*", "include"))
    return sorted(d for d in set(found) if os.path.isfile(os.path.join(d, "cublas_v2.h"))
                  or os.path.isfile(os.path.join(d, "cusparse.h")))


def _want_cuda() -> tuple[bool, str]:
    if os.environ.get("ADAIN_EXT_CUDA") == "0":
        return False, "ADAIN_EXT_CUDA=0"
    forced = os.environ.get("FORCE_CUDA") == "1"
    if torch.version.cuda is None:
        if forced:
            sys.exit("setup.py: FORCE_CUDA=1 but this torch is a CPU-only build")
        return False, "torch is a CPU-only build"
    if CUDA_HOME is None:
        if forced:
            sys.exit("setup.py: FORCE_CUDA=1 but no CUDA toolkit (nvcc) was found; set CUDA_HOME")
        return False, "no CUDA toolkit found"
    return True, "FORCE_CUDA=1" if forced else "CUDA toolkit and CUDA torch found"


def _arch_list() -> str:
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"]
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return f"{major}.{minor}"
    # No GPU visible: torch would fail to pick archs. Ampere and Hopper cover the cards we target.
    return "8.0;9.0"


def _cpu_vector_flags() -> tuple[list[str], str]:
    """ATen's Vectorized<T> is scalar code unless a CPU_CAPABILITY is defined; build the CPU
    kernels for AVX2+FMA when the build machine has them (ADAIN_EXT_CPU_ARCH=default turns this
    off for binaries that must run on older x86 CPUs). The vector types live in an inline
    namespace named after the capability, so they cannot clash with libtorch's own."""
    if os.environ.get("ADAIN_EXT_CPU_ARCH", "native") == "default":
        return [], "default (ADAIN_EXT_CPU_ARCH=default)"
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    if {"avx2", "fma", "f16c"} <= set(flags):
        return ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"], "AVX2+FMA"
    return [], "default (no AVX2 on the build machine)"


def extensions():
    debug = os.environ.get("ADAIN_EXT_DEBUG") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    vector_flags, vector_why = _cpu_vector_flags()
    # No -std flag: torch picks the standard its headers need (C++17 with torch 2.11, C++20 with 2.14).
    # OpenMP runs at::parallel_for across threads. Apple's clang has no -fopenmp: there (and
    # wherever else it is not Linux) the kernels are built without it and run on one thread.
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    cxx_flags = opt + openmp + vector_flags
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
    use_cuda, why = _want_cuda()
    include_dirs = [os.path.join(ROOT, "csrc")]
    config = {"torch": torch.__version__, "CUDA kernels": f"{use_cuda} ({why})",
              "CPU vectors": vector_why,
              "OpenMP": "yes" if openmp else f"no ({sys.platform}: one thread)",
              "cxx flags": " ".join(cxx_flags)}
    if use_cuda and cuda_sources:
        os.environ["TORCH_CUDA_ARCH_LIST"] = _arch_list()
        include_dirs += _wheel_cuda_includes()
        nvcc_flags = opt + ["--expt-relaxed-constexpr", "-lineinfo"]
        config.update({"CUDA_HOME": CUDA_HOME, "CUDA archs": os.environ["TORCH_CUDA_ARCH_LIST"],
                       "nvcc flags": " ".join(nvcc_flags),
                       "extra includes": ", ".join(include_dirs[1:]) or "none"})
        ext = CUDAExtension(
            "adain_ext._C", sources + cuda_sources, include_dirs=include_dirs,
            define_macros=[("ADAIN_EXT_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
            extra_link_args=openmp,
        )
    else:
        ext = CppExtension("adain_ext._C", sources, include_dirs=include_dirs,
                           extra_compile_args={"cxx": cxx_flags}, extra_link_args=openmp)
    config["sources"] = ", ".join(ext.sources)
    print("adain_ext build configuration:")
    for key, value in config.items():
        print(f"  {key:>13}: {value}")
    _record(config)
    return [ext]


def _record(config: dict) -> None:
    """Writes the configuration into the package, for `adain-ext env`: the compiled module cannot
    tell which ISA flags or CUDA archs it was built with. A .py file, so wheels carry it as they
    carry every module."""
    with open(os.path.join(ROOT, "adain_ext", "_build_config.py"), "w") as f:
        f.write('"""Written by setup.py at build time; read by adain_ext.env."""\n'
                f"CONFIG = {config!r}\n")


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
