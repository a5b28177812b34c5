"""Op boundary of spectral normalization: schemas, fake kernels, Triton impls, autograd, and the one
place where spectral norm picks its backend (`spectral_norm_update`, by the rule of ganfast.backends).

ganfast::spectral_norm_fused(W, u, v, dim, n_iter, eps) -> (out, u', v', sigma)
    W of any shape, read in place as M (h x w) with `dim` first (ganfast/reference/spectral_norm.py); n_iter power
    iterations (0 = eval: no update), sigma = ||M^T u'||^2 / max(||M^T u'||, eps), which equals
    u'^T M v' exactly when v' = normalize(M^T u') (so the third matvec disappears), out = W / max(sigma, eps).
    u', v', sigma in fp32 (fp64 for fp64 weights). Differentiable in W only.
ganfast::spectral_norm_backward(grad, W, u, v, sigma, dim, eps) -> dW
    dW = (G - <G, W/sigma> u v^T) / sigma, without forming u v^T.
The *_triton ops have the same schemas. C++ (csrc/cpu, csrc/cuda) registers the CPU/CUDA kernels.
"""
from __future__ import annotations

import torch

from .. import backends
from ..reference import spectral_norm as _reference
from ._library import LIBRARY, define_forward_backward

FAMILY = "spectral_norm"

_FWD = "(Tensor weight, Tensor u, Tensor v, int dim, int n_iter, float eps) -> (Tensor out, Tensor u_out, Tensor v_out, Tensor sigma)"
_BWD = "(Tensor grad, Tensor weight, Tensor u, Tensor v, Tensor sigma, int dim, float eps) -> Tensor"


def _fake_fwd(weight, u, v, dim, n_iter, eps):
    dt = _reference.opmath_dtype(weight.dtype)
    return (torch.empty_like(weight, memory_format=torch.contiguous_format), weight.new_empty(u.shape, dtype=dt),
            weight.new_empty(v.shape, dtype=dt), weight.new_empty((), dtype=dt))


def _fake_bwd(grad, weight, u, v, sigma, dim, eps):
    return torch.empty_like(weight, memory_format=torch.contiguous_format)


def _triton_fwd(weight, u, v, dim, n_iter, eps):
    from ..kernels.triton.spectral_norm import spectral_norm_fused

    return spectral_norm_fused(weight, u, v, dim, n_iter, eps)


def _triton_bwd(grad, weight, u, v, sigma, dim, eps):
    from ..kernels.triton.spectral_norm import spectral_norm_backward

    return spectral_norm_backward(grad, weight, u, v, sigma, dim, eps)


def _setup_context(ctx, inputs, output):
    weight, _, _, dim, _, eps = inputs
    _, u_out, v_out, sigma = output
    ctx.save_for_backward(weight, u_out, v_out, sigma)
    ctx.dim, ctx.eps = dim, eps
    ctx.set_materialize_grads(False)  # u', v', sigma get no gradient: no zero tensors for them
    ctx.mark_non_differentiable(u_out, v_out, sigma)


def _make_backward(bwd_op):
    def backward(ctx, grad_out, _gu, _gv, _gs):
        weight, u, v, sigma = ctx.saved_tensors
        if grad_out is None or not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        return bwd_op(grad_out, weight, u, v, sigma, ctx.dim, ctx.eps), None, None, None, None, None
    return backward


define_forward_backward("spectral_norm_fused", _FWD, _fake_fwd, "spectral_norm_backward", _BWD, _fake_bwd, _triton_fwd,
                        _triton_bwd)

_fwd = torch.ops.ganfast.spectral_norm_fused.default
_bwd = torch.ops.ganfast.spectral_norm_backward.default
_fwd_triton = torch.ops.ganfast.spectral_norm_fused_triton.default
_bwd_triton = torch.ops.ganfast.spectral_norm_backward_triton.default
# (ganfast::spectral_norm_fused's autograd is C++: csrc/spectral_norm.cpp)
torch.library.register_autograd("ganfast::spectral_norm_fused_triton", _make_backward(_bwd_triton),
                                setup_context=_setup_context, lib=LIBRARY)


