"""Trainer.joint_d_forward: D runs once on cat(real, fake) in a D step when a probe on the first batch
finds that D judges each sample on its own; the results equal those of separate calls."""
import copy

import pytest
import torch
from torch import nn

import ganfast
from ganfast.models import DCGANDiscriminator, DCGANGenerator
from ganfast.train.probe import batch_independent, check_models
from trainer_models import CondD, CondG, adam_pair, mlp_pair, points


class BatchMeanD(nn.Module):
    """Adds the batch's mean feature to every sample: couples the samples of a batch."""

    def __init__(self):
        super().__init__()
        self.net = nn.Linear(2, 1)

    def forward(self, x):
        return self.net(x + x.mean(0, keepdim=True))


def _images(n=8, seed=0):
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _image_trainer(**d_kw):
    torch.manual_seed(0)
    G, D = DCGANGenerator(16, 16, 3, 8), DCGANDiscriminator(16, 3, 8, **d_kw)
    return ganfast.Trainer(G, D, *adam_pair(G, D), seed=0, latent_dim=16)


@pytest.mark.parametrize("d_kw, independent", [
    ({}, True),
    ({"batch_norm": True}, False),  # BatchNorm in training mode mixes the samples
    ({"mbstd_group": 4}, False),  # minibatch stddev groups real with fake in a joint batch
])
def test_probe_on_image_discriminators(d_kw, independent):
    t = _image_trainer(**d_kw)
    t.step(_images())
    assert t.joint_d_forward is independent


@pytest.mark.parametrize("make_d, independent", [
    (lambda: mlp_pair()[1], True),
    (lambda: nn.Sequential(nn.Linear(2, 8), nn.Dropout(0.5), nn.Linear(8, 1)), False),  # a fresh mask per call
    (BatchMeanD, False),
    (lambda: nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.Linear(8, 1)), False),
])
def test_probe_on_point_discriminators(make_d, independent):
    G, _ = mlp_pair()
    D = make_d()
    t = ganfast.Trainer(G, D, *adam_pair(G, D), seed=0)
    t.step(points(16))
    assert t.joint_d_forward is independent


def test_probe_leaves_buffers_and_rng_alone():
    t = _image_trainer(batch_norm=True)
    buffers = [b.clone() for b in t.D.buffers()]
    rng = torch.get_rng_state()
    assert check_models(t.G, t.D, _images(), t._noise, t.latent_shape, t._autocast) is False
    assert all(torch.equal(a, b) for a, b in zip(buffers, t.D.buffers()))
    assert torch.equal(rng, torch.get_rng_state())


def test_batch_independent_refuses_a_d_that_fails_on_the_joint_batch_or_returns_one_value():
    class OnlyFour(nn.Module):
        def forward(self, x):
            if x.shape[0] != 4:
                raise RuntimeError("batch of 4 only")
            return x[:, :1]

    a, b = torch.randn(4, 2), torch.randn(4, 2)
    assert batch_independent(OnlyFour(), a, b, None, OnlyFour()(a)) is False

    class Pooled(nn.Module):  # one value for the whole batch
        def forward(self, x):
            return x.sum().reshape(1, 1)

    assert batch_independent(Pooled(), a, b, None, Pooled()(a)) is False
    lin = nn.Linear(2, 1)
    assert batch_independent(lin, a, b, None, lin(a)) is True


def _pair_of_runs(make, steps=4, real=None, **kw):
    """The same trainer twice from the same weights, with and without the joint D call; returns both."""
    runs = []
    for joint in (True, False):
        G, D = make()
        t = ganfast.Trainer(G, D, *adam_pair(G, D), seed=0, **kw)
        t.joint_d_forward = joint
        hist = [t.step(real) for _ in range(steps)]
        runs.append((t, hist))
    return runs


@pytest.mark.parametrize("kw", [
    {"loss": "ns"},
    {"loss": "hinge", "penalty": "wgan-gp"},  # the loss's D calls are joint, the penalty's own x̂ call is not
    {"loss": "rahinge", "spectral_norm": True},
    {"loss": "ns", "pack": 2},  # D takes pairs of points: 4 inputs
    {"loss": "ns", "accumulate": 2},  # one joint call per micro-batch
    {"loss": "wasserstein", "d_steps": 2, "ema": 0.9},
])
def test_joint_call_gives_the_separate_calls_results(kw):
    def make():
        G, D = mlp_pair(dtype=torch.float64)
        if kw.get("pack"):
            D[0] = nn.Linear(4, 8).double()
        return G, D

    (tj, hj), (ts, hs) = _pair_of_runs(make, real=points(16, torch.float64), **kw)
    for a, b in zip(hj, hs):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-10, abs=1e-12), k
    for p, q in zip(list(tj.G.parameters()) + list(tj.D.parameters()),
                    list(ts.G.parameters()) + list(ts.D.parameters())):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_joint_call_with_labels():
    def make():
        torch.manual_seed(0)
        return CondG(3).double(), CondD(3).double()

    y = torch.arange(16) % 3
    (tj, hj), (ts, hs) = _pair_of_runs(make, real=(points(16, torch.float64), y), num_classes=3)
    assert hj[-1]["d_loss"] == pytest.approx(hs[-1]["d_loss"], rel=1e-10)
    for p, q in zip(tj.D.parameters(), ts.D.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("penalty, d_step_batches", [
    (None, [32]),  # one joint call on 16 real + 16 fake
    ("r1", [16, 16]),  # R1 differentiates D(real) alone: separate calls
    ("r2", [16, 16]),
    ("wgan-gp", [32, 16]),  # joint loss call, then D(x̂)
])
def test_which_d_steps_are_joint(penalty, d_step_batches):
    G, D = mlp_pair()
    t = ganfast.Trainer(G, D, *adam_pair(G, D), seed=0, penalty=penalty)
    real = points(16)
    t.step(real)
    assert t.joint_d_forward
    seen = []
    D.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    t.step(real)
    assert seen == d_step_batches + [16]  # ...and the G step's D(fake)


def test_inputs_above_the_size_limit_are_called_separately():
    G, D = mlp_pair()
    t = ganfast.Trainer(G, D, *adam_pair(G, D), seed=0)
    t.joint_d_max_elements = 64
    for batch, d_step_batches in ((32, [64]), (33, [33, 33])):  # points: 2 numbers each
        t.step(points(batch))
        seen = []
        hook = D.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
        t.step(points(batch))
        hook.remove()
        assert seen == d_step_batches + [batch]


def test_no_size_limit_by_default():
    """Measured on the CPU (with the trainer's malloc settings) and an H200: one call was never slower."""
    from ganfast.train.trainer import JOINT_D_MAX_ELEMENTS
    assert JOINT_D_MAX_ELEMENTS >= 2 ** 62
    G, D = mlp_pair()
    t = ganfast.Trainer(G, D, *adam_pair(G, D), seed=0)
    assert t.joint_d_max_elements == JOINT_D_MAX_ELEMENTS
    n = 20_000  # 40000 numbers a side: above the CPU's former limit of 32768
    t.step(points(n))
    seen = []
    hook = D.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    t.step(points(n))
    hook.remove()
    assert seen == [2 * n, n]


def test_joint_forward_can_be_switched_off_before_the_first_step():
    G, D = mlp_pair()
    t = ganfast.Trainer(G, D, *adam_pair(G, D), seed=0)
    t.joint_d_forward = False
    t.step(points(16))
    assert t.joint_d_forward is False
    copy.deepcopy(t.D)  # the trainer keeps no hook or wrapper on D
