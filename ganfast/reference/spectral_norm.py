"""Spectral normalization in plain PyTorch: torch.nn.utils.parametrizations.spectral_norm's math.

The weight is viewed as a matrix M (h x w) with `dim` first: M = weight.permute(dim, ...).flatten(1).
(The kernels read the same matrix in place: with outer = prod of the sizes before `dim`, inner = the
product after, M[r, a * inner + b] = weight.reshape(outer, h, inner)[a, r, b].)

Power iteration (training mode), n times:  u <- normalize(M v),  v <- normalize(M^T u)
sigma = u^T M v (u, v constant for the gradient); output W / sigma.
normalize(x) = x / max(||x||, eps). u, v and sigma are kept in fp32 for fp16/bf16 weights (fp64 for
fp64), and sigma is clamped at eps so that an all-zero weight gives 0, not NaN.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32, or fp64 for fp64 weights; complex weights keep a complex dtype (at least complex64)."""
    if dtype.is_complex:
        return torch.complex128 if dtype == torch.complex128 else torch.complex64
    return torch.float64 if dtype == torch.float64 else torch.float32


def split_dims(shape, dim: int) -> tuple[int, int, int]:
    """(outer, h, inner) of a weight of `shape` normalized along `dim`."""
    return math.prod(shape[:dim]), shape[dim], math.prod(shape[dim + 1:])


def as_matrix(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """PyTorch's _reshape_weight_to_matrix: M (h, w) with `dim` first."""
    if dim != 0:
        weight = weight.permute(dim, *(d for d in range(weight.dim()) if d != dim))
    return weight.flatten(1)


@torch.no_grad()
def power_method(weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, dim: int, n_iter: int, eps: float):
    """n_iter power iterations; returns new (u, v) in the opmath dtype (inputs untouched)."""
    m = as_matrix(weight.detach(), dim).to(opmath_dtype(weight.dtype))
    u, v = u.to(m.dtype), v.to(m.dtype)
    for _ in range(n_iter):
        u = F.normalize(torch.mv(m, v), dim=0, eps=eps)
        v = F.normalize(torch.mv(m.H, u), dim=0, eps=eps)
    return u, v


def sigma(weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, dim: int) -> torch.Tensor:
    """sigma = u^T M v, differentiable in W only (u, v are constants)."""
    m = as_matrix(weight, dim).to(opmath_dtype(weight.dtype))
    return torch.vdot(u.to(m.dtype), torch.mv(m, v.to(m.dtype)))


def spectral_norm(weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, dim: int, n_iter: int, eps: float):
    """(W / sigma, u', v', sigma): the full forward of one normalized weight."""
    u, v = power_method(weight, u, v, dim, n_iter, eps)
    s = sigma(weight, u, v, dim)
    if s.is_complex():  # u^H M v with v = normalize(M^H u) is ||M^H u||: real up to rounding
        s = s.real
    return (weight / s.clamp_min(eps)).to(weight.dtype), u, v, s.detach()
