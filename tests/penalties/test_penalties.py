"""Gradient penalties: gradients w.r.t. D's parameters against a plain double backward written here,
per-sample α, shared forward, lazy regularization, AMP, bad input."""
import numpy as np
import pytest
import torch
import torch.nn as nn

import ganfast
from ganfast import backends, penalties

KERNEL_BACKENDS = [b for b in ("reference", "cpu") if backends.status(b).available]
PENALTIES = ("wgan_gp", "wgan_gp_one_sided", "r1", "r2", "dragan")


def mlp():
    return nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 16), nn.Softplus(), nn.Linear(16, 1))


def conv():
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(4, 6, 3, stride=2),
                         nn.Tanh(), nn.Flatten(), nn.Linear(6, 1))


def patch():  # output (B, 1, 3, 3): the penalty differentiates its per-sample sum
    return nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.SiLU(), nn.Conv2d(5, 1, 3, stride=2))


NETS = {"mlp": (mlp, (2,)), "conv": (conv, (3, 7, 7)), "patch": (patch, (3, 7, 7))}


def data(net, dtype, b=5, seed=0):
    make, shape = NETS[net]
    torch.manual_seed(seed)
    D = make().to(dtype)
    g = torch.Generator().manual_seed(seed + 1)
    real = torch.randn((b,) + shape, generator=g, dtype=torch.float64).to(dtype)
    fake = torch.randn((b,) + shape, generator=g, dtype=torch.float64).to(dtype)
    alpha = torch.rand(b, generator=g, dtype=torch.float64).to(dtype)
    noise = torch.rand((b,) + shape, generator=g, dtype=torch.float64).to(dtype)
    return D, real, fake, alpha, noise


def plain_penalty(name, D, real, fake, alpha, noise, center=1.0):
    """The textbook double backward, with nothing from ganfast."""
    a = alpha.view((-1,) + (1,) * (real.dim() - 1))
    if name.startswith("wgan_gp"):
        x = a * real + (1 - a) * fake
    elif name == "dragan":
        x = a * real + (1 - a) * (real + 0.5 * real.std() * noise)
    else:
        x = real if name == "r1" else fake
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(D(x).sum(), x, create_graph=True)
    sq = g.flatten(1).pow(2).sum(1)
    n = torch.sqrt(sq + 1e-12)
    if name == "wgan_gp_norms":
        return n
    if name == "wgan_gp":
        return 10.0 * ((n - 1) ** 2).mean()
    if name == "wgan_gp_one_sided":
        return 10.0 * (torch.relu(n - center) ** 2).mean()
    if name == "dragan":
        return 10.0 * ((n - 1) ** 2).mean()
    return 5.0 * sq.mean()  # gamma / 2 with gamma = 10


def ganfast_penalty(name, D, real, fake, alpha, noise, center=1.0, **kw):
    if name == "wgan_gp":
        return penalties.wgan_gp(D, real, fake, alpha=alpha, **kw)
    if name == "wgan_gp_one_sided":
        return penalties.wgan_gp(D, real, fake, one_sided=True, center=center, alpha=alpha, **kw)
    if name == "r1":
        return penalties.r1(D, real, **kw)
    if name == "r2":
        return penalties.r2(D, fake, **kw)
    return penalties.dragan(D, real, alpha=alpha, noise=noise, **kw)


def pgrads(out, params):
    """d out / d params, zeros where a parameter does not reach the penalty (the last bias)."""
    gs = torch.autograd.grad(out, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs)]


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("net", list(NETS))
@pytest.mark.parametrize("name", PENALTIES)
def test_param_grads_match_plain_double_backward(name, net, dtype, tol, backend):
    D, real, fake, alpha, noise = data(net, dtype)
    # one-sided: a center that puts some norms on each side
    center = plain_penalty("wgan_gp_norms", D, real, fake, alpha, noise).median().item() if "one_sided" in name else 1.0
    params = list(D.parameters())
    expected = plain_penalty(name, D, real, fake, alpha, noise, center)
    exp_grads = pgrads(expected * 1.7, params)  # random-ish upstream gradient
    with ganfast.use_backend(backend):
        got = ganfast_penalty(name, D, real, fake, alpha, noise, center)
    got_grads = pgrads(got * 1.7, params)
    assert got.shape == () and got.requires_grad
    assert rel(got, expected) <= tol
    if name == "wgan_gp_one_sided":
        assert expected.item() > 0
    for a, e in zip(got_grads, exp_grads):
        assert torch.isfinite(a).all()
        if e.abs().max() > 0:
            assert rel(a, e) <= tol
        else:
            assert torch.equal(a, e)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("name", ["wgan_gp", "dragan"])
