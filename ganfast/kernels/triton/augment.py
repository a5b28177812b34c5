"""Triton kernels of ganfast::diffaugment_triton and ganfast::diffaugment_backward_triton (same
contract as csrc/common/augment.h and ganfast/ops/augment.py).

One program per sample. Forward: with color, a first loop sums the image for its mean μ; then one
loop over blocks of output pixels gathers each pixel's source (shifted, zero outside, zero in the
cutout box) for every channel, applies y = x + a (x - x̄_p) + b (x̄_p - μ) + β and stores it.
Backward: with color, a first loop sums the gradient that reaches x (G); then one loop over blocks
of source pixels gathers the gradient of the output pixel that read each (the inverse gather) and
applies dx = (1 + a) g + (b - a)/C · G_p - b/(C H W) · G. Arithmetic in fp32; 1/C and 1/(C H W) come
from the launcher (a size argument of 1 is a constant int in the kernel, not a tensor).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _read_mask(i, j, in_block, dy, dx, y0, y1, x0, x1, H, W):
    """Whether output pixel (i, j) reads from inside the image and lies outside the cutout box."""
    u = i + dy
    v = j + dx
    inside = in_block & (u >= 0) & (u < H) & (v >= 0) & (v < W)
    cut = (i >= y0) & (i < y1) & (j >= x0) & (j < x1)
    return inside & (cut == 0)


@triton.jit
def _color_coef(color_ptr, s):
    beta = tl.load(color_ptr + s * 3)
    sat = tl.load(color_ptr + s * 3 + 1)
    con = tl.load(color_ptr + s * 3 + 2)
    return beta, con * sat - 1.0, con - 1.0


@triton.jit
def _forward_kernel(x_ptr, color_ptr, geom_ptr, out_ptr, C, H, W, inv_c, inv_n, COLOR: tl.constexpr,
                    BLOCK: tl.constexpr):
    s = tl.program_id(0)
    hw = H * W
    base = s.to(tl.int64) * C * hw
    dy = tl.load(geom_ptr + s * 6)
    dx = tl.load(geom_ptr + s * 6 + 1)
    y0 = tl.load(geom_ptr + s * 6 + 2)
    y1 = tl.load(geom_ptr + s * 6 + 3)
    x0 = tl.load(geom_ptr + s * 6 + 4)
    x1 = tl.load(geom_ptr + s * 6 + 5)
    offs = tl.arange(0, BLOCK)
    if COLOR:
        acc = tl.zeros([BLOCK], tl.float32)
        for start in range(0, C * hw, BLOCK):
            acc += tl.load(x_ptr + base + start + offs, mask=start + offs < C * hw, other=0.0).to(tl.float32)
        mu = tl.sum(acc, 0) * inv_n
        beta, a, b = _color_coef(color_ptr, s)
    for start in range(0, hw, BLOCK):
        p = start + offs
        in_block = p < hw
        i = p // W
        j = p % W
        reads = _read_mask(i, j, in_block, dy, dx, y0, y1, x0, x1, H, W)
        src = x_ptr + base + (i + dy) * W + (j + dx)
        if COLOR:
            total = tl.zeros([BLOCK], tl.float32)
            for c in range(0, C):
                total += tl.load(src + c * hw, mask=reads, other=0.0).to(tl.float32)
            mean_p = total * inv_c
            common = b * (mean_p - mu) + beta
            for c in range(0, C):
                v = tl.load(src + c * hw, mask=reads, other=0.0).to(tl.float32)
                y = tl.where(reads, v + (a * (v - mean_p) + common), 0.0)
                tl.store(out_ptr + base + c * hw + p, y.to(out_ptr.dtype.element_ty), mask=in_block)
        else:
            for c in range(0, C):
                v = tl.load(src + c * hw, mask=reads, other=0.0)
                tl.store(out_ptr + base + c * hw + p, v.to(out_ptr.dtype.element_ty), mask=in_block)


@triton.jit
def _backward_kernel(g_ptr, color_ptr, geom_ptr, out_ptr, C, H, W, inv_c, inv_n, COLOR: tl.constexpr,
                     BLOCK: tl.constexpr):
    s = tl.program_id(0)
    hw = H * W
    base = s.to(tl.int64) * C * hw
    dy = tl.load(geom_ptr + s * 6)
    dx = tl.load(geom_ptr + s * 6 + 1)
    y0 = tl.load(geom_ptr + s * 6 + 2)
    y1 = tl.load(geom_ptr + s * 6 + 3)
    x0 = tl.load(geom_ptr + s * 6 + 4)
    x1 = tl.load(geom_ptr + s * 6 + 5)
    offs = tl.arange(0, BLOCK)
    if COLOR:  # G: the gradient of the output pixels that read from inside and are not cut out
        acc = tl.zeros([BLOCK], tl.float32)
        for start in range(0, hw, BLOCK):
            p = start + offs
            reads = _read_mask(p // W, p % W, p < hw, dy, dx, y0, y1, x0, x1, H, W)
            for c in range(0, C):
                acc += tl.load(g_ptr + base + c * hw + p, mask=reads, other=0.0).to(tl.float32)
        beta, a, b = _color_coef(color_ptr, s)
        k_pixel = (b - a) * inv_c
        k_all = b * tl.sum(acc, 0) * inv_n
    for start in range(0, hw, BLOCK):
        q = start + offs  # source pixel (u, v), read by output pixel (u - dy, v - dx)
        in_block = q < hw
        i = q // W - dy
        j = q % W - dx
        inside = in_block & (i >= 0) & (i < H) & (j >= 0) & (j < W)
        cut = (i >= y0) & (i < y1) & (j >= x0) & (j < x1)
        reads = inside & (cut == 0)
        src = g_ptr + base + i * W + j
        if COLOR:
            total = tl.zeros([BLOCK], tl.float32)
            for c in range(0, C):
                total += tl.load(src + c * hw, mask=reads, other=0.0).to(tl.float32)
            common = k_pixel * total - k_all
            for c in range(0, C):
                g = tl.load(src + c * hw, mask=reads, other=0.0).to(tl.float32)
                tl.store(out_ptr + base + c * hw + q, (g + (a * g + common)).to(out_ptr.dtype.element_ty),
                         mask=in_block)
        else:
            for c in range(0, C):
                g = tl.load(src + c * hw, mask=reads, other=0.0)
                tl.store(out_ptr + base + c * hw + q, g.to(out_ptr.dtype.element_ty), mask=in_block)


def _checked(x: torch.Tensor, color: torch.Tensor | None, geometry: torch.Tensor, what: str):
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"triton backend: tensors of dtype {x.dtype} are not supported "
                        f"(supported: float32, float16, bfloat16)")
    if x.dim() != 4 or x.numel() == 0:
        raise ValueError(f"triton backend: {what} must be a non-empty batch of images (B, C, H, W), "
                         f"got shape {tuple(x.shape)}")
    b = x.shape[0]
    if geometry.shape != (b, 6) or geometry.dtype != torch.int32:
        raise ValueError(f"triton backend: geometry must be int32 of shape ({b}, 6), got {geometry.dtype} "
                         f"{tuple(geometry.shape)}")
    if color is not None and (color.shape != (b, 3) or color.dtype != torch.float32):
        raise ValueError(f"triton backend: color must be float32 of shape ({b}, 3), got {color.dtype} "
                         f"{tuple(color.shape)}")
    x = x.contiguous()
    return x, (None if color is None else color.contiguous()), geometry.contiguous(), torch.empty_like(x)


def _launch(kernel, x, color, geometry, out):
    _, c, h, w = x.shape
    block = min(BLOCK, triton.next_power_of_2(h * w))
    has_color = color is not None
    # without color the color pointer is never read: pass geometry in its place
    kernel[(x.shape[0],)](x, color if has_color else geometry, geometry, out, c, h, w, 1.0 / c, 1.0 / (c * h * w),
                          COLOR=has_color, BLOCK=block)
    return out


def diffaugment(x: torch.Tensor, color: torch.Tensor | None, geometry: torch.Tensor) -> torch.Tensor:
    """Launcher of ganfast::diffaugment_triton."""
    return _launch(_forward_kernel, *_checked(x, color, geometry, "x"))


def diffaugment_backward(grad: torch.Tensor, color: torch.Tensor | None, geometry: torch.Tensor) -> torch.Tensor:
    """Launcher of ganfast::diffaugment_backward_triton."""
    return _launch(_backward_kernel, *_checked(grad, color, geometry, "grad"))
