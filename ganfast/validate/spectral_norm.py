"""Validation cases of spectral normalization: the normalized weight, u/v updates, sigma and the
weight gradient of ganfast.nn.spectral_norm, in training (with power iteration) and eval mode."""
from __future__ import annotations

import functools

import torch
from torch import nn

from .. import backends
from ..nn import spectral_norm, spectral_norms
from . import Case

LAYERS = {
    "linear": lambda: nn.Linear(37, 23),
    "conv2d": lambda: nn.Conv2d(5, 7, 3),
    "convT2d": lambda: nn.ConvTranspose2d(6, 5, 3),
}


def _run(layer: str, training: bool, dtype, device, seed, rounded_to=None):
    torch.manual_seed(seed)  # same weights and u, v draws in every precision (drawn in fp64, then cast)
    with backends.use_backend("reference"):  # registration runs one forward: in fp64 here
        m = spectral_norm(LAYERS[layer]().double())
    m = m.to(device, rounded_to or dtype).to(dtype)  # the same rounded weights, u and v as a run at rounded_to
    m.train(training)
    p = m.parametrizations.weight
    w = m.weight
    g = torch.Generator().manual_seed(seed + 1)
    up = torch.randn(w.shape, generator=g, dtype=torch.float64).to(rounded_to or dtype).to(device, dtype)
    (w * up).sum().backward()
    return {"weight": w, "u": p[0]._u, "v": p[0]._v, "sigma": spectral_norms(m)[""], "grad": p.original.grad}


def cases() -> list[Case]:
    # CUDA kernels run fp32 arithmetic only (no fp64 path): fp64 is validated on the CPU kernel by the tests.
    dtypes = (torch.float32, torch.float16, torch.bfloat16)
    return [Case("spectral_norm", f"spectral_norm[{layer},{'train' if t else 'eval'}]",
                 functools.partial(_run, layer, t), dtypes) for layer in LAYERS for t in (True, False)]
