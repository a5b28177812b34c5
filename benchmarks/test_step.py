"""pytest-benchmark: one GAN step of ganfast.Trainer vs the plain-PyTorch loop with the same models
(MLP on 2-D points; DCGAN 32x32; that DCGAN class-conditional with DiffAugment). Run:
pytest benchmarks/test_step.py --benchmark-group-by=param:case
The ratios (plain / trainer) also come out of `ganfast bench step`. No timing is asserted."""

import pytest
import torch

from ganfast.bench import step as bench_step
from ganfast.train import Trainer

CASES = {case.name: case for case in bench_step.cases(quick=True)}
REGS = [None, "sn+r1"]


def _setup(name):
    case = CASES[name]
    torch.manual_seed(0)
    G, D = case.models()
    return case, G, D, case.batch("cpu")


def _trainer(case, G, D, reg):
    return Trainer(G, D, *bench_step._optims(G, D), penalty="r1" if reg else None, spectral_norm=bool(reg), seed=0,
                   num_classes=case.num_classes, augment=case.augment)


@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("case", list(CASES))
def test_plain_pytorch_step(benchmark, case, reg):
    case, G, D, (real, labels) = _setup(case)
    if reg:
        bench_step._torch_sn(D)
    g_opt, d_opt = bench_step._optims(G, D)
    benchmark.pedantic(bench_step.plain_step, args=(G, D, g_opt, d_opt, real, case.latent, 10.0 if reg else None,
                                                    labels, case.num_classes, case.augment),
                       rounds=5, warmup_rounds=1)


@pytest.mark.parametrize("stats", [True, False], ids=["stats", "nostats"])
@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("case", list(CASES))
def test_trainer_step(benchmark, case, reg, stats):
    if reg:
        pytest.importorskip("ganfast.penalties")
        pytest.importorskip("ganfast.nn")
    case, G, D, (real, labels) = _setup(case)
    t = _trainer(case, G, D, reg)
    batch = bench_step.trainer_batch(real, labels)
    benchmark.pedantic(lambda: t.step(batch, return_stats=stats), rounds=5, warmup_rounds=1)


@pytest.mark.parametrize("case", list(CASES))
def test_trainer_step_sn_per_layer(benchmark, case):
    """The SN + R1 step with one spectral-norm op per layer instead of the trainer's one multi-tensor
    call (its CPU default): the A/B behind that default."""
    pytest.importorskip("ganfast.penalties")
    pytest.importorskip("ganfast.nn")
    case, G, D, (real, labels) = _setup(case)
    t = _trainer(case, G, D, "sn+r1")
    t.sn_multi_tensor = False
    batch = bench_step.trainer_batch(real, labels)
    benchmark.pedantic(lambda: t.step(batch, return_stats=False), rounds=5, warmup_rounds=1)
