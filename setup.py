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


def _loud(text):
    bar = "!" * 100
    print(f"\n{bar}\n{text}\n{bar}\n", file=sys.stderr, flush=True)


# commands that build or install the package (pip runs bdist_wheel / editable_wheel); sdist and
# metadata queries do not need torch
_BUILDS = {"bdist_wheel", "build", "build_ext", "install", "develop", "editable_wheel"}


def extensions():
    if _flag("GANFAST_NO_EXT"):
        _loud("ganfast: GANFAST_NO_EXT is set: building WITHOUT the C++ extension ganfast._C; ganfast will run "
              "its slower reference (and Triton) backends only")
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        # Failing is the only message pip shows: a warning of a successful build stays hidden, and a
        # silent build without the kernels trains several times slower.
        text = ("ganfast: torch is not importable in this build environment, so the C++ extension ganfast._C "
                "cannot be built.\nInstall torch first, then install ganfast with `pip install "
                "--no-build-isolation .` (pip's default isolated build cannot see your torch),\nor set "
                "GANFAST_NO_EXT=1 to install it without the C++ kernels (slower).")
        if _BUILDS & set(sys.argv[1:]):
            _loud(text)
            sys.exit(text.splitlines()[0] + " Use `pip install --no-build-isolation .` (see above).")
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
