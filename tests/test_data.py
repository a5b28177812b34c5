import math
import os

import numpy as np
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


# --- folders streamed from disk -----------------------------------------------------------------

def test_image_folder_streams_the_same_images(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (9 + i, 11, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    whole = data.load_image_folder(tmp_path, size=8)
    ds = data.ImageFolder(tmp_path, size=8)
    assert len(ds) == 5 and torch.equal(torch.stack([ds[i] for i in range(5)]), whole)
    flipped = data.ImageFolder(tmp_path, size=8, flip=True)
    torch.manual_seed(0)
    got = [flipped[0] for _ in range(20)]
    n_flipped = sum(torch.equal(g, whole[0].flip(-1)) for g in got)
    assert all(torch.equal(g, whole[0]) or torch.equal(g, whole[0].flip(-1)) for g in got) and 3 <= n_flipped <= 17
    torch.manual_seed(0)
    assert all(torch.equal(flipped[0], g) for g in got)  # drawn from torch's RNG: reproducible
    loader = data.make_dataset(str(tmp_path), image_size=8).training_data(2, "cpu")
    assert isinstance(loader, torch.utils.data.DataLoader) and len(loader) == 2


def test_a_streamed_folder_is_shared_between_the_ranks_of_a_distributed_run(tmp_path, monkeypatch):
    """`ganfast train --data FOLDER --nproc 2`: each rank's loader takes its own half of the images
    (before, every rank drew the same batches, and fit warned about it)."""
    for i in range(10):
        _write_png(tmp_path / f"{i}.png", (8, 8), (10 * i, 20, 30))
    ds = data.make_dataset(str(tmp_path), image_size=8)
    seen = []
    for rank in (0, 1):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", str(rank))
        loader = ds.training_data(2, "cpu", seed=3, world_size=2)
        assert isinstance(loader.sampler, torch.utils.data.DistributedSampler) and len(loader) == 2
        seen.append(list(loader.sampler))
    assert len(seen[0]) == len(seen[1]) == 5 and sorted(seen[0] + seen[1]) == list(range(10))


def test_unreadable_files_are_named_and_an_empty_folder_is_an_error(tmp_path):
    _write_png(tmp_path / "ok.png", (8, 8), (10, 20, 30))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    for make in (lambda: data.ImageFolder(tmp_path, 8), lambda: data.load_image_folder(tmp_path, 8)):
        with pytest.warns(UserWarning, match=r"2 file\(s\) under .* are not readable images and were skipped: "
                                             r"broken.png, notes.txt"):
            assert len(make()) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"no readable images found under .*empty.*\(it is empty\)"):
        data.ImageFolder(empty, 8)
    # a PNG whose header reads but whose pixels do not: named when it is loaded
    from PIL import Image
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "c.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "c.png").read_bytes()[:5000])
    with pytest.warns(UserWarning):
        ds = data.ImageFolder(tmp_path, 8)
    i = [p.name for p in ds.files].index("cut.png")
    with pytest.raises(ValueError, match="cut.png.*cannot be decoded"):
        ds[i]


STREAM_SCRIPT = """
import resource, sys, torch
torch.set_num_threads(1)
from torch import nn
import ganfast
from ganfast import data

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

folder, size, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
n = 3 * size * size
G = nn.Sequential(nn.Linear(8, n), nn.Tanh(), nn.Unflatten(1, (3, size, size)))
D = nn.Sequential(nn.Flatten(), nn.Linear(n, 1))
ds = data.make_dataset(folder, image_size=size)
t = ganfast.Trainer(G, D, torch.optim.Adam(G.parameters()), torch.optim.Adam(D.parameters()), seed=0)
t.fit(ds.training_data(16, "cpu"), steps=4, progress=False)  # warm up: allocator, kernels
before = peak_mb()
t.fit(ds.training_data(16, "cpu"), steps=4 + steps, progress=False)
print(len(ds), before, peak_mb())
"""


def test_a_streamed_folder_trains_in_bounded_memory(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    from PIL import Image

    import ganfast
    rng = np.random.default_rng(0)
    folder, size, n = tmp_path / "imgs", 96, 240
    folder.mkdir()
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")
    whole_mb = n * 3 * size * size * 4 / 2 ** 20  # the folder as one float32 tensor: 25 MiB
    script = tmp_path / "stream.py"
    script.write_text(STREAM_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(Path(ganfast.__file__).parent.parent))
    out = subprocess.run([sys.executable, str(script), str(folder), str(size), str(2 * n // 16)], env=env,
                         capture_output=True, text=True, timeout=300, check=True).stdout.split()
    count, before, after = int(out[0]), float(out[1]), float(out[2])
    assert count == n
    # two epochs over the folder grow the peak by far less than the folder's size in memory
    assert after - before < whole_mb / 3, (before, after, whole_mb)


# --- high bit depths ------------------------------------------------------------------------------

def test_high_bit_depth_images_are_scaled_not_clipped(tmp_path):
    """A 16-bit PNG (mode I;16) and a float TIFF in [0, 1] (mode F) read as the 8-bit image of the same
    picture. Pillow's convert() alone turned the 16-bit gradient white (clipped at 255) and the float
    one black (rounded to 0 / 1)."""
    from PIL import Image
    ramp = np.linspace(0.0, 1.0, 16 * 16).reshape(16, 16)
    Image.fromarray(np.round(ramp * 255).astype(np.uint8)).save(tmp_path / "a8.png")
    Image.fromarray(np.round(ramp * 65535).astype(np.uint16)).save(tmp_path / "b16.png")
    Image.fromarray(ramp.astype(np.float32)).save(tmp_path / "c32.tiff")
    big_endian = Image.frombytes("I;16B", (16, 16), np.round(ramp * 65535).astype(">u2").tobytes())
    assert [Image.open(tmp_path / f).mode for f in ("a8.png", "b16.png", "c32.tiff")] == ["L", "I;16", "F"]
    for channels in (1, 3):
        x = data.load_image_folder(tmp_path, size=16, channels=channels)
        assert x.shape == (3, channels, 16, 16)
        torch.testing.assert_close(x[1], x[0], atol=0, rtol=0)
        torch.testing.assert_close(x[2], x[0], atol=0, rtol=0)
        assert x[0].min() == -1 and x[0].max() == 1
        ds = data.ImageFolder(tmp_path, size=16, channels=channels)
        assert all(torch.equal(ds[i], x[i]) for i in range(3))
    ref = data._decode(tmp_path / "a8.png", 16, 1)
    assert torch.equal(torch.frombuffer(bytearray(data._eight_bit(big_endian, "b").tobytes()), dtype=torch.uint8)
                       .view(1, 16, 16), ref)


@pytest.mark.parametrize("pixels, mode, found", [
    (np.array([[0.0, 1.5]], dtype=np.float32), "F", r"\[0, 1.5\]"),
    (np.array([[-0.25, 0.5]], dtype=np.float32), "F", r"\[-0.25, 0.5\]"),
    (np.array([[0.0, np.nan]], dtype=np.float32), "F", r"\[0, 0\] and 1 NaN"),
    (np.array([[0, 70000]], dtype=np.int32), "I", r"\[0, 70000\]")])
def test_high_bit_depth_pixels_out_of_range_name_the_file(tmp_path, pixels, mode, found):
    """Out of the range its mode is read in, an image is an error that names it and the values, when
    the folder is loaded and when a streamed item is decoded (not a skipped 'unreadable' file)."""
    from PIL import Image
    _write_png(tmp_path / "ok.png", (2, 1), 128, mode="L")
    Image.fromarray(pixels, mode=mode).save(tmp_path / "odd.tiff")
    with pytest.raises(data.ImageRangeError, match=rf"odd.tiff.* pixels in {found}"):
        data.load_image_folder(tmp_path, size=2)
    ds = data.ImageFolder(tmp_path, size=2)
    assert len(ds) == 2
    with pytest.raises(data.ImageRangeError, match=rf"odd.tiff.* pixels in {found}"):
        ds[[p.name for p in ds.files].index("odd.tiff")]


def test_streamed_datasets_pickle_for_spawned_workers(tmp_path):
    """DataLoader workers started by spawn (macOS' and Windows' default) get the dataset pickled: a
    folder (labelled or not) and the MNIST streams must survive that with the same items."""
    import pickle
    from ganfast import mnist
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        for i in range(2):
            _write_png(tmp_path / name / f"{i}.png", (8, 8), (40 * i, 90, 200))
    images = torch.randint(0, 256, (30, 28, 28), dtype=torch.uint8)
    labels = torch.arange(30) % 10
    streams = [data.ImageFolder(tmp_path, 8, labelled=True), data.ImageFolder(tmp_path, 8),
               mnist.MNISTImages(images, labels), mnist.StackedMNIST(images, labels, n=6,
                                                                      generator=torch.Generator().manual_seed(0))]
    for ds in streams:
        copy = pickle.loads(pickle.dumps(ds))
        for i in range(len(ds)):
            a, b = ds[i], copy[i]
            a, b = (a, b) if isinstance(a, torch.Tensor) else (a[0], b[0])
            assert torch.equal(a, b)