def spectral_norm(weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, dim: int, n_iter: int, eps: float,
                  backend: str):
    """(W / sigma, u', v', sigma) from the fused kernel of `backend` ("cpu", "cuda" or "triton"), unchecked."""
    op = _fwd_triton if backend == "triton" else _fwd
    return op(weight, u, v, dim, n_iter, eps)


def spectral_norm_update(weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor, dim: int,
                         n_iter: int, eps: float) -> torch.Tensor:
    """W / sigma on the backend that `backend_for("spectral_norm", weight)` picks, with u', v' (when
    n_iter > 0) and sigma copied into u, v and sigma (a layer's buffers), unchecked: a normalized
    module's update outside sn_step. On the CPU and CUDA, ganfast._C.spectral_norm_eager does both in
    one call for plain eager tensors (ganfast/ops/_library.py): a Linear 128 -> 128's weight access +
    backward took 137 us against 158 us through torch.ops and the Python copy (1.10-1.16x from
    128 x 2 to 256 x 2304; 2-core Zen 2, medians of 21 alternating rounds)."""
    backend = backends.backend_for(FAMILY, weight)
    eager = _eager_entry("spectral_norm_eager", backend)
    if eager is not None:
        out = eager(weight, u, v, sigma, dim, n_iter, eps)
        if out is not None:
            return out
    if backend == "reference":
        out, new_u, new_v, new_sigma = _reference.spectral_norm(weight, u, v, dim, n_iter, eps)
    else:
        out, new_u, new_v, new_sigma = spectral_norm(weight, u, v, dim, n_iter, eps, backend)
    _copy_into_buffers([u], [v], [sigma], [new_u], [new_v], [new_sigma], n_iter)
    return out


def _eager_entry(name: str, backend: str):
    """ganfast._C's eager entry `name` where it can serve (the CPU and CUDA ops, not under
    torch.compile), else None."""
    if backend not in ("cpu", "cuda") or torch.compiler.is_compiling():
        return None
    return backends.extension_function(name)


def _copy_into_buffers(us, vs, sigmas, new_us, new_vs, new_sigmas, n_iter: int) -> None:
    """u', v' (when n_iter > 0) and sigma into the layers' buffers, in one foreach copy (one launch on
    a GPU): what the eager entries do in C++."""
    dst, src = list(sigmas), list(new_sigmas)
    if n_iter:
        dst, src = list(us) + list(vs) + dst, list(new_us) + list(new_vs) + src
    with torch.no_grad():
        torch._foreach_copy_(dst, src)


# --- multi-tensor: all normalized layers of a model in one call -----------------------------------
# ganfast::spectral_norm_multi(weights, u, v, dims, n_iter, eps) -> (outs, u's, v's, sigmas) and
# ganfast::spectral_norm_backward_multi(grads, weights, u's, v's, sigmas, dims, eps) -> dWs:
# the single-layer math for each layer (used by ganfast.nn.sn_step(model, multi_tensor=True)). CPU:
# one parallel loop per phase for all layers, the threads sharing it by work; CUDA and Triton
# (*_multi_triton): one launch per phase for all layers. The autograd of the CPU/CUDA op is C++, as the
# single-layer op's; the Triton op's is Python, as every Triton op's.
_MULTI = "(Tensor[] weights, Tensor[] u, Tensor[] v, int[] dims, int n_iter, float eps) " \
         "-> (Tensor[] out, Tensor[] u_out, Tensor[] v_out, Tensor[] sigma)"
_BWD_MULTI = "(Tensor[] grads, Tensor[] weights, Tensor[] u, Tensor[] v, Tensor[] sigma, int[] dims, float eps) " \
             "-> Tensor[]"
MULTI_BACKENDS = ("cpu", "cuda", "triton")


def _fake_multi(weights, us, vs, dims, n_iter, eps):
    outs = [_fake_fwd(w, u, v, d, n_iter, eps) for w, u, v, d in zip(weights, us, vs, dims)]
    return tuple([o[i] for o in outs] for i in range(4))


def _fake_bwd_multi(grads, weights, us, vs, sigmas, dims, eps):
    return [torch.empty_like(w, memory_format=torch.contiguous_format) for w in weights]


