"""ganfast.nn.spectral_norm against torch.nn.utils.parametrizations.spectral_norm itself."""
import contextlib
import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations as P
from torch.nn.utils import spectral_norm as old_spectral_norm

import ganfast
from ganfast.nn import apply_spectral_norm, remove_spectral_norm, sn_step, spectral_norm, spectral_norms

from .sn_helpers import ALL_BACKENDS, RecordOps, check_eager_entry_declines, need

MAKERS = {
    "linear": lambda: nn.Linear(13, 7),
    "conv2d": lambda: nn.Conv2d(3, 5, 3),
    "convT2d": lambda: nn.ConvTranspose2d(5, 6, 3),  # dim=1
    "embedding": lambda: nn.Embedding(11, 6),
}
INPUTS = {
    "linear": lambda g: torch.randn(4, 13, generator=g),
    "conv2d": lambda g: torch.randn(2, 3, 7, 6, generator=g),
    "convT2d": lambda g: torch.randn(2, 5, 4, 5, generator=g),
    "embedding": lambda g: torch.randint(0, 11, (9,), generator=g),
}


def pair(kind, **kw):
    torch.manual_seed(0)
    ref = P.spectral_norm(MAKERS[kind](), **kw)
    torch.manual_seed(0)
    ours = spectral_norm(MAKERS[kind](), **kw)
    return ref, ours


def assert_state_close(ref, ours, atol=2e-6):
    sa, sb = ref.state_dict(), ours.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], rtol=2e-5, atol=atol, msg=k)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("kind", list(MAKERS))
