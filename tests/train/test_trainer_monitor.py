"""Stability monitor: rollback on a discriminator that returns NaN once, divergence error after K
rollbacks (nothing written before is lost), rollback to a checkpoint on disk, and the flags."""
import csv
import logging
import math

import pytest
import torch
from torch import nn

import ganfast
from ganfast.train import DivergenceError, StabilityMonitor, checkpoint as ckpt
from trainer_models import adam_pair, mlp_pair, points


class NaNAfter(nn.Module):
    """Wraps a discriminator; returns NaN logits on calls first..last (1-based, inclusive)."""

    def __init__(self, inner, first, last=None):
        super().__init__()
        self.inner, self.first, self.last, self.calls = inner, first, last or first, 0

    def forward(self, x):
        self.calls += 1
        out = self.inner(x)
        return out * math.nan if self.first <= self.calls <= self.last else out


def _setup(first, last=None, **mon):
    G, D0 = mlp_pair()
    D = NaNAfter(D0, first, last)
    g_opt, d_opt = adam_pair(G, D, lr=1e-2)
    t = ganfast.Trainer(G, D, g_opt, d_opt, seed=0, monitor=StabilityMonitor(**mon))
    t.joint_d_forward = False  # D(real), D(fake) and the G step's D(fake): 3 calls a step
    return t, g_opt, d_opt


def test_nan_once_rolls_back_lowers_lrs_and_continues(tmp_path, caplog):
    # calls 1-3 are the input check; each step calls D 3 times: call 16 = the D step of step 5
    t, g_opt, d_opt = _setup(16, snapshot_every=2, lr_factor=0.25)
    with caplog.at_level(logging.WARNING, logger="ganfast.train"):
        hist = t.fit(points(64), steps=8, batch_size=16, log_dir=tmp_path, progress=False)
    assert t.monitor.rollbacks == 1 and t.step_count == 8
    assert g_opt.param_groups[0]["lr"] == pytest.approx(0.25e-2)
    assert d_opt.param_groups[0]["lr"] == pytest.approx(0.25e-2)
    ev = [e for e in t.monitor.events if e.kind == "rollback"]
    assert len(ev) == 1 and ev[0].step == 5 and "d_loss = nan" in ev[0].message
    assert "rolled back" in caplog.text and "d_loss" in caplog.text
    # the failed step's update was discarded: steps 1..8 each logged once, all finite
    assert [h["step"] for h in hist] == list(range(1, 9))
    assert all(math.isfinite(v) for h in hist for v in h.values())
    assert all(torch.isfinite(p).all() for p in list(t.G.parameters()) + list(t.D.parameters()))
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == list(range(1, 9))


def test_rollback_restores_the_snapshot_exactly():
    t, *_ = _setup(10, snapshot_every=1)  # calls 10-12 = step 3
    real = points(16)
    t.step(real)
    t.step(real)
    params = [p.clone() for p in t.D.parameters()]
    t.step(real)
    assert t.rolled_back and t.step_count == 2
    assert all(torch.equal(a, b) for a, b in zip(params, t.D.parameters()))


def test_divergence_error_after_k_rollbacks_keeps_what_was_written(tmp_path):
    t, *_ = _setup(3 + 3 * 6 + 1, 10 ** 9, snapshot_every=1, max_rollbacks=2)  # NaN from step 7 on
    with pytest.raises(DivergenceError, match=r"diverged at step 7: d_loss = nan.*after 2 rollback"):
        t.fit(points(64), steps=20, batch_size=16, log_dir=tmp_path, checkpoint_every=3, progress=False)
    assert t.monitor.rollbacks == 2
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == list(range(1, 7))
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints")] == [
        ckpt.checkpoint_name(3), ckpt.checkpoint_name(6)]
    assert [e.kind for e in t.monitor.events] == ["rollback", "rollback", "divergence"]


def test_rollback_from_disk_without_snapshots(tmp_path):
    t, *_ = _setup(3 + 3 * 4 + 1, snapshot_every=0)  # NaN at step 5
    t.fit(points(64), steps=7, batch_size=16, checkpoint_dir=tmp_path, checkpoint_every=2, progress=False)
    assert t.monitor.rollbacks == 1 and t.step_count == 7
    assert all(torch.isfinite(p).all() for p in t.D.parameters())


def test_no_snapshot_and_no_checkpoint_is_a_clear_error():
    t, *_ = _setup(4, snapshot_every=0)
    with pytest.raises(DivergenceError, match="no snapshot or checkpoint to roll back to"):
        t.step(points(16))


def test_monitor_flags_exploding_grads_and_a_winning_discriminator(caplog):
    m = StabilityMonitor(explode_factor=10, explode_warmup=5, d_win_steps=4)
    base = dict(d_loss=0.5, g_loss=1.0, penalty=0.0, real_acc=0.5, fake_acc=0.5, d_grad_norm=1.0, g_grad_norm=1.0)
    for s in range(10):
        assert m.observe(s, base) == []
    with caplog.at_level(logging.WARNING, logger="ganfast.train"):
        ev = m.observe(10, dict(base, d_grad_norm=50.0))
    assert [e.kind for e in ev] == ["exploding_grad"] and "d_grad_norm" in ev[0].message
    assert "running average" in caplog.text
    kinds = []
    for i, g in enumerate([2.0, 2.5, 3.0, 3.5, 4.0]):
        kinds += [e.kind for e in m.observe(20 + i, dict(base, real_acc=1.0, fake_acc=1.0, g_loss=g))]
    assert kinds == ["d_wins"]  # flagged once, at the 4th winning step
    # winning but with g_loss falling is not flagged
    m2 = StabilityMonitor(d_win_steps=3)
    assert not any(m2.observe(i, dict(base, real_acc=1.0, fake_acc=1.0, g_loss=5.0 - i)) for i in range(6))



