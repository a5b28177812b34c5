"""`ganfast validate`: every op of every available backend against the reference, on fresh random
inputs, values and gradients.

A family contributes `Case`s: `run(dtype, device, seed)` draws its inputs from `seed` (in float64 on
the CPU, then cast), calls the public API under the backend in force, and returns its named outputs
(values and input gradients). The rule for a kernel at a low precision is flash-attention's: its
error against a float64 reference must stay within 2x the error the reference itself makes at that
precision, plus a small floor.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

import torch

from .. import backends

# Error floors (relative), where the reference happens to be exact at that precision.
FLOOR = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}
# dtypes each kernel backend supports (the reference supports all).
BACKEND_DTYPES = {
    "cpu": (torch.float32, torch.float16, torch.bfloat16, torch.float64),
    "cuda": (torch.float32, torch.float16, torch.bfloat16, torch.float64),
    "triton": (torch.float32, torch.float16, torch.bfloat16),
}
DTYPE_NAMES = {torch.float64: "fp64", torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclasses.dataclass(frozen=True)
class Case:
    family: str
    op: str  # what is checked, e.g. "d_loss[hinge]"
    run: Callable[[torch.dtype, torch.device, int], dict[str, torch.Tensor]]
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
    """(worst error, its tolerance, which output) of `actual` against the float64 reference `exact`;
    the tolerance of each output is 2x the error of the reference run at `dtype`, plus the floor."""
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
        exact = case.run(torch.float64, device, seed)
        low = exact if dtype == torch.float64 else case.run(dtype, device, seed)
    try:
        with backends.use_backend(backend):
            actual = case.run(dtype, device, seed)
    except Exception as e:  # a crash is a failure, with its message in the table
        return Result(case.family, case.op, backend, DTYPE_NAMES[dtype], float("nan"), 0.0, False,
                      f"{type(e).__name__}: {e}")
    err, tol, name = compare(actual, exact, low, dtype)
    return Result(case.family, case.op, backend, DTYPE_NAMES[dtype], err, tol, bool(err <= tol), name)


FAMILIES = ("losses", "spectral_norm", "penalties")  # one module of this package each, with a cases() function


def all_cases() -> list[Case]:
    import importlib

    cases: list[Case] = []
    for family in FAMILIES:
        cases.extend(importlib.import_module(f"{__name__}.{family}").cases())
    return cases


def run_validation(seed: int = 0, families: Iterable[str] | None = None,
                   backend_names: Iterable[str] | None = None) -> list[Result]:
    results = []
    wanted = set(families) if families else None
    for name in backend_names or backends.BACKENDS:
        if name == "reference" or not backends.status(name).available:
            continue
        device = torch.device(backends.status(name).device_types[0])
        for case in all_cases():
            if wanted and case.family not in wanted:
                continue
            for dtype in case.dtypes:
                if dtype in BACKEND_DTYPES[name]:
                    results.append(check(case, name, dtype, device, seed))
    return results
