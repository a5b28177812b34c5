import math

import pytest
import torch

from ganfast import data


def test_ring8_modes_and_spread():
    g = torch.Generator().manual_seed(0)
    x, k = data.MIXTURES["ring"].sample_with_modes(4000, g)
    assert x.shape == (4000, 2) and x.dtype == torch.float32
    angles = 2 * math.pi * torch.arange(8) / 8
    means = torch.stack([angles.cos(), angles.sin()], 1)
    torch.testing.assert_close(data.MIXTURES["ring"].means, means)
    resid = x - means[k]
    assert abs(resid.std().item() - 0.01) < 0.001       # per-coordinate std
    assert resid.mean(0).abs().max().item() < 0.002
    counts = torch.bincount(k, minlength=8).float()
    assert counts.min() > 400                             # every mode drawn, roughly uniformly


def test_ring8_and_grid25_functions():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    torch.testing.assert_close(data.ring8(100, generator=g1), data.ring8(100, generator=g2))
    x = data.ring8(2000, std=0.1, generator=torch.Generator().manual_seed(1))
    r = x.norm(dim=1)
    assert abs(r.mean().item() - 1.0) < 0.02 and 0.05 < r.std().item() < 0.15
    y = data.grid25(3000, generator=torch.Generator().manual_seed(0))
    grid = data.MIXTURES["grid25"]
    assert grid.means.shape == (25, 2) and grid.std == 0.05
    assert set(grid.means[:, 0].tolist()) == {-4.0, -2.0, 0.0, 2.0, 4.0}
    nearest = torch.cdist(y, grid.means).min(1)
    assert nearest.values.max() < 0.05 * 6
    assert torch.bincount(nearest.indices, minlength=25).min() > 50


def test_mixture_bad_n():
    with pytest.raises(ValueError, match="non-negative int"):
        data.ring8(-1)


def _write_png(path, size, color, mode="RGB"):
    from PIL import Image
    Image.new(mode, size, color).save(path)


def test_load_image_folder(tmp_path):
    _write_png(tmp_path / "a.png", (20, 10), (255, 0, 0))
    sub = tmp_path / "sub" / "deeper"
    sub.mkdir(parents=True)
    _write_png(sub / "b.png", (7, 7), (0, 0, 255))
    _write_png(tmp_path / "gray.jpg", (16, 16), 128, mode="L")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "fake.png").write_bytes(b"\x89PNG broken")
    x = data.load_image_folder(tmp_path, size=8)
    assert x.shape == (3, 3, 8, 8) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    # sorted walk: a.png (red), gray.jpg, then sub/deeper/b.png (blue)
    torch.testing.assert_close(x[0, 0], torch.ones(8, 8))
    torch.testing.assert_close(x[0, 1], -torch.ones(8, 8))
    torch.testing.assert_close(x[2, 2], torch.ones(8, 8))
    torch.testing.assert_close(x[2, 0], -torch.ones(8, 8))
    assert abs(x[1].mean().item() - (128 / 127.5 - 1)) < 0.02
    g = data.load_image_folder(tmp_path, size=4, channels=1, max_images=2)
    assert g.shape == (2, 1, 4, 4)
    # red in grayscale: 0.299 * 255 = 76
    assert abs(g[0].mean().item() - (76 / 127.5 - 1)) < 0.02


def test_load_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_image_folder(tmp_path / "nope", 8)
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(ValueError, match="no readable images.*1 other file skipped"):
        data.load_image_folder(tmp_path, 8)
    with pytest.raises(NotADirectoryError):
        data.load_image_folder(tmp_path / "x.txt", 8)
    with pytest.raises(ValueError, match="channels"):
        data.load_image_folder(tmp_path, 8, channels=2)
    with pytest.raises(ValueError, match="size"):
        data.load_image_folder(tmp_path, 0)


def test_load_digits():
    pytest.importorskip("sklearn")
    x = data.load_digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32
    assert x.min().item() == -1.0 and x.max().item() == 1.0


def test_load_digits_missing_sklearn(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        data.load_digits()


def test_make_dataset(tmp_path):
    ds = data.make_dataset("ring", n_points=500, generator=torch.Generator().manual_seed(0))
    assert ds.kind == "points" and ds.shape == (2,) and len(ds) == 500 and ds.mixture is data.MIXTURES["ring"]
    assert data.make_dataset("grid25", n_points=10).mixture.n_modes == 25
    for i in range(3):
        _write_png(tmp_path / f"{i}.png", (12, 12), (i * 100, 0, 0))
    ds = data.make_dataset(str(tmp_path), image_size=16)
    assert ds.kind == "images" and ds.shape == (3, 16, 16) and ds.mixture is None and len(ds) == 3
    with pytest.raises(ValueError, match="unknown data 'nosuch'.*ring, grid25, digits"):
        data.make_dataset("nosuch")


def test_make_dataset_digits():
    pytest.importorskip("sklearn")
    ds = data.make_dataset("digits")
    assert ds.kind == "images" and ds.shape == (1, 8, 8)
    assert data.make_dataset("digits", image_size=16).shape == (1, 16, 16)
