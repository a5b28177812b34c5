"""The trainer in real use: no surprises on resume (a run of another configuration is refused,
checkpoints are plain torch files), warnings that save a run, data faults named as such, and the
extension points (schedulers, gradient accumulation, EMA ramp-up, extra loss terms, DataLoader resume)."""
import hashlib
import io
import math
import warnings

import pytest
import torch
from torch import nn

import ganfast
from ganfast.train import StabilityMonitor, checkpoint as ckpt
from ganfast.train.checkpoint import ResumeMismatchError
from trainer_models import adam_pair, mlp_pair, points, recorded_batch_sizes


def _trainer(seed=0, lr=1e-2, dtype=torch.float32, **kw):
    G, D = mlp_pair(dtype=dtype)
    return ganfast.Trainer(G, D, *adam_pair(G, D, lr), seed=seed, **kw)


def _mlp_models_trainer():
    """ganfast.models' MLP pair at the benchmarks' learning rate (its D's first outputs lie in [0, 1])."""
    from ganfast.models import MLPDiscriminator, MLPGenerator
    torch.manual_seed(0)
    G, D = MLPGenerator(2, 2, 128), MLPDiscriminator(2, 128)
    return ganfast.Trainer(G, D, *adam_pair(G, D, 2e-4), seed=0)


class Killed(Exception):
    pass


def _kill_at(step):
    def callback(trainer, s, stats):
        if s == step:
            raise Killed
    return callback


# --- resume only what matches ------------------------------------------------------------------

def test_resume_of_another_configuration_is_refused_with_the_differences(tmp_path):
    _trainer().fit(points(64), steps=5, batch_size=16, log_dir=tmp_path, progress=False)
    other = _trainer(lr=1e-5, loss="hinge")
    with pytest.raises(ResumeMismatchError) as e:
        other.fit(points(64), steps=10, batch_size=16, log_dir=tmp_path, progress=False)
    msg = str(e.value)
    assert "loss: 'ns' in the checkpoint, 'hinge' now" in msg
    assert "g_optimizer.hyperparameters.lr: 0.01 in the checkpoint, 1e-05 now" in msg
    assert "new log_dir" in msg and 'resume="force"' in msg
    assert other.step_count == 0  # nothing was loaded
    G, D = mlp_pair(hidden=16)  # other parameter shapes
    wide = ganfast.Trainer(G, D, *adam_pair(G, D), seed=0)
    with pytest.raises(ResumeMismatchError, match=r"generator_shapes.0.weight: \[8, 3\] in the checkpoint, \[16, 3\]"):
        wide.fit(points(64), steps=10, batch_size=16, log_dir=tmp_path, progress=False)
    # the two ways out: force (same shapes), or a new folder
    forced = _trainer(lr=1e-5, loss="hinge")
    forced.fit(points(64), steps=6, batch_size=16, log_dir=tmp_path, progress=False, resume="force")
    assert forced.step_count == 6
    fresh = _trainer(lr=1e-5, loss="hinge")
    fresh.fit(points(64), steps=2, batch_size=16, log_dir=tmp_path / "new", progress=False)
    assert fresh.step_count == 2
    with pytest.raises(ValueError, match="resume must be"):
        _trainer().fit(points(64), steps=1, resume="yes", progress=False)


def test_same_configuration_resumes_whatever_the_seed(tmp_path):
    _trainer().fit(points(64), steps=4, batch_size=16, log_dir=tmp_path, progress=False)
    t = _trainer(seed=9)
    t.fit(points(64), steps=6, batch_size=16, log_dir=tmp_path, progress=False)
    assert t.step_count == 6


# --- checkpoints are torch files ----------------------------------------------------------------

def test_plain_torch_load_reads_a_checkpoint(tmp_path):
    t = _trainer(ema=0.9)
    t.step(points(16))
    path = t.save_checkpoint(tmp_path / "a.pt")
    state = torch.load(path)  # weights_only=True, the default
    assert state["step"] == 1 and torch.equal(state["generator"]["0.weight"], t.G[0].weight)
    assert ckpt.load(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]  # one file, written atomically


