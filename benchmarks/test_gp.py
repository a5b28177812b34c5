"""pytest-benchmark suite of the gradient penalties (see ganfast/bench/gp.py):
`pytest benchmarks/test_gp.py --benchmark-only --benchmark-group-by=group`.

test_penalty_op: the fused parts alone (penalty tail fwd+bwd, interpolation), the same cases as
`ganfast bench gp`, with their floor step as a variant (the bytes floor is in extra_info).
test_d_step: the whole discriminator step; compare the eager and ganfast rows of one case."""
import copy

import pytest
import torch
import torch.nn as nn

from ganfast import backends
from ganfast.bench import bytes_floor_seconds, gp

VARIANTS = ["eager"] + [b for b in backends.available_backends("cpu")]
OP_VARIANTS = ["eager", "compiled"] + [b for b in backends.available_backends("cpu") if b != "reference"]


@pytest.mark.parametrize("variant", OP_VARIANTS + ["floor"])
@pytest.mark.parametrize("part", ["tail", "interpolate"])
@pytest.mark.parametrize("shape", gp.OP_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_penalty_op(benchmark, shape, part, variant):
    cases = gp.op_steps(shape, torch.device("cpu"), compile_reference=variant == "compiled")
    (case, (steps, (floor_step, _), nbytes)), = [(c, v) for c, v in cases.items() if c.startswith(part)]
    benchmark.group = case
    benchmark.extra_info["bytes_floor_s"] = bytes_floor_seconds(nbytes)
    step = floor_step if variant == "floor" else steps[variant]
    step()  # compile / warm up outside the timing
    benchmark(step)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", gp.PENALTIES)
@pytest.mark.parametrize("net", list(gp.NETS))
def test_d_step(benchmark, net, name, variant):
    make, b, shape = gp.NETS[net]
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn((b,) + shape, generator=g), torch.randn((b,) + shape, generator=g)
    torch.manual_seed(0)
    if variant == "eager":
        D = make(nn.utils.parametrizations.spectral_norm)
        step = gp.plain_step(D, torch.optim.Adam(D.parameters(), lr=1e-4, betas=(0.0, 0.9)), real, fake, name)
        benchmark(step)
        return
    sn, sn_ctx, label = gp.ganfast_sn()
    D = copy.deepcopy(make(sn))
    benchmark.extra_info["spectral_norm"] = label
    step = gp.ganfast_step(D, torch.optim.Adam(D.parameters(), lr=1e-4, betas=(0.0, 0.9)), real, fake, name, sn_ctx)
    with backends.use_backend(variant):
        benchmark(step)
