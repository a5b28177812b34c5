"""Trainer.step: float64 equivalence with a hand-written PyTorch loop, stats, spectral norm once per
step, EMA, AMP, sampling, and the bad-input errors."""
import copy
import math
import importlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ganfast
from trainer_models import adam_pair, mlp_pair, points

# --- the plain-PyTorch loop, written out by hand --------------------------------------------------


def hand_d_loss(r, f, kind):
    if kind == "ns":
        return F.softplus(-r).mean() + F.softplus(f).mean()
    if kind == "hinge":
        return F.relu(1 - r).mean() + F.relu(1 + f).mean()
    if kind == "wasserstein":
        return -r.mean() + f.mean()
    if kind == "rahinge":
        return F.relu(1 - (r - f.mean())).mean() + F.relu(1 + (f - r.mean())).mean()
    raise AssertionError(kind)


def hand_g_loss(f, kind, r=None):
    if kind == "ns":
        return F.softplus(-f).mean()
    if kind in ("hinge", "wasserstein"):
        return -f.mean()
    if kind == "rahinge":
        return F.relu(1 + (r - f.mean())).mean() + F.relu(1 - (f - r.mean())).mean()
    raise AssertionError(kind)


def hand_loop(G, D, real, steps, *, loss, penalty, weight, interval, d_steps, seed, lr, ema=None,
              grad_clip=None, weight_clip=None):
    """The textbook loop: Adam, D steps on fake.detach(), the G step on the last D step's fake."""
    G, D = copy.deepcopy(G), copy.deepcopy(D)
    ema_g = copy.deepcopy(G) if ema is not None else None
    c = interval / (interval + 1) if penalty and interval > 1 else 1.0  # StyleGAN2's lazy Adam fix
    g_opt = torch.optim.Adam(G.parameters(), lr, betas=(0.5, 0.9))
    d_opt = torch.optim.Adam(D.parameters(), lr * c, betas=(0.5 ** c, 0.9 ** c))
    gen = torch.Generator().manual_seed(seed)
    B, d_count = real.shape[0], 0
    for _ in range(steps):
        for i in range(d_steps):
            z = torch.randn(B, 3, generator=gen, dtype=real.dtype)
            if i == d_steps - 1:
                fake = G(z)
                fake_d = fake.detach()
            else:
                with torch.no_grad():
                    fake_d = G(z)
            d_opt.zero_grad()
            x = real.detach().requires_grad_(penalty == "r1")
            r_logits, f_logits = D(x), D(fake_d)
            total = hand_d_loss(r_logits, f_logits, loss)
            if penalty and d_count % interval == 0:
                if penalty == "r1":
                    (g,) = torch.autograd.grad(r_logits.sum(), x, create_graph=True)
                    pen = weight / 2 * g.pow(2).flatten(1).sum(1).mean()
                elif penalty == "wgan-gp":
                    alpha = torch.rand(B, generator=gen, dtype=real.dtype)
                    xh = (alpha[:, None] * real + (1 - alpha[:, None]) * fake_d).requires_grad_()
                    (g,) = torch.autograd.grad(D(xh).sum(), xh, create_graph=True)
                    n = torch.sqrt(g.pow(2).flatten(1).sum(1) + 1e-12)
                    pen = weight * ((n - 1) ** 2).mean()
                total = total + interval * pen
            d_count += 1
            total.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(D.parameters(), grad_clip[1])
            d_opt.step()
            if weight_clip:
                with torch.no_grad():
                    for p in D.parameters():
                        p.clamp_(-weight_clip, weight_clip)
        g_opt.zero_grad()
        r_logits = D(real).detach() if loss == "rahinge" else None
        hand_g_loss(D(fake), loss, r_logits).backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(G.parameters(), grad_clip[0])
        g_opt.step()
        if ema_g is not None:
            with torch.no_grad():
                for e, p in zip(ema_g.parameters(), G.parameters()):
                    e.copy_(ema * e + (1 - ema) * p)
    return G, D, ema_g


