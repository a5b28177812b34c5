"""Forward + backward of d_loss for each kind: eager reference, torch.compile of the reference, and
each available ganfast backend. B = 64, 4096 and 57600 (a 64x30x30 patch discriminator)."""
from __future__ import annotations

import torch

from .. import backends, losses
from ..reference import losses as reference
from . import Row, interleaved_medians

SIZES = (64, 4096, 57600)


def make_step(loss_fn, real, fake):
    def step():
        real.grad = fake.grad = None
        loss_fn(real, fake).backward()
    return step


def cases(kinds=losses.KINDS, sizes=SIZES, device=torch.device("cpu")):
    """(case name, kind, real, fake) for each kind and batch size."""
    for kind in kinds:
        for b in sizes:
            g = torch.Generator().manual_seed(b)
            real = torch.randn(b, generator=g).to(device).requires_grad_()
            fake = torch.randn(b, generator=g).to(device).requires_grad_()
            yield f"d_loss[{kind}] B={b}", kind, real, fake


def variants(kind: str, device: torch.device, compile_reference: bool = True):
    """variant name -> loss function (real, fake) -> scalar."""
    def ref(r, f):
        return reference.d_loss(r, f, kind)
    out = {"eager": ref}
    if compile_reference:
        torch._dynamo.reset()  # a fresh cache per case: `ref` is one code object for every kind and size
        out["compiled"] = torch.compile(ref, dynamic=False)
    for name in backends.available_backends(device.type):
        if name != "reference":  # timed under `with use_backend(name)`
            out[name] = lambda r, f: losses.d_loss(r, f, kind)
    return out


def _under_backend(variant: str, step):
    """The step under the backend a ganfast variant names (eager/compiled call the reference directly)."""
    backend = variant if variant in backends.BACKENDS else "auto"

    def run_step():
        with backends.use_backend(backend):
            step()
    return run_step


def run(quick: bool = False, device: torch.device = torch.device("cpu")) -> list[Row]:
    kinds = ("ns", "hinge", "rahinge") if quick else losses.KINDS
    sizes = (64, 4096) if quick else SIZES
    rows = []
    for case, kind, real, fake in cases(kinds, sizes, device):
        steps = {variant: _under_backend(variant, make_step(fn, real, fake))
                 for variant, fn in variants(kind, device).items()}
        for variant, seconds in interleaved_medians(steps, device).items():
            rows.append(Row("losses", case, variant, seconds))
    return rows
