"""Spectral norm: forward + backward of one normalized weight (weight access in training mode, then
backward), PyTorch's parametrizations.spectral_norm eager and under torch.compile vs each ganfast
backend, with the floor of each case; the three layers at once, one layer at a time vs sn_step's
multi-tensor kernel; and a discriminator step where D is called three times (real, fake, penalty
input): PyTorch's spectral norm vs ganfast inside sn_step, with the aten ops each step dispatches.

Floor of a layer (the larger of the two, timed in the same run):
- bytes: W is read and W / sigma written, G is read and dW written: a copy moving 4x W's bytes
  (`ganfast.bench.copy_step`); any implementation reads W at least once more for sigma.
- autograd: a trivial differentiable use of the same weight (a view) and its backward.
"""
from __future__ import annotations

import collections
import os

import torch
from torch import nn
from torch.nn.utils import parametrizations as P
from torch.utils._python_dispatch import TorchDispatchMode

from .. import backends
from ..nn import apply_spectral_norm, sn_step, spectral_norm
from . import Floor, Row, binding_floor, copy_step, interleaved_medians, mark_auto, under_backend

LAYERS = {
    "Linear 2304->256": lambda: nn.Linear(2304, 256),
    "Conv2d 256->512 3x3": lambda: nn.Conv2d(256, 512, 3),
    "Linear 4608->512": lambda: nn.Linear(4608, 512),
    "Linear 8192->1": lambda: nn.Linear(8192, 1),
}
ALL_LAYERS = ("Linear 2304->256", "Conv2d 256->512 3x3", "Linear 4608->512")


def weight_read_step(layer: nn.Module, upstream: torch.Tensor):
    """One weight read of a normalized layer (a power iteration) and its backward with `upstream`."""
    original = layer.parametrizations.weight.original

    def step():
        original.grad = None
        layer.weight.backward(upstream)
    return step


def _steps_of(modules, multi_tensor=None):
    """One fwd+bwd of every module's weight (one backward call); multi_tensor: inside sn_step."""
    params = [m.parametrizations.weight.original for m in modules]
    grads = [torch.randn_like(p) for p in params]
    model = nn.ModuleList(modules)

    def get():
        return [m.weight for m in modules]

    def step(fn=get):
        for p in params:
            p.grad = None
        if multi_tensor is None:
            torch.autograd.backward(fn(), grads)
        else:
            with sn_step(model, multi_tensor=multi_tensor):
                torch.autograd.backward(fn(), grads)
    return step, get


def _floor_fns(weights):
    """(the bytes floor's copy, trivial-autograd function) on the same tensors."""
    views = [w.detach().clone().requires_grad_() for w in weights]
    grads = [torch.randn_like(w) for w in weights]
    copy = copy_step(4 * sum(w.numel() * w.element_size() for w in weights), weights[0].device)

    def autograd():
        for v in views:
            v.grad = None
        torch.autograd.backward([v.view_as(v) for v in views], grads)
    return copy, autograd


def _case_rows(case, device, make_modules, quick):
    """Rows of one case: eager, compiled, ganfast per backend (+ multi-tensor), floor."""
    torch.manual_seed(0)
    ref = [P.spectral_norm(m).to(device) for m in make_modules()]
    torch.manual_seed(0)
    ours = [spectral_norm(m).to(device) for m in make_modules()]
    ref_step, ref_get = _steps_of(ref)
    compiled = torch.compile(ref_get)
    fns = {"eager": ref_step, "compiled": lambda: ref_step(compiled)}
    ours_step, _ = _steps_of(ours)
    for name in backends.available_backends(device.type):
        fns[f"ganfast-{name}"] = under_backend(name, ours_step)
    if len(ours) > 1 and "cpu" in backends.available_backends(device.type):
        fns["ganfast-cpu+multi"] = under_backend("cpu", _steps_of(ours, multi_tensor=True)[0])
    copy, autograd = _floor_fns([m.parametrizations.weight.original for m in ours])
    fns["copy"], fns["autograd"] = copy, autograd
    times = interleaved_medians(fns, device, rounds=5 if quick else 11)
    # ties go to bytes (the first of the largest)
    floor = binding_floor(Floor(times.pop("copy"), "bytes"), Floor(times.pop("autograd"), "autograd"))
    rows = [Row("sn", case, name, t) for name, t in times.items()]
    weights = [m.parametrizations.weight.original for m in ours]
    if len(weights) == 1:  # (a multi-layer case runs several sizes: no single pick)
        mark_auto(rows, case, "spectral_norm", weights[0], {b: f"ganfast-{b}" for b in backends.BACKENDS})
    rows.append(Row("sn", case, f"floor ({floor.basis})", floor.seconds))
    return rows


