"""Class-conditional models (ganfast.models with num_classes), labelled data (mixtures, digits, a
folder with one subfolder per class) and `ganfast train --conditional` / `ganfast sample --labels`."""
import json

import numpy as np
import pytest
import torch

import ganfast.nn as gnn
from ganfast import data, models
from ganfast.cli import main

from .test_run_cli import write_random_pngs


@pytest.mark.parametrize("kind, shape, arch", [("points", (2,), None), ("images", (1, 8, 8), "dcgan"),
                                               ("images", (3, 16, 16), "resnet")])
def test_conditional_models_use_the_labels_and_get_gradients(kind, shape, arch):
    torch.manual_seed(0)
    G, D, latent = models.build_models(kind, shape, latent_dim=6, arch=arch, width=8, num_classes=4)
    head = [m for m in D.modules() if isinstance(m, gnn.ProjectionHead)]
    assert len(head) == 1 and head[0].num_classes == 4
    if kind == "images":
        assert any(isinstance(m, gnn.ConditionalBatchNorm2d) for m in G.modules())
    with torch.no_grad():  # at initialization (γ = 1, β = 0) conditional batch norm ignores the class
        for m in G.modules():
            if isinstance(m, gnn.ConditionalBatchNorm2d):
                m.gamma.weight.normal_(1.0, 0.5)
                m.beta.weight.normal_(0.0, 0.5)
    z = torch.randn(4, latent).repeat(2, 1)
    y = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    G.eval()  # batch statistics would mix the samples
    x = G(z, y)
    assert x.shape == (8, *shape)
    assert not torch.allclose(x[:4], x[4:])  # same z, other classes: other samples
    G.train()
    out = D(G(z, y), y)
    assert out.shape == (8, 1)
    out.sum().backward()
    for name, p in list(G.named_parameters()) + list(D.named_parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match="conditional.*call it with labels"):
        D(x)
    with pytest.raises(ValueError, match="conditional.*call it with labels"):
        G(z)
    plain_G, plain_D, _ = models.build_models(kind, shape, latent_dim=6, arch=arch, width=8)
    with pytest.raises(ValueError, match="unconditional.*got labels"):
        plain_D(x, y)


def test_unconditional_models_are_unchanged_by_the_conditional_option():
    """Same parameters, names and draws as before conditioning existed (checkpoints stay loadable)."""
    for arch in ("dcgan", "resnet"):
        torch.manual_seed(0)
        G, D, _ = models.build_models("images", (1, 8, 8), arch=arch, width=8)
        torch.manual_seed(0)
        G2, D2, _ = models.build_models("images", (1, 8, 8), arch=arch, width=8, num_classes=None)
        for a, b in ((G, G2), (D, D2)):
            sa, sb = a.state_dict(), b.state_dict()
            assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
        assert not any(isinstance(m, (gnn.ProjectionHead, gnn.ConditionalBatchNorm2d)) for m in G.modules())


def test_labelled_mixture_and_digits():
    ds = data.make_dataset("ring", n_points=400, generator=torch.Generator().manual_seed(0), labels=True)
    assert ds.num_classes == 8 and ds.labels.shape == (400,) and ds.labels.dtype == torch.long
    nearest = torch.cdist(ds.samples, data.RING.means).argmin(1)
    assert torch.equal(nearest, ds.labels)  # the label is the point's mode
    x, y = ds.training_data(32, "cpu")
    assert x is ds.samples and y is ds.labels
    assert abs(sum(ds.class_frequencies()) - 1) < 1e-12
    plain = data.make_dataset("ring", n_points=400, generator=torch.Generator().manual_seed(0))
    assert torch.equal(plain.samples, ds.samples) and plain.labels is None  # same draws
    pytest.importorskip("sklearn")
    digits = data.make_dataset("digits", labels=True)
    assert digits.num_classes == 10 and sorted(set(digits.labels.tolist())) == list(range(10))
    assert torch.equal(digits.samples, data.load_digits())


def _class_folders(root, classes=("cat", "dog", "emu"), per=(3, 2, 4)):
    from PIL import Image
    rng = np.random.default_rng(0)
    for name, n in zip(classes, per):
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)).save(root / name / f"{i}.png")


def test_a_folder_of_class_subfolders_gives_labels(tmp_path):
    pytest.importorskip("PIL")
    _class_folders(tmp_path / "pets")
    folder = data.ImageFolder(tmp_path / "pets", size=8, labelled=True)
    assert folder.classes == ["cat", "dog", "emu"] and folder.targets == [0] * 3 + [1] * 2 + [2] * 4
    x, y = folder[4]
    assert x.shape == (3, 8, 8) and y == 1
    ds = data.make_dataset(str(tmp_path / "pets"), image_size=8, labels=True)
    assert ds.num_classes == 3 and ds.labels.tolist() == folder.targets
    assert ds.class_frequencies() == pytest.approx([3 / 9, 2 / 9, 4 / 9])
    xb, yb = next(iter(ds.training_data(4, "cpu")))
    assert xb.shape == (4, 3, 8, 8) and yb.dtype == torch.long
    (tmp_path / "pets" / "stray.png").write_bytes((tmp_path / "pets" / "cat" / "0.png").read_bytes())
    with pytest.raises(ValueError, match="one subfolder per class.*stray.png"):
        data.make_dataset(str(tmp_path / "pets"), image_size=8, labels=True)