def test_old_format_checkpoints_still_load(tmp_path):
    t = _trainer()
    t.step(points(16))
    buf = io.BytesIO()
    torch.save(t.state_dict(), buf)
    payload = buf.getvalue()
    old = tmp_path / "old.pt"
    old.write_bytes(ckpt.OLD_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
    u = _trainer(seed=3)
    u.load_checkpoint(old)
    assert u.step_count == 1 and torch.equal(u.G[0].weight, t.G[0].weight)
    old.write_bytes(old.read_bytes()[:-10])
    with pytest.raises(ckpt.CheckpointError, match="corrupt or truncated"):
        ckpt.load(old)


# --- warnings that save a run -------------------------------------------------------------------

def test_a_sigmoid_head_is_named_once():
    G, D = mlp_pair()
    D = nn.Sequential(D, nn.Sigmoid())  # DCGAN's D: a probability
    t = ganfast.Trainer(G, D, *adam_pair(G, D), seed=0)
    with pytest.warns(UserWarning, match=r"lay in \[0, 1\].*Sigmoid.*loss='ns' takes logits") as rec:
        for _ in range(55):
            t.step(points(16))
    assert sum("Sigmoid" in str(w.message) for w in rec) == 1
    with warnings.catch_warnings():  # a D of logits: no warning, ganfast's own MLP D included
        warnings.simplefilter("error")
        for u in (_trainer(), _mlp_models_trainer()):
            for _ in range(55):
                u.step(points(256))


@pytest.mark.parametrize("last, scale, shift, warned", [
    (nn.Tanh(), 255.0, 0.0, "[-1, 1]"),           # images in [0, 255] against a Tanh: the usual mistake
    (nn.Tanh(), 2.0, -1.0, None),                 # [-1, 1]
    (nn.Tanh(), 1.0, 0.0, None),                  # [0, 1]: inside the range, only part of it
    (nn.Sigmoid(), 2.0, -1.0, "[0, 1]"),
    (nn.Sigmoid(), 1.0, 0.0, None),
    (nn.Hardtanh(-2.0, 2.0), 3.0, -1.5, None),    # [-1.5, 1.5]
    (nn.ReLU6(), 8.0, 0.0, "[0, 6]"),
    (nn.Identity(), 255.0, 0.0, None),            # an unbounded output takes any data
])
def test_data_outside_the_generators_output_range_is_named(last, scale, shift, warned):
    G, D = mlp_pair()
    G = nn.Sequential(G, last)
    t = ganfast.Trainer(G, D, *adam_pair(G, D), seed=0)
    real = torch.linspace(0, 1, 32).reshape(16, 2) * scale + shift
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        t.step(real)
        t.step(real)
    named = [str(w.message) for w in rec if "generator ends in" in str(w.message)]
    if warned is None:
        assert named == []
    else:
        assert len(named) == 1  # the first batch's check only
        lo, hi = real.min().item(), real.max().item()
        assert named[0].startswith(f"the real data lie in [{lo:.4g}, {hi:.4g}], but the generator ends in "
                                   f"{type(last).__name__}, whose outputs lie in {warned}")


def test_lazy_regularization_reports_the_optimizer_change():
    pytest.importorskip("ganfast.penalties")
    G, D = mlp_pair()
    g_opt = torch.optim.Adam(G.parameters(), 2e-4, betas=(0.0, 0.99))
    d_opt = torch.optim.Adam(D.parameters(), 2e-4, betas=(0.0, 0.99))
    with pytest.warns(UserWarning, match=r"penalty_interval=16.*d_optimizer.*lr 0.0002, betas \(0, 0.99\) -> "
                                         r"lr 0.000188235, betas \(0, 0.990585\)"):
        ganfast.Trainer(G, D, g_opt, d_opt, penalty="r1", penalty_interval=16)
    assert d_opt.param_groups[0]["lr"] == pytest.approx(2e-4 * 16 / 17)


def test_generator_shape_differing_from_the_data_fails_before_any_update():
    t = _trainer()
    before = [p.clone() for p in t.G.parameters()]
    with pytest.raises(ValueError, match=r"generator's output shape \(2,\).*data's \(3,\)"):
        t.fit(torch.randn(32, 3), steps=2, batch_size=8, progress=False)
    assert t.step_count == 0 and all(torch.equal(a, b) for a, b in zip(before, t.G.parameters()))


def test_nonfinite_data_is_named_as_the_cause():
    data = points(64)
    data[5, 1] = math.nan
    t = _trainer(monitor=StabilityMonitor(snapshot_every=1))
    with pytest.raises(ValueError, match=r"real data of step \d+ is not finite.*1 NaN or inf.*data is the cause"):
        t.fit(data, steps=20, batch_size=16, progress=False)
    assert t.monitor.rollbacks == 0



def test_eight_bit_images_are_refused_with_the_scaling():
    t = _trainer()
    with pytest.raises(TypeError, match=r"floating point.*got torch.uint8.*x.float\(\) / 127.5 - 1"):
        t.fit(torch.randint(0, 256, (32, 2), dtype=torch.uint8), steps=1, batch_size=8, progress=False)


@pytest.mark.parametrize("conditional", [False, True])
def test_dict_batches_are_refused_with_their_keys_and_a_collate_fn(conditional):
    """A Hugging Face dataset's rows are dicts; the DataLoader's default collation keeps them so."""
    from trainer_models import CondD, CondG
    rows = [{"image": x, "label": i % 3} for i, x in enumerate(points(32))]
    loader = torch.utils.data.DataLoader(rows, batch_size=8)
    if conditional:
        G, D = CondG(3), CondD(3)
        t = ganfast.Trainer(G, D, *adam_pair(G, D), num_classes=3, seed=0)
    else:
        t = _trainer()
    with pytest.raises((TypeError, ValueError), match=r"a dict with keys 'image', 'label': give the DataLoader a "
                                                      r"collate_fn that returns \(images, labels\)"):
        t.fit(loader, steps=1, progress=False)
    # the recipe the message gives works
    recipe = torch.utils.data.DataLoader(rows, batch_size=8, collate_fn=lambda rows: (
        torch.stack([r["image"] for r in rows]), torch.tensor([r["label"] for r in rows])))
    assert len(t.fit(recipe, steps=2, progress=False)) == 2

# --- extension points ---------------------------------------------------------------------------

@pytest.mark.parametrize("case", [dict(), dict(penalty="r1"), dict(penalty="wgan-gp", loss="hinge"),
                                  dict(penalty="dragan", d_steps=2), dict(penalty="r2", ema=0.9),
                                  dict(penalty="r1", spectral_norm=True)],
                         ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "plain")
def test_accumulation_equals_the_unsplit_step(case):
    if case.get("penalty"):
        pytest.importorskip("ganfast.penalties")
    real = points(32, dtype=torch.float64)
    whole, split = _trainer(dtype=torch.float64, **case), _trainer(dtype=torch.float64, accumulate=4, **case)
    for _ in range(3):
        a, b = whole.step(real), split.step(real)
    for p, q in zip(list(whole.G.parameters()) + list(whole.D.parameters()),
                    list(split.G.parameters()) + list(split.D.parameters())):
        torch.testing.assert_close(q, p, rtol=1e-10, atol=1e-12)
    for k in a:  # the losses' statistics (means of logits, accuracies) are summed in float32 by the kernels
        assert b[k] == pytest.approx(a[k], rel=1e-6, abs=1e-9), k
    with pytest.raises(ValueError, match="not a multiple of 4"):
        split.step(real[:30])


def test_accumulation_refuses_a_relativistic_loss():
    with pytest.raises(ValueError, match="accumulate=2 needs a loss that is a mean over samples"):
        _trainer(loss="rahinge", accumulate=2)


def _scheduled(seed=0):
    G, D = mlp_pair()
    g_opt, d_opt = adam_pair(G, D)
    g_s = torch.optim.lr_scheduler.StepLR(g_opt, step_size=3, gamma=0.5)
    d_s = torch.optim.lr_scheduler.LambdaLR(d_opt, lambda s: 1.0 / (1 + s))
    return ganfast.Trainer(G, D, g_opt, d_opt, seed=seed, schedulers=(g_s, d_s))


def test_a_scheduler_survives_kill_and_resume_exactly(tmp_path):
    data = points(64)
    killed = _scheduled()
    with pytest.raises(Killed):
        killed.fit(data, steps=12, batch_size=16, log_dir=tmp_path, checkpoint_every=3, progress=False,
                   callback=_kill_at(8))
    resumed = _scheduled(seed=5)
    resumed.fit(data, steps=12, batch_size=16, log_dir=tmp_path, checkpoint_every=3, progress=False)
    whole = _scheduled()
    whole.fit(data, steps=12, batch_size=16, progress=False)
    assert [s.last_epoch for s in resumed.schedulers] == [s.last_epoch for s in whole.schedulers] == [12, 12]
    for opt_r, opt_w in zip(resumed.optimizers, whole.optimizers):
        assert opt_r.param_groups[0]["lr"] == opt_w.param_groups[0]["lr"]
    assert whole.g_optimizer.param_groups[0]["lr"] == 1e-2 * 0.5 ** 4
    for p, q in zip(resumed.G.parameters(), whole.G.parameters()):
        assert torch.equal(p, q)


def test_a_scheduler_composes_with_the_rollback_cut():
    t = _scheduled()
    for _ in range(2):
        t.step(points(16))
    t.monitor.lr_scale = 0.5  # as after one rollback
    t.g_optimizer.param_groups[0]["lr"] *= 0.5
    t.d_optimizer.param_groups[0]["lr"] *= 0.5
    t.step(points(16))  # step 3: StepLR halves
    assert t.g_optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5 * 0.5)
    assert t.d_optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 / 4 * 0.5)
    with pytest.raises(ValueError, match="another optimizer"):
        ganfast.Trainer(t.G, t.D, t.g_optimizer, t.d_optimizer, schedulers=tuple(t.schedulers)[::-1])


