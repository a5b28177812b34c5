"""Validation cases of the GAN losses: d_loss and g_loss of every kind, values, stats and gradients."""
from __future__ import annotations

import functools

import torch

from .. import losses
from . import Case


def draw_logits(kind: str, dtype: torch.dtype, device: torch.device, seed: int, shape=(123, 1),
                rounded_to: torch.dtype | None = None):
    """Fresh logits from `seed`: drawn in float64, rounded to `rounded_to` (default: dtype), then cast
    to dtype (so every run of one precision sees the same values)."""
    g = torch.Generator().manual_seed(seed)
    fake_shape = shape if kind == "rpgan" else (shape[0] + 3,) + tuple(shape[1:])

    def draw(shape):
        x = 2 * torch.randn(shape, generator=g, dtype=torch.float64)
        return x.to(rounded_to or dtype).to(device, dtype).requires_grad_()

    real = draw(shape)
    return real, draw(fake_shape)


def _run_d(kind: str, dtype, device, seed, rounded_to=None):
    real, fake = draw_logits(kind, dtype, device, seed, rounded_to=rounded_to)
    loss, stats = losses.d_loss(real, fake, kind, return_stats=True)
    upstream = 1.0 + torch.rand((), generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64).item()
    (loss * upstream).backward()
    return {"loss": loss, "grad_real": real.grad, "grad_fake": fake.grad, **stats}


def _run_g(kind: str, dtype, device, seed, rounded_to=None):
    real, fake = draw_logits(kind, dtype, device, seed, rounded_to=rounded_to)
    loss = losses.g_loss(fake, kind, real_logits=real if kind in losses.RELATIVISTIC else None)
    loss.backward()
    out = {"loss": loss, "grad_fake": fake.grad}
    if kind in losses.RELATIVISTIC:
        out["grad_real"] = real.grad
    return out


def cases() -> list[Case]:
    return ([Case("losses", f"d_loss[{k}]", functools.partial(_run_d, k)) for k in losses.KINDS]
            + [Case("losses", f"g_loss[{k}]", functools.partial(_run_g, k)) for k in losses.KINDS])
