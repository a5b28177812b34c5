"""The multi-tensor spectral norm of the GPU backends (triton here under the interpreter; cuda where
a GPU is present) against their single-layer op: the same math for every layer, bitwise, except the
weight gradients of compiled Triton (see same_grad)."""
import copy

import pytest
import torch
from torch import nn

import ganfast
from ganfast import backends
from ganfast.nn import apply_spectral_norm, sn_step, spectral_norms
from ganfast.ops import spectral_norm as ops
from ganfast.reference import spectral_norm as reference

from .sn_helpers import RecordOps, check_eager_entry_declines


def _device_of(backend: str) -> str | None:
    st = backends.status(backend)
    if not st.available:
        return None
    if backend == "cuda":
        return "cuda" if ops.has_cuda_multi() else None
    return "cpu" if "cpu" in st.device_types else ("cuda" if "cuda" in st.device_types else None)


def same_grad(a: torch.Tensor, b: torch.Tensor, backend: str) -> None:
    """Weight gradients of the multi-tensor and single-layer ops: bitwise, except on Triton compiled for
    a GPU. There the two backward kernels run the same source but are compiled apart, and on an H200
    (2026-12-04) their gradients differed in the last bits while the forward outputs were equal; so
    there they are compared to the rounding of their dtype."""
    if backend == "triton" and a.is_cuda:
        torch.testing.assert_close(a, b)
    else:
        assert torch.equal(a, b)


GPU_PATHS = [pytest.param(b, marks=pytest.mark.skipif(_device_of(b) is None, reason=f"{b}: not available here"))
             for b in ("triton", "cuda")]

# mixed layouts (dim 0 and 1, inner 1 and > 1, a 1x1 weight), sizes 1, 7, 123, mixed dtypes
LAYERS = [((123, 7), 0, torch.float32), ((6, 17, 3, 3), 1, torch.float32), ((7, 13), 0, torch.bfloat16),
          ((1, 1), 0, torch.float32), ((40, 9, 3, 3), 0, torch.float16), ((1, 129), 0, torch.float32)]


def _layers(device, noncontig_u=False):
    g = torch.Generator().manual_seed(3)
    ws, us, vs, ups, dims = [], [], [], [], []
    for shape, dim, dtype in LAYERS:
        outer, h, inner = reference.split_dims(shape, dim)
        ws.append(torch.randn(shape, generator=g).to(device, dtype).requires_grad_())
        u = torch.randn(2 * h, generator=g).to(device)
        us.append(u[::2] if noncontig_u else u[:h])  # fresh random vectors, not normalized
        vs.append(torch.randn(outer * inner, generator=g).to(device))
        ups.append(torch.randn(shape, generator=g).to(device, dtype))
        dims.append(dim)
    return ws, us, vs, ups, dims


@pytest.mark.parametrize("backend", GPU_PATHS)
@pytest.mark.parametrize("n_iter", [0, 1, 2])
def test_multi_equals_single(backend, n_iter):
    ws, us, vs, ups, dims = _layers(_device_of(backend), noncontig_u=n_iter == 1)
    outs, u2, v2, s2 = ops.spectral_norm_multi(ws, us, vs, dims, n_iter, 1e-12, backend)
    torch.autograd.backward(outs, ups)
    multi_grads = [w.grad for w in ws]
    for w in ws:
        w.grad = None
    for i in range(len(ws)):
        single = ops.spectral_norm(ws[i], us[i], vs[i], dims[i], n_iter, 1e-12, backend)
        single[0].backward(ups[i])
        for name, a, b in zip(("out", "u", "v", "sigma"), (outs[i], u2[i], v2[i], s2[i]), single):
            assert a.dtype == b.dtype and a.shape == b.shape, (i, name)
            assert torch.equal(a, b), (i, n_iter, name)
        same_grad(multi_grads[i], ws[i].grad, backend)


