"""The vectorized CPU spectral norm (csrc/cpu/spectral_norm.cpp) on each instruction set it has
(the copies of tests/cpu_paths.py): against the float64 reference at every dtype, on vector
tails, many row blocks, dim != 0 and strided weights; the rescue of tiny / huge / zero weights;
thread-count independence; the non-temporal stores of large gradients; and the multi-tensor ops
against the single-layer ones."""
import pytest
import torch

from ganfast.ops import spectral_norm as ops
from ganfast.reference import spectral_norm as reference
from ganfast.validate import compare, relative_error

from ..cpu_paths import CAPABILITIES, cpu_capability, nontemporal_stores
from .sn_helpers import need

# (shape, dim): vector tails (13, 17, 129 columns), one row / one column, dim 1 and 2 (segments of
# `inner` elements), and weights of 2 and 16 row blocks (the blocks' partial sums are added in order).
SHAPES = [((7, 13), 0), ((1, 129), 0), ((123, 1), 0), ((3, 5, 4), 1), ((2, 3, 5, 1), 2), ((6, 17, 3, 3), 1),
          ((300, 517), 0), ((1030, 300), 0), ((40, 70, 3, 3), 1)]


def draw(shape, dim, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    outer, h, inner = reference.split_dims(shape, dim)
    u = torch.nn.functional.normalize(torch.randn(h, generator=g, dtype=torch.float64), dim=0)
    v = torch.nn.functional.normalize(torch.randn(outer * inner, generator=g, dtype=torch.float64), dim=0)
    up = torch.randn(shape, generator=g, dtype=torch.float64)
    return w, u, v, up


def run(fn, w, u, v, up, dim, n_iter, dtype, noncontig=False):
    acc = reference.opmath_dtype(dtype)
    w = w.detach().to(dtype, copy=True)
    if noncontig:  # same values, strided storage
        w = w.transpose(0, -1).contiguous().transpose(0, -1)
    w.requires_grad_()
    out, u2, v2, s = fn(w, u.to(acc), v.to(acc), dim, n_iter, 1e-12)
    (out * up.to(dtype)).sum().backward()
    return {"out": out, "u": u2, "v": v2, "sigma": s, "grad": w.grad}


def cpu_op(w, u, v, dim, n_iter, eps):
    return ops.spectral_norm(w, u, v, dim, n_iter, eps, "cpu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n_iter", [0, 1, 2])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{'x'.join(map(str, s[0]))}-dim{s[1]}")
def test_matches_reference(capability, shape, n_iter, dtype):
    shape, dim = shape
    w, u, v, up = draw(shape, dim, 1)
    if n_iter == 0:  # eval mode uses trained u, v (random ones may give sigma <= 0: W / eps overflows fp16)
        u, v = reference.power_method(w, u, v, dim, 3, 1e-12)
    exact = run(reference.spectral_norm, w, u, v, up, dim, n_iter, torch.float64)
    low = exact if dtype == torch.float64 else run(reference.spectral_norm, w, u, v, up, dim, n_iter, dtype)
    got = run(cpu_op, w, u, v, up, dim, n_iter, dtype, noncontig=True)
    acc = reference.opmath_dtype(dtype)
    assert got["out"].dtype == dtype and got["grad"].dtype == dtype
    assert got["u"].dtype == got["v"].dtype == got["sigma"].dtype == acc
    err, tol, name = compare(got, exact, low, dtype)
    assert err <= tol, (name, err, tol)


# (dtype, scale of W): ||M v|| so small (but nonzero) or so large that the one-pass iteration,
# s = M^T (M v), would leave the normal range of the dtype; the kernel then recomputes s as M^T u.
# Below eps, u = M v / eps is not a unit vector (as in PyTorch) and sigma is clamped at eps.
EXTREME = [(torch.float32, 1e-20), (torch.float32, 1e-8), (torch.float32, 1e25),
           (torch.float64, 1e-150), (torch.float64, 1e150)]


@pytest.mark.parametrize("dtype,scale", EXTREME, ids=lambda x: str(x))
def test_tiny_and_huge_weights(capability, dtype, scale):
    shape, dim = (37, 70), 0
    w, u, v, up = draw(shape, dim, 2)
    w = w * scale
    exact = run(reference.spectral_norm, w, u, v, up, dim, 1, torch.float64)
    got = run(cpu_op, w, u, v, up, dim, 1, dtype)
    for k in exact:
        assert relative_error(got[k], exact[k]) < 1e-5, k


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_zero_weight(capability, dtype):
    w, u, v, up = draw((9, 33), 0, 3)
    got = run(cpu_op, torch.zeros_like(w), u, v, up, 0, 1, dtype)
    exp = run(reference.spectral_norm, torch.zeros_like(w), u, v, up, 0, 1, torch.float64)
    for k in ("out", "u", "v", "sigma"):
        assert torch.isfinite(got[k]).all(), k
        assert (got[k] == 0).all(), k
    # sigma is clamped at eps: dW = G / eps (finite in fp32/fp64; fp16/bf16 overflow as the reference's cast does)
    if dtype in (torch.float32, torch.float64):
        torch.testing.assert_close(got["grad"].double(), exp["grad"], rtol=1e-6, atol=0)


def test_nan_propagates(capability):
    w, u, v, up = draw((9, 40), 0, 4)
    w[3, 17] = float("nan")
    got = run(cpu_op, w, u, v, up, 0, 1, torch.float32)
    assert got["sigma"].isnan() and got["out"].isnan().all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_streamed_outputs_are_the_cached_ones(capability, dtype):
    """W / sigma and dW written around the caches (what weights of the last-level cache or half of it
    get) are bitwise those of ordinary stores: rows starting at every alignment (odd row lengths, so
    the stores begin after a head of scalar elements), vector tails, one and several layers."""
    layers = [((7, 13), 0), ((1, 129), 0), ((123, 1), 0), ((6, 17, 3, 3), 1), ((300, 517), 0), ((40, 70, 3, 3), 1)]
    acc = reference.opmath_dtype(dtype)
    draws = [draw(shape, dim, 30 + i) for i, (shape, dim) in enumerate(layers)]

    def outputs():
        singles = []
        for (w, u, v, up), (_, dim) in zip(draws, layers):
            got = run(cpu_op, w, u, v, up, dim, 1, dtype)
            singles += [got["out"], got["grad"]]
        ws = [w.to(dtype, copy=True).requires_grad_() for w, _, _, _ in draws]  # fresh leaves, fresh .grad
        outs = ops.spectral_norm_multi(ws, [d[1].to(acc) for d in draws], [d[2].to(acc) for d in draws],
                                       [dim for _, dim in layers], 1, 1e-12)[0]
        torch.autograd.backward(outs, [d[3].to(dtype) for d in draws])
        return singles + [o.detach() for o in outs] + [w.grad for w in ws]

    with nontemporal_stores(2**63 - 1):
        produced = outputs()
    cached = [t.clone() for t in produced]
    for t in produced:  # freed next: a reused buffer shows every element the streamed pass would miss
        t.detach().fill_(float("nan"))
    del produced, t
    with nontemporal_stores(0):
        streamed = outputs()
    for i, (a, b) in enumerate(zip(streamed, cached)):
        assert torch.equal(a, b), i


def test_nontemporal_threshold():
    need("cpu")
    assert torch.ops.ganfast_cpu.nontemporal_min_bytes() > 0
    with pytest.raises(RuntimeError, match="bytes must be >= 0"):
        torch.ops.ganfast_cpu.set_nontemporal_min_bytes(-1)


def test_capabilities_agree():
    """Every instruction set computes the same math (up to FMA rounding)."""
    need("cpu")
    w, u, v, up = draw((130, 257), 0, 5)
    results = {}
    for cap in CAPABILITIES:
        with cpu_capability(cap):
            results[cap] = run(cpu_op, w, u, v, up, 0, 2, torch.float32)
    base = results.pop("default")
    for cap, got in results.items():
        for k in got:
            torch.testing.assert_close(got[k], base[k], rtol=2e-6, atol=1e-7, msg=f"{cap} {k}")


def test_same_result_for_any_thread_count():
    need("cpu")
    w, u, v, up = draw((1030, 1100), 0, 6)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(run(cpu_op, w, u, v, up, 0, 2, torch.float32))
    finally:
        torch.set_num_threads(threads)
    for got in results[1:]:
        for k in got:
            assert torch.equal(got[k], results[0][k]), k


def test_multi_same_result_for_any_thread_count():
    """The multi-tensor ops share threads by work over layers of unequal size (which thread runs which
    row block moves with the thread count): the results must not."""
    need("cpu")
    layers = [((256, 700), 0), ((130, 64, 3, 3), 0), ((1030, 300), 0), ((3, 129), 0)]
    draws = [draw(shape, dim, 20 + i) for i, (shape, dim) in enumerate(layers)]
    dims = [dim for _, dim in layers]
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            ws = [w.float().requires_grad_() for w, _, _, _ in draws]
            outs, u2, v2, s2 = ops.spectral_norm_multi(ws, [d[1].float() for d in draws],
                                                       [d[2].float() for d in draws], dims, 1, 1e-12)
            torch.autograd.backward(outs, [d[3].float() for d in draws])
            results.append([*outs, *u2, *v2, *s2, *(w.grad for w in ws)])
    finally:
        torch.set_num_threads(threads)
    for got in results[1:]:
        for i, (a, b) in enumerate(zip(got, results[0])):
            assert torch.equal(a, b), i


# Layers of the multi-tensor tests: small ones (one group), and ones of several MB that the CPU ops
# cut into cache-sized groups (csrc/cpu/spectral_norm.cpp, kGroupBytes = 4 MB): a layer over the limit
# alone, one that would overflow the group before it, and a small layer grouped with a large one.
MULTI_LAYERS = {
    "small": [((300, 517), 0, torch.float32), ((6, 17, 3, 3), 1, torch.float64), ((7, 13), 0, torch.bfloat16),
              ((40, 70, 3, 3), 0, torch.float16), ((1, 129), 0, torch.float32)],
    "cache_groups": [((1100, 1000), 0, torch.float32), ((300, 517), 0, torch.float32),
                     ((700, 1000), 0, torch.float64), ((40, 70, 3, 3), 1, torch.float16),
                     ((1000, 900), 0, torch.float32)],
}


@pytest.mark.parametrize("layer_set", list(MULTI_LAYERS))
def test_multi_equals_single(capability, layer_set):
    """The multi-tensor ops run the single-layer math on every layer (bitwise the same), mixed dtypes and
    dims, in one group or in several."""
    layers = MULTI_LAYERS[layer_set]
    ws, us, vs, ups, dims = [], [], [], [], []
    for i, (shape, dim, dtype) in enumerate(layers):
        w, u, v, up = draw(shape, dim, 10 + i)
        acc = reference.opmath_dtype(dtype)
        ws.append(w.to(dtype).requires_grad_())
        us.append(u.to(acc))
        vs.append(v.to(acc))
        ups.append(up.to(dtype))
        dims.append(dim)
    for n_iter in (0, 1, 2):
        outs, u2, v2, s2 = ops.spectral_norm_multi(ws, us, vs, dims, n_iter, 1e-12)
        torch.autograd.backward(outs, ups)
        multi_grads = [w.grad for w in ws]
        for w in ws:
            w.grad = None
        for i in range(len(ws)):
            single = ops.spectral_norm(ws[i], us[i], vs[i], dims[i], n_iter, 1e-12, "cpu")
            single[0].backward(ups[i])
            for name, a, b in zip(("out", "u", "v", "sigma"), (outs[i], u2[i], v2[i], s2[i]), single):
                assert torch.equal(a, b), (i, n_iter, name)
            assert torch.equal(multi_grads[i], ws[i].grad), (i, n_iter)
            ws[i].grad = None


def test_output_buffers_are_reused_only_when_free():
    """W / sigma and dW come from a cache of freed buffers: a live output is never handed out again,
    a reused buffer is fully rewritten, and the outputs behave as ordinary tensors (resize_)."""
    need("cpu")
    w, u, v, up = draw((512, 600), 0, 7)  # 1.2 MB in float32: from the cache (csrc/cpu/output_cache.h)
    w = w.float()
    first = ops.spectral_norm(w, u.float(), v.float(), 0, 1, 1e-12, "cpu")[0]
    kept = first.clone()
    second = ops.spectral_norm(w * 2, u.float(), v.float(), 0, 1, 1e-12, "cpu")[0]
    assert first.data_ptr() != second.data_ptr()
    assert torch.equal(first, kept)
    del first
    second.fill_(float("nan"))
    del second  # its buffer, full of NaN, goes back to the cache
    third = ops.spectral_norm(w, u.float(), v.float(), 0, 1, 1e-12, "cpu")[0]
    assert torch.equal(third, kept)
    third.resize_(1000, 1000)  # larger than the cached buffer: the storage grows
    third.fill_(1.0)
    assert third.sum().item() == 1_000_000
