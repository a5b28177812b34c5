"""Differentiable augmentation (DiffAugment, Zhao et al. 2020) as one fused op, on the fastest
backend that takes the images (device, dtype; ganfast.backends).

    diffaugment(x, policy="color,translation,cutout", p=1.0, generator=None, backend="auto")

x is a batch of images (B, C, H, W). The transforms of the policy, with per-sample random parameters:
  color        brightness + U(-0.5, 0.5); saturation: deviation from the pixel's channel mean
               scaled by U(0, 2); contrast: deviation from the image's mean scaled by U(0.5, 1.5)
  translation  a shift by up to 1/8 of the image in each direction, zero padding
  cutout       a square of half the image's size (centre uniform, clipped at the border) zeroed
They are applied in that fixed order (DiffAugment's own), whatever the order in the policy string.
Each sample is augmented with probability p (all of the policy's transforms) and otherwise left
exactly as it is; p = 0 returns x itself. The parameters are drawn with torch ops from `generator`
(the default generator of x's device when None): the same generator state gives the same
augmentation on every backend, so a run that saves and restores its generator resumes exactly.

The result is differentiable w.r.t. x (to any order: the augmentation is affine in x). The fused
kernels do all the transforms in one pass forward and one backward (ganfast/ops/augment.py); the
reference is DiffAugment's transforms one after the other (ganfast/reference/augment.py).
"""
from __future__ import annotations

import functools
from typing import Callable

import torch

from . import backends
from .ops import augment as _ops

__all__ = ["diffaugment", "draw_params", "apply_params", "parse_policy", "TRANSFORMS"]

TRANSFORMS = ("color", "translation", "cutout")  # the order they are applied in
TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5
# One uniform draw per sample: [applied?, brightness, saturation, contrast, shift y, shift x,
# cutout centre y, cutout centre x]; always all of them, so the generator advances alike for any policy.
DRAWS_PER_SAMPLE = 8


