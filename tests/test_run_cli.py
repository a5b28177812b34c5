"""`ganfast train / eval / sample / explore` end to end in a temporary folder (tiny models, few steps)."""
import csv
import json

import numpy as np
import pytest
import torch

from ganfast import run as grun
from ganfast.cli import main
from ganfast.train import checkpoint as ckpt

TINY = ["--no-progress", "--width", "32", "--batch-size", "64", "--n-points", "2000", "--log-every", "10",
        "--eval-every", "10", "--sample-every", "20", "--checkpoint-every", "10", "--lr-decay", "0"]


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _final_state(run_dir):
    state, _ = ckpt.load_latest_valid(run_dir / "checkpoints")
    return state


def test_train_eval_sample_explore_resume(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--steps", "30", "--seed", "3", "--out", str(run)] + TINY) == 0
    out = capsys.readouterr().out
    assert "modes captured" in out and "high-quality" in out and "reverse KL" in out and "steps/s" in out
    for name in ("config.json", "metrics.csv", "curves.png", "summary.json", "samples/step-000000020.png",
                 "samples/step-000000030.png", "checkpoints/ckpt-000000030.pt"):
        assert (run / name).is_file(), name
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["steps"] == 30 and cfg["seed"] == 3 and cfg["width"] == 32 and cfg["data"] == "ring"
    assert cfg["loss"] == grun.RING_DEFAULTS["loss"] and cfg["latent_dim"] == 2 and cfg["data_shape"] == [2]
    rows = _csv(run / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [10, 20, 30]
    assert all(r["modes_captured"] not in ("", "nan") for r in rows)  # eval_every == log_every here
    for key in ("d_loss", "g_loss", "real_mean", "fake_mean", "d_grad_norm", "g_grad_norm", "hq_fraction", "lr"):
        assert key in rows[0]

    # eval --json: one line; the same fixed noise as the summary, so the same numbers
    assert main(["eval", str(run), "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    m = json.loads(lines[0])
    summary = json.loads((run / "summary.json").read_text())
    assert m["step"] == 30 and m["n_samples"] == 2500 and m["n_modes"] == 8
    for k in ("modes_captured", "hq_fraction", "reverse_kl", "mode_counts"):
        assert m[k] == summary["metrics"][k]
    assert main(["eval", str(run)]) == 0
    assert "at step 30" in capsys.readouterr().out

    # sample: N points of the EMA generator as a .npy
    npy = tmp_path / "s.npy"
    assert main(["sample", str(run), "-n", "123", "-o", str(npy)]) == 0
    x = np.load(npy)
    assert x.shape == (123, 2) and x.dtype == np.float32 and np.isfinite(x).all()
    st = _final_state(run)
    G = grun.load_run(run).trainer.ema_g
    for k, v in G.state_dict().items():
        assert torch.equal(v, st["ema"][k])  # sample/eval see the checkpoint's EMA weights

    # explore: the pictures
    assert main(["explore", str(run)]) == 0
    for name in ("samples", "interpolation", "traversal", "saliency"):
        assert (run / "explore" / f"{name}.png").stat().st_size > 1000

    # resume through the CLI: the step count continues, the CSV too
    assert main(["train", "--resume", str(run), "--steps", "50", "--no-progress"]) == 0
    assert "resuming" in capsys.readouterr().out
    assert [int(r["step"]) for r in _csv(run / "metrics.csv")] == [10, 20, 30, 40, 50]
    assert ckpt.checkpoint_step(ckpt.list_checkpoints(run / "checkpoints")[-1]) == 50
    assert json.loads((run / "config.json").read_text())["steps"] == 50
    assert main(["eval", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 50

    # the resumed run equals one trained to 50 steps in one go (lr decay off, so one schedule)
    straight = tmp_path / "straight"
    assert main(["train", "--steps", "50", "--seed", "3", "--out", str(straight)] + TINY + ["--sample-every", "100"]) == 0
    a, b = _final_state(run), _final_state(straight)
    for part in ("generator", "discriminator", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)

    # a finished run says how to go on
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    assert "already at step 50" in capsys.readouterr().err


def test_resume_after_a_kill_keeps_the_lr_schedule(tmp_path):
    # a run stopped at step 20 of 30 (its newer checkpoint gone) and resumed ends where the
    # uninterrupted run did: the decaying learning rate continues from the schedule, not from the
    # checkpoint's already-decayed value
    run = tmp_path / "run"
    args = ["train", "--steps", "30", "--seed", "5", "--out", str(run)] + TINY + ["--lr-decay", "0.5",
                                                                                   "--sample-every", "100"]
    assert main(args) == 0
    whole = _final_state(run)
    (run / "checkpoints" / "ckpt-000000030.pt").unlink()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    again = _final_state(run)
    assert again["step"] == 30
    for part in ("generator", "discriminator", "ema", "g_optimizer"):
        a, b = whole[part], again[part]
        if part == "g_optimizer":
            assert a["param_groups"][0]["lr"] == b["param_groups"][0]["lr"] == 0.0  # decayed to 0 at the end
            a, b = {k: v["exp_avg"] for k, v in a["state"].items()}, {k: v["exp_avg"] for k, v in b["state"].items()}
        for k in a:
            assert torch.equal(a[k], b[k]), (part, k)


def test_short_training_captures_modes(tmp_path):
    # a few hundred steps of a small model: the mode metrics rise from step 0 (where the untrained G
    # puts nothing within 3 std of any mode)
    s = grun.train({"steps": 400, "width": 64, "ema": 0, "eval_every": 100, "sample_every": 400,
                    "n_points": 4000, "seed": 1}, out=tmp_path / "r", progress=False, echo=lambda *_: None)
    m0, m = s["initial_metrics"], s["metrics"]
    assert m0["modes_captured"] <= 1
    assert m["modes_captured"] >= 4 and m["modes_captured"] > m0["modes_captured"]
    assert m["hq_fraction"] > m0["hq_fraction"] + 0.02
    assert m["reverse_kl"] < m0["reverse_kl"]
    logged = [float(r["modes_captured"]) for r in _csv(tmp_path / "r" / "metrics.csv") if r["modes_captured"] != "nan"]
    assert len(logged) == 4 and logged[-1] == m["modes_captured"]


def write_random_pngs(folder, n: int = 12):
    """n random 10x12 RGB PNGs in a new `folder` (seeded)."""
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def test_image_folder_run(tmp_path):
    folder = tmp_path / "imgs"
    write_random_pngs(folder)
    run = tmp_path / "run"
    assert main(["train", "--data", str(folder), "--image-size", "8", "--width", "4", "--latent-dim", "8",
                 "--batch-size", "4", "--steps", "3", "--sample-every", "3", "--log-every", "1",
                 "--out", str(run), "--no-progress", "--arch", "resnet", "--sn"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["kind"] == "images" and cfg["data_shape"] == [3, 8, 8] and cfg["arch"] == "resnet" and cfg["sn"]
    assert cfg["ema"] == 0.999 and cfg["ema_rampup"] == 0.05  # the image default: early grids not the random start
    assert (run / "samples" / "step-000000003.png").is_file()
    assert main(["sample", str(run), "-n", "5", "-o", str(tmp_path / "x.npy")]) == 0
    assert np.load(tmp_path / "x.npy").shape == (5, 3, 8, 8)
    assert main(["eval", str(run), "--json"]) == 0
    assert main(["explore", str(run)]) == 0
    for name in ("interpolation", "traversal", "saliency_real", "saliency_fake"):
        assert (run / "explore" / f"{name}.png").is_file()


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
def test_a_packed_image_folder_run_evaluates_and_explores(tmp_path, capsys, arch):
    """PacGAN on a folder: the run's D-logit metrics judge groups of `pack` samples, as D does in
    training, and explore's saliency maps judge each image as a group of copies of itself (both
    called D on single images and failed on its packed channels: 'expected images of shape (B, 6,
    8, 8)' at the end of every such training)."""
    folder = tmp_path / "imgs"
    write_random_pngs(folder)
    run = tmp_path / "run"
    assert main(["train", "--data", str(folder), "--image-size", "8", "--width", "4", "--latent-dim", "8",
                 "--batch-size", "4", "--steps", "2", "--pack", "2", "--arch", arch,
                 "--out", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    loaded = grun.load_run(run, with_data=True)
    D, real = loaded.trainer.D.eval(), loaded.dataset.samples[:256]
    with torch.no_grad():
        expected = D(real[:len(real) // 2 * 2].reshape(-1, 6, 8, 8)).float().mean().item()
    assert m["d_real_mean"] == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert main(["explore", str(run)]) == 0
    assert (run / "explore" / "saliency_real.png").is_file()


def test_ema_rampup_defaults(tmp_path):
    """Image runs ramp the EMA's half-life up with the steps done; the points' runs do not; a given
    value wins; a run written before the option existed resumes without it (LATER_KEYS)."""
    folder = tmp_path / "imgs"
    write_random_pngs(folder)
    assert grun.resolve_options(data=str(folder))["ema_rampup"] == 0.05
    assert grun.resolve_options(data="digits")["ema_rampup"] == 0.05
    assert grun.resolve_options(data=str(folder), ema_rampup=0.2)["ema_rampup"] == 0.2
    assert grun.resolve_options(data="ring")["ema_rampup"] is None
    assert grun.step_config(grun.resolve_options(data=str(folder), ema_rampup=0)).ema_rampup is None  # 0: none
    assert grun.step_config(grun.resolve_options(data=str(folder))).ema_rampup == 0.05
    with pytest.raises(grun.RunError, match="ema-rampup must be > 0"):
        grun.resolve_options(data=str(folder), ema_rampup=-0.1)
    assert grun.LATER_KEYS["ema_rampup"] is None


@pytest.mark.parametrize("argv, message", [
    (["train", "--data", "nope"], "unknown data 'nope'"),
    (["train", "--steps", "0"], "--steps must be a positive integer"),
    (["train", "--lr-decay", "2"], "--lr-decay"),
    (["train", "--data", "ring", "--arch", "dcgan"], "--arch dcgan is for images"),
    (["train", "--eval-every", "15"], "must be a multiple of --log-every"),
    (["train", "--backend", "nope"], "unknown backend 'nope'"),
])
def test_bad_train_options(tmp_path, capsys, argv, message):
    assert main(argv + ["--out", str(tmp_path / "r"), "--no-progress"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r" / "checkpoints").exists()


@pytest.mark.parametrize("option", ["--loss", "--penalty"])
def test_unknown_loss_or_penalty(capsys, option):
    with pytest.raises(SystemExit) as e:
        main(["train", option, "bogus"])
    assert e.value.code == 2
    assert "invalid choice: 'bogus'" in capsys.readouterr().err


def test_bad_run_folders(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err
    # a config but no checkpoint yet
    cfg = grun.resolve_options(data="ring")
    cfg.update(data_shape=[2], data_name="ring")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    for argv in (["eval", str(tmp_path)], ["sample", str(tmp_path), "-o", str(tmp_path / "x.npy")],
                 ["explore", str(tmp_path)]):
        assert main(argv) == 2
        assert "has no checkpoint yet" in capsys.readouterr().err
    # --out of an existing run, --resume with run options, a sample file that is not .npy
    assert main(["train", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path), "--loss", "hinge"]) == 2
    assert "--resume continues a run with its own config.json" in capsys.readouterr().err
    assert main(["sample", str(tmp_path), "-o", str(tmp_path / "x.txt")]) == 2
    assert "must name a .npy file" in capsys.readouterr().err


def test_train_nproc_2(tmp_path, capfd):
    """`ganfast train --nproc 2`: two gloo processes; rank 0 alone writes the run and prints."""
    out = tmp_path / "run2"
    assert main(["train", "--steps", "8", "--batch-size", "32", "--nproc", "2", "--out", str(out),
                 "--no-progress", "--checkpoint-every", "4", "--eval-every", "4", "--log-every", "4",
                 "--sample-every", "8"]) == 0
    assert (out / "config.json").exists() and (out / "summary.json").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 8
    printed = capfd.readouterr().out  # both processes' output (file-descriptor level)
    assert printed.count("step 0:") == 1  # rank 0 prints, rank 1 stays silent
