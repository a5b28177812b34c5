"""pytest-benchmark suite of spectral norm (run: pytest benchmarks/test_sn.py --benchmark-only).
Same cases as `ganfast bench sn`: one normalized weight forward+backward, and a D step with D
called three times. No timing is asserted; compare the groups' medians."""
import pytest
import torch

from ganfast import backends
from ganfast.bench import sn

LAYER_VARIANTS = ["pytorch"] + [f"ganfast-{b}" for b in backends.available_backends("cpu")]


def _layer_step(case, variant):
    torch.manual_seed(0)
    if variant == "pytorch":
        m = torch.nn.utils.parametrizations.spectral_norm(sn.LAYERS[case]())
    else:
        m = sn.spectral_norm(sn.LAYERS[case]())
    return sn._weight_step(m)[0]


@pytest.mark.parametrize("variant", LAYER_VARIANTS)
@pytest.mark.parametrize("case", list(sn.LAYERS))
def test_layer_fwd_bwd(benchmark, case, variant):
    benchmark.group = f"sn {case} fwd+bwd"
    step = _layer_step(case, variant)
    backend = variant.split("-", 1)[1] if variant.startswith("ganfast-") else "auto"
    with backends.use_backend(backend):
        benchmark(step)


@pytest.mark.parametrize("variant", ["pytorch", "no-sn"] + [f"ganfast-{b}" for b in backends.available_backends("cpu")])
def test_d_step(benchmark, variant):
    benchmark.group = "sn D step (D x3)"
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(16, 3, 32, 32, generator=g), torch.randn(16, 3, 32, 32, generator=g)
    kind = {"pytorch": "pytorch", "no-sn": "none"}.get(variant, "ganfast")
    d = sn.make_d(kind)
    backend = variant.split("-", 1)[1] if variant.startswith("ganfast-") else "auto"
    with backends.use_backend(backend):
        benchmark.pedantic(sn.d_step_fn(d, real, fake, kind == "ganfast"), rounds=5, warmup_rounds=1)