@pytest.mark.parametrize("backend", ["cpu"] + GPU_PATHS)
def test_multi_autograd_unused_layers_and_frozen_weights(backend):
    """The multi-tensor op's autograd (C++ for cpu/cuda, Python for triton): a layer whose output the
    loss does not use gets dW = (0 - k u v^T) / sigma with k = 0, i.e. zeros; a weight that does not
    require grad gets none; the others get the single-layer op's gradient (same_grad)."""
    device = "cpu" if backend == "cpu" else _device_of(backend)
    ws, us, vs, ups, dims = _layers(device)
    ws[2].requires_grad_(False)
    outs = ops.spectral_norm_multi(ws, us, vs, dims, 1, 1e-12, backend)[0]
    used = [0, 2, 4]
    loss = sum((outs[i].float() * ups[i].float()).sum() for i in used)
    loss.backward()
    for i, w in enumerate(ws):
        if i == 2:
            assert w.grad is None
        elif i not in used:
            assert w.grad is not None and torch.equal(w.grad, torch.zeros_like(w)), i
        else:
            g = w.grad
            w.grad = None
            single = ops.spectral_norm(w, us[i], vs[i], dims[i], 1, 1e-12, backend)[0]
            (single.float() * ups[i].float()).sum().backward()
            same_grad(g, w.grad, backend)
    assert not any(t.requires_grad for t in ops.spectral_norm_multi(ws, us, vs, dims, 1, 1e-12, backend)[1])
    with torch.no_grad():
        assert not ops.spectral_norm_multi(ws, us, vs, dims, 1, 1e-12, backend)[0][0].requires_grad


@pytest.mark.parametrize("backend", GPU_PATHS)
def test_multi_matches_reference(backend):
    """Every output element written and right (fp64 reference, fp32 layers)."""
    device = _device_of(backend)
    ws, us, vs, _, dims = _layers(device)
    keep = [i for i, (_, _, dt) in enumerate(LAYERS) if dt == torch.float32]
    ws, us, vs, dims = ([x[i] for i in keep] for x in (ws, us, vs, dims))
    outs, u2, v2, s2 = ops.spectral_norm_multi(ws, us, vs, dims, 1, 1e-12, backend)
    for i in range(len(ws)):
        exp = reference.spectral_norm(ws[i].detach().double(), us[i].double(), vs[i].double(), dims[i], 1, 1e-12)
        for a, b in zip((outs[i], u2[i], v2[i], s2[i]), exp):
            assert torch.isfinite(a).all()
            torch.testing.assert_close(a.double(), b, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("backend", GPU_PATHS)
def test_sn_step_multi_tensor_matches_lazy(backend):
    device = _device_of(backend)
    torch.manual_seed(0)
    model = apply_spectral_norm(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.ConvTranspose2d(4, 2, 3), nn.Flatten(),
                                              nn.Linear(2 * 7 * 7, 1), nn.Linear(1, 1))).to(device)
    model[5].eval()  # one layer in eval mode: its own (n_iter=0) group
    twin = copy.deepcopy(model)
    xs = [torch.randn(2, 3, 7, 7, device=device) for _ in range(3)]
    with ganfast.use_backend(backend):
        for m, multi in ((model, True), (twin, False)):
            with sn_step(m, multi_tensor=multi):
                if multi:
                    assert all(p._step_cache is not None for p in m.modules() if isinstance(p, ganfast.nn.SpectralNorm))
                loss = m(xs[0]).sum() - m(xs[1]).sum() + m(xs[2]).square().sum()
                loss.backward()
    for (k, a), (_, b) in zip(model.state_dict().items(), twin.state_dict().items()):
        assert torch.equal(a, b), k
    for a, b in zip(model.parameters(), twin.parameters()):
        same_grad(a.grad, b.grad, backend)
    for k, s in spectral_norms(model).items():
        assert torch.equal(s, spectral_norms(twin)[k])


@pytest.mark.parametrize("backend", GPU_PATHS)
def test_multi_bad_input(backend):
    device = _device_of(backend)
    w = torch.randn(4, 3, device=device)
    with pytest.raises((ValueError, RuntimeError), match="same length"):
        ops.spectral_norm_multi([w], [torch.randn(4, device=device)], [], [0], 1, 1e-12, backend)
    with pytest.raises((ValueError, RuntimeError), match="u must have shape"):
        ops.spectral_norm_multi([w], [torch.randn(5, device=device)], [torch.randn(3, device=device)], [0], 1, 1e-12,
                                backend)


