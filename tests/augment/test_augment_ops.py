"""The fused augmentation ops of every backend against the reference, on fixed random parameters:
values and gradients (random upstream), every dtype by the 2x rule, odd sizes, non-contiguous inputs,
B = 1, shifts and boxes beyond what the draw produces; gradients of every order on fp64; opcheck
is in tests/test_ops.py."""
import pytest
import torch

from ganfast import augment, backends
from ganfast.ops import augment as ops
from ganfast.reference import augment as ref
from ganfast.validate import FLOOR, relative_error

from ..conftest import poison_memory

DEVICE = {b: torch.device(backends.status(b).device_types[0]) for b in ("cpu", "cuda", "triton")
          if backends.status(b).available}
BACKENDS = list(DEVICE)
ALL = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
INTERPRETED = DEVICE.get("triton", torch.device("cpu")).type == "cpu"
DTYPES = {"cpu": ALL, "cuda": ALL,  # the interpreter has no bf16 arithmetic
          "triton": (torch.float32, torch.float16) if INTERPRETED else (torch.float32, torch.float16, torch.bfloat16)}
BIG = [(1, 3, 1, 1), (1, 3, 5, 5), (2, 1, 7, 9), (3, 4, 9, 7), (2, 3, 33, 33), (5, 3, 16, 12)]
SHAPES = {"cpu": BIG, "cuda": BIG, "triton": [(1, 3, 1, 1), (2, 3, 5, 7), (3, 1, 9, 9), (2, 3, 33, 33)]}
POLICIES = ["color,translation,cutout", "translation,cutout", "color", "cutout,color"]


def params(shape, policy, p, seed, arbitrary=False):
    """(color, geometry) from the public draw; arbitrary: shifts up to past the image and boxes reaching
    outside it (what the kernels must take, beyond what draw_params produces)."""
    b, _, h, w = shape
    g = torch.Generator().manual_seed(seed)
    color, geometry = augment.draw_params(b, h, w, policy, p, lambda s: torch.rand(s, generator=g))
    if arbitrary:
        dy = torch.randint(-h - 1, h + 2, (b,), generator=g)
        dx = torch.randint(-w - 1, w + 2, (b,), generator=g)
        ys = torch.randint(-2, h + 3, (b, 2), generator=g).sort(1).values
        xs = torch.randint(-2, w + 3, (b, 2), generator=g).sort(1).values
        geometry = torch.stack([dy, dx, ys[:, 0], ys[:, 1], xs[:, 0], xs[:, 1]], 1).to(torch.int32)
    return color, geometry


def draw(shape, seed, noncontig=False):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 0.7 + 0.2
    if noncontig:  # same values, transposed storage
        x = x.transpose(2, 3).contiguous().transpose(2, 3)
    return x


def augment_with_grads(x, color, geometry, backend):
    x = x.detach().requires_grad_()
    if backend == "reference":
        y = ref.diffaugment(x, color, geometry)
    else:
        y = ops.diffaugment(x, color, geometry, backend)
    up = torch.randn(y.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64).to(y)
    (y * up).sum().backward()
    return {"out": y, "grad": x.grad}


def cases():
    return [(b, dt, shape) for b in BACKENDS for dt in DTYPES[b] for shape in SHAPES[b]]


