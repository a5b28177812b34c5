"""`ganfast train / eval / sample` on MNIST and Stacked MNIST: a short smoke training on a subset of the
real MNIST files, scored with a small classifier trained here (never the user's cache)."""
import csv
import json

import numpy as np
import pytest
import torch

from ganfast import classifier as clf
from ganfast import cli, image_metrics, mnist, run
from tests.test_mnist_data import SHARED_MNIST, needs_mnist, write_idx

pytestmark = needs_mnist


@pytest.fixture(scope="module")
def mnist_subset(tmp_path_factory):
    """The first 2000 training and 500 test digits of the real MNIST, as IDX files."""
    folder = tmp_path_factory.mktemp("mnist-subset")
    for split, n in (("train", 2000), ("test", 500)):
        images, labels = mnist.load_mnist(split, SHARED_MNIST)
        img_stem, lab_stem = mnist.FILES[split]
        write_idx(folder / img_stem, images[:n].numpy(), gz=True)
        write_idx(folder / lab_stem, labels[:n].numpy().astype(np.uint8), gz=False)
    return folder


@pytest.fixture
def small_world(mnist_subset, tmp_path, monkeypatch):
    """A tiny classifier in a temporary cache, few final samples, one thread."""
    monkeypatch.setenv("GANFAST_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("GANFAST_DATA", raising=False)
    monkeypatch.setattr(image_metrics, "N_MODE_SAMPLES", 600)
    monkeypatch.setattr(run, "_SCORERS", {})
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    model = clf.train_classifier(mnist.load_mnist("train", mnist_subset), epochs=1, seed=0)
    clf.save_classifier(model, clf.classifier_path(), {"test_accuracy": 0.5})
    yield mnist_subset
    torch.set_num_threads(before)


# gamma: the measured default R1 weight of each (not passed, so it comes from run.DATA_DEFAULTS)
@pytest.mark.parametrize("data,channels,pack,d_width,mbstd,gamma", [("mnist", 1, 1, None, 0, 1.0),
                                                                    ("stacked-mnist", 3, 2, 2, 4, 0.1)])
def test_smoke_training_eval_and_sample(small_world, tmp_path, capsys, data, channels, pack, d_width, mbstd, gamma):
    out = tmp_path / "run"
    options = dict(data=data, data_dir=str(small_world), steps=50, batch_size=16, width=8, eval_every=25,
                   log_every=25, eval_samples=300, sample_every=50, checkpoint_every=50, threads=1, pack=pack,
                   d_width=d_width, mbstd_group=mbstd or None)
    summary = run.train(options, out=out, progress=False)
    m = summary["metrics"]
    n_modes = 10 if data == "mnist" else 1000
    assert m["n_modes"] == n_modes and m["n_samples"] == 600 and 1 <= m["modes"] <= n_modes
    assert 0 <= m["kl"] <= np.log(n_modes) + 1e-9
    assert m["classifier_fd"] >= 0 and np.isfinite(m["classifier_kid"])
    assert summary["steps"] == 50 and summary["eval_s"] > 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["pack"] == pack and cfg["data_shape"] == [channels, 32, 32] and cfg["d_width"] == d_width
    assert cfg["mbstd_group"] == mbstd
    assert cfg["penalty"] == "r1" and cfg["penalty_weight"] == gamma
    assert cfg.get("augment") == (None if data == "mnist" else "color")  # the measured defaults
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    scored = [r for r in rows if r["modes_captured"] not in ("", "nan")]
    assert [int(r["step"]) for r in scored] == [25, 50]
    assert all(float(r["mode_kl"]) >= 0 and float(r["train_s"]) > 0 for r in scored)
    assert (out / "samples").is_dir() and (out / "curves.png").is_file()

    # ganfast sample: (N, C, 28, 28) in [-1, 1]
    assert cli.main(["sample", str(out), "-n", "7", "-o", str(tmp_path / "s.npy")]) == 0
    x = np.load(tmp_path / "s.npy")
    assert x.shape == (7, channels, 28, 28) and x.dtype == np.float32 and x.min() >= -1 and x.max() <= 1
    # ganfast eval: the family's figures, labelled
    capsys.readouterr()
    assert cli.main(["eval", str(out), "--json"]) == 0
    e = json.loads(capsys.readouterr().out)
    assert e["n_modes"] == n_modes and e["modes"] == m["modes"] and e["kl"] == pytest.approx(m["kl"])
    assert cli.main(["eval", str(out)]) == 0
    text = capsys.readouterr().out
    assert ("classes" if data == "mnist" else "modes") in text and "classifier FD" in text and "not Inception" in text


def test_train_errors(small_world, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GANFAST_DATA", str(tmp_path / "nothing"))
    assert cli.main(["train", "--data", "mnist", "--out", str(tmp_path / "a"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--data-dir" in err and "GANFAST_DATA" in err and "torchvision" in err
    assert cli.main(["train", "--data", "stacked-mnist", "--data-dir", str(small_world), "--pack", "3",
                     "--batch-size", "64", "--out", str(tmp_path / "b")]) == 2
    assert "multiple of --pack 3" in capsys.readouterr().err
    assert cli.main(["train", "--data", "ring", "--pack", "2", "--out", str(tmp_path / "c")]) == 2
    assert "--pack (PacGAN) is for images" in capsys.readouterr().err
    assert cli.main(["train", "--data", "ring", "--d-width", "8", "--out", str(tmp_path / "e")]) == 2
    assert "--d-width is for images" in capsys.readouterr().err
    assert cli.main(["train", "--data", "ring", "--mbstd-group", "4", "--out", str(tmp_path / "f")]) == 2
    assert "--mbstd-group is for images" in capsys.readouterr().err
    assert cli.main(["train", "--data", "stacked-mnist", "--data-dir", str(small_world), "--mbstd-group", "-1",
                     "--out", str(tmp_path / "g")]) == 2
    assert "--mbstd-group must be a non-negative integer" in capsys.readouterr().err
    assert cli.main(["train", "--data", "ring", "--data-dir", str(small_world), "--out", str(tmp_path / "d")]) == 2
    assert "--data-dir" in capsys.readouterr().err


def test_eval_fid_without_torchmetrics(small_world, tmp_path, capsys):
    pytest.importorskip("PIL")
    try:
        import torchmetrics  # noqa: F401
        pytest.skip("torchmetrics is installed")
    except ImportError:
        pass
    out = tmp_path / "run"
    run.train(dict(data="mnist", data_dir=str(small_world), steps=2, batch_size=8, width=4, eval_every=2,
                   log_every=1, eval_samples=50, threads=1), out=out, progress=False)
    assert cli.main(["eval", str(out), "--fid"]) == 2
    assert "pip install 'torchmetrics[image]'" in capsys.readouterr().err


def test_augment_none_turns_off_the_stacked_mnist_default():
    assert run.resolve_options(data="stacked-mnist")["augment"] == "color"
    assert run.resolve_options(data="stacked-mnist", augment="none")["augment"] is None
    assert run.resolve_options(data="stacked-mnist", augment="color,translation")["augment"] == "color,translation"
    with pytest.raises(run.RunError, match="--augment-p needs --augment"):
        run.resolve_options(data="stacked-mnist", augment="none", augment_p="0.5")


def test_a_conditional_mnist_run_reports_its_label_hit_rate(small_world, tmp_path, capsys):
    """A class-conditional MNIST run asks G for every digit in turn and reports the fraction of
    G(z, y) the classifier reads as y: in the summary, the CSV and `ganfast eval` (before, it sampled
    random labels and reported only the unconditional figures)."""
    scorer = image_metrics.MNISTScorer("mnist", data_dir=small_world, progress=False)
    images, labels = mnist.load_mnist("test", small_world)
    real = images[:400].float().div(127.5).sub(1.0).unsqueeze(1)
    right = scorer.score(real, with_fd=False, labels=labels[:400].long())["label_hit_rate"]
    wrong = scorer.score(real, with_fd=False, labels=(labels[:400].long() + 1) % 10)["label_hit_rate"]
    _, read = scorer.features_and_modes(real)
    assert right == pytest.approx(float((read == labels[:400]).double().mean())) and right > 0.5 > wrong
    with pytest.raises(ValueError, match="one class per image"):
        scorer.score(real, with_fd=False, labels=labels[:10].long())

    out = tmp_path / "run"
    summary = run.train(dict(data="mnist", data_dir=str(small_world), conditional=True, steps=6, batch_size=10,
                             width=4, eval_every=3, log_every=3, eval_samples=100, threads=1), out=out,
                        progress=False)
    m = summary["metrics"]
    assert 0 <= m["label_hit_rate"] <= 1 and m["n_samples"] == 600
    assert "label hit rate" in capsys.readouterr().out
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [r["label_hit_rate"] not in ("", "nan") for r in rows] == [True, True]
    assert cli.main(["eval", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["label_hit_rate"] == pytest.approx(m["label_hit_rate"])
