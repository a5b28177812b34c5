"""Gradient penalties on the fastest backend that takes the data (device, dtype; ganfast.backends).

    wgan_gp(D, real, fake, weight=10.0, center=1.0, one_sided=False, alpha=None)
    r1(D, real, gamma=10.0)            r1_from_logits(real_logits, real, gamma=10.0)
    r2(D, fake, gamma=10.0)            r2_from_logits(fake_logits, fake, gamma=10.0)
    dragan(D, real, weight=10.0, c=0.5, alpha=None, noise=None)
    LazyRegularizer(interval=16)

Each returns a scalar penalty (fp32; fp64 for fp64 data) whose gradient reaches D's parameters; with
`return_grads=True` it returns (penalty, g), g = D's input gradient (detached: a saliency map of what
D looks at). g = ∇ₓ Σ D(x): the double backward through D is PyTorch's (create_graph=True); the tail
— per-sample norms, the penalty and its gradient w.r.t. g — is one fused op, and so is the
interpolation x̂ = α·real + (1 − α)·fake. Every function takes `scaler=` (a GradScaler or a
float scale) for mixed precision: following PyTorch's AMP recipe, g is the gradient of the *scaled*
output sum and is unscaled inside the fused op, in fp32, before the norm.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable

import torch

from .ops import penalties as _ops

__all__ = ["wgan_gp", "r1", "r2", "dragan", "r1_from_logits", "r2_from_logits", "LazyRegularizer"]


# --- checks -------------------------------------------------------------------------------------

def check_weight(value, name: str) -> None:
    """A penalty's weight (λ, γ): a finite real number >= 0. A negative one would reward D for steep
    gradients instead of penalizing them."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _check_data(x, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be floating point, got {x.dtype} (convert images with .float())")
    if x.dim() < 1:
        raise ValueError(f"{name} needs a batch dimension, got a 0-dim tensor")
    if x.shape[0] == 0 or x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}): the penalty of an empty batch is undefined")


