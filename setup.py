"""Builds ganfast._C from csrc/: the C++ CPU kernels always (when torch is importable), the CUDA
kernels when torch has CUDA and nvcc is found, or when GANFAST_BUILD_CUDA=1. GANFAST_NO_EXT=1 skips
the extension; ganfast then runs its reference (and Triton) backends only.

Install with `pip install --no-build-isolation .`: the extension must be compiled against the torch
that is installed, not against a fresh copy pip would fetch into an isolated build environment.
"""
import glob
import os
import platform
import shutil
import subprocess
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


# The kernels in csrc/cpu/vec/ are compiled once per CPU capability, as PyTorch compiles its own
# (ATen/native/cpu): the same source with CPU_CAPABILITY=<name> (the namespace of that copy, and the
# Vectorized<T> width) and that capability's ISA flags. csrc/cpu/capability.cpp picks a copy at run
# time from cpuid. The objects are linked after the baseline ones, so that an inline function both
# kinds of file use (c10, ATen headers) resolves to its baseline-x86-64 instance.
X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")
CPU_CAPABILITIES = {"DEFAULT": []}
if X86 and os.name != "nt":
    CPU_CAPABILITIES["AVX2"] = ["-mavx2", "-mfma", "-mf16c"]
    CPU_CAPABILITIES["AVX512"] = ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c"]


def capability_build_ext(base):
    """build_ext that compiles csrc/cpu/vec/*.cpp once per entry of CPU_CAPABILITIES and links them in."""
    class BuildExt(base):
        def build_extension(self, ext):
            sources = sorted(os.path.relpath(s, ROOT) for s in glob.glob(os.path.join(ROOT, "csrc", "cpu", "vec", "*.cpp")))
            cxx = ext.extra_compile_args["cxx"] if isinstance(ext.extra_compile_args, dict) else ext.extra_compile_args
            objects = []
            for name, flags in CPU_CAPABILITIES.items():
                objects += self.compiler.compile(
                    sources, output_dir=os.path.join(self.build_temp, f"cpu_{name.lower()}"),
                    macros=list(ext.define_macros) + [("CPU_CAPABILITY", name), (f"CPU_CAPABILITY_{name}", None)],
                    include_dirs=ext.include_dirs, extra_postargs=list(cxx) + flags,
                    depends=sources + glob.glob(os.path.join(ROOT, "csrc", "**", "*.h"), recursive=True))
            ext.extra_objects = [o for o in ext.extra_objects if o not in objects] + objects
            super().build_extension(ext)
            warn_if_static_cxx_runtime(self.get_ext_fullpath(ext.name))
    return BuildExt


def openmp_flags(torch):
    """(compile, link) flags that make at::parallel_for in ganfast's kernels run on several threads.

    With PyTorch's OpenMP backend, at::parallel_for is a header template around `#pragma omp
    parallel`: an extension compiled without -fopenmp gets a serial loop, silently. Linking names
    the libgomp that torch ships, when it ships one, so that the process keeps a single OpenMP runtime
    (one thread pool, one OMP_NUM_THREADS / torch.set_num_threads)."""
    if os.name == "nt" or sys.platform == "darwin" or "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return [], []
    bundled = sorted(glob.glob(os.path.join(os.path.dirname(torch.__file__), "lib", "libgomp*.so*")))
    return ["-fopenmp"], (bundled[:1] or ["-fopenmp"])


def shared_cxx_runtime_flags():
    """Link flags that make the extension use the process's shared libstdc++, as torch does.

    A compiler that links libstdc++ statically (the H200 machine's /opt/gcc/bin/g++, a wrapper around
    Ubuntu's g++ 13, does) gives the extension a second copy of the iostream and locale code; torch's
    TORCH_CHECK messages are then formatted by that copy with the other's locale: on that machine
    every check whose message has a number segfaulted, and here (gcc 12 with -static-libstdc++) the
    number was silently dropped. A plain -lstdc++ fixed it here but not there (ldd still showed no
    libstdc++; how the wrapper links it is not known), so the library goes to the linker directly,
    shared, ahead of the static one the driver adds (untried on that machine; tested here)."""
    if os.name == "nt" or sys.platform == "darwin":
        return []
    return ["-Wl,--push-state,-Bdynamic,-lstdc++,--pop-state"]


def warn_if_static_cxx_runtime(library):
    """Loud warning when the built extension still does not load the shared libstdc++ (see above)."""
    readelf = shutil.which("readelf")
    if os.name == "nt" or sys.platform == "darwin" or readelf is None or not os.path.exists(library):
        return
    dynamic = subprocess.run([readelf, "-d", library], capture_output=True, text=True).stdout
    if "[libstdc++.so" not in dynamic:
        _loud(f"ganfast: {os.path.basename(library)} does not load the shared libstdc++: the C++ compiler "
              f"({os.environ.get('CXX', 'c++')}) linked a static copy, and error messages from the C++ "
              "kernels may crash the process or lose their numbers. Build with another compiler, e.g. "
              "CXX=/usr/bin/g++ (tests/test_backends.py::test_extension_uses_the_shared_cxx_runtime).")


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
    openmp_compile, openmp_link = openmp_flags(torch)
    link_flags = openmp_link + shared_cxx_runtime_flags()
    cxx_flags = ["-O3", "-std=c++17"] + openmp_compile
    # the capability copies this build has (csrc/cpu/kernels.h declares and dispatches to them)
    macros = [(f"GANFAST_HAVE_{name}", None) for name in CPU_CAPABILITIES if name != "DEFAULT"]
    nvcc_found = cpp_extension.CUDA_HOME is not None or shutil.which("nvcc") is not None
    # Decided from the installed torch and the toolchain, never from the build machine's GPU.
    with_cuda = _flag("GANFAST_BUILD_CUDA") or (torch.version.cuda is not None and nvcc_found)
    if with_cuda:
        sources += sorted(glob.glob(os.path.join(csrc, "cuda", "*.cu")) + glob.glob(os.path.join(csrc, "cuda", "*.cpp")))
        ext = cpp_extension.CUDAExtension(
            "ganfast._C", [os.path.relpath(s, ROOT) for s in sources],
            define_macros=macros + [("GANFAST_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++17", "--use_fast_math"]},
            extra_link_args=link_flags,
        )
    else:
        ext = cpp_extension.CppExtension(
            "ganfast._C", [os.path.relpath(s, ROOT) for s in sources],
            define_macros=macros, extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags,
        )
    build_ext = cpp_extension.BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)
    return [ext], {"build_ext": capability_build_ext(build_ext)}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
