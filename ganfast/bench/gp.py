"""A full discriminator step with a gradient penalty: loss + penalty + backward + Adam step, with
spectral norm on every layer, for each penalty, on an MLP discriminator (B = 256, 2-D data) and a
DCGAN-style 32x32 conv discriminator (B = 64).

  eager:    the plain-PyTorch way: torch.nn.utils.parametrizations.spectral_norm, D(real) and
            D(fake) for the loss, a separate forward for the penalty, a textbook double backward.
  ganfast (one row per available backend): ganfast.nn.spectral_norm inside sn_step (each W/sigma
            once per step) when ganfast.nn exists, else PyTorch's spectral norm inside
            torch.nn.utils.parametrize.cached() (the case name says which); one D forward on
            cat(real, fake) for the loss (fused d_loss), except for R1/R2, whose penalty shares the
            loss's D(real) / D(fake) forward (r*_from_logits);
            WGAN-GP/DRAGAN use the fused interpolation and the fused penalty tail.
torch.compile is not timed: it does not support the double backward of a gradient penalty.

The op cases time the fused parts alone, against the reference and torch.compile of it, with a
floor (see ganfast.bench.losses): the penalty tail (norms, penalty and d penalty / d g, forward +
backward) and the interpolation (forward), for g of shape (64, 2), (64, 3, 32, 32), (64, 3, 64, 64)
and (65536, 2) (a large batch of 2-D points).
The variants of a case are timed in turn, round by round (see ganfast.bench.interleaved_medians): the CPUs these run
on are often shared, and timing one variant after the other mixes their load into the ratios.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from .. import backends, losses, penalties
from ..ops import penalties as penalty_ops
from ..reference import penalties as penalty_reference
from . import (Floor, Row, binding_floor, copy_step, dtype_suffix, ganfast_backends, interleaved_medians,
               mark_auto, under_backend)

PENALTIES = ("wgan_gp", "r1", "r2", "dragan")
LOSS_KIND = {"wgan_gp": "wasserstein", "r1": "ns", "r2": "ns", "dragan": "ns"}


def ganfast_sn():
    """(spectral_norm, step context, label): ganfast.nn when it exists, PyTorch's otherwise."""
    try:
        from ..nn import sn_step, spectral_norm
        return spectral_norm, sn_step, "sn=ganfast"
    except ImportError:  # ganfast.nn is not merged here yet
        pass
    return nn.utils.parametrizations.spectral_norm, lambda model: parametrize.cached(), "sn=torch+cached"


def mlp_d(sn) -> nn.Module:
    return nn.Sequential(sn(nn.Linear(2, 512)), nn.LeakyReLU(0.2), sn(nn.Linear(512, 512)), nn.LeakyReLU(0.2),
                         sn(nn.Linear(512, 512)), nn.LeakyReLU(0.2), sn(nn.Linear(512, 1)))


def dcgan_d(sn) -> nn.Module:
    return nn.Sequential(sn(nn.Conv2d(3, 64, 4, 2, 1)), nn.LeakyReLU(0.2), sn(nn.Conv2d(64, 128, 4, 2, 1)),
                         nn.LeakyReLU(0.2), sn(nn.Conv2d(128, 256, 4, 2, 1)), nn.LeakyReLU(0.2), nn.Flatten(),
                         sn(nn.Linear(256 * 4 * 4, 1)))


NETS = {"mlp": (mlp_d, 256, (2,)), "dcgan32": (dcgan_d, 64, (3, 32, 32))}


def _plain_loss(r, f, kind):
    if kind == "wasserstein":
        return f.mean() - r.mean()
    return F.softplus(-r).mean() + F.softplus(f).mean()


def plain_step(D, opt, real, fake, name):
    """The plain-PyTorch discriminator step (separate forward for the penalty)."""
    def step():
        opt.zero_grad(set_to_none=True)
        loss = _plain_loss(D(real).flatten(), D(fake).flatten(), LOSS_KIND[name])
        b = real.shape[0]
        if name in ("wgan_gp", "dragan"):
            a = torch.rand((b,) + (1,) * (real.dim() - 1), device=real.device)
            other = fake if name == "wgan_gp" else real + 0.5 * real.std() * torch.rand_like(real)
            x = (a * real + (1 - a) * other).requires_grad_(True)
        else:
            x = (real if name == "r1" else fake).detach().requires_grad_(True)
        (g,) = torch.autograd.grad(D(x).sum(), x, create_graph=True)
        if name in ("r1", "r2"):
            pen = 5.0 * g.pow(2).flatten(1).sum(1).mean()
        else:
            pen = 10.0 * ((g.flatten(1).norm(2, dim=1) - 1) ** 2).mean()
        (loss + pen).backward()
        opt.step()
    return step


