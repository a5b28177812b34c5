"""Builds ganfast._C from csrc/: the C++ CPU kernels always (when torch is importable), the CUDA
kernels when torch has CUDA and nvcc is found, or when GANFAST_BUILD_CUDA=1. GANFAST_NO_EXT=1 skips
the extension; ganfast then runs its reference (and Triton) backends only.

Install with `pip install --no-build-isolation .`: the extension must be compiled against the torch
that is installed, not against a fresh copy pip would fetch into an isolated build environment.
"""
import glob
import os
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def extensions():
    if _flag("GANFAST_NO_EXT"):
        print("ganfast: GANFAST_NO_EXT is set, building without ganfast._C", file=sys.stderr)
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        print("ganfast: torch is not importable at build time, building without ganfast._C "
              "(install torch first and use --no-build-isolation)", file=sys.stderr)
        return [], {}

    csrc = os.path.join(ROOT, "csrc")
    sources = sorted(glob.glob(os.path.join(csrc, "*.cpp")) + glob.glob(os.path.join(csrc, "cpu", "*.cpp")))
    cxx_flags = ["-O3", "-std=c++17"]
    nvcc_found = cpp_extension.CUDA_HOME is not None or shutil.which("nvcc") is not None
    # Decided from the installed torch and the toolchain, never from the build machine's GPU.
    with_cuda = _flag("GANFAST_BUILD_CUDA") or (torch.version.cuda is not None and nvcc_found)
    if with_cuda:
        sources += sorted(glob.glob(os.path.join(csrc, "cuda", "*.cu")) + glob.glob(os.path.join(csrc, "cuda", "*.cpp")))
        ext = cpp_extension.CUDAExtension(
            "ganfast._C", [os.path.relpath(s, ROOT) for s in sources],
            define_macros=[("GANFAST_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++17", "--use_fast_math"]},
        )
    else:
        ext = cpp_extension.CppExtension(
            "ganfast._C", [os.path.relpath(s, ROOT) for s in sources],
            extra_compile_args={"cxx": cxx_flags},
        )
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
