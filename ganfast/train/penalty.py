"""The penalty term of a D step: its random draws (made for the whole batch at once, from the
trainer's generator, so micro-batches and ranks see slices of one draw) and its value through
ganfast.penalties, and StyleGAN2's lazy-regularization correction of D's optimizer."""
from __future__ import annotations

import warnings

import torch

from .config import micro_batches
from .probe import optional_module

RANDOM = ("wgan-gp", "wgan-lp", "dragan")  # penalties that draw α (and DRAGAN its noise u)
# penalties taken from the logits of the loss's own D forward: whether they differentiate D at the
# reals and at the fakes (the trainer then runs that forward on a detached input that requires grad)
FROM_LOGITS = {"r1": (True, False), "r2": (False, True), "r1+r2": (True, True)}


class PenaltyTerm:
    def __init__(self, config, comm, draw):
        self.kind, self.weight, self.interval = config.penalty, config.penalty_weight, config.penalty_interval
        self.micro = config.accumulate
        self.on_real, self.on_fake = FROM_LOGITS.get(self.kind, (False, False))
        self.comm, self.draw = comm, draw  # draw(fn, shape, dtype): this rank's slice of one draw
        self.module = optional_module("penalties", f"penalty={self.kind!r}")

    def adjust_optimizer(self, d_optimizer) -> None:
        """Lazy regularization (StyleGAN2): lr × c, betas ** c with c = k / (k + 1); says so."""
        if self.interval == 1:
            return
        before = _lr_and_betas(d_optimizer)
        self.module.LazyRegularizer(self.interval).adjust_optimizer(d_optimizer)
        warnings.warn(f"penalty_interval={self.interval} (lazy regularization) changed d_optimizer as StyleGAN2 "
                      f"does: {before} -> {_lr_and_betas(d_optimizer)}; pass penalty_interval=1 to keep it as "
                      f"built", stacklevel=3)

    def draws(self, real: torch.Tensor):
        """Per micro-batch (α, u) from one draw for the whole batch. DRAGAN's std is that of the whole
        (global) batch: a micro-batch's u is scaled by std(batch) / std(micro-batch), so that
        penalties.dragan's x̂ = real + (1 − α)·c·std·u uses the batch's std."""
        k = self.micro
        if self.kind not in RANDOM:
            return [None] * k, [None] * k
        alpha = self.draw(torch.rand, (real.shape[0],), real.dtype)
        if self.kind != "dragan":
            return micro_batches(alpha, k), [None] * k
        noise = self.draw(torch.rand, tuple(real.shape), real.dtype)
        if k == 1 and self.comm.world == 1:
            return [alpha], [noise]
        std = self.comm.global_std(real.detach())
        return micro_batches(alpha, k), [u * (std / r.detach().std()) for u, r in zip(noise.chunk(k), real.chunk(k))]

    def value(self, D, real, fake, real_logits, fake_logits, alpha, noise, scaler):
        """The weighted penalty (scaler: the D GradScaler under fp16; the penalties differentiate the
        scaled output and unscale before the norm)."""
        p, w = self.module, self.weight
        if self.kind == "r1":
            return p.r1_from_logits(real_logits, real, w, scaler=scaler)
        if self.kind == "r2":
            return p.r2_from_logits(fake_logits, fake, w, scaler=scaler)
        if self.kind == "r1+r2":  # R3GAN (Huang et al. 2024): γ/2 (E‖∇D(x)‖² + E‖∇D(G(z))‖²)
            return (p.r1_from_logits(real_logits, real, w, scaler=scaler)
                    + p.r2_from_logits(fake_logits, fake, w, scaler=scaler))
        if fake.shape[0] != real.shape[0]:
            raise ValueError(f"{self.kind} pairs real and fake samples: batch sizes {real.shape[0]} and "
                             f"{fake.shape[0]}")
        if self.kind in ("wgan-gp", "wgan-lp"):
            # under amp, G's output is in autocast's dtype and the data in the models': x̂ in the data's,
            # as α·real + (1 − α)·fake would promote it
            return p.wgan_gp(D, real, fake.to(real.dtype), weight=w, one_sided=self.kind == "wgan-lp", alpha=alpha,
                             scaler=scaler)
        return p.dragan(D, real, weight=w, alpha=alpha, noise=noise, scaler=scaler)


def _lr_and_betas(opt: torch.optim.Optimizer) -> str:
    g = opt.param_groups[0]
    betas = f", betas ({', '.join(f'{float(b):.6g}' for b in g['betas'])})" if "betas" in g else ""
    return f"lr {float(g['lr']):.6g}{betas}"
