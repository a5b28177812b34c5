"""Trainer(augment=..., augment_p=...): D sees augmented batches in the D and G steps, resume stays
exact with augmentation on (fixed p and ADA), ADA's p follows sign(r_t - target), and the CLI takes
--augment / --augment-p."""
import pytest
import torch
from torch import nn

from ganfast import Trainer
from ganfast.train.augment import Adaptive, Augmenter


class Flat(nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.shape = shape

    def forward(self, z):
        return z.view((z.shape[0],) + self.shape)


def image_pair(seed=0, shape=(3, 8, 8)):
    torch.manual_seed(seed)
    n = shape[0] * shape[1] * shape[2]
    G = nn.Sequential(nn.Linear(4, n), nn.Tanh(), Flat(shape))
    D = nn.Sequential(nn.Conv2d(shape[0], 4, 3, padding=1), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(4 * n // shape[0], 1))
    return G, D


def trainer(seed=0, model_seed=0, d_bias=None, **kw):
    G, D = image_pair(model_seed)
    if d_bias is not None:  # D leaning to "real" for everything: ADA's r_t near 1, p rises
        with torch.no_grad():
            D[-1].bias.fill_(d_bias)
    opts = (torch.optim.Adam(G.parameters(), 1e-3, betas=(0.5, 0.9)), torch.optim.Adam(D.parameters(), 1e-3, betas=(0.5, 0.9)))
    return Trainer(G, D, *opts, seed=seed, **kw)


def images(n=16, seed=1):
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


class Recording(nn.Module):
    """Wraps D and keeps what it was called with."""

    def __init__(self, D):
        super().__init__()
        self.D, self.seen = D, []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.D(x)


@pytest.mark.parametrize("p", [0.7, "ada"])
def test_resume_is_exact_with_augmentation(tmp_path, p):
    kw = dict(augment="color,translation,cutout", augment_p=p, penalty="r1")
    if p == "ada":
        kw.update(augment_p=Adaptive(interval=2, kimg=0.5), d_bias=3.0)  # p moves within a few steps
    real = images()
    a = trainer(**kw)
    for _ in range(3):
        a.step(real)
    a.save_checkpoint(tmp_path / "a.pt")
    expect = [a.step(real) for _ in range(4)]
    b = trainer(seed=5, model_seed=3, **kw)
    b.load_checkpoint(tmp_path / "a.pt")
    got = [b.step(real) for _ in range(4)]
    assert got == expect  # float for float, augment_p included
    assert "augment_p" in got[0]
    if p == "ada":
        assert len({s["augment_p"] for s in expect}) > 1  # p moved in the compared steps


def test_d_sees_augmented_batches_in_both_steps():
    G, D = image_pair()
    rec = Recording(D)
    opts = (torch.optim.Adam(G.parameters(), 1e-3), torch.optim.Adam(D.parameters(), 1e-3))
    tr = Trainer(G, rec, *opts, seed=0, augment="cutout")
    real = images()
    tr.step(real)  # the first step also checks the models on a few samples
    rec.seen.clear()
    tr.step(real)
    # D(cat(real, fake)) in the D step (this small D judges each sample on its own: one call), D(fake)
    # in the G step
    assert tr.joint_d_forward and [x.shape[0] for x in rec.seen] == [2 * len(real), len(real)]
    for x in rec.seen:
        zeros = (x == 0).all(1).flatten(1).sum(1)  # pixels zeroed in every channel
        assert (zeros >= 4).all()  # a 4x4 cutout, at least 2x2 of it inside, in every sample
    seen_real = rec.seen[0][:len(real)]
    kept = seen_real != 0
    assert torch.equal(seen_real[kept], real[kept])  # the real batch, cut out


def test_augment_p_zero_changes_nothing():
    real = images()
    plain, zero = trainer(), trainer(augment="color,translation,cutout", augment_p=0.0)
    a, b = plain.step(real), zero.step(real)
    assert b.pop("augment_p") == 0.0 and a == b


class Confident(nn.Module):
    """A D that says `sign` for every input, whatever its parameters do."""

    def __init__(self, sign):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.sign = sign

    def forward(self, x):
        return self.sign * 5.0 + self.w * x.flatten(1).mean(1, keepdim=True)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_ada_p_follows_the_sign_of_d_on_reals(sign):
    G, _ = image_pair()
    D = Confident(sign)
    tr = Trainer(G, D, torch.optim.SGD(G.parameters(), 1e-3), torch.optim.SGD(D.parameters(), 0.0), seed=0,
                 augment="color,translation", augment_p=Adaptive(target=0.6, interval=2, kimg=0.016))
    ps = [tr.step(images(16))["augment_p"] for _ in range(8)]
    step = 16 * 2 / 16.0  # batch · interval / (kimg · 1000) = 2: p hits a bound at the first adjustment
    if sign > 0:  # r_t = 1 > 0.6: D overfits, p rises (to 1, clamped) at steps 2, 4, ...
        assert ps[0] == 0.0 and ps[1] == min(1.0, step) and max(ps) == 1.0
    else:  # r_t = -1 < 0.6: p falls, clamped at 0
        assert ps == [0.0] * 8


def test_ada_step_size_is_batch_times_interval_over_kimg():
    aug = Augmenter("color", Adaptive(target=0.6, interval=4, kimg=500), torch.device("cpu"),
                    lambda fn, shape, dtype: fn(shape, dtype=dtype))
    for _ in range(4):
        aug.observe(torch.tensor([1.0, 1.0, -1.0, 1.0]))  # r_t = 0.5 < 0.6: p falls, clamped at 0
    aug.after_step(4, 64, lambda tensors, what: None)
    assert aug.p.item() == 0.0
    aug.p.fill_(0.5)
    aug.observe(torch.ones(8))
    aug.after_step(8, 64, lambda tensors, what: None)
    assert aug.p.item() == pytest.approx(0.5 + 64 * 4 / 500_000)


@pytest.mark.parametrize("kw,match", [
    (dict(augment="colour"), "unknown augmentation 'colour'"),
    (dict(augment="color", augment_p=2.0), r"augment_p must be a probability in \[0, 1\]"),
    (dict(augment="color", augment_p="adaptive"), "augment_p must be"),
])
def test_bad_augment_options_are_named(kw, match):
    with pytest.raises(ValueError, match=match):
        trainer(**kw)


def test_checkpoint_names_a_different_augmentation(tmp_path):
    a = trainer(augment="color")
    a.step(images())
    a.save_checkpoint(tmp_path / "a.pt")
    b = trainer(augment="cutout")
    with pytest.raises(Exception, match="augment"):
        b.load_checkpoint(tmp_path / "a.pt")
