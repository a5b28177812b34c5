import os
import subprocess
import sys

import pytest
import torch

import ganfast
from ganfast import backends, losses, penalties


def test_selection_and_restore():
    assert ganfast.get_backend() == "auto"
    with ganfast.use_backend("reference"):
        assert ganfast.get_backend() == "reference"
        assert backends.resolve(torch.device("cpu")) == "reference"
    assert ganfast.get_backend() == "auto"


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="unknown backend 'fast'; choose one of auto, reference, cpu, cuda, triton"):
        ganfast.set_backend("fast")


def test_unavailable_backend_says_why():
    missing = [b for b in backends.BACKENDS if not backends.status(b).available]
    if not missing:
        pytest.skip("every backend is available here")
    with pytest.raises(ganfast.BackendUnavailableError, match=f"backend '{missing[0]}' is not available: .+"):
        ganfast.set_backend(missing[0])
    assert ganfast.get_backend() == "auto"


def test_auto_picks_cpu_kernels_for_cpu_tensors():
    expected = "cpu" if backends.status("cpu").available else "reference"
    assert backends.resolve(torch.device("cpu")) == expected


def test_backend_wrong_device():
    if not backends.status("cpu").available:
        pytest.skip("cpu backend not built")
    with ganfast.use_backend("cpu"):
        with pytest.raises(ganfast.BackendUnavailableError, match="does not run on meta tensors"):
            losses.d_loss(torch.randn(3, device="meta"), torch.randn(3, device="meta"))