def test_per_sample_alpha(name, backend):
    """Changing sample k's α changes only sample k's term (and only row k of g)."""
    D, real, fake, alpha, noise = data("conv", torch.float64, b=6)
    k, b = 3, real.shape[0]
    alpha2 = alpha.clone()
    alpha2[k] = 0.9 if alpha[k] < 0.5 else 0.1
    with ganfast.use_backend(backend):
        p1, g1 = ganfast_penalty(name, D, real, fake, alpha, noise, return_grads=True)
        p2, g2 = ganfast_penalty(name, D, real, fake, alpha2, noise, return_grads=True)
        if name == "dragan":  # std is over the whole batch: single-sample terms need that std
            one = None
        else:
            t1 = penalties.wgan_gp(D, real[k:k + 1], fake[k:k + 1], alpha=alpha[k:k + 1])
            t2 = penalties.wgan_gp(D, real[k:k + 1], fake[k:k + 1], alpha=alpha2[k:k + 1])
            one = (t2 - t1).item()
    rows = (g1 - g2).flatten(1).abs().amax(1)
    assert rows[k] > 0
    assert torch.equal(torch.cat([rows[:k], rows[k + 1:]]), torch.zeros(b - 1, dtype=rows.dtype))
    assert (p1 - p2).abs().item() > 0
    if one is not None:
        assert abs(b * (p2 - p1).item() - one) <= 1e-10 * max(abs(one), 1.0)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("which", ["r1", "r2"])
def test_shared_forward_equals_separate(which, backend):
    D, real, fake, _, _ = data("patch", torch.float64)
    params = list(D.parameters())
    x = (real if which == "r1" else fake).detach().requires_grad_()
    with ganfast.use_backend(backend):
        logits = D(x)
        fn = penalties.r1_from_logits if which == "r1" else penalties.r2_from_logits
        shared, g_shared = fn(logits, x, 10.0, return_grads=True)
        total = logits.mean() + shared  # the loss still backprops through the same logits
        grads_shared = pgrads(total, params)
        separate, g_sep = getattr(penalties, which)(D, real if which == "r1" else fake, 10.0, return_grads=True)
        grads_sep = pgrads(D(x.detach()).mean() + separate, params)
    assert rel(shared, separate) <= 1e-12
    assert rel(g_shared, g_sep) <= 1e-12
    for a, e in zip(grads_shared, grads_sep):
        assert rel(a, e) <= 1e-10


def test_return_grads_is_input_gradient():
    D, real, *_ = data("mlp", torch.float64)
    x = real.clone().requires_grad_()
    (expected,) = torch.autograd.grad(D(x).sum(), x)
    _, g = penalties.r1(D, real, return_grads=True)
    assert not g.requires_grad and g.shape == real.shape
    assert rel(g, expected) <= 1e-12
    _, g_scaled = penalties.r1(D, real, return_grads=True, scaler=1024.0)  # returned unscaled
    assert rel(g_scaled, expected) <= 1e-12