def test_ema_rampup():
    t = _trainer(ema=0.999, ema_rampup=0.05)
    assert t.ema.beta_at(0) == 0.0  # the first update copies G
    assert t.ema.beta_at(100) == pytest.approx(0.5 ** (1 / 5))  # half-life 100 * 0.05 steps
    assert t.ema.beta_at(10 ** 6) == pytest.approx(0.999)
    t.step(points(16))
    for e, g in zip(t.ema_g.parameters(), t.G.parameters()):
        assert torch.equal(e, g)
    with pytest.raises(ValueError, match="ema_rampup"):
        _trainer(ema_rampup=0.05)


def test_extra_loss_hooks_see_the_step_and_change_it():
    seen = []

    def extra_d(inp):
        seen.append(("d", inp.real.shape, inp.fake.shape, inp.real_logits.shape, inp.fake_logits.shape))
        return 0.5 * inp.real_logits.pow(2).mean()

    def extra_g(inp):
        seen.append(("g", inp.fake.shape, inp.fake_logits.shape, float(inp.loss.detach())))
        return (inp.fake.mean(0) - inp.real.mean(0)).pow(2).sum()  # feature matching on the samples

    a = _trainer()
    b = _trainer(extra_d_loss=extra_d, extra_g_loss=extra_g, accumulate=2)
    sa, sb = a.step(points(16)), b.step(points(16))
    assert [s[0] for s in seen] == ["d", "d", "g", "g"]
    assert seen[0][1:] == (torch.Size([8, 2]), torch.Size([8, 2]), torch.Size([8, 1]), torch.Size([8, 1]))
    assert sa["d_loss"] == pytest.approx(sb["d_loss"])  # the logged loss is the GAN loss of the same weights
    assert not torch.equal(a.D[0].weight, b.D[0].weight) and not torch.equal(a.G[0].weight, b.G[0].weight)


