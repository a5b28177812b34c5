"""Every backend's fused ops against the reference: values, u/v updates, sigma, gradients; opcheck; compile."""
import pytest
import torch
from torch import nn

import ganfast
from ganfast.ops import spectral_norm as ops
from ganfast.reference import spectral_norm as reference
from ganfast.validate import compare

from sn_helpers import KERNEL_BACKENDS, need

# (weight shape, dim): Linear-like, ConvTranspose-like (dim 1), a single row/column, a middle dim
SHAPES = [((7, 13), 0), ((3, 5, 4), 1), ((1, 9), 0), ((123, 1), 0), ((6, 3, 2, 3), 0), ((2, 3, 5, 1), 2)]


def draw(shape, dtype, seed, noncontig=False, dim=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g, dtype=torch.float64)
    if noncontig:  # same values, strided storage
        w = w.transpose(0, -1).contiguous().transpose(0, -1)
    outer, h, inner = reference.split_dims(shape, dim)
    u = torch.nn.functional.normalize(torch.randn(h, generator=g, dtype=torch.float64), dim=0)
    v = torch.nn.functional.normalize(torch.randn(outer * inner, generator=g, dtype=torch.float64), dim=0)
    up = torch.randn(shape, generator=g, dtype=torch.float64)
    acc = reference.opmath_dtype(dtype)
    return w.to(dtype).requires_grad_(), u.to(acc), v.to(acc), up.to(dtype)


def run(fn, shape, dtype, seed, n_iter, noncontig=False, dim=0):
    w, u, v, up = draw(shape, dtype, seed, noncontig, dim)
    out, u2, v2, s = fn(w, u, v, dim, n_iter, 1e-12)
    (out * up).sum().backward()
    return {"out": out, "u": u2, "v": v2, "sigma": s, "grad": w.grad}


def kernel(backend):
    return lambda w, u, v, dim, n, eps: ops.spectral_norm(w, u, v, dim, n, eps, backend)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n_iter", [0, 1, 2])
def test_fp32_matches_reference(backend, shape, n_iter):
    need(backend)
    shape, dim = shape
    got = run(kernel(backend), shape, torch.float32, 1, n_iter, noncontig=True, dim=dim)
    assert got["out"].shape == shape
    exp = run(reference.spectral_norm, shape, torch.float64, 1, n_iter, dim=dim)
    for k in exp:
        assert got[k].dtype == (torch.float32), k
        torch.testing.assert_close(got[k].double(), exp[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_within_twice_reference_error(backend, dtype):
    need(backend)
    shape = (3, 17, 5)
    exact = run(reference.spectral_norm, shape, torch.float64, 2, 1, dim=1)
    low = run(reference.spectral_norm, shape, dtype, 2, 1, dim=1)
    got = run(kernel(backend), shape, dtype, 2, 1, dim=1)
    assert got["out"].dtype == dtype and got["u"].dtype == torch.float32 and got["sigma"].dtype == torch.float32
    err, tol, name = compare(got, exact, low, dtype)
    assert err <= tol, (name, err, tol)


def test_cpu_fp64():
    need("cpu")
    got = run(kernel("cpu"), (2, 9, 5), torch.float64, 3, 2, dim=1)
    exp = run(reference.spectral_norm, (2, 9, 5), torch.float64, 3, 2, dim=1)
    for k in exp:
        assert got[k].dtype == torch.float64
        torch.testing.assert_close(got[k], exp[k], rtol=1e-12, atol=1e-13, msg=k)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_every_output_written(backend):
    need(backend)
    w, u, v, _ = draw((2, 7, 5), torch.float32, 4, dim=1)
    torch.manual_seed(0)
    for _ in range(2):  # whatever empty_like returns, every element is overwritten with finite values
        out, u2, v2, s = ops.spectral_norm(w.detach(), u, v, 1, 1, 1e-12, backend)
        g = ops._bwd_triton if backend == "triton" else ops._bwd
        gw = g(torch.randn_like(w), w.detach(), u2, v2, s, 1, 1e-12)
        for t in (out, u2, v2, s, gw):
            assert torch.isfinite(t).all()


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_opcheck(backend):
    need(backend)
    w, u, v, up = draw((2, 5, 3), torch.float32, 5, dim=1)
    fwd = ops._fwd_triton if backend == "triton" else ops._fwd
    bwd = ops._bwd_triton if backend == "triton" else ops._bwd
    for n_iter in (0, 1):
        torch.library.opcheck(fwd, (w, u, v, 1, n_iter, 1e-12))
    out, u2, v2, s = fwd(w.detach(), u, v, 1, 1, 1e-12)
    torch.library.opcheck(bwd, (up, w.detach(), u2, v2, s, 1, 1e-12))


def test_compile_fullgraph_model():
    need("cpu")
    torch.manual_seed(0)
    model = ganfast.nn.apply_spectral_norm(nn.Sequential(nn.Linear(6, 5), nn.LeakyReLU(0.2), nn.Linear(5, 1)))
    twin = ganfast.nn.apply_spectral_norm(nn.Sequential(nn.Linear(6, 5), nn.LeakyReLU(0.2), nn.Linear(5, 1)))
    twin.load_state_dict(model.state_dict())
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(4, 6)
    for _ in range(2):
        compiled(x).sum().backward()
        twin(x).sum().backward()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
    for (ka, a), (kb, b) in zip(model.state_dict().items(), twin.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=ka)  # u, v updated through the compiled graph
