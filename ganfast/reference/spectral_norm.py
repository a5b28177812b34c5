"""Spectral normalization in plain PyTorch: torch.nn.utils.parametrizations.spectral_norm's math.

The weight is viewed as a matrix M (h x w) with `dim` first. Stored as a 3-D tensor
W3 = weight.reshape(outer, h, inner) (outer = prod of the sizes before `dim`, inner = after), so that
M[r, a * inner + b] = W3[a, r, b]: a view for any `dim`, no permute copy.

Power iteration (training mode), n times:  u <- normalize(M v),  v <- normalize(M^T u)
sigma = u^T M v (u, v constant for the gradient); output W / sigma.
normalize(x) = x / max(||x||, eps). u, v and sigma are kept in fp32 for fp16/bf16 weights (fp64 for
fp64), and sigma is clamped at eps so that an all-zero weight gives 0, not NaN.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def as_matrix(w3: torch.Tensor) -> torch.Tensor:
    """(outer, h, inner) -> M (h, outer * inner), PyTorch's permute(dim, ...).flatten(1)."""
    return w3.permute(1, 0, 2).reshape(w3.shape[1], -1)


@torch.no_grad()
def power_method(w3: torch.Tensor, u: torch.Tensor, v: torch.Tensor, n_iter: int, eps: float):
    """n_iter power iterations; returns new (u, v) in the opmath dtype (inputs untouched)."""
    m = as_matrix(w3.detach()).to(opmath_dtype(w3.dtype))
    u, v = u.to(m.dtype), v.to(m.dtype)
    for _ in range(n_iter):
        u = F.normalize(torch.mv(m, v), dim=0, eps=eps)
        v = F.normalize(torch.mv(m.H, u), dim=0, eps=eps)
    return u, v


def sigma(w3: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """sigma = u^T M v, differentiable in W only (u, v are constants)."""
    m = as_matrix(w3).to(opmath_dtype(w3.dtype))
    return torch.vdot(u.to(m.dtype), torch.mv(m, v.to(m.dtype)))


def spectral_norm(w3: torch.Tensor, u: torch.Tensor, v: torch.Tensor, n_iter: int, eps: float):
    """(W / sigma, u', v', sigma): the full forward of one normalized weight."""
    u, v = power_method(w3, u, v, n_iter, eps)
    s = sigma(w3, u, v)
    return (w3 / s.clamp_min(eps)).to(w3.dtype), u, v, s.detach()