def _triton_multi(weights, us, vs, dims, n_iter, eps):
    from ..kernels.triton.spectral_norm import spectral_norm_multi

    return spectral_norm_multi(weights, us, vs, dims, n_iter, eps)


def _triton_bwd_multi(grads, weights, us, vs, sigmas, dims, eps):
    from ..kernels.triton.spectral_norm import spectral_norm_backward_multi

    return spectral_norm_backward_multi(grads, weights, us, vs, sigmas, dims, eps)


def _setup_multi(ctx, inputs, output):
    weights, _, _, dims, _, eps = inputs
    _, u_out, v_out, sigma = output
    ctx.n = len(weights)
    ctx.save_for_backward(*weights, *u_out, *v_out, *sigma)
    ctx.dims, ctx.eps = list(dims), eps
    ctx.set_materialize_grads(False)  # u', v', sigma get no gradient: no zero tensors for them
    ctx.mark_non_differentiable(*u_out, *v_out, *sigma)


def _make_backward_multi(bwd_multi_op):
    def backward(ctx, grad_outs, _gu, _gv, _gs):
        n, saved = ctx.n, ctx.saved_tensors
        weights, us, vs, sigmas = (list(saved[i * n:(i + 1) * n]) for i in range(4))
        # a layer unused in the step gets a zero upstream gradient
        grads = [torch.zeros_like(w) if g is None else g for g, w in zip(grad_outs, weights)]
        none = [None] * n
        return bwd_multi_op(grads, weights, us, vs, sigmas, ctx.dims, ctx.eps), none, none, None, None, None
    return backward


define_forward_backward("spectral_norm_multi", _MULTI, _fake_multi, "spectral_norm_backward_multi", _BWD_MULTI,
                        _fake_bwd_multi, _triton_multi, _triton_bwd_multi)
_multi = torch.ops.ganfast.spectral_norm_multi.default
_bwd_multi = torch.ops.ganfast.spectral_norm_backward_multi.default
_multi_triton = torch.ops.ganfast.spectral_norm_multi_triton.default
_bwd_multi_triton = torch.ops.ganfast.spectral_norm_backward_multi_triton.default
# (ganfast::spectral_norm_multi's autograd is C++ too: csrc/spectral_norm.cpp)
torch.library.register_autograd("ganfast::spectral_norm_multi_triton", _make_backward_multi(_bwd_multi_triton),
                                setup_context=_setup_multi, lib=LIBRARY)


def has_cuda_multi() -> bool:
    """Whether ganfast._C registers a CUDA kernel for the multi-tensor ops (extensions built before
    they had one do not)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("ganfast::spectral_norm_multi", "CUDA")


def spectral_norm_multi(weights, us, vs, dims, n_iter: int, eps: float, backend: str = "cpu"):
    """Lists (W / sigma, u', v', sigma) for every layer, from one call of the multi-tensor kernel of
    `backend` ("cpu", "cuda" or "triton"), unchecked."""
    op = _multi_triton if backend == "triton" else _multi
    return op(list(weights), list(us), list(vs), list(dims), n_iter, eps)


def spectral_norm_multi_update(weights: list, us: list, vs: list, sigmas: list, dims: list, n_iter: int, eps: float,
                               backend: str) -> list:
    """[W / sigma] of every layer from one call of the multi-tensor kernel of `backend`, with u', v'
    (when n_iter > 0) and sigma copied into us, vs and sigmas (the layers' buffers) in one foreach
    copy, unchecked: sn_step's update. On the CPU and CUDA, ganfast._C.spectral_norm_multi_eager does
    both in one call for plain eager tensors (ganfast/ops/_library.py): on the four layers of the
    MLP D of `ganfast bench step` (33K weights, with autograd) 57 us against 84 us through torch.ops
    and the Python copy (2-core Zen 2, medians of 21 alternating rounds)."""
    eager = _eager_entry("spectral_norm_multi_eager", backend)
    if eager is not None:
        outs = eager(weights, us, vs, sigmas, dims, n_iter, eps)
        if outs is not None:
            return outs
    outs, new_us, new_vs, new_sigmas = spectral_norm_multi(weights, us, vs, dims, n_iter, eps, backend)
    _copy_into_buffers(us, vs, sigmas, new_us, new_vs, new_sigmas, n_iter)
    return list(outs)
