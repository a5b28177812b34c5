"""The CUDA kernels compile with nvcc on any machine with the toolkit (they include no torch headers);
they run in the CUDA backend tests only where a GPU is present."""
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CU_FILES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
NVCC = shutil.which("nvcc") or (shutil.which("nvcc", path="/usr/local/cuda/bin"))


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
@pytest.mark.parametrize("source", CU_FILES, ids=lambda p: p.name)
def test_cuda_source_compiles(source, tmp_path):
    cmd = [NVCC, "-std=c++17", "-O2", "-c", str(source), "-o", str(tmp_path / "out.o"),
           "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{' '.join(cmd)}\n{out.stderr}"


def test_cuda_kernels_include_no_torch_headers():
    for source in CU_FILES + sorted((ROOT / "csrc" / "cuda").glob("*.cuh")):
        text = source.read_text()
        for banned in ("#include <torch", "#include <ATen", "#include <c10"):
            assert banned not in text, f"{source.name} includes {banned[10:]} headers"
