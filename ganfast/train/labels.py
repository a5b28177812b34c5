"""The labels of a class-conditional run (`Trainer(num_classes=K)`): how a batch carries them, their
checks, and the distribution the fake labels are drawn from.

A conditional batch is a pair (x, y): y a LongTensor (B,) of class indices in [0, K). G is called as
G(z, y_fake) and D as D(x, y). Fake labels are drawn by inverse CDF, y = #{k : cdf_k <= u} with
u ~ U[0, 1) from the trainer's generator (one draw for the whole global batch, sliced per rank, like
z), so conditional runs stay reproducible and resume exactly. The class probabilities are uniform
unless given (e.g. the data's class frequencies).

Range checks need the label values, a host-device sync on an accelerator: they run on CPU labels
(what a DataLoader yields, before the copy to the device), on a labels tensor given to fit (once),
and on the first step's labels wherever they are.
"""
from __future__ import annotations

import math

import torch

from ..nn.conditional import check_labels


def is_pair(batch) -> bool:
    """Whether `batch` is one (x, y) pair of tensors."""
    return (isinstance(batch, (tuple, list)) and len(batch) == 2
            and all(isinstance(t, torch.Tensor) for t in batch))


def looks_labelled(batch) -> bool:
    """An (x, y) pair whose y holds integers: what a user passes with labels."""
    return is_pair(batch) and not batch[1].is_floating_point() and not batch[1].is_complex()


def unconditional_error(where: str) -> ValueError:
    return ValueError(f"{where} got (x, labels), but this trainer is unconditional: pass num_classes=K to "
                      f"Trainer to train G(z, y) and D(x, y) on labels, or pass x alone")


def missing_error(where: str, num_classes: int) -> ValueError:
    return ValueError(f"{where}: this trainer is conditional (num_classes={num_classes}) and needs (x, y) "
                      f"batches, y a LongTensor (B,) of class indices; got x alone")


def check_range(y: torch.Tensor, num_classes: int, what: str = "labels") -> None:
    """ValueError when a label is outside [0, num_classes) (reads the values)."""
    if y.numel() == 0:
        return
    lo, hi = (int(v) for v in torch.aminmax(y))
    if lo < 0 or hi >= num_classes:
        bad = y[(y < 0) | (y >= num_classes)]
        raise ValueError(f"{what} must be class indices in [0, {num_classes}) (num_classes={num_classes}), "
                         f"got {bad.numel()} outside it, e.g. {int(bad[0])}")


class ClassDistribution:
    """K classes and the probabilities of the fake labels (uniform unless `probs` is given: K numbers
    >= 0 with a positive sum, normalized here)."""

    def __init__(self, num_classes: int, probs=None):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int (the number of classes), got {num_classes!r}")
        self.num_classes = num_classes
        if probs is None:
            p = torch.full((num_classes,), 1.0 / num_classes, dtype=torch.float64)
        else:
            p = torch.as_tensor(probs, dtype=torch.float64).flatten().cpu()
            if p.numel() != num_classes:
                raise ValueError(f"class_probs must hold num_classes={num_classes} probabilities, got {p.numel()}")
            if not bool(torch.isfinite(p).all()) or bool((p < 0).any()) or not p.sum() > 0:
                raise ValueError(f"class_probs must be finite, >= 0 and not all 0, got {p.tolist()}")
            p = p / p.sum()
        self.uniform = probs is None
        self.probs = p
        cdf = p.cumsum(0)
        cdf[-1] = 1.0  # u < 1 always lands in a class
        self._cdf = cdf.float()
        self._cdf_on: dict = {}

    def draw(self, draw, n: int) -> torch.Tensor:
        """n labels (LongTensor) by inverse CDF; draw(fn, shape, dtype) gives this rank's slice of the
        trainer's draw (see Trainer._draw)."""
        u = draw(torch.rand, (n,), torch.float32)
        return self.from_uniform(u)

    def from_uniform(self, u: torch.Tensor) -> torch.Tensor:
        cdf = self._cdf_on.get(u.device)
        if cdf is None:
            cdf = self._cdf_on[u.device] = self._cdf.to(u.device)
        # the first k with cdf_k > u: classes of probability 0 are never drawn
        return torch.searchsorted(cdf, u, right=True).clamp_(max=self.num_classes - 1)

    def check(self, y, batch: int, device: torch.device, read_values: bool, what: str = "labels") -> None:
        check_labels(y, self.num_classes, batch, what)
        if y.device != device:
            raise ValueError(f"device mismatch: the {what} are on {y.device} but the models are on {device}; "
                             f"move them there (fit does this for you)")
        if read_values:
            check_range(y, self.num_classes, what)

    def describe(self) -> dict:
        """What a checkpoint records (compared on resume)."""
        probs = "uniform" if self.uniform else [float(f"{v:.6g}") for v in self.probs.tolist()]
        return {"num_classes": self.num_classes, "class_probs": probs}

    def balanced_labels(self, n: int, device=None) -> torch.Tensor:
        """n labels in K blocks of ceil(n / K) (the last shorter): one row per class in a grid."""
        per = math.ceil(n / self.num_classes)
        return torch.arange(n, device=device) // per