def test_training_steps_match_pytorch(kind, backend):
    need(backend)
    ref, ours = pair(kind)
    assert_state_close(ref, ours, atol=0)  # same draws, same 15 initial iterations
    opt_r = torch.optim.SGD(ref.parameters(), lr=0.1)
    opt_o = torch.optim.SGD(ours.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    with ganfast.use_backend(backend):
        for step in range(4):
            ours.train(step != 2)
            ref.train(step != 2)  # one eval step: no u/v update
            x = INPUTS[kind](g)
            opt_r.zero_grad()
            opt_o.zero_grad()
            out_r, out_o = ref(x), ours(x)
            up = torch.randn(out_r.shape, generator=g)  # a random upstream gradient
            (out_r * up).sum().backward()
            (out_o * up).sum().backward()
            torch.testing.assert_close(out_o, out_r, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(ours.parametrizations.weight.original.grad,
                                       ref.parametrizations.weight.original.grad, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(ours.weight, ref.weight, rtol=1e-5, atol=1e-6)
            opt_r.step()
            opt_o.step()
            assert_state_close(ref, ours)


def test_dim_and_options_match_pytorch():
    ref, ours = pair("conv2d", dim=1, n_power_iterations=3, eps=1e-6)
    for _ in range(2):
        torch.testing.assert_close(ours.weight, ref.weight, rtol=1e-5, atol=1e-6)
    assert_state_close(ref, ours)
    assert ours.parametrizations.weight[0].dim == 1


def test_vector_weight_is_normalized_like_pytorch():
    torch.manual_seed(0)
    m = nn.Module()
    m.weight = nn.Parameter(torch.randn(9))
    ref = P.spectral_norm(copy.deepcopy(m))
    ours = spectral_norm(m)
    torch.testing.assert_close(ours.weight, ref.weight)
    assert list(ours.state_dict()) == list(ref.state_dict())
    torch.testing.assert_close(spectral_norms(ours)[""], torch.linalg.vector_norm(m.parametrizations.weight.original))


def test_loads_pytorch_state_dicts_both_formats():
    torch.manual_seed(0)
    new = P.spectral_norm(nn.Linear(13, 7))
    old = old_spectral_norm(nn.Linear(13, 7))
    for _ in range(2):
        new(torch.randn(2, 13))
        old(torch.randn(2, 13))
    for src in (new, old):
        ours = spectral_norm(nn.Linear(13, 7))
        ours.load_state_dict(src.state_dict())  # strict
        ours.eval()
        src.eval()
        torch.testing.assert_close(ours.weight, src.weight, rtol=1e-5, atol=1e-6)
    # nested: the pre-hook renames keys under any prefix
    model = nn.Sequential(nn.Linear(13, 7))
    spectral_norm(model[0])
    model.load_state_dict(nn.Sequential(old).state_dict())
    torch.testing.assert_close(model[0].parametrizations.weight.original, old.weight_orig)


def _torch_normalized(kind, style, **kw):
    torch.manual_seed(0)
    return (P.spectral_norm if style == "parametrize" else old_spectral_norm)(MAKERS[kind](), **kw)


def _original(m):
    """The Parameter before normalization, under either of PyTorch's spectral norms or ganfast's
    (read without computing W / sigma, which would iterate once more in training)."""
    plists = m._modules.get("parametrizations")
    return plists.weight.original if plists is not None else m.weight_orig


@pytest.mark.parametrize("style", ["parametrize", "hooks"])
@pytest.mark.parametrize("kind, options", [("linear", {}), ("conv2d", dict(n_power_iterations=3, eps=1e-6)),
                                           ("convT2d", {}), ("embedding", dict(dim=1))])
def test_pytorchs_spectral_norm_is_replaced_and_goes_on_with_the_same_numbers(kind, options, style):
    """apply_spectral_norm (and Trainer(spectral_norm=True)) on a model that PyTorch normalized:
    ganfast's spectral norm takes the place of PyTorch's (not a second one on top) with its settings,
    u, v and Parameter object, and training goes on with the same W / sigma, u, v and gradients.
    The hook-based one updates v before u (the parametrization, and ganfast, u first) and starts
    without warm-up iterations: the same sigma once converged, so both models first iterate 50 times."""
    ref = _torch_normalized(kind, style, **options)
    ours = _torch_normalized(kind, style, **options)
    if style == "hooks":
        with torch.no_grad():
            for m in (ref, ours):
                for _ in range(50):
                    m(INPUTS[kind](torch.Generator().manual_seed(0)))
    original = _original(ours)
    keys = list(ours.state_dict())
    apply_spectral_norm(ours, n_power_iterations=5, eps=1e-3)  # the layer keeps its own settings
    plist = ours.parametrizations.weight
    assert len(plist) == 1 and isinstance(plist[0], ganfast.nn.SpectralNorm)
    assert plist.original is original  # an optimizer built before keeps working
    assert (plist[0].n_power_iterations, plist[0].eps) == (options.get("n_power_iterations", 1),
                                                           options.get("eps", 1e-12))
    if style == "parametrize":
        assert list(ours.state_dict()) == keys
    else:  # the old format's state_dicts still load
        ours.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(1)
    for step in range(3):
        ref.train(step != 1)
        ours.train(step != 1)
        x = INPUTS[kind](g)
        out_r, out_o = ref(x), ours(x)
        up = torch.randn(out_r.shape, generator=g)
        (out_r * up).sum().backward()
        (out_o * up).sum().backward()
        torch.testing.assert_close(out_o, out_r, rtol=1e-5, atol=1e-5)
        # the hook-based layers agree as far as their converged iterations do
        tol = dict(rtol=1e-4, atol=1e-5) if style == "parametrize" else dict(rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(original.grad, _original(ref).grad, **tol)
    u_r = ref.parametrizations.weight[0]._u if style == "parametrize" else ref.weight_u
    torch.testing.assert_close(plist[0]._u, u_r, **tol)


def test_the_trainer_replaces_pytorchs_spectral_norm_instead_of_stacking_a_second():
    torch.manual_seed(0)
    G = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    D = nn.Sequential(P.spectral_norm(nn.Linear(2, 8)), nn.LeakyReLU(0.2), old_spectral_norm(nn.Linear(8, 1)))
    g_opt, d_opt = torch.optim.Adam(G.parameters()), torch.optim.Adam(D.parameters())
    params = [p for group in d_opt.param_groups for p in group["params"]]
    t = ganfast.Trainer(G, D, g_opt, d_opt, spectral_norm=True, seed=0)
    t.step(torch.randn(16, 2))
    for layer in (D[0], D[2]):
        plist = layer.parametrizations.weight
        assert len(plist) == 1 and isinstance(plist[0], ganfast.nn.SpectralNorm)
        assert any(p is plist.original for p in params)
        assert plist.original.grad is not None
    assert not hasattr(D[2], "weight_orig") and not D[2]._forward_pre_hooks


def test_bad_input_errors():
    with pytest.raises(ValueError, match="no parameter or buffer with name 'kernel'"):
        spectral_norm(nn.Linear(3, 4), name="kernel")
    with pytest.raises(ValueError, match="already spectral-normalized by torch.nn.utils.spectral_norm"):
        spectral_norm(old_spectral_norm(nn.Linear(3, 4)))
    with pytest.raises(ValueError, match="zero dimension"):
        spectral_norm(nn.Linear(0, 4))
    with pytest.raises(IndexError, match="Dimension out of range"):
        spectral_norm(nn.Linear(3, 4), dim=2)
    with pytest.raises(ValueError, match="n_power_iterations"):
        spectral_norm(nn.Linear(3, 4), n_power_iterations=0)
    for eps in (0.0, -1e-12, float("nan")):  # refused at the forward by the kernels before; now at registration
        with pytest.raises(ValueError, match="eps must be > 0"):
            spectral_norm(nn.Linear(3, 4), eps=eps)
    with pytest.raises(ValueError, match="not spectral-normalized"):
        remove_spectral_norm(nn.Linear(3, 4))


def test_remove_bakes_weight_without_iteration():
    m = spectral_norm(nn.Linear(13, 7))
    m(torch.randn(2, 13))
    m.eval()
    expected = m.weight.detach().clone()
    m.train()
    remove_spectral_norm(m)
    assert isinstance(m.weight, nn.Parameter) and not hasattr(m, "parametrizations")
    torch.testing.assert_close(m.weight.detach(), expected)
    assert set(m.state_dict()) == {"weight", "bias"}


def test_apply_and_spectral_norms():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LeakyReLU(), nn.ConvTranspose2d(4, 2, 3), nn.Flatten(),
                          nn.Linear(2 * 8 * 8, 1))
    assert apply_spectral_norm(model) is model
    assert model[2].parametrizations.weight[0].dim == 1
    apply_spectral_norm(model)  # already normalized layers are skipped
    assert len(model[0].parametrizations.weight) == 1
    model(torch.randn(2, 3, 8, 8))
    sig = spectral_norms(model)
    assert set(sig) == {"0", "2", "4"}
    for name, s in sig.items():
        layer = model[int(name)]
        p = layer.parametrizations.weight
        mat = p.original.detach()
        if p[0].dim:
            mat = mat.transpose(0, p[0].dim)
        mat = mat.reshape(mat.shape[0], -1)
        # sigma of the last forward = u^T M v with the updated u, v
        torch.testing.assert_close(s, torch.dot(p[0]._u, mat @ p[0]._v), rtol=1e-5, atol=1e-6)
    # only the selected types
    m2 = apply_spectral_norm(nn.Sequential(nn.Linear(3, 3), nn.Conv1d(3, 3, 1)), types=(nn.Conv1d,))
    assert not hasattr(m2[0], "parametrizations") and hasattr(m2[1], "parametrizations")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_zero_weight_gives_no_nan(backend):
    need(backend)
    m = spectral_norm(nn.Linear(5, 3))
    with torch.no_grad():
        m.parametrizations.weight.original.zero_()
    with ganfast.use_backend(backend):
        w = m.weight
        w.sum().backward()
    assert torch.isfinite(w).all() and (w == 0).all()
    assert torch.isfinite(m.parametrizations.weight.original.grad).all()
    assert torch.isfinite(m.parametrizations.weight[0]._u).all()



def _sigma_max(w):
    return torch.linalg.matrix_norm(w.detach().reshape(w.shape[0], -1).double(), 2).item()


def _gapped(rows, cols):
    """A weight whose singular values 3, 1, 0.5, ... leave 16 power iterations converged to 1e-6
    from any start (a random matrix's top two can lie close enough to need more)."""
    w = torch.zeros(rows, cols)
    for i, s in enumerate([3.0, 1.0, 0.5][:min(rows, cols)]):
        w[i, i] = s
    return w


@pytest.mark.parametrize("style", ["ganfast", "replaced torch"])
def test_a_weight_that_is_zero_at_registration_starts_its_iteration_when_it_moves(style):
    """From an all-zero weight (a zero-initialized embedding, such as conditional batch norm's shifts)
    the power iteration has no direction to start from: PyTorch's gives NaN, and u, v collapsed to 0
    would make W / sigma = W / eps once training moved the weight. The layer waits instead: W (= 0)
    passes with the upstream gradient, and the first forward that finds the weight nonzero runs
    registration's 15 iterations (from kept random vectors; from fresh ones where PyTorch's collapsed)."""
    from torch.nn.utils import parametrizations
    layer = nn.Embedding(3, 8)
    nn.init.zeros_(layer.weight)
    if style == "ganfast":
        spectral_norm(layer)
    else:
        parametrizations.spectral_norm(layer)
        apply_spectral_norm(layer)  # replaces PyTorch's, whose u, v collapsed on the zero weight
    sn = layer.parametrizations.weight[0]
    original = layer.parametrizations.weight.original
    w = layer.weight
    assert torch.equal(w, torch.zeros(3, 8)) and sn._sigma.item() == 0
    upstream = torch.randn(3, 8)
    (w * upstream).sum().backward()
    torch.testing.assert_close(original.grad, upstream)  # not upstream / eps
    with torch.no_grad():
        original.copy_(_gapped(3, 8))
    w = layer.weight
    assert torch.isfinite(w).all() and abs(_sigma_max(w) - 1) < 1e-4  # normalized: 16 iterations on a 3 x 8
    assert sn._u.any() and sn._v.any()
    assert sn._sigma.item() == pytest.approx(_sigma_max(original), rel=1e-4)


def test_a_loaded_state_is_looked_at_once():
    """After load_state_dict the first forward reads the weight once: a zero one (a state saved while
    waiting) waits instead of collapsing u, v; a nonzero one goes on from the loaded u, v unchanged
    (a resume's numbers), unless they had collapsed to 0 (a state of a spectral norm that met a zero
    weight), which are drawn afresh and warmed up."""
    waiting = nn.Linear(4, 3)
    nn.init.zeros_(waiting.weight)
    spectral_norm(waiting)
    fresh = spectral_norm(nn.Linear(4, 3))
    fresh.load_state_dict(waiting.state_dict())  # the saved weight is zero
    assert torch.equal(fresh.weight, torch.zeros(3, 4)) and fresh.parametrizations.weight[0]._u.any()
    with torch.no_grad():
        fresh.parametrizations.weight.original.copy_(_gapped(3, 4))
    assert abs(_sigma_max(fresh.weight) - 1) < 1e-4  # warmed up from the kept vectors
    # a normal state: the loaded u, v go on as they were
    trained = spectral_norm(nn.Linear(4, 3))
    trained.weight  # one training-mode iteration
    state = {k: v.clone() for k, v in trained.state_dict().items()}
    resumed = spectral_norm(nn.Linear(4, 3))
    resumed.load_state_dict(state)
    torch.testing.assert_close(resumed.weight, trained.weight, rtol=0, atol=0)
    # collapsed vectors in a state with a nonzero weight: drawn afresh
    state["parametrizations.weight.0._u"].zero_()
    state["parametrizations.weight.0._v"].zero_()
    state["parametrizations.weight.original"] = _gapped(3, 4)
    broken = spectral_norm(nn.Linear(4, 3))
    broken.load_state_dict(state)
    w = broken.weight
    assert torch.isfinite(w).all() and abs(_sigma_max(w) - 1) < 1e-4

def test_a_generator_with_zero_initialized_normalized_layers_trains():
    """ganfast's class-conditional DCGAN G starts its batch norms' shifts at zero; spectral-normalized
    whole (apply_spectral_norm), it trains in float32 and under fp16 (where W / eps had overflowed to
    NaN on the second step) with the multi-tensor path, its shifts' W / sigma of order 1."""
    models = pytest.importorskip("ganfast.models")
    for amp in (None, "fp16"):
        torch.manual_seed(0)
        G = models.DCGANGenerator(16, 8, 3, 8, num_classes=3)
        D = models.DCGANDiscriminator(8, 3, 8, num_classes=3)
        apply_spectral_norm(G)
        t = ganfast.Trainer(G, D, torch.optim.Adam(G.parameters(), 2e-4, betas=(0.0, 0.99)),
                            torch.optim.Adam(D.parameters(), 2e-4, betas=(0.0, 0.99)), amp=amp, seed=0, num_classes=3)
        x, y = torch.rand(8, 3, 8, 8) * 2 - 1, torch.randint(0, 3, (8,))
        for _ in range(4):
            stats = t.step((x, y))
        assert t.monitor.rollbacks == 0 and all(v == v for k, v in stats.items() if "grad_norm" not in k)
        beta = G.net[1].beta
        assert 0.5 < _sigma_max(beta.weight) < 1.5 and beta.weight.abs().max() < 10


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_weights_keep_fp32_vectors(dtype):
    m = spectral_norm(nn.Linear(13, 7)).to(dtype)
    p = m.parametrizations.weight
    assert p.original.dtype == dtype and p[0]._u.dtype == torch.float32 and p[0]._v.dtype == torch.float32
    with ganfast.use_backend("cpu" if ganfast.backends.status("cpu").available else "reference"):
        w = m.weight
    assert w.dtype == dtype and torch.isfinite(w).all()


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_sn_step_matches_unrolled(backend):
    """Inside sn_step, three calls share one W / sigma; gradients = the same computation by hand."""
    need(backend)
    torch.manual_seed(0)
    model = apply_spectral_norm(nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 1)))
    twin = copy.deepcopy(model)
    xs = [torch.randn(3, 6) for _ in range(3)]
    with ganfast.use_backend(backend):
        with sn_step(model):
            loss = model(xs[0]).sum() - 2 * model(xs[1]).sum() + model(xs[2]).square().sum()
            loss.backward()
        # by hand: one power iteration per layer, then the same W / sigma in all three calls
        ws = [twin[i].weight for i in (0, 2)]  # one forward of each parametrization
        def f(x):
            return torch.nn.functional.linear(torch.tanh(torch.nn.functional.linear(x, ws[0], twin[0].bias)), ws[1],
                                              twin[2].bias)
        (f(xs[0]).sum() - 2 * f(xs[1]).sum() + f(xs[2]).square().sum()).backward()
    for i in (0, 2):
        a, b = model[i].parametrizations.weight, twin[i].parametrizations.weight
        torch.testing.assert_close(a.original.grad, b.original.grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a[0]._u, b[0]._u)  # updated once, not three times
        torch.testing.assert_close(model[i].bias.grad, twin[i].bias.grad, rtol=1e-5, atol=1e-6)
    # leaving the block clears the cache: the next access iterates again
    assert all(p._step_cache is None and not p._in_step for p in model.modules() if hasattr(p, "_step_cache"))
    u0 = model[0].parametrizations.weight[0]._u.clone()
    model(xs[0])
    assert not torch.equal(u0, model[0].parametrizations.weight[0]._u)


def test_sn_step_multi_tensor_matches_lazy():
    """sn_step(multi_tensor=True): all layers in one CPU kernel call; same u, v, sigma and grads."""
    need("cpu")
    torch.manual_seed(0)
    model = apply_spectral_norm(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.ConvTranspose2d(4, 2, 3), nn.Flatten(),
                                              nn.Linear(2 * 7 * 7, 1), nn.Linear(1, 1)))
    model[5].eval()  # one layer in eval mode: its own (n_iter=0) group
    twin = copy.deepcopy(model)
    xs = [torch.randn(2, 3, 7, 7) for _ in range(3)]
    with ganfast.use_backend("cpu"):
        for m, multi in ((model, True), (twin, False)):
            with sn_step(m, multi_tensor=multi):
                if multi:
                    assert all(p._step_cache is not None for p in m.modules() if isinstance(p, ganfast.nn.SpectralNorm))
                loss = m(xs[0]).sum() - m(xs[1]).sum() + m(xs[2]).square().sum()
                loss.backward()
    for (k, a), (_, b) in zip(model.state_dict().items(), twin.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=k)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(spectral_norms(model), spectral_norms(twin))


