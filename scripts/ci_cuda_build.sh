#!/usr/bin/env bash
# CI, without a GPU: build ganfast._C with its CUDA kernels against the CUDA build of torch, in its
# own virtual environment, import it, and check that every ganfast:: op with a C++ CPU kernel also
# has a CUDA kernel registered. This proves the bindings (csrc/cuda/*_binding.cpp) compile against
# torch's CUDA headers, the extension links, and the registrations run; not that the kernels are right
# (that needs a GPU: scripts/gpu_check.sh).
#
#   scripts/ci_cuda_build.sh [torch version, default 2.13.0]
#
# What it installs: torch (the PyPI wheel is the CUDA 13.0 build) with --no-deps, then only the
# packages the build and `import torch` need: the nvidia-* libraries libtorch_cuda.so links to (their
# headers give the cuBLAS/cuSPARSE headers the local toolkit lacks) and torch's small pure-Python
# dependencies. Left out: triton, cuda-bindings/-pathfinder/-toolkit, nvidia-cusolver (loaded lazily by
# libtorch_cuda_linalg.so), nvidia-nvtx (optional). Versions come from torch's own pins (pip resolves
# the full set with --dry-run, from metadata only).
# nvcc comes from the local CUDA toolkit. The wheels are kept in ~/.cache/ganfast-ci/wheels
# ($GANFAST_CI_WHEELS) and the venv too (.ci-cuda-venv-<version>, reused while it holds that torch).
#
# Cost, measured 2026-11-28 on this 2-core CI machine while it was shared (load average 6-13):
#   first run: 2.2 GB of wheels downloaded (torch 0.53 GB, nvidia-* 1.7 GB; the index served about
#     200 MB/s, so ~15 s of transfer; 4.6 min with pip's metadata resolution under that load),
#     install 70 s on a quiet machine (the venv is 3.8 GB), full build 21 min at load 10-13 and
#     5.6 min at load 4 (the issue measured 1.5 min on a quiet machine), registration check ~10 s.
#   later runs: no download and no install (venv kept); ninja recompiles only changed sources
#     (nothing changed: 18 s in all; one binding changed: 45-55 s), then the check.
#   a fresh clone with the wheel folder there: no download; install + full build.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
torch_version=${1:-2.13.0}
venv="$root/.ci-cuda-venv-$torch_version"
started=$SECONDS

# This machine's pip configuration adds a local wheel folder holding the CPU build of the same torch
# version (and a version cap); ignore it, so the index's CUDA build is installed.
export PIP_CONFIG_FILE=/dev/null
unset PIP_FIND_LINKS PIP_CONSTRAINT

nvcc_bin=$(command -v nvcc || true)
[ -n "$nvcc_bin" ] || { echo "ci_cuda_build: nvcc not found, cannot build the CUDA extension" >&2; exit 1; }
# The toolkit root as nvcc itself reports it (nvcc may be a wrapper script outside the toolkit).
cuda_home=${CUDA_HOME:-$(cd "$(nvcc --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p')" && pwd)}

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"
# The index sends its wheels uncacheable (pip's own cache stays empty), so keep them in a folder of
# our own, with the list of pins: a later run, even from a fresh clone, downloads nothing.
wheels=${GANFAST_CI_WHEELS:-$HOME/.cache/ganfast-ci/wheels}
mkdir -p "$wheels"

# pip install from the wheel folder, downloading into it first what is not there yet.
install_kept() {
  "$py" -m pip install -q --no-index --find-links "$wheels" "$@" 2> /dev/null && return
  "$py" -m pip download -q -d "$wheels" "$@"  # skips the files already there
  "$py" -m pip install -q --no-index --find-links "$wheels" "$@"
}

have=$("$py" -c 'import torch; print(torch.__version__)' 2>/dev/null || true)
if [[ "$have" != "$torch_version+cu"* ]]; then
  echo "ci_cuda_build: installing torch $torch_version (CUDA build) into $venv"
  pins_file="$wheels/torch-$torch_version.pins"
  if [ ! -s "$pins_file" ]; then
    report=$(mktemp)
    "$py" -m pip install -q --dry-run --ignore-installed --report "$report" "torch==$torch_version"
    "$py" - "$report" > "$pins_file.tmp" <<'EOF'
import json, sys
skip = {"triton", "cuda-bindings", "cuda-pathfinder", "cuda-toolkit", "nvidia-cusolver", "nvidia-nvtx"}
for p in json.load(open(sys.argv[1]))["install"]:
    name = p["metadata"]["name"].lower().replace("_", "-")
    if name not in skip:
        print(f"{name}=={p['metadata']['version']}")