@pytest.mark.parametrize("sampler", ["shuffle", "weighted", "subset"])
def test_dataloader_position_is_resumed_exactly(tmp_path, caplog, sampler):
    """With a shuffling sampler: RandomSampler, and the class-balancing WeightedRandomSampler or a
    SubsetRandomSampler (which drew from the global RNG, whose state at the epoch's start no
    checkpoint held: the resumed epoch took other samples)."""
    data = torch.utils.data.TensorDataset(points(80))
    weights = torch.linspace(1.0, 3.0, 80)

    def run(log_dir, steps, callback=None, seed=0):
        how = {"shuffle": dict(shuffle=True),
               "weighted": dict(sampler=torch.utils.data.WeightedRandomSampler(weights, 80)),
               "subset": dict(sampler=torch.utils.data.SubsetRandomSampler(range(0, 80, 1)))}[sampler]
        loader = torch.utils.data.DataLoader(data, batch_size=16, drop_last=True, **how)
        t = _trainer(seed=seed)
        t.fit(loader, steps=steps, log_dir=log_dir, checkpoint_every=3, progress=False, callback=callback)
        return t

    with pytest.raises(Killed):
        run(tmp_path / "a", 12, _kill_at(8))  # checkpoint at step 6: one batch into the second epoch
    state = ckpt.load_latest_valid(tmp_path / "a" / "checkpoints")[0]["data"]
    assert state["kind"] == "loader" and (state["epoch"], state["batches"]) == (1, 1)
    with caplog.at_level("WARNING", logger="ganfast.train"):
        resumed = run(tmp_path / "a", 12, seed=4)
    assert not [r for r in caplog.records if "replaying" in r.getMessage()]  # skipped, not loaded again
    whole = run(tmp_path / "b", 12)
    for p, q in zip(list(resumed.G.parameters()) + list(resumed.D.parameters()),
                    list(whole.G.parameters()) + list(whole.D.parameters())):
        assert torch.equal(p, q)


def _skip_messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "skips it" in r.getMessage()]


@pytest.mark.parametrize("n, accumulate, skipped", [(70, 4, True), (72, 4, False), (70, 1, False), (70, 2, False)])
def test_a_loaders_incomplete_last_batch_the_step_cannot_split_is_skipped(caplog, n, accumulate, skipped):
    """A DataLoader keeping its last batch (drop_last=False) that the step cannot split would fail an
    epoch into the run: fit says so before the first step and skips that batch every epoch, as
    drop_last=True would (70 samples in batches of 16 leave 6; 72 leave 8)."""
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(points(n)), batch_size=16, shuffle=True)
    t = _trainer(accumulate=accumulate)
    sizes = recorded_batch_sizes(t)
    with caplog.at_level("WARNING", logger="ganfast.train"):
        t.fit(loader, steps=12, progress=False)  # into the third epoch
    assert t.step_count == 12
    tail = n % 16
    assert sizes == ([16] * 12 if skipped else ([16] * 4 + [tail]) * 2 + [16] * 2)
    assert _skip_messages(caplog) == ([
        f"the DataLoader's incomplete last batch ({n} samples in batches of 16 leave {tail}) cannot be split by "
        f"accumulate=4: fit skips it every epoch, as drop_last=True would (pass drop_last=True to the DataLoader "
        f"to say so)"] if skipped else [])


def test_a_short_batch_given_to_step_names_the_likely_cause():
    """Trainer.step refuses a batch it cannot split, with the hint (fit skips such a batch instead)."""
    t = _trainer(accumulate=4)
    t.step(points(16))
    with pytest.raises(ValueError, match="not a multiple of 4 .a data loader's incomplete last batch\\? pass it "
                                         "drop_last=True"):
        t.step(points(6))


@pytest.mark.parametrize("n, batch_norm_in, skipped", [(65, "D", True), (65, "G", True), (65, None, False),
                                                       (66, "D", False), (64, "D", False)])
