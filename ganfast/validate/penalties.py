"""Validation cases of the gradient penalties: each public penalty on a small fixed discriminator
(tanh MLP on 5x3x7 inputs, B = 7), the penalty, D's parameter gradients and the input gradient g."""
from __future__ import annotations

import functools

import torch

from .. import penalties
from . import Case

B, SHAPE = 7, (3, 7)
NAMES = ("wgan_gp", "wgan_gp_one_sided", "r1", "r2", "dragan")


def _draw(dtype, device, seed, rounded_to=None):
    """D's weights and the data, drawn in float64 from `seed`, rounded to `rounded_to` (default:
    dtype), then cast to dtype."""
    g = torch.Generator().manual_seed(seed)

    def cast(x):
        return x.to(rounded_to or dtype).to(device, dtype)

    def rnd(*shape, scale=1.0):
        return cast(scale * torch.randn(shape, generator=g, dtype=torch.float64))

    w1 = rnd(21, 16, scale=0.4).requires_grad_()
    w2 = rnd(16, scale=0.5).requires_grad_()
    real, fake = rnd(B, *SHAPE), rnd(B, *SHAPE)
    alpha = cast(torch.rand(B, generator=g, dtype=torch.float64))
    noise = cast(torch.rand((B,) + SHAPE, generator=g, dtype=torch.float64))
    return w1, w2, real, fake, alpha, noise


def _run(name: str, dtype, device, seed, rounded_to=None):
    w1, w2, real, fake, alpha, noise = _draw(dtype, device, seed, rounded_to)

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
    return [Case("penalties", name, functools.partial(_run, name)) for name in NAMES]
