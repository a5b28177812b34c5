"""pytest-benchmark suite of the losses (the same cases as `ganfast bench losses`):

    pytest benchmarks/test_losses.py --benchmark-only --benchmark-group-by=group

Each group is one (loss, kind, batch size; and dtype, for the DTYPE_CASES): eager reference,
torch.compile of it, each ganfast backend, and the autograd floor on the same tensors
(`torch.dot(r, f).backward()`, or `f.sum().backward()` for a g_loss that reads only f; the bytes
floor, a copy moving the bytes the loss must move, is in extra_info; the larger of the two binds).
"""
import pytest
import torch

from ganfast import backends, losses
from ganfast.bench import bytes_floor_seconds
from ganfast.bench.losses import DTYPE_CASES, SIZES, autograd_floor_step, cases, make_step, moved_bytes, variants

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
VARIANTS = ["eager", "compiled"] + [b for b in backends.available_backends(DEVICE.type) if b != "reference"]


def _bench(benchmark, step):
    step()  # compile / warm up outside the timing
    if DEVICE.type == "cuda":
        def timed():
            step()
            torch.cuda.synchronize()
        benchmark(timed)
    else:
        benchmark(step)


@pytest.mark.parametrize("variant", VARIANTS + ["floor"])
@pytest.mark.parametrize("loss", ["d", "g"])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", losses.KINDS)
def test_loss_fwd_bwd(benchmark, kind, size, loss, variant):
    _bench_case(benchmark, kind, size, loss, variant, torch.float32)


@pytest.mark.parametrize("variant", VARIANTS + ["floor"])
@pytest.mark.parametrize("loss", ["d", "g"])
@pytest.mark.parametrize("dtype, size, kind", [(dtype, size, kind) for dtype, size, kinds in DTYPE_CASES for kind in kinds],
                         ids=lambda v: str(v).removeprefix("torch."))
def test_loss_fwd_bwd_dtype(benchmark, dtype, size, kind, loss, variant):
    _bench_case(benchmark, kind, size, loss, variant, dtype)


def _bench_case(benchmark, kind, size, loss, variant, dtype):
    (case, _, gen, real, fake), = cases((kind,), (size,), DEVICE, generator=(loss == "g",), dtype=dtype)
    benchmark.group = case
    benchmark.extra_info["bytes_floor_s"] = bytes_floor_seconds(moved_bytes(real, fake, kind, gen), DEVICE)
    if variant == "floor":
        _bench(benchmark, autograd_floor_step(real, fake, kind, gen))
        return
    fn = variants(kind, DEVICE, compile_reference=variant == "compiled", generator=gen)[variant]
    with backends.use_backend(variant if variant in backends.BACKENDS else "auto"):
        _bench(benchmark, make_step(fn, real, fake))
