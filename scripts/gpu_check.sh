#!/usr/bin/env bash
# One-shot GPU check, for the lent GPU machine: no network, the `python3` found there (torch with
# CUDA, Triton, pytest, numpy, tqdm already installed). Builds ganfast._C with its CUDA kernels, checks
# that bad input raises (with cuda-gdb's backtrace where it crashes), times cuda against triton against
# the plain-PyTorch reference for every op family and single-layer against multi-tensor spectral norm
# (the data for auto's GPU order: $OUT/backend_order.txt and .json), runs `ganfast bench --quick` on
# the GPU (step, losses, sn, gp and sweep), the CUDA and Triton tests and `ganfast validate`, counts
# the launches per call on the GPU (`ganfast bench launches`), and runs the rest of the tests, in that
# order (timings while the machine is quiet, then the most telling first), each step with its own
# time limit, and ends with one summary table. Every log goes to $OUT (default
# /tmp/ganfast-gpu-check); the table is also $OUT/summary.txt. Without a GPU (a rehearsal) the
# build still runs and the GPU steps are skipped.
# Time: GPU_CHECK_SECONDS (default 570) bounds the whole run; a step gets at most what is left, and is
# skipped when under 15 s is, so the summary is always written. Step limits in seconds can be changed:
# GPU_CHECK_LIMITS="build=240 errors=40 backtrace=60 gpu-tests=150 order=100 bench=150 validate=40 launches=90 other-tests=200".
# A short rerun: GPU_CHECK_STEPS names the steps to run after env and build (e.g. "errors gpu-tests"),
# GPU_CHECK_TESTS replaces the gpu-tests step's -k expression.
# A failed or timed-out step is reported in the table; the next steps still run. Tests run on 8
# processes where pytest-xdist is installed, each test under 120 s where pytest-timeout is.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/ganfast-gpu-check}"
mkdir -p "$out"
py=${PYTHON:-python3}
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1  # nothing can be fetched there: never try
export PYTHONUNBUFFERED=1

declare -A limit=([env]=40 [build]=240 [info]=20 [errors]=40 [backtrace]=60 [errors-preload]=30 [gpu-tests]=150 [order]=100 [bench]=150 [validate]=40
                  [launches]=90 [other-tests]=200)
for kv in ${GPU_CHECK_LIMITS:-}; do limit[${kv%%=*}]=${kv#*=}; done
budget=${GPU_CHECK_SECONDS:-570}
steps=() status=() seconds=()

# run_step NAME COMMAND...: runs it under `timeout` (its limit, or what is left of the budget less 10 s
# for the summary), output to $out/NAME.txt (and its tail to stdout).
run_step() {
  local name=$1; shift
  local t0=$SECONDS rc left=$((budget - SECONDS - 10)) cap=${limit[$name]}
  if [ -n "${GPU_CHECK_STEPS:-}" ] && [[ " env build $GPU_CHECK_STEPS " != *" $name "* ]]; then
    skip_step "$name" "not in GPU_CHECK_STEPS"; return 0
  fi
  if [ "$left" -lt 15 ]; then skip_step "$name" "no time left (GPU_CHECK_SECONDS=$budget)"; return 1; fi
  [ "$left" -lt "$cap" ] && cap=$left
  echo "== $name (limit $cap s)"
  timeout --kill-after=5 "$cap" "$@" > "$out/$name.txt" 2>&1
  rc=$?
  tail -n 15 "$out/$name.txt"
  case $rc in
    0) status+=("ok") ;;
    124|137) status+=("TIMEOUT after $cap s") ;;
    *) status+=("FAILED (exit $rc)") ;;
  esac
  steps+=("$name"); seconds+=($((SECONDS - t0)))
  return $rc
}
skip_step() { steps+=("$1"); status+=("skipped: $2"); seconds+=(0); }