@pytest.mark.skipif(backends.extension_function("spectral_norm_multi_eager") is None, reason="ganfast._C not built")
class TestUpdateEagerEntry:
    """sn_step's update (ops.spectral_norm_multi_update): ganfast._C.spectral_norm_multi_eager for
    plain eager tensors, torch.ops and a foreach copy for everything else; the same numbers both ways."""

    eager = staticmethod(lambda *a: backends.extension_function("spectral_norm_multi_eager")(*a))

    @staticmethod
    def _buffers(us, vs, ws):
        """Copies of u, v and a sigma per layer, as a layer's buffers hold them (opmath dtype)."""
        sigmas = [torch.full((), 5.0, dtype=reference.opmath_dtype(w.dtype), device=w.device) for w in ws]
        return [u.clone() for u in us], [v.clone() for v in vs], sigmas

    @pytest.mark.parametrize("float64", [False, True])
    @pytest.mark.parametrize("n_iter", [0, 1, 2])
    def test_matches_the_op_and_the_copy(self, n_iter, float64, monkeypatch):
        ws, us, vs, ups, dims = _layers("cpu", noncontig_u=n_iter == 1)
        if float64:  # float64 layers keep float64 u, v and sigma
            ws = [w.detach().double().requires_grad_() for w in ws]
            us, vs, ups = ([t.double() for t in ts] for ts in (us, vs, ups))
        fresh = [w.detach().clone().requires_grad_() for w in ws]
        bufs_eager, bufs_ops = self._buffers(us, vs, ws), self._buffers(us, vs, ws)
        if n_iter == 1:  # non-contiguous buffers too: the copy writes through their strides
            bufs_eager[0][0] = torch.randn(2 * len(us[0]))[::2].copy_(us[0])
            bufs_ops[0][0] = torch.randn(2 * len(us[0]))[::2].copy_(us[0])
        entry, calls = backends.extension_function("spectral_norm_multi_eager"), []
        monkeypatch.setattr(backends, "extension_function", lambda name: lambda *a: calls.append(1) or entry(*a))
        outs = ops.spectral_norm_multi_update(ws, *bufs_eager, dims, n_iter, 1e-12, "cpu")
        assert calls == [1]  # through the entry
        monkeypatch.setattr(backends, "extension_function", lambda name: None)  # torch.ops and the foreach copy
        outs_ops = ops.spectral_norm_multi_update(fresh, *bufs_ops, dims, n_iter, 1e-12, "cpu")
        assert isinstance(outs, list) and len(outs) == len(ws)
        for a, b in zip(outs, outs_ops):
            assert a.dtype == b.dtype and torch.equal(a, b) and a.requires_grad
        for mine, theirs in zip(bufs_eager, bufs_ops):
            for a, b in zip(mine, theirs):
                assert torch.equal(a, b)
        changed = [not torch.equal(a, b) for a, b in zip(bufs_eager[0], us)]
        assert any(changed) == (n_iter > 0)  # u is written only by a power iteration
        torch.autograd.backward(outs, ups)
        torch.autograd.backward(outs_ops, ups)
        for a, b in zip(ws, fresh):
            assert torch.equal(a.grad, b.grad)

    def test_errors_come_back_as_python_exceptions(self):
        w, u, v, s = torch.randn(4, 3), torch.randn(4), torch.randn(3), torch.ones(())
        with pytest.raises(RuntimeError, match=r"takes \(weights, us, vs, sigmas, dims, n_iter, eps\), got 2"):
            self.eager([w], [u])
        with pytest.raises(TypeError, match="weights must be a list"):
            self.eager((w,), [u], [v], [s], [0], 1, 1e-12)
        with pytest.raises(RuntimeError, match="1 weights but 2 sigmas"):
            self.eager([w], [u], [v], [s, s], [0], 1, 1e-12)
        with pytest.raises(RuntimeError, match="same length"):
            self.eager([w], [u], [], [s], [0], 1, 1e-12)
        with pytest.raises(RuntimeError, match="u must have shape"):
            self.eager([w], [torch.randn(5)], [v], [s], [0], 1, 1e-12)
        with pytest.raises(TypeError):
            self.eager([w], [u], [v], [s], ["0"], 1, 1e-12)

    def test_declines_what_needs_the_dispatcher(self):
        check_eager_entry_declines(lambda w, s=None: self.eager([w], [torch.randn(4)], [torch.randn(3)],
                                                                [torch.ones(()) if s is None else s], [0], 1, 1e-12))

    def test_a_dispatch_mode_sees_the_op(self):
        """Under a dispatch mode sn_step's update goes through torch.ops (the mode sees
        spectral_norm_multi) and still writes u, v and sigma."""
        torch.manual_seed(0)
        model = apply_spectral_norm(nn.Sequential(nn.Linear(5, 7), nn.Linear(7, 2)))
        twin = copy.deepcopy(model)
        with RecordOps() as mode:
            with sn_step(model, multi_tensor=True):
                pass
        assert any("spectral_norm_multi" in name for name in mode.seen), mode.seen
        with sn_step(twin, multi_tensor=True):
            pass
        for (k, a), (_, b) in zip(model.state_dict().items(), twin.state_dict().items()):
            assert torch.equal(a, b), k