def _cached_layers(model):
    """The layers sn_step sees: those whose step cache it fills on entry."""
    with sn_step(model, multi_tensor=True):
        return {name for name, m in model.named_modules()
                if isinstance(m, ganfast.nn.SpectralNorm) and m._step_cache is not None}


def test_sn_step_sees_every_change_of_the_models_normalized_layers():
    """sn_step and spectral_norms cache the model's normalized layers; adding, replacing and removing
    layers (ganfast's functions, torch's parametrize, plain assignment) must show at the next step."""
    need("cpu")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4), nn.Linear(4, 1))
    spectral_norm(model[0])
    assert _cached_layers(model) == {"0.parametrizations.weight.0"}
    spectral_norm(model[2])  # added after a step
    assert _cached_layers(model) == {"0.parametrizations.weight.0", "2.parametrizations.weight.0"}
    assert set(spectral_norms(model)) == {"0", "2"}
    P.spectral_norm(model[3])  # torch's own: not ganfast's, not normalized by sn_step
    model[2] = nn.Linear(5, 4)  # replaced by an unnormalized layer
    assert _cached_layers(model) == {"0.parametrizations.weight.0"}
    assert set(spectral_norms(model)) == {"0"}
    model.add_module("4", spectral_norm(nn.Linear(1, 1)))  # a new normalized submodule
    assert set(spectral_norms(model)) == {"0", "4"}
    model.add_module("5", spectral_norm(nn.Linear(1, 1)))
    remove_spectral_norm(model[0])
    assert set(spectral_norms(model)) == {"4", "5"}
    torch.nn.utils.parametrize.remove_parametrizations(model[5], "weight")  # torch's own removal
    assert set(spectral_norms(model)) == {"4"}
    assert _cached_layers(model) == {"4.parametrizations.weight.0"}
    # a copy has its own layers: stepping it leaves the original's alone
    twin = copy.deepcopy(model)
    with sn_step(twin, multi_tensor=True):
        assert twin[4].parametrizations.weight[0]._step_cache is not None
        assert model[4].parametrizations.weight[0]._step_cache is None


