"""pytest-benchmark suite of the losses (the same cases as `ganfast bench losses`):

    pytest benchmarks/test_losses.py --benchmark-only --benchmark-group-by=group

Each group is one (kind, batch size): eager reference, torch.compile of it, and each ganfast backend.
"""
import pytest
import torch

from ganfast import backends, losses
from ganfast.bench.losses import SIZES, cases, make_step, variants

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
VARIANTS = ["eager", "compiled"] + [b for b in backends.available_backends(DEVICE.type) if b != "reference"]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", losses.KINDS)
def test_d_loss_fwd_bwd(benchmark, kind, size, variant):
    (case, _, real, fake), = cases((kind,), (size,), DEVICE)
    fn = variants(kind, DEVICE, compile_reference=variant == "compiled")[variant]
    benchmark.group = case
    with backends.use_backend(variant if variant in backends.BACKENDS else "auto"):
        step = make_step(fn, real, fake)
        step()  # compile / warm up outside the timing
        if DEVICE.type == "cuda":
            def timed():
                step()
                torch.cuda.synchronize()
            benchmark(timed)
        else:
            benchmark(step)
