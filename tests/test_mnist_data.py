"""ganfast.mnist: the IDX reader, where MNIST is looked for, MNIST and Stacked MNIST as datasets."""
import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from ganfast import mnist
from ganfast.data import make_dataset

SHARED_MNIST = Path(__file__).resolve().parents[1].parent.parent / "shared" / "data" / "mnist"
if not SHARED_MNIST.is_dir():
    SHARED_MNIST = Path("/work/shared/data/mnist")
needs_mnist = pytest.mark.skipif(not (SHARED_MNIST / "t10k-labels-idx1-ubyte.gz").is_file(),
                                 reason="the MNIST IDX files are not on this machine")


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    return bytes([0, 0, type_code, array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape) + \
        array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool, type_code: int = 0x08) -> Path:
    data = idx_bytes(array, type_code)
    path = path.with_name(path.name + (".gz" if gz else ""))
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def fake_mnist(folder: Path, n_train=40, n_test=20, gz=True, seed=0):
    """Four IDX files of random 28x28 images; image i of a split is filled with its label * 20."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = np.repeat((labels * 20).astype(np.uint8)[:, None, None], 28, 1).repeat(28, 2)
        img_stem, lab_stem = mnist.FILES[split]
        write_idx(folder / img_stem, images, gz)
        write_idx(folder / lab_stem, labels, gz)
        out[split] = (images, labels)
    return out


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("type_code,dtype", [(0x08, np.uint8), (0x0B, np.int16), (0x0D, np.float32)])
def test_read_idx_round_trip(tmp_path, gz, type_code, dtype):
    a = (np.random.default_rng(1).standard_normal((3, 5, 7)) * 50).astype(dtype)
    path = write_idx(tmp_path / "x-idx3", a, gz, type_code)
    b = mnist.read_idx(path)
    assert b.dtype == dtype and b.shape == (3, 5, 7)
    np.testing.assert_array_equal(a, b)


def test_read_idx_rejects_bad_files(tmp_path):
    bad_magic = tmp_path / "bad"
    bad_magic.write_bytes(b"\x01\x02\x08\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(mnist.IDXError, match="not an IDX file"):
        mnist.read_idx(bad_magic)
    bad_type = tmp_path / "type"
    bad_type.write_bytes(b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(mnist.IDXError, match="type code 0x07"):
        mnist.read_idx(bad_type)
    short = tmp_path / "short"
    short.write_bytes(idx_bytes(np.zeros((4, 28, 28), np.uint8))[:-5])
    with pytest.raises(mnist.IDXError, match=r"shape \(4, 28, 28\).*bytes"):
        mnist.read_idx(short)
    header = tmp_path / "header"
    header.write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(mnist.IDXError, match="truncated IDX header"):
        mnist.read_idx(header)
    not_gz = tmp_path / "x.gz"
    not_gz.write_bytes(b"plain bytes")
    with pytest.raises(mnist.IDXError, match="cannot read"):
        mnist.read_idx(not_gz)


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("layout", [".", "mnist", "MNIST/raw"])
def test_load_mnist_from_folder_layouts(tmp_path, gz, layout):
    made = fake_mnist(tmp_path / layout, gz=gz)
    for split in ("train", "test"):
        images, labels = mnist.load_mnist(split, tmp_path)
        assert images.dtype == torch.uint8 and labels.dtype == torch.int64
        np.testing.assert_array_equal(images.numpy(), made[split][0])
        np.testing.assert_array_equal(labels.numpy(), made[split][1])


def test_load_mnist_checks_contents(tmp_path, monkeypatch):
    monkeypatch.setenv("GANFAST_CACHE", str(tmp_path / "cache"))
    fake_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(19, np.uint8), True)  # 20 images, 19 labels
    with pytest.raises(mnist.IDXError, match="20 images but .* 19 labels"):
        mnist.load_mnist("test", tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.full(20, 11, np.uint8), True)
    with pytest.raises(mnist.IDXError, match="digits 0-9, found 11"):
        mnist.load_mnist("test", tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((20, 27, 28), np.uint8), True)
    with pytest.raises(mnist.IDXError, match=r"\(N, 28, 28\)"):
        mnist.load_mnist("test", tmp_path)
    with pytest.raises(ValueError, match="split"):
        mnist.load_mnist("validation", tmp_path)


def test_missing_mnist_names_both_ways(tmp_path, monkeypatch):
    monkeypatch.setenv("GANFAST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GANFAST_DATA", str(tmp_path / "env"))
    with pytest.raises(mnist.MNISTNotFound) as e:
        mnist.find_mnist(tmp_path / "given", download=False)
    text = str(e.value)
    for words in ("--data-dir", "GANFAST_DATA", "torchvision", str(tmp_path / "given"), str(tmp_path / "env"),
                  "train-images-idx3-ubyte"):
        assert words in text


def test_find_mnist_order(tmp_path, monkeypatch):
    monkeypatch.setenv("GANFAST_CACHE", str(tmp_path / "cache"))
    fake_mnist(tmp_path / "a")
    fake_mnist(tmp_path / "b")
    monkeypatch.setenv("GANFAST_DATA", str(tmp_path / "b"))
    assert mnist.find_mnist(tmp_path / "a") == tmp_path / "a"
    assert mnist.find_mnist() == tmp_path / "b"


def test_mnist_images_padding_and_range():
    images = torch.randint(0, 256, (6, 28, 28), dtype=torch.uint8)
    labels = torch.arange(6)
    ds = mnist.MNISTImages(images, labels)
    x, y = ds[3]
    assert x.shape == (1, 32, 32) and int(y) == 3
    torch.testing.assert_close(mnist.to_28(x[None])[0, 0], images[3].float() / 127.5 - 1)
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert (x[0][border] == -1).all()
    batch = ds.__getitems__([5, 0])
    assert len(batch) == 2 and torch.equal(batch[0][0], ds[5][0]) and int(batch[1][1]) == 0
    with pytest.raises(ValueError, match="32x32"):
        mnist.to_28(torch.zeros(1, 1, 30, 30))


def test_stacked_mnist_channels_modes_and_seed():
    n_digits = 500
    labels = torch.randint(0, 10, (n_digits,), generator=torch.Generator().manual_seed(0))
    images = torch.randint(0, 256, (n_digits, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    ds = mnist.StackedMNIST(images, labels, n=30000, generator=torch.Generator().manual_seed(5))
    assert len(ds) == 30000
    idx = [0, 7, 29999, 12345]
    x, modes = ds.batch(idx)
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    for row, i in enumerate(idx):
        t = ds.triples[i]
        for c in range(3):  # channel c is digit t[c], padded
            torch.testing.assert_close(mnist.to_28(x[row:row + 1])[0, c], images[t[c]].float() / 127.5 - 1)
        assert int(modes[row]) == int(labels[t[0]]) * 100 + int(labels[t[1]]) * 10 + int(labels[t[2]])
    # independent uniform draws: every one of the 1000 modes occurs, channels uncorrelated
    all_modes = ds.batch(torch.arange(len(ds)))[1]
    assert torch.bincount(all_modes, minlength=1000).min() > 0
    t = ds.triples.double()
    corr = torch.corrcoef(t.T)
    assert (corr - torch.eye(3)).abs().max() < 0.03
    # the same seed gives the same stacks, another seed others
    again = mnist.StackedMNIST(images, labels, n=30000, generator=torch.Generator().manual_seed(5))
    other = mnist.StackedMNIST(images, labels, n=30000, generator=torch.Generator().manual_seed(6))
    assert torch.equal(again.triples, ds.triples) and not torch.equal(other.triples, ds.triples)
    with pytest.raises(ValueError, match="positive int"):
        mnist.StackedMNIST(images, labels, n=0)


@needs_mnist
def test_the_real_mnist_files():
    images, labels = mnist.load_mnist("test", SHARED_MNIST)
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    assert labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert torch.bincount(labels, minlength=10).min() > 800
    ds = make_dataset("stacked-mnist", data_dir=SHARED_MNIST, generator=torch.Generator().manual_seed(0))
    assert ds.shape == (3, 32, 32) and len(ds) == mnist.STACKED_SIZE and ds.info["n_modes"] == 1000
    ds1 = make_dataset("mnist", data_dir=SHARED_MNIST)
    assert ds1.shape == (1, 32, 32) and len(ds1) == 60000
    with pytest.raises(ValueError, match="image-size"):
        make_dataset("mnist", data_dir=SHARED_MNIST, image_size=64)
