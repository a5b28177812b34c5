"""GAN losses: logits in, mean-reduced scalar out, on the fastest backend that takes the logits
(device, dtype; ganfast.backends).

    d_loss(real_logits, fake_logits, kind="ns", return_stats=False)
    g_loss(fake_logits, kind="ns", real_logits=None)

Kinds: ns, minimax, hinge, wasserstein, ls, rahinge, rans, rpgan (the table in the README). On the
kernel backends one fused pass computes the loss, its gradient for both logit tensors and the
statistics; backward only rescales that gradient.
"""
from __future__ import annotations

import torch

from .ops import losses as _ops

KINDS = tuple(_ops.KIND_IDS)
RELATIVISTIC = ("rahinge", "rans", "rpgan")


def _check_kind(kind: str) -> None:
    if not isinstance(kind, str) or kind not in _ops.KIND_IDS:
        raise ValueError(f"unknown loss kind {kind!r}; valid kinds: {', '.join(KINDS)}")


def _check_logits(x, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
    if not x.dtype.is_floating_point:  # complex logits too: a GAN loss of them has no real value
        raise TypeError(f"{name} must be floating point, got {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")


def _check_pair(real, fake, kind: str) -> None:
    if real.device != fake.device:
        raise ValueError(f"real_logits is on {real.device} but fake_logits is on {fake.device}")
    if real.dtype != fake.dtype:
        raise TypeError(f"real_logits is {real.dtype} but fake_logits is {fake.dtype}: pass both in one dtype "
                        f"(D's outputs under autocast are in autocast's dtype: call D on both under it, or "
                        f".float() both)")
    if kind == "rpgan" and real.shape != fake.shape:
        raise ValueError(f"rpgan pairs real and fake logits elementwise; shapes differ: "
                         f"{tuple(real.shape)} vs {tuple(fake.shape)}")


def _stats_dict(stats: torch.Tensor) -> dict[str, torch.Tensor]:
    return dict(zip(_ops.STAT_NAMES, stats.unbind()))


def d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str = "ns", return_stats: bool = False):
    """Discriminator loss. With return_stats=True returns (loss, stats): stats maps real_mean,
    fake_mean, real_acc (fraction r > 0) and fake_acc (fraction f < 0) to 0-dim fp32 tensors,
    computed in the same pass (no host sync)."""
    _check_kind(kind)
    _check_logits(real_logits, "real_logits")
    _check_logits(fake_logits, "fake_logits")
    _check_pair(real_logits, fake_logits, kind)
    loss, stats = _ops.dispatch_gan_loss(real_logits, fake_logits, kind, False, return_stats)
    return (loss, _stats_dict(stats)) if return_stats else loss


def g_loss(fake_logits: torch.Tensor, kind: str = "ns", real_logits: torch.Tensor | None = None) -> torch.Tensor:
    """Generator loss; the relativistic kinds (rahinge, rans, rpgan) need real_logits."""
    _check_kind(kind)
    _check_logits(fake_logits, "fake_logits")
    if kind in RELATIVISTIC:
        if real_logits is None:
            raise ValueError(f"the {kind!r} generator loss is relativistic: pass real_logits")
        _check_logits(real_logits, "real_logits")
        _check_pair(real_logits, fake_logits, kind)
    else:
        real_logits = None  # unused by the non-relativistic kinds
    return _ops.dispatch_gan_loss(real_logits, fake_logits, kind, True, False)[0]
