"""GAN losses in plain PyTorch, written as the loss table states them.

r: discriminator logits on real data, f: on generated data; every term is mean-reduced.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def d_loss(r: torch.Tensor, f: torch.Tensor, kind: str) -> torch.Tensor:
    if kind in ("ns", "minimax"):  # -log sigmoid(r) - log(1 - sigmoid(f))
        return F.softplus(-r).mean() + F.softplus(f).mean()
    if kind == "hinge":
        return F.relu(1 - r).mean() + F.relu(1 + f).mean()
    if kind == "wasserstein":
        return -r.mean() + f.mean()
    if kind == "ls":
        return 0.5 * ((r - 1) ** 2).mean() + 0.5 * (f ** 2).mean()
    if kind == "rahinge":
        return F.relu(1 - (r - f.mean())).mean() + F.relu(1 + (f - r.mean())).mean()
    if kind == "rans":
        return F.softplus(-(r - f.mean())).mean() + F.softplus(f - r.mean()).mean()
    if kind == "rpgan":
        return F.softplus(-(r - f)).mean()
    raise ValueError(f"unknown loss kind {kind!r}")


def g_loss(f: torch.Tensor, kind: str, r: torch.Tensor | None = None) -> torch.Tensor:
    if kind == "ns":
        return F.softplus(-f).mean()
    if kind == "minimax":
        return -F.softplus(f).mean()
    if kind in ("hinge", "wasserstein"):
        return -f.mean()
    if kind == "ls":
        return 0.5 * ((f - 1) ** 2).mean()
    if kind == "rahinge":
        return F.relu(1 + (r - f.mean())).mean() + F.relu(1 - (f - r.mean())).mean()
    if kind == "rans":
        return F.softplus(r - f.mean()).mean() + F.softplus(-(f - r.mean())).mean()
    if kind == "rpgan":
        return F.softplus(-(f - r)).mean()
    raise ValueError(f"unknown loss kind {kind!r}")


@torch.no_grad()
def d_stats(r: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """[mean r, mean f, fraction r > 0, fraction f < 0] in fp32 (summed in fp64 for fp64 logits)."""
    acc = torch.float64 if r.dtype == torch.float64 else torch.float32
    r, f = r.to(acc), f.to(acc)
    return torch.stack([r.mean(), f.mean(), (r > 0).to(acc).mean(), (f < 0).to(acc).mean()]).float()