def test_updates_the_grad_scaler_skipped_leave_the_exploding_gradient_check_alone():
    """Under fp16 a step whose gradients overflowed (the GradScaler skipped it) reports an inf or NaN
    grad norm: it is not divergence, and must not become the running average either (a NaN average
    had switched the exploding-gradient flag off for the rest of the run)."""
    m = StabilityMonitor(explode_factor=10, explode_warmup=5)
    base = dict(d_loss=0.5, g_loss=1.0, penalty=math.nan, real_acc=0.5, fake_acc=0.5)
    assert m.observe(0, dict(base, d_grad_norm=math.inf, g_grad_norm=math.nan)) == []  # the first read
    for s in range(1, 10):
        assert m.observe(s, dict(base, d_grad_norm=1.0, g_grad_norm=1.0)) == []
        assert m.observe(s, dict(base, d_grad_norm=math.inf, g_grad_norm=1.0)) == []
    assert m.state_dict()["gn_avg"] == {"d_grad_norm": 1.0, "g_grad_norm": 1.0}
    assert [e.kind for e in m.observe(10, dict(base, d_grad_norm=50.0, g_grad_norm=1.0))] == ["exploding_grad"]

def test_nonfinite_checks_and_state_roundtrip():
    stats = dict(d_loss=1.0, g_loss=math.inf, penalty=0.0, d_grad_norm=math.nan, g_grad_norm=1.0, sigma_max=1.0)
    assert StabilityMonitor.nonfinite(stats) == ["g_loss", "d_grad_norm"]
    assert StabilityMonitor.nonfinite(stats, check_grads=False) == ["g_loss"]
    m = StabilityMonitor()
    m.divergence(3, ["g_loss"], stats)
    m2 = StabilityMonitor()
    m2.load_state_dict(m.state_dict())
    assert m2.state_dict() == m.state_dict() and m2.rollbacks == 1 and m2.lr_scale == 0.5
    with pytest.raises(ValueError, match="lr_factor"):
        StabilityMonitor(lr_factor=0)


class _NaNGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * math.nan


class NaNGradOnce(nn.Module):
    """Finite outputs; on call `at` the gradient flowing back through them is NaN."""

    def __init__(self, inner, at):
        super().__init__()
        self.inner, self.at, self.calls = inner, at, 0

    def forward(self, x):
        self.calls += 1
        out = self.inner(x)
        return _NaNGrad.apply(out) if self.calls == self.at else out


def test_nonfinite_gradient_with_finite_loss_rolls_back():
    G, D0 = mlp_pair()
    D = NaNGradOnce(D0, 3 * 2 + 2)  # the D step of step 3
    t = ganfast.Trainer(G, D, *adam_pair(G, D), seed=0, monitor=StabilityMonitor(snapshot_every=1))
    real = points(16)
    t.step(real)
    t.step(real)
    stats = t.step(real)
    assert math.isfinite(stats["d_loss"]) and math.isnan(stats["d_grad_norm"])
    assert t.rolled_back and t.step_count == 2 and "d_grad_norm = nan" in t.monitor.events[-1].message
    assert all(torch.isfinite(p).all() for p in D.parameters())


def test_copy_state_is_a_deep_copy_that_reuses_an_earlier_copys_tensors():
    from ganfast.train.monitor import copy_state
    state = {"w": torch.randn(3, 4), "opt": {"state": {0: {"step": torch.tensor(2.0), "m": torch.randn(5)}},
                                             "groups": [{"lr": 0.1, "params": [0]}]},
             "rng": (3, tuple(range(5)), None), "names": ["a", "b"], "t": torch.randn(4, 3).t()}
    first = copy_state(state)
    assert first["w"] is not state["w"] and torch.equal(first["w"], state["w"])
    state["w"].add_(1)
    state["opt"]["groups"][0]["lr"] = 0.2
    assert not torch.equal(first["w"], state["w"]) and first["opt"]["groups"][0]["lr"] == 0.1
    second = copy_state(state, first)
    assert second["w"] is first["w"] and torch.equal(second["w"], state["w"])  # written in place
    assert second["opt"]["state"][0]["m"] is first["opt"]["state"][0]["m"]
    assert second["t"] is first["t"] and torch.equal(second["t"], state["t"])  # same (transposed) strides
    assert second["opt"]["groups"][0]["lr"] == 0.2 and second["rng"] == state["rng"]
    assert second["names"] == ["a", "b"] and second["names"] is not state["names"]
    state["w"] = torch.randn(2, 2)  # a new shape: a new tensor
    third = copy_state(state, second)
    assert third["w"] is not second["w"] and torch.equal(third["w"], state["w"]) and third["w"] is not state["w"]
    state["t"] = state["t"].contiguous()  # other strides: a new tensor too
    assert copy_state(state, third)["t"] is not third["t"]


def test_rollback_after_reused_snapshots_restores_the_last_one():
    t, *_ = _setup(3 + 3 * 3 + 1, snapshot_every=1)  # NaN at step 4: snapshots of steps 1-3 reuse one another's tensors
    real = points(16)
    for _ in range(3):
        t.step(real)
    params = [p.clone() for p in list(t.G.parameters()) + list(t.D.parameters())]
    state = [s["exp_avg"].clone() for s in t.d_optimizer.state.values()]
    t.step(real)
    assert t.rolled_back and t.step_count == 3
    assert all(torch.equal(a, b) for a, b in zip(params, list(t.G.parameters()) + list(t.D.parameters())))
    assert all(torch.equal(a, s["exp_avg"]) for a, s in zip(state, t.d_optimizer.state.values()))
    t.step(real)  # training goes on from the restored state, the snapshot intact
    assert not t.rolled_back and t.step_count == 4
