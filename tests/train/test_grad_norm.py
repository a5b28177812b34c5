"""The trainer's gradient norm: on the CPU one ganfast._C call (csrc/cpu/grad_norm.cpp), checked against
a float64 sum on every CPU capability, across the chunk and parallel-region boundaries, dtypes, memory
layouts and non-finite values; what the call does not take goes to torch's route."""
import pytest
import torch

from ganfast import backends
from ganfast.train.trainer import _grad_norm

from tests.cpu_paths import capability  # noqa: F401 - the fixture

fused = backends.extension_function("grad_norm_eager")
needs_extension = pytest.mark.skipif(fused is None, reason="ganfast._C is not built")


def _expected(tensors):
    return torch.cat([t.detach().double().reshape(-1) for t in tensors]).square().sum().sqrt()


# 16384 is the chunk length (common/parallel.h), 65536 where the chunks go parallel
SIZES = [[1], [7], [16383], [16384, 1], [16385], [65535, 2], [65536], [300001, 17, 5], [128, 2, 128, 128, 0, 3]]


@needs_extension
@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 1e-6), (torch.float64, 1e-12), (torch.float16, 1e-3),
                                         (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("sizes", SIZES, ids=lambda s: "+".join(map(str, s)))
def test_the_fused_norm_is_the_norm_of_every_element(capability, dtype, rtol, sizes):  # noqa: F811
    g = torch.Generator().manual_seed(sum(sizes))
    tensors = [torch.randn(n, generator=g).mul(3).to(dtype) for n in sizes]
    got = fused(tensors)
    assert got.dim() == 0 and got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(got.double(), _expected(tensors), rtol=rtol, atol=0)
    assert torch.equal(fused(tensors), got)  # deterministic


@needs_extension
def test_layouts_mixed_dtypes_and_what_goes_to_torch():
    g = torch.Generator().manual_seed(0)
    conv = torch.randn(8, 3, 5, 5, generator=g).contiguous(memory_format=torch.channels_last)
    mixed = [torch.randn(33, generator=g), conv, torch.randn(6, 4, generator=g).t(), torch.randn(5).double()]
    got = fused(mixed)
    assert got.dtype == torch.float64  # any float64 tensor: the result in float64
    torch.testing.assert_close(got, _expected(mixed), rtol=1e-6, atol=0)  # float32 parts summed in float blocks
    # not dense, integer, sparse: the call declines and _grad_norm takes torch's route
    for tensors in ([torch.randn(6, 4, generator=g)[:, ::2]], [torch.ones(3, dtype=torch.long)],
                    [torch.randn(4, 4, generator=g).to_sparse()], []):
        assert fused(tensors) is None
    strided = [torch.randn(6, 4, generator=g)[:, ::2], torch.randn(9, generator=g)]
    torch.testing.assert_close(_grad_norm(strided).double(), _expected(strided), rtol=1e-6, atol=0)


@needs_extension
def test_non_finite_values_propagate_and_half_does_not_overflow(capability):  # noqa: F811
    x = torch.ones(40000)
    x[12345] = float("inf")
    assert fused([x]).item() == float("inf")
    x[23456] = float("nan")
    assert fused([torch.ones(3), x]).isnan().item()
    big = torch.full((1000,), 300.0, dtype=torch.float16)  # 300^2 * 1000 is far above float16's range
    assert fused([big]).item() == pytest.approx(300.0 * 1000 ** 0.5, rel=1e-6)


@needs_extension
def test_the_thread_count_does_not_change_the_result():
    g = torch.Generator().manual_seed(1)
    tensors = [torch.randn(200003, generator=g), torch.randn(70000, generator=g)]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fused(tensors)
        torch.set_num_threads(max(2, before))
        assert torch.equal(fused(tensors), one)
    finally:
        torch.set_num_threads(before)
