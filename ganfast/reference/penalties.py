"""Gradient penalties in plain PyTorch: the tail after the double backward, written as the math.

g (B, ...) is D's input gradient, possibly of a loss scaled by `scale` (AMP); h = g / scale is the
true gradient (unscaled before the norm, in fp32 — PyTorch's AMP gradient-penalty recipe).
  s_i = sum_j h_ij^2,  n_i = sqrt(s_i + 1e-12)
  kind 0 (two-sided, WGAN-GP / DRAGAN):  P = w * mean_i (n_i - c)^2
  kind 1 (one-sided):                    P = w * mean_i relu(n_i - c)^2
  kind 2 (squared, R1 / R2, w = γ/2):    P = w * mean_i s_i
"""
from __future__ import annotations

import torch

EPS = 1e-12
TWO_SIDED, ONE_SIDED, SQUARED = 0, 1, 2


def _opmath(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def penalty_tail(g: torch.Tensor, kind: int, weight: float, center: float = 1.0,
                 inv_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(penalty, per-sample norms), both in fp32 (fp64 for fp64 g); differentiable w.r.t. g."""
    h = g.to(_opmath(g)).flatten(1) * inv_scale
    s = (h * h).sum(1)
    n = torch.sqrt(s + EPS)
    if kind == TWO_SIDED:
        p = (n - center) ** 2
    elif kind == ONE_SIDED:
        p = torch.relu(n - center) ** 2
    elif kind == SQUARED:
        p = s
    else:
        raise ValueError(f"unknown penalty kind {kind}")
    return weight * p.mean(), n.detach()


def interpolate(real: torch.Tensor, other: torch.Tensor, alpha: torch.Tensor, perturb: bool = False,
                c: float = 0.5) -> torch.Tensor:
    """x̂_i = α_i real_i + (1 - α_i) other_i, one α per sample.

    perturb=True (DRAGAN): `other` is the noise u, the second point is real + c·std(real)·u with the
    (unbiased) std over the whole batch, so x̂_i = real_i + (1 - α_i)·c·std(real)·u_i."""
    a = alpha.to(real.dtype).view((-1,) + (1,) * (real.dim() - 1))
    if perturb:
        return real + (1 - a) * (c * real.std() * other)
    return a * real + (1 - a) * other
