"""The launches of the CUDA launchers, counted without a GPU (ganfast.bench.launches): every launch
goes through launch_kernel (csrc/cuda/common.cuh), and the counting build of tests/cuda_launch_count.cu
runs each launcher. A launcher that gains a launch fails here until EXPECTED is updated."""
import pathlib
import re

import pytest

from ganfast.bench import launches

ROOT = pathlib.Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "csrc" / "cuda"

# (launcher, case) -> launches per call; the issue-17 targets: a loss 1, a penalty tail <= 2, SN of one
# layer <= 3 forward (power iteration included) and <= 2 backward, all layers of a D <= 4.
EXPECTED = {
    **{("gan_loss", f"kind={k} {side}"): 1 for k in ("ns", "hinge", "rahinge") for side in "dg"},
    # over 8192 logits a side: the blocks' partial sums, then their total (and the relativistic pass)
    **{("gan_loss", f"kind={k} {side} n=2^20"): 2 if k != "rahinge" else 3 for k in ("ns", "hinge", "rahinge")
       for side in "dg"},
    **{("grad_penalty", f"kind={k}"): 2 for k in range(3)},
    ("gp_interpolate", "perturb=0"): 1,
    ("gp_interpolate", "perturb=1"): 2,  # DRAGAN: std, then the interpolation
    ("spectral_norm_forward", "n_iter=0"): 2,
    ("spectral_norm_forward", "n_iter=1"): 3,
    ("spectral_norm_forward", "n_iter=2"): 5,  # 2 per power iteration + 1
    ("spectral_norm_backward", ""): 2,
    ("spectral_norm_multi_forward", "layers=4 n_iter=0"): 2,
    ("spectral_norm_multi_forward", "layers=4 n_iter=1"): 3,
    ("spectral_norm_multi_backward", "layers=4"): 2,
    ("spectral_norm_multi_forward", "layers=30 n_iter=1"): 6,  # 24 layers per table
    ("diffaugment_forward", ""): 1,
    ("diffaugment_backward", ""): 1,
}


def _strip_comments(text: str) -> str:
    return re.sub(r"//[^\n]*|/\*.*?\*/", "", text, flags=re.S)


def test_every_launch_goes_through_launch_kernel():
    sources = sorted(CUDA_DIR.glob("*.cu")) + sorted(CUDA_DIR.glob("*.cuh"))
    assert sources
    for source in sources:
        code = _strip_comments(source.read_text())
        chevrons = code.count("<<<")
        allowed = 1 if source.name == "common.cuh" else 0  # the one inside launch_kernel
        assert chevrons == allowed, f"{source.name}: a raw kernel launch (<<<); call launch_kernel instead"
        for call in ("cudaMemsetAsync", "cudaMemcpyAsync", "cudaMemcpy(", "cudaMemset(", "cudaLaunchKernel"):
            assert call not in code, f"{source.name}: {call} is a launch the counting build cannot see"


@pytest.fixture(scope="module")
def counts():
    if launches.nvcc() is None:
        pytest.skip("nvcc not found")
    return launches.cuda_launch_counts()


def test_cuda_launch_counts(counts):
    assert counts == EXPECTED


def test_cuda_counts_cover_the_bench_rows(counts):
    """Every op-family row of `ganfast bench launches` finds its CUDA count."""
    import torch

    keys = [key for cases in (launches._loss_cases, launches._penalty_cases, launches._sn_cases)
            for _, _, _, key in cases(torch.device("cpu"))]
    assert keys and all(k in counts for k in keys), [k for k in keys if k not in counts]
