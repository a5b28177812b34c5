"""GAN losses: every kernel backend against the plain-PyTorch reference."""
import pytest
import torch

import ganfast
from ganfast import losses
from ganfast.reference import losses as reference
from ganfast.validate import compare, relative_error

from ..conftest import poison_memory

KINDS = losses.KINDS
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def draw(kind, shape, seed, noncontiguous=False):
    """Base logits in float64, and the view a test runs on (a strided slice when noncontiguous)."""
    g = torch.Generator().manual_seed(seed)
    fake_shape = shape if kind == "rpgan" else (shape[0] + 2,) + tuple(shape[1:])
    if not noncontiguous:
        return (2 * torch.randn(shape, generator=g, dtype=torch.float64),
                2 * torch.randn(fake_shape, generator=g, dtype=torch.float64), lambda x: x)
    # every other column of a wider matrix, then transposed: neither view is contiguous
    wide = lambda s: 2 * torch.randn((s[1], 2 * s[0]), generator=g, dtype=torch.float64)  # noqa: E731
    return wide(shape), wide(fake_shape), lambda x: x[:, ::2].t()


def run(kind, r64, f64, view, dtype, device, backend, generator=False, upstream=1.0):
    """loss, grads and stats of d_loss (or g_loss) on fresh copies of r64/f64 cast to dtype."""
    r = r64.to(device, dtype, copy=True).requires_grad_()
    f = f64.to(device, dtype, copy=True).requires_grad_()
    poison_memory()
    with ganfast.use_backend(backend):
        if generator:
            loss = losses.g_loss(view(f), kind, real_logits=view(r) if kind in losses.RELATIVISTIC else None)
            stats = {}
        else:
            loss, stats = losses.d_loss(view(r), view(f), kind, return_stats=True)
        (loss * upstream).backward()
    out = {"loss": loss, "grad_fake": view(f.grad), **stats}
    if not generator or kind in losses.RELATIVISTIC:
        out["grad_real"] = view(r.grad)
    return out


def check_against_reference(kind, drawn, dtype, device, backend, generator=False):
    upstream = float(torch.empty(()).uniform_(0.5, 3.0))  # catches a backward that ignores grad_output
    actual = run(kind, *drawn, dtype, device, backend, generator, upstream)
    exact = run(kind, *drawn, torch.float64, "cpu", "reference", generator, upstream)
    low = run(kind, *drawn, dtype, "cpu", "reference", generator, upstream)
    for name, value in actual.items():
        assert value.dtype == (torch.float32 if name in losses._ops.STAT_NAMES else dtype), name
        assert value.shape == exact[name].shape, name
    err, tol, name = compare(actual, exact, low, dtype)
    assert err <= tol, f"{backend} {kind} {dtype}: {name} relative error {err:.3e} > {tol:.3e}"


