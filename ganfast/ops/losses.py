"""Op boundary of the GAN losses: schemas, fake kernel, Triton autograd, and the one place where
the losses pick their backend (`dispatch_gan_loss`, by the rule of ganfast.backends).

ganfast::gan_loss_fused(real?, fake, kind, generator) -> (loss, d loss/d real, d loss/d fake, stats)
computes everything in one pass over the logits; stats = [real_mean, fake_mean, real_acc, fake_acc]
(fp32). ganfast::gan_loss is its autograd wrapper (C++, csrc/gan_loss.cpp).
"""
from __future__ import annotations

import torch

from .. import backends
from ..reference import losses as _reference
from ._library import define_fused

FAMILY = "losses"

# Kind ids shared with csrc/common/gan_loss.h and the Triton kernel.
KIND_IDS = {"ns": 0, "minimax": 1, "hinge": 2, "wasserstein": 3, "ls": 4, "rahinge": 5, "rans": 6, "rpgan": 7}
STAT_NAMES = ("real_mean", "fake_mean", "real_acc", "fake_acc")

_SCHEMA = ("(Tensor? real, Tensor fake, int kind, bool generator) "
           "-> (Tensor loss, Tensor grad_real, Tensor grad_fake, Tensor stats)")


def _fake(real, fake, kind, generator):
    grad_real = torch.empty_like(real) if real is not None else fake.new_empty(0)
    return fake.new_empty(()), grad_real, torch.empty_like(fake), fake.new_empty(4, dtype=torch.float32)


def _triton_impl(real, fake, kind, generator):
    from ..kernels.triton.losses import gan_loss_fused

    return gan_loss_fused(real, fake, kind, generator)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(output[1], output[2])
    ctx.has_real = inputs[0] is not None


def _backward(ctx, grad_loss, _grad_real, _grad_fake, _grad_stats):
    grad_real, grad_fake = ctx.saved_tensors
    return (grad_real * grad_loss if ctx.has_real else None), grad_fake * grad_loss, None, None


define_fused("gan_loss", _SCHEMA, _fake, _triton_impl, _setup_context, _backward,
             wrapper_schema="(Tensor? real, Tensor fake, int kind, bool generator) -> (Tensor loss, Tensor stats)")

_gan_loss = torch.ops.ganfast.gan_loss.default
_gan_loss_triton = torch.ops.ganfast.gan_loss_fused_triton.default


def gan_loss(real: torch.Tensor | None, fake: torch.Tensor, kind_id: int, generator: bool,
             backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, stats) from the fused kernel of `backend` ("cpu", "cuda" or "triton"), unchecked.

    ganfast._C.gan_loss_eager is the same op's autograd for plain eager tensors, without the torch.ops
    layers (ganfast/ops/_library.py); it returns None for anything that needs the dispatcher, which
    then goes through torch.ops, as everything does under torch.compile."""
    if backend == "triton":
        loss, _, _, stats = _gan_loss_triton(real, fake, kind_id, generator)
        return loss, stats
    eager = backends.extension_function("gan_loss_eager")
    if eager is not None and not torch.compiler.is_compiling():
        out = eager(real, fake, kind_id, generator)
        if out is not None:
            return out
    return _gan_loss(real, fake, kind_id, generator)


def dispatch_gan_loss(real: torch.Tensor | None, fake: torch.Tensor, kind: str, generator: bool,
                      with_stats: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(loss, stats) on the backend that `backend_for("losses", fake)` picks: the one place where
    the losses choose. The kernels compute stats in the same pass; the reference only when
    with_stats (else None). Inputs are checked by ganfast.losses."""
    backend = backends.backend_for(FAMILY, fake)
    if backend != "reference":
        return gan_loss(real, fake, KIND_IDS[kind], generator, backend)
    if generator:
        return _reference.g_loss(fake, kind, real), None
    return _reference.d_loss(real, fake, kind), (_reference.d_stats(real, fake) if with_stats else None)