def test_import_without_extension_uses_reference():
    # ganfast._C made unimportable: the package still imports, says why, and runs the reference.
    code = """
import sys
sys.modules['ganfast._C'] = None
import torch, ganfast
from ganfast import backends, losses, penalties
st = backends.status('cpu')
assert not st.available and 'not built' in st.reason, st
assert backends.resolve(torch.device('cpu')) == 'reference'
r = torch.randn(5, requires_grad=True)
losses.d_loss(r, torch.randn(4), 'hinge').backward()
assert r.grad is not None
print('ok')
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TRITON_INTERPRET": "0"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# --- the dispatch rule: declared dtypes, fall-through under auto, clear errors when chosen ---------

needs_cpu_and_triton = pytest.mark.skipif(
    not (backends.status("cpu").available and "cpu" in backends.status("triton").device_types),
    reason="needs the cpu backend and triton on CPU tensors (TRITON_INTERPRET=1)")


@pytest.fixture
def fresh_routes():
    """Routes are cached per (selection, family, device type, dtype): drop them around a test that
    changes the tables (monkeypatch restores the tables afterwards)."""
    backends._routes.clear()
    yield
    backends._routes.clear()


@pytest.fixture
def triton_first_on_cpu(monkeypatch, fresh_routes):
    """auto on CPU tensors tries triton (the interpreter) first: the order a GPU has (triton before
    the reference), with a kernel backend that lacks float64 in front."""
    monkeypatch.setitem(backends.AUTO_ORDER, "cpu", ("triton", "cpu", "reference"))


@pytest.fixture
def fake_gpu(monkeypatch, fresh_routes):
    """Every backend available, cuda and triton on CUDA tensors (no GPU needed: routing only)."""
    real = backends.status
    devices = {"reference": ("cpu", "cuda"), "cpu": ("cpu",), "cuda": ("cuda",), "triton": ("cuda",)}

    def status(name):
        return backends.BackendStatus(name, True, real(name).reason, devices[name])

    monkeypatch.setattr(backends, "status", status)


@pytest.mark.parametrize("family", backends.FAMILIES)
def test_every_family_declares_every_backend(family):
    for name in backends.BACKENDS:
        device_types, dtypes = backends.takes(name, family)
        assert dtypes and all(d.is_floating_point or d.is_complex for d in dtypes)
        assert set(backends.TAKES[name][family]) <= set(backends.TAKES["reference"][family])
    with pytest.raises(ValueError, match="unknown op family 'gan'"):
        backends.takes("cpu", "gan")


def test_auto_on_a_gpu_takes_the_first_backend_that_takes_the_dtype(fake_gpu):
    cuda = torch.device("cuda")
    for family in ("losses", "penalties"):
        for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            assert backends.resolve(cuda, family, dtype) == "cuda"
    assert backends.resolve(cuda, "spectral_norm", torch.float32) == "cuda"
    assert backends.resolve(cuda, "spectral_norm", torch.float64) == "reference"  # neither kernel has fp64
    assert backends.resolve(cuda, "spectral_norm", torch.complex64) == "reference"
    assert backends.resolve(torch.device("cpu"), "spectral_norm", torch.float64) == "cpu"


def test_auto_on_a_gpu_without_the_cuda_kernels(fake_gpu, monkeypatch):
    monkeypatch.setitem(backends.AUTO_ORDER, "cuda", ("triton", "reference"))
    cuda = torch.device("cuda")
    for family in backends.FAMILIES:
        # Triton lost to the reference on an H200 in every family timed there (backends.SIZE_LIMITS)
        expected = "triton" if family == "augment" else "reference"
        for numel in (1, 64, 1 << 20):
            assert backends.resolve(cuda, family, torch.bfloat16, numel) == expected, (family, numel)
        assert backends.resolve(cuda, family, torch.float64) == "reference"
    with ganfast.use_backend("triton"):  # chosen by name, it runs every size
        assert backends.resolve(cuda, "losses", torch.float32, 64) == "triton"


def test_auto_keeps_every_size_on_the_cuda_kernels(fake_gpu):
    """The CUDA kernels beat the reference at every size timed on an H200, the losses up to 2^20 logits
    since their kernel runs as a grid of blocks; Triton is never auto's pick there but for augment
    (backends.SIZE_LIMITS)."""
    cuda = torch.device("cuda")
    for family in backends.FAMILIES:
        for numel in (1, 64, 1 << 16, (1 << 20) + 1, 1 << 26):
            assert backends.resolve(cuda, family, torch.float32, numel) == "cuda", (family, numel)


def test_explicit_backend_names_what_it_does_not_take(fake_gpu):
    with ganfast.use_backend("triton"):
        with pytest.raises(backends.UnsupportedInputError,
                           match=r"backend 'triton' does not take float64 tensors for losses \(it takes float32, "
                                 r"float16, bfloat16\); select 'auto'"):
            backends.resolve(torch.device("cuda"), "losses", torch.float64)
    with ganfast.use_backend("cuda"):
        with pytest.raises(TypeError, match="'cuda' does not take float64 tensors for spectral_norm"):
            backends.resolve(torch.device("cuda"), "spectral_norm", torch.float64)
        with pytest.raises(ganfast.BackendUnavailableError, match="'cuda' does not run on cpu tensors"):
            backends.resolve(torch.device("cpu"), "losses", torch.float32)


def test_size_limits_route_by_numel_under_auto_only(monkeypatch, fresh_routes):
    if not backends.status("cpu").available:
        pytest.skip(backends.status("cpu").reason)
    monkeypatch.setitem(backends.SIZE_LIMITS, ("losses", "cpu", "cpu"), (100, 10_000))
    assert backends.backend_for("losses", torch.zeros(99)) == "reference"
    assert backends.backend_for("losses", torch.zeros(100)) == "cpu"
    assert backends.backend_for("losses", torch.zeros(10_001)) == "reference"
    assert backends.backend_for("penalties", torch.zeros(99)) == "cpu"  # per family
    with ganfast.use_backend("cpu"):  # a backend chosen by name runs every size
        assert backends.backend_for("losses", torch.zeros(99)) == "cpu"
    r, f = torch.randn(7, requires_grad=True), torch.randn(5, requires_grad=True)
    losses.d_loss(r, f, "rans").backward()  # runs on the reference, below the limit
    assert r.grad is not None and f.grad is not None


@needs_cpu_and_triton
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=str)
def test_losses_fall_through_to_a_backend_that_takes_the_dtype(triton_first_on_cpu, dtype):
    expected = "cpu" if dtype == torch.float64 else "triton"
    assert backends.backend_for("losses", torch.zeros(1, dtype=dtype)) == expected
    g = torch.Generator().manual_seed(0)
    r64, f64 = torch.randn(33, generator=g, dtype=torch.float64), torch.randn(21, generator=g, dtype=torch.float64)
    r, f = r64.to(dtype).requires_grad_(), f64.to(dtype).requires_grad_()
    loss = losses.d_loss(r, f, "rahinge")
    loss.backward()
    with ganfast.use_backend("reference"):
        exact = losses.d_loss(r.detach().double(), f.detach().double(), "rahinge")
    assert loss.dtype == dtype and r.grad.dtype == dtype
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3}[dtype]
    assert abs(loss.double().item() - exact.item()) <= tol * max(1.0, abs(exact.item()))


@needs_cpu_and_triton
def test_penalties_fall_through_to_a_backend_that_takes_the_dtype(triton_first_on_cpu):
    D = torch.nn.Linear(6, 1, dtype=torch.float64)
    real = torch.randn(5, 6, dtype=torch.float64)
    fake = torch.randn(5, 6, dtype=torch.float64)
    alpha = torch.rand(5, dtype=torch.float64)
    got = penalties.wgan_gp(D, real, fake, alpha=alpha)
    with ganfast.use_backend("reference"):
        exact = penalties.wgan_gp(D, real, fake, alpha=alpha)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, exact, rtol=1e-12, atol=0)
    with ganfast.use_backend("triton"):
        with pytest.raises(backends.UnsupportedInputError, match="'triton' does not take float64 tensors for penalties"):
            penalties.r1(D, real)


@needs_cpu_and_triton
def test_spectral_norm_falls_through_for_float64_and_complex(triton_first_on_cpu):
    torch.manual_seed(0)
    m = ganfast.nn.spectral_norm(torch.nn.Linear(4, 3, dtype=torch.float64))
    assert backends.backend_for("spectral_norm", m.parametrizations.weight.original) == "cpu"
    m(torch.randn(2, 4, dtype=torch.float64)).sum().backward()
    sigma = torch.linalg.matrix_norm(m.weight.detach(), ord=2)
    assert sigma.item() == pytest.approx(1.0, rel=1e-2)
    c = ganfast.nn.spectral_norm(torch.nn.Linear(4, 3, dtype=torch.cfloat))
    assert backends.backend_for("spectral_norm", c.parametrizations.weight.original) == "reference"
    assert torch.linalg.matrix_norm(c.weight.detach(), ord=2).item() == pytest.approx(1.0, rel=1e-2)


@pytest.mark.parametrize("backend", backends.CHOICES)
def test_complex_logits_stay_an_error(backend):
    if backend != "auto" and not backends.status(backend).available:
        pytest.skip(backends.status(backend).reason)
    z = torch.randn(4, dtype=torch.cfloat)
    with ganfast.use_backend(backend):
        with pytest.raises(TypeError, match="real_logits must be floating point, got torch.complex64"):
            losses.d_loss(z, z)
        with pytest.raises(TypeError, match="real must be floating point, got torch.complex64"):
            penalties.r1(torch.nn.Identity(), z)


def test_sparse_input_goes_to_the_reference(fresh_routes):
    sparse = torch.randn(3, 4).to_sparse()
    assert backends.backend_for("spectral_norm", sparse) == "reference"
    if backends.status("cpu").available:
        with ganfast.use_backend("cpu"):
            with pytest.raises(backends.UnsupportedInputError, match="'cpu' takes dense \\(strided\\) tensors only"):
                backends.backend_for("losses", sparse)


def test_func_transforms_take_the_reference_under_auto():
    """torch.func.grad / vmap over the public ops (per-sample gradients of a spectral-normalized D, as
    differentially private GAN training takes them): `auto` runs the reference inside the transform,
    whose aten ops functorch knows; the kernels' C++ autograd functions failed there ("cannot use C++
    torch::autograd::Function with functorch transforms")."""
    from torch.func import functional_call, grad, vmap
    import ganfast.nn as gnn
    from ganfast import models
    g = torch.Generator().manual_seed(0)
    r, f = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    for kind in losses.KINDS:
        got = vmap(grad(lambda f_i, r_i: losses.d_loss(r_i, f_i, kind)))(f, r)
        for i in range(5):
            leaf = f[i].clone().requires_grad_()
            losses.d_loss(r[i], leaf, kind).backward()  # the kernels, outside the transform
            torch.testing.assert_close(got[i], leaf.grad)
    torch.manual_seed(0)
    D = models.DCGANDiscriminator(8, 3, 8)
    gnn.apply_spectral_norm(D)
    x = torch.randn(3, 3, 8, 8, generator=g)
    D(x)  # a training call: u, v move; per-sample gradients are taken in eval mode (no buffer updates)
    D.eval()
    params = {k: v.detach() for k, v in D.named_parameters()}
    buffers = dict(D.named_buffers())

    def loss(p, x_i):
        return losses.g_loss(functional_call(D, (p, buffers), (x_i.unsqueeze(0),)).reshape(-1), "ns")

    per_sample = vmap(grad(loss), in_dims=(None, 0))(params, x)
    for i in range(3):
        D.zero_grad()
        losses.g_loss(D(x[i:i + 1]).reshape(-1), "ns").backward()
        for name, p in D.named_parameters():
            torch.testing.assert_close(per_sample[name][i], p.grad)
    if backends.status("cpu").available:
        with ganfast.use_backend("cpu"), pytest.raises(backends.UnsupportedInputError,
                                                       match="cpu backend's losses kernels do not run under "
                                                             "torch.func transforms"):
            grad(lambda f_i: losses.d_loss(r[0], f_i, "ns"))(f[0])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="an ELF dynamic section")
def test_extension_uses_the_shared_cxx_runtime():
    """setup.py links the process's libstdc++: with a compiler that links it statically, TORCH_CHECK
    messages were formatted by the extension's own copy, and crashed (the H200's /opt/gcc g++)."""
    import importlib.util
    import shutil

    spec = importlib.util.find_spec("ganfast._C")
    if spec is None or shutil.which("readelf") is None:
        pytest.skip("no built extension, or no readelf")
    dynamic = subprocess.run(["readelf", "-d", spec.origin], capture_output=True, text=True, check=True).stdout
    assert "[libstdc++.so.6]" in dynamic, dynamic