def test_class_folders_without_images_are_an_error(tmp_path, capsys):
    """An empty class folder, or one of unreadable files only, would be a label G never learns."""
    pytest.importorskip("PIL")
    _class_folders(tmp_path / "pets", classes=("cat", "dog", "emu", "gnu"), per=(2, 0, 2, 0))
    (tmp_path / "pets" / "gnu" / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match=r"without a readable image: dog, gnu; add images"):
        data.ImageFolder(tmp_path / "pets", size=8, labelled=True)
    assert main(["train", "--data", str(tmp_path / "pets"), "--conditional", "--image-size", "8", "--steps", "1",
                 "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    assert "without a readable image: dog" in capsys.readouterr().err
    # unlabelled, the same folder is just images
    assert len(data.ImageFolder(tmp_path / "pets", size=8)) == 4


def test_train_conditional_then_sample_by_class(tmp_path, capsys):
    pytest.importorskip("PIL")
    from PIL import Image
    _class_folders(tmp_path / "pets")
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "pets"), "--conditional", "--image-size", "8", "--width", "4",
                 "--latent-dim", "8", "--batch-size", "3", "--steps", "2", "--sample-every", "2",
                 "--out", str(run), "--no-progress"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["conditional"] is True and cfg["num_classes"] == 3 and cfg["class_names"] == ["cat", "dog", "emu"]
    assert cfg["class_probs"] == pytest.approx([3 / 9, 2 / 9, 4 / 9])
    # one row per class: 3 rows of 5 images (8 px at scale 8, padding 2 x 8)
    assert main(["sample", str(run), "-n", "15", "-o", str(tmp_path / "grid.png")]) == 0
    assert Image.open(tmp_path / "grid.png").size == (5 * 80 + 16, 3 * 80 + 16)
    assert main(["sample", str(run), "-n", "4", "-o", str(tmp_path / "x.npy"), "--labels", "2,0"]) == 0
    assert np.load(tmp_path / "x.npy").shape == (4, 3, 8, 8)
    assert np.load(tmp_path / "x.labels.npy").tolist() == [2, 2, 0, 0]
    assert main(["sample", str(run), "-n", "2", "-o", str(tmp_path / "y.npy"), "--class", "1"]) == 0
    assert np.load(tmp_path / "y.labels.npy").tolist() == [1, 1]
    # by the class folders' names, and names mixed with indices
    assert main(["sample", str(run), "-n", "3", "-o", str(tmp_path / "n.npy"), "--labels", "emu, 0,dog"]) == 0
    assert np.load(tmp_path / "n.labels.npy").tolist() == [2, 0, 1]
    assert main(["sample", str(run), "-n", "2", "-o", str(tmp_path / "d.npy"), "--class", "dog"]) == 0
    assert np.load(tmp_path / "d.labels.npy").tolist() == [1, 1]
    capsys.readouterr()
    assert main(["sample", str(run), "-n", "2", "-o", str(tmp_path / "z.npy"), "--class", "3"]) == 2
    assert "has no class '3'; give a name of cat, dog, emu or an index in [0, 3)" in capsys.readouterr().err
    assert main(["sample", str(run), "-n", "2", "-o", str(tmp_path / "z.npy"), "--labels", "cat,gnu"]) == 2
    assert "has no class 'gnu'" in capsys.readouterr().err
    assert main(["explore", str(run), "--class", "emu", "--out", str(tmp_path / "explore")]) == 0
    assert (tmp_path / "explore" / "saliency_real.png").is_file()
    assert main(["explore", str(run), "--class", "yak", "--out", str(tmp_path / "explore")]) == 2
    assert "has no class 'yak'" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--steps", "3", "--no-progress"]) == 0
    # the same number of classes under other names: each label would mean another class
    (tmp_path / "pets" / "emu").rename(tmp_path / "pets" / "owl")
    assert main(["train", "--resume", str(run), "--steps", "4", "--no-progress"]) == 2
    assert "was trained on the classes cat, dog, emu; the data's class folders are now cat, dog, owl" in \
        capsys.readouterr().err


def test_numbered_class_folders_are_named_by_their_folders(tmp_path):
    """Folders "1", "10", "2" sort as strings: the class named "2" is index 2, not the folder "10"
    (index 1); an index that is no name still works."""
    pytest.importorskip("PIL")
    from ganfast import run as grun
    (tmp_path / "num").mkdir()
    for name in ("1", "10", "2"):
        write_random_pngs(tmp_path / "num" / name, n=2)
    out = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "num"), "--conditional", "--image-size", "8", "--width", "4",
                 "--latent-dim", "8", "--batch-size", "3", "--steps", "1", "--out", str(out), "--no-progress"]) == 0
    r = grun.load_run(out)
    assert r.config["class_names"] == ["1", "10", "2"]
    assert [grun.class_index(r, c) for c in ("2", "10", 0, "0", "1")] == [2, 1, 0, 0, 0]
    with pytest.raises(grun.RunError, match="has no class 3"):
        grun.class_index(r, 3)


def test_conditional_needs_labelled_data_and_unconditional_runs_refuse_labels(tmp_path, capsys):
    pytest.importorskip("PIL")
    write_random_pngs(tmp_path / "flat")
    assert main(["train", "--data", str(tmp_path / "flat"), "--conditional", "--image-size", "8", "--steps", "1",
                 "--out", str(tmp_path / "r1"), "--no-progress"]) == 2
    assert "one subfolder per class" in capsys.readouterr().err
    run = tmp_path / "plain"
    assert main(["train", "--data", "ring", "--steps", "2", "--eval-every", "10", "--log-every", "1",
                 "--sample-every", "2", "--out", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["sample", str(run), "-n", "2", "-o", str(tmp_path / "p.npy"), "--class", "0"]) == 2
    assert "not conditional" in capsys.readouterr().err
