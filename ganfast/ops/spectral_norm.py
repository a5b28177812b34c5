"""Op boundary of spectral normalization: schemas, fake kernels, Triton impls, autograd, dispatch.

ganfast::spectral_norm_fused(W3, u, v, n_iter, eps) -> (out, u', v', sigma)
    W3 = weight.reshape(outer, h, inner) (see ganfast/reference/spectral_norm.py); n_iter power
    iterations (0 = eval: no update), sigma = ||M^T u'||^2 / max(||M^T u'||, eps), which equals
    u'^T M v' exactly when v' = normalize(M^T u') (so the third matvec disappears), out = W / max(sigma, eps).
    u', v', sigma in fp32 (fp64 for fp64 weights). Differentiable in W only.
ganfast::spectral_norm_backward(grad, W3, u, v, sigma, eps) -> dW
    dW = (G - <G, W/sigma> u v^T) / sigma, without forming u v^T.
The *_triton ops have the same schemas. C++ (csrc/cpu, csrc/cuda) registers the CPU/CUDA kernels.
"""
from __future__ import annotations

import torch

from ..reference.spectral_norm import opmath_dtype
from ._library import LIBRARY

_FWD = "(Tensor weight, Tensor u, Tensor v, int n_iter, float eps) -> (Tensor out, Tensor u_out, Tensor v_out, Tensor sigma)"
_BWD = "(Tensor grad, Tensor weight, Tensor u, Tensor v, Tensor sigma, float eps) -> Tensor"


def _fake_fwd(weight, u, v, n_iter, eps):
    dt = opmath_dtype(weight.dtype)
    return (torch.empty_like(weight, memory_format=torch.contiguous_format), weight.new_empty(u.shape, dtype=dt),
            weight.new_empty(v.shape, dtype=dt), weight.new_empty((), dtype=dt))


def _fake_bwd(grad, weight, u, v, sigma, eps):
    return torch.empty_like(weight, memory_format=torch.contiguous_format)


def _triton_fwd(weight, u, v, n_iter, eps):
    from ..kernels.triton.spectral_norm import spectral_norm_fused

    return spectral_norm_fused(weight, u, v, n_iter, eps)


def _triton_bwd(grad, weight, u, v, sigma, eps):
    from ..kernels.triton.spectral_norm import spectral_norm_backward

    return spectral_norm_backward(grad, weight, u, v, sigma, eps)


def _setup_context(ctx, inputs, output):
    weight, _, _, _, eps = inputs
    _, u_out, v_out, sigma = output
    ctx.save_for_backward(weight, u_out, v_out, sigma)
    ctx.eps = eps
    ctx.mark_non_differentiable(u_out, v_out, sigma)


def _make_backward(bwd_op):
    def backward(ctx, grad_out, _gu, _gv, _gs):
        weight, u, v, sigma = ctx.saved_tensors
        grad_w = bwd_op(grad_out, weight, u, v, sigma, ctx.eps) if ctx.needs_input_grad[0] else None
        return grad_w, None, None, None, None
    return backward


for _suffix in ("", "_triton"):
    LIBRARY.define(f"spectral_norm_fused{_suffix}{_FWD}")
    LIBRARY.define(f"spectral_norm_backward{_suffix}{_BWD}")
    torch.library.register_fake(f"ganfast::spectral_norm_fused{_suffix}", _fake_fwd, lib=LIBRARY)
    torch.library.register_fake(f"ganfast::spectral_norm_backward{_suffix}", _fake_bwd, lib=LIBRARY)
for _device in ("CPU", "CUDA"):  # CPU: Triton under TRITON_INTERPRET=1
    LIBRARY.impl("spectral_norm_fused_triton", _triton_fwd, _device)
    LIBRARY.impl("spectral_norm_backward_triton", _triton_bwd, _device)

_fwd = torch.ops.ganfast.spectral_norm_fused.default
_bwd = torch.ops.ganfast.spectral_norm_backward.default
_fwd_triton = torch.ops.ganfast.spectral_norm_fused_triton.default
_bwd_triton = torch.ops.ganfast.spectral_norm_backward_triton.default
torch.library.register_autograd("ganfast::spectral_norm_fused", _make_backward(_bwd), setup_context=_setup_context,
                                lib=LIBRARY)
torch.library.register_autograd("ganfast::spectral_norm_fused_triton", _make_backward(_bwd_triton),
                                setup_context=_setup_context, lib=LIBRARY)


def spectral_norm(w3: torch.Tensor, u: torch.Tensor, v: torch.Tensor, n_iter: int, eps: float, backend: str):
    """(W / sigma, u', v', sigma) from the fused kernel of `backend` ("cpu", "cuda" or "triton")."""
    op = _fwd_triton if backend == "triton" else _fwd
    return op(w3, u, v, n_iter, eps)