print("setuptools>=77\nwheel\nninja")
EOF
    mv "$pins_file.tmp" "$pins_file"
    rm -f "$report"
  fi
  mapfile -t pins < "$pins_file"
  install_kept --no-deps "${pins[@]}"
fi
# ganfast's own run-time dependencies besides torch (pyproject.toml), which `import ganfast` needs.
mapfile -t deps < <("$py" -c 'import tomllib; print("\n".join(d for d in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"] if not d.startswith("torch")))')
"$py" -c 'import importlib.metadata as m, sys; [m.version(d) for d in sys.argv[1:]]' "${deps[@]%%[<>=]*}" 2> /dev/null || install_kept "${deps[@]}"
"$py" -c 'import torch; assert torch.version.cuda, "not a CUDA build of torch"; print("torch", torch.__version__, "CUDA", torch.version.cuda)'
echo "ci_cuda_build: torch ready after $((SECONDS - started)) s"

# Build in a copy of the work tree: an in-place build would replace the CPU extension the tests use.
# The copy lives in the venv and keeps its build/ folder; `cp -p` keeps the sources' times, so ninja
# recompiles only the files changed since the last run.
src="$venv/ganfast-src"
mkdir -p "$src"
find "$src" -mindepth 1 -maxdepth 1 ! -name build -exec rm -rf {} +
git ls-files -co --exclude-standard -z | xargs -0 cp -p --parents -t "$src"
site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cuda_include=$(ls -d "$site"/nvidia/cu[0-9]*/include | head -1)  # cuBLAS, cuSPARSE, ... headers
(
  cd "$src"
  export PATH="$venv/bin:$PATH" CUDA_HOME="$cuda_home" CPATH="$cuda_include${CPATH:+:$CPATH}"
  export TORCH_CUDA_ARCH_LIST="8.0;9.0" GANFAST_BUILD_CUDA=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}
  "$py" setup.py -q build_ext --inplace > build.log 2>&1 || { grep -E -B2 -A12 'error|Error' build.log | head -80 >&2; tail -5 build.log >&2; echo "ci_cuda_build: the CUDA extension did not build against torch $torch_version" >&2; exit 1; }
)
echo "ci_cuda_build: built after $((SECONDS - started)) s"

# Import without a GPU; every ganfast:: op with a C++ CPU kernel must have a CUDA kernel as well.
(cd "$src" && PYTHONPATH="$src" "$py" - <<'EOF'
import re
import torch
import ganfast
from ganfast import backends

assert backends.extension_built_with_cuda(), f"ganfast._C without CUDA kernels: {backends.status('cuda').reason}"
ops = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("ganfast::"))
assert ops, "no ganfast:: op is registered"

def kernel_source(op, key):
    """Where `op`'s kernel for dispatch key `key` was registered (a C++ file for ganfast._C), or None."""
    m = re.search(rf"^{key}: .*registered at (\S+)", torch._C._dispatch_dump(op), re.M)
    return m.group(1) if m else None

def from_cpp(op, key):
    return (kernel_source(op, key) or "").split(":")[0].endswith((".cpp", ".cu"))

cpp_cpu = [op for op in ops if from_cpp(op, "CPU")]
assert cpp_cpu, "no ganfast:: op has a C++ CPU kernel: was ganfast._C built with its CPU kernels?"
# Ops that have no CUDA kernel yet on purpose, and why; an entry that gains one must be removed here.
CPU_ONLY: dict[str, str] = {}  # the multi-tensor spectral norm gained its CUDA kernels (issue 17)
has_cuda = {op: torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA") and from_cpp(op, "CUDA") for op in cpp_cpu}
missing = [op for op in cpp_cpu if not has_cuda[op] and op not in CPU_ONLY]
stale = [op for op in CPU_ONLY if has_cuda.get(op)]
assert not stale, f"these ops have a CUDA kernel now, remove them from CPU_ONLY: {stale}"
for op in cpp_cpu:
    print(f"  {op:45s} CPU: {kernel_source(op, 'CPU')}   CUDA: {kernel_source(op, 'CUDA')}")
assert not missing, f"ops with a C++ CPU kernel but no CUDA kernel: {missing}"
for op, why in CPU_ONLY.items():
    print(f"  {op:45s} no CUDA kernel, known: {why}")
print(f"ci_cuda_build: {sum(has_cuda.values())} ganfast:: ops have both a C++ CPU and a CUDA kernel "
      f"(torch {torch.__version__}, no GPU: cuda available = {torch.cuda.is_available()})")
EOF
)
echo "ci_cuda_build: passed in $((SECONDS - started)) s"
