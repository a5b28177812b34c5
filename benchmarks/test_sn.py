"""pytest-benchmark suite of spectral norm (run: pytest benchmarks/test_sn.py --benchmark-only).
Same cases as `ganfast bench sn`: one normalized weight forward+backward with its floor, the three
large layers one at a time vs sn_step's multi-tensor kernel, and a D step with D called three times.
No timing is asserted; compare the groups' medians."""
import pytest
import torch

from ganfast import backends
from ganfast.bench import sn

GANFAST = [f"ganfast-{b}" for b in backends.available_backends("cpu")]


def _modules(case, variant):
    make = (lambda: [sn.LAYERS[c]() for c in sn.ALL_LAYERS]) if case == "3 layers" else (lambda: [sn.LAYERS[case]()])
    torch.manual_seed(0)
    if variant in ("pytorch", "compiled"):
        return [torch.nn.utils.parametrizations.spectral_norm(m) for m in make()]
    return [sn.spectral_norm(m) for m in make()]


@pytest.mark.parametrize("variant", ["pytorch", "compiled", "floor-bytes", "floor-autograd"] + GANFAST
                         + ["ganfast-cpu+multi"])
@pytest.mark.parametrize("case", list(sn.LAYERS) + ["3 layers"])
def test_layer_fwd_bwd(benchmark, case, variant):
    benchmark.group = f"sn {case} fwd+bwd"
    if variant == "ganfast-cpu+multi" and (case != "3 layers" or "ganfast-cpu" not in GANFAST):
        pytest.skip("the multi-tensor kernel runs on the CPU backend, several layers")
    modules = _modules(case, variant)
    step, get = sn._steps_of(modules, multi_tensor=True if variant.endswith("+multi") else None)
    if variant == "compiled":
        compiled = torch.compile(get)
        benchmark(lambda: step(compiled))
        return
    if variant.startswith("floor-"):  # floor (bytes) is twice the copy time
        copy, autograd = sn._floor_fns([m.parametrizations.weight.original for m in modules])
        benchmark(copy if variant == "floor-bytes" else autograd)
        return
    backend = variant.split("-", 1)[1].split("+")[0] if variant.startswith("ganfast-") else "auto"
    with backends.use_backend(backend):
        benchmark(step)


@pytest.mark.parametrize("variant", ["pytorch", "no-sn"] + GANFAST)
def test_d_step(benchmark, variant):
    benchmark.group = "sn D step (D x3)"
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(16, 3, 32, 32, generator=g), torch.randn(16, 3, 32, 32, generator=g)
    kind = {"pytorch": "pytorch", "no-sn": "none"}.get(variant, "ganfast")
    d = sn.make_d(kind)
    backend = variant.split("-", 1)[1] if variant.startswith("ganfast-") else "auto"
    with backends.use_backend(backend):
        benchmark.pedantic(sn.d_step_fn(d, real, fake, kind == "ganfast"), rounds=5, warmup_rounds=1)