run_step env "$py" -c '
import os, shutil, subprocess, sys, torch
print("python", sys.version.split()[0], sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu:", torch.cuda.is_available())
try:
    import triton; print("triton", triton.__version__)
except ImportError as e:
    print("triton: not installed", e)
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
print("CXX =", os.environ.get("CXX"), "| c++:", shutil.which("c++"), "| g++:", shutil.which("g++"))
for cmd in (["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv"], ["nvcc", "--version"],
            [os.environ.get("CXX") or "c++", "--version"]):
    if shutil.which(cmd[0]):
        subprocess.run(cmd, check=False)
    else:
        print(cmd[0], "not found")
'
has_gpu=$("$py" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)

# Build for this GPU's architecture only (faster); sm_80 and sm_90 where there is none.
arch=$("$py" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability(0))' 2>/dev/null || echo "8.0;9.0")
# Headers of the CUDA libraries torch uses (cuBLAS, cuSPARSE) from the nvidia-* wheels, if the
# toolkit lacks them; nvcc's own toolkit otherwise.
cuda_include=$("$py" -c '
import glob, os, sysconfig
print(":".join(glob.glob(os.path.join(sysconfig.get_paths()["purelib"], "nvidia", "cu[0-9]*", "include"))))')
# The toolkit root as nvcc reports it (torch would guess it from nvcc's path, wrong for a wrapper).
if [ -z "${CUDA_HOME:-}" ] && command -v nvcc > /dev/null; then
  export CUDA_HOME=$(cd "$(nvcc --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p')" && pwd)
fi
# In place (no pip, nothing installed into that Python): ganfast is imported from here.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
run_step build env GANFAST_BUILD_CUDA=1 TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS="$(nproc)" \
  CPATH="$cuda_include${CPATH:+:$CPATH}" "$py" setup.py build_ext --inplace
built=$?
if [ $built -eq 0 ]; then  # the CUDA kernels must be in it: `ganfast info` names the reason if not
  "$py" -c 'from ganfast import backends as b; print("cuda backend:", b.status("cuda")); assert b.extension_built_with_cuda()' \
    >> "$out/build.txt" 2>&1 || { built=1; status[-1]="FAILED (ganfast._C without CUDA)"; }
  # which C++ runtime the extension resolves (for the bad-input crash of the first H200 run)
  { echo "== ldd"; ldd ganfast/_C*.so | grep -E "stdc|gcc_s|gomp|c10"; } >> "$out/build.txt" 2>&1
fi

pytest_args=(-q -p no:cacheprovider -rfE --durations 10)
"$py" -c 'import xdist' 2> /dev/null && pytest_args+=(-n 8)
"$py" -c 'import pytest_timeout' 2> /dev/null && pytest_args+=(--timeout 120)
# the tests that run a kernel on the GPU: every cuda and triton case, less the files that only compile
# (csrc/cuda with nvcc, Triton for a stand-in target: CI runs those; the latter took a minute of the
# first H200 run's test step)
gpu_tests=${GPU_CHECK_TESTS:-"(cuda or triton) and not cuda_sources and not cuda_launch_count and not triton_compile"}

if [ "$has_gpu" != 1 ]; then
  for s in errors gpu-tests order bench validate launches other-tests; do skip_step $s "no GPU visible to torch"; done
elif [ $built -ne 0 ]; then
  for s in errors gpu-tests; do skip_step $s "the build failed"; done
  # Triton and the reference still decide their own rows (the cuda ones are reported as errors)
  run_step order "$py" -m ganfast.bench.backend_order --out "$out"
  for s in bench validate launches other-tests; do skip_step $s "the build failed"; done
else
  run_step info "$py" -m ganfast info
  # Bad input must raise, not crash the process: on the first H200 run (2026-12-04) these three
  # segfaulted, built by the machine's /opt/gcc g++, which links libstdc++ statically (README, "GPU
  # runs"); one process, no xdist.
  run_step errors "$py" -m pytest -q -p no:cacheprovider \
    "tests/losses/test_losses.py::TestEagerEntry::test_errors_come_back_as_python_exceptions" \
    "tests/augment/test_augment_ops.py::test_kernels_reject_bad_parameters" \
    "tests/spectral_norm/test_multi.py::test_multi_bad_input" ||
  # where one still crashes: where, from cuda-gdb (it debugs host code too; gdb is not installed there)
  {
    if command -v cuda-gdb > /dev/null; then
      run_step backtrace cuda-gdb -q -batch -ex "set pagination off" -ex run -ex bt -ex "info sharedlibrary" \
        --args "$py" -c 'import torch, ganfast._C as C; C.gan_loss_eager(None, torch.randn(3))'
    fi
    # and whether the C++ runtime of the compiler that built the extension makes them raise
    run_step errors-preload env LD_PRELOAD="$(${CXX:-c++} -print-file-name=libstdc++.so.6)" \
      "$py" -m pytest -q -p no:cacheprovider "tests/losses/test_losses.py::TestEagerEntry"
  }
  # the timings first, while nothing else runs (the first run's sn bench ran at a load of 7.9 after
  # the 8-process test step)
  run_step order "$py" -m ganfast.bench.backend_order --out "$out"
  run_step bench "$py" -m ganfast bench step losses sn gp sweep --quick --device cuda
  run_step gpu-tests "$py" -m pytest "${pytest_args[@]}" -k "$gpu_tests" tests
  run_step validate "$py" -m ganfast validate
  run_step launches "$py" -m ganfast bench launches --device cuda
  run_step other-tests "$py" -m pytest "${pytest_args[@]}" -k "not ($gpu_tests)" tests
fi

{
  printf '%-12s %-36s %s\n' step result seconds
  for i in "${!steps[@]}"; do
    printf '%-12s %-36s %s\n' "${steps[$i]}" "${status[$i]}" "${seconds[$i]}"
  done
  echo "logs: $out"
} | tee "$out/summary.txt"
for s in "${status[@]}"; do [[ $s == ok || $s == skipped* ]] || exit 1; done