CASES = [
    dict(loss="ns", penalty=None, d_steps=1),
    dict(loss="ns", penalty=None, d_steps=2, ema=0.9, grad_clip=(0.05, 0.02)),
    dict(loss="wasserstein", penalty=None, d_steps=3, weight_clip=0.3),
    dict(loss="rahinge", penalty=None, d_steps=1),
    dict(loss="ns", penalty="r1", d_steps=1, weight=5.0, interval=1),
    dict(loss="ns", penalty="r1", d_steps=2, weight=5.0, interval=3),  # lazy: phase across D steps
    dict(loss="hinge", penalty="wgan-gp", d_steps=2, weight=10.0, interval=1),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_float64_matches_plain_pytorch_loop(case):
    if case["penalty"]:
        pytest.importorskip("ganfast.penalties")
    case = dict(case)
    weight, interval = case.pop("weight", 10.0), case.pop("interval", 1)
    G, D = mlp_pair(dtype=torch.float64)
    real = points(16, torch.float64)
    lr, steps = 1e-2, 6
    hG, hD, hE = hand_loop(G, D, real, steps, weight=weight, interval=interval, seed=123, lr=lr, **case)
    g_opt, d_opt = adam_pair(G, D, lr)
    t = ganfast.Trainer(G, D, g_opt, d_opt, penalty_weight=weight, penalty_interval=interval, seed=123, **case)
    for _ in range(steps):
        stats = t.step(real)
    assert all(isinstance(v, float) for v in stats.values())
    for mine, ref in [(G, hG), (D, hD)] + ([(t.ema_g, hE)] if hE is not None else []):
        for (name, a), b in zip(mine.named_parameters(), ref.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=f"{name} differs")
    # the trajectory moved: the comparison is not between two untouched models
    assert not torch.allclose(next(G.parameters()), next(mlp_pair(dtype=torch.float64)[0].parameters()))


def test_stats_are_plain_floats_with_the_documented_keys():
    G, D = mlp_pair()
    t = ganfast.Trainer(G, D, *adam_pair(G, D), seed=0)
    stats = t.step(points(32))
    assert list(stats) == ["d_loss", "g_loss", "penalty", "real_mean", "fake_mean", "real_acc", "fake_acc",
                           "d_grad_norm", "g_grad_norm"]
    assert all(type(v) is float for v in stats.values())
    assert 0 <= stats["real_acc"] <= 1 and 0 <= stats["fake_acc"] <= 1
    assert stats["d_grad_norm"] > 0 and stats["g_grad_norm"] > 0
    assert t.step(points(32), return_stats=False) is None
    assert t.step_count == 2


def test_stats_match_the_losses_of_the_step():
    G, D = mlp_pair(dtype=torch.float64)
    real = points(16, torch.float64)
    hG, hD, _ = hand_loop(G, D, real, 1, loss="ns", penalty=None, weight=0, interval=1, d_steps=1, seed=5, lr=1e-2)
    # first step's D loss is computed on the initial models: recompute it by hand
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(16, 3, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        fake = G(z)
        expect_d = hand_d_loss(D(real), D(fake), "ns").item()
        expect_real_acc = (D(real) > 0).double().mean().item()
    t = ganfast.Trainer(G, D, *adam_pair(G, D), seed=5)
    stats = t.step(real)
    assert stats["d_loss"] == pytest.approx(expect_d, rel=1e-12)
    assert stats["real_acc"] == pytest.approx(expect_real_acc)


def _sn_disc(dtype=torch.float32):
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(2, 8), nn.LeakyReLU(0.2), nn.Linear(8, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1)).to(dtype)


def test_spectral_norm_is_applied_and_computed_once_per_step(monkeypatch):
    sn = pytest.importorskip("ganfast.nn")
    sn_mod = importlib.import_module("ganfast.nn.spectral_norm")  # the module, not the function
    G, _ = mlp_pair()
    D = _sn_disc()
    t = ganfast.Trainer(G, D, *adam_pair(G, D), spectral_norm=True, d_steps=2, seed=0)
    assert len(sn.spectral_norms(D)) == 3
    calls = []  # one entry per layer computed: one at a time, or all in one multi-tensor call (CPU)
    orig, orig_multi = sn_mod.SpectralNorm._compute, sn_mod._ops.spectral_norm_multi_update
    monkeypatch.setattr(sn_mod.SpectralNorm, "_compute", lambda self, w: calls.append(1) or orig(self, w))
    monkeypatch.setattr(sn_mod._ops, "spectral_norm_multi_update",
                        lambda ws, *a: calls.extend([1] * len(ws)) or orig_multi(ws, *a))
    t.step(points(16))  # first step also runs the input check (D outside sn_step: 3 more)
    calls.clear()
    stats = t.step(points(16))
    # D is called twice per D step (real, fake) and once in the G step: without sn_step that would
    # be 3 layers x 5 calls; with it, once per layer per D step and once in the G step.
    assert len(calls) == 3 * (2 + 1)
    assert "sigma_max" in stats and "sigma_min" in stats
    assert stats["sigma_max"] >= stats["sigma_min"] > 0


def test_spectral_norm_on_the_cpu_is_one_multi_tensor_call_with_the_single_layer_results(monkeypatch):
    """The CPU trainer normalizes D's layers in one multi-tensor call per sn_step; the training is the
    one of the single-layer ops, bitwise."""
    pytest.importorskip("ganfast.nn")
    sn_mod = importlib.import_module("ganfast.nn.spectral_norm")
    trainers = []
    for multi in (True, False):
        torch.manual_seed(0)
        G, _ = mlp_pair()
        D = _sn_disc()
        t = ganfast.Trainer(G, D, *adam_pair(G, D), spectral_norm=True, penalty="r1", seed=0)
        assert t.sn_multi_tensor  # the CPU default
        t.sn_multi_tensor = multi
        trainers.append(t)
    multi_calls = []
    orig_multi = sn_mod._ops.spectral_norm_multi_update
    monkeypatch.setattr(sn_mod._ops, "spectral_norm_multi_update",
                        lambda ws, *a: multi_calls.append(len(ws)) or orig_multi(ws, *a))
    for t in trainers:
        for _ in range(3):
            t.step(points(16))
    assert multi_calls == [3, 3] * 3  # the D step's and the G step's sn_step, 3 layers each
    for a, b in zip(trainers[0].D.state_dict().values(), trainers[1].D.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(trainers[0].G.parameters(), trainers[1].G.parameters()):
        assert torch.equal(a, b)


def test_spectral_norm_with_r1_shares_one_sigma():
    pytest.importorskip("ganfast.nn")
    pytest.importorskip("ganfast.penalties")
    G, _ = mlp_pair()
    D = _sn_disc()
    t = ganfast.Trainer(G, D, *adam_pair(G, D), spectral_norm=True, penalty="r1", seed=0)
    for _ in range(3):
        stats = t.step(points(16))
    assert stats["penalty"] > 0 and all(map(lambda v: v == v, stats.values()))


def test_ema_and_sample():
    G, D = mlp_pair()
    t = ganfast.Trainer(G, D, *adam_pair(G, D), ema=0.5, seed=0)
    assert t.latent_shape == (3,)
    before = [p.clone() for p in t.ema_g.parameters()]
    t.step(points(16))
    for e, b, g in zip(t.ema_g.parameters(), before, G.parameters()):
        torch.testing.assert_close(e, 0.5 * b + 0.5 * g)  # lerp of the old EMA toward the new G
    z = torch.randn(5, 3)
    torch.testing.assert_close(t.sample(5, z=z), t.ema_g(z))
    assert t.sample(7).shape == (7, 2)
    # sampling does not touch the training noise
    s1 = t._gen.get_state()
    t.sample(3)
    assert torch.equal(s1, t._gen.get_state())


@pytest.mark.filterwarnings("ignore:amp=.* on a CPU without native")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_runs_and_keeps_fp32_params(amp):
    G, D = mlp_pair()
    t = ganfast.Trainer(G, D, *adam_pair(G, D), amp=amp, seed=0)
    for _ in range(3):
        stats = t.step(points(16))
    assert all(p.dtype == torch.float32 for p in G.parameters())
    assert all(v == v for v in stats.values())  # no NaN
    assert t.sample(3).dtype == torch.float32  # not autocast's dtype: .numpy() and image writers take it
    if amp == "fp16":
        assert t.d_scaler.is_enabled() and t.state_dict()["d_scaler"]["scale"] > 0



@pytest.mark.filterwarnings("ignore:amp=.* on a CPU without native")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.parametrize("penalty", ["wgan-gp", "wgan-lp", "dragan", "r1", "r2", "r1+r2"])
def test_amp_trains_with_every_penalty(amp, penalty):
    """Under amp, G's output is in autocast's dtype and the data in fp32: WGAN-GP interpolates in the
    data's dtype. Under fp16 the first steps' penalties overflow with the scaled gradients (65536 x
    the output) until the GradScaler has lowered its scale: its skipped updates are not divergence,
    so no rollback and no learning-rate cut."""
    G, D = mlp_pair()
    t = ganfast.Trainer(G, D, *adam_pair(G, D), amp=amp, penalty=penalty, seed=0)
    penalties = [t.step(points(16))["penalty"] for _ in range(12)]
    assert t.monitor.rollbacks == 0 and t.monitor.lr_scale == 1.0 and t.step_count == 12
    assert [o.param_groups[0]["lr"] for o in t.optimizers] == [1e-2, 1e-2]
    assert math.isfinite(penalties[-1]) and (penalties[-1] > 0 or penalty == "wgan-lp" and penalties[-1] == 0)
    if amp == "fp16":
        assert t.d_scaler.get_scale() < 2.0 ** 16  # it overflowed and lowered its scale

@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_on_a_cpu_without_native_support_warns(monkeypatch, amp):
    """PyTorch's reduced-precision convolutions fall back to slow loops on such a CPU: said at construction."""
    import warnings
    from ganfast.train import trainer as trainer_module
    G, D = mlp_pair()
    monkeypatch.setattr(trainer_module, "cpu_runs_natively", lambda a: False)
    with pytest.warns(UserWarning, match=f"amp='{amp}' on a CPU without native {amp} support.*amp=None trains"):
        ganfast.Trainer(G, D, *adam_pair(G, D), amp=amp, seed=0)
    monkeypatch.setattr(trainer_module, "cpu_runs_natively", lambda a: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ganfast.Trainer(G, D, *adam_pair(G, D), amp=amp, seed=0)
        ganfast.Trainer(G, D, *adam_pair(G, D), seed=0)
    assert isinstance(trainer_module.cpu_runs_natively(amp), bool)  # what torch says of this CPU


def test_latent_dim_inference():
    from ganfast.train.probe import infer_latent_shape
    assert infer_latent_shape(nn.Sequential(nn.Linear(7, 3))) == (7,)
    assert infer_latent_shape(nn.Sequential(nn.ConvTranspose2d(16, 4, 4))) == (16, 1, 1)
    assert infer_latent_shape(nn.Sequential(nn.ConvTranspose2d(16, 4, 4)), 16) == (16, 1, 1)
    assert infer_latent_shape(nn.Sequential(nn.Conv2d(3, 4, 3)), (3, 8, 8)) == (3, 8, 8)
    with pytest.raises(ValueError, match="cannot infer the latent size.*Conv2d.*latent_dim="):
        infer_latent_shape(nn.Sequential(nn.Conv2d(3, 4, 3)))


@pytest.mark.parametrize("normalize", ["torch spectral norm", "ganfast spectral norm", "torch weight norm",
                                       "hook spectral norm"])
def test_latent_dim_inference_reads_through_a_normalized_first_layer(normalize):
    """SAGAN / BigGAN normalize G's layers too: a parametrized first layer keeps its weights in a
    submodule (`parametrizations`), and is still the layer that takes z. Its u, v are not touched."""
    from torch.nn.utils import parametrizations
    from ganfast.train.probe import infer_latent_shape
    wrap = {"torch spectral norm": parametrizations.spectral_norm,
            "ganfast spectral norm": lambda m: ganfast.nn.spectral_norm(m, dim=1 if isinstance(m, nn.ConvTranspose2d)
                                                                        else 0),
            "torch weight norm": parametrizations.weight_norm,
            "hook spectral norm": torch.nn.utils.spectral_norm}[normalize]
    for first, want in ((nn.Linear(7, 3), (7,)), (nn.ConvTranspose2d(16, 4, 4), (16, 1, 1))):
        G = nn.Sequential(wrap(first), nn.BatchNorm1d(3) if want == (7,) else nn.BatchNorm2d(4), nn.ReLU())
        before = copy.deepcopy(G.state_dict())
        assert infer_latent_shape(G) == want
        assert infer_latent_shape(G, want[0]) == want
        assert all(torch.equal(before[k], v) for k, v in G.state_dict().items())  # no power iteration ran


def test_dcgan_models_from_ganfast_models():
    models = pytest.importorskip("ganfast.models")
    G, D = models.DCGANGenerator(16, 8, 1, 8), models.DCGANDiscriminator(8, 1, 8)
    t = ganfast.Trainer(G, D, *adam_pair(G, D, 2e-4), loss="hinge", seed=0)
    assert t.latent_shape == (16, 1, 1)
    stats = t.step(torch.rand(4, 1, 8, 8) * 2 - 1)
    assert t.sample(2).shape == (2, 1, 8, 8) and stats["d_loss"] == stats["d_loss"]


# --- bad input -----------------------------------------------------------------------------------

def _trainer(**kw):
    G, D = mlp_pair()
    return ganfast.Trainer(G, D, *adam_pair(G, D), **kw)


@pytest.mark.parametrize("kw, err, match", [
    (dict(loss="nss"), ValueError, "unknown loss 'nss'.*hinge"),
    (dict(penalty="r3"), ValueError, "unknown penalty 'r3'.*wgan-gp"),
    (dict(d_steps=0), ValueError, "d_steps must be an integer >= 1"),
    (dict(d_steps=1.5), ValueError, "d_steps"),
    (dict(penalty_interval=0), ValueError, "penalty_interval"),
    (dict(amp="fp8"), ValueError, "amp must be"),
    (dict(ema=1.0), ValueError, "ema must be in"),
    (dict(grad_clip=(1.0, 2.0, 3.0)), ValueError, "grad_clip"),
    (dict(grad_clip=-1.0), ValueError, "grad_clip"),
    (dict(weight_clip=0), ValueError, "weight_clip"),
])
def test_bad_configuration(kw, err, match):
    with pytest.raises(err, match=match):
        _trainer(**kw)


def test_swapped_optimizers_are_named():
    G, D = mlp_pair()
    g_opt, d_opt = adam_pair(G, D)
    with pytest.raises(ValueError, match="g_optimizer optimizes a parameter.*not in the generator"):
        ganfast.Trainer(G, D, d_opt, g_opt)


@pytest.mark.parametrize("frozen, penalty", [("generator", None), ("discriminator", None), ("discriminator", "r1")])
def test_a_model_frozen_whole_is_named(frozen, penalty):
    """All of G (or D) frozen: autograd said only 'element 0 of tensors does not require grad'; with R1
    a frozen D's loss still had a gradient (through the reals) and D would silently not train."""
    t = _trainer(seed=0, penalty=penalty)
    (t.G if frozen == "generator" else t.D).requires_grad_(False)
    with pytest.raises(ValueError, match=f"no parameter of the {frozen} requires grad"):
        t.step(points(16))
    (t.G if frozen == "generator" else t.D).requires_grad_(True)
    t.step(points(16))  # a partly frozen model (FreezeD) trains: test_trainer_real_use


def test_models_on_different_devices():
    G, D = mlp_pair()
    D.to("meta")
    with pytest.raises(ValueError, match="device mismatch"):
        ganfast.Trainer(G, D, *adam_pair(G, D))


def test_batch_on_another_device():
    t = _trainer(seed=0)
    with pytest.raises(ValueError, match="device mismatch: the real batch is on meta"):
        t.step(torch.empty(4, 2, device="meta"))


def test_batch_of_wrong_shape_for_d():
    t = _trainer(seed=0)
    with pytest.raises(ValueError, match=r"generator's output shape \(2,\).*data's \(5,\)"):
        t.step(torch.randn(8, 5))
    with pytest.raises(ValueError, match="at least one feature dimension"):
        t.step(torch.randn(8))
    with pytest.raises(TypeError, match="floating point"):
        t.step(torch.ones(8, 2, dtype=torch.long))


def test_discriminator_rejecting_the_data_is_named():
    torch.manual_seed(0)
    G = nn.Sequential(nn.Linear(3, 4))  # outputs 4 features
    D = nn.Sequential(nn.Linear(2, 1))  # expects 2
    t = ganfast.Trainer(G, D, *adam_pair(G, D), seed=0)
    with pytest.raises(ValueError, match=r"discriminator failed on a real batch of shape \(4, 4\)"):
        t.step(torch.randn(8, 4))


def test_input_check_does_not_change_the_models():
    G = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    _, D = mlp_pair()
    t = ganfast.Trainer(G, D, *adam_pair(G, D), seed=0)
    before = [b.clone() for b in G.buffers()]
    from ganfast.train.probe import check_models
    check_models(t.G, t.D, points(8), t._noise, t.latent_shape, t._autocast)
    assert all(torch.equal(a, b) for a, b in zip(before, G.buffers()))


def test_missing_penalty_module_or_d_steps_list():
    t = _trainer(d_steps=2, seed=0)
    with pytest.raises(ValueError, match="step got 3 real batches"):
        t.step([points(8)] * 3)
    t.step([points(8), points(8, seed=2)])
    assert t.d_step_count == 2


class _ScalarReads(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the ops that copy a tensor's value to the host (`.item()`, `float(t)`, `if t:`; `.tolist()`
    goes through none of these, which is why the one stats read uses it). Reads of `ignore` (Adam's
    step counters: CPU tensors even for CUDA parameters, so no device sync) are not counted."""

    SYNCING = ("aten::_local_scalar_dense", "aten::is_nonzero", "aten::equal", "aten::allclose")

    def __init__(self, ignore=()):
        super().__init__()
        self.reads, self.ignore = [], {id(t) for t in ignore}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name in self.SYNCING and not (args and id(args[0]) in self.ignore):
            self.reads.append(func._schema.name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("kw", [dict(), dict(penalty="r1", spectral_norm=True, ema=0.9, grad_clip=1.0),
                                dict(penalty="wgan-gp", d_steps=2, weight_clip=0.5)], ids=["plain", "sn-r1", "gp"])
def test_step_reads_nothing_from_the_device_without_stats(kw):
    if "penalty" in kw:
        pytest.importorskip("ganfast.penalties")
    if kw.get("spectral_norm"):
        pytest.importorskip("ganfast.nn")
    G, D = mlp_pair()
    t = ganfast.Trainer(G, D, *adam_pair(G, D), seed=0, **kw)
    t.step(points(16))  # the first step checks the models
    steps = [st["step"] for opt in (t.g_optimizer, t.d_optimizer) for st in opt.state.values()]
    with _ScalarReads(steps) as mode:
        assert t.step(points(16), return_stats=False) is None
    assert mode.reads == []
    with _ScalarReads(steps) as mode:
        t.step(points(16))
    assert mode.reads == []  # the stats come back through one .tolist()


@pytest.mark.parametrize("penalty", ["r1", "r2", "r1+r2", "wgan-gp", "wgan-lp", "dragan"])
def test_every_penalty_runs_and_is_reproducible(penalty):
    pytest.importorskip("ganfast.penalties")
    runs = []
    for _ in range(2):
        G, D = mlp_pair()
        t = ganfast.Trainer(G, D, *adam_pair(G, D), loss="hinge", penalty=penalty, penalty_weight=1.0, seed=7)
        runs.append([t.step(points(16)) for _ in range(3)])
    assert runs[0] == runs[1]  # every random draw (z, alpha, DRAGAN noise) comes from the seed
    assert all(math.isfinite(s["penalty"]) for s in runs[0])
    if penalty != "wgan-lp":  # one-sided: zero while the gradient norms stay below 1
        assert runs[0][-1]["penalty"] > 0


def test_r1_plus_r2_is_the_sum_of_both_penalties():
    """R3GAN's regularizer: the penalty stat and D's gradient are those of R1 plus those of R2 (plain SGD,
    so that D's parameter change is linear in its gradient: Δ(r1+r2) = Δ(r1) + Δ(r2) − Δ(none))."""
    pytest.importorskip("ganfast.penalties")
    deltas, pens = {}, {}
    for penalty in (None, "r1", "r2", "r1+r2"):
        G, D = mlp_pair(dtype=torch.float64)
        before = [p.detach().clone() for p in D.parameters()]
        opts = torch.optim.SGD(G.parameters(), 0.1), torch.optim.SGD(D.parameters(), 0.1)
        t = ganfast.Trainer(G, D, *opts, loss="ns", penalty=penalty, penalty_weight=3.0, seed=3)
        pens[penalty] = t.step(points(16, torch.float64))["penalty"]
        deltas[penalty] = [p.detach() - b for p, b in zip(D.parameters(), before)]
    assert pens["r1"] > 0 and pens["r2"] > 0
    assert pens["r1+r2"] == pytest.approx(pens["r1"] + pens["r2"], rel=1e-12)
    for both, one, two, none in zip(deltas["r1+r2"], deltas["r1"], deltas["r2"], deltas[None]):
        torch.testing.assert_close(both, one + two - none, rtol=1e-9, atol=1e-12)


def test_tensorboard_scalars_when_available(monkeypatch, tmp_path):
    import sys
    import types
    written = []

    class FakeWriter:
        def __init__(self, log_dir):
            self.log_dir = log_dir

        def add_scalar(self, tag, value, step):
            written.append((tag, value, step))

        def add_text(self, *a):
            pass

        def close(self):
            pass

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    t = _trainer(seed=0)
    t.fit(points(32), steps=2, batch_size=16, log_dir=tmp_path, progress=False)
    assert written[0][0] == "train/d_loss" and written[0][2] == 1 and math.isfinite(written[0][1])
    assert {tag for tag, _, _ in written} >= {"train/d_loss", "train/g_loss", "train/real_acc"}
    assert {s for _, _, s in written} == {1, 2}


class _CountBackward(torch.autograd.Function):
    """The identity, counting the calls of its backward (that is, the gradients asked of D's input)."""
    calls = 0

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        _CountBackward.calls += 1
        return grad


@pytest.mark.parametrize("penalty, input_grads", [(None, 1), ("r1", 2), ("r2", 2), ("r1+r2", 3), ("wgan-gp", 2),
                                                  ("dragan", 2)])
def test_d_step_backward_asks_no_gradient_of_d_input(penalty, input_grads):
    """A step asks D for the gradient at its input only where it is used: once per penalty gradient
    (R1, R2, x̂) and once in the G step (towards G). The D step's backward is restricted to D's weights:
    the inputs R1 / R2 / WGAN-GP differentiate are leaves whose gradient nobody reads."""
    if penalty is not None:
        pytest.importorskip("ganfast.penalties")
    G, D = mlp_pair(dtype=torch.float64)

    class Counted(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = D

        def forward(self, x):
            return self.net(_CountBackward.apply(x))

    counted = Counted()
    t = ganfast.Trainer(G, counted, *adam_pair(G, counted), loss="ns", penalty=penalty, penalty_weight=1.0, seed=3)
    t.step(points(16, torch.float64), return_stats=False)  # the first step also probes the models
    _CountBackward.calls = 0
    t.step(points(16, torch.float64), return_stats=False)
    assert _CountBackward.calls == input_grads


def test_layers_frozen_or_unfrozen_between_steps_are_respected():
    """FreezeD-style freezing: a D layer frozen before the trainer is built, unfrozen, then frozen again
    between steps trains exactly while it requires grad, stays as the user set it after each step
    (the G step's freezing of D restores it), and the D step's backward (restricted to D's weights)
    never fails on it."""
    pytest.importorskip("ganfast.penalties")
    G, D = mlp_pair(dtype=torch.float64)
    first = D[0].weight
    first.requires_grad_(False)
    t = ganfast.Trainer(G, D, *adam_pair(G, D), loss="ns", penalty="r1", penalty_weight=1.0, seed=3)
    x = points(16, torch.float64)
    for frozen, steps in ((True, 2), (False, 2), (True, 2)):
        first.requires_grad_(not frozen)
        before = first.detach().clone()
        for _ in range(steps):
            t.step(x, return_stats=False)
            assert first.requires_grad is not frozen
        assert torch.equal(first, before) is frozen


def test_a_seed_that_is_not_an_int_is_named():
    with pytest.raises(TypeError, match="seed must be an int or None, got 'a'"):
        _trainer(seed="a")
