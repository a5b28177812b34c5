"""`ganfast validate`: every op of every available backend against the reference, on fresh random
inputs, values and gradients.

A family contributes `Case`s: `run(dtype, device, seed, rounded_to=None)` draws its inputs from
`seed` (in float64 on the CPU, rounded to `rounded_to`, default dtype, then cast to dtype), calls the
public API under the backend in force, and returns its named outputs (values and input gradients).

What is measured. Each output's error is max |kernel - exact| / max |exact|, where `exact` is the
float64 reference computed on the very inputs the kernel got (drawn in float64, rounded to the
kernel's precision, then computed in float64). A pass means: the kernel computes the function of its
(rounded) inputs at most 2x as badly as PyTorch itself does at that precision (the reference run in
that dtype), plus a small floor -- flash-attention's rule.

Why exact is taken on the rounded inputs: the rounding of the inputs is not an error of the kernel,
and it can be large where the function jumps. Against a reference on the unrounded float64 inputs,
the hinge loss's gradient in bf16 showed a relative error of 1.0 that "passed" (tolerance 2.0): a
logit within bf16's rounding (1/128 near 1) of the hinge's kink at -1 lands on the other side of it,
so its gradient is 1/N in one run and 0 in the other, in the kernel and in PyTorch alike; and the
mean of the logits (about 0.02 out of values near 2) changed by 3 % through the rounding alone. On
the same inputs, both disappear, and the tolerance is the arithmetic's error only.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

import torch

from .. import backends

# Error floors (relative), where the reference happens to be exact at that precision.
FLOOR = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}
DTYPE_NAMES = {torch.float64: "fp64", torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclasses.dataclass(frozen=True)
class Case:
    family: str
    op: str  # what is checked, e.g. "d_loss[hinge]"
    run: Callable[..., dict[str, torch.Tensor]]  # run(dtype, device, seed, rounded_to=None)
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@dataclasses.dataclass(frozen=True)
class Result:
    family: str
    op: str
    backend: str
    dtype: str
    max_rel_error: float
    tolerance: float
    passed: bool
    detail: str = ""


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| (NaN where they disagree on NaN/inf positions)."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    if actual.shape != expected.shape:
        return float("inf")
    finite = torch.isfinite(expected)
    if not torch.equal(finite, torch.isfinite(actual)) or not torch.equal(actual[~finite].nan_to_num(), expected[~finite].nan_to_num()):
        return float("nan")
    if expected.numel() == 0 or not finite.any():
        return 0.0
    scale = expected[finite].abs().max().clamp_min(1e-30)
    return ((actual[finite] - expected[finite]).abs().max() / scale).item()


def compare(actual: dict[str, torch.Tensor], exact: dict[str, torch.Tensor], low_precision: dict[str, torch.Tensor],
            dtype: torch.dtype) -> tuple[float, float, str]:
    """(worst error, its tolerance, which output) of `actual` against `exact` (the float64 reference on
    the same rounded inputs); the tolerance of each output is 2x the error of the reference run at
    `dtype` (`low_precision`), plus the floor."""
    worst, worst_tol, worst_name, worst_ratio = 0.0, FLOOR[dtype], "", -1.0
    for name, expected in exact.items():
        if name not in actual:
            return float("inf"), 0.0, f"{name} missing"
        err = relative_error(actual[name], expected)
        floor = max(FLOOR[dtype], FLOOR.get(actual[name].dtype, 0.0))  # fp32 statistics of an fp64 run
        tol = 2 * relative_error(low_precision[name], expected) + floor
        ratio = float("inf") if err != err else err / tol
        if ratio > worst_ratio:
            worst, worst_tol, worst_name, worst_ratio = err, tol, name, ratio
    return worst, worst_tol, worst_name


def check(case: Case, backend: str, dtype: torch.dtype, device: torch.device, seed: int) -> Result:
    with backends.use_backend("reference"):
        exact = case.run(torch.float64, device, seed, rounded_to=dtype)  # the same inputs, computed in fp64
        low = exact if dtype == torch.float64 else case.run(dtype, device, seed)
    try:
        with backends.use_backend(backend):
            actual = case.run(dtype, device, seed)
    except Exception as e:  # a crash is a failure, with its message in the table
        return Result(case.family, case.op, backend, DTYPE_NAMES[dtype], float("nan"), 0.0, False,
                      f"{type(e).__name__}: {e}")
    err, tol, name = compare(actual, exact, low, dtype)
    return Result(case.family, case.op, backend, DTYPE_NAMES[dtype], err, tol, bool(err <= tol), name)


FAMILIES = ("losses", "spectral_norm", "penalties", "augment")  # one module of this package each, with a cases() function


def all_cases() -> list[Case]:
    import importlib

    cases: list[Case] = []
    for family in FAMILIES:
        cases.extend(importlib.import_module(f"{__name__}.{family}").cases())
    return cases


KERNEL_BACKENDS = tuple(b for b in backends.BACKENDS if b != "reference")


def run_validation(seed: int = 0, families: Iterable[str] | None = None,
                   backend_names: Iterable[str] | None = None) -> list[Result]:
    """Every case of `families` (default all) on every kernel backend of `backend_names` (default:
    those available here). An unknown family or backend is a ValueError; a backend asked for by name
    that cannot run here is a BackendUnavailableError with the reason."""
    wanted = set(families) if families else None
    for family in wanted or ():
        if family not in FAMILIES:
            raise ValueError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    for name in backend_names or ():
        if name == "reference":
            raise ValueError(f"the reference is what every backend is validated against; choose from "
                             f"{', '.join(KERNEL_BACKENDS)}")
        if name not in KERNEL_BACKENDS:
            raise ValueError(f"unknown backend {name!r}; choose from {', '.join(KERNEL_BACKENDS)}")
        if not backends.status(name).available:
            raise backends.BackendUnavailableError(f"backend {name!r} is not available here: "
                                                   f"{backends.status(name).reason}")
    results = []
    for name in backend_names or KERNEL_BACKENDS:
        if not backends.status(name).available:
            continue
        device = torch.device(backends.status(name).device_types[0])
        for case in all_cases():
            if wanted and case.family not in wanted:
                continue
            for dtype in case.dtypes:
                if dtype in backends.TAKES[name][case.family]:  # what the backend declares it takes
                    results.append(check(case, name, dtype, device, seed))
    return results