def ganfast_step(D, opt, real, fake, name, sn_ctx):
    def step():
        opt.zero_grad(set_to_none=True)
        b = real.shape[0]
        with sn_ctx(D):
            if name in ("r1", "r2"):  # D(real) (D(fake)) serves both the loss and the penalty
                # (separate forwards, not one on cat(real, fake): the double backward would then
                # run over both halves of the batch)
                r = real.detach().requires_grad_(name == "r1")
                f = fake.detach().requires_grad_(name == "r2")
                rl, fl = D(r).flatten(), D(f).flatten()
                loss = losses.d_loss(rl, fl, LOSS_KIND[name])
                pen = penalties.r1_from_logits(rl, r) if name == "r1" else penalties.r2_from_logits(fl, f)
            else:
                logits = D(torch.cat([real, fake])).flatten()
                loss = losses.d_loss(logits[:b], logits[b:], LOSS_KIND[name])
                pen = penalties.wgan_gp(D, real, fake) if name == "wgan_gp" else penalties.dragan(D, real)
            (loss + pen).backward()
        opt.step()
    return step


# the last: a large batch of 2-D points, where rows of two elements had made the CPU kernels slower than
# eager (csrc/cpu/vec/penalties_kernel.cpp, kShortRowsBelow)
OP_SHAPES = ((64, 2), (64, 3, 32, 32), (64, 3, 64, 64), (65536, 2), (65536, 1))


def op_steps(shape, device: torch.device, compile_reference: bool = True, dtype: torch.dtype = torch.float32):
    """{case: ({variant: step}, (floor step, its basis), bytes moved)} for the fused penalty parts on g
    (or real/fake) of `shape` and `dtype` (named in the case when not float32): the two-sided tail
    (forward + backward) and the interpolation."""
    g = torch.Generator().manual_seed(1)
    grad = torch.randn(shape, generator=g).to(device, dtype).requires_grad_()
    real, fake = torch.randn(shape, generator=g).to(device, dtype), torch.randn(shape, generator=g).to(device, dtype)
    alpha = torch.rand(shape[0], generator=g).to(device, dtype)
    dims = "x".join(map(str, shape)) + dtype_suffix(dtype)

    def tail_step(fn):
        def step():
            grad.grad = None
            fn(grad)[0].backward()
        return step

    def ref_tail(x):
        return penalty_reference.penalty_tail(x, 0, 10.0, 1.0)

    def ref_interp(r, f, a):
        return penalty_reference.interpolate(r, f, a, False)

    tails = {"eager": tail_step(ref_tail)}
    interps = {"eager": lambda: ref_interp(real, fake, alpha)}
    if compile_reference:
        torch._dynamo.reset()
        compiled_tail, compiled_interp = torch.compile(ref_tail, dynamic=False), torch.compile(ref_interp, dynamic=False)
        tails["compiled"] = tail_step(compiled_tail)
        interps["compiled"] = lambda: compiled_interp(real, fake, alpha)
    for name in ganfast_backends(device):
        tails[name] = tail_step(lambda x, name=name: penalty_ops.grad_penalty(x, 0, 10.0, 1.0, 1.0, name))
        interps[name] = lambda name=name: penalty_ops.interpolate(real, fake, alpha, False, 0.5, name)

    def tail_floor():
        grad.grad = None
        grad.sum().backward()

    size = grad.element_size() * grad.numel()
    # (the interpolation is timed forward only, as it runs in a penalty: its floor is one elementwise op)
    return {f"tail[two-sided] g={dims}": (tails, (tail_floor, "autograd"), 2 * size),
            f"interpolate g={dims}": (interps, (lambda: real.add(fake), "dispatch"), 3 * size)}


def run_ops(device: torch.device, shapes=OP_SHAPES) -> list[Row]:
    rows = []
    for shape in shapes:
        for case, (steps, (floor_step, basis), nbytes) in op_steps(shape, device).items():
            times = interleaved_medians({**steps, "floor": floor_step, "bytes": copy_step(nbytes, device)}, device)
            floor = binding_floor(Floor(times.pop("floor"), basis), Floor(times.pop("bytes"), "bytes"))
            rows.extend(Row("gp", case, variant, t, floor=floor) for variant, t in times.items())
            mark_auto(rows, case, "penalties", torch.empty(shape, device=device))
    return rows


def run(quick: bool = False, device: torch.device = torch.device("cpu"), nets=None, names=None) -> list[Row]:
    sn, sn_ctx, label = ganfast_sn()
    rows = run_ops(device, OP_SHAPES[:2] if quick else OP_SHAPES)
    for net in nets or NETS:
        make, b, shape = NETS[net]
        g = torch.Generator().manual_seed(0)
        real = torch.randn((b,) + shape, generator=g).to(device)
        fake = torch.randn((b,) + shape, generator=g).to(device)
        for name in names or (("wgan_gp", "r1") if quick else PENALTIES):
            torch.manual_seed(0)
            D_plain = make(nn.utils.parametrizations.spectral_norm).to(device)
            torch.manual_seed(0)
            D_fast = make(sn).to(device)
            case = f"{net} B={b} {name} ({label})"
            opt = torch.optim.Adam(D_plain.parameters(), lr=1e-4, betas=(0.0, 0.9))
            steps = {"eager": plain_step(D_plain, opt, real, fake, name)}
            for backend in backends.available_backends(device.type):
                D = copy.deepcopy(D_fast)
                opt = torch.optim.Adam(D.parameters(), lr=1e-4, betas=(0.0, 0.9))
                steps[backend] = under_backend(backend, ganfast_step(D, opt, real, fake, name, sn_ctx))
            for variant, t in interleaved_medians(steps, device, rounds=5 if quick else 9, round_time=0.0).items():
                rows.append(Row("gp", case, variant, t))
    return rows
