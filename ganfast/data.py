"""Data for `ganfast train`: 2-D Gaussian mixtures, scikit-learn's 8x8 digits, folders of images.

    ring8(n, std=0.01, generator=None)      8 modes at angles 2*pi*k/8 on the unit circle
    grid25(n, std=0.05, generator=None)     25 modes at {-4, -2, 0, 2, 4}^2
    MIXTURES["ring" | "grid25"]             the Mixture behind each (means, std) for the metrics
    load_digits(labels=False)               (1797, 1, 8, 8) in [-1, 1]   (needs scikit-learn); and the
                                            digits 0-9 (1797,) with labels=True
    load_image_folder(path, size, channels) (N, C, size, size) in [-1, 1] (needs Pillow), all in memory
    ImageFolder(path, size, channels, flip) a torch Dataset reading one image at a time from disk;
                                            labelled=True: (image, class) items, one subfolder per class
    mnist / stacked-mnist                   ganfast.mnist: (1 | 3, 32, 32) digits padded from 28x28, with labels
    make_dataset(name_or_path, ...)         a Dataset: samples + kind ("points" | "images") + mixture;
                                            a folder is streamed (`stream`), samples holds its first images;
                                            labels=True: class labels too (a mixture's mode, a digit, a
                                            folder's subfolder) for class-conditional training

Every image tensor is float32 in [-1, 1] (pixel p in [0, 255] -> p / 127.5 - 1), the range of a
tanh generator.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["Dataset", "ImageFolder", "MIXTURES", "Mixture", "DATASETS", "grid25", "ImageRangeError", "load_digits",
           "load_image_folder", "make_dataset", "ring8"]


# ----------------------------------------------------------------------------------------------
# 2-D Gaussian mixtures
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)  # eq on a tensor field would be ambiguous
class Mixture:
    """An equal-weight mixture of isotropic Gaussians N(means[k], std^2 I)."""
    name: str
    means: torch.Tensor  # (K, 2) float32
    std: float

    @property
    def n_modes(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n points (n, dim) float32: a uniformly drawn mode's mean plus std * N(0, I)."""
        return self.sample_with_modes(n, generator)[0]

    def sample_with_modes(self, n: int, generator: torch.Generator | None = None):
        """Like sample, also returning each point's mode index (n,) int64."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        k = torch.randint(0, self.n_modes, (n,), generator=generator)
        return self.means[k] + self.std * torch.randn(n, self.dim, generator=generator), k


def _ring_means(k: int = 8, radius: float = 1.0) -> torch.Tensor:
    angles = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
    return (radius * torch.stack([angles.cos(), angles.sin()], dim=1)).float()


def _grid_means(values=(-4.0, -2.0, 0.0, 2.0, 4.0)) -> torch.Tensor:
    v = torch.tensor(values)
    xs, ys = torch.meshgrid(v, v, indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)


RING = Mixture("ring", _ring_means(), 0.01)
GRID25 = Mixture("grid25", _grid_means(), 0.05)
MIXTURES: dict[str, Mixture] = {"ring": RING, "grid25": GRID25}


def ring8(n: int, std: float = 0.01, generator: torch.Generator | None = None) -> torch.Tensor:
    """n points of the 8-Gaussian ring: modes at (cos 2*pi*k/8, sin 2*pi*k/8), std `std`."""
    return Mixture("ring", RING.means, float(std)).sample(n, generator)


def grid25(n: int, std: float = 0.05, generator: torch.Generator | None = None) -> torch.Tensor:
    """n points of the 25-Gaussian grid: modes at {-4, -2, 0, 2, 4}^2, std `std`."""
    return Mixture("grid25", GRID25.means, float(std)).sample(n, generator)


# ----------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------
def load_digits(labels: bool = False):
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, no download) as (N, 1, 8, 8)
    float32 in [-1, 1]. The raw pixels are 0..16, so x / 8 - 1. labels=True: (images, digits) with
    digits a LongTensor (N,) of 0..9."""
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as e:
        raise ImportError("the 'digits' data set needs scikit-learn: pip install scikit-learn") from e
    bunch = _sk_load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32)  # (N, 8, 8) in [0, 16]
    images = (images / 8.0 - 1.0).unsqueeze(1).contiguous()
    return (images, torch.as_tensor(bunch.target, dtype=torch.long)) if labels else images


def _require_pil():
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as e:
        raise ImportError("loading a folder of images needs Pillow: pip install pillow") from e
    return Image, UnidentifiedImageError


_MODES = {1: "L", 3: "RGB"}


def _center_square(img):
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.crop((left, top, left + s, top + s))


def _check_folder(path, size, channels) -> Path:
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if channels not in _MODES:
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"{str(root)!r} is not a folder of images")
    return root


