import math

import numpy as np
import pytest
import torch

from ganfast.data import MIXTURES, Mixture
from ganfast.metrics import N_EVAL_SAMPLES, mode_metrics

RING = MIXTURES["ring"]


def test_all_modes_equal():
    # 100 points exactly on each mean, plus a small offset well inside 3 std
    x = RING.means.repeat_interleave(100, 0) + 0.02
    m = mode_metrics(x, RING)
    assert (m.modes_captured, m.n_modes, m.n_samples) == (8, 8, 800)
    assert m.hq_fraction == 1.0
    assert m.reverse_kl == pytest.approx(0.0, abs=1e-12)
    assert m.mode_counts == [100] * 8


def test_one_mode():
    x = RING.means[3].expand(50, 2) + 0.005 * torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    m = mode_metrics(x, "ring")
    assert m.modes_captured == 1 and m.hq_fraction == 1.0
    assert m.reverse_kl == pytest.approx(math.log(8), abs=1e-6)
    assert m.mode_counts[3] == 50


def test_far_from_every_mode():
    x = torch.zeros(100, 2)  # the ring's center: distance 1 = 100 std from every mode
    m = mode_metrics(x, RING)
    assert m.modes_captured == 0 and m.hq_fraction == 0.0
    assert m.reverse_kl == pytest.approx(math.log(8))  # documented: no HQ sample -> log K


def test_threshold_boundary_and_low_quality_ignored():
    # a point at 2.9 std is high quality, one at 3.1 std is not; low-quality points never count
    # towards captured modes or the histogram
    e = torch.tensor([1.0, 0.0])
    x = torch.stack([RING.means[0] + 0.029 * e, RING.means[1] + 0.031 * e, RING.means[2] + 0.031 * e])
    m = mode_metrics(x, RING)
    assert m.modes_captured == 1 and m.hq_fraction == pytest.approx(1 / 3)
    assert m.mode_counts == [1] + [0] * 7


def test_partial_coverage_kl_matches_formula():
    counts = [300, 100, 0, 0, 50, 50, 0, 0]
    x = torch.cat([RING.means[k].expand(c, 2) for k, c in enumerate(counts)])
    x = torch.cat([x, torch.full((100, 2), 5.0)])  # low-quality junk
    m = mode_metrics(x.numpy(), RING)  # numpy input works
    p = np.array([c for c in counts if c]) / sum(counts)
    expected = float((p * np.log(p * 8)).sum())
    assert m.modes_captured == 4 and m.hq_fraction == pytest.approx(500 / 600)
    assert m.reverse_kl == pytest.approx(expected, rel=1e-8)
    assert "modes 4/8" in str(m) and "83.3%" in str(m)
    assert set(m.as_dict()) >= {"modes_captured", "n_modes", "hq_fraction", "reverse_kl"}


def test_grid25_and_nonfinite():
    grid = MIXTURES["grid25"]
    x = grid.sample(N_EVAL_SAMPLES, torch.Generator().manual_seed(0))
    x[:10] = float("nan")
    m = mode_metrics(x, grid)
    assert m.modes_captured == 25 and 0.97 < m.hq_fraction < 0.996
    assert m.reverse_kl < 0.05


def test_custom_mixture_std_scales_threshold():
    mix = Mixture("two", torch.tensor([[0.0, 0.0], [10.0, 0.0]]), 1.0)
    m = mode_metrics(torch.tensor([[2.5, 0.0], [10.0, 3.5]]), mix)
    assert m.mode_counts == [1, 0] and m.modes_captured == 1


def test_bad_input():
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        mode_metrics(torch.zeros(10, 3), RING)
    with pytest.raises(ValueError, match="no samples"):
        mode_metrics(torch.zeros(0, 2), RING)
    with pytest.raises(ValueError, match="unknown mixture"):
        mode_metrics(torch.zeros(1, 2), "spiral")