def test_a_last_batch_of_one_sample_is_skipped_where_batch_norm_would_fail(caplog, n, batch_norm_in, skipped):
    G, D = mlp_pair()
    bn = nn.Sequential(nn.BatchNorm1d(2), nn.Linear(2, 2))  # 2 features: G's output and D's input
    if batch_norm_in == "G":
        G = nn.Sequential(G, bn)
    elif batch_norm_in == "D":
        D = nn.Sequential(bn, D)
    t = ganfast.Trainer(G, D, *adam_pair(G, D), seed=0)
    sizes = recorded_batch_sizes(t)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(points(n)), batch_size=16)
    with caplog.at_level("WARNING", logger="ganfast.train"):
        t.fit(loader, steps=6, progress=False)  # past the first epoch's last batch
    tail = n % 16
    assert sizes == ([16] * 6 if skipped or not tail else [16] * 4 + [tail, 16])
    assert _skip_messages(caplog) == ([f"the DataLoader's incomplete last batch ({n} samples in batches of 16 leave 1) "
                                       "gives a model one sample per call, on which its BatchNorm layers fail in "
                                       "training (one value per channel): fit skips it every epoch, as "
                                       "drop_last=True would (pass drop_last=True to the DataLoader to say so)"]
                                      if skipped else [])


class _Stream(torch.utils.data.IterableDataset):
    def __init__(self, x):
        self.x = x

    def __iter__(self):
        return iter(self.x)


@pytest.mark.parametrize("batched_by", ["DataLoader", "itself"])
def test_a_streams_incomplete_batch_the_step_cannot_split_is_skipped_when_it_comes(tmp_path, caplog, batched_by):
    """A stream's length is unknown up front: its last batch of 6 (70 samples in batches of 16), which
    accumulate=4 cannot split, is skipped when it comes, with one warning for the run, instead of
    ending the run an epoch in. An iterable of batches (no batch_size to read) takes its largest
    batch so far as the full size. Skipped batches count in the position: a resumed run matches one
    that never stopped."""
    x = points(70)
    batches = list(x.split(16))

    def run(log_dir, steps, callback=None):
        t = _trainer(accumulate=4)
        sizes = recorded_batch_sizes(t)
        data = torch.utils.data.DataLoader(_Stream(x), batch_size=16) if batched_by == "DataLoader" else batches
        t.fit(data, steps=steps, log_dir=log_dir, checkpoint_every=3, progress=False, callback=callback)
        return t, sizes

    with caplog.at_level("WARNING", logger="ganfast.train"):
        whole, sizes = run(tmp_path / "whole", 10)
    assert sizes == [16] * 10 and whole.step_count == 10
    assert _skip_messages(caplog) == [
        "the data's incomplete batch of 6 samples (full batches hold 16) cannot be split by accumulate=4: fit skips it "
        "and any like it, as drop_last=True would (pass drop_last=True to the DataLoader to say so)"]
    with pytest.raises(Killed):
        run(tmp_path / "a", 10, _kill_at(8))  # the step-6 checkpoint lies past the first skip
    resumed, _ = run(tmp_path / "a", 10)
    for p, q in zip(list(resumed.G.parameters()) + list(resumed.D.parameters()),
                    list(whole.G.parameters()) + list(whole.D.parameters())):
        assert torch.equal(p, q)


def test_a_streams_first_batch_is_never_skipped():
    """The first batch sets the full size: one the step cannot split is the configuration's error."""
    with pytest.raises(ValueError, match="accumulate=4 splits each batch into 4 equal micro-batches: the batch "
                                         "size 6 is not a multiple of 4"):
        _trainer(accumulate=4).fit([points(6), points(16)], steps=2, progress=False)


def test_a_stream_without_a_batch_the_step_can_take_is_an_error_not_a_hang():
    """A DataLoader of batch_size 16 over a stream of 10 samples: every epoch's one batch is incomplete
    and accumulate=4 cannot split it; after a whole epoch of skipped batches fit stops with the reason."""
    data = torch.utils.data.DataLoader(_Stream(points(10)), batch_size=16)
    with pytest.raises(ValueError, match=r"no batch of a whole epoch of the data can be taken: a batch of 10 samples "
                                         r"\(full batches hold 16\) cannot be split by accumulate=4"):
        _trainer(accumulate=4).fit(data, steps=2, progress=False)


def test_a_conditional_streams_incomplete_batch_is_skipped_with_its_labels(caplog):
    from trainer_models import CondD, CondG
    G, D = CondG(3), CondD(3)
    t = ganfast.Trainer(G, D, *adam_pair(G, D), seed=0, num_classes=3, pack=1, accumulate=2)
    sizes = recorded_batch_sizes(t)
    y = torch.arange(37) % 3
    data = torch.utils.data.DataLoader(_Stream(list(zip(points(37), y))), batch_size=12)  # 12, 12, 12, 1
    with caplog.at_level("WARNING", logger="ganfast.train"):
        t.fit(data, steps=5, progress=False)
    assert sizes == [12] * 5 and len(_skip_messages(caplog)) == 1


