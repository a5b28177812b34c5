"""Validation cases of the differentiable augmentation: ganfast.augment on B = 5 images of 3×9×11
(odd sizes) for each policy, on fixed drawn parameters (p = 0.8: augmented and untouched samples),
the output and the input gradient of a random projection of it."""
from __future__ import annotations

import functools

import torch

from .. import augment
from . import Case

B, SHAPE = 5, (3, 9, 11)
POLICIES = ("color,translation,cutout", "color", "translation,cutout")


def _run(policy: str, dtype, device, seed, rounded_to=None):
    g = torch.Generator().manual_seed(seed)

    def rnd(scale=1.0):
        return (scale * torch.randn((B,) + SHAPE, generator=g, dtype=torch.float64)).to(rounded_to or dtype).to(device, dtype)

    x = rnd(0.7).requires_grad_()
    upstream = rnd()
    color, geometry = augment.draw_params(B, SHAPE[1], SHAPE[2], policy, 0.8, lambda s: torch.rand(s, generator=g))
    out = augment.apply_params(x, None if color is None else color.to(device), geometry.to(device))
    (out * upstream).sum().backward()
    return {"out": out, "grad_x": x.grad}


def cases() -> list[Case]:
    return [Case("augment", f"diffaugment[{p}]", functools.partial(_run, p)) for p in POLICIES]
