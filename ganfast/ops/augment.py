"""Op boundary of the differentiable augmentation (DiffAugment): schemas, fake kernels, autograd, and
the one place where the family picks its backend (`dispatch_diffaugment`, by the rule of
ganfast.backends).

ganfast::diffaugment(x, color, geometry) -> out
    x (B, C, H, W); color (B, 3) float32 (β, s, k) or None (no color transforms); geometry (B, 6)
    int32 (dy, dx, y0, y1, x0, x1). All the transforms in one pass per sample (math:
    ganfast/reference/augment.py). The color part, with x̄_p the channel mean at pixel p and μ the
    sample's mean, is the affine map
        y = x + a (x - x̄_p) + b (x̄_p - μ) + β,   a = k s - 1, b = k - 1
    (exactly x for an unaugmented sample: a = b = β = 0), then out = mask · y gathered at the shift.
ganfast::diffaugment_backward(grad, color, geometry) -> dx
    the transpose: g' = grad · mask scattered back by the shift (the inverse gather: a shift is a
    permutation with zeros), then, with G_p = Σ_c g'_cp and G = Σ_p G_p,
        dx = (1 + a) g' + (b - a)/C · G_p - b/(C H W) · G
    It does not need x. Its own backward is the forward's linear part (β = 0): both are linear, so the
    op is differentiable to any order (an R1 penalty through the augmentation needs the second).
The *_triton ops have the same schemas. C++ (csrc/cpu/augment.cpp, csrc/cuda/augment_binding.cpp)
registers the CPU/CUDA kernels. Autograd is Python for every backend (the launcher of the Triton
kernels is Python anyway; at B = 64, 3×32×32 the kernels take ~100 µs, where Python's tens of µs
per call are a minority).
"""
from __future__ import annotations

import torch

from .. import backends
from ..reference import augment as _reference
from ._library import LIBRARY, define_forward_backward

FAMILY = "augment"

_FWD = "(Tensor x, Tensor? color, Tensor geometry) -> Tensor"
_BWD = "(Tensor grad, Tensor? color, Tensor geometry) -> Tensor"


def _fake(x, color, geometry):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _triton_fwd(x, color, geometry):
    from ..kernels.triton.augment import diffaugment

    return diffaugment(x, color, geometry)


def _triton_bwd(grad, color, geometry):
    from ..kernels.triton.augment import diffaugment_backward

    return diffaugment_backward(grad, color, geometry)


def linear_part(color: torch.Tensor | None) -> torch.Tensor | None:
    """The color parameters of the forward's linear part (β = 0)."""
    if color is None:
        return None
    out = color.clone()
    out[:, 0] = 0
    return out


def _setup_context(ctx, inputs, output):
    _, color, geometry = inputs
    ctx.save_for_backward(color, geometry)


def _make_backward(fwd_op, bwd_op):
    def backward_of_forward(ctx, grad):
        color, geometry = ctx.saved_tensors
        return bwd_op(grad, color, geometry), None, None

    def backward_of_backward(ctx, grad):
        color, geometry = ctx.saved_tensors
        return fwd_op(grad, linear_part(color), geometry), None, None

    return backward_of_forward, backward_of_backward


define_forward_backward("diffaugment", _FWD, _fake, "diffaugment_backward", _BWD, _fake, _triton_fwd, _triton_bwd)

_fwd = torch.ops.ganfast.diffaugment.default
_bwd = torch.ops.ganfast.diffaugment_backward.default
_fwd_triton = torch.ops.ganfast.diffaugment_triton.default
_bwd_triton = torch.ops.ganfast.diffaugment_backward_triton.default
for _f, _b in ((_fwd, _bwd), (_fwd_triton, _bwd_triton)):
    _of_fwd, _of_bwd = _make_backward(_f, _b)
    torch.library.register_autograd(_f._name, _of_fwd, setup_context=_setup_context, lib=LIBRARY)
    torch.library.register_autograd(_b._name, _of_bwd, setup_context=_setup_context, lib=LIBRARY)


def diffaugment(x: torch.Tensor, color: torch.Tensor | None, geometry: torch.Tensor, backend: str) -> torch.Tensor:
    """The augmented batch from the fused kernel of `backend` ("cpu", "cuda" or "triton"), unchecked."""
    return (_fwd_triton if backend == "triton" else _fwd)(x, color, geometry)


def dispatch_diffaugment(x: torch.Tensor, color: torch.Tensor | None, geometry: torch.Tensor) -> torch.Tensor:
    """The augmented batch on the backend that `backend_for("augment", x)` picks."""
    backend = backends.backend_for(FAMILY, x)
    if backend == "reference":
        return _reference.diffaugment(x, color, geometry)
    return diffaugment(x, color, geometry, backend)
