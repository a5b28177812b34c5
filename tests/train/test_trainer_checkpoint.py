"""Checkpoints: atomic verified files, rotation, corrupt/truncated detection with fallback, a full
round trip of the trainer's state, and resume exactness after SIGKILL of a real subprocess."""
import csv
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import ganfast
from ganfast.train import CheckpointError, checkpoint as ckpt
from trainer_models import adam_pair, mlp_pair, points


def test_save_load_roundtrip_and_no_temp_files(tmp_path):
    state = {"a": torch.arange(5.0), "b": [1, 2.5, "x", None], "c": {"d": torch.zeros(2, 2)}}
    path = ckpt.save(state, tmp_path / "x.pt")
    got = ckpt.load(path)
    assert torch.equal(got["a"], state["a"]) and got["b"] == state["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]  # the temporary file was renamed away


def test_rotation_keeps_the_last_k(tmp_path):
    for step in (5, 10, 15, 20):
        ckpt.save_rotating({"step": step}, tmp_path, step, keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == [ckpt.checkpoint_name(15), ckpt.checkpoint_name(20)]


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty"])
def test_corrupt_checkpoint_is_named_and_the_previous_one_used(tmp_path, damage):
    for step in (1, 2, 3):
        ckpt.save_rotating({"step": step, "w": torch.randn(50)}, tmp_path, step, keep=3)
    newest = ckpt.list_checkpoints(tmp_path)[-1]
    data = bytearray(newest.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    elif damage == "truncate":
        data = data[: len(data) - 40]
    else:
        data = b""
    newest.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=newest.name):
        ckpt.load(newest)
    for target in (tmp_path, newest):  # a directory, or the damaged file itself
        with pytest.warns(RuntimeWarning, match=rf"{newest.name}.*falling back.*{ckpt.checkpoint_name(2)}"):
            state, used = ckpt.load_latest_valid(target)
        assert state["step"] == 2 and used.name == ckpt.checkpoint_name(2)


def test_no_usable_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoints"):
        ckpt.load_latest_valid(tmp_path)
    (tmp_path / ckpt.checkpoint_name(1)).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no usable checkpoint.*bad header"), pytest.warns(RuntimeWarning):
        ckpt.load_latest_valid(tmp_path)


def _trainer(seed=0, **kw):
    G, D = mlp_pair()
    return ganfast.Trainer(G, D, *adam_pair(G, D), ema=0.9, seed=seed, **kw)


def test_trainer_state_roundtrip_continues_identically(tmp_path):
    real = points(64)
    a = _trainer()
    for _ in range(3):
        a.step(real[:16])
    torch.manual_seed(77)
    a.save_checkpoint(tmp_path / "a.pt")
    expect = [a.step(real[:16]) for _ in range(3)]
    expect_rand = torch.rand(3)

    b = _trainer(seed=999)  # different seed and fresh models: everything comes from the file
    b.load_checkpoint(tmp_path / "a.pt")
    assert b.step_count == 3 and b.seed == 999
    got = [b.step(real[:16]) for _ in range(3)]
    assert got == expect  # exact, float for float
    assert torch.equal(torch.rand(3), expect_rand)  # global torch RNG restored
    for p, q in zip(a.ema_g.parameters(), b.ema_g.parameters()):
        assert torch.equal(p, q)


@pytest.mark.filterwarnings("ignore:amp=.* on a CPU without native")
def test_grad_scaler_state_is_saved(tmp_path):
    a = _trainer(amp="fp16")
    a.step(points(8))
    a.g_scaler.update(1234.0)  # a scale no fresh scaler has
    a.save_checkpoint(tmp_path / "a.pt")
    b = _trainer(amp="fp16")
    b.load_checkpoint(tmp_path / "a.pt")
    assert b.g_scaler.get_scale() == 1234.0 and b.d_scaler.get_scale() == a.d_scaler.get_scale()


def test_lazy_regularization_phase_is_saved(tmp_path):
    pytest.importorskip("ganfast.penalties")
    real = points(16)
    a = _trainer(penalty="r1", penalty_interval=3)
    for _ in range(4):
        a.step(real)
    a.save_checkpoint(tmp_path / "a.pt")
    expect = [a.step(real)["penalty"] for _ in range(4)]
    b = _trainer(penalty="r1", penalty_interval=3)
    b.load_checkpoint(tmp_path / "a.pt")
    assert b.d_step_count == 4
    assert [b.step(real)["penalty"] for _ in range(4)] == expect


def test_fit_writes_rotating_checkpoints_and_csv(tmp_path):
    t = _trainer()
    hist = t.fit(points(64), steps=12, batch_size=16, log_dir=tmp_path, checkpoint_every=4, keep_checkpoints=2,
                 log_every=3, progress=False)
    assert [h["step"] for h in hist] == [3, 4, 6, 8, 9, 12]  # log_every, plus checkpoint steps
    names = [p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints")]
    assert names == [ckpt.checkpoint_name(8), ckpt.checkpoint_name(12)]
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [3, 4, 6, 8, 9, 12]
    assert float(rows[-1]["d_loss"]) == hist[-1]["d_loss"]
    # fit again to the same total: it resumes from step 12 and has nothing left to do
    t2 = _trainer(seed=5)
    assert t2.fit(points(64), steps=12, batch_size=16, log_dir=tmp_path, checkpoint_every=4, progress=False) == []
    assert t2.step_count == 12


def test_fit_accepts_a_dataloader_and_an_iterable(tmp_path):
    data = points(40)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data), batch_size=8, shuffle=True)
    t = _trainer()
    hist = t.fit(loader, steps=7, progress=False)  # 5 batches per epoch: restarts the loader
    assert len(hist) == 7 and t.step_count == 7
    t = _trainer(d_steps=2)
    t.fit([data[:8], data[8:16], data[16:24]], steps=3, progress=False)
    assert t.d_step_count == 6
    with pytest.raises(ValueError, match="yields no batches"):
        _trainer().fit([], steps=1, progress=False)
    with pytest.raises(ValueError, match="fewer than batch_size"):
        _trainer().fit(data, steps=1, batch_size=64, progress=False)
    # a batch_size the DataLoader does not make is refused, not silently ignored; its own is taken
    with pytest.raises(ValueError, match="fit's batch_size=16 batches a tensor of samples; this DataLoader makes its "
                                         "own batches of 8: leave batch_size out"):
        _trainer().fit(loader, steps=1, batch_size=16, progress=False)
    assert _trainer().fit(loader, steps=1, batch_size=8, progress=False)[0]["step"] == 1


def test_fit_tensor_data_reshuffles_each_epoch():
    from ganfast.train.batches import TensorBatches as _TensorBatches
    src = _TensorBatches(torch.arange(8.0)[:, None], 4, torch.Generator().manual_seed(0), None)
    epoch1 = torch.cat([next(src), next(src)]).flatten()
    epoch2 = torch.cat([next(src), next(src)]).flatten()
    assert sorted(epoch1.tolist()) == sorted(epoch2.tolist()) == list(range(8))
    assert not torch.equal(epoch1, epoch2)


# --- resume exactness after SIGKILL ------------------------------------------------------------

SCRIPT = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    import ganfast
    from torch import nn

    def run(log_dir, steps):  # a fresh process state per run: models, optimizers, trainer
        torch.manual_seed(0)
        G = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 2))
        D = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1))
        g_opt = torch.optim.Adam(G.parameters(), 1e-3, betas=(0.5, 0.9))
        d_opt = torch.optim.Adam(D.parameters(), 1e-3, betas=(0.5, 0.9))
        data = torch.randn(200, 2, generator=torch.Generator().manual_seed(1))
        t = ganfast.Trainer(G, D, g_opt, d_opt, loss="ns", d_steps=2, ema=0.99, seed=1234)
        t.fit(data, steps=steps, batch_size=32, log_dir=log_dir, checkpoint_every=7, keep_checkpoints=2,
              progress=False)

    for i in range(1, len(sys.argv), 2):
        run(sys.argv[i], int(sys.argv[i + 1]))
