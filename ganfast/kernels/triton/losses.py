"""Triton kernel of ganfast::gan_loss_fused_triton (same contract as csrc/common/gan_loss.h).

Each loss is a pair of elementwise terms and a mode:
  plain:   L = mean phi(r_i) + mean psi(f_j)
  relavg:  L = mean phi(r_i - mean f) + mean psi(f_j - mean r)
  paired:  L = mean phi(r_i - f_i)
One program walks the logits at most three times (statistics, terms, relativistic correction), so the
whole loss is one launch; the terms are evaluated and summed in fp32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# Term and mode ids, as in csrc/common/gan_loss.h.
NONE, SP_NEG, SP_POS, NEG_SP_POS, HINGE_NEG, HINGE_POS, NEG, POS, HALF_SQ_M1, HALF_SQ = range(10)
PLAIN, RELAVG, PAIRED = range(3)

# (kind id, generator) -> (phi, psi, mode); kind ids are ganfast.ops.losses.KIND_IDS.
LOSS_SPECS = {
    (0, False): (SP_NEG, SP_POS, PLAIN), (0, True): (NONE, SP_NEG, PLAIN),
    (1, False): (SP_NEG, SP_POS, PLAIN), (1, True): (NONE, NEG_SP_POS, PLAIN),
    (2, False): (HINGE_NEG, HINGE_POS, PLAIN), (2, True): (NONE, NEG, PLAIN),
    (3, False): (NEG, POS, PLAIN), (3, True): (NONE, NEG, PLAIN),
    (4, False): (HALF_SQ_M1, HALF_SQ, PLAIN), (4, True): (NONE, HALF_SQ_M1, PLAIN),
    (5, False): (HINGE_NEG, HINGE_POS, RELAVG), (5, True): (HINGE_POS, HINGE_NEG, RELAVG),
    (6, False): (SP_NEG, SP_POS, RELAVG), (6, True): (SP_POS, SP_NEG, RELAVG),
    (7, False): (SP_NEG, NONE, PAIRED), (7, True): (SP_POS, NONE, PAIRED),
}
BLOCK = 1024
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _softplus(x):
    # log(1 + e^x) = max(x, 0) + log(1 + e^-|x|); `where(x < 0, 0, x)` keeps NaN.
    return tl.where(x < 0, 0.0, x) + tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _sigmoid(x):
    e = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _term(x, TERM: tl.constexpr):
    """(value, derivative) of one term at x."""
    if TERM == 1:
        v = _softplus(-x)
        d = -_sigmoid(-x)
    elif TERM == 2:
        v = _softplus(x)
        d = _sigmoid(x)
    elif TERM == 3:
        v = -_softplus(x)
        d = -_sigmoid(x)
    elif TERM == 4:
        a = 1.0 - x
        v = tl.where(a < 0, 0.0, a)
        d = tl.where(a > 0, -1.0, 0.0)
    elif TERM == 5:
        a = 1.0 + x
        v = tl.where(a < 0, 0.0, a)
        d = tl.where(a > 0, 1.0, 0.0)
    elif TERM == 6:
        v = -x
        d = tl.full(x.shape, -1.0, tl.float32)
    elif TERM == 7:
        v = x
        d = tl.full(x.shape, 1.0, tl.float32)
    elif TERM == 8:
        v = 0.5 * (x - 1.0) * (x - 1.0)
        d = x - 1.0
    else:  # 9
        v = 0.5 * x * x
        d = x
    return v, d


# nr, nf not specialized: Triton would pass a size of 1 as a Python int, which has no .to().
@triton.jit(do_not_specialize=("nr", "nf"))
def _gan_loss_kernel(r_ptr, f_ptr, nr, nf, loss_ptr, gr_ptr, gf_ptr, stats_ptr,
                     PHI: tl.constexpr, PSI: tl.constexpr, MODE: tl.constexpr, HAS_REAL: tl.constexpr,
                     BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    zero = tl.zeros([BLOCK], tl.float32)
    # Pass 1: statistics and means; the sums of logits in fp64, as their mean can cancel to ~0.
    sum_r = tl.zeros([BLOCK], tl.float64)
    pos_r = zero
    if HAS_REAL:
        for start in range(0, nr, BLOCK):
            m = start + offs < nr
            x = tl.load(r_ptr + start + offs, mask=m, other=0.0).to(tl.float32)
            sum_r += x.to(tl.float64)
            pos_r += tl.where(m & (x > 0), 1.0, 0.0)
    sum_f = tl.zeros([BLOCK], tl.float64)
    neg_f = zero
    for start in range(0, nf, BLOCK):
        m = start + offs < nf
        x = tl.load(f_ptr + start + offs, mask=m, other=0.0).to(tl.float32)
        sum_f += x.to(tl.float64)
        neg_f += tl.where(m & (x < 0), 1.0, 0.0)
    nrf = nr.to(tl.float32)
    nff = nf.to(tl.float32)
    mean_f = (tl.sum(sum_f, 0) / nf).to(tl.float32)
    if HAS_REAL:
        mean_r = (tl.sum(sum_r, 0) / nr).to(tl.float32)
        tl.store(stats_ptr + 0, mean_r)
        tl.store(stats_ptr + 2, tl.sum(pos_r, 0) / nrf)
    else:  # no real logits (a non-relativistic G loss): the real statistics are 0
        mean_r = 0.0
        tl.store(stats_ptr + 0, 0.0)
        tl.store(stats_ptr + 2, 0.0)
    tl.store(stats_ptr + 1, mean_f)
    tl.store(stats_ptr + 3, tl.sum(neg_f, 0) / nff)

    if MODE == 2:  # paired: L = mean phi(r_i - f_i)
        acc = zero
        for start in range(0, nf, BLOCK):
            m = start + offs < nf
            x = tl.load(r_ptr + start + offs, mask=m, other=0.0).to(tl.float32) - tl.load(
                f_ptr + start + offs, mask=m, other=0.0).to(tl.float32)
            v, d = _term(x, PHI)
            acc += tl.where(m, v, 0.0)
            tl.store(gr_ptr + start + offs, (d / nff).to(gr_ptr.dtype.element_ty), mask=m)
            tl.store(gf_ptr + start + offs, (-d / nff).to(gf_ptr.dtype.element_ty), mask=m)
        tl.store(loss_ptr, (tl.sum(acc, 0) / nff).to(loss_ptr.dtype.element_ty))
    else:
        if MODE == 1:
            shift_r = mean_f
            shift_f = mean_r
        else:
            shift_r = 0.0
            shift_f = 0.0
        # Pass 2: terms and the sums of their derivatives (plain mode writes the gradient here).
        loss = 0.0
        sum_dphi = 0.0
        sum_dpsi = 0.0
        if PHI != 0:
            sum_v, sum_dphi = _term_pass(r_ptr, gr_ptr, nr, shift_r, PHI, MODE == 0, BLOCK)
            loss += sum_v / nrf
        if PSI != 0:
            sum_v, sum_dpsi = _term_pass(f_ptr, gf_ptr, nf, shift_f, PSI, MODE == 0, BLOCK)
            loss += sum_v / nff
        tl.store(loss_ptr, loss.to(loss_ptr.dtype.element_ty))
        if MODE == 1:
            # Pass 3: dL/dr_i = (phi'(x_i) - mean psi') / Nr,  dL/df_j = (psi'(y_j) - mean phi') / Nf.
            _relavg_grad_pass(r_ptr, gr_ptr, nr, shift_r, sum_dpsi / nff, PHI, BLOCK)
            _relavg_grad_pass(f_ptr, gf_ptr, nf, shift_f, sum_dphi / nrf, PSI, BLOCK)


@triton.jit
def _term_pass(x_ptr, grad_ptr, n, shift, TERM: tl.constexpr, WRITE_GRAD: tl.constexpr, BLOCK: tl.constexpr):
    """(sum of values, sum of derivatives) of TERM over x_i - shift; with WRITE_GRAD, grad_i = d_i / n."""
    offs = tl.arange(0, BLOCK)
    acc_v = tl.zeros([BLOCK], tl.float32)
    acc_d = tl.zeros([BLOCK], tl.float32)
    for start in range(0, n, BLOCK):
        m = start + offs < n
        v, d = _term(tl.load(x_ptr + start + offs, mask=m, other=0.0).to(tl.float32) - shift, TERM)
        acc_v += tl.where(m, v, 0.0)
        acc_d += tl.where(m, d, 0.0)
        if WRITE_GRAD:
            tl.store(grad_ptr + start + offs, (d / n.to(tl.float32)).to(grad_ptr.dtype.element_ty), mask=m)
    return tl.sum(acc_v, 0), tl.sum(acc_d, 0)


@triton.jit
def _relavg_grad_pass(x_ptr, grad_ptr, n, shift, mean_other, TERM: tl.constexpr, BLOCK: tl.constexpr):
    """grad_i = (d_i - mean_other) / n, d_i the derivative of TERM at x_i - shift."""
    offs = tl.arange(0, BLOCK)
    for start in range(0, n, BLOCK):
        m = start + offs < n
        v, d = _term(tl.load(x_ptr + start + offs, mask=m, other=0.0).to(tl.float32) - shift, TERM)
        tl.store(grad_ptr + start + offs, ((d - mean_other) / n.to(tl.float32)).to(grad_ptr.dtype.element_ty),
                 mask=m)


def gan_loss_fused(real: torch.Tensor | None, fake: torch.Tensor, kind: int, generator: bool):
    """Launcher: (loss, grad_real, grad_fake, stats), as ganfast::gan_loss_fused."""
    if fake.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"triton backend: logits of dtype {fake.dtype} are not supported "
                        f"(supported: float32, float16, bfloat16)")
    phi, psi, mode = LOSS_SPECS[(kind, generator)]
    has_real = real is not None
    if phi != NONE and not has_real:
        raise ValueError("triton backend: this loss needs real logits")
    fake = fake.contiguous()
    real = real.contiguous() if has_real else fake.new_empty(0)
    if mode == PAIRED and real.shape != fake.shape:
        raise ValueError("triton backend: rpgan pairs real and fake logits, their shapes differ")
    loss = fake.new_empty(())
    grad_real, grad_fake = torch.empty_like(real), torch.empty_like(fake)
    if phi == NONE and has_real:
        grad_real.zero_()
    stats = fake.new_empty(4, dtype=torch.float32)
    _gan_loss_kernel[(1,)](real, fake, real.numel(), fake.numel(), loss, grad_real, grad_fake, stats,
                           PHI=phi, PSI=psi, MODE=mode, HAS_REAL=has_real, BLOCK=BLOCK)
    return loss, grad_real, grad_fake, stats