def _check_same(a, b, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.device != b.device:
        raise ValueError(f"{name_a} is on {a.device} but {name_b} is on {b.device}")
    if a.dtype != b.dtype:
        raise TypeError(f"{name_a} is {a.dtype} but {name_b} is {b.dtype}: pass both in one dtype (under autocast, "
                        f"G's output is in autocast's dtype: {name_b}.to({name_a}.dtype))")


def _alpha(alpha, real: torch.Tensor) -> torch.Tensor:
    b = real.shape[0]
    if alpha is None:  # one α per sample, U[0, 1)
        return torch.rand(b, device=real.device, dtype=torch.float64 if real.dtype == torch.float64 else torch.float32)
    if not isinstance(alpha, torch.Tensor):
        raise TypeError(f"alpha must be a tensor of shape ({b},), got {type(alpha).__name__}")
    if alpha.shape != (b,):
        raise ValueError(f"alpha must have shape (B,) = ({b},) (one α per sample), got {tuple(alpha.shape)}")
    if not alpha.dtype.is_floating_point:
        raise TypeError(f"alpha must be floating point, got {alpha.dtype}")
    if alpha.device != real.device:
        raise ValueError(f"alpha is on {alpha.device} but real is on {real.device}")
    return alpha.detach()


def _scale(scaler) -> float | None:
    """The loss scale of a GradScaler-like object (anything with get_scale()) or a number."""
    if scaler is None:
        return None
    s = float(scaler.get_scale()) if hasattr(scaler, "get_scale") else float(scaler)
    if not s > 0 or s == float("inf"):
        raise ValueError(f"the loss scale must be a finite positive number, got {s}")
    return s


# --- the pieces ---------------------------------------------------------------------------------

def _input_grad(out, x: torch.Tensor, scale: float | None, what: str) -> torch.Tensor:
    """g = ∇ₓ Σ out (of scale·Σ out under AMP), kept differentiable w.r.t. D's parameters."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{what} must be a tensor, got {type(out).__name__}")
    if out.dim() == 0 or out.shape[0] != x.shape[0]:
        raise ValueError(f"{what} must have the batch dimension first: shape {tuple(out.shape)} for a batch of "
                         f"{x.shape[0]}")
    if not out.requires_grad:
        raise ValueError(f"{what} does not require grad: it was computed without autograd (torch.no_grad?) or "
                         f"does not depend on its input")
    total = out.sum(dtype=torch.float64 if out.dtype == torch.float64 else torch.float32)
    if scale is not None:
        total = total * scale
    (g,) = torch.autograd.grad(total, x, create_graph=True, allow_unused=True)
    if g is None:
        raise ValueError(f"{what} does not depend on its input (autograd.grad returned None): a gradient penalty "
                         f"needs D's output to be a function of x")
    return g


def _tail(g: torch.Tensor, kind: int, weight: float, center: float, inv_scale: float):
    """(penalty, per-sample norms) of g: the fused tail (ganfast.ops.penalties)."""
    return _ops.dispatch_grad_penalty(g, kind, weight, center, inv_scale)


def _interpolate(real, other, alpha, perturb: bool, c: float) -> torch.Tensor:
    with torch.no_grad():  # x̂ is a new leaf: the penalty differentiates D, not the data
        x = _ops.dispatch_interpolate(real, other, alpha, perturb, c)
    return x.requires_grad_(True)


def _finish(out, x, kind, weight, center, scaler, return_grads, what):
    scale = _scale(scaler)
    inv_scale = 1.0 if scale is None else 1.0 / scale
    g = _input_grad(out, x, scale, what)
    penalty, _norms = _tail(g, kind, weight, center, inv_scale)
    if not return_grads:
        return penalty
    g = g.detach()
    return penalty, (g if scale is None else g * inv_scale)


def _call_d(D: Callable, x: torch.Tensor):
    if not callable(D):
        raise TypeError(f"D must be callable (a module), got {type(D).__name__}")
    return D(x)


# --- public API ---------------------------------------------------------------------------------

def wgan_gp(D: Callable, real: torch.Tensor, fake: torch.Tensor, weight: float = 10.0, center: float = 1.0,
            one_sided: bool = False, alpha: torch.Tensor | None = None, return_grads: bool = False, scaler=None):
    """weight · mean_i (n_i − center)² (relu(n_i − center)² when one_sided), n_i = ‖∇ D(x̂)_i‖ at
    x̂ = α·real + (1 − α)·fake, one α per sample (α ~ U[0, 1) unless given, shape (B,))."""
    check_weight(weight, "weight")
    _check_data(real, "real")
    _check_data(fake, "fake")
    _check_same(real, fake, "real", "fake")
    a = _alpha(alpha, real)
    x = _interpolate(real.detach(), fake.detach(), a, False, 0.0)
    return _finish(_call_d(D, x), x, _ops.ONE_SIDED if one_sided else _ops.TWO_SIDED, weight, center, scaler,
                   return_grads, "D(x̂)")


def dragan(D: Callable, real: torch.Tensor, weight: float = 10.0, c: float = 0.5, alpha: torch.Tensor | None = None,
           noise: torch.Tensor | None = None, return_grads: bool = False, scaler=None):
    """weight · mean_i (n_i − 1)² at x̂ = α·real + (1 − α)·(real + c·std(real)·u), u ~ U[0, 1)
    elementwise (or `noise`), std over the whole batch, one α per sample."""
    check_weight(weight, "weight")
    check_weight(c, "c")
    _check_data(real, "real")
    if real.numel() < 2:
        raise ValueError("dragan needs at least two elements in real (the std of one element is undefined)")
    if noise is None:
        noise = torch.rand_like(real)
    else:
        _check_data(noise, "noise")
        _check_same(real, noise, "real", "noise")
    a = _alpha(alpha, real)
    x = _interpolate(real.detach(), noise.detach(), a, True, c)
    return _finish(_call_d(D, x), x, _ops.TWO_SIDED, weight, 1.0, scaler, return_grads, "D(x̂)")


def r1(D: Callable, real: torch.Tensor, gamma: float = 10.0, return_grads: bool = False, scaler=None):
    """(γ / 2) · mean_i ‖∇ₓ D(real)_i‖²."""
    check_weight(gamma, "gamma")
    _check_data(real, "real")
    x = real.detach().requires_grad_(True)
    return _finish(_call_d(D, x), x, _ops.SQUARED, gamma / 2, 0.0, scaler, return_grads, "D(real)")


def r2(D: Callable, fake: torch.Tensor, gamma: float = 10.0, return_grads: bool = False, scaler=None):
    """(γ / 2) · mean_i ‖∇ₓ D(fake)_i‖², on generated data detached from G."""
    check_weight(gamma, "gamma")
    _check_data(fake, "fake")
    x = fake.detach().requires_grad_(True)
    return _finish(_call_d(D, x), x, _ops.SQUARED, gamma / 2, 0.0, scaler, return_grads, "D(fake)")


def _from_logits(logits, x, gamma, return_grads, scaler, name):
    check_weight(gamma, "gamma")
    _check_data(x, name)
    if not x.requires_grad:
        raise ValueError(f"{name} does not require grad: call `{name} = {name}.detach().requires_grad_()` before "
                         f"the forward whose logits you pass")
    return _finish(logits, x, _ops.SQUARED, gamma / 2, 0.0, scaler, return_grads, f"{name}_logits")


def r1_from_logits(real_logits: torch.Tensor, real: torch.Tensor, gamma: float = 10.0, return_grads: bool = False,
                   scaler=None):
    """R1 from the logits of a forward the caller already made on `real.requires_grad_()`, so that one
    D(real) serves both the loss and the penalty. The graph of real_logits is kept for the loss."""
    return _from_logits(real_logits, real, gamma, return_grads, scaler, "real")


def r2_from_logits(fake_logits: torch.Tensor, fake: torch.Tensor, gamma: float = 10.0, return_grads: bool = False,
                   scaler=None):
    """R2 from the logits of a forward on `fake.detach().requires_grad_()` (see r1_from_logits)."""
    return _from_logits(fake_logits, fake, gamma, return_grads, scaler, "fake")


# --- lazy regularization ------------------------------------------------------------------------

class LazyRegularizer:
    """StyleGAN2's lazy regularization: apply the penalty every `interval` steps, scaled by `interval`,
    and correct Adam for it (lr × c, betas ** c, c = interval / (interval + 1)).

        lazy = LazyRegularizer(16)
        opt = torch.optim.Adam(D.parameters(), lr=lazy.lr(2e-3), betas=lazy.betas((0.0, 0.99)))
        # or: lazy.adjust_optimizer(opt) once
        for step in ...:
            loss = d_loss(...)
            if lazy.due(step):
                loss = loss + lazy.scale(r1(D, real))
    """

    def __init__(self, interval: int = 16):
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f"interval must be a positive integer, got {interval!r}")
        self.interval = interval

    @property
    def c(self) -> float:
        """Adam's correction ratio interval / (interval + 1) (1 when interval is 1: no lazy steps)."""
        return 1.0 if self.interval == 1 else self.interval / (self.interval + 1)

    def due(self, step: int) -> bool:
        """Whether the penalty is applied at `step` (steps 0, interval, 2·interval, ...)."""
        return step % self.interval == 0

    def scale(self, penalty: torch.Tensor) -> torch.Tensor:
        """The penalty scaled by the interval (it stands for `interval` steps)."""
        return penalty * self.interval

    def __call__(self, step: int, penalty_fn: Callable[[], torch.Tensor]) -> torch.Tensor | None:
        """interval · penalty_fn() on due steps; None (and penalty_fn not called) otherwise."""
        return self.scale(penalty_fn()) if self.due(step) else None

    def lr(self, lr: float) -> float:
        return lr * self.c

    def betas(self, betas: tuple[float, float]) -> tuple[float, float]:
        return tuple(b ** self.c for b in betas)

    def adjust_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Apply the correction to every param group (lr, and betas where present) once."""
        if getattr(optimizer, "_ganfast_lazy_adjusted", False):
            raise RuntimeError("this optimizer was already adjusted for lazy regularization")
        for group in optimizer.param_groups:
            group["lr"] = self.lr(group["lr"])
            if "betas" in group:
                group["betas"] = self.betas(group["betas"])
        optimizer._ganfast_lazy_adjusted = True
        return optimizer
