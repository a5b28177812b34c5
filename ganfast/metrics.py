"""Mode-collapse metrics for 2-D Gaussian mixtures (the definitions of the mode-collapse
literature: Unrolled GAN, VEEGAN, PacGAN).

Given N generated samples x_i and a mixture with K modes (means mu_k, std s):
- nearest mode   m(x) = argmin_k |x - mu_k|
- high quality   |x - mu_m(x)| <= 3 s                       (`threshold` standard deviations)
- hq_fraction    (# high-quality samples) / N               (0..1; print it as a percentage)
- captured mode  k such that at least one high-quality sample has m(x) = k
- reverse_kl     KL(p || u) = sum_k p_k log(p_k / (1/K)) = log K + sum_k p_k log p_k, where p is the
                 histogram of m(x) over the HIGH-QUALITY samples only, smoothed for empty bins:
                 p_k = (c_k + eps) / (N_hq + K eps), eps = 1e-10 (a pseudo-count, so p_k > 0 and
                 the log is finite). Equal counts give exactly 0; everything in one mode gives
                 log K (to ~1e-9). With no high-quality sample at all the histogram is empty; we
                 then report log K, the value of a single-mode collapse, so junk never scores well.
The literature evaluates 2500 samples (N_EVAL_SAMPLES).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from .data import MIXTURES, Mixture

__all__ = ["ModeMetrics", "N_EVAL_SAMPLES", "mode_metrics"]

N_EVAL_SAMPLES = 2500
EPS = 1e-10


@dataclass
class ModeMetrics:
    modes_captured: int
    n_modes: int
    hq_fraction: float  # 0..1
    reverse_kl: float   # nats
    n_samples: int
    mode_counts: list[int] = field(default_factory=list)  # high-quality samples per mode

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (f"modes {self.modes_captured}/{self.n_modes}, high quality {100 * self.hq_fraction:.1f}%, "
                f"reverse KL {self.reverse_kl:.4f} ({self.n_samples} samples)")


def _as_points(samples) -> torch.Tensor:
    x = torch.as_tensor(samples)
    if not (x.dtype.is_floating_point or x.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"samples must be numeric, got {x.dtype}")
    return x.detach().to("cpu", torch.float64)


def mode_metrics(samples, mixture: Mixture | str, threshold: float = 3.0, eps: float = EPS) -> ModeMetrics:
    """The metrics above for samples (N, D) (tensor or array) against `mixture` (a Mixture or a
    name in data.MIXTURES). Non-finite samples count as low quality."""
    if isinstance(mixture, str):
        if mixture not in MIXTURES:
            raise ValueError(f"unknown mixture {mixture!r}; known: {', '.join(MIXTURES)}")
        mixture = MIXTURES[mixture]
    x = _as_points(samples)
    means = mixture.means.detach().to("cpu", torch.float64)
    if x.dim() != 2 or x.shape[1] != means.shape[1]:
        raise ValueError(f"samples must have shape (N, {means.shape[1]}) for the {mixture.name!r} "
                         f"mixture, got {tuple(x.shape)}")
    n, k = x.shape[0], means.shape[0]
    if n == 0:
        raise ValueError("no samples to evaluate")
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold!r}")

    finite = torch.isfinite(x).all(dim=1)
    dist = torch.cdist(torch.where(finite[:, None], x, 0.0), means)  # (N, K)
    nearest_dist, nearest = dist.min(dim=1)
    hq = finite & (nearest_dist <= threshold * mixture.std)
    counts = torch.bincount(nearest[hq], minlength=k)
    n_hq = int(counts.sum())

    if n_hq == 0:
        rkl = math.log(k)
    else:
        p = (counts.double() + eps) / (n_hq + k * eps)
        rkl = max(0.0, float((p * (p * k).log()).sum()))  # KL >= 0; clamp rounding below zero
    return ModeMetrics(modes_captured=int((counts > 0).sum()), n_modes=k, hq_fraction=n_hq / n,
                       reverse_kl=rkl, n_samples=n, mode_counts=counts.tolist())
