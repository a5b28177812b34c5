"""What a GAN step computes, as one checked object shared by `Trainer` and `ganfast train` (run.py).

Every option is checked here, once; an error names the option the way the caller spells it
(`d_steps` for the Python API, `--d-steps` for the command line).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from .. import losses
from ..penalties import check_weight

PENALTIES = (None, "r1", "r2", "r1+r2", "wgan-gp", "wgan-lp", "dragan")
AMP_MODES = (None, "bf16", "fp16")


def python_name(option: str) -> str:
    return option


def cli_name(option: str) -> str:
    return "--" + option.replace("_", "-")


def is_positive_int(v) -> bool:
    """An int >= 1 (not a bool): the counts and intervals of the step and of fit."""
    return not isinstance(v, bool) and isinstance(v, int) and v >= 1


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """loss: a kind of ganfast.losses. penalty: None | "r1" | "r2" | "r1+r2" (both, each with the
    weight: R3GAN's regularizer) | "wgan-gp" | "wgan-lp" (one-sided) | "dragan", weighted by
    penalty_weight (λ or γ), applied every penalty_interval-th D step times the interval (lazy).
    d_steps: D updates per G update. ema: decay of an EMA copy of G; ema_rampup: StyleGAN's ramp-up
    (the EMA's half-life, in steps, is at most ema_rampup × the steps done). amp: None | "bf16" |
    "fp16". grad_clip: max gradient norm, a float or (g, d). weight_clip: clamp D's parameters to
    [-c, c] after each D update. accumulate: micro-batches per batch. pack: PacGAN's packing, D
    judges `pack` samples at once, concatenated on the channel axis (D takes pack × C channels)."""
    loss: str = "ns"
    penalty: str | None = None
    penalty_weight: float = 10.0
    penalty_interval: int = 1
    d_steps: int = 1
    spectral_norm: bool = False
    ema: float | None = None
    ema_rampup: float | None = None
    amp: str | None = None
    grad_clip: float | tuple | None = None
    weight_clip: float | None = None
    accumulate: int = 1
    pack: int = 1

    def checked(self, name: Callable[[str], str] = python_name) -> "StepConfig":
        """This configuration with grad_clip as a (g, d) pair; ValueError naming a bad option."""
        if self.loss not in losses.KINDS:
            raise ValueError(f"unknown loss {self.loss!r}; valid losses: {', '.join(losses.KINDS)}")
        if self.penalty not in PENALTIES:
            raise ValueError(f"unknown penalty {self.penalty!r}; valid penalties: None, "
                             + ", ".join(repr(p) for p in PENALTIES[1:]))
        for k in ("d_steps", "penalty_interval", "accumulate", "pack"):
            if not is_positive_int(getattr(self, k)):
                raise ValueError(f"{name(k)} must be an integer >= 1, got {getattr(self, k)!r}")
        check_weight(self.penalty_weight, name("penalty_weight"))
        if self.ema is not None and not 0.0 <= self.ema < 1.0:
            raise ValueError(f"{name('ema')} must be in [0, 1) (e.g. 0.999), got {self.ema!r}")
        if self.ema_rampup is not None and not (self.ema is not None and self.ema_rampup > 0):
            raise ValueError(f"{name('ema_rampup')} must be > 0 and needs {name('ema')}, got {self.ema_rampup!r}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"{name('amp')} must be None, 'bf16' or 'fp16', got {self.amp!r}")
        clip = self.grad_clip
        if clip is None:
            clip = (None, None)
        elif isinstance(clip, (tuple, list)):
            if len(clip) != 2:
                raise ValueError(f"{name('grad_clip')} must be a float or a (g, d) pair, got {clip!r}")
            clip = tuple(None if c is None else float(c) for c in clip)
        else:
            clip = (float(clip), float(clip))
        if any(c is not None and not c > 0 for c in clip):
            raise ValueError(f"{name('grad_clip')} values must be > 0, got {self.grad_clip!r}")
        if self.weight_clip is not None and not self.weight_clip > 0:
            raise ValueError(f"{name('weight_clip')} must be > 0, got {self.weight_clip!r}")
        if self.accumulate > 1 and self.loss in losses.RELATIVISTIC:
            raise ValueError(f"{name('accumulate')}={self.accumulate} needs a loss that is a mean over samples; "
                             f"the relativistic loss {self.loss!r} compares each sample with the whole batch")
        return dataclasses.replace(self, penalty_weight=float(self.penalty_weight), grad_clip=clip)

    def describe(self) -> dict:
        """What a checkpoint records of the step (compared on resume)."""
        return {"loss": self.loss, "penalty": self.penalty, "penalty_weight": self.penalty_weight,
                "penalty_interval": self.penalty_interval, "d_steps": self.d_steps,
                **({"pack": self.pack} if self.pack != 1 else {})}


@dataclasses.dataclass
class LossInputs:
    """What one (micro-)batch's D or G loss was computed from; extra_d_loss / extra_g_loss receive it
    and return a scalar tensor added to that loss (real_logits is None in a G step that needs none;
    real_labels and fake_labels are None in an unconditional run)."""
    trainer: object  # the Trainer
    real: torch.Tensor
    fake: torch.Tensor
    real_logits: torch.Tensor | None
    fake_logits: torch.Tensor
    loss: torch.Tensor
    real_labels: torch.Tensor | None = None
    fake_labels: torch.Tensor | None = None


def micro_batches(x: torch.Tensor | None, k: int):
    """x split along dim 0 into the `accumulate` = k micro-batches (k Nones for None); (x,) when k is 1:
    chunk is an op with autograd bookkeeping, 3 us a call on the CPU, for nothing there."""
    if x is None:
        return [None] * k
    return (x,) if k == 1 else x.chunk(k)