""")


def _csv_rows(path):
    return [r for r in csv.reader(open(path))][1:]


def test_resume_after_sigkill_is_exact(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(Path(ganfast.__file__).parent.parent))
    killed, full = tmp_path / "killed", tmp_path / "full"
    proc = subprocess.Popen([sys.executable, str(script), str(killed), "100000000"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = ckpt.list_checkpoints(killed / "checkpoints")
            if found and int(found[-1].name[5:14]) >= 21:  # three checkpoints written
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.05)
        else:
            pytest.fail("the training subprocess wrote no checkpoints in 60 s")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    last = ckpt.list_checkpoints(killed / "checkpoints")[-1]
    resumed_from = int(last.name[5:14])
    target = resumed_from + 12
    assert len(_csv_rows(killed / "metrics.csv")) >= resumed_from  # the rows the checkpoint covers
    # one process: resume the killed run to `target`, then an uninterrupted run to the same step
    subprocess.run([sys.executable, str(script), str(killed), str(target), str(full), str(target)], env=env,
                   check=True, capture_output=True, timeout=120)
    resumed, reference = _csv_rows(killed / "metrics.csv"), _csv_rows(full / "metrics.csv")
    assert [int(r[0]) for r in reference] == list(range(1, target + 1))
    assert resumed == reference  # every logged float, exactly


def test_fit_saves_samples_and_curves(tmp_path):
    pytest.importorskip("ganfast.viz")
    pytest.importorskip("matplotlib")
    t = _trainer()
    t.fit(points(64), steps=4, batch_size=16, log_dir=tmp_path, sample_every=2, n_samples=32, progress=False)
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["step-000000002.png", "step-000000004.png"]
    assert (tmp_path / "curves.png").stat().st_size > 0
    models = pytest.importorskip("ganfast.models")
    G, D = models.DCGANGenerator(8, 8, 1, 4), models.DCGANDiscriminator(8, 1, 4)
    t = ganfast.Trainer(G, D, *adam_pair(G, D), seed=0)
    t.fit(torch.rand(8, 1, 8, 8) * 2 - 1, steps=1, batch_size=4, log_dir=tmp_path / "img", sample_every=1,
          n_samples=4, progress=False)
    from PIL import Image
    assert Image.open(tmp_path / "img" / "samples" / "step-000000001.png").size[0] >= 16


def test_progress_bar_shows_steps_and_stats(tmp_path, capsys):
    t = _trainer()
    t.fit(points(64), steps=3, batch_size=16, progress=True)
    err = capsys.readouterr().err
    assert "3/3" in err and "step" in err and "d_loss" in err


def test_fit_twice_continues_the_log(tmp_path):
    t = _trainer()
    t.fit(points(64), steps=3, batch_size=16, log_dir=tmp_path, progress=False)  # no checkpoint yet
    t.fit(points(64), steps=5, batch_size=16, log_dir=tmp_path, progress=False)
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5] and t.step_count == 5


class _Opaque:
    """Picklable, but not among the types the safe loader takes."""


def test_unloadable_reason_names_what_a_checkpoint_would_refuse():
    from ganfast.train.checkpoint import unloadable_reason

    assert unloadable_reason({"pos": 3, "seen": [1.5, "a"], "gen": torch.zeros(2)}) is None
    reason = unloadable_reason({"pos": _Opaque()})
    assert reason.startswith("UnpicklingError") and "Unsupported global" in reason and "_Opaque" in reason
    assert unloadable_reason(lambda: 0).startswith(("PicklingError", "AttributeError"))  # not even picklable


def test_a_callbacks_stats_are_logged_as_numbers(tmp_path):
    """fit's callback may return numpy scalars and one-element tensors (an FID computed on the GPU):
    logged as floats. Anything else is named at once; a string failed inside the CSV writer, after
    the step, with 'could not convert string to float'."""
    import numpy as np
    G, D = mlp_pair()
    t = ganfast.Trainer(G, D, *adam_pair(G, D), seed=0)
    h = t.fit(points(64), steps=2, batch_size=16, log_dir=tmp_path, progress=False,
              callback=lambda tr, step, stats: {"fid": torch.tensor([3.25]), "kid": np.float32(0.5), "n": 7})
    assert [(r["fid"], r["kid"], r["n"]) for r in h] == [(3.25, 0.5, 7.0)] * 2
    assert all(type(r["fid"]) is float for r in h)
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [r["fid"] for r in rows] == ["3.25", "3.25"]
    for bad, match in [({"note": "ok"}, "returned 'note': 'ok'; its values must be numbers"),
                       ({"v": torch.ones(3)}, r"returned 'v': a tensor of shape \(3,\)"),
                       (3.0, "must return a dict of numbers or None, got float")]:
        with pytest.raises(TypeError, match=match):
            t.fit(points(64), steps=t.step_count + 1, batch_size=16, progress=False, callback=lambda *a, r=bad: r)


@pytest.mark.parametrize("option, value", [("batch_size", 0), ("batch_size", -3), ("batch_size", 16.0),
                                           ("log_every", 0), ("checkpoint_every", 0), ("sample_every", 0),
                                           ("keep_checkpoints", 0), ("n_samples", 0), ("sample_every", True)])
def test_fit_options_that_are_not_positive_integers_are_named(tmp_path, option, value):
    """Before: a batch_size of 0 or less was 'a real batch must have a batch dimension ...', 16.0 a
    slice TypeError, a checkpoint_every or sample_every of 0 a ZeroDivisionError after the first step."""
    G, D = mlp_pair()
    t = ganfast.Trainer(G, D, *adam_pair(G, D), seed=0)
    with pytest.raises(ValueError, match=f"{option} must be a positive integer, got {value!r}"):
        t.fit(points(64), steps=2, log_dir=tmp_path, progress=False, **{option: value})
    assert t.step_count == 0