def layer_rows(device, quick):
    rows = []
    for case, make in LAYERS.items():
        rows += _case_rows(f"{case} fwd+bwd", device, lambda make=make: [make()], quick)
    rows += _case_rows("3 layers above fwd+bwd", device, lambda: [LAYERS[c]() for c in ALL_LAYERS], quick)
    return rows


def make_d(sn, device: torch.device = torch.device("cpu")):
    torch.manual_seed(0)
    d = nn.Sequential(nn.Conv2d(3, 64, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(64, 128, 4, 2, 1), nn.LeakyReLU(0.2),
                      nn.Conv2d(128, 256, 4, 2, 1), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(256 * 4 * 4, 1))
    if sn == "pytorch":
        for m in d:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                P.spectral_norm(m)
    elif sn == "ganfast":
        apply_spectral_norm(d)
    return d.to(device)


def d_step_fn(d, real, fake, use_sn_step, forward=None, multi_tensor=False):
    forward = forward or d
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device)

    def step():
        d.zero_grad(set_to_none=True)
        x_hat = alpha * real + (1 - alpha) * fake
        if use_sn_step:
            with sn_step(d, multi_tensor=multi_tensor):
                loss = (nn.functional.softplus(-forward(real)).mean() + nn.functional.softplus(forward(fake)).mean()
                        + forward(x_hat).square().mean())
                loss.backward()
        else:
            loss = (nn.functional.softplus(-forward(real)).mean() + nn.functional.softplus(forward(fake)).mean()
                    + forward(x_hat).square().mean())
            loss.backward()
    return step


class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def count_ops(step) -> int:
    with OpCounter() as c:
        step()
    return sum(c.counts.values())


def d_step_rows(device, quick):
    """A D step (D on real, fake and an interpolate, one backward) with PyTorch's spectral norm, its
    torch.compile, no spectral norm, and ganfast's on each backend (sn_step; on the CPU also
    multi-tensor), timed in alternation as every case of the suite is; and the aten ops each dispatches."""
    g = torch.Generator().manual_seed(0)
    real = torch.randn(16, 3, 32, 32, generator=g).to(device)
    fake = torch.randn(16, 3, 32, 32, generator=g).to(device)
    case = "D step (D x3: real/fake/penalty)"
    fns, counts = {}, {}
    d = make_d("pytorch", device)
    fns["eager"] = d_step_fn(d, real, fake, False)
    counts["pytorch spectral_norm"] = count_ops(fns["eager"])
    fns["compiled"] = d_step_fn(d, real, fake, False, torch.compile(d))
    d = make_d("none", device)
    fns["no-sn"] = d_step_fn(d, real, fake, False)
    counts["no spectral norm"] = count_ops(fns["no-sn"])
    d = make_d("ganfast", device)
    for name in backends.available_backends(device.type):
        fns[f"ganfast-{name}+sn_step"] = under_backend(name, d_step_fn(d, real, fake, True))
        counts[f"ganfast-{name} sn_step"] = count_ops(fns[f"ganfast-{name}+sn_step"])
        if name == "cpu":
            fns["ganfast-cpu+multi"] = under_backend(name, d_step_fn(d, real, fake, True, multi_tensor=True))
            counts["ganfast-cpu sn_step multi"] = count_ops(fns["ganfast-cpu+multi"])
    times = interleaved_medians(fns, device, rounds=5 if quick else 9, round_time=0.2)
    rows = [Row("sn", case, name, t) for name, t in times.items()]
    base = counts["no spectral norm"]
    print("aten ops dispatched by one D step: " + ", ".join(
        f"{k}: {v} ({v / base:.2f}x no-sn)" for k, v in counts.items()), flush=True)
    return rows, counts


def run(quick: bool = False, device: torch.device = torch.device("cpu")) -> list[Row]:
    print("sn: load average %.2f %.2f %.2f at start" % os.getloadavg(), flush=True)
    rows = layer_rows(device, quick)
    rows += d_step_rows(device, quick)[0]
    return rows
