"""`ganfast bench sweep`: each op family against eager PyTorch over the sizes and dtypes that the
other suites do not time, to check ganfast's promise where nobody looks: what `auto` runs is never
slower than the plain PyTorch it replaces. The auto check under the table names every case where
the reference (eager) or another backend beat auto's pick by more than 5 %.

- losses: every kind, d_loss and g_loss, forward + backward, at B = 1, 256, 1000, 16384 and 200000
  in float32 and at B = 64 and 4096 in bfloat16, float16 and float64;
- spectral norm: a layer's weight read + backward (`ganfast.nn.spectral_norm` against
  `torch.nn.utils.parametrizations.spectral_norm`) for small and middle-sized layers of every kind
  (Linear, Conv2d, ConvTranspose2d, Embedding) in float32, bfloat16 and float64;
- penalties: the tail (forward + backward) and the interpolation on narrow rows (B x 2 points up to
  65536 of them, B x 1, widths around the vector lengths) and on narrow rows in the other dtypes;
- augmentation (color, translation, cutout): one image, many tiny ones, large ones.

Rows: "eager" and each available ganfast backend; no torch.compile (the other suites compare against
it; compiling every case here would take minutes). --quick keeps a few cases of each family.
The 2-core Zen 2 of the README had every case faster than eager (2026-12-05): the sweep found the
penalty kernels' narrow rows 0.81-0.99x at 4096-65536 x 2, since mended (kShortRowsBelow). On a
2-core Xeon with AVX-512 (2026-12-06) every case was faster than eager too, but `ganfast bench gp` had
the narrow rows' interpolation behind torch.compile (65536 x 2) and eager (65536 x 1), and fp16 ones
1.6-3x behind compile; mended by the short-row kernels (csrc/cpu/vec/penalties_kernel.cpp). On CUDA
the penalty tail runs one block of 256 threads per row (csrc/cuda/penalties.cu), which B x 2 points
leave almost idle: scripts/gpu_check.sh runs the quick sweep, whose 65536 x 2 case shows it.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .. import losses
from . import Row, dtype_suffix, ganfast_backends, interleaved_medians, mark_auto, under_backend
from . import augment as augment_suite
from . import gp as gp_suite
from . import losses as losses_suite
from .sn import weight_read_step

LOSS_SIZES = {torch.float32: (1, 256, 1000, 16384, 200_000), torch.bfloat16: (64, 4096),
              torch.float16: (64, 4096), torch.float64: (64, 4096)}
SN_LAYERS = {
    "Linear 2->16": lambda: nn.Linear(2, 16),
    "Linear 128->1": lambda: nn.Linear(128, 1),
    "Linear 128->128": lambda: nn.Linear(128, 128),
    "Linear 1024->1024": lambda: nn.Linear(1024, 1024),
    "Conv2d 3->64 4x4": lambda: nn.Conv2d(3, 64, 4),
    "Conv2d 64->128 4x4": lambda: nn.Conv2d(64, 128, 4),
    "Conv2d 128->256 4x4": lambda: nn.Conv2d(128, 256, 4),
    "ConvTranspose2d 128->64 4x4": lambda: nn.ConvTranspose2d(128, 64, 4),
    "Embedding 1000x128": lambda: nn.Embedding(1000, 128),
}
SN_DTYPES = (torch.float32, torch.bfloat16, torch.float64)
GP_SHAPES = {torch.float32: ((1, 2), (4096, 2), (65536, 2), (65536, 1), (4096, 7), (4096, 12), (4096, 17),
                             (16, 1, 28, 28)),
             torch.bfloat16: ((4096, 2), (4096, 12)), torch.float16: ((65536, 2), (16384, 9)),
             torch.float64: ((4096, 2), (4096, 5))}
AUGMENT_CASES = ((1, (3, 32, 32)), (4096, (1, 8, 8)), (64, (3, 4, 4)), (8, (3, 256, 256)))

ROUNDS, ROUND_TIME = 5, 0.02


def _time(rows: list[Row], case: str, steps: dict, family: str, t: torch.Tensor, device) -> None:
    for variant, seconds in interleaved_medians(steps, device, rounds=ROUNDS, round_time=ROUND_TIME).items():
        rows.append(Row("sweep", case, variant, seconds))
    mark_auto(rows, case, family, t)


def _loss_rows(quick: bool, device) -> list[Row]:
    rows = []
    kinds = ("ns", "hinge") if quick else losses.KINDS
    sizes = {torch.float32: (1, 256), torch.bfloat16: (64,)} if quick else LOSS_SIZES
    for dtype, batch_sizes in sizes.items():
        for case, kind, gen, real, fake in losses_suite.cases(kinds, batch_sizes, device, dtype=dtype):
            fns = losses_suite.variants(kind, device, compile_reference=False, generator=gen)
            steps = {v: under_backend(v, losses_suite.make_step(fn, real, fake)) for v, fn in fns.items()}
            _time(rows, case, steps, "losses", fake, device)
    return rows


def _sn_rows(quick: bool, device) -> list[Row]:
    from ..nn import spectral_norm

    rows = []
    layers = list(SN_LAYERS)[:3] if quick else list(SN_LAYERS)
    for dtype in (SN_DTYPES[:2] if quick else SN_DTYPES):
        for name in layers:
            torch.manual_seed(0)
            base = SN_LAYERS[name]().to(device, dtype)
            upstream = torch.randn(base.weight.shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)
            steps = {"eager": weight_read_step(nn.utils.parametrizations.spectral_norm(copy.deepcopy(base)), upstream)}
            for backend in ganfast_backends(device):
                steps[backend] = under_backend(backend, weight_read_step(spectral_norm(copy.deepcopy(base)), upstream))
            _time(rows, f"sn {name}{dtype_suffix(dtype)}", steps, "spectral_norm", base.weight, device)
    return rows


def _gp_rows(quick: bool, device) -> list[Row]:
    rows = []
    shapes = {torch.float32: ((4096, 2), (65536, 2), (4096, 12))} if quick else GP_SHAPES
    for dtype, dtype_shapes in shapes.items():
        for shape in dtype_shapes:
            for case, (steps, _floor, _bytes) in gp_suite.op_steps(shape, device, False, dtype).items():
                _time(rows, case, steps, "penalties", torch.empty(shape, dtype=dtype, device=device), device)
    return rows


def _augment_rows(quick: bool, device) -> list[Row]:
    rows = []
    for batch, shape in AUGMENT_CASES[:2] if quick else AUGMENT_CASES:
        cases, x = augment_suite.steps(shape, device, compile_reference=False, batch=batch)
        for case, steps in cases.items():
            _time(rows, case, steps, "augment", x, device)
    return rows


def run(quick: bool = False, device: torch.device = torch.device("cpu")) -> list[Row]:
    return _loss_rows(quick, device) + _sn_rows(quick, device) + _gp_rows(quick, device) + \
        _augment_rows(quick, device)
