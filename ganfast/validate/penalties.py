"""Validation cases of the gradient penalties: each public penalty on a small fixed discriminator (a
tanh MLP) on two kinds of data, the penalty, D's parameter gradients and the input gradient g: B = 7
samples of 3x7, and B = 203 2-D points, whose rows of 2 elements the CPU kernels run in their
short-row code (groups of 64 rows, vectorized across rows)."""
from __future__ import annotations

import functools
import math

import torch

from .. import penalties
from . import Case

NAMES = ("wgan_gp", "wgan_gp_one_sided", "r1", "r2", "dragan")
DATA = {"": (7, (3, 7)), " points": (203, (2,))}  # case name suffix: (B, per-sample shape)


def _draw(dtype, device, seed, rounded_to, data):
    """D's weights and the data (B, per-sample shape), drawn in float64 from `seed`, rounded to
    `rounded_to` (default: dtype), then cast to dtype."""
    B, SHAPE = data
    g = torch.Generator().manual_seed(seed)

    def cast(x):
        return x.to(rounded_to or dtype).to(device, dtype)

    def rnd(*shape, scale=1.0):
        return cast(scale * torch.randn(shape, generator=g, dtype=torch.float64))

    w1 = rnd(math.prod(SHAPE), 16, scale=0.4).requires_grad_()
    w2 = rnd(16, scale=0.5).requires_grad_()
    real, fake = rnd(B, *SHAPE), rnd(B, *SHAPE)
    alpha = cast(torch.rand(B, generator=g, dtype=torch.float64))
    noise = cast(torch.rand((B,) + SHAPE, generator=g, dtype=torch.float64))
    return w1, w2, real, fake, alpha, noise


def _run(name: str, data, dtype, device, seed, rounded_to=None):
    w1, w2, real, fake, alpha, noise = _draw(dtype, device, seed, rounded_to, data)

    def D(x):
        return torch.tanh(x.flatten(1) @ w1) @ w2

    if name == "wgan_gp":
        p, g = penalties.wgan_gp(D, real, fake, alpha=alpha, return_grads=True)
    elif name == "wgan_gp_one_sided":
        p, g = penalties.wgan_gp(D, real, fake, center=0.6, one_sided=True, alpha=alpha, return_grads=True)
    elif name == "r1":
        p, g = penalties.r1(D, real, return_grads=True)
    elif name == "r2":
        p, g = penalties.r2(D, fake, return_grads=True)
    else:
        p, g = penalties.dragan(D, real, alpha=alpha, noise=noise, return_grads=True)
    upstream = 1.0 + torch.rand((), generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64).item()
    (p * upstream).backward()
    return {"penalty": p, "grad_w1": w1.grad, "grad_w2": w2.grad, "g": g}


def cases() -> list[Case]:
    return [Case("penalties", name + suffix, functools.partial(_run, name, data))
            for suffix, data in DATA.items() for name in NAMES]