def _class_folders(root: Path) -> list[Path]:
    """The class subfolders of a labelled folder (sorted, non-hidden); ValueError when the folder is not
    one subfolder per class."""
    entries = [p for p in sorted(root.iterdir()) if not p.name.startswith(".")]
    files = [p.name for p in entries if p.is_file()]
    folders = [p for p in entries if p.is_dir()]
    if files or not folders:
        what = f"files directly in it ({', '.join(files[:3])}{' ...' if len(files) > 3 else ''})" if files else \
            "no subfolders"
        raise ValueError(f"class labels need a folder with one subfolder per class (root/CLASS/image.png), but "
                         f"{str(root)!r} has {what}")
    return folders


def _files(root: Path):
    """Every non-hidden file under root, recursively, in sorted order."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in sorted(filenames):
            if not fname.startswith("."):
                yield Path(dirpath) / fname


def _say_skipped(root: Path, skipped: list) -> None:
    if skipped:
        names = ", ".join(str(p.relative_to(root)) for p in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        warnings.warn(f"{len(skipped)} file(s) under {str(root)!r} are not readable images and were skipped: "
                      f"{names}", stacklevel=3)


def _empty_classes(root: Path, names: list[str]) -> ValueError:
    """A labelled folder with class subfolders that hold no readable image: a conditional G would get
    labels it never learns (its samples of them noise), and the class counts would mislead."""
    return ValueError(f"class folder(s) of {str(root)!r} without a readable image: {', '.join(names)}; add images "
                      f"or remove the folder(s)")


def _no_images(root: Path, skipped: list) -> ValueError:
    what = f"{len(skipped)} other file{'s' if len(skipped) != 1 else ''} skipped" if skipped else "it is empty"
    return ValueError(f"no readable images found under {str(root)!r} ({what})")


class ImageRangeError(ValueError):
    """A high-bit-depth image whose pixel values lie outside the range its mode is read in."""


def _eight_bit(img, path: Path):
    """img with 16-bit or 32-bit integer pixels, or float ones, scaled to 8 bits ("L"). Pillow's own
    convert() clips integer pixels at 255 (a 16-bit image turns white) and rounds float ones (a [0, 1]
    image turns black). Integer pixels are read as 16-bit (0..65535 -> 0..255), float ones as
    intensities in [0, 1]; values outside that range (NaN included) are an error: nothing is clipped
    unsaid."""
    import numpy as np
    from PIL import Image

    if img.mode.startswith("I"):  # "I" and "I;16", "I;16B", "I;16L", ...
        pixels, top, kind = np.asarray(img.convert("I"), dtype=np.float64), 65535, "integer"
        wanted = "as 16-bit (0 to 65535): convert it to 8 or 16 bits"
    elif img.mode == "F":
        pixels, top, kind = np.asarray(img, dtype=np.float64), 1, "float"
        wanted = "as intensities in [0, 1]: scale it to that range"
    else:
        return img
    bad = ~((pixels >= 0) & (pixels <= top))  # NaN fails both
    if bad.any():
        numbers = pixels[~np.isnan(pixels)]
        lo, hi = (numbers.min(), numbers.max()) if numbers.size else (np.nan, np.nan)
        nans = pixels.size - numbers.size
        raise ImageRangeError(f"image {str(path)!r} has {kind} pixels in [{lo:.6g}, {hi:.6g}]"
                              f"{f' and {nans} NaN' if nans else ''}; ganfast reads {kind} images {wanted}")
    return Image.fromarray(np.rint(pixels * (255 / top)).astype(np.uint8))


def _decode(path: Path, size: int, channels: int) -> torch.Tensor:
    """One image as (channels, size, size) uint8: scaled to 8 bits (`_eight_bit`), converted,
    center-cropped to a square, resized with bicubic filtering. Raises what Pillow raises for a file
    it cannot read, and ImageRangeError."""
    Image, _ = _require_pil()
    with Image.open(path) as img:
        img = _eight_bit(img, path).convert(_MODES[channels])
        img = _center_square(img).resize((size, size), Image.Resampling.BICUBIC)
        data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    return data.view(size, size, channels).permute(2, 0, 1)


_UNREADABLE = (OSError, ValueError, SyntaxError)  # Pillow's UnidentifiedImageError is an OSError


def load_image_folder(path, size: int, channels: int = 3, max_images: int | None = None) -> torch.Tensor:
    """Every image under `path` (recursively, in sorted order) as (N, channels, size, size) float32
    in [-1, 1]: converted to grayscale (channels=1) or RGB (channels=3), center-cropped to a
    square and resized with bicubic filtering. Files Pillow cannot read are skipped and named in a
    warning."""
    _require_pil()
    root = _check_folder(path, size, channels)
    arrays, skipped = [], []
    for f in _files(root):
        try:
            arrays.append(_decode(f, size, channels))
        except ImageRangeError:
            raise
        except _UNREADABLE:
            skipped.append(f)
            continue
        if max_images is not None and len(arrays) >= max_images:
            break
    _say_skipped(root, skipped)
    if not arrays:
        raise _no_images(root, skipped)
    return torch.stack(arrays).float().div_(127.5).sub_(1.0)


class ImageFolder(torch.utils.data.Dataset):
    """The images under `root` (recursively, sorted), decoded from disk when indexed, so memory holds
    only the batches being loaded: (channels, size, size) float32 in [-1, 1], prepared as
    load_image_folder does, mirrored left-right with probability 1/2 when `flip` (drawn from torch's
    RNG: the global one, which checkpoints save, or the DataLoader worker's). Files whose header
    Pillow cannot read are skipped at construction and named in a warning; a file that fails later to
    decode raises an error naming it. labelled=True: root holds one subfolder per class (as
    torchvision's ImageFolder: `classes` are the sorted subfolder names, `targets` each image's class
    index) and items are (image, class)."""

    def __init__(self, root, size: int = 32, channels: int = 3, flip: bool = False, max_images: int | None = None,
                 labelled: bool = False):
        Image, _ = _require_pil()
        self.root = _check_folder(root, size, channels)
        self.size, self.channels, self.flip, self.labelled = size, channels, bool(flip), bool(labelled)
        folders = _class_folders(self.root) if labelled else [self.root]
        self.classes = [p.name for p in folders] if labelled else []
        self.files, self.targets, skipped = [], [], []
        for index, folder in enumerate(folders):
            for f in _files(folder):
                try:
                    with Image.open(f):  # reads the header only
                        pass
                except _UNREADABLE:
                    skipped.append(f)
                    continue
                self.files.append(f)
                if labelled:
                    self.targets.append(index)
                if max_images is not None and len(self.files) >= max_images:
                    break
            if max_images is not None and len(self.files) >= max_images:
                break
        _say_skipped(self.root, skipped)
        if not self.files:
            raise _no_images(self.root, skipped)
        found = set(self.targets)
        empty = [name for k, name in enumerate(self.classes) if k not in found]
        if empty and max_images is None:  # (max_images stops before the later classes by design)
            raise _empty_classes(self.root, empty)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        try:
            x = _decode(self.files[i], self.size, self.channels)
        except ImageRangeError:
            raise
        except _UNREADABLE as e:
            raise ValueError(f"image {str(self.files[i])!r} cannot be decoded ({e}); remove it from the folder") from e
        x = x.float().div_(127.5).sub_(1.0)
        if self.flip and bool(torch.rand(()) < 0.5):
            x = x.flip(-1)
        return (x, self.targets[i]) if self.labelled else x


# ----------------------------------------------------------------------------------------------
# One entry point for the CLI
# ----------------------------------------------------------------------------------------------
PREVIEW = 256  # images of a streamed folder kept in memory (the metrics' real samples, explore's pictures)


class Dataset:
    """What `ganfast train` trains on. samples: (N, 2) points or (N, C, H, W) images in [-1, 1];
    for a folder streamed from disk (`stream`, a torch Dataset), its first PREVIEW images, read on
    first use. labels: None, or a LongTensor (N,) of class indices in [0, num_classes) (every sample's,
    a stream's included); class_names: the name of each class where the data names them (a folder's
    class subfolders, sorted), else None (the index is the class: a mode, a digit)."""

    def __init__(self, name: str, samples: torch.Tensor | None, kind: str, mixture: Mixture | None = None,
                 info: dict | None = None, stream=None, labels: torch.Tensor | None = None,
                 num_classes: int | None = None, class_names: list[str] | None = None):
        self.name, self.kind, self.mixture, self.info, self.stream = name, kind, mixture, info or {}, stream
        self._samples = samples
        self.labels, self.num_classes, self.class_names = labels, num_classes, class_names

    def class_frequencies(self) -> list[float]:
        """The fraction of samples of each class (the fake labels' distribution of a conditional run)."""
        counts = torch.bincount(self.labels, minlength=self.num_classes).double()
        return (counts / counts.sum()).tolist()

    @property
    def samples(self) -> torch.Tensor:
        if self._samples is None:
            self._samples = torch.stack([_item(self.stream[i]) for i in range(min(PREVIEW, len(self.stream)))])
        return self._samples

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one sample: (2,) or (C, H, W)."""
        return tuple(self._samples.shape[1:]) if self._samples is not None else tuple(_item(self.stream[0]).shape)

    def __len__(self) -> int:
        return len(self.stream) if self.stream is not None else self.samples.shape[0]

    def training_data(self, batch_size: int, device: torch.device, seed: int = 0, world_size: int = 1):
        """What Trainer.fit takes: the samples tensor, or a DataLoader streaming the folder (shuffled,
        full batches, pinned memory for a GPU, worker processes where there are cores to spare). With
        world_size > 1 (a distributed run), each rank's loader takes its own share of the folder
        (DistributedSampler): without it every rank drew the same batches. A tensor is split by fit."""
        if self.stream is None:
            return self.samples if self.labels is None else (self.samples, self.labels)
        workers = 0 if (os.cpu_count() or 1) <= 2 else min(4, (os.cpu_count() or 1) // 2)
        options = dict(num_workers=workers, persistent_workers=workers > 0,
                       pin_memory=torch.device(device).type == "cuda")
        if world_size > 1:
            from .train.distributed import loader
            return loader(self.stream, batch_size, shuffle=True, seed=seed, **options)
        return torch.utils.data.DataLoader(self.stream, batch_size=batch_size, shuffle=True, drop_last=True,
                                           generator=torch.Generator().manual_seed(seed), **options)


def _item(item) -> torch.Tensor:
    return item[0] if isinstance(item, (tuple, list)) else item


DATASETS = ("ring", "grid25", "digits", "mnist", "stacked-mnist")
MNIST_FAMILY = ("mnist", "stacked-mnist")
_ALIASES = {"ring8": "ring", "8gaussians": "ring", "grid": "grid25", "stacked_mnist": "stacked-mnist",
            "stackedmnist": "stacked-mnist"}


def make_dataset(name_or_path, n_points: int = 20000, image_size: int | None = None, channels: int = 3,
                 generator: torch.Generator | None = None, max_images: int | None = None,
                 flip: bool = False, labels: bool = False, data_dir=None) -> Dataset:
    """`ring` / `grid25`: n_points samples of the mixture (seeded by `generator`); `digits`: the 8x8
    digits (resized when image_size is given and not 8); anything else must be a folder of images,
    streamed from disk at image_size (default 32) with `channels` channels (flip: random horizontal
    flips). `mnist` / `stacked-mnist` (ganfast.mnist, read from data_dir or $GANFAST_DATA): 32x32
    digits with their labels (stacked: the mode 0..999), the stacks drawn with `generator`.
    labels=True: with class labels (a mixture's mode, the digit, a folder's class subfolder, MNIST's
    digit)."""
    name = str(name_or_path)
    key = _ALIASES.get(name.lower(), name.lower())
    if key in MIXTURES:
        mixture = MIXTURES[key]
        x, modes = mixture.sample_with_modes(n_points, generator)
        return Dataset(key, x, "points", mixture, labels=modes if labels else None,
                       num_classes=mixture.n_modes if labels else None)
    if key == "digits":
        x, digits = load_digits(labels=True)
        if image_size is not None and image_size != x.shape[-1]:
            x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear",
                                                align_corners=False).clamp_(-1, 1)
        return Dataset("digits", x, "images", labels=digits if labels else None, num_classes=10 if labels else None)
    if key in MNIST_FAMILY:
        from . import mnist
        if image_size not in (None, 28 + 2 * mnist.PAD):
            raise ValueError(f"{key} is 28x28, padded to {28 + 2 * mnist.PAD}x{28 + 2 * mnist.PAD} for the models; "
                             f"--image-size {image_size} is not supported")
        if labels and key != "mnist":
            raise ValueError("stacked-mnist is unconditional (its 1000 modes are what the benchmark counts); "
                             "--conditional takes --data mnist")
        images, digit_labels = mnist.load_mnist("train", data_dir)
        stream = (mnist.MNISTImages(images, digit_labels) if key == "mnist" else
                  mnist.StackedMNIST(images, digit_labels, generator=generator))
        return Dataset(key, None, "images", info={"n_modes": stream.n_modes, "crop": 28}, stream=stream,
                       labels=digit_labels.long() if labels else None, num_classes=10 if labels else None)
    if os.path.isdir(name):
        size = 32 if image_size is None else image_size
        stream = ImageFolder(name, size, channels, flip, max_images, labelled=labels)
        targets = torch.as_tensor(stream.targets, dtype=torch.long) if labels else None
        return Dataset(os.path.basename(os.path.normpath(name)) or name, None, "images",
                       info={"path": os.path.abspath(name)}, stream=stream, labels=targets,
                       num_classes=len(stream.classes) if labels else None,
                       class_names=list(stream.classes) if labels else None)
    raise ValueError(f"unknown data {name!r}: give one of {', '.join(DATASETS)} or the path of an "
                     f"existing folder of images")
