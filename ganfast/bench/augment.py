"""Forward + backward of DiffAugment ("color,translation,cutout") on B = 64 images of 3×32×32 and
3×64×64: the same transforms in plain PyTorch (ganfast/reference/augment.py, DiffAugment's own
formulation: pad + gather for the shift, a mask for the cutout) eager and under torch.compile, and
each available ganfast backend.

Two cases per size: "apply" times the transforms on fixed parameters (what the kernels do);
"draw+apply" times the whole call, the parameter draw included (what a training step pays), with
the same draw for every variant. The floor is the time of a copy moving the bytes a fused forward +
backward must move (read x, write the output, read the upstream gradient, write dx), timed in the
same rounds as the variants.
"""
from __future__ import annotations

import torch

from .. import augment
from ..reference import augment as reference
from . import Floor, Row, copy_step, ganfast_backends, interleaved_medians

POLICY = "color,translation,cutout"
BATCH = 64
SHAPES = ((3, 32, 32), (3, 64, 64))


def inputs(shape, device, seed=0, batch: int = BATCH):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((batch,) + tuple(shape), generator=g).to(device).requires_grad_()
    up = torch.randn(x.shape, generator=g).to(device)
    return x, up


def draw(x, generator):
    return augment.draw_params(x.shape[0], x.shape[2], x.shape[3], POLICY, 1.0,
                               lambda s: torch.rand(s, generator=generator, device=generator.device).to(x.device))


def apply_functions(compile_reference: bool = True):
    """variant -> fn(x, color, geometry) -> augmented x."""
    out = {"eager": reference.diffaugment}
    if compile_reference:
        torch._dynamo.reset()
        out["compiled"] = torch.compile(reference.diffaugment, dynamic=False)
    return out


def steps(shape, device, compile_reference: bool = True, batch: int = BATCH):
    """{case: {variant: step}} for one image shape; a step runs forward + backward once."""
    x, up = inputs(shape, device, batch=batch)
    generator = torch.Generator(device=device)
    fixed = draw(x, generator.manual_seed(0))
    plain = apply_functions(compile_reference)
    ours = ganfast_backends(device)
    name = "x".join(map(str, shape))

    def run(fn):
        x.grad = None
        fn().backward(up)

    def apply_step(variant):
        if variant in plain:
            return lambda: run(lambda: plain[variant](x, *fixed))
        return lambda: run(lambda: augment.apply_params(x, *fixed, backend=variant))

    def full_step(variant):
        def call():
            generator.manual_seed(1)
            if variant in plain:
                return plain[variant](x, *draw(x, generator))
            return augment.diffaugment(x, POLICY, 1.0, generator, backend=variant)
        return lambda: run(call)

    variants = list(plain) + ours
    return {f"apply B={batch} {name}": {v: apply_step(v) for v in variants},
            f"draw+apply B={batch} {name}": {v: full_step(v) for v in variants}}, x


def run(quick: bool = False, device: torch.device = torch.device("cpu")) -> list[Row]:
    rows = []
    for shape in SHAPES[:1] if quick else SHAPES:
        cases, x = steps(shape, device)
        for case, fns in cases.items():
            times = interleaved_medians({**fns, "bytes": copy_step(4 * x.numel() * x.element_size(), device)}, device)
            floor = Floor(times.pop("bytes"), "bytes")
            for variant, seconds in times.items():
                rows.append(Row("augment", case, variant, seconds, floor=floor))
    return rows
