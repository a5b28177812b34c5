"""Trainer(pack=m), PacGAN: D judges m samples at once, concatenated on the channel axis."""
import pytest
import torch
from torch import nn

import ganfast
from ganfast.models import build_models
from ganfast.train.probe import pack_samples
from test_trainer_step import hand_loop
from trainer_models import adam_pair, points, recorded_batch_sizes


class Pack(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return x.reshape(x.shape[0] // self.m, self.m * x.shape[1], *x.shape[2:])


def packed_mlp_pair(m, latent=3, hidden=8, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    G = nn.Sequential(nn.Linear(latent, hidden), nn.Tanh(), nn.Linear(hidden, 2)).to(dtype)
    D = nn.Sequential(nn.Linear(2 * m, hidden), nn.Tanh(), nn.Linear(hidden, 1)).to(dtype)
    return G, D


def test_pack_samples_groups_consecutive_samples_on_the_channel_axis():
    x = torch.randn(6, 3, 5, 5)
    p = pack_samples(x, 3)
    assert p.shape == (2, 9, 5, 5)
    torch.testing.assert_close(p[1, 3:6], x[4])
    torch.testing.assert_close(p[0, 6:9], x[2])
    assert pack_samples(x, 1) is x


@pytest.mark.parametrize("loss,penalty", [("ns", None), ("ns", "r1"), ("rahinge", "r1")])
@pytest.mark.parametrize("m", [2, 4])
def test_packed_training_matches_a_hand_loop_on_packed_samples(m, loss, penalty):
    """float64: Trainer(pack=m) with D taking m*C channels is the plain loop whose D packs its input.
    R1 is taken on the packed reals: gamma/2 * mean over the B/m packed samples of ||grad||^2, which is
    (gamma*m)/2 * mean over the B samples of their own squared gradient norms in the hand loop."""
    pytest.importorskip("ganfast.penalties")
    G, D = packed_mlp_pair(m)
    real = points(16, torch.float64)
    weight, lr, steps = 5.0, 1e-2, 5
    hG, hD, _ = hand_loop(G, nn.Sequential(Pack(m), D), real, steps, loss=loss, penalty=penalty, weight=weight * m,
                          interval=1, d_steps=1, seed=7, lr=lr)
    g_opt, d_opt = adam_pair(G, D, lr)
    t = ganfast.Trainer(G, D, g_opt, d_opt, loss=loss, penalty=penalty, penalty_weight=weight, seed=7, pack=m)
    for _ in range(steps):
        t.step(real)
    for mine, ref in [(G, hG), (D, hD[1])]:
        for (name, a), b in zip(mine.named_parameters(), ref.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=f"{name} differs")


def test_pack_with_images_penalties_and_accumulate():
    G, D, latent = build_models("images", (3, 8, 8), width=4, pack=2)
    assert D.channels == 6
    g_opt, d_opt = adam_pair(G, D, 1e-3)
    t = ganfast.Trainer(G, D, g_opt, d_opt, penalty="wgan-gp", seed=0, pack=2, accumulate=2, latent_dim=latent)
    real = torch.rand(8, 3, 8, 8) * 2 - 1
    stats = t.step(real)
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values()) and stats["penalty"] > 0
    assert t.config.pack == 2 and t.config.describe()["pack"] == 2
    with pytest.raises(ValueError, match=r"multiple of pack=2 x accumulate=2 = 4"):
        t.step(real[:6])


def test_pack_errors_are_clear():
    G, D, latent = build_models("images", (3, 8, 8), width=4)  # D takes 3 channels, not 2 x 3
    g_opt, d_opt = adam_pair(G, D, 1e-3)
    t = ganfast.Trainer(G, D, g_opt, d_opt, seed=0, pack=2, latent_dim=latent)
    with pytest.raises(ValueError, match=r"real batch of shape \(4, 3, 8, 8\) .*packed by pack=2 into "
                                         r"\(2, 6, 8, 8\): D must take 2 x 3 channels"):
        t.step(torch.rand(4, 3, 8, 8))
    G, D, latent = build_models("images", (3, 8, 8), width=4, pack=3)
    g_opt, d_opt = adam_pair(G, D, 1e-3)
    t = ganfast.Trainer(G, D, g_opt, d_opt, seed=0, pack=3, latent_dim=latent)
    with pytest.raises(ValueError, match="batch size 4 must be a multiple of pack=3"):
        t.step(torch.rand(4, 3, 8, 8))
    with pytest.raises(ValueError, match="pack must be an integer >= 1"):
        ganfast.Trainer(G, D, g_opt, d_opt, pack=0)
    with pytest.raises(ValueError, match="pack"):
        build_models("points", (2,), pack=2)


def test_pack_after_augmentation_and_not_with_labels():
    G, D, latent = build_models("images", (3, 8, 8), width=4, pack=2)
    seen = []
    D.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    t = ganfast.Trainer(G, D, *adam_pair(G, D, 1e-3), seed=0, pack=2, latent_dim=latent, augment="color,translation")
    augmented = []

    class Spy:  # the trainer's augmenter, recording what it is given
        def __init__(self, inner):
            self.inner = inner

        def __call__(self, x):
            augmented.append(x.shape)
            return self.inner(x)

        def __getattr__(self, name):
            return getattr(self.inner, name)
    t._augment = Spy(t._augment)
    real = torch.rand(8, 3, 8, 8) * 2 - 1
    t.step(real)  # the first step also probes the models
    assert t.joint_d_forward  # this D judges each packed sample on its own
    seen.clear()
    stats = t.step(real)
    assert torch.isfinite(torch.tensor(stats["d_loss"]))
    assert set(augmented) == {torch.Size([8, 3, 8, 8])}  # each image augmented on its own 3 channels...
    # ...then packed: the D step's joint call on 4 real + 4 fake packed samples, the G step's on 4
    assert sorted(seen) == [torch.Size([4, 6, 8, 8]), torch.Size([8, 6, 8, 8])]
    t.joint_d_forward = False
    seen.clear()
    t.step(real)
    assert seen == [torch.Size([4, 6, 8, 8])] * 3
    with pytest.raises(ValueError, match="pack.*unconditional"):
        build_models("images", (3, 8, 8), width=4, pack=2, num_classes=3)
    with pytest.raises(ValueError, match="pack.*unconditional"):
        ganfast.Trainer(G, D, *adam_pair(G, D, 1e-3), pack=2, num_classes=3, latent_dim=latent)


@pytest.mark.parametrize("n, skipped", [(66, True), (68, False)])
def test_a_last_batch_of_one_packed_sample_is_skipped_where_d_has_batch_norm(caplog, n, skipped):
    """pack=2: a last batch of 2 samples is one packed sample for D (68 leave 4: two), which fit
    skips, with a warning before the first step. The first batch's check of the models gives D two
    packed samples or more, which its BatchNorm1d takes."""
    G, D = packed_mlp_pair(2, dtype=torch.float32)
    D = nn.Sequential(nn.BatchNorm1d(4), D)
    t = ganfast.Trainer(G, D, *adam_pair(G, D), pack=2, seed=0)
    sizes = recorded_batch_sizes(t)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(points(n)), batch_size=16)
    with caplog.at_level("WARNING", logger="ganfast.train"):
        t.fit(loader, steps=6, progress=False)  # past the first epoch's last batch
    assert sizes == ([16] * 6 if skipped else [16] * 4 + [4, 16])
    assert any("incomplete last batch" in r.getMessage() for r in caplog.records) == skipped
