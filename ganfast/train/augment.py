"""What D sees in a Trainer run with augmentation: DiffAugment (ganfast.augment) of every real and fake
batch before D, in the D and G steps alike, with a fixed p or ADA's adaptive p.

Adaptive p (Karras et al. 2020, "Training Generative Adversarial Networks with Limited Data"): D's
overfitting is measured by r_t = E[sign(D(real))] over the last `interval` steps (0 while D cannot
tell, 1 when it is sure of every real); every `interval` steps
    p ← clamp(p + sign(r_t − target) · (batch · interval) / (kimg · 1000), 0, 1)
so p can go from 0 to 1 in `kimg` thousand images. p starts at 0. It stays a tensor on the device
(the draws compare against it there): the adjustment costs no host synchronization, and p is read
with the step's other statistics ("augment_p").

The random parameters come from the trainer's generator (through its `_draw`, so a distributed run
draws one batch's worth and each rank takes its rows): a checkpoint that restores the generator, p
and the sign sums resumes exactly.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from ..augment import apply_params, draw_params, parse_policy


@dataclasses.dataclass(frozen=True)
class Adaptive:
    """ADA's controller: target of E[sign(D(real))], steps between adjustments, and the thousands of
    images over which p may move by 1 (StyleGAN2-ADA's defaults)."""
    target: float = 0.6
    interval: int = 4
    kimg: float = 500.0

    def __post_init__(self):
        if not 0.0 < self.target < 1.0:
            raise ValueError(f"the ADA target must lie in (0, 1), got {self.target}")
        if isinstance(self.interval, bool) or not isinstance(self.interval, int) or self.interval < 1:
            raise ValueError(f"the ADA interval must be a positive number of steps, got {self.interval!r}")
        if not self.kimg > 0:
            raise ValueError(f"the ADA speed kimg must be positive, got {self.kimg}")


def checked_p(p):
    """augment_p as given: a probability in [0, 1], "ada" (ADA with its defaults) or an Adaptive."""
    if p == "ada":
        return Adaptive()
    if isinstance(p, Adaptive):
        return p
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"augment_p must be a probability in [0, 1], 'ada', or an Adaptive(...); got {p!r}")
    return float(p)


class Augmenter:
    """The trainer's augmentation: `augmenter(x)` is x augmented with the policy, each sample with
    probability p; `observe(real_logits)` and `after_step(...)` drive ADA's p."""

    def __init__(self, policy: str, p, device: torch.device, draw: Callable):
        self.transforms = parse_policy(policy)
        p = checked_p(p)
        self.adaptive = p if isinstance(p, Adaptive) else None
        self._fixed_p = None if self.adaptive else p
        self.p = torch.tensor(0.0 if self.adaptive else p, device=device, dtype=torch.float64)
        self._sign_sum = torch.zeros((), device=device, dtype=torch.float64)
        self._count = torch.zeros((), device=device, dtype=torch.float64)
        self._draw = draw  # draw(torch.rand, shape, dtype): the trainer's generator

    def describe(self) -> dict:
        p = dataclasses.asdict(self.adaptive) if self.adaptive else self._fixed_p
        return {"policy": ",".join(self.transforms), "p": p}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._fixed_p == 0.0:
            return x
        p = self._fixed_p if self.adaptive is None else self.p
        color, geometry = draw_params(x.shape[0], x.shape[2], x.shape[3], self.transforms, p,
                                      lambda shape: self._draw(torch.rand, shape, torch.float32))
        return apply_params(x, color, geometry)

    def observe(self, real_logits: torch.Tensor) -> None:
        """Add D's verdicts on (augmented) reals to r_t's sums (ADA only)."""
        if self.adaptive is not None:
            d = real_logits.detach()
            self._sign_sum += torch.sign(d).sum(dtype=torch.float64)
            self._count += d.numel()

    def after_step(self, step: int, batch: int, average_: Callable) -> None:
        """After `step` steps of `batch` images (all ranks): adjust p every `interval` steps (ADA only).
        average_(tensors, what) averages over the ranks (the ratio of the averages is the global r_t)."""
        ada = self.adaptive
        if ada is None or step % ada.interval != 0:
            return
        sums = torch.stack([self._sign_sum, self._count])
        average_([sums], "ADA's sign sums")
        r_t = sums[0] / sums[1].clamp_min(1)
        step_size = batch * ada.interval / (ada.kimg * 1000)
        self.p.copy_((self.p + torch.sign(r_t - ada.target) * step_size).clamp(0.0, 1.0))
        self._sign_sum.zero_()
        self._count.zero_()

    def state_dict(self) -> dict:
        return {"p": self.p.cpu(), "sign_sum": self._sign_sum.cpu(), "count": self._count.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.p.copy_(state["p"])
        self._sign_sum.copy_(state["sign_sum"])
        self._count.copy_(state["count"])


__all__ = ["Adaptive", "Augmenter", "checked_p"]
