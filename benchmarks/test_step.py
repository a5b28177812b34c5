"""pytest-benchmark: one GAN step of ganfast.Trainer vs the plain-PyTorch loop with the same models
(MLP on 2-D points; DCGAN 32x32). Run: pytest benchmarks/test_step.py --benchmark-group-by=param:case
The ratios (plain / trainer) also come out of `ganfast bench step`. No timing is asserted."""

import pytest
import torch

from ganfast.bench import step as bench_step
from ganfast.train import Trainer

CASES = {name: (factory, latent, shape) for name, factory, latent, shape in bench_step.cases(quick=True)}
REGS = [None, "sn+r1"]


def _setup(case):
    factory, latent, shape = CASES[case]
    torch.manual_seed(0)
    G, D = factory()
    return G, D, latent, torch.rand(shape) * 2 - 1


@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("case", list(CASES))
def test_plain_pytorch_step(benchmark, case, reg):
    G, D, latent, real = _setup(case)
    if reg:
        bench_step._torch_sn(D)
    g_opt, d_opt = bench_step._optims(G, D)
    benchmark.pedantic(bench_step.plain_step, args=(G, D, g_opt, d_opt, real, latent, 10.0 if reg else None),
                       rounds=5, warmup_rounds=1)


@pytest.mark.parametrize("stats", [True, False], ids=["stats", "nostats"])
@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("case", list(CASES))
def test_trainer_step(benchmark, case, reg, stats):
    if reg:
        pytest.importorskip("ganfast.penalties")
        pytest.importorskip("ganfast.nn")
    G, D, latent, real = _setup(case)
    t = Trainer(G, D, *bench_step._optims(G, D), penalty="r1" if reg else None, spectral_norm=bool(reg), seed=0)
    benchmark.pedantic(lambda: t.step(real, return_stats=stats), rounds=5, warmup_rounds=1)


@pytest.mark.parametrize("case", list(CASES))
def test_trainer_step_sn_per_layer(benchmark, case):
    """The SN + R1 step with one spectral-norm op per layer instead of the trainer's one multi-tensor
    call (its CPU default): the A/B behind that default."""
    pytest.importorskip("ganfast.penalties")
    pytest.importorskip("ganfast.nn")
    G, D, latent, real = _setup(case)
    t = Trainer(G, D, *bench_step._optims(G, D), penalty="r1", spectral_norm=True, seed=0)
    t.sn_multi_tensor = False
    benchmark.pedantic(lambda: t.step(real, return_stats=False), rounds=5, warmup_rounds=1)
