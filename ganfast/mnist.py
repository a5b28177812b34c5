"""MNIST and Stacked MNIST for `ganfast train --data mnist | stacked-mnist`.

    read_idx(path)                      the array of one IDX file (gzipped or not), checked
    load_mnist(split, data_dir=None)    (images (N, 28, 28) uint8, labels (N,) int64) of "train" | "test"
    find_mnist(data_dir=None)           the folder holding the four IDX files, or MNISTNotFound
    MNISTImages(images, labels)         a torch Dataset of (1, 32, 32) float images in [-1, 1] and labels
    StackedMNIST(images, labels, n, generator)
                                        n samples of three independently drawn digits stacked as R, G, B
                                        (3, 32, 32), labelled by their mode 100*r + 10*g + b (0..999)
    to_28(x)                            (B, C, 32, 32) -> (B, C, 28, 28): the image without its padding

Sources, in order: `data_dir` (the `--data-dir` option), the GANFAST_DATA environment variable, and
torchvision's `MNIST(download=True)` where torchvision is installed and the network allows. In a folder
the IDX files may sit directly, under mnist/ or MNIST/raw/ (torchvision's layout), gzipped or not.

The 28x28 digits are padded by 2 pixels of background (-1) to 32x32, so that the power-of-two DCGAN
and ResNet models take them unchanged; `to_28` crops the padding off again (samples, metrics).
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

__all__ = ["IDXError", "MNISTNotFound", "MNISTImages", "StackedMNIST", "find_mnist", "load_mnist", "read_idx",
           "to_28", "PAD", "FILES"]

FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
SIZES = {"train": 60000, "test": 10000}
PAD = 2  # 28 + 2 * 2 = 32
STACKED_SIZE = 128_000  # stacked training samples per epoch (VEEGAN / PacGAN: 128k)
# IDX type codes (the third byte of the magic number) -> numpy dtype, big-endian
_IDX_TYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


class IDXError(ValueError):
    """An IDX file that is not one, or not the one expected; the message names the file and the fault."""


class MNISTNotFound(FileNotFoundError):
    """The MNIST files are in none of the places looked at; the message says how to get them."""


def _open(path: Path) -> bytes:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise IDXError(f"cannot read {path}: {e}") from e


def read_idx(path) -> np.ndarray:
    """The array of an IDX file (gzipped when its name ends in .gz). The header is two zero bytes, a
    type code, the number of dimensions, then each size as a big-endian uint32; the data follow."""
    path = Path(path)
    raw = _open(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise IDXError(f"{path} is not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    dtype = _IDX_TYPES.get(raw[2])
    if dtype is None:
        raise IDXError(f"{path}: unknown IDX type code 0x{raw[2]:02x}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise IDXError(f"{path}: truncated IDX header ({len(raw)} bytes for {ndim} dimensions)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    need = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != need:
        raise IDXError(f"{path}: the header says shape {shape} ({need} bytes in all) but the file has "
                       f"{len(raw)} bytes")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _candidates(root: Path):
    for sub in (root, root / "mnist", root / "MNIST" / "raw", root / "MNIST"):
        yield sub


def _file_in(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _folder_with_files(root: Path) -> Path | None:
    for folder in _candidates(root):
        if all(_file_in(folder, stem) for pair in FILES.values() for stem in pair):
            return folder
    return None


def default_download_root() -> Path:
    from .classifier import cache_dir
    return cache_dir() / "data"


def _not_found(looked: list[str], why_no_download: str) -> MNISTNotFound:
    names = ", ".join(stem + "[.gz]" for pair in FILES.values() for stem in pair)
    where = "; ".join(looked) if looked else "no folder given"
    return MNISTNotFound(
        f"MNIST not found ({where}). Either put the four IDX files ({names}) in a folder and pass "
        f"--data-dir FOLDER or set GANFAST_DATA=FOLDER, or install torchvision (pip install torchvision) on a "
        f"machine with network access so that ganfast downloads it with torchvision.datasets.MNIST "
        f"(download=True) into {default_download_root()} ({why_no_download})")


def find_mnist(data_dir=None, download: bool = True) -> Path:
    """The folder holding the four MNIST IDX files: data_dir, else $GANFAST_DATA, else torchvision's
    download (when installed; into the ganfast cache). MNISTNotFound says where it looked and how
    to get the files."""
    looked = []
    for label, root in (("--data-dir", data_dir), ("GANFAST_DATA", os.environ.get("GANFAST_DATA") or None)):
        if root is None:
            continue
        root = Path(root).expanduser()
        found = _folder_with_files(root)
        if found is not None:
            return found
        looked.append(f"{label} {root}: " + ("no MNIST IDX files there" if root.is_dir() else "no such folder"))
    root = default_download_root()
    found = _folder_with_files(root)
    if found is not None:
        return found
    if not download:
        raise _not_found(looked, "download not attempted")
    try:
        from torchvision.datasets import MNIST
    except ImportError:
        raise _not_found(looked, "torchvision is not installed here") from None
    try:
        MNIST(str(root), train=True, download=True)
        MNIST(str(root), train=False, download=True)
    except Exception as e:  # no network, a proxy, a broken mirror: say so with the ways out
        raise _not_found(looked, f"the download failed: {type(e).__name__}: {e}") from e
    found = _folder_with_files(root)
    if found is None:
        raise _not_found(looked, f"torchvision's download left no IDX files under {root}")
    return found


def load_mnist(split: str, data_dir=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 28, 28) uint8, labels (N,) int64) of MNIST's "train" (60000) or "test" (10000) split,
    checked: image magic 0x803, label magic 0x801, 28x28, as many labels as images, labels 0..9."""
    if split not in FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = find_mnist(data_dir)
    img_path, lab_path = (_file_in(folder, stem) for stem in FILES[split])
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise IDXError(f"{img_path}: expected uint8 images of shape (N, 28, 28) (magic 0x00000803), got "
                       f"{images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise IDXError(f"{lab_path}: expected uint8 labels of shape (N,) (magic 0x00000801), got "
                       f"{labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise IDXError(f"{img_path} has {len(images)} images but {lab_path} has {len(labels)} labels")
    if labels.size and labels.max() > 9:
        raise IDXError(f"{lab_path}: labels must be digits 0-9, found {int(labels.max())}")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def _to_float32(images_u8: torch.Tensor) -> torch.Tensor:
    """(..., 28, 28) uint8 -> (..., 32, 32) float32 in [-1, 1], padded with background -1."""
    x = images_u8.float().div_(127.5).sub_(1.0)
    return torch.nn.functional.pad(x, (PAD, PAD, PAD, PAD), value=-1.0)


def to_28(x: torch.Tensor) -> torch.Tensor:
    """(B, C, 32, 32) -> (B, C, 28, 28): the digits without the padding (a 28x28 input is returned as is)."""
    if x.shape[-2:] == (28, 28):
        return x
    if x.shape[-2:] != (28 + 2 * PAD, 28 + 2 * PAD):
        raise ValueError(f"expected MNIST-family images of 32x32 (or 28x28), got {tuple(x.shape)}")
    return x[..., PAD:-PAD, PAD:-PAD]


class MNISTImages(torch.utils.data.Dataset):
    """MNIST digits as ((1, 32, 32) float32 in [-1, 1], label) pairs. Batched reads (a DataLoader's
    __getitems__) gather and convert the whole batch at once."""

    n_modes = 10

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, index) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(index, dtype=torch.long)
        return _to_float32(self.images[index]).unsqueeze(1), self.labels[index]

    def __getitem__(self, i: int):
        x, y = self.batch([i])
        return x[0], y[0]

    def __getitems__(self, index):
        x, y = self.batch(index)
        return list(zip(x.unbind(0), y.unbind(0)))


class StackedMNIST(MNISTImages):
    """n samples, each three digits drawn independently and uniformly from `images` and stacked as the
    R, G, B channels: ((3, 32, 32) float32 in [-1, 1], mode) with mode = 100*label_R + 10*label_G +
    label_B in 0..999. The draws are fixed by `generator` (the run's seed)."""

    n_modes = 1000

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, n: int = STACKED_SIZE,
                 generator: torch.Generator | None = None):
        super().__init__(images, labels)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        self.triples = torch.randint(0, images.shape[0], (n, 3), generator=generator)

    def __len__(self) -> int:
        return self.triples.shape[0]

    def batch(self, index) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.triples[torch.as_tensor(index, dtype=torch.long)]  # (B, 3)
        digits = self.labels[t]  # (B, 3)
        modes = digits[:, 0] * 100 + digits[:, 1] * 10 + digits[:, 2]
        return _to_float32(self.images[t]), modes