def test_an_iterable_is_replayed_to_its_position_on_resume(tmp_path, caplog):
    """...and says so: on a stream of images the replay loads every batch again, which can take long."""
    x = points(80)

    def run(log_dir, steps, callback=None):
        t = _trainer()
        t.fit(torch.utils.data.DataLoader(_Stream(x), batch_size=16), steps=steps, log_dir=log_dir,
              checkpoint_every=3, progress=False, callback=callback)
        return t

    with pytest.raises(Killed):
        run(tmp_path / "a", 9, _kill_at(5))
    with caplog.at_level("WARNING", logger="ganfast.train"):
        resumed = run(tmp_path / "a", 9)
    whole = run(tmp_path / "b", 9)
    for p, q in zip(resumed.D.parameters(), whole.D.parameters()):
        assert torch.equal(p, q)
    # killed at step 5, resumed from the step-3 checkpoint: 3 batches into epoch 0 (5 batches an epoch)
    assert [r.getMessage() for r in caplog.records if "replaying" in r.getMessage()] == [
        "resuming: replaying the first 3 batches of epoch 0 of the data iterable to reach its position (an iterable "
        "without a batch sampler can only be replayed; a DataLoader over a map-style dataset skips batches without "
        "loading them)"]


class _StatefulStream:
    """Batches of x that keep their own position, as torchdata's StatefulDataLoader does: state_dict()
    after the batches yielded so far, load_state_dict() to continue from it; `loaded` counts the
    batches made."""

    def __init__(self, x, batch=16, state_class=None):
        self.x, self.batch, self.pos, self.loaded, self.state_class = x, batch, 0, 0, state_class

    def __iter__(self):
        while self.pos * self.batch < len(self.x):
            self.pos += 1
            self.loaded += 1
            yield self.x[(self.pos - 1) * self.batch:self.pos * self.batch]
        self.pos = 0  # the next iteration is a new epoch

    def state_dict(self):
        return {"pos": self.pos if self.state_class is None else self.state_class(self.pos)}

    def load_state_dict(self, state):
        self.pos = int(state["pos"])


class _Position(int):
    """A state entry the checkpoint's safe loader (weights_only) refuses."""


@pytest.mark.parametrize("state_class", [None, _Position], ids=["loadable", "unloadable"])
def test_a_stream_that_keeps_its_position_is_restored_not_replayed(tmp_path, caplog, state_class):
    """A stateful iterable resumes from its own state, without loading the batches before it again; one
    whose state a checkpoint cannot load back is replayed, with a warning when saved and when replayed."""
    x = points(80)

    def run(log_dir, steps, callback=None):
        t, stream = _trainer(), _StatefulStream(x, state_class=state_class)
        t.fit(stream, steps=steps, log_dir=log_dir, checkpoint_every=3, progress=False, callback=callback)
        return t, stream

    with caplog.at_level("WARNING", logger="ganfast.train"):
        with pytest.raises(Killed):
            run(tmp_path / "a", 9, _kill_at(5))
        (resumed, stream), (whole, _) = run(tmp_path / "a", 9), run(tmp_path / "b", 9)
    for p, q in zip(list(resumed.G.parameters()) + list(resumed.D.parameters()),
                    list(whole.G.parameters()) + list(whole.D.parameters())):
        assert torch.equal(p, q)
    messages = [r.getMessage() for r in caplog.records]
    replayed = [m for m in messages if "replaying the first 3 batches" in m]
    if state_class is None:  # from the step-3 checkpoint: steps 4-9 load 6 batches, nothing before them
        assert stream.loaded == 6 and not replayed
    else:
        assert stream.loaded == 9 and len(replayed) == 1
        assert any("state_dict() holds objects a checkpoint cannot load back" in m for m in messages)


def test_several_processes_replay_a_stateful_stream():
    """With several ranks each one's stream is its own and rank 0 alone writes checkpoints: the state
    is not kept (own_state=False) and a resume replays."""
    from ganfast.train.batches import LoaderBatches

    stream = _StatefulStream(points(80))
    source = LoaderBatches(stream, "cpu", 0, {"kind": "loader", "epoch": 0, "batches": 2, "sampler_generator": None,
                                              "iterable_state": {"pos": 4}}, own_state=False)
    assert torch.equal(next(source), points(80)[32:48]) and stream.loaded == 3
    assert "iterable_state" not in source.state()


def test_the_step_options_as_one_config_object():
    from ganfast.train import StepConfig
    G, D = mlp_pair()
    t = ganfast.Trainer(G, D, *adam_pair(G, D), config=StepConfig(loss="hinge", d_steps=2, grad_clip=1.0))
    assert t.config.loss == "hinge" and t.config.d_steps == 2 and t.config.grad_clip == (1.0, 1.0)
    with pytest.raises(ValueError, match="one by one or as config="):
        ganfast.Trainer(G, D, *adam_pair(G, D), loss="ns", d_steps=3, config=StepConfig())