def test_sigma_extremes_are_the_largest_and_smallest_layer_sigma():
    need("cpu")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 4).double(), nn.Linear(4, 3))
    assert ganfast.nn.sigma_extremes(model) is None
    apply_spectral_norm(model)
    with torch.no_grad():  # distinct spectral norms: 2, 3 and 0.5 times the layer's
        for m, scale in zip(model, (2.0, 3.0, 0.5)):
            m.parametrizations.weight.original.mul_(scale)
    model[0](torch.randn(2, 6)), model[1](torch.randn(2, 5, dtype=torch.float64)), model[2](torch.randn(2, 4))
    sigmas = [float(s) for s in spectral_norms(model).values()]
    hi, lo = ganfast.nn.sigma_extremes(model)
    assert hi.dtype == lo.dtype == torch.float64 and hi.ndim == lo.ndim == 0
    assert float(hi) == max(sigmas) and float(lo) == min(sigmas)


@pytest.mark.skipif(ganfast.backends.extension_function("spectral_norm_eager") is None, reason="ganfast._C not built")
class TestUpdateEagerEntry:
    """A normalized module's update outside sn_step (ops.spectral_norm_update): ganfast._C.spectral_norm_eager
    for plain eager tensors, torch.ops and a foreach copy for everything else; the same numbers both ways."""

    eager = staticmethod(lambda *a: ganfast.backends.extension_function("spectral_norm_eager")(*a))

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
    @pytest.mark.parametrize("mode", ["train", "train-2-iterations", "eval"])
    @pytest.mark.parametrize("kind", list(MAKERS))
    def test_matches_the_op_and_the_copy(self, kind, mode, dtype, monkeypatch):
        torch.manual_seed(0)
        mine = spectral_norm(MAKERS[kind](), n_power_iterations=2 if mode == "train-2-iterations" else 1).to(dtype)
        theirs = copy.deepcopy(mine)
        for m in (mine, theirs):
            m.train(mode != "eval")
        grad = torch.randn(mine.parametrizations.weight.original.shape).to(dtype)  # (reading .weight updates u)
        outs, entry, calls = [], ganfast.backends.extension_function("spectral_norm_eager"), []
        monkeypatch.setattr(ganfast.backends, "extension_function",
                            lambda name: (lambda *a: calls.append(1) or entry(*a)) if name == "spectral_norm_eager" else None)
        with ganfast.use_backend("cpu"):
            for m in (mine, theirs):
                if m is theirs:  # torch.ops and the foreach copy
                    monkeypatch.setattr(ganfast.backends, "extension_function", lambda name: None)
                for _ in range(2):  # the second step starts from the first's u, v
                    m.parametrizations.weight.original.grad = None
                    w = m.weight
                    w.backward(grad)
                outs.append(w)
        assert len(calls) == 2  # mine went through the entry
        assert outs[0].dtype == outs[1].dtype == dtype and torch.equal(outs[0], outs[1])
        for (name, a), (_, b) in zip(mine.named_buffers(), theirs.named_buffers()):
            assert a.dtype == b.dtype and torch.equal(a, b), name
        assert torch.equal(mine.parametrizations.weight.original.grad, theirs.parametrizations.weight.original.grad)

    def test_errors_come_back_as_python_exceptions(self):
        w, u, v, s = torch.randn(4, 3), torch.randn(4), torch.randn(3), torch.ones(())
        with pytest.raises(RuntimeError, match=r"takes \(weight, u, v, sigma, dim, n_iter, eps\), got 2"):
            self.eager(w, u)
        with pytest.raises(TypeError):
            self.eager(w, u, v, s, "0", 1, 1e-12)
        with pytest.raises(RuntimeError, match="u must have shape"):
            self.eager(w, torch.randn(5), v, s, 0, 1, 1e-12)
        with pytest.raises(RuntimeError, match="out of range"):
            self.eager(w, u, v, s, 2, 1, 1e-12)
        assert s.item() == 1.0  # a refused call wrote nothing

    def test_declines_what_needs_the_dispatcher(self):
        check_eager_entry_declines(lambda w, s=None: self.eager(w, torch.randn(4), torch.randn(3),
                                                                torch.ones(()) if s is None else s, 0, 1, 1e-12))

    def test_a_dispatch_mode_sees_the_op(self):
        torch.manual_seed(0)
        mine = spectral_norm(nn.Linear(5, 7))
        theirs = copy.deepcopy(mine)
        with ganfast.use_backend("cpu"):
            with RecordOps() as mode:
                a = mine.weight
            b = theirs.weight
        assert any("spectral_norm_fused" in name for name in mode.seen), mode.seen
        assert torch.equal(a, b)
        for (name, x), (_, y) in zip(mine.named_buffers(), theirs.named_buffers()):
            assert torch.equal(x, y), name