def test_lazy_regularizer():
    lazy = penalties.LazyRegularizer(interval=16)
    assert [s for s in range(40) if lazy.due(s)] == [0, 16, 32]
    calls = []

    def fn():
        calls.append(1)
        return torch.tensor(2.0)

    assert lazy(0, fn).item() == 32.0 and lazy(1, fn) is None and len(calls) == 1
    assert lazy.scale(torch.tensor(0.5)).item() == 8.0
    c = 16 / 17
    assert lazy.c == pytest.approx(c)
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=2e-3, betas=(0.0, 0.99))
    lazy.adjust_optimizer(opt)
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-3 * c)
    assert opt.param_groups[0]["betas"] == pytest.approx((0.0, 0.99 ** c))
    with pytest.raises(RuntimeError, match="already adjusted"):
        lazy.adjust_optimizer(opt)
    assert penalties.LazyRegularizer(1).c == 1.0
    with pytest.raises(ValueError, match="positive integer"):
        penalties.LazyRegularizer(0)


def test_lazy_scaling_of_gradients():
    D, real, *_ = data("mlp", torch.float64)
    lazy = penalties.LazyRegularizer(4)
    params = list(D.parameters())
    g_lazy = pgrads(lazy(8, lambda: penalties.r1(D, real)), params)
    g_plain = pgrads(penalties.r1(D, real), params)
    for a, e in zip(g_lazy, g_plain):
        assert rel(a, 4 * e) <= 1e-12


class FakeScaler:  # the part of torch.amp.GradScaler the penalties use
    def get_scale(self):
        return 65536.0


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("name", PENALTIES)
def test_amp_bf16_autocast_with_scale(name, backend):
    D, real, fake, alpha, noise = data("conv", torch.float32)
    params = list(D.parameters())
    expected = plain_penalty(name, D, real, fake, alpha, noise)
    exp_grads = pgrads(expected, params)
    with ganfast.use_backend(backend), torch.autocast("cpu", dtype=torch.bfloat16):
        got = ganfast_penalty(name, D, real, fake, alpha, noise, scaler=FakeScaler())
    # the outer scaler.scale(loss).backward() of the AMP recipe
    got_grads = pgrads(got * 65536.0, params)
    assert torch.isfinite(got) and got.dtype == torch.float32
    assert rel(got, expected) <= 0.1  # bf16 forward/backward through D: loose against fp32
    for a, e in zip(got_grads, exp_grads):
        assert torch.isfinite(a).all()
        if e.abs().max() > 0:
            assert rel(a / 65536.0, e) <= 0.3
    if backend != "reference":  # the kernel within 2x the reference's own AMP error (+ floor)
        with ganfast.use_backend("reference"), torch.autocast("cpu", dtype=torch.bfloat16):
            ref = ganfast_penalty(name, D, real, fake, alpha, noise, scaler=FakeScaler())
        assert rel(got, expected) <= 2 * rel(ref, expected) + 2e-2


def test_amp_unscale_before_norm_in_fp32():
    """A scaled fp16 gradient whose square overflows fp16 still gives the true, finite penalty."""
    from ganfast.reference import penalties as ref

    g = (torch.randn(7, 123, dtype=torch.float64) * 2).to(torch.float16) * 8192  # |g|² ≫ 65504
    backend = backends.resolve(g.device)
    with ganfast.use_backend(backend):
        p, norms = penalties._tail(g, 0, 10.0, 1.0, 1 / 8192)
    exact, _ = ref.penalty_tail(g.double(), 0, 10.0, 1.0, 1 / 8192)
    assert torch.isfinite(p) and torch.isfinite(norms).all()
    assert rel(p, exact) <= 1e-5


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("name", PENALTIES)
def test_zero_gradient_is_finite(name, backend):
    w = nn.Parameter(torch.ones(()))

    def D(x):  # output independent of the values of x: g = 0
        return (x * 0).flatten(1).sum(1) * w + w

    real, fake = torch.randn(4, 3), torch.randn(4, 3)
    with ganfast.use_backend(backend):
        p = ganfast_penalty(name, D, real, fake, torch.rand(4), torch.rand(4, 3))
    (gw,) = torch.autograd.grad(p, [w])
    assert torch.isfinite(p) and torch.isfinite(gw)
    expected = 0.0 if name in ("r1", "r2", "wgan_gp_one_sided") else 10.0 * (1e-6 - 1) ** 2
    assert p.item() == pytest.approx(expected, rel=1e-6, abs=1e-12)


