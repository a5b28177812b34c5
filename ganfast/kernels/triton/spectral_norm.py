"""Triton kernels of ganfast::spectral_norm_fused_triton / spectral_norm_backward_triton and of their
multi-tensor forms (spectral_norm_multi_triton / spectral_norm_backward_multi_triton).

The weight is read in place as M with `dim` first: W3 = weight.reshape(outer, h, inner),
W3[a, r, b] = M[r, a * inner + b] (see ganfast/reference/spectral_norm.py), element offset
(a * h + r) * inner + b. The vector normalizations live inside the kernels, so a training-mode
forward with one power iteration is 3 launches and the backward 2 (GPU launches cost more than the
arithmetic at GAN layer sizes):
  1. t = M v                     programs over row blocks (from the 2nd iteration on, v = s / max(||s||, eps)
                                 with ||s||^2 summed from the partials of launch 2)
  2. u' = t / max(||t||, eps),   programs over column blocks; each sums ||t||^2 over all of t (h floats)
     s = M^T u', partials of ||s||^2 (one per program)
  3. sigma = ||s||^2 / max(||s||, eps) (= u'^T M v' exactly, v' = s / max(||s||, eps)), v', and
     out = W / max(sigma, eps)   programs over elements; each sums the partials of launch 2
Eval (n_iter = 0): 1. partials of u^T (M v) per row block; 3. sigma = their sum, u' = u, v' = v, out.
Backward: 1. partials of <G, W> per block; 2. dW = (G - <G, W/sigma> u v^T) / sigma, each program
summing the partials. All arithmetic in fp32; every reduction has a fixed order (deterministic).

The multi-tensor kernels run the same blocks for every layer of a model in one launch per phase:
a table (one int64 row per layer: element offsets of its tensors from two base tensors, sizes, and
the first program of each phase) is uploaded once per call, and each program finds its layer in it.
So the whole model costs 4 launches forward (upload + 3) and 3 backward, per weight dtype.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...reference.spectral_norm import split_dims

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BLOCK_R, BLOCK_C, BLOCK = 16, 128, 1024
PART_BLOCK = 128  # partial sums read per step by a program that totals them
# Columns of a layer's row in the multi-tensor forward table (element offsets from the weight base for
# W and out, from the fp32 base for the rest; sizes; the first program of each phase).
(F_W, F_OUT, F_U, F_V, F_U_OUT, F_V_OUT, F_SIGMA, F_T, F_S, F_PART, F_H, F_I, F_N,
 F_ROWS0, F_COLS0, F_ELEMS0, F_WIDTH) = map(tl.constexpr, range(17))
# ... and in the backward table (G, W, dW from the weight base; u, v, sigma, partials from the fp32 base).
B_G, B_W, B_OUT, B_U, B_V, B_SIGMA, B_PART, B_H, B_I, B_N, B_BLOCKS0, B_WIDTH = map(tl.constexpr, range(12))


@triton.jit
def _sum_partials(part_ptr, n, PART_BLOCK: tl.constexpr):
    """sum of part[0:n] in a fixed order (the same value in every program)."""
    offs = tl.arange(0, PART_BLOCK)
    acc = tl.zeros([PART_BLOCK], tl.float32)
    for start in range(0, n, PART_BLOCK):
        acc += tl.load(part_ptr + start + offs, mask=start + offs < n, other=0.0)
    return tl.sum(acc, 0)


@triton.jit
def _mv_block(w_ptr, v_ptr, v_part_ptr, n_vpart, u_ptr, t_ptr, dot_ptr, blk, H, I, N, eps,
              NORMALIZE_V: tl.constexpr, EVAL: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
              PART_BLOCK: tl.constexpr):
    """Rows of block `blk`: t[r] = sum_c M[r, c] v[c], v = v_ptr / max(||v_ptr||, eps) when NORMALIZE_V
    (||v_ptr||^2 = the sum of v_part). Training: stores t. EVAL: stores dot[blk] = sum_r u[r] t[r]."""
    rows = blk * BLOCK_R + tl.arange(0, BLOCK_R)
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
    t = tl.sum(acc, 1)
    if NORMALIZE_V:
        t = t / tl.maximum(tl.sqrt(_sum_partials(v_part_ptr, n_vpart, PART_BLOCK)), eps)
    if EVAL:
        u = tl.load(u_ptr + rows, mask=rmask, other=0.0)
        tl.store(dot_ptr + blk, tl.sum(u * t, 0))
    else:
        tl.store(t_ptr + rows, t, mask=rmask)


@triton.jit
def _mtv_block(w_ptr, t_ptr, u_out_ptr, s_ptr, s_part_ptr, blk, H, I, N, eps,
               BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Columns of block `blk`: u' = t / max(||t||, eps) (block 0 stores it), s[c] = sum_r M[r, c] u'[r],
    s_part[blk] = the block's sum of s^2."""
    offs_r = tl.arange(0, BLOCK_R)
    acc_t = tl.zeros([BLOCK_R], tl.float32)
    for start in range(0, H, BLOCK_R):
        t = tl.load(t_ptr + start + offs_r, mask=start + offs_r < H, other=0.0)
        acc_t += t * t
    denom = tl.maximum(tl.sqrt(tl.sum(acc_t, 0)), eps)
    cols = blk * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < N
    a = cols // I
    b = cols - a * I
    u_rows = tl.where(blk == 0, H, 0)  # rows of u' this block stores: all in block 0, none elsewhere
    acc = tl.zeros([BLOCK_R, BLOCK_C], tl.float32)
    for start in range(0, H, BLOCK_R):
        rows = start + offs_r
        rmask = rows < H
        offs = (a[None, :] * H + rows[:, None]) * I + b[None, :]
        w = tl.load(w_ptr + offs, mask=rmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        u = tl.load(t_ptr + rows, mask=rmask, other=0.0) / denom
        tl.store(u_out_ptr + rows, u, mask=rows < u_rows)
        acc += w * u[:, None]
    s = tl.sum(acc, 0)
    tl.store(s_ptr + cols, s, mask=cmask)
    tl.store(s_part_ptr + blk, tl.sum(s * s, 0))


@triton.jit
def _finish_block(w_ptr, out_ptr, n, s_ptr, v_out_ptr, N, part_ptr, n_part, u_ptr, u_out_ptr, H, sigma_ptr,
                  blk, eps, EVAL: tl.constexpr, BLOCK: tl.constexpr, PART_BLOCK: tl.constexpr):
    """Elements of block `blk`: sigma from the partials, v' (and u' in eval), out = W / max(sigma, eps).
    Training: s_ptr = s, sigma = ||s||^2 / max(||s||, eps), v' = s / max(||s||, eps).
    EVAL: s_ptr = v (copied to v'), the partials are those of u^T M v, u' = u."""
    total = _sum_partials(part_ptr, n_part, PART_BLOCK)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    vm = offs < N
    x = tl.load(s_ptr + offs, mask=vm, other=0.0)
    if EVAL:
        sigma = total
        tl.store(v_out_ptr + offs, x, mask=vm)
        tl.store(u_out_ptr + offs, tl.load(u_ptr + offs, mask=offs < H, other=0.0), mask=offs < H)
    else:
        norm = tl.maximum(tl.sqrt(total), eps)
        sigma = total / norm
        tl.store(v_out_ptr + offs, x / norm, mask=vm)
    tl.store(sigma_ptr + offs, tl.zeros([BLOCK], tl.float32) + sigma, mask=offs == 0)
    m = offs < n
    inv = 1.0 / tl.maximum(sigma, eps)
    w = tl.load(w_ptr + offs, mask=m, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, (w * inv).to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _dot_partial_block(g_ptr, w_ptr, part_ptr, n, blk, BLOCK: tl.constexpr):
    """part[blk] = the block's sum of G * W."""
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    g = tl.load(g_ptr + offs, mask=m, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + offs, mask=m, other=0.0).to(tl.float32)
    tl.store(part_ptr + blk, tl.sum(g * w, 0))


@triton.jit
def _backward_block(g_ptr, u_ptr, v_ptr, part_ptr, sigma_ptr, out_ptr, n, H, I, blk, eps,
                    BLOCK: tl.constexpr, PART_BLOCK: tl.constexpr):
    """dW = (G - k u[r] v[c]) / sigma, k = <G, W/sigma> = sum(part) / sigma (0 when sigma < eps: the
    clamp holds it)."""
    sigma = tl.load(sigma_ptr)
    gw = _sum_partials(part_ptr, tl.cdiv(n, BLOCK), PART_BLOCK)
    k = tl.where(sigma >= eps, gw / tl.maximum(sigma, eps), 0.0)
    inv = 1.0 / tl.maximum(sigma, eps)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    b = offs % I
    p = offs // I
    r = p % H
    a = p // H
    g = tl.load(g_ptr + offs, mask=m, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + r, mask=m, other=0.0)
    v = tl.load(v_ptr + a * I + b, mask=m, other=0.0)
    tl.store(out_ptr + offs, ((g - k * u * v) * inv).to(out_ptr.dtype.element_ty), mask=m)


# --- single layer: one program per block --------------------------------------------------------

@triton.jit
def _mv_kernel(w_ptr, v_ptr, v_part_ptr, n_vpart, u_ptr, t_ptr, dot_ptr, H, I, N, eps,
               NORMALIZE_V: tl.constexpr, EVAL: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
               PART_BLOCK: tl.constexpr):
    _mv_block(w_ptr, v_ptr, v_part_ptr, n_vpart, u_ptr, t_ptr, dot_ptr, tl.program_id(0), H, I, N, eps,
              NORMALIZE_V, EVAL, BLOCK_R, BLOCK_C, PART_BLOCK)


@triton.jit
def _mtv_kernel(w_ptr, t_ptr, u_out_ptr, s_ptr, s_part_ptr, H, I, N, eps, BLOCK_R: tl.constexpr,
                BLOCK_C: tl.constexpr):
    _mtv_block(w_ptr, t_ptr, u_out_ptr, s_ptr, s_part_ptr, tl.program_id(0), H, I, N, eps, BLOCK_R, BLOCK_C)


@triton.jit
def _finish_kernel(w_ptr, out_ptr, n, s_ptr, v_out_ptr, N, part_ptr, n_part, u_ptr, u_out_ptr, H, sigma_ptr, eps,
                   EVAL: tl.constexpr, BLOCK: tl.constexpr, PART_BLOCK: tl.constexpr):
    _finish_block(w_ptr, out_ptr, n, s_ptr, v_out_ptr, N, part_ptr, n_part, u_ptr, u_out_ptr, H, sigma_ptr,
                  tl.program_id(0), eps, EVAL, BLOCK, PART_BLOCK)


@triton.jit
def _dot_partial_kernel(g_ptr, w_ptr, part_ptr, n, BLOCK: tl.constexpr):
    _dot_partial_block(g_ptr, w_ptr, part_ptr, n, tl.program_id(0), BLOCK)


@triton.jit
def _backward_kernel(g_ptr, u_ptr, v_ptr, part_ptr, sigma_ptr, out_ptr, n, H, I, eps, BLOCK: tl.constexpr,
                     PART_BLOCK: tl.constexpr):
    _backward_block(g_ptr, u_ptr, v_ptr, part_ptr, sigma_ptr, out_ptr, n, H, I, tl.program_id(0), eps, BLOCK,
                    PART_BLOCK)


# --- multi-tensor: one launch per phase for all layers ------------------------------------------

@triton.jit
def _find_layer(table_ptr, n_layers, WIDTH: tl.constexpr, START: tl.constexpr):
    """(layer, its first program) of this program: the last layer whose phase starts at or before it."""
    pid = tl.program_id(0)
    layer = 0
    for i in range(1, n_layers):
        layer += (tl.load(table_ptr + i * WIDTH + START) <= pid).to(tl.int32)
    return layer, tl.load(table_ptr + layer * WIDTH + START)


@triton.jit
def _mv_multi_kernel(table_ptr, n_layers, w_base, f_base, eps, NORMALIZE_V: tl.constexpr, EVAL: tl.constexpr,
                     BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, PART_BLOCK: tl.constexpr):
    layer, first = _find_layer(table_ptr, n_layers, F_WIDTH, F_ROWS0)
    row = table_ptr + layer * F_WIDTH
    N = tl.load(row + F_N)
    if NORMALIZE_V:  # s of the previous iteration
        v_off = tl.load(row + F_S)
    else:
        v_off = tl.load(row + F_V)
    part = f_base + tl.load(row + F_PART)  # training: ||s||^2 partials (read); eval: u^T M v partials (written)
    _mv_block(w_base + tl.load(row + F_W), f_base + v_off, part, tl.cdiv(N, BLOCK_C), f_base + tl.load(row + F_U),
              f_base + tl.load(row + F_T), part, tl.program_id(0) - first, tl.load(row + F_H), tl.load(row + F_I),
              N, eps, NORMALIZE_V, EVAL, BLOCK_R, BLOCK_C, PART_BLOCK)


@triton.jit
def _mtv_multi_kernel(table_ptr, n_layers, w_base, f_base, eps, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    layer, first = _find_layer(table_ptr, n_layers, F_WIDTH, F_COLS0)
    row = table_ptr + layer * F_WIDTH
    _mtv_block(w_base + tl.load(row + F_W), f_base + tl.load(row + F_T), f_base + tl.load(row + F_U_OUT),
               f_base + tl.load(row + F_S), f_base + tl.load(row + F_PART), tl.program_id(0) - first,
               tl.load(row + F_H), tl.load(row + F_I), tl.load(row + F_N), eps, BLOCK_R, BLOCK_C)


@triton.jit
def _finish_multi_kernel(table_ptr, n_layers, w_base, f_base, eps, EVAL: tl.constexpr, BLOCK: tl.constexpr,
                         BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, PART_BLOCK: tl.constexpr):
    layer, first = _find_layer(table_ptr, n_layers, F_WIDTH, F_ELEMS0)
    row = table_ptr + layer * F_WIDTH
    H = tl.load(row + F_H)
    N = tl.load(row + F_N)
    if EVAL:  # v is copied to v'; the partials are those of u^T M v, one per row block
        src = tl.load(row + F_V)
        n_part = tl.cdiv(H, BLOCK_R)
    else:  # s is normalized into v'; the partials are those of ||s||^2, one per column block
        src = tl.load(row + F_S)
        n_part = tl.cdiv(N, BLOCK_C)
    _finish_block(w_base + tl.load(row + F_W), w_base + tl.load(row + F_OUT), H * N, f_base + src,
                  f_base + tl.load(row + F_V_OUT), N, f_base + tl.load(row + F_PART), n_part,
                  f_base + tl.load(row + F_U), f_base + tl.load(row + F_U_OUT), H, f_base + tl.load(row + F_SIGMA),
                  tl.program_id(0) - first, eps, EVAL, BLOCK, PART_BLOCK)


@triton.jit
def _dot_partial_multi_kernel(table_ptr, n_layers, w_base, f_base, BLOCK: tl.constexpr):
    layer, first = _find_layer(table_ptr, n_layers, B_WIDTH, B_BLOCKS0)
    row = table_ptr + layer * B_WIDTH
    _dot_partial_block(w_base + tl.load(row + B_G), w_base + tl.load(row + B_W), f_base + tl.load(row + B_PART),
                       tl.load(row + B_N), tl.program_id(0) - first, BLOCK)


@triton.jit
def _backward_multi_kernel(table_ptr, n_layers, w_base, f_base, eps, BLOCK: tl.constexpr, PART_BLOCK: tl.constexpr):
    layer, first = _find_layer(table_ptr, n_layers, B_WIDTH, B_BLOCKS0)
    row = table_ptr + layer * B_WIDTH
    _backward_block(w_base + tl.load(row + B_G), f_base + tl.load(row + B_U), f_base + tl.load(row + B_V),
                    f_base + tl.load(row + B_PART), f_base + tl.load(row + B_SIGMA), w_base + tl.load(row + B_OUT),
                    tl.load(row + B_N), tl.load(row + B_H), tl.load(row + B_I), tl.program_id(0) - first, eps,
                    BLOCK, PART_BLOCK)


# --- launchers ----------------------------------------------------------------------------------

def _check(weight: torch.Tensor, dim: int) -> tuple[int, int, int]:
    """(outer, h, inner) of the weight read as M with `dim` first."""
    if weight.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"triton backend: weights of dtype {weight.dtype} are not supported "
                        f"(supported: float32, float16, bfloat16)")
    if weight.dim() < 2 or weight.numel() == 0 or not 0 <= dim < weight.dim():
        raise ValueError(f"triton backend: weight must be non-empty, at least 2-D, with 0 <= dim < {weight.dim()}; "
                         f"got shape {tuple(weight.shape)}, dim {dim}")
    return split_dims(weight.shape, dim)


def _check_vectors(u, v, H: int, N: int) -> None:
    if u.shape != (H,) or v.shape != (N,):
        raise ValueError(f"triton backend: u must have shape ({H},) and v ({N},), got {tuple(u.shape)}, {tuple(v.shape)}")


def spectral_norm_fused(weight, u, v, dim: int, n_iter: int, eps: float):
    """Launcher: (W / sigma, u', v', sigma) as ganfast::spectral_norm_fused, in 2 * n_iter + 1 launches
    (2 in eval)."""
    O, H, I = _check(weight, dim)
    if n_iter < 0:
        raise ValueError(f"triton backend: n_iter must be >= 0, got {n_iter}")
    w = weight.contiguous()
    N = O * I
    _check_vectors(u, v, H, N)
    u = u.to(torch.float32).contiguous()
    v = v.to(torch.float32).contiguous()
    row_blocks, col_blocks = triton.cdiv(H, BLOCK_R), triton.cdiv(N, BLOCK_C)
    # one allocation: t (H), s (N), the partials (one per row or column block)
    work = torch.empty(H + N + max(row_blocks, col_blocks), device=w.device, dtype=torch.float32)
    t, s, part = work[:H], work[H:H + N], work[H + N:]
    u_out, v_out = torch.empty_like(u), torch.empty_like(v)
    sigma = torch.empty((), device=w.device, dtype=torch.float32)
    out = torch.empty_like(w)
    ev = n_iter == 0
    for it in range(max(n_iter, 1)):
        _mv_kernel[(row_blocks,)](w, s if it else v, part, col_blocks, u, t, part, H, I, N, eps,
                                  NORMALIZE_V=it > 0, EVAL=ev, BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C, PART_BLOCK=PART_BLOCK)
        if not ev:
            _mtv_kernel[(col_blocks,)](w, t, u_out, s, part, H, I, N, eps, BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C)
    _finish_kernel[(triton.cdiv(w.numel(), BLOCK),)](w, out, w.numel(), v if ev else s, v_out, N, part,
                                                     row_blocks if ev else col_blocks, u, u_out, H, sigma, eps,
                                                     EVAL=ev, BLOCK=BLOCK, PART_BLOCK=PART_BLOCK)
    return out, u_out, v_out, sigma


def spectral_norm_backward(grad, weight, u, v, sigma, dim: int, eps: float):
    """Launcher: dW as ganfast::spectral_norm_backward, in 2 launches."""
    O, H, I = _check(weight, dim)
    w = weight.contiguous()
    g = grad.to(w.dtype).contiguous()
    n = w.numel()
    grid = (triton.cdiv(n, BLOCK),)
    part = torch.empty(grid[0], device=w.device, dtype=torch.float32)
    _dot_partial_kernel[grid](g, w, part, n, BLOCK=BLOCK)
    out = torch.empty_like(w)
    _backward_kernel[grid](g, u.to(torch.float32).contiguous(), v.to(torch.float32).contiguous(), part,
                           sigma.to(torch.float32).reshape(()).contiguous(), out, n, H, I, eps,
                           BLOCK=BLOCK, PART_BLOCK=PART_BLOCK)
    return out


def _offset(t: torch.Tensor, base: torch.Tensor) -> int:
    """Element offset of t's data from base's (same dtype and device): kernels reach t as base + offset."""
    delta = t.data_ptr() - base.data_ptr()
    assert delta % t.element_size() == 0, "tensors of one dtype are aligned to their element size"
    return delta // t.element_size()


def _upload(rows: list[list[int]], device: torch.device) -> torch.Tensor:
    """The table on the device: one copy (a host-to-device transfer on a GPU)."""
    table = torch.empty(len(rows) * len(rows[0]), device=device, dtype=torch.int64)
    return table.copy_(torch.tensor(rows, dtype=torch.int64).flatten())


def _by_dtype(weights) -> dict[torch.dtype, list[int]]:
    groups: dict[torch.dtype, list[int]] = {}
    for i, w in enumerate(weights):
        groups.setdefault(w.dtype, []).append(i)
    return groups


def spectral_norm_multi(weights, us, vs, dims, n_iter: int, eps: float):
    """Launcher of ganfast::spectral_norm_multi_triton: lists (W / sigma, u', v', sigma), the single-layer
    math for every layer, in 2 * n_iter + 2 launches per weight dtype (3 in eval)."""
    if not (len(weights) == len(us) == len(vs) == len(dims)):
        raise ValueError("triton backend: weights, u, v and dims must have the same length")
    if n_iter < 0:
        raise ValueError(f"triton backend: n_iter must be >= 0, got {n_iter}")
    n = len(weights)
    outs, u_outs, v_outs, sigmas = [None] * n, [None] * n, [None] * n, [None] * n
    for idx in _by_dtype(weights).values():
        _multi_forward_group(weights, us, vs, dims, n_iter, eps, idx, outs, u_outs, v_outs, sigmas)
    return outs, u_outs, v_outs, sigmas


def _multi_forward_group(weights, us, vs, dims, n_iter, eps, idx, outs, u_outs, v_outs, sigmas):
    device = weights[idx[0]].device
    layers = []
    for i in idx:
        O, H, I = _check(weights[i], dims[i])
        if weights[i].device != device:
            raise ValueError("triton backend: all weights of a multi-tensor call must be on one device")
        _check_vectors(us[i], vs[i], H, O * I)
        layers.append((weights[i].contiguous(), us[i].to(torch.float32).contiguous(),
                       vs[i].to(torch.float32).contiguous(), H, I, O * I))
    # one fp32 workspace for every layer's t, s and partials; the outputs are tensors of their own
    sizes = [(H, N, triton.cdiv(H, BLOCK_R), triton.cdiv(N, BLOCK_C)) for _, _, _, H, _, N in layers]
    work = torch.empty(sum(H + N + max(rb, cb) for H, N, rb, cb in sizes), device=device, dtype=torch.float32)
    w_base = layers[0][0]
    rows, at, starts = [], 0, [0, 0, 0]
    for (w, u, v, H, I, N), (_, _, rb, cb), i in zip(layers, sizes, idx):
        outs[i], u_outs[i], v_outs[i] = torch.empty_like(w), torch.empty_like(u), torch.empty_like(v)
        sigmas[i] = torch.empty((), device=device, dtype=torch.float32)
        t, s, part = work[at:at + H], work[at + H:at + H + N], work[at + H + N:]
        rows.append([_offset(w, w_base), _offset(outs[i], w_base), _offset(u, work), _offset(v, work),
                     _offset(u_outs[i], work), _offset(v_outs[i], work), _offset(sigmas[i], work), _offset(t, work),
                     _offset(s, work), _offset(part, work), H, I, N, *starts])
        starts = [starts[0] + rb, starts[1] + cb, starts[2] + triton.cdiv(w.numel(), BLOCK)]
        at += H + N + max(rb, cb)
    table = _upload(rows, device)
    ev = n_iter == 0
    for it in range(max(n_iter, 1)):
        _mv_multi_kernel[(starts[0],)](table, len(rows), w_base, work, eps, NORMALIZE_V=it > 0, EVAL=ev,
                                       BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C, PART_BLOCK=PART_BLOCK)
        if not ev:
            _mtv_multi_kernel[(starts[1],)](table, len(rows), w_base, work, eps, BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C)
    _finish_multi_kernel[(starts[2],)](table, len(rows), w_base, work, eps, EVAL=ev, BLOCK=BLOCK, BLOCK_R=BLOCK_R,
                                       BLOCK_C=BLOCK_C, PART_BLOCK=PART_BLOCK)


def spectral_norm_backward_multi(grads, weights, us, vs, sigmas, dims, eps: float):
    """Launcher of ganfast::spectral_norm_backward_multi_triton: dW of every layer, 3 launches per
    weight dtype."""
    if not (len(grads) == len(weights) == len(us) == len(vs) == len(sigmas) == len(dims)):
        raise ValueError("triton backend: all lists must have the same length")
    dws = [None] * len(weights)
    for idx in _by_dtype(weights).values():
        device = weights[idx[0]].device
        layers = []
        for i in idx:
            O, H, I = _check(weights[i], dims[i])
            w = weights[i].contiguous()
            if grads[i].shape != w.shape:
                raise ValueError(f"triton backend: grad of shape {tuple(grads[i].shape)} for a weight of shape "
                                 f"{tuple(w.shape)}")
            layers.append((grads[i].to(w.dtype).contiguous(), w, us[i].to(torch.float32).contiguous(),
                           vs[i].to(torch.float32).contiguous(), sigmas[i].to(torch.float32).reshape(()).contiguous(),
                           H, I))
        blocks = [triton.cdiv(w.numel(), BLOCK) for _, w, *_ in layers]
        part = torch.empty(sum(blocks), device=device, dtype=torch.float32)
        w_base = layers[0][1]
        rows, first = [], 0
        for (g, w, u, v, sigma, H, I), nb, i in zip(layers, blocks, idx):
            dws[i] = torch.empty_like(w)
            rows.append([_offset(g, w_base), _offset(w, w_base), _offset(dws[i], w_base), _offset(u, part),
                         _offset(v, part), _offset(sigma, part), first, H, I, w.numel(), first])
            first += nb
        table = _upload(rows, device)
        _dot_partial_multi_kernel[(first,)](table, len(rows), w_base, part, BLOCK=BLOCK)
        _backward_multi_kernel[(first,)](table, len(rows), w_base, part, eps, BLOCK=BLOCK, PART_BLOCK=PART_BLOCK)
    return dws
