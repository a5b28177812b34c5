"""pytest-benchmark suite of the gradient-penalty discriminator step (see ganfast/bench/gp.py):
`pytest benchmarks/test_gp.py --benchmark-only`; compare the eager and ganfast rows of one case."""
import copy

import pytest
import torch
import torch.nn as nn

from ganfast import backends
from ganfast.bench import gp

VARIANTS = ["eager"] + [b for b in backends.available_backends("cpu")]


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
