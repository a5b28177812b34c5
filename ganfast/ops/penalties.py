"""Op boundary of the gradient penalties: schemas, fake kernels, autograd, and the one place where
the penalties pick their backend (`dispatch_*`, by the rule of ganfast.backends).

ganfast::grad_penalty_fused(g, kind, weight, center, inv_scale) -> (penalty, d penalty/d g, norms)
  the tail of a gradient penalty in one pass over g (B, ...): per-sample norms of g·inv_scale in
  fp32 (fp64 for fp64 g), the penalty (fp32/fp64 scalar) and its gradient w.r.t. g (g's dtype).
  Kinds and math: ganfast/reference/penalties.py. ganfast::grad_penalty is its autograd wrapper
  (C++, csrc/penalties.cpp): backward rescales the saved gradient.
ganfast::gp_interpolate(real, other, alpha, perturb, c) -> x̂, one α per sample (DRAGAN's
  perturbation when perturb); autograd in Python below (plain torch ops: it is not on the hot path,
  the penalties call it on detached inputs).
"""
from __future__ import annotations

import torch

from .. import backends
from ..reference import penalties as _reference
from ._library import LIBRARY, define_fused

FAMILY = "penalties"

TWO_SIDED, ONE_SIDED, SQUARED = 0, 1, 2

_SCHEMA = ("(Tensor g, int kind, float weight, float center, float inv_scale) "
           "-> (Tensor penalty, Tensor grad_g, Tensor norms)")


def _opmath(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _fake(g, kind, weight, center, inv_scale):
    acc = _opmath(g)
    return (g.new_empty((), dtype=acc), g.new_empty(g.shape),
            g.new_empty((g.shape[0],) if g.dim() else (0,), dtype=acc))


def _triton_impl(g, kind, weight, center, inv_scale):
    from ..kernels.triton.penalties import grad_penalty_fused

    return grad_penalty_fused(g, kind, weight, center, inv_scale)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(output[1])


def _backward(ctx, grad_penalty, _grad_grad_g, _grad_norms):
    if torch.is_grad_enabled():  # create_graph=True: d(d penalty/d g)/d g is not saved
        raise RuntimeError("ganfast gradient penalties are differentiable once (their backward does not "
                           "build a graph); use backend 'reference' for higher-order gradients")
    (grad_g,) = ctx.saved_tensors
    return grad_g * grad_penalty.to(grad_g.dtype), None, None, None, None


define_fused("grad_penalty", _SCHEMA, _fake, _triton_impl, _setup_context, _backward,
             wrapper_schema="(Tensor g, int kind, float weight, float center, float inv_scale) "
                            "-> (Tensor penalty, Tensor norms)")

# --- interpolation ------------------------------------------------------------------------------

_INTERP_SCHEMA = "(Tensor real, Tensor other, Tensor alpha, bool perturb, float c) -> Tensor"
LIBRARY.define(f"gp_interpolate{_INTERP_SCHEMA}")
LIBRARY.define(f"gp_interpolate_triton{_INTERP_SCHEMA}")


def _interp_fake(real, other, alpha, perturb, c):
    return real.new_empty(real.shape)


def _interp_triton(real, other, alpha, perturb, c):
    from ..kernels.triton.penalties import gp_interpolate

    return gp_interpolate(real, other, alpha, perturb, c)


def _interp_setup(ctx, inputs, output):
    real, other, alpha, perturb, c = inputs
    ctx.perturb, ctx.c = perturb, c
    ctx.save_for_backward(real, other, alpha)


def _interp_backward(ctx, go):
    # plain:   x̂ = a·r + (1-a)·o:  dr = a·go, do = (1-a)·go, da_i = Σ_j go_ij (r_ij - o_ij)
    # perturb: x̂ = r + k·c·σ·u, k = 1-a, σ = std(r) (unbiased over all N elements):
    #   du = k·c·σ·go, da_i = -c·σ Σ_j go_ij u_ij, dr = go + c·(Σ go·k·u)·(r - mean r)/((N-1)σ)
    real, other, alpha = ctx.saved_tensors
    shape = (-1,) + (1,) * (real.dim() - 1)
    a = alpha.to(real.dtype).view(shape)
    go = go.to(real.dtype)
    if not ctx.perturb:
        return a * go, (1 - a) * go, (go * (real - other)).flatten(1).sum(1).to(alpha.dtype), None, None
    sigma = real.std()
    k = 1 - a
    gu = go * other
    d_real = go + ctx.c * (gu * k).sum() * (real - real.mean()) / ((real.numel() - 1) * sigma)
    d_alpha = (-ctx.c * sigma * gu.flatten(1).sum(1)).to(alpha.dtype)
    return d_real, k * ctx.c * sigma * go, d_alpha, None, None


for _name, _impl in (("gp_interpolate", None), ("gp_interpolate_triton", _interp_triton)):
    torch.library.register_fake(f"ganfast::{_name}", _interp_fake, lib=LIBRARY)
    if _impl is not None:
        for _device in ("CPU", "CUDA"):
            LIBRARY.impl(_name, _impl, _device)
    torch.library.register_autograd(f"ganfast::{_name}", _interp_backward, setup_context=_interp_setup, lib=LIBRARY)

_grad_penalty = torch.ops.ganfast.grad_penalty.default
_grad_penalty_triton = torch.ops.ganfast.grad_penalty_fused_triton.default
_interpolate = torch.ops.ganfast.gp_interpolate.default
_interpolate_triton = torch.ops.ganfast.gp_interpolate_triton.default


def grad_penalty(g: torch.Tensor, kind: int, weight: float, center: float, inv_scale: float,
                 backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(penalty, norms) from the fused kernel of `backend` ("cpu", "cuda" or "triton"), unchecked."""
    if backend == "triton":
        penalty, _, norms = _grad_penalty_triton(g, kind, weight, center, inv_scale)
        return penalty, norms
    return _grad_penalty(g, kind, weight, center, inv_scale)


def interpolate(real: torch.Tensor, other: torch.Tensor, alpha: torch.Tensor, perturb: bool, c: float,
                backend: str) -> torch.Tensor:
    """x̂ from the kernel of `backend` ("cpu", "cuda" or "triton"), unchecked."""
    if backend == "triton":
        return _interpolate_triton(real, other, alpha, perturb, c)
    return _interpolate(real, other, alpha, perturb, c)


def dispatch_grad_penalty(g: torch.Tensor, kind: int, weight: float, center: float,
                          inv_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(penalty, norms) on the backend that `backend_for("penalties", g)` picks."""
    backend = backends.backend_for(FAMILY, g)
    if backend == "reference":
        return _reference.penalty_tail(g, kind, weight, center, inv_scale)
    return grad_penalty(g, kind, float(weight), float(center), float(inv_scale), backend)


def dispatch_interpolate(real: torch.Tensor, other: torch.Tensor, alpha: torch.Tensor, perturb: bool,
                         c: float) -> torch.Tensor:
    """x̂ on the backend that `backend_for("penalties", real)` picks."""
    backend = backends.backend_for(FAMILY, real)
    if backend == "reference":
        return _reference.interpolate(real, other, alpha, perturb, c)
    return interpolate(real, other, alpha, perturb, float(c), backend)
