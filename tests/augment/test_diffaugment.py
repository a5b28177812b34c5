"""ganfast.augment.diffaugment, the public function: policies and their errors, p, the draw (ranges,
reproducibility, backend independence), the identity at p = 0, and torch.compile."""
import pytest
import torch

from ganfast import augment, backends
from ganfast.reference import augment as ref

from ..conftest import kernel_backends

BACKENDS = ["reference"] + [b for b, d in kernel_backends() if d == "cpu"]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("policy,expected", [
    ("color,translation,cutout", ("color", "translation", "cutout")),
    ("cutout, color", ("color", "cutout")),
    ("translation", ("translation",)),
])
def test_parse_policy(policy, expected):
    assert augment.parse_policy(policy) == expected


@pytest.mark.parametrize("policy,match", [
    ("colour", "unknown augmentation 'colour'"), ("color,,cutout", "empty entry"), ("", "empty entry"),
    ("cutout,cutout", "more than once"), ("rotate,color", "choose from color, translation, cutout"),
])
def test_bad_policy_is_named(policy, match):
    with pytest.raises(ValueError, match=match):
        augment.diffaugment(torch.randn(2, 3, 4, 4), policy)


def test_bad_inputs_are_named():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(TypeError, match="policy must be a string"):
        augment.diffaugment(x, ["color"])
    with pytest.raises(ValueError, match=r"probability in \[0, 1\], got 1.5"):
        augment.diffaugment(x, p=1.5)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        augment.diffaugment(x[0])
    with pytest.raises(TypeError, match="floating point"):
        augment.diffaugment(x.long())
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        augment.diffaugment(x, backend="fast")


def test_p_zero_is_the_identity():
    x = torch.randn(4, 3, 8, 8, requires_grad=True)
    g = gen()
    state = g.get_state()
    assert augment.diffaugment(x, p=0.0, generator=g) is x
    assert torch.equal(g.get_state(), state)  # nothing drawn: cheap


def test_draw_ranges_match_diffaugment():
    b, h, w = 4000, 32, 24
    color, geometry = augment.draw_params(b, h, w, "color,translation,cutout", 1.0,
                                          lambda s: torch.rand(s, generator=gen(1)))
    beta, sat, con = color.unbind(1)
    assert beta.min() >= -0.5 and beta.max() < 0.5 and sat.min() >= 0 and sat.max() < 2
    assert con.min() >= 0.5 and con.max() < 1.5
    dy, dx, y0, y1, x0, x1 = geometry.long().unbind(1)
    assert set(dy.tolist()) == set(range(-4, 5)) and set(dx.tolist()) == set(range(-3, 4))  # 1/8 of 32, 24
    assert (y0 >= 0).all() and (y1 <= h).all() and (x0 >= 0).all() and (x1 <= w).all()
    inner = (y0 > 0) & (y1 < h)
    assert ((y1 - y0)[inner] == 16).all() and (y1 - y0).min() >= 8  # half-size square, clipped at the border
    assert (((x1 - x0)[(x0 > 0) & (x1 < w)]) == 12).all()


def test_p_selects_samples():
    b = 20000
    color, geometry = augment.draw_params(b, 16, 16, "color,translation,cutout", 0.3,
                                          lambda s: torch.rand(s, generator=gen(2)))
    untouched = (color == torch.tensor([0.0, 1.0, 1.0])).all(1) & (geometry == 0).all(1)
    assert abs(untouched.float().mean().item() - 0.7) < 0.02


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_generator_state_same_augmentation(backend):
    x = torch.randn(5, 3, 12, 12)
    a = augment.diffaugment(x, p=0.7, generator=gen(3), backend=backend)
    b = augment.diffaugment(x, p=0.7, generator=gen(3), backend=backend)
    c = augment.diffaugment(x, p=0.7, generator=gen(4), backend=backend)
    assert torch.equal(a, b) and not torch.equal(a, c)
    expected = augment.diffaugment(x.double(), p=0.7, generator=gen(3), backend="reference")
    torch.testing.assert_close(a.double(), expected, rtol=1e-5, atol=1e-5)  # the same draw on every backend


def test_reference_is_diffaugment():
    """The reference on drawn parameters equals DiffAugment's transforms written out for one sample."""
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    color = torch.tensor([[0.3, 1.4, 0.7]])
    geometry = torch.tensor([[1, -2, 5, 9, -1, 3]], dtype=torch.int32)  # box partly outside
    y = x + 0.3
    y = (y - y.mean(1, keepdim=True)) * 1.4 + y.mean(1, keepdim=True)
    y = (y - y.mean()) * 0.7 + y.mean()
    shifted = torch.zeros_like(y)
    shifted[:, :, :7, 2:] = y[:, :, 1:, :6]  # out[i, j] = y[i + 1, j - 2]
    shifted[:, :, 5:, :3] = 0
    torch.testing.assert_close(ref.diffaugment(x, color, geometry), shifted)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"])
def test_compile_fullgraph(backend):
    torch._dynamo.reset()
    x = torch.randn(3, 3, 8, 8, requires_grad=True)
    color, geometry = augment.draw_params(3, 8, 8, "color,translation,cutout", 1.0,
                                          lambda s: torch.rand(s, generator=gen(5)))

    def f(t):
        return (augment.apply_params(t, color, geometry) ** 2).sum()

    with backends.use_backend(backend):
        eager = f(x)
        (g_eager,) = torch.autograd.grad(eager, x)
        compiled = torch.compile(f, fullgraph=True, backend="aot_eager")(x)
        (g_compiled,) = torch.autograd.grad(compiled, x)
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(g_compiled, g_eager)
