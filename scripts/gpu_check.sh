#!/usr/bin/env bash
# One-shot GPU check, for a machine with a CUDA GPU and a CUDA build of torch: builds ganfast._C
# with its CUDA kernels, runs the test suite (CUDA and Triton tests included), validates every
# backend against the reference, and runs the benchmarks. Output goes to stdout and to $OUT (if set).
set -uo pipefail
cd "$(dirname "$0")/.."
log_dir="${OUT:-/tmp/ganfast-gpu}"; mkdir -p "$log_dir"
python3 -m venv .gpu-venv && source .gpu-venv/bin/activate
python -m pip install -q --upgrade pip setuptools wheel ninja
python -c "import torch" 2>/dev/null || python -m pip install -q torch
python -m pip install -q triton pytest pytest-benchmark numpy tqdm
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$log_dir/gpu.txt"
MAX_JOBS=16 python -m pip install --no-build-isolation -e . 2>&1 | tail -3 | tee "$log_dir/build.txt"
ganfast info | tee "$log_dir/info.txt"
python -m pytest -q -x tests 2>&1 | tail -25 | tee "$log_dir/tests.txt"
ganfast validate 2>&1 | tee "$log_dir/validate.txt" | tail -15
ganfast bench --device cuda 2>&1 | tee "$log_dir/bench.txt"
