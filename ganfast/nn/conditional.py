"""Building blocks of class-conditional GANs.

    ProjectionHead(features, num_classes, spectral_norm=False)   D's output layer (Miyato & Koyama 2018)
    ConditionalBatchNorm2d(num_features, num_classes)           G's batch norm with per-class γ, β

A projection discriminator computes features h = φ(x) and scores them with

    out(x, y) = ψ(h) + ⟨embed(y), h⟩                 ψ: Linear(features, 1), embed: Embedding(K, features)

the log-likelihood-ratio form of a conditional D: ψ(h) scores "real", ⟨embed(y), h⟩ how well h fits
class y. Conditional batch norm normalizes with the batch's statistics (no affine of its own) and
then applies the class's scale and shift: γ[y]·x̂ + β[y], with γ = 1 and β = 0 at the start (an
unconditional batch norm at initialization).
"""
from __future__ import annotations

import torch
from torch import nn

from .spectral_norm import spectral_norm as _spectral_norm


def check_labels(y: torch.Tensor, num_classes: int, batch: int, what: str = "labels") -> None:
    """ValueError / TypeError naming what is wrong with a batch of class labels (no range check: it
    needs the values, a host sync on an accelerator; see ganfast.train for where ranges are checked)."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{what} must be a tensor of class indices, got {type(y).__name__}")
    if y.dtype != torch.long:
        raise TypeError(f"{what} must be a LongTensor (torch.int64) of class indices in [0, {num_classes}), "
                        f"got {y.dtype}")
    if y.dim() != 1 or y.shape[0] != batch:
        raise ValueError(f"{what} must have shape ({batch},), one class index per sample, got {tuple(y.shape)}")


class ProjectionHead(nn.Module):
    """out = ψ(h) + ⟨embed(y), h⟩ for features h (B, features) and labels y (B,): logits (B, 1).

    spectral_norm=True normalizes ψ's weight and the embedding matrix (K × features) with
    ganfast.nn.spectral_norm, as SNGAN's projection discriminator does. The embedding starts
    Xavier-uniform (small, so the class term does not swamp ψ early)."""

    def __init__(self, features: int, num_classes: int, spectral_norm: bool = False):
        super().__init__()
        for name, v in (("features", features), ("num_classes", num_classes)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.features, self.num_classes = features, num_classes
        self.linear = nn.Linear(features, 1)
        self.embed = nn.Embedding(num_classes, features)
        nn.init.xavier_uniform_(self.embed.weight)
        if spectral_norm:
            _spectral_norm(self.linear)
            _spectral_norm(self.embed)

    def forward(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if h.dim() != 2 or h.shape[1] != self.features:
            raise ValueError(f"ProjectionHead expects features of shape (B, {self.features}), got {tuple(h.shape)}")
        check_labels(y, self.num_classes, h.shape[0])
        return self.linear(h) + (self.embed(y) * h).sum(dim=1, keepdim=True)

    def extra_repr(self) -> str:
        return f"features={self.features}, num_classes={self.num_classes}"


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm2d without affine parameters, then γ[y]·x̂ + β[y] per class (γ init 1, β init 0).
    x: (B, C, H, W), y: (B,). Running statistics as BatchNorm2d's (they do not depend on y)."""

    def __init__(self, num_features: int, num_classes: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.num_features, self.num_classes = num_features, num_classes
        self.bn = nn.BatchNorm2d(num_features, eps=eps, momentum=momentum, affine=False)
        self.gamma = nn.Embedding(num_classes, num_features)
        self.beta = nn.Embedding(num_classes, num_features)
        nn.init.ones_(self.gamma.weight)
        nn.init.zeros_(self.beta.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        check_labels(y, self.num_classes, x.shape[0])
        h = self.bn(x)
        return h * self.gamma(y)[:, :, None, None] + self.beta(y)[:, :, None, None]

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}, num_classes={self.num_classes}"
