"""The fused penalty ops of every backend against the reference: odd sizes, non-contiguous inputs,
every dtype by the 2x rule, gradients with a random upstream; opcheck; the Triton kernels under the
interpreter (tiny shapes)."""
import pytest
import torch

from ganfast import backends
from ganfast.ops import penalties as ops
from ganfast.reference import penalties as ref
from ganfast.validate import FLOOR, relative_error

# backend -> the device its tensors live on (CPU for triton under TRITON_INTERPRET=1; CUDA where a GPU is)
DEVICE = {b: torch.device(backends.status(b).device_types[0]) for b in ("cpu", "cuda", "triton")
          if backends.status(b).available}
BACKENDS = list(DEVICE)
ALL = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
DTYPES = {"cpu": ALL, "cuda": ALL,  # the interpreter has no bf16 arithmetic
          "triton": (torch.float32, torch.float16, torch.bfloat16) if DEVICE.get("triton", torch.device("cpu")).type == "cuda"
          else (torch.float32, torch.float16)}
SHAPES = {"cpu": [(1, 1), (7, 3, 5), (123, 7), (3, 2, 33, 33)], "cuda": [(1, 1), (7, 3, 5), (123, 7), (3, 2, 33, 33)],
          "triton": [(1, 1), (7, 3, 5), (5, 1500)]}
KINDS = [(0, 10.0, 1.0), (1, 10.0, 0.8), (2, 5.0, 0.0)]


def draw(shape, dtype, seed, noncontig=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 0.4
    if noncontig:  # same values, transposed storage
        x = x.transpose(0, -1).contiguous().transpose(0, -1) if x.dim() > 1 else x
    return x.to(dtype)


def cases(backend):
    return [(backend, dtype, shape) for dtype in DTYPES[backend] for shape in SHAPES[backend]]


def _tail(g, kind, w, c, inv_scale, backend):
    x = g.detach().requires_grad_()
    if backend == "reference":
        p, n = ref.penalty_tail(x, kind, w, c, inv_scale)
    else:
        p, n = ops.grad_penalty(x, kind, w, c, inv_scale, backend)
    up = 1.3  # upstream gradient
    (p * up).backward()
    return {"penalty": p, "norms": n, "grad": x.grad}


def check(run, dtype):
    exact = run(torch.float64, "reference")
    low = exact if dtype == torch.float64 else run(dtype, "reference")
    return exact, low


@pytest.mark.parametrize("backend,dtype,shape", [c for b in BACKENDS for c in cases(b)])
@pytest.mark.parametrize("kind,w,c", KINDS)
def test_grad_penalty_vs_reference(backend, dtype, shape, kind, w, c):
    for seed, noncontig, inv_scale in ((0, False, 1.0), (1, True, 0.25)):
        g64 = draw(shape, torch.float64, seed, noncontig)

        def run(dt, be):
            return _tail(g64.to(dt), kind, w, c, inv_scale, be)

        exact, low = check(run, dtype)
        g_in = draw(shape, dtype, seed, noncontig).to(DEVICE[backend])
        if noncontig and min(g_in.shape) > 1:
            assert not g_in.is_contiguous()
        actual = _tail(g_in, kind, w, c, inv_scale, backend)
        assert actual["penalty"].dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        assert actual["grad"].dtype == dtype and actual["grad"].shape == g_in.shape
        for name in exact:
            assert torch.isfinite(actual[name]).all(), name  # every element written (empty_like is garbage)
            err = relative_error(actual[name], exact[name])
            tol = 2 * relative_error(low[name], exact[name]) + FLOOR[dtype]
            assert err <= tol, (name, err, tol)


def interpolate_with_grads(real, other, alpha, perturb, backend):
    """x̂ of `backend` and the gradients of a random projection of it w.r.t. real, other and alpha."""
    real, other, alpha = (t.detach().requires_grad_() for t in (real, other, alpha))
    if backend == "reference":
        x = ref.interpolate(real, other, alpha, perturb, 0.5)
    else:
        x = ops.interpolate(real, other, alpha, perturb, 0.5, backend)
    up = torch.randn(x.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64).to(x.device, x.dtype)
    (x * up).sum().backward()
    return {"x": x, "d_real": real.grad, "d_other": other.grad, "d_alpha": alpha.grad}


@pytest.mark.parametrize("backend,dtype,shape", [c for b in BACKENDS for c in cases(b) if c[2] != (1, 1)])
@pytest.mark.parametrize("perturb", [False, True])
def test_interpolate_vs_reference(backend, dtype, shape, perturb):
    real64 = draw(shape, torch.float64, 3, noncontig=True)
    other64 = draw(shape, torch.float64, 4).abs()
    alpha64 = torch.rand(shape[0], generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def run(dt, be):
        return interpolate_with_grads(real64.to(dt), other64.to(dt), alpha64.to(dt), perturb, be)

    exact, low = check(run, dtype)
    actual = interpolate_with_grads(real64.to(DEVICE[backend], dtype), other64.to(DEVICE[backend], dtype),
                     alpha64.to(DEVICE[backend], dtype), perturb, backend)
    for name in exact:
        assert torch.isfinite(actual[name]).all(), name
        err = relative_error(actual[name], exact[name])
        tol = 2 * relative_error(low[name], exact[name]) + FLOOR[dtype]
        assert err <= tol, (name, err, tol)


@pytest.mark.skipif("triton" not in BACKENDS, reason="triton is not available on CPU tensors here")
def test_triton_rejects_fp64():
    with pytest.raises(TypeError, match="float64"):
        ops.grad_penalty(torch.ones(2, 3, dtype=torch.float64, device=DEVICE["triton"]), 0, 1.0, 1.0, 1.0, "triton")
