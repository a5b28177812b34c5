"""Triton kernels of ganfast::spectral_norm_fused_triton / spectral_norm_backward_triton.

The weight is read in place as M with `dim` first: W3 = weight.reshape(outer, h, inner),
W3[a, r, b] = M[r, a * inner + b] (see ganfast/reference/spectral_norm.py), element offset
(a * h + r) * inner + b. Per power iteration: one launch computes t = M v (programs over row
blocks), one computes s = M^T u (programs over column blocks); the tiny vector normalizations are
torch ops on fp32 vectors. sigma = ||s||^2 / max(||s||, eps) (= u^T M v, exact), then one launch
writes W / sigma. Backward: one launch of partial sums of <G, W>, one writes
dW = (G - <G, W/sigma> u v^T) / sigma. All arithmetic in fp32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...reference.spectral_norm import split_dims

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BLOCK_R, BLOCK_C, BLOCK = 16, 128, 1024


@triton.jit
def _mv_kernel(w_ptr, v_ptr, t_ptr, H, I, N, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """t[r] = sum_c M[r, c] v[c] for a block of rows."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < H
    acc = tl.zeros([BLOCK_R, BLOCK_C], tl.float32)
    for start in range(0, N, BLOCK_C):
        cols = start + tl.arange(0, BLOCK_C)
        cmask = cols < N
        a = cols // I
        b = cols - a * I
        offs = (a[None, :] * H + rows[:, None]) * I + b[None, :]
        w = tl.load(w_ptr + offs, mask=rmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        v = tl.load(v_ptr + cols, mask=cmask, other=0.0)
        acc += w * v[None, :]
    tl.store(t_ptr + rows, tl.sum(acc, 1), mask=rmask)


@triton.jit
def _mtv_kernel(w_ptr, u_ptr, s_ptr, H, I, N, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """s[c] = sum_r M[r, c] u[r] for a block of columns."""
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < N
    a = cols // I
    b = cols - a * I
    acc = tl.zeros([BLOCK_R, BLOCK_C], tl.float32)
    for start in range(0, H, BLOCK_R):
        rows = start + tl.arange(0, BLOCK_R)
        rmask = rows < H
        offs = (a[None, :] * H + rows[:, None]) * I + b[None, :]
        w = tl.load(w_ptr + offs, mask=rmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        u = tl.load(u_ptr + rows, mask=rmask, other=0.0)
        acc += w * u[:, None]
    tl.store(s_ptr + cols, tl.sum(acc, 0), mask=cmask)


@triton.jit
def _scale_kernel(w_ptr, sigma_ptr, out_ptr, n, eps, BLOCK: tl.constexpr):
    """out = W / max(sigma, eps)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    inv = 1.0 / tl.maximum(tl.load(sigma_ptr), eps)
    w = tl.load(w_ptr + offs, mask=m, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, (w * inv).to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _dot_partial_kernel(g_ptr, w_ptr, part_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    g = tl.load(g_ptr + offs, mask=m, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + offs, mask=m, other=0.0).to(tl.float32)
    tl.store(part_ptr + tl.program_id(0), tl.sum(g * w, 0))


@triton.jit
def _backward_kernel(g_ptr, u_ptr, v_ptr, k_ptr, sigma_ptr, out_ptr, n, H, I, eps, BLOCK: tl.constexpr):
    """dW = (G - k u[r] v[c]) / sigma, k = <G, W/sigma> (0 when sigma < eps: the clamp holds it)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    sigma = tl.load(sigma_ptr)
    k = tl.where(sigma >= eps, tl.load(k_ptr) / tl.maximum(sigma, eps), 0.0)
    inv = 1.0 / tl.maximum(sigma, eps)
    b = offs % I
    p = offs // I
    r = p % H
    a = p // H
    g = tl.load(g_ptr + offs, mask=m, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + r, mask=m, other=0.0)
    v = tl.load(v_ptr + a * I + b, mask=m, other=0.0)
    tl.store(out_ptr + offs, ((g - k * u * v) * inv).to(out_ptr.dtype.element_ty), mask=m)


def _check(weight: torch.Tensor, dim: int) -> tuple[int, int, int]:
    """(outer, h, inner) of the weight read as M with `dim` first."""
    if weight.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"triton backend: weights of dtype {weight.dtype} are not supported "
                        f"(supported: float32, float16, bfloat16)")
    if weight.dim() < 2 or weight.numel() == 0 or not 0 <= dim < weight.dim():
        raise ValueError(f"triton backend: weight must be non-empty, at least 2-D, with 0 <= dim < {weight.dim()}; "
                         f"got shape {tuple(weight.shape)}, dim {dim}")
    return split_dims(weight.shape, dim)


def _normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.linalg.vector_norm(x).clamp_min(eps)


def spectral_norm_fused(weight, u, v, dim: int, n_iter: int, eps: float):
    """Launcher: (W / sigma, u', v', sigma) as ganfast::spectral_norm_fused."""
    O, H, I = _check(weight, dim)
    if n_iter < 0:
        raise ValueError(f"triton backend: n_iter must be >= 0, got {n_iter}")
    w = weight.contiguous()
    N = O * I
    if u.shape != (H,) or v.shape != (N,):
        raise ValueError(f"triton backend: u must have shape ({H},) and v ({N},), got {tuple(u.shape)}, {tuple(v.shape)}")
    u = u.to(torch.float32).contiguous()
    v = v.to(torch.float32).contiguous()
    rows_grid, cols_grid = (triton.cdiv(H, BLOCK_R),), (triton.cdiv(N, BLOCK_C),)
    if n_iter == 0:
        t = torch.empty(H, device=w.device, dtype=torch.float32)
        _mv_kernel[rows_grid](w, v, t, H, I, N, BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C)
        sigma = torch.dot(u, t)
    else:
        for _ in range(n_iter):
            t = torch.empty(H, device=w.device, dtype=torch.float32)
            _mv_kernel[rows_grid](w, v, t, H, I, N, BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C)
            u = _normalize(t, eps)
            s = torch.empty(N, device=w.device, dtype=torch.float32)
            _mtv_kernel[cols_grid](w, u, s, H, I, N, BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C)
            norm = torch.linalg.vector_norm(s)
            v = s / norm.clamp_min(eps)
        sigma = norm * norm / norm.clamp_min(eps)  # u^T M v = s^T v
    out = torch.empty_like(w)
    _scale_kernel[(triton.cdiv(w.numel(), BLOCK),)](w, sigma, out, w.numel(), eps, BLOCK=BLOCK)
    return out, u.clone() if n_iter == 0 else u, v.clone() if n_iter == 0 else v, sigma


def spectral_norm_backward(grad, weight, u, v, sigma, dim: int, eps: float):
    """Launcher: dW as ganfast::spectral_norm_backward."""
    O, H, I = _check(weight, dim)
    w = weight.contiguous()
    g = grad.to(w.dtype).contiguous()
    n = w.numel()
    grid = (triton.cdiv(n, BLOCK),)
    part = torch.empty(grid[0], device=w.device, dtype=torch.float32)
    _dot_partial_kernel[grid](g, w, part, n, BLOCK=BLOCK)
    k = part.sum()
    out = torch.empty_like(w)
    _backward_kernel[grid](g, u.to(torch.float32).contiguous(), v.to(torch.float32).contiguous(), k,
                           sigma.to(torch.float32).reshape(()).contiguous(), out, n, H, I, eps, BLOCK=BLOCK)
    return out