# --- models compiled with torch.compile -------------------------------------------------------------
# aot_eager: AOTAutograd's graphs without Inductor's code generation (seconds, not minutes), whose
# backward refuses a second differentiation as Inductor's does.

@pytest.mark.parametrize("case", [dict(penalty="r1"), dict(penalty="r1", spectral_norm=True), dict(penalty="r2"),
                                  dict(loss="wasserstein", penalty="wgan-gp"), dict(penalty="dragan"),
                                  dict(loss="hinge"), dict(spectral_norm=True, accumulate=2),
                                  dict(penalty="r1", spectral_norm=True, accumulate=2),
                                  dict(loss="wasserstein", penalty="wgan-gp", spectral_norm=True, accumulate=2)],
                         ids=lambda c: "-".join(map(str, c.values())))
def test_compiled_models_train_as_the_plain_ones(case):
    """A compiled D's backward cannot be differentiated again: the penalties' forwards of D run the
    module inside the wrapper, and every penalty trains (before, each failed on its first step).
    With spectral norm and accumulation the D step's chunks keep the graph of the W / sigma they
    share (retain_graph), which a compiled backward with donated buffers refused on the first step."""
    if case.get("penalty"):
        pytest.importorskip("ganfast.penalties")
    G, D = mlp_pair(dtype=torch.float64)
    plain = ganfast.Trainer(G, D, *adam_pair(G, D), seed=0, **case)
    G2, D2 = mlp_pair(dtype=torch.float64)
    Gc, Dc = torch.compile(G2, backend="aot_eager"), torch.compile(D2, backend="aot_eager")
    compiled = ganfast.Trainer(Gc, Dc, *adam_pair(Gc, Dc), seed=0, **case)
    real = points(32, dtype=torch.float64)
    for _ in range(3):
        a, b = plain.step(real), compiled.step(real)
    assert b["d_loss"] == pytest.approx(a["d_loss"], rel=1e-9)
    for p, q in zip([*G.parameters(), *D.parameters()], [*G2.parameters(), *D2.parameters()]):
        torch.testing.assert_close(q, p, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("penalty", ["r1", "wgan-gp"])
def test_compiled_class_conditional_models_train_with_accumulation(penalty):
    """D(x, y) through the penalty's uncompiled call (x̂ keeps the real label), in micro-batches."""
    pytest.importorskip("ganfast.penalties")
    from trainer_models import cond_mlp_pair, labelled_points
    loss = "wasserstein" if penalty == "wgan-gp" else "ns"
    G, D = cond_mlp_pair(dtype=torch.float64)
    plain = ganfast.Trainer(G, D, *adam_pair(G, D), seed=0, num_classes=3, loss=loss, penalty=penalty, accumulate=2)
    G2, D2 = cond_mlp_pair(dtype=torch.float64)
    Gc, Dc = torch.compile(G2, backend="aot_eager"), torch.compile(D2, backend="aot_eager")
    compiled = ganfast.Trainer(Gc, Dc, *adam_pair(Gc, Dc), seed=0, num_classes=3, loss=loss, penalty=penalty,
                               accumulate=2)
    x, y = labelled_points(32, dtype=torch.float64)
    for _ in range(2):
        plain.step((x, y))
        compiled.step((x, y))
    for p, q in zip([*G.parameters(), *D.parameters()], [*G2.parameters(), *D2.parameters()]):
        torch.testing.assert_close(q, p, rtol=1e-9, atol=1e-12)


def test_a_compiled_runs_checkpoints_hold_the_modules_inside_the_wrappers(tmp_path):
    """Keys without torch.compile's `_orig_mod.` prefix: the run resumes uncompiled (and the reverse),
    and a checkpoint written with the prefix (as before) still resumes."""
    G, D = mlp_pair()
    Gc, Dc = torch.compile(G, backend="aot_eager"), torch.compile(D, backend="aot_eager")
    t = ganfast.Trainer(Gc, Dc, *adam_pair(Gc, Dc), seed=0, ema=0.9)
    t.fit(points(64), steps=3, batch_size=16, log_dir=tmp_path, checkpoint_every=3, progress=False)
    state = ckpt.load_latest_valid(tmp_path / "checkpoints")[0]
    for key in ("generator", "discriminator", "ema"):
        assert not [k for k in state[key] if "_orig_mod" in k], key
    assert list(state["generator"]) == list(G.state_dict())
    resumed = _trainer(ema=0.9)
    resumed.fit(points(64), steps=5, batch_size=16, log_dir=tmp_path, progress=False)
    assert resumed.step_count == 5
    # the prefix of a checkpoint written before: dropped on load
    old = {**state, "config": {**state["config"]}}
    for key in ("generator", "discriminator", "ema"):
        old[key] = {f"_orig_mod.{k}": v for k, v in state[key].items()}
    for key in ("generator_shapes", "discriminator_shapes"):
        old["config"][key] = {f"_orig_mod.{k}": v for k, v in state["config"][key].items()}
    fresh = _trainer(ema=0.9)
    fresh.load_state(old)
    for p, q in zip(fresh.G.state_dict().values(), state["generator"].values()):
        assert torch.equal(p, q)


# --- a generator with spectral norm (SAGAN, BigGAN) ----------------------------------------------

def _normalized_g_trainer(style, seed=0):
    """mlp_pair's models with every layer of G spectral-normalized the way `style` says (the first
    layer included: the trainer finds the latent size through it), D by the trainer, EMA on."""
    from torch.nn.utils import parametrizations
    G, D = mlp_pair()
    if style == "ganfast, zero-initialized":  # normalized while all zero: waits until it moves
        nn.init.zeros_(G[2].weight)
    for name in ("0", "2"):
        layer = G._modules[name]
        G._modules[name] = (parametrizations.spectral_norm(layer) if style == "torch" else
                            ganfast.nn.spectral_norm(layer))
    return ganfast.Trainer(G, D, *adam_pair(G, D), spectral_norm=True, ema=0.9, seed=seed)


@pytest.mark.parametrize("style", ["torch", "ganfast", "ganfast, zero-initialized"])
def test_a_spectral_normalized_generator_trains_samples_and_resumes_exactly(tmp_path, style):
    """G's spectral norm runs on every G forward (PyTorch's semantics) whichever implementation the
    user chose; its u, v are in the checkpoints, so a killed run resumes to the uninterrupted one's
    numbers, EMA copy included."""
    data = points(64)
    whole = _normalized_g_trainer(style)
    assert whole.latent_shape == (3,)
    whole.fit(data, steps=6, batch_size=16, progress=False)
    killed = _normalized_g_trainer(style)
    with pytest.raises(Killed):
        killed.fit(data, steps=6, batch_size=16, log_dir=tmp_path, checkpoint_every=2, progress=False,
                   callback=_kill_at(3))
    resumed = _normalized_g_trainer(style, seed=5)
    resumed.fit(data, steps=6, batch_size=16, log_dir=tmp_path, checkpoint_every=2, progress=False)
    for a, b in ((resumed.G, whole.G), (resumed.ema_g, whole.ema_g)):
        sa, sb = a.state_dict(), b.state_dict()
        assert any(k.endswith("_u") for k in sa) and sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k
    u = next(v for k, v in whole.G.state_dict().items() if k.endswith("_u"))
    assert not torch.equal(u, next(v for k, v in _normalized_g_trainer(style).G.state_dict().items()
                                   if k.endswith("_u")))  # the power iteration ran in training
    samples = whole.sample(5)
    assert samples.shape == (5, 2) and torch.isfinite(samples).all()


@pytest.mark.parametrize("hook_style", [False, True])
def test_pytorchs_spectral_norm_in_the_generator_runs_on_ganfasts_kernels(hook_style):
    """spectral_norm=True replaces PyTorch's parametrization-style spectral norms in G (no layer newly
    normalized): the numbers go on as PyTorch's would (a run whose G keeps PyTorch's, float64) and
    G's state_dict keeps its keys. The hook-based one stays PyTorch's in G: replaced, it would give
    G's exported state_dict other keys than the user's model loads."""
    from torch.nn.utils import parametrizations
    from ganfast.nn.spectral_norm import SpectralNorm

    def trainer(replace):
        G, D = mlp_pair(dtype=torch.float64)
        G[0] = torch.nn.utils.spectral_norm(G[0]) if hook_style else parametrizations.spectral_norm(G[0])
        if not replace:  # D normalized by hand, G left alone
            ganfast.nn.apply_spectral_norm(D)
        return ganfast.Trainer(G, D, *adam_pair(G, D), spectral_norm=replace, seed=0)

    ours = trainer(replace=True)
    keys = set(trainer(replace=False).G.state_dict())
    assert set(ours.G.state_dict()) == keys
    assert not hasattr(ours.G[2], "parametrizations")  # the layer the user left plain stays plain
    data = points(64, dtype=torch.float64)
    ours.fit(data, steps=4, batch_size=16, progress=False)
    if hook_style:
        assert "0.weight_orig" in keys and not hasattr(ours.G[0], "parametrizations")
        assert torch.isfinite(ours.sample(4)).all()
        return
    assert [type(m).__name__ for m in ours.G.modules() if "SpectralNorm" in type(m).__name__] == ["SpectralNorm"]
    assert isinstance(ours.G[0].parametrizations.weight[0], SpectralNorm)
    theirs = trainer(replace=False)
    theirs.fit(data, steps=4, batch_size=16, progress=False)
    assert isinstance(theirs.G[0].parametrizations.weight[0], parametrizations._SpectralNorm)
    mine, other = ours.G.state_dict(), theirs.G.state_dict()
    assert mine.keys() == other.keys()
    for k in mine:
        torch.testing.assert_close(mine[k], other[k], rtol=1e-10, atol=1e-12, msg=k)