@pytest.mark.parametrize("backend,dtype,shape", cases())
@pytest.mark.parametrize("policy", POLICIES)
def test_diffaugment_vs_reference(backend, dtype, shape, policy):
    for seed, p, noncontig, arbitrary in ((0, 1.0, False, False), (1, 0.6, True, False), (2, 1.0, False, True)):
        color, geometry = params(shape, policy, p, seed, arbitrary)
        x64 = draw(shape, seed, noncontig).to(dtype).double()  # the kernel's inputs, exactly
        exact = augment_with_grads(x64, color, geometry, "reference")
        low = exact if dtype == torch.float64 else augment_with_grads(x64.to(dtype), color, geometry, "reference")
        dev = DEVICE[backend]
        x = draw(shape, seed, noncontig).to(dev, dtype)
        if noncontig and shape[2] > 1 and shape[3] > 1:
            assert not x.is_contiguous()
        poison_memory()
        actual = augment_with_grads(x, None if color is None else color.to(dev), geometry.to(dev), backend)
        for name in exact:
            assert actual[name].dtype == dtype and actual[name].shape == x.shape, name
            assert torch.isfinite(actual[name]).all(), name  # every element written
            err = relative_error(actual[name], exact[name])
            tol = 2 * relative_error(low[name], exact[name]) + FLOOR[dtype]
            assert err <= tol, (name, seed, err, tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unaugmented_samples_are_exact(backend):
    """A sample drawn as not augmented (p = 0 as a tensor, so no shortcut) comes back bit for bit, and so
    does its gradient."""
    shape = (4, 3, 9, 7)
    dev = DEVICE[backend]
    color, geometry = params(shape, "color,translation,cutout", torch.tensor(0.0), 0)
    x = draw(shape, 3).float().to(dev).requires_grad_()
    y = ops.diffaugment(x, color.to(dev), geometry.to(dev), backend)
    up = torch.randn(shape).to(dev)
    (y * up).sum().backward()
    assert torch.equal(y, x) and torch.equal(x.grad, up)


@pytest.mark.skipif("cpu" not in BACKENDS, reason="no ganfast._C")
@pytest.mark.parametrize("policy", POLICIES)
def test_cpu_gradients_of_every_order(policy):
    """gradcheck and gradgradcheck in fp64: the backward is the exact transpose, and its own backward
    (the forward's linear part) is right too."""
    shape = (2, 3, 5, 6)
    color, geometry = params(shape, policy, 1.0, 4)
    x = draw(shape, 5).requires_grad_()

    def fn(t):
        return ops.diffaugment(t, color, geometry, "cpu")

    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.skipif("cpu" not in BACKENDS, reason="no ganfast._C")
def test_cpu_kernel_on_every_capability(capability):
    shape = (3, 3, 17, 19)  # rows longer than one vector and a partial tail, on each copy
    color, geometry = params(shape, "color,translation,cutout", 0.8, 6)
    x = draw(shape, 7).float()
    exact = augment_with_grads(x.double(), color, geometry, "reference")
    actual = augment_with_grads(x, color, geometry, "cpu")
    for name in exact:
        assert relative_error(actual[name], exact[name]) < 1e-5, name


@pytest.mark.skipif("cpu" not in BACKENDS, reason="no ganfast._C")
def test_cpu_kernel_is_deterministic_across_threads():
    shape = (16, 3, 32, 32)
    color, geometry = params(shape, "color,translation,cutout", 1.0, 8)
    x = draw(shape, 9).float()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = augment_with_grads(x, color, geometry, "cpu")
        torch.set_num_threads(max(2, threads))
        many = augment_with_grads(x, color, geometry, "cpu")
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(one[k], many[k]) for k in one)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kernels_reject_bad_parameters(backend):
    dev = DEVICE[backend]
    x = torch.randn(2, 3, 4, 4, device=dev)
    geometry = torch.zeros(2, 6, dtype=torch.int32, device=dev)
    with pytest.raises((RuntimeError, ValueError), match="geometry"):
        ops.diffaugment(x, None, geometry.long(), backend)
    with pytest.raises((RuntimeError, ValueError), match="color"):
        ops.diffaugment(x, torch.zeros(2, 2, device=dev), geometry, backend)
    with pytest.raises((RuntimeError, ValueError), match=r"\(B, C, H, W\)"):
        ops.diffaugment(x[0], None, geometry, backend)


@pytest.mark.skipif("triton" not in BACKENDS, reason="triton is not available on CPU tensors here")
def test_triton_rejects_fp64():
    with pytest.raises(TypeError, match="float64"):
        ops.diffaugment(torch.ones(2, 3, 4, 4, dtype=torch.float64, device=DEVICE["triton"]), None,
                        torch.zeros(2, 6, dtype=torch.int32, device=DEVICE["triton"]), "triton")
