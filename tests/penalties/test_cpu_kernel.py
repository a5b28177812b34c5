"""The vectorized CPU penalty kernels (grad_penalty_fused, gp_interpolate) on every capability copy
this machine runs: row lengths around every vector width, denormals, ±inf/NaN, non-contiguous
inputs, every dtype, a random upstream gradient, determinism over thread counts."""
import pytest
import torch

import ganfast
from ganfast.ops import penalties as ops
from ganfast.reference import penalties as ref
from ganfast.validate import FLOOR, relative_error

from ..cpu_paths import CAPABILITIES, cpu_capability
from .test_penalty_ops import interpolate_with_grads as interp

COLS = list(range(1, 18)) + [31, 33, 63, 65, 1025, 16385]
KINDS = [(0, 10.0, 1.0), (1, 10.0, 0.8), (2, 5.0, 0.0)]


def tail(g, kind, w, c, inv_scale, backend, upstream):
    x = g.detach().clone().requires_grad_()
    if backend == "reference":
        p, n = ref.penalty_tail(x, kind, w, c, inv_scale)
    else:
        p, n = ops.grad_penalty(x, kind, w, c, inv_scale, backend)
    (p * upstream).backward()
    return {"penalty": p, "norms": n, "grad": x.grad}


def assert_close_by_2x_rule(actual, exact, low, dtype):
    for name in exact:
        err = relative_error(actual[name], exact[name])
        tol = 2 * relative_error(low[name], exact[name]) + FLOOR[dtype]
        assert err <= tol, (name, err, tol)


@pytest.mark.parametrize("cols", COLS)
def test_grad_penalty_row_lengths(capability, cols):
    for rows in (1, 5):
        g64 = 0.3 * torch.randn(rows, cols, generator=torch.Generator().manual_seed(cols), dtype=torch.float64)
        for kind, w, c in KINDS:
            upstream = float(torch.empty(()).uniform_(0.5, 3.0))
            exact = tail(g64, kind, w, c, 0.5, "reference", upstream)
            actual = tail(g64.float(), kind, w, c, 0.5, "cpu", upstream)
            for name in exact:
                assert torch.isfinite(actual[name]).all(), name  # every element written
            assert_close_by_2x_rule(actual, exact, tail(g64.float(), kind, w, c, 0.5, "reference", upstream),
                                    torch.float32)


# Rows shorter than two vectors run in groups of 64 rows, with the row length a constant up to 8:
# several whole groups and a part of one (203 = 3·64 + 11), every kind and dtype, nonfinite rows.
@pytest.mark.parametrize("cols", range(1, 10))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_grad_penalty_many_short_rows(capability, cols, dtype):
    g64 = 0.3 * torch.randn(203, cols, generator=torch.Generator().manual_seed(200 + cols), dtype=torch.float64)
    for kind, w, c in KINDS:
        exact = tail(g64, kind, w, c, 0.5, "reference", 1.3)
        low = tail(g64.to(dtype), kind, w, c, 0.5, "reference", 1.3)
        actual = tail(g64.to(dtype), kind, w, c, 0.5, "cpu", 1.3)
        for name in exact:
            assert torch.isfinite(actual[name]).all(), name  # every element written
        assert_close_by_2x_rule(actual, exact, low, dtype)
    bad = g64.float().clone()
    bad[70, cols - 1], bad[200, 0] = float("nan"), float("inf")  # in the second group and in the last, partial one
    actual = tail(bad, 0, 10.0, 1.0, 0.5, "cpu", 1.0)
    finite = torch.ones(203, dtype=torch.bool)
    finite[[70, 200]] = False
    assert torch.equal(torch.isfinite(actual["norms"]), finite) and not torch.isfinite(actual["penalty"])
    exact = tail(bad.double(), 0, 10.0, 1.0, 0.5, "reference", 1.0)
    assert relative_error(actual["grad"][finite], exact["grad"][finite]) <= 1e-5
    assert relative_error(actual["norms"][finite], exact["norms"][finite]) <= 1e-6