class _Double(nn.Module):
    """A user's parametrization to stack with ours."""

    def forward(self, w):
        return 2 * w


class TestWeightGetter:
    """Reading a normalized weight: while our SpectralNorm is the tensor's only parametrization, the
    property calls its forward directly; anything nn.Module.__call__ or parametrize would do otherwise
    (hooks, stacking, parametrize.cached(), tracing) goes through parametrize's own getter."""

    @staticmethod
    def count_parametrize_calls(monkeypatch):
        """A list that grows by one at each ParametrizationList.forward (parametrize's getter)."""
        calls, forward = [], torch.nn.utils.parametrize.ParametrizationList.forward
        monkeypatch.setattr(torch.nn.utils.parametrize.ParametrizationList, "forward",
                            lambda self: calls.append(1) or forward(self))
        return calls

    @pytest.mark.parametrize("in_step", [False, True])
    @pytest.mark.parametrize("mode", ["train", "eval"])
    @pytest.mark.parametrize("kind", list(MAKERS))
    def test_same_numbers_as_parametrizes_getter(self, kind, mode, in_step, monkeypatch):
        torch.manual_seed(0)
        mine = spectral_norm(MAKERS[kind]())
        theirs = copy.deepcopy(mine)
        theirs.parametrizations.weight[0].register_forward_pre_hook(lambda *_: None)  # parametrize's getter
        calls = self.count_parametrize_calls(monkeypatch)
        g = torch.Generator().manual_seed(1)
        x = INPUTS[kind](g)
        outs = []
        for m in (mine, theirs):
            m.train(mode == "train")
            n_before = len(calls)
            for _ in range(2):
                with sn_step(m) if in_step else contextlib.nullcontext():
                    y = m(x)
                    y = y + m(x)  # a second read: the step's cache, or a second update outside a step
                y.square().sum().backward()
            outs.append(y)
            if m is mine:
                assert len(calls) == n_before  # the direct call
        assert len(calls) > 0  # theirs through parametrize
        assert torch.equal(outs[0], outs[1])
        for (name, a), (_, b) in zip(mine.named_buffers(), theirs.named_buffers()):
            assert torch.equal(a, b), name
        assert torch.equal(mine.parametrizations.weight.original.grad, theirs.parametrizations.weight.original.grad)

    def test_hooks_and_compiled_call_still_run(self, monkeypatch):
        torch.manual_seed(0)
        lin = spectral_norm(nn.Linear(5, 4))
        sn = lin.parametrizations.weight[0]
        plain = lin.weight.detach().clone()
        lin.eval()  # no power iteration: every read gives the same W / sigma
        handle = sn.register_forward_hook(lambda mod, args, out: out * 3)
        torch.testing.assert_close(lin.weight, 3 * plain)
        handle.remove()
        seen = []
        handle = torch.nn.modules.module.register_module_forward_hook(lambda mod, args, out: seen.append(type(mod)))
        try:
            lin.weight
        finally:
            handle.remove()
        assert type(sn) in seen
        calls = self.count_parametrize_calls(monkeypatch)
        lin.parametrizations.weight.register_forward_pre_hook(lambda *_: None)
        lin.weight
        assert calls == [1]

    def test_stacked_parametrizations_apply_in_order(self):
        torch.manual_seed(0)
        ours_first = spectral_norm(nn.Linear(6, 5)).eval()
        sn_only = ours_first.weight.detach().clone()
        torch.nn.utils.parametrize.register_parametrization(ours_first, "weight", _Double())
        torch.testing.assert_close(ours_first.weight, 2 * sn_only)
        torch.manual_seed(0)
        theirs_first = nn.Linear(6, 5)
        torch.nn.utils.parametrize.register_parametrization(theirs_first, "weight", _Double())
        spectral_norm(theirs_first).eval()
        torch.testing.assert_close(theirs_first.weight, sn_only)  # sigma(2 W) = 2 sigma(W)
        assert len(theirs_first.parametrizations.weight) == 2

    def test_parametrize_cached_keeps_its_cache(self, monkeypatch):
        lin = spectral_norm(nn.Linear(6, 5))
        calls = self.count_parametrize_calls(monkeypatch)
        with torch.nn.utils.parametrize.cached():
            a, b = lin.weight, lin.weight
        assert a is b and calls == [1]
        c = lin.weight  # outside cached(): the direct call, a new tensor
        assert c is not a and calls == [1]

    def test_remove_and_register_again(self, monkeypatch):
        lin = spectral_norm(nn.Linear(6, 5))
        remove_spectral_norm(lin)
        assert type(lin) is nn.Linear and isinstance(lin.weight, nn.Parameter)
        spectral_norm(lin)
        calls = self.count_parametrize_calls(monkeypatch)
        lin.weight
        assert calls == []
        torch.nn.utils.parametrize.remove_parametrizations(lin, "weight", leave_parametrized=False)
        assert isinstance(lin.weight, nn.Parameter)

    @pytest.mark.filterwarnings("ignore:`torch.jit.trace")
    def test_jit_trace_goes_through_parametrize(self, monkeypatch):
        lin = spectral_norm(nn.Linear(6, 5)).eval()
        calls = self.count_parametrize_calls(monkeypatch)
        traced = torch.jit.trace(lin, torch.randn(2, 6), check_trace=False)
        assert calls and torch.allclose(traced(torch.ones(1, 6)), lin(torch.ones(1, 6)))
