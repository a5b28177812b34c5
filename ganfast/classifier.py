"""The reference MNIST classifier behind the MNIST-family metrics (ganfast.image_metrics).

A small CNN trained once, seeded, and cached under the user's cache folder with its SHA-256:

    cache_dir()                     $GANFAST_CACHE, else $XDG_CACHE_HOME/ganfast, else ~/.cache/ganfast
    MNISTClassifier                 (B, 1, 28, 28) in [-1, 1] -> logits (B, 10); .features() the
                                    penultimate 128-d activations
    train_classifier(...)           train one (epochs, subset and seed are arguments: tests train a tiny one)
    save_classifier / load_classifier   the file, its checksum and its test accuracy
    reference_classifier(...)       the cached one, trained here first when the cache has none

A cached file whose SHA-256 differs from the one recorded beside it is refused with an error that
says how to rebuild it (a truncated or edited file would silently change every figure).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F

__all__ = ["ClassifierError", "MNISTClassifier", "cache_dir", "classifier_path", "load_classifier",
           "reference_classifier", "save_classifier", "train_classifier", "test_accuracy"]

VERSION = 1  # of the architecture and recipe; part of the file name
MIN_ACCURACY = 0.99
FEATURE_DIM = 128


class ClassifierError(RuntimeError):
    """The cached classifier is missing, corrupt or not good enough; the message says what to do."""


def cache_dir() -> Path:
    """ganfast's cache folder: $GANFAST_CACHE, else $XDG_CACHE_HOME/ganfast, else ~/.cache/ganfast."""
    if os.environ.get("GANFAST_CACHE"):
        return Path(os.environ["GANFAST_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "ganfast"


def classifier_path() -> Path:
    return cache_dir() / f"mnist-classifier-v{VERSION}.pt"


class MNISTClassifier(nn.Module):
    """conv3(32)-ReLU-pool2 -> conv3(64)-ReLU-pool2 -> linear(128)-ReLU [features] -> dropout -> linear(10)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 7 * 7, FEATURE_DIM)
        self.fc2 = nn.Linear(FEATURE_DIM, 10)
        self.dropout = nn.Dropout(0.3)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise ValueError(f"the MNIST classifier takes (B, 1, 28, 28) images in [-1, 1], got {tuple(x.shape)}")
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        return F.relu(self.fc1(h.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.features(x)))


def _as_input(images_u8: torch.Tensor) -> torch.Tensor:
    return images_u8.float().div(127.5).sub(1.0).unsqueeze(1)


@torch.no_grad()
def test_accuracy(model: MNISTClassifier, images_u8: torch.Tensor, labels: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    right = sum(int((model(_as_input(x)).argmax(1) == y).sum())
                for x, y in zip(images_u8.split(batch), labels.split(batch)))
    return right / max(len(labels), 1)


def train_classifier(train: tuple[torch.Tensor, torch.Tensor], epochs: int = 3, subset: int | None = None,
                     seed: int = 0, batch_size: int = 64, lr: float = 1e-3, progress: bool = False) -> MNISTClassifier:
    """A classifier trained on `train` = (images (N, 28, 28) uint8, labels): Adam(lr), the learning rate
    falling linearly to 0 over `epochs` epochs; `subset` takes the first `subset` images only.
    Deterministic for a seed (on one machine and thread count)."""
    images, labels = train
    if subset is not None:
        images, labels = images[:subset], labels[:subset]
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = MNISTClassifier()
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        n = len(labels)
        steps = epochs * max(n // batch_size, 1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / steps)
        model.train()
        step, t0 = 0, time.perf_counter()
        for epoch in range(epochs):
            perm = torch.randperm(n, generator=g)
            for i in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
                idx = perm[i:i + batch_size]
                loss = F.cross_entropy(model(_as_input(images[idx])), labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
            if progress:
                print(f"  classifier epoch {epoch + 1}/{epochs}: loss {float(loss.detach()):.4f} "
                      f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    model.eval()
    return model


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _meta_path(path: Path) -> Path:
    return path.with_suffix(".json")


def save_classifier(model: MNISTClassifier, path, info: dict) -> Path:
    """Write the weights to `path` and {sha256, info...} to path.json, both atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pt.tmp")
    torch.save(model.state_dict(), tmp)
    digest = _sha256(tmp)
    os.replace(tmp, path)
    meta = _meta_path(path)
    tmp_meta = meta.with_suffix(".json.tmp")
    tmp_meta.write_text(json.dumps({"sha256": digest, "version": VERSION, **info}, indent=2, sort_keys=True) + "\n")
    os.replace(tmp_meta, meta)
    return path


def load_classifier(path=None) -> tuple[MNISTClassifier, dict]:
    """(model in eval mode, its info: sha256, test_accuracy, ...) from `path` (default the cache),
    after checking the file's SHA-256 against the one recorded at saving."""
    path = Path(path) if path is not None else classifier_path()
    meta = _meta_path(path)
    if not path.is_file() or not meta.is_file():
        raise ClassifierError(f"no MNIST classifier at {path} (with {meta.name}): `ganfast classifier` trains one")
    try:
        info = json.loads(meta.read_text())
        expected = info["sha256"]
    except (json.JSONDecodeError, KeyError) as e:
        raise ClassifierError(f"{meta} is not a classifier record ({e}); delete {path} and {meta} and run "
                              f"`ganfast classifier` to train it again") from e
    actual = _sha256(path)
    if actual != expected:
        raise ClassifierError(f"the MNIST classifier {path} fails its checksum (sha256 {actual[:12]}..., recorded "
                              f"{expected[:12]}...): delete it and run `ganfast classifier` to train it again")
    model = MNISTClassifier()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model.eval()
    return model, info


def build_reference_classifier(data_dir=None, epochs: int = 4, seed: int = 0, progress: bool = True,
                               path=None) -> tuple[MNISTClassifier, dict]:
    """Train the reference classifier on MNIST's training set, check its test accuracy (at least
    MIN_ACCURACY) and cache it. Returns (model, info)."""
    from .mnist import load_mnist

    train, test = load_mnist("train", data_dir), load_mnist("test", data_dir)
    if progress:
        print(f"ganfast: training the reference MNIST classifier ({epochs} epochs, seed {seed}; once, then cached "
              f"at {path or classifier_path()})", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    model = train_classifier(train, epochs=epochs, seed=seed, progress=progress)
    acc = test_accuracy(model, *test)
    if acc < MIN_ACCURACY:
        raise ClassifierError(f"the MNIST classifier reached {100 * acc:.2f}% test accuracy, below the "
                              f"{100 * MIN_ACCURACY:.0f}% it needs")
    info = {"test_accuracy": acc, "epochs": epochs, "seed": seed, "train_seconds": time.perf_counter() - t0}
    save_classifier(model, path or classifier_path(), info)
    return load_classifier(path)


def reference_classifier(data_dir=None, progress: bool = True) -> tuple[MNISTClassifier, dict]:
    """The cached reference classifier; trained (a few minutes on a CPU) and cached when there is none."""
    path = classifier_path()
    if not path.is_file():
        return build_reference_classifier(data_dir, progress=progress, path=path)
    return load_classifier(path)