def test_second_derivative_refused_by_kernels():
    if "cpu" not in KERNEL_BACKENDS:
        pytest.skip("cpu backend not built")
    D, real, *_ = data("mlp", torch.float64)
    with ganfast.use_backend("cpu"):
        p = penalties.r1(D, real)
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad(p, list(D.parameters()), create_graph=True)


# --- bad input ----------------------------------------------------------------------------------

def test_bad_input():
    D = mlp().double()
    real = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="shapes differ"):
        penalties.wgan_gp(D, real, torch.randn(5, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match="float32"):
        penalties.wgan_gp(D, real, real.float())
    with pytest.raises(ValueError, match="meta"):
        penalties.wgan_gp(D, real, torch.empty(4, 2, dtype=torch.float64, device="meta"))
    with pytest.raises(ValueError, match=r"alpha must have shape \(B,\)"):
        penalties.wgan_gp(D, real, real, alpha=torch.rand(4, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"alpha must have shape"):
        penalties.dragan(D, real, alpha=torch.rand(3))
    with pytest.raises(ValueError, match="empty"):
        penalties.r1(D, real[:0])
    with pytest.raises(TypeError, match="floating point"):
        penalties.r1(D, torch.ones(4, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="floating point"):
        penalties.wgan_gp(D, torch.ones(4, 2, dtype=torch.int32), torch.ones(4, 2, dtype=torch.int32))
    with pytest.raises(ValueError, match="noise"):
        penalties.dragan(D, real, noise=torch.rand(4, 3, dtype=torch.float64))
    w = nn.Parameter(torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="does not depend on its input"):
        penalties.r1(lambda x: w * 2, real)
    with pytest.raises(ValueError, match="does not require grad"):
        penalties.r1(lambda x: x.detach().sum(1), real)
    with pytest.raises(ValueError, match="requires_grad_"):
        penalties.r1_from_logits(D(real), real)
    with pytest.raises(ValueError, match="batch dimension first"):
        penalties.r1(lambda x: D(x).sum(), real)
    with pytest.raises(ValueError, match="finite positive"):
        penalties.r1(D, real, scaler=0.0)
    # a negative weight would reward steep gradients: refused like the trainer's penalty_weight
    for call, match in [(lambda: penalties.r1(D, real, gamma=-1.0), "gamma must be a finite number >= 0, got -1.0"),
                        (lambda: penalties.r2(D, real, gamma=float("nan")), "gamma must be a finite number >= 0"),
                        (lambda: penalties.r1_from_logits(D(real), real.requires_grad_(), gamma="10"), "gamma must"),
                        (lambda: penalties.wgan_gp(D, real, real, weight=-10), "weight must be a finite number >= 0"),
                        (lambda: penalties.dragan(D, real, c=-0.5), "c must be a finite number >= 0")]:
        with pytest.raises(ValueError, match=match):
            call()
    assert penalties.r1(D, real, gamma=np.float32(0.0)).item() == 0.0  # numpy numbers are numbers


def test_op_level_checks():
    if "cpu" not in KERNEL_BACKENDS:
        pytest.skip("cpu backend not built")
    op = torch.ops.ganfast.grad_penalty_fused
    with pytest.raises(RuntimeError, match="B = 0"):
        op(torch.empty(0, 3), 0, 1.0, 1.0, 1.0)
    with pytest.raises(RuntimeError, match="floating point"):
        op(torch.ones(2, 3, dtype=torch.int32), 0, 1.0, 1.0, 1.0)
    with pytest.raises(RuntimeError, match="unknown kind"):
        op(torch.ones(2, 3), 5, 1.0, 1.0, 1.0)
    interp = torch.ops.ganfast.gp_interpolate
    with pytest.raises(RuntimeError, match="alpha must have shape"):
        interp(torch.ones(2, 3), torch.ones(2, 3), torch.ones(3), False, 0.0)
    with pytest.raises(RuntimeError, match="shapes differ"):
        interp(torch.ones(2, 3), torch.ones(2, 4), torch.ones(2), False, 0.0)
