"""Class-conditional training (Trainer(num_classes=K)): the step equals a hand-written conditional
loop in float64 (G(z, y_fake), D(x, y), penalties w.r.t. x with the real labels), a toy whose mode is
the label is learned per class, fake labels follow class_probs, sampling, exact resume with labels,
and the errors for bad or missing labels."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ganfast
import ganfast.nn as gnn
from trainer_models import adam_pair, cond_mlp_pair, labelled_points, mlp_pair, points

K = 3


def _inverse_cdf(u, probs):
    cdf = torch.tensor(probs, dtype=torch.float64).cumsum(0)
    cdf = (cdf / cdf[-1]).float()
    cdf[-1] = 1.0
    return torch.searchsorted(cdf, u, right=True).clamp(max=len(probs) - 1)


def hand_conditional_loop(G, D, real, labels, steps, *, loss, penalty, weight, seed, lr, probs):
    """The textbook conditional loop: per D step z ~ N(0, I), then u ~ U[0, 1) (float32) and
    y_fake = inverse CDF of the class probabilities; R1 and WGAN-GP differentiate w.r.t. x, with the
    real labels."""
    G, D = copy.deepcopy(G), copy.deepcopy(D)
    g_opt = torch.optim.Adam(G.parameters(), lr, betas=(0.5, 0.9))
    d_opt = torch.optim.Adam(D.parameters(), lr, betas=(0.5, 0.9))
    gen = torch.Generator().manual_seed(seed)
    B = real.shape[0]
    for _ in range(steps):
        z = torch.randn(B, 3, generator=gen, dtype=real.dtype)
        yf = _inverse_cdf(torch.rand(B, generator=gen, dtype=torch.float32), probs)
        fake = G(z, yf)
        d_opt.zero_grad()
        x = real.detach().requires_grad_(penalty == "r1")
        r, f = D(x, labels), D(fake.detach(), yf)
        total = (F.softplus(-r).mean() + F.softplus(f).mean()) if loss == "ns" else \
            (F.relu(1 - r).mean() + F.relu(1 + f).mean())
        if penalty == "r1":
            (g,) = torch.autograd.grad(r.sum(), x, create_graph=True)
            total = total + weight / 2 * g.pow(2).sum(1).mean()
        elif penalty == "wgan-gp":
            a = torch.rand(B, generator=gen, dtype=real.dtype)[:, None]
            xh = (a * real + (1 - a) * fake.detach()).requires_grad_()
            (g,) = torch.autograd.grad(D(xh, labels).sum(), xh, create_graph=True)
            total = total + weight * ((torch.sqrt(g.pow(2).sum(1) + 1e-12) - 1) ** 2).mean()
        total.backward()
        d_opt.step()
        g_opt.zero_grad()
        fl = D(fake, yf)
        (F.softplus(-fl).mean() if loss == "ns" else -fl.mean()).backward()
        g_opt.step()
    return G, D


@pytest.mark.parametrize("case", [dict(loss="ns", penalty=None, probs=None),
                                  dict(loss="ns", penalty="r1", probs=[0.2, 0.0, 0.8]),
                                  dict(loss="hinge", penalty="wgan-gp", probs=None)],
                         ids=["ns", "ns-r1-probs", "hinge-wgangp"])
def test_float64_matches_a_hand_written_conditional_loop(case):
    G, D = cond_mlp_pair(K, dtype=torch.float64)
    real, labels = labelled_points(16, K, torch.float64)
    probs = case["probs"] or [1 / K] * K
    hG, hD = hand_conditional_loop(G, D, real, labels, 5, loss=case["loss"], penalty=case["penalty"], weight=2.0,
                                   seed=11, lr=1e-2, probs=probs)
    t = ganfast.Trainer(G, D, *adam_pair(G, D), loss=case["loss"], penalty=case["penalty"], penalty_weight=2.0,
                        seed=11, num_classes=K, class_probs=case["probs"])
    for _ in range(5):
        t.step((real, labels))
    for mine, ref in ((G, hG), (D, hD)):
        for (name, a), b in zip(mine.named_parameters(), ref.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=f"{name} differs")
    assert not torch.equal(G.embed.weight, cond_mlp_pair(K, dtype=torch.float64)[0].embed.weight)


def test_fake_labels_follow_class_probs_and_are_reproducible():
    G, D = cond_mlp_pair(4)
    t = ganfast.Trainer(G, D, *adam_pair(G, D), num_classes=4, class_probs=[1, 0, 3, 4], seed=0)
    y = t.classes.draw(t._draw, 40000)
    freq = torch.bincount(y, minlength=4).double() / y.numel()
    assert freq[1] == 0  # a class of probability 0 is never drawn
    torch.testing.assert_close(freq, torch.tensor([1, 0, 3, 4], dtype=torch.float64) / 8, atol=0.01, rtol=0)
    G2, D2 = cond_mlp_pair(4)
    t2 = ganfast.Trainer(G2, D2, *adam_pair(G2, D2), num_classes=4, class_probs=[1, 0, 3, 4], seed=0)
    assert torch.equal(t2.classes.draw(t2._draw, 40000), y)
    uniform = ganfast.Trainer(G, D, *adam_pair(G, D), num_classes=4, seed=0)
    y = uniform.classes.draw(uniform._draw, 40000)
    assert set(y.tolist()) == {0, 1, 2, 3}
    assert (torch.bincount(y).double() / y.numel() - 0.25).abs().max() < 0.01


def test_sample_with_labels_and_the_ema_generator():
    G, D = cond_mlp_pair(K)
    t = ganfast.Trainer(G, D, *adam_pair(G, D), num_classes=K, ema=0.5, seed=0)
    real, labels = labelled_points(16, K)
    t.step((real, labels))
    z = torch.randn(6, 3)
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    torch.testing.assert_close(t.sample(6, z=z, labels=y), t.ema_g(z, y))
    torch.testing.assert_close(t.sample(6, z=z, labels=2), t.ema_g(z, torch.full((6,), 2)))
    assert not torch.equal(t.sample(6, z=z, labels=0), t.sample(6, z=z, labels=1))
    assert t.sample(5).shape == (5, 2)  # labels drawn with the sampling generator
    s = t._gen.get_state()
    t.sample(4)
    assert torch.equal(s, t._gen.get_state())  # sampling never touches the training noise
    # in chunks of G calls: the same samples, each with its label
    z, y = torch.randn(23, 3), torch.arange(23) % K
    whole = t.sample(23, z=z, labels=y)
    calls = []
    hook = t.ema_g.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    torch.testing.assert_close(t.sample(23, z=z, labels=y, chunk=5), whole)
    hook.remove()
    assert calls == [5, 5, 5, 5, 3]
    with pytest.raises(ValueError, match="chunk must be a positive int, got 0"):
        t.sample(4, chunk=0)


def test_toy_mixture_samples_land_in_the_mode_of_their_label():
    """A 4-mode mixture (modes on a circle of radius 2, std 0.1) whose mode is the label: after a short
    training, the fraction of G(z, y) samples whose nearest mode is y (the per-class hit rate)."""
    torch.manual_seed(0)
    classes = 4
    angles = torch.arange(classes) * (2 * math.pi / classes)
    means = 2.0 * torch.stack([angles.cos(), angles.sin()], 1)
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, classes, (4096,), generator=g)
    x = means[y] + 0.1 * torch.randn(4096, 2, generator=g)

    class G(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.embed = nn.Linear(2, 64), nn.Embedding(classes, 64)
            self.out = nn.Sequential(nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))

        def forward(self, z, y):
            return self.out(self.inp(z) + self.embed(y))

    class D(nn.Module):
        def __init__(self):
            super().__init__()
            self.phi = nn.Sequential(nn.Linear(2, 64), nn.LeakyReLU(0.2), nn.Linear(64, 64), nn.LeakyReLU(0.2))
            self.head = gnn.ProjectionHead(64, classes)

        def forward(self, x, y):
            return self.head(self.phi(x), y)

    Gm, Dm = G(), D()
    opts = [torch.optim.Adam(m.parameters(), 2e-3, betas=(0.5, 0.9)) for m in (Gm, Dm)]
    t = ganfast.Trainer(Gm, Dm, *opts, penalty="r1", penalty_weight=0.1, ema=0.99, seed=0, num_classes=classes)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small MLPs: one thread is fastest, and immune to busy cores
    try:
        t.fit((x, y), steps=STEPS_TOY, batch_size=128, progress=False)
    finally:
        torch.set_num_threads(threads)
    n = 500
    labels = torch.arange(classes).repeat_interleave(n)
    s = t.sample(len(labels), labels=labels)
    nearest = torch.cdist(s, means).argmin(1)
    hit = torch.stack([(nearest[labels == k] == k).double().mean() for k in range(classes)])
    near = torch.stack([((s - means[labels]).norm(dim=1)[labels == k] < 0.3).double().mean() for k in range(classes)])
    print(f"\nconditional toy: per-class hit rate {[round(v, 3) for v in hit.tolist()]}, within 3 std of the "
          f"label's mode {[round(v, 3) for v in near.tolist()]}, after {STEPS_TOY} steps")
    assert hit.min() >= 0.9, f"per-class hit rates {hit.tolist()}"
    # and the samples are near the mode, not only on its side: median distance to the label's mean
    assert (s - means[labels]).norm(dim=1).median() < 0.5


STEPS_TOY = 300


def test_state_roundtrip_with_labels_continues_identically(tmp_path):
    real, labels = labelled_points(64, K)
    a = ganfast.Trainer(*(m := cond_mlp_pair(K)), *adam_pair(*m), num_classes=K, ema=0.9, penalty="wgan-gp",
                        class_probs=[1, 2, 3], seed=0)
    for i in range(3):
        a.step((real[16 * i:16 * (i + 1)], labels[16 * i:16 * (i + 1)]))
    a.save_checkpoint(tmp_path / "a.pt")
    expect = [a.step((real[:16], labels[:16])) for _ in range(3)]
    b = ganfast.Trainer(*(m := cond_mlp_pair(K, seed=5)), *adam_pair(*m), num_classes=K, ema=0.9, penalty="wgan-gp",
                        class_probs=[1, 2, 3], seed=99)
    b.load_checkpoint(tmp_path / "a.pt")
    assert [b.step((real[:16], labels[:16])) for _ in range(3)] == expect
    # another label distribution or class count is another run
    c = ganfast.Trainer(*(m := cond_mlp_pair(K)), *adam_pair(*m), num_classes=K, ema=0.9, penalty="wgan-gp", seed=0)
    with pytest.raises(ganfast.train.ResumeMismatchError, match="class_probs"):
        c.load_checkpoint(tmp_path / "a.pt")


@pytest.mark.parametrize("source", ["tensors", "loader"])
def test_fit_with_labels_resumes_exactly(tmp_path, source):
    real, labels = labelled_points(96, K)

    def data():
        if source == "tensors":
            return real, labels
        ds = torch.utils.data.TensorDataset(real, labels)
        return torch.utils.data.DataLoader(ds, batch_size=16, shuffle=True, drop_last=True)

    def trainer():
        G, D = cond_mlp_pair(K)
        return ganfast.Trainer(G, D, *adam_pair(G, D), num_classes=K, penalty="r1", ema=0.9, seed=3)

    ref = trainer()
    ref.fit(data(), steps=10, batch_size=16, progress=False)
    first = trainer()
    first.fit(data(), steps=4, batch_size=16, checkpoint_dir=tmp_path, checkpoint_every=2, progress=False)
    resumed = trainer()
    resumed.fit(data(), steps=10, batch_size=16, checkpoint_dir=tmp_path, checkpoint_every=2, progress=False)
    assert resumed.step_count == 10
    for a, b in zip(list(ref.G.state_dict().values()) + list(ref.ema_g.state_dict().values()),
                    list(resumed.G.state_dict().values()) + list(resumed.ema_g.state_dict().values())):
        assert torch.equal(a, b)


def test_fit_sample_pictures_have_one_row_per_class(tmp_path):
    pytest.importorskip("PIL")
    from ganfast.models import DCGANDiscriminator, DCGANGenerator
    G, D = DCGANGenerator(16, 8, 1, 8, num_classes=K), DCGANDiscriminator(8, 1, 8, num_classes=K)
    t = ganfast.Trainer(G, D, *adam_pair(G, D, 2e-4), num_classes=K, seed=0)
    x = torch.rand(12, 1, 8, 8) * 2 - 1
    y = torch.arange(12) % K
    t.fit((x, y), steps=1, batch_size=6, log_dir=tmp_path, sample_every=1, n_samples=8, progress=False)
    from PIL import Image
    img = Image.open(next((tmp_path / "samples").glob("*.png")))
    # 8 // 3 = 2 per class: 3 rows of 2 images (8 px x scale 8, padding 2 x 8)
    assert img.size == (2 * 80 + 16, 3 * 80 + 16)


# --- bad input -----------------------------------------------------------------------------------

def _cond(**kw):
    G, D = cond_mlp_pair(K)
    return ganfast.Trainer(G, D, *adam_pair(G, D), num_classes=K, seed=0, **kw)


@pytest.mark.parametrize("labels, err, match", [
    (torch.tensor([0, 1, 3, 0]), ValueError, r"class indices in \[0, 3\).*e\.g\. 3"),
    (torch.tensor([0, -1, 2, 0]), ValueError, r"in \[0, 3\).*-1"),
    (torch.tensor([0.0, 1.0, 2.0, 0.0]), TypeError, "LongTensor"),
    (torch.tensor([0, 1, 2, 0], dtype=torch.int32), TypeError, "LongTensor.*int32"),
    (torch.tensor([0, 1, 2]), ValueError, r"shape \(4,\)"),
    (torch.tensor([[0, 1, 2, 0]]), ValueError, r"shape \(4,\)"),
])
def test_bad_labels_are_named(labels, err, match):
    t = _cond()
    with pytest.raises(err, match=match):
        t.step((points(4), labels))
    assert t.step_count == 0


def test_labels_are_range_checked_after_the_first_step_too():
    t = _cond()
    real, labels = labelled_points(8, K)
    t.step((real, labels))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        t.step((real, torch.full((8,), 7)))


def test_missing_and_unexpected_labels():
    real, labels = labelled_points(8, K)
    with pytest.raises(ValueError, match="conditional.*num_classes=3.*got x alone"):
        _cond().step(real)
    with pytest.raises(ValueError, match="conditional.*num_classes=3.*got x alone"):
        _cond().fit(real, steps=1, batch_size=4, progress=False)
    loader = torch.utils.data.DataLoader(real, batch_size=4)
    with pytest.raises(ValueError, match=r"conditional \(num_classes=3\).*\(x, y, \.\.\.\) batches"):
        _cond().fit(loader, steps=1, progress=False)
    G, D = mlp_pair()
    plain = ganfast.Trainer(G, D, *adam_pair(G, D), seed=0)
    with pytest.raises(ValueError, match="unconditional: pass num_classes=K"):
        plain.step((real, labels))
    with pytest.raises(ValueError, match="unconditional: pass num_classes=K"):
        plain.fit((real, labels), steps=1, batch_size=4, progress=False)
    with pytest.raises(ValueError, match="unconditional"):
        plain.sample(2, labels=0)
    with pytest.raises(ValueError, match=r"fit's labels.*\[0, 3\)"):
        _cond().fit((real, labels + 1), steps=1, batch_size=4, progress=False)
    with pytest.raises(ValueError, match=r"LongTensor of shape \(8,\)"):
        _cond().fit((real, labels[:5]), steps=1, batch_size=4, progress=False)
    with pytest.raises(ValueError, match=r"sample's labels.*\[0, 3\)"):
        _cond().sample(2, labels=5)


@pytest.mark.parametrize("kw, match", [
    (dict(num_classes=0), "num_classes must be a positive int"),
    (dict(num_classes=K, class_probs=[1, 2]), "3 probabilities, got 2"),
    (dict(num_classes=K, class_probs=[1, -1, 2]), ">= 0"),
    (dict(num_classes=K, class_probs=[0, 0, 0]), "not all 0"),
    (dict(class_probs=[1, 2, 3]), "class_probs needs num_classes"),
])
def test_bad_class_options(kw, match):
    G, D = cond_mlp_pair(K)
    with pytest.raises(ValueError, match=match):
        ganfast.Trainer(G, D, *adam_pair(G, D), **kw)


def test_models_that_do_not_take_labels_are_named_before_any_update():
    G, D = mlp_pair()  # G(z) and D(x) only
    t = ganfast.Trainer(G, D, *adam_pair(G, D), num_classes=K, seed=0)
    before = [p.clone() for p in G.parameters()]
    with pytest.raises(ValueError, match=r"generator failed.*called as G\(z, y\)"):
        t.step(labelled_points(8, K))
    assert all(torch.equal(a, b) for a, b in zip(before, G.parameters()))


def test_accumulation_and_several_d_steps_carry_the_labels():
    real, labels = labelled_points(32, K, torch.float64)

    def make(**kw):
        G, D = cond_mlp_pair(K, dtype=torch.float64)
        return ganfast.Trainer(G, D, *adam_pair(G, D), num_classes=K, penalty="wgan-gp", ema=0.9, seed=4, **kw)

    whole, split = make(), make(accumulate=4)
    for _ in range(3):
        whole.step((real, labels))
        split.step((real, labels))
    for p, q in zip(list(whole.G.parameters()) + list(whole.D.parameters()),
                    list(split.G.parameters()) + list(split.D.parameters())):
        torch.testing.assert_close(q, p, rtol=1e-10, atol=1e-12)
    two = make(d_steps=2)
    batches = [(real[:16], labels[:16]), (real[16:], labels[16:])]
    assert two.step(batches)["d_loss"] > 0
    with pytest.raises(ValueError, match="got 3 real batches"):
        two.step(batches + batches[:1])
    with pytest.raises(ValueError, match="got x alone"):
        two.step([real[:16], real[16:]])