@pytest.mark.parametrize("generator", [False, True], ids=["d", "g"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_dtypes(backend_device, kind, dtype, generator):
    backend, device = backend_device
    if dtype == torch.float64 and backend == "triton":
        pytest.skip("triton backend: fp64 is reference/cpu/cuda only")
    drawn = draw(kind, (123, 1), seed=KINDS.index(kind) * 10 + DTYPES.index(dtype))
    check_against_reference(kind, drawn, dtype, device, backend, generator)


@pytest.mark.parametrize("shape", [(1,), (7,), (4099,), (3, 5, 7)], ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_sizes(backend_device, kind, shape):
    backend, device = backend_device
    drawn = draw(kind, shape, seed=len(shape) * 7 + shape[0])
    check_against_reference(kind, drawn, torch.float32, device, backend, generator=False)
    check_against_reference(kind, drawn, torch.float32, device, backend, generator=True)


@pytest.mark.parametrize("kind", KINDS)
def test_noncontiguous(backend_device, kind):
    backend, device = backend_device
    drawn = draw(kind, (9, 6), seed=3, noncontiguous=True)
    assert not drawn[2](drawn[0]).is_contiguous() and not drawn[2](drawn[1]).is_contiguous()
    check_against_reference(kind, drawn, torch.float32, device, backend)
    check_against_reference(kind, drawn, torch.float32, device, backend, generator=True)


def test_stats_match_definition(backend_device):
    backend, device = backend_device
    r = torch.tensor([-1.0, 0.5, 2.0, 3.0], device=device)
    f = torch.tensor([-2.0, -0.5, 1.0], device=device)
    with ganfast.use_backend(backend):
        _, stats = losses.d_loss(r, f, "hinge", return_stats=True)
    assert stats["real_mean"].item() == pytest.approx(1.125)
    assert stats["fake_mean"].item() == pytest.approx(-0.5)
    assert stats["real_acc"].item() == pytest.approx(0.75)  # r > 0
    assert stats["fake_acc"].item() == pytest.approx(2 / 3)  # f < 0


@pytest.mark.parametrize("kind", KINDS)
def test_nan_propagates(backend_device, kind):
    backend, device = backend_device
    r = torch.randn(8, device=device)
    f = torch.randn(8, device=device)
    r[3] = float("nan")
    with ganfast.use_backend(backend):
        assert torch.isnan(losses.d_loss(r, f, kind))
        if kind in losses.RELATIVISTIC:
            assert torch.isnan(losses.g_loss(f, kind, real_logits=r))
        f[5] = float("nan")
        assert torch.isnan(losses.g_loss(f, kind, real_logits=r))


def test_large_logits_stay_finite(backend_device):
    backend, device = backend_device
    r = torch.tensor([-200.0, 90.0, 0.0], device=device, requires_grad=True)
    f = torch.tensor([150.0, -300.0, 5.0], device=device, requires_grad=True)
    with ganfast.use_backend(backend):
        for kind in ("ns", "minimax", "rans", "rpgan"):
            loss = losses.d_loss(r, f, kind)
            loss.backward()
            expected = reference.d_loss(r.detach().double(), f.detach().double(), kind)
            assert torch.isfinite(loss) and torch.isfinite(r.grad).all() and torch.isfinite(f.grad).all()
            assert relative_error(loss.double(), expected) < 1e-6
            r.grad = f.grad = None


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_float64(kind):
    backends_to_check = ["reference"] + (["cpu"] if ganfast.backends.status("cpu").available else [])
    g = torch.Generator().manual_seed(5)
    r = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    f = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    for backend in backends_to_check:
        with ganfast.use_backend(backend):
            assert torch.autograd.gradcheck(lambda a, b: losses.d_loss(a, b, kind), (r, f))
            assert torch.autograd.gradcheck(lambda a, b: losses.g_loss(b, kind, real_logits=a), (r, f))


def test_cpu_parallel_path_is_deterministic():
    if not ganfast.backends.status("cpu").available:
        pytest.skip(ganfast.backends.status("cpu").reason)
    r, f = torch.randn(100_003), torch.randn(70_001)  # several 16384-element chunks
    with ganfast.use_backend("cpu"):
        first = [losses.d_loss(r, f, k) for k in KINDS if k != "rpgan"]
        second = [losses.d_loss(r, f, k) for k in KINDS if k != "rpgan"]
    for kind, a, b, in zip(KINDS, first, second):
        assert torch.equal(a, b), kind
        assert relative_error(a.double(), reference.d_loss(r.double(), f.double(), kind)) < 1e-6


def _cuda_kernel_or_skip():
    if not ganfast.backends.status("cuda").available:
        pytest.skip(ganfast.backends.status("cuda").reason)


# real sizes on both sides of the CUDA kernel's one-block limit (8192 logits a side; fake has 2 more):
# 8191 real with 8193 fake takes the grid path by its fake side, 2^20 + 3 the largest grid (256 blocks)
@pytest.mark.parametrize("n_real", [8191, 70_001, (1 << 20) + 3], ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_grid_of_blocks(kind, n_real):
    _cuda_kernel_or_skip()
    drawn = draw(kind, (n_real,), seed=n_real % 101)
    torch.full((4 << 20,), float("nan"), device="cuda")  # NaN in the memory the outputs reuse
    check_against_reference(kind, drawn, torch.float32, "cuda", "cuda")
    check_against_reference(kind, drawn, torch.float32, "cuda", "cuda", generator=True)
    if n_real == 70_001:
        check_against_reference(kind, drawn, torch.bfloat16, "cuda", "cuda")


@pytest.mark.parametrize("kind", KINDS)
def test_cuda_grid_is_deterministic_and_keeps_nan(kind):
    _cuda_kernel_or_skip()
    g = torch.Generator().manual_seed(11)
    r = torch.randn(300_007, generator=g).cuda().requires_grad_()
    f = torch.randn(300_007 if kind == "rpgan" else 200_003, generator=g).cuda().requires_grad_()
    with ganfast.use_backend("cuda"):
        runs = []
        for _ in range(2):
            loss, stats = losses.d_loss(r, f, kind, return_stats=True)
            gr, gf = torch.autograd.grad(loss, (r, f))
            runs.append([loss, gr, gf, *stats.values()])
        assert all(torch.equal(a, b) for a, b in zip(*runs)), kind
        r_nan = r.detach().clone()
        r_nan[-5] = float("nan")  # in the last block of the grid
        assert torch.isnan(losses.d_loss(r_nan, f.detach(), kind))


# --- bad input --------------------------------------------------------------------------------

def test_unknown_kind_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown loss kind 'bce'.*ns, minimax, hinge"):
        losses.d_loss(torch.randn(3), torch.randn(3), "bce")
    with pytest.raises(ValueError, match="valid kinds"):
        losses.g_loss(torch.randn(3), "nope")


def test_bad_inputs():
    r, f = torch.randn(4), torch.randn(5)
    with pytest.raises(ValueError, match="real_logits is empty"):
        losses.d_loss(torch.empty(0), f)
    with pytest.raises(ValueError, match="fake_logits is empty"):
        losses.g_loss(torch.empty(0, 3))
    with pytest.raises(TypeError, match="floating point, got torch.int64"):
        losses.d_loss(torch.arange(4), f)
    with pytest.raises(TypeError, match="real_logits is torch.float16 but fake_logits is torch.float32: pass both"):
        losses.d_loss(r.half(), f)
    with pytest.raises(ValueError, match="real_logits is on meta but fake_logits is on cpu"):
        losses.d_loss(torch.randn(4, device="meta"), f)
    with pytest.raises(ValueError, match="rpgan pairs .* shapes differ"):
        losses.d_loss(r, f, "rpgan")
    with pytest.raises(ValueError, match="'rahinge' generator loss is relativistic: pass real_logits"):
        losses.g_loss(f, "rahinge")
    with pytest.raises(TypeError, match="must be a tensor"):
        losses.d_loss([1.0], f)


def test_op_level_checks(backend_device):
    backend, device = backend_device
    op = torch.ops.ganfast.gan_loss_fused_triton if backend == "triton" else torch.ops.ganfast.gan_loss_fused
    with pytest.raises((RuntimeError, ValueError), match="needs real logits"):
        op(None, torch.randn(3, device=device), 5, False)
    with pytest.raises((RuntimeError, ValueError), match="shapes differ"):
        op(torch.randn(3, device=device), torch.randn(4, device=device), 7, False)


@pytest.mark.skipif(ganfast.backends.extension_function("gan_loss_eager") is None, reason="ganfast._C not built")
class TestEagerEntry:
    """ganfast._C.gan_loss_eager: the direct entry for plain eager tensors, and its way back to
    torch.ops for every call that needs the dispatcher."""

    eager = staticmethod(lambda *a: ganfast.backends.extension_function("gan_loss_eager")(*a))

    def test_matches_the_op(self):
        g = torch.Generator().manual_seed(3)
        for kind, kind_id in losses._ops.KIND_IDS.items():
            for generator in (False, True):
                r1, f1 = (torch.randn(37, generator=g, dtype=torch.float64).requires_grad_() for _ in range(2))
                r2, f2 = (t.detach().clone().requires_grad_() for t in (r1, f1))
                real1 = r1 if not generator or kind in losses.RELATIVISTIC else None
                real2 = r2 if real1 is not None else None
                loss1, stats1 = self.eager(real1, f1, kind_id, generator)
                loss2, stats2 = torch.ops.ganfast.gan_loss(real2, f2, kind_id, generator)
                (3 * loss1).backward()
                (3 * loss2).backward()
                assert torch.equal(loss1, loss2) and torch.equal(stats1, stats2), kind
                assert torch.equal(f1.grad, f2.grad), kind
                assert (r1.grad is None) == (r2.grad is None) and (r1.grad is None or torch.equal(r1.grad, r2.grad))

    def test_errors_come_back_as_python_exceptions(self):
        with pytest.raises(RuntimeError, match="floating point"):
            self.eager(None, torch.arange(3), 0, True)
        with pytest.raises(TypeError):
            self.eager(None, torch.randn(3), "ns", True)
        # the number in the message: an extension with its own static libstdc++ dropped it (or crashed)
        with pytest.raises(RuntimeError, match=r"takes \(real, fake, kind, generator\), got 2 arguments"):
            self.eager(None, torch.randn(3))

    def test_declines_what_needs_the_dispatcher(self):
        r, f = torch.randn(8), torch.randn(8)

        class Subclass(torch.Tensor):
            pass

        assert self.eager(r, f, 0, False) is not None
        assert self.eager(r.as_subclass(Subclass), f, 0, False) is None
        assert self.eager(r, f.as_subclass(Subclass), 0, False) is None
        with torch.inference_mode():
            assert self.eager(r, f, 0, False) is None
        with torch.autocast("cpu"):
            assert self.eager(r, f, 0, False) is None

    def test_modes_and_transforms_see_the_op(self):
        """A dispatch mode and a __torch_function__ subclass get ganfast::gan_loss through the
        dispatcher, with the right values."""
        from torch.utils._python_dispatch import TorchDispatchMode

        seen = []

        class Record(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                seen.append(str(func))
                return func(*args, **(kwargs or {}))

        r, f = torch.randn(16, dtype=torch.float64), torch.randn(16, dtype=torch.float64)
        with ganfast.use_backend("cpu"):
            with Record():
                loss = losses.d_loss(r, f, "ns")
            assert any("gan_loss_fused" in name for name in seen), seen
            assert torch.allclose(loss, reference.d_loss(r, f, "ns"))

            class Logged(torch.Tensor):
                calls = []

                @classmethod
                def __torch_function__(cls, func, types, args=(), kwargs=None):
                    cls.calls.append(str(func))
                    return super().__torch_function__(func, types, args, kwargs or {})

            losses.d_loss(r.as_subclass(Logged), f.as_subclass(Logged), "ns")
            assert any("gan_loss" in name for name in Logged.calls), Logged.calls
