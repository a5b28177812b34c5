"""Data for `ganfast train`: 2-D Gaussian mixtures, scikit-learn's 8x8 digits, folders of images.

    ring8(n, std=0.01, generator=None)      8 modes at angles 2*pi*k/8 on the unit circle
    grid25(n, std=0.05, generator=None)     25 modes at {-4, -2, 0, 2, 4}^2
    MIXTURES["ring" | "grid25"]             the Mixture behind each (means, std) for the metrics
    load_digits()                           (1797, 1, 8, 8) in [-1, 1]   (needs scikit-learn)
    load_image_folder(path, size, channels) (N, C, size, size) in [-1, 1] (needs Pillow)
    make_dataset(name_or_path, ...)         a Dataset: samples + kind ("points" | "images") + mixture

Every image tensor is float32 in [-1, 1] (pixel p in [0, 255] -> p / 127.5 - 1), the range of a
tanh generator.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = ["Dataset", "MIXTURES", "Mixture", "DATASETS", "grid25", "load_digits", "load_image_folder",
           "make_dataset", "ring8"]


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
def load_digits() -> torch.Tensor:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, no download) as (N, 1, 8, 8)
    float32 in [-1, 1]. The raw pixels are 0..16, so x / 8 - 1."""
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as e:
        raise ImportError("the 'digits' data set needs scikit-learn: pip install scikit-learn") from e
    images = torch.as_tensor(_sk_load_digits().images, dtype=torch.float32)  # (N, 8, 8) in [0, 16]
    return (images / 8.0 - 1.0).unsqueeze(1).contiguous()


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


def load_image_folder(path, size: int, channels: int = 3, max_images: int | None = None) -> torch.Tensor:
    """Every image under `path` (recursively, in sorted order) as (N, channels, size, size) float32
    in [-1, 1]: converted to grayscale (channels=1) or RGB (channels=3), center-cropped to a
    square and resized with bicubic filtering. Files Pillow cannot read are skipped."""
    Image, UnidentifiedImageError = _require_pil()
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if channels not in _MODES:
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"{str(root)!r} is not a folder of images")

    arrays, skipped = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in sorted(filenames):
            if fname.startswith("."):
                continue
            try:
                with Image.open(os.path.join(dirpath, fname)) as img:
                    img = img.convert(_MODES[channels])
                    img = _center_square(img).resize((size, size), Image.Resampling.BICUBIC)
                    data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
                skipped += 1  # not an image (or a broken one): ImageFolder-like loaders skip these
                continue
            arrays.append(data.view(size, size, channels).permute(2, 0, 1))
            if max_images is not None and len(arrays) >= max_images:
                break
        if max_images is not None and len(arrays) >= max_images:
            break
    if not arrays:
        raise ValueError(f"no readable images found under {str(root)!r} "
                         f"({skipped} other file{'s' if skipped != 1 else ''} skipped)")
    return torch.stack(arrays).float().div_(127.5).sub_(1.0)


# ----------------------------------------------------------------------------------------------
# One entry point for the CLI
# ----------------------------------------------------------------------------------------------
@dataclass
class Dataset:
    """What `ganfast train` trains on. samples: (N, 2) points or (N, C, H, W) images in [-1, 1]."""
    name: str
    samples: torch.Tensor
    kind: str  # "points" | "images"
    mixture: Mixture | None = None
    info: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one sample: (2,) or (C, H, W)."""
        return tuple(self.samples.shape[1:])

    def __len__(self) -> int:
        return self.samples.shape[0]


DATASETS = ("ring", "grid25", "digits")
_ALIASES = {"ring8": "ring", "8gaussians": "ring", "grid": "grid25"}


def make_dataset(name_or_path, n_points: int = 20000, image_size: int | None = None, channels: int = 3,
                 generator: torch.Generator | None = None, max_images: int | None = None) -> Dataset:
    """`ring` / `grid25`: n_points samples of the mixture (seeded by `generator`); `digits`: the 8x8
    digits (resized when image_size is given and not 8); anything else must be a folder of images,
    loaded at image_size (default 32) with `channels` channels."""
    name = str(name_or_path)
    key = _ALIASES.get(name.lower(), name.lower())
    if key in MIXTURES:
        mixture = MIXTURES[key]
        return Dataset(key, mixture.sample(n_points, generator), "points", mixture)
    if key == "digits":
        x = load_digits()
        if image_size is not None and image_size != x.shape[-1]:
            x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear",
                                                align_corners=False).clamp_(-1, 1)
        return Dataset("digits", x, "images")
    if os.path.isdir(name):
        x = load_image_folder(name, 32 if image_size is None else image_size, channels, max_images)
        return Dataset(os.path.basename(os.path.normpath(name)) or name, x, "images",
                       info={"path": os.path.abspath(name)})
    raise ValueError(f"unknown data {name!r}: give one of {', '.join(DATASETS)} or the path of an "
                     f"existing folder of images")
