"""Forward + backward of d_loss and g_loss for each kind: eager reference, torch.compile of the
reference, and each available ganfast backend. B = 64, 4096, 57600 (a 64x30x30 patch
discriminator) and 1,048,576, in float32; and B = 57600 in the other dtypes (DTYPE_CASES: bfloat16
and float16, as under autocast, and float64), so that the auto check covers every dtype the kernels
take.

Each case has a floor, the larger of two measured in the same rounds as its variants:
- autograd: one op with one backward node on the same tensors, the least a fused loss can be:
  `torch.dot(r, f).backward()` (reads both logit tensors, writes both gradients), or
  `f.sum().backward()` for a g_loss that reads only f. Until 2026-12-05 it was the issue's
  `(r.sum() + f.sum()).backward()`: three ops and three nodes, which a fused d_loss beats (on the
  2-core Zen 2, 82 us against dot's 55 us at B = 64, 131 against 83 us at 57600).
- bytes: a copy moving the bytes a fused forward + backward must move (read the logits, write their
  gradients), at the bandwidth of the memory they live in (`copy_step`).
The first binds at small inputs and, on a CPU with a slow autograd engine, up to B = 57600 or beyond."""
from __future__ import annotations

import torch

from .. import losses
from ..reference import losses as reference
from . import (Floor, Row, binding_floor, copy_step, dtype_suffix, ganfast_backends, interleaved_medians,
               mark_auto, under_backend)

SIZES = (64, 4096, 57600, 1_048_576)
# (dtype, batch size, kinds) timed besides the float32 cases
DTYPE_CASES = tuple((dtype, 57600, ("ns", "hinge", "rans")) for dtype in (torch.bfloat16, torch.float16, torch.float64))


def make_step(loss_fn, real, fake):
    def step():
        real.grad = fake.grad = None
        loss_fn(real, fake).backward()
    return step


def autograd_floor_step(real, fake, kind="ns", generator=False):
    """The cheapest differentiable use of the (1-D) logit tensors the loss reads, in one op and one
    backward node, as a fused loss (a non-relativistic g_loss reads only the fake ones)."""
    if generator and kind not in losses.RELATIVISTIC:
        return make_step(lambda r, f: f.sum(), real, fake)
    return make_step(torch.dot, real, fake)


def cases(kinds=losses.KINDS, sizes=SIZES, device=torch.device("cpu"), generator=(False, True),
          dtype=torch.float32):
    """(case name, kind, generator, real, fake) for each kind, batch size and loss (d, then g); the
    name gives the dtype when it is not float32."""
    suffix = dtype_suffix(dtype)
    for kind in kinds:
        for b in sizes:
            for gen in generator:
                g = torch.Generator().manual_seed(b)
                real = torch.randn(b, generator=g).to(device, dtype).requires_grad_()
                fake = torch.randn(b, generator=g).to(device, dtype).requires_grad_()
                yield f"{'g' if gen else 'd'}_loss[{kind}] B={b}{suffix}", kind, gen, real, fake


def variants(kind: str, device: torch.device, compile_reference: bool = True, generator: bool = False):
    """variant name -> loss function (real, fake) -> scalar. A non-relativistic g_loss ignores real
    (its gradient stays None)."""
    relativistic = kind in losses.RELATIVISTIC

    def ref(r, f):
        if generator:
            return reference.g_loss(f, kind, r if relativistic else None)
        return reference.d_loss(r, f, kind)

    def ours(r, f):
        if generator:
            return losses.g_loss(f, kind, real_logits=r if relativistic else None)
        return losses.d_loss(r, f, kind)

    out = {"eager": ref}
    if compile_reference:
        torch._dynamo.reset()  # a fresh cache per case: `ref` is one code object for every kind and size
        out["compiled"] = torch.compile(ref, dynamic=False)
    for name in ganfast_backends(device):  # timed under `with use_backend(name)`
        out[name] = ours
    return out


def moved_bytes(real, fake, kind, generator) -> int:
    """Bytes a fused forward + backward must move: each logit tensor the loss reads, read once and
    its gradient written once."""
    used = [fake] + ([real] if not generator or kind in losses.RELATIVISTIC else [])
    return sum(2 * t.numel() * t.element_size() for t in used)


def run(quick: bool = False, device: torch.device = torch.device("cpu")) -> list[Row]:
    kinds = ("ns", "hinge", "rahinge") if quick else losses.KINDS
    sizes = (64, 4096) if quick else SIZES
    all_cases = [cases(kinds, sizes, device)]
    if not quick:
        all_cases += [cases(dtype_kinds, (b,), device, dtype=dtype) for dtype, b, dtype_kinds in DTYPE_CASES]
    rows = []
    for case, kind, gen, real, fake in (c for group in all_cases for c in group):
        steps = {variant: under_backend(variant, make_step(fn, real, fake))
                 for variant, fn in variants(kind, device, generator=gen).items()}
        # under the same harness as the variants (the backend selection around each call)
        steps["floor"] = under_backend("floor", autograd_floor_step(real, fake, kind, gen))
        steps["bytes"] = copy_step(moved_bytes(real, fake, kind, gen), device)
        times = interleaved_medians(steps, device)
        floor = binding_floor(Floor(times.pop("floor"), "autograd"), Floor(times.pop("bytes"), "bytes"))
        for variant, seconds in times.items():
            rows.append(Row("losses", case, variant, seconds, floor=floor))
        mark_auto(rows, case, "losses", fake)
    return rows