# (rows, ...) shapes with rows of vector length (70 elements) and narrow ones (3: the scalar rows)
SHAPES = [(3, 2, 7, 5), (9, 3)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_grad_penalty_dtypes(capability, dtype, shape):
    g64 = 0.3 * torch.randn(shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for kind, w, c in KINDS:
        exact = tail(g64, kind, w, c, 1.0, "reference", 1.7)
        low = tail(g64.to(dtype), kind, w, c, 1.0, "reference", 1.7)
        assert_close_by_2x_rule(tail(g64.to(dtype), kind, w, c, 1.0, "cpu", 1.7), exact, low, dtype)


@pytest.mark.parametrize("middle", [6, 2], ids=["rows-of-18", "rows-of-6"])
def test_grad_penalty_noncontiguous(capability, middle):
    g64 = 0.3 * torch.randn(17, middle, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    g = g64.float().transpose(0, 2).contiguous().transpose(0, 2)
    assert not g.is_contiguous()
    for kind, w, c in KINDS:
        exact = tail(g64, kind, w, c, 1.0, "reference", 0.9)
        assert_close_by_2x_rule(tail(g, kind, w, c, 1.0, "cpu", 0.9), exact,
                                tail(g64.float(), kind, w, c, 1.0, "reference", 0.9), torch.float32)


@pytest.mark.parametrize("cols", [37, 5])
def test_grad_penalty_denormals(capability, cols):
    tiny = torch.finfo(torch.float32).tiny
    g = torch.randn(4, cols, generator=torch.Generator().manual_seed(4)) * tiny * 0.1
    g[1] = torch.randn(cols) * 0.2  # one ordinary row
    for kind, w, c in KINDS:
        exact = tail(g.double(), kind, w, c, 1.0, "reference", 1.0)
        actual = tail(g, kind, w, c, 1.0, "cpu", 1.0)
        for name in exact:
            assert relative_error(actual[name], exact[name]) <= 1e-5, name


@pytest.mark.parametrize("cols", [21, 5])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")], ids=["+inf", "-inf", "nan"])
def test_grad_penalty_nonfinite(capability, value, cols):
    g = torch.randn(3, cols, generator=torch.Generator().manual_seed(5))
    g[1, cols - 2] = value  # in the tail of row 1; rows 0 and 2 stay finite
    for kind, w, c in KINDS:
        actual = tail(g, kind, w, c, 1.0, "cpu", 1.0)
        exact = tail(g.double(), kind, w, c, 1.0, "reference", 1.0)
        assert torch.equal(torch.isfinite(actual["norms"]), torch.isfinite(exact["norms"]))
        assert torch.isfinite(actual["norms"][[0, 2]]).all() and not torch.isfinite(actual["penalty"])
        for r in (0, 2):  # the other rows' gradients are unaffected
            assert relative_error(actual["grad"][r], exact["grad"][r]) <= 1e-5


@pytest.mark.parametrize("cols", COLS)
@pytest.mark.parametrize("perturb", [False, True])
def test_interpolate_row_lengths(capability, cols, perturb):
    g = torch.Generator().manual_seed(cols)
    rows = 3
    real64 = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    other64 = torch.rand(rows, cols, generator=g, dtype=torch.float64)
    alpha64 = torch.rand(rows, generator=g, dtype=torch.float64)
    if perturb and rows * cols < 2:
        return
    exact = interp(real64, other64, alpha64, perturb, "reference")
    low = interp(real64.float(), other64.float(), alpha64.float(), perturb, "reference")
    actual = interp(real64.float(), other64.float(), alpha64.float(), perturb, "cpu")
    assert torch.isfinite(actual["x"]).all()  # every element written
    assert_close_by_2x_rule(actual, exact, low, torch.float32)


# Rows shorter than two vectors run in groups of 64 rows, code specialized per length up to 8: several
# whole groups and a part of one (203 = 3·64 + 11), in every dtype.
@pytest.mark.parametrize("cols", range(1, 10))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("perturb", [False, True])
def test_interpolate_many_short_rows(capability, cols, dtype, perturb):
    g = torch.Generator().manual_seed(100 + cols)
    rows = 203
    real64 = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    other64 = torch.rand(rows, cols, generator=g, dtype=torch.float64)
    alpha64 = torch.rand(rows, generator=g, dtype=torch.float64)
    exact = interp(real64, other64, alpha64, perturb, "reference")
    low = interp(real64.to(dtype), other64.to(dtype), alpha64.to(dtype), perturb, "reference")
    actual = interp(real64.to(dtype), other64.to(dtype), alpha64.to(dtype), perturb, "cpu")
    assert torch.isfinite(actual["x"]).all()  # every element written
    assert_close_by_2x_rule(actual, exact, low, dtype)


@pytest.mark.parametrize("width", [9, 2], ids=["rows-of-27", "rows-of-6"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("perturb", [False, True])
def test_interpolate_dtypes_noncontiguous(capability, dtype, perturb, width):
    g = torch.Generator().manual_seed(6)
    real64 = torch.randn(5, 3, width, generator=g, dtype=torch.float64).transpose(1, 2)
    other64 = torch.rand(5, width, 3, generator=g, dtype=torch.float64)
    alpha64 = torch.rand(5, generator=g, dtype=torch.float64)
    exact = interp(real64, other64, alpha64, perturb, "reference")
    low = interp(real64.to(dtype), other64.to(dtype), alpha64.to(dtype), perturb, "reference")
    actual = interp(real64.to(dtype), other64.to(dtype), alpha64.to(dtype), perturb, "cpu")
    assert_close_by_2x_rule(actual, exact, low, dtype)


@pytest.mark.parametrize("cols", [19, 5, 2])
@pytest.mark.parametrize("value", [float("inf"), float("nan")], ids=["inf", "nan"])
def test_interpolate_nonfinite(capability, value, cols):
    real = torch.randn(41, cols)
    other = torch.rand(41, cols)
    alpha = torch.rand(41, generator=torch.Generator().manual_seed(cols))
    other[1, cols - 2] = value  # in a vector of rows
    other[40, cols - 1] = value  # in the tail
    got = ops.interpolate(real, other, alpha, False, 0.5, "cpu")
    want = ref.interpolate(real, other, alpha, False, 0.5)
    assert relative_error(got, want) <= 1e-6


@pytest.mark.parametrize("shape", [(64, 3, 32, 32), (20000, 2)], ids=str)
def test_deterministic_over_thread_counts(capability, shape):
    g = torch.randn(shape, generator=torch.Generator().manual_seed(7))
    real, other = torch.randn(shape), torch.randn(shape)
    alpha = torch.rand(shape[0])
    threads = torch.get_num_threads()
    try:
        runs = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            runs.append((tail(g, 0, 10.0, 1.0, 1.0, "cpu", 1.0), ops.interpolate(real, other, alpha, True, 0.5, "cpu")))
    finally:
        torch.set_num_threads(threads)
    for (t, x) in runs[1:]:
        assert all(torch.equal(t[k], runs[0][0][k]) for k in t) and torch.equal(x, runs[0][1])


def test_capabilities_agree():
    g = torch.randn(8, 3, 17, 19, generator=torch.Generator().manual_seed(8))
    results = []
    for cap in CAPABILITIES:
        with cpu_capability(cap):
            results.append(tail(g, 1, 10.0, 0.8, 1.0, "cpu", 1.0))
    for res in results[1:]:
        for k in res:
            assert relative_error(res[k], results[0][k]) <= 1e-6, k


def test_backward_passes_the_saved_gradient_safely():
    """With an upstream gradient of exactly 1 the backward passes the saved d penalty / d g on as it is
    (csrc/autograd.h): a retained graph must give the same gradient again, accumulated, and a g that
    came from create_graph=True (R1) must carry it into D's parameters as the reference does."""
    if not CAPABILITIES:
        pytest.skip("no ganfast._C")
    g = torch.randn(5, 3, 7, requires_grad=True)
    with ganfast.use_backend("cpu"):
        p, _ = ops.dispatch_grad_penalty(g, ops.TWO_SIDED, 10.0, 1.0, 1.0)
    p.backward(retain_graph=True)
    first = g.grad.clone()
    p.backward(retain_graph=True)
    (p * 0.5).backward()
    torch.testing.assert_close(g.grad, 2.5 * first)

    D = torch.nn.Sequential(torch.nn.Linear(21, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    x = torch.randn(6, 21, dtype=torch.float64)
    grads = {}
    for backend in ("reference", "cpu"):
        D.zero_grad(set_to_none=True)
        xr = x.clone().requires_grad_()
        (gx,) = torch.autograd.grad(D(xr).sum(), xr, create_graph=True)
        with ganfast.use_backend(backend):
            pen, _ = ops.dispatch_grad_penalty(gx, ops.SQUARED, 5.0, 0.0, 1.0)  # R1
        pen.backward()
        grads[backend] = [q.grad for q in D.parameters() if q.grad is not None]  # not the last bias
    assert len(grads["cpu"]) == len(grads["reference"]) == 3
    torch.testing.assert_close(grads["cpu"], grads["reference"])
