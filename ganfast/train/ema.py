"""The exponential moving average of G's weights that `Trainer.sample` draws from."""
from __future__ import annotations

import copy
import math

import torch
from torch import nn


class EMA:
    """ema ← ema + (1 − β)·(G − ema) after each G update; buffers are copied. With `rampup`
    (StyleGAN's ema_rampup) the EMA's half-life h = ln 0.5 / ln β steps is capped at rampup × the
    steps done, β_t = 0.5 ** (1 / h_t): early on the average forgets the random start fast."""

    def __init__(self, generator: nn.Module, beta: float, rampup: float | None = None):
        self.model = copy.deepcopy(generator).requires_grad_(False).eval()
        self.beta, self.rampup = beta, rampup
        self._pairs = (list(self.model.parameters()), list(generator.parameters()),
                       list(self.model.buffers()), list(generator.buffers()))

    def beta_at(self, steps_done: int) -> float:
        if self.rampup is None or self.beta == 0:
            return self.beta
        half_life = min(math.log(0.5) / math.log(self.beta), steps_done * self.rampup)
        return 0.5 ** (1.0 / max(half_life, 1e-8))

    @torch.no_grad()
    def update(self, steps_done: int) -> None:
        ep, gp, eb, gb = self._pairs
        torch._foreach_lerp_(ep, gp, 1.0 - self.beta_at(steps_done))
        for e, g in zip(eb, gb):
            e.copy_(g)