def parse_policy(policy) -> tuple[str, ...]:
    """The transforms of a policy string ("color,translation,cutout", any subset, any order), in the
    order they are applied; a clear error for anything else."""
    if not isinstance(policy, str):
        raise TypeError(f"policy must be a string such as 'color,translation,cutout', got {type(policy).__name__}")
    names = [n.strip() for n in policy.split(",")]
    if not policy.strip() or any(not n for n in names):
        raise ValueError(f"policy {policy!r} has an empty entry; give comma-separated transforms from "
                         f"{', '.join(TRANSFORMS)}")
    unknown = [n for n in names if n not in TRANSFORMS]
    if unknown:
        raise ValueError(f"unknown augmentation {', '.join(map(repr, unknown))} in policy {policy!r}; choose from "
                         f"{', '.join(TRANSFORMS)}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"policy {policy!r} names {', '.join(repeated)} more than once")
    return tuple(n for n in TRANSFORMS if n in names)


@functools.lru_cache(maxsize=64)
def _layout(height: int, width: int, transforms: tuple[str, ...], device: torch.device):
    """Constants of the parameter draw for one image size and policy, on `device`."""
    sy, sx = int(height * TRANSLATION_RATIO + 0.5), int(width * TRANSLATION_RATIO + 0.5)
    ch, cw = int(height * CUTOUT_RATIO + 0.5), int(width * CUTOUT_RATIO + 0.5)
    # the integer draws: shift index in [0, 2s], cutout centre in [0, H - ch % 2] (DiffAugment's ranges)
    choices = torch.tensor([2 * sy + 1, 2 * sx + 1, height + 1 - ch % 2, width + 1 - cw % 2], dtype=torch.float32)
    # geometry = clamp(integers[COLUMNS] + offset, low, high): (dy, dx, y0, y1, x0, x1)
    offset = torch.tensor([-sy, -sx, -(ch // 2), ch - ch // 2, -(cw // 2), cw - cw // 2], dtype=torch.float32)
    low = torch.tensor([-sy, -sx, 0, 0, 0, 0], dtype=torch.float32)
    high = torch.tensor([sy, sx, height, height, width, width], dtype=torch.float32)
    used = torch.tensor([*(("translation" in transforms),) * 2, *(("cutout" in transforms),) * 4], dtype=torch.float32)
    columns = torch.tensor([0, 1, 2, 2, 3, 3])  # the integer draw behind each geometry column
    color_scale = torch.tensor([1.0, 2.0, 1.0])  # β = u - 0.5, s = 2u, k = u + 0.5
    color_shift = torch.tensor([-0.5, 0.0, 0.5])
    identity = torch.tensor([0.0, 1.0, 1.0])
    return tuple(t.to(device) for t in (choices, choices - 1, columns, offset, low, high, used, color_scale,
                                        color_shift, identity))


def draw_params(batch: int, height: int, width: int, policy: str | tuple[str, ...], p,
                rand: Callable[[tuple[int, ...]], torch.Tensor]):
    """(color, geometry) for `batch` images of height × width: color (B, 3) float32 (β, s, k), or
    None without "color" in the policy; geometry (B, 6) int32 (dy, dx, y0, y1, x0, x1). rand(shape)
    gives float32 U[0, 1) on the images' device (one call, shape (B, DRAWS_PER_SAMPLE)); p is a
    number or a 0-dim tensor (ADA's p, kept on the device: no host sync)."""
    transforms = parse_policy(policy) if isinstance(policy, str) else policy
    u = rand((batch, DRAWS_PER_SAMPLE))
    (choices, largest, columns, offset, low, high, used, color_scale, color_shift,
     identity) = _layout(height, width, transforms, u.device)
    applied = (u[:, :1] < p) if not (isinstance(p, (int, float)) and p >= 1) else None
    integers = torch.minimum(torch.floor(u[:, 4:] * choices), largest)
    geometry = torch.clamp(integers.index_select(1, columns) + offset, low, high) * used
    if applied is not None:
        geometry = geometry * applied
    color = None
    if "color" in transforms:
        color = torch.addcmul(color_shift, u[:, 1:4], color_scale)
        if applied is not None:
            color = torch.where(applied, color, identity)
    return color, geometry.to(torch.int32)


def _check_images(x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a tensor of images, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x must be a batch of images (B, C, H, W), got shape {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"x must be floating point, got {x.dtype} (convert images with .float())")
    if x.numel() == 0:
        raise ValueError(f"x is empty (shape {tuple(x.shape)})")


def _check_p(p) -> None:
    if isinstance(p, torch.Tensor):
        if p.dim() != 0:
            raise ValueError(f"p must be a number or a 0-dim tensor, got shape {tuple(p.shape)}")
        return
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")


def apply_params(x: torch.Tensor, color: torch.Tensor | None, geometry: torch.Tensor,
                 backend: str = "auto") -> torch.Tensor:
    """x augmented with given parameters (draw_params') on `backend` ("auto": ganfast's selection)."""
    if backend == "auto":
        return _ops.dispatch_diffaugment(x, color, geometry)
    with backends.use_backend(backend):
        return _ops.dispatch_diffaugment(x, color, geometry)


def diffaugment(x: torch.Tensor, policy: str = "color,translation,cutout", p=1.0,
                generator: torch.Generator | None = None, backend: str = "auto") -> torch.Tensor:
    """x (B, C, H, W) augmented by the policy's transforms, each sample with probability p (module
    docstring). backend: "auto" follows ganfast's selection (ganfast.set_backend), or a backend name."""
    transforms = parse_policy(policy)
    _check_images(x)
    _check_p(p)
    backends._check_name(backend)
    if isinstance(p, (int, float)) and p == 0:
        return x
    device = generator.device if generator is not None else x.device

    def rand(shape):
        return torch.rand(shape, generator=generator, device=device).to(x.device)

    color, geometry = draw_params(x.shape[0], x.shape[2], x.shape[3], transforms, p, rand)
    return apply_params(x, color, geometry, backend)
