"""Triton kernels of ganfast::grad_penalty_fused_triton and ganfast::gp_interpolate_triton (same
contract as csrc/common/penalties.h and ganfast/reference/penalties.py).

grad_penalty: one program per sample computes s = Σ (g·inv_scale)² in fp32, n = sqrt(s + 1e-12),
its penalty term and writes d P/d g for its row; a one-program kernel sums the terms in row order.
gp_interpolate: an elementwise kernel (after a one-program std kernel for DRAGAN's perturbation).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _gp_rows_kernel(g_ptr, grad_ptr, norms_ptr, terms_ptr, cols, inv_scale, center, k,
                    KIND: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    base = row.to(tl.int64) * cols
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], tl.float32)
    for start in range(0, cols, BLOCK):
        m = start + offs < cols
        h = tl.load(g_ptr + base + start + offs, mask=m, other=0.0).to(tl.float32) * inv_scale
        acc += h * h
    s = tl.sum(acc, 0)
    n = tl.sqrt(s + 1e-12)
    if KIND == 2:  # squared: f = s, df/dh = 2h
        v = s
        coef = 2.0
    else:  # (relu)(n - c)²: df/dh = 2(n - c)/n · h
        d = n - center
        if KIND == 1:
            d = tl.where(d < 0, 0.0, d)
        v = d * d
        coef = 2.0 * d / n
    tl.store(norms_ptr + row, n)
    tl.store(terms_ptr + row, v)
    scale = k * coef  # d P/d g = (w·inv_scale²/B) · coef · g
    for start in range(0, cols, BLOCK):
        m = start + offs < cols
        x = tl.load(g_ptr + base + start + offs, mask=m, other=0.0).to(tl.float32)
        tl.store(grad_ptr + base + start + offs, (scale * x).to(grad_ptr.dtype.element_ty), mask=m)


@triton.jit
def _gp_mean_kernel(terms_ptr, rows, out_ptr, w_over_b, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], tl.float32)
    for start in range(0, rows, BLOCK):
        acc += tl.load(terms_ptr + start + offs, mask=start + offs < rows, other=0.0)
    tl.store(out_ptr, tl.sum(acc, 0) * w_over_b)


@triton.jit
def _std_kernel(x_ptr, n, c, out_ptr, BLOCK: tl.constexpr):
    # out = c · std(x), unbiased, two passes in fp32
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], tl.float32)
    for start in range(0, n, BLOCK):
        acc += tl.load(x_ptr + start + offs, mask=start + offs < n, other=0.0).to(tl.float32)
    nf = n.to(tl.float32)
    mean = tl.sum(acc, 0) / nf
    acc = tl.zeros([BLOCK], tl.float32)
    for start in range(0, n, BLOCK):
        m = start + offs < n
        d = tl.load(x_ptr + start + offs, mask=m, other=0.0).to(tl.float32) - mean
        acc += tl.where(m, d * d, 0.0)
    tl.store(out_ptr, c * tl.sqrt(tl.sum(acc, 0) / (nf - 1.0)))


@triton.jit
def _interp_kernel(r_ptr, o_ptr, a_ptr, scale_ptr, out_ptr, n, cols, PERTURB: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    a = tl.load(a_ptr + offs // cols, mask=m, other=0.0)
    r = tl.load(r_ptr + offs, mask=m, other=0.0).to(tl.float32)
    o = tl.load(o_ptr + offs, mask=m, other=0.0).to(tl.float32)
    if PERTURB:  # r + (1-a)·c·σ·u
        x = r + (1.0 - a) * (tl.load(scale_ptr) * o)
    else:
        x = a * r + (1.0 - a) * o
    tl.store(out_ptr + offs, x.to(out_ptr.dtype.element_ty), mask=m)


def _check_dtype(t: torch.Tensor) -> None:
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"triton backend: tensors of dtype {t.dtype} are not supported "
                        f"(supported: float32, float16, bfloat16)")


def grad_penalty_fused(g: torch.Tensor, kind: int, weight: float, center: float, inv_scale: float):
    """Launcher: (penalty, d penalty/d g, norms), as ganfast::grad_penalty_fused."""
    _check_dtype(g)
    if kind not in (0, 1, 2):
        raise ValueError(f"triton backend: unknown penalty kind {kind}")
    if g.dim() < 1 or g.shape[0] == 0 or g.numel() == 0:
        raise ValueError(f"triton backend: g needs a non-empty batch, got shape {tuple(g.shape)}")
    g = g.contiguous()
    rows = g.shape[0]
    cols = g.numel() // rows
    grad = torch.empty_like(g)
    norms = g.new_empty(rows, dtype=torch.float32)
    terms = g.new_empty(rows, dtype=torch.float32)
    penalty = g.new_empty((), dtype=torch.float32)
    block = min(BLOCK, triton.next_power_of_2(cols))
    _gp_rows_kernel[(rows,)](g, grad, norms, terms, cols, float(inv_scale), float(center),
                             float(weight) * float(inv_scale) ** 2 / rows, KIND=kind, BLOCK=block)
    _gp_mean_kernel[(1,)](terms, rows, penalty, float(weight) / rows, BLOCK=min(BLOCK, triton.next_power_of_2(rows)))
    return penalty, grad, norms


def gp_interpolate(real: torch.Tensor, other: torch.Tensor, alpha: torch.Tensor, perturb: bool, c: float):
    """Launcher of ganfast::gp_interpolate_triton."""
    _check_dtype(real)
    if real.dim() < 1 or real.shape[0] == 0:
        raise ValueError("triton backend: real needs a non-empty batch dimension")
    if other.shape != real.shape or other.dtype != real.dtype or other.device != real.device:
        raise ValueError("triton backend: real and other differ in shape, dtype or device")
    if alpha.shape != (real.shape[0],) or not alpha.dtype.is_floating_point:
        raise ValueError(f"triton backend: alpha must be a floating tensor of shape ({real.shape[0]},)")
    if perturb and real.numel() < 2:
        raise ValueError("triton backend: the std of a single element is undefined")
    real, other = real.contiguous(), other.contiguous()
    alpha = alpha.to(torch.float32).contiguous()
    n = real.numel()
    out = torch.empty_like(real)
    scale = real.new_empty(1, dtype=torch.float32)
    if perturb:
        _std_kernel[(1,)](real, n, float(c), scale, BLOCK=BLOCK)
    _interp_kernel[(triton.cdiv(n, BLOCK),)](real, other, alpha, scale, out, n, n // real.shape[0],
                                             PERTURB=bool(perturb), BLOCK=BLOCK)
    return out
