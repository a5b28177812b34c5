"""Spectral norm: forward + backward of one normalized weight (Linear 2304->256, Conv2d 256->512 3x3,
Linear 8192->1), PyTorch's parametrizations.spectral_norm eager and under torch.compile vs each ganfast
backend; and a discriminator step where D is called three times (real, fake, penalty input):
PyTorch's spectral norm vs ganfast inside sn_step, with the aten ops each step dispatches."""
from __future__ import annotations

import collections

import torch
from torch import nn
from torch.nn.utils import parametrizations as P
from torch.utils._python_dispatch import TorchDispatchMode

from .. import backends
from ..nn import apply_spectral_norm, sn_step, spectral_norm
from . import Row, median_time

LAYERS = {
    "Linear 2304->256": lambda: nn.Linear(2304, 256),
    "Conv2d 256->512 3x3": lambda: nn.Conv2d(256, 512, 3),
    "Linear 8192->1": lambda: nn.Linear(8192, 1),
}


def _weight_step(module):
    p = module.parametrizations.weight
    grad = torch.randn_like(p.original)

    def get():
        return module.weight

    def step(fn=get):
        p.original.grad = None
        fn().backward(grad)
    return step, get


def layer_rows(device, quick):
    rows = []
    for case, make in LAYERS.items():
        torch.manual_seed(0)
        ref = P.spectral_norm(make()).to(device)
        step, get = _weight_step(ref)
        rows.append(Row("sn", f"{case} fwd+bwd", "eager", median_time(step, device)))
        compiled = torch.compile(get)
        rows.append(Row("sn", f"{case} fwd+bwd", "compiled", median_time(lambda: step(compiled), device)))
        torch.manual_seed(0)
        ours = spectral_norm(make()).to(device)
        ours_step, _ = _weight_step(ours)
        for name in backends.available_backends(device.type):
            with backends.use_backend(name):
                rows.append(Row("sn", f"{case} fwd+bwd", f"ganfast-{name}", median_time(ours_step, device)))
    return rows


def make_d(sn):
    torch.manual_seed(0)
    d = nn.Sequential(nn.Conv2d(3, 64, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(64, 128, 4, 2, 1), nn.LeakyReLU(0.2),
                      nn.Conv2d(128, 256, 4, 2, 1), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(256 * 4 * 4, 1))
    if sn == "pytorch":
        for m in d:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                P.spectral_norm(m)
    elif sn == "ganfast":
        apply_spectral_norm(d)
    return d


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
    g = torch.Generator().manual_seed(0)
    real = torch.randn(16, 3, 32, 32, generator=g).to(device)
    fake = torch.randn(16, 3, 32, 32, generator=g).to(device)
    case = "D step (D x3: real/fake/penalty)"
    rows, counts = [], {}
    d = make_d("pytorch")
    rows.append(Row("sn", case, "eager", median_time(d_step_fn(d, real, fake, False), device, rounds=5)))
    counts["pytorch spectral_norm"] = count_ops(d_step_fn(d, real, fake, False))
    compiled = torch.compile(d)
    rows.append(Row("sn", case, "compiled", median_time(d_step_fn(d, real, fake, False, compiled), device, rounds=5)))
    d = make_d("none")
    rows.append(Row("sn", case, "no-sn", median_time(d_step_fn(d, real, fake, False), device, rounds=5)))
    counts["no spectral norm"] = count_ops(d_step_fn(d, real, fake, False))
    d = make_d("ganfast")
    for name in backends.available_backends(device.type):
        with backends.use_backend(name):
            rows.append(Row("sn", case, f"ganfast-{name}+sn_step",
                            median_time(d_step_fn(d, real, fake, True), device, rounds=5)))
            counts[f"ganfast-{name} sn_step"] = count_ops(d_step_fn(d, real, fake, True))
            if name == "cpu":
                rows.append(Row("sn", case, "ganfast-cpu+multi",
                                median_time(d_step_fn(d, real, fake, True, multi_tensor=True), device, rounds=5)))
                counts["ganfast-cpu sn_step multi"] = count_ops(d_step_fn(d, real, fake, True, multi_tensor=True))
    base = counts["no spectral norm"]
    print("aten ops dispatched by one D step: " + ", ".join(
        f"{k}: {v} ({v / base:.2f}x no-sn)" for k, v in counts.items()), flush=True)
    return rows, counts


def run(quick: bool = False, device: torch.device = torch.device("cpu")) -> list[Row]:
    rows = layer_rows(device, quick)
    rows += d_step_rows(device, quick)[0]
    return rows
