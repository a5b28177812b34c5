"""pytest-benchmark suite of the differentiable augmentation (see ganfast/bench/augment.py):
`pytest benchmarks/test_augment.py --benchmark-only --benchmark-group-by=group`.

Forward + backward of DiffAugment "color,translation,cutout" on B = 64 images, 3×32×32 and 3×64×64:
the plain-PyTorch transforms eager and compiled, and each ganfast backend on the CPU; on fixed
parameters ("apply") and with the parameter draw ("draw+apply"). The bytes floor is in extra_info."""
import pytest
import torch

from ganfast import backends
from ganfast.bench import augment, bytes_floor_seconds

VARIANTS = ["eager", "compiled"] + [b for b in backends.available_backends("cpu") if b != "reference"]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("part", ["apply", "draw+apply"])
@pytest.mark.parametrize("shape", augment.SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_diffaugment(benchmark, shape, part, variant):
    cases, x = augment.steps(shape, torch.device("cpu"), compile_reference=variant == "compiled")
    (case, fns), = [(c, v) for c, v in cases.items() if c.startswith(part + " ")]
    benchmark.group = case
    benchmark.extra_info["bytes_floor_s"] = bytes_floor_seconds(4 * x.numel() * x.element_size())
    step = fns[variant]
    step()  # compile / warm up outside the timing
    benchmark(step)
