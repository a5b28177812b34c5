"""`ganfast bench`: timings of ganfast against plain PyTorch and torch.compile, in the same run.

Every suite reports median times and ratios (speedup = baseline time / ganfast time); nothing here
asserts a timing. Suites are modules of this package with a `run(quick, device)` that returns rows.
"""
from __future__ import annotations

import dataclasses
import importlib
import statistics
import sys
import time
from typing import Callable

import torch

SUITES = ("losses", "sn", "gp", "step", "malloc", "dist", "augment", "launches", "sweep")  # launches prints its own table
# while `run(progress=True)` runs a suite: [suite name, cases timed so far]; each case (one call of
# interleaved_medians) then prints a progress line on stderr
_progress: list | None = None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def dtype_suffix(dtype: torch.dtype) -> str:
    """What a case name adds for its dtype: nothing for float32, else " bfloat16", " float64", ..."""
    from ..backends import dtype_name

    return "" if dtype == torch.float32 else " " + dtype_name(dtype)


def ganfast_backends(device: torch.device) -> list[str]:
    """The backends a suite times beside the eager reference on `device` (those available there,
    less the reference itself)."""
    from .. import backends

    return [b for b in backends.available_backends(device.type) if b != "reference"]


def under_backend(name: str, step: Callable[[], object]) -> Callable[[], None]:
    """`step` run under the backend selection `name`; any name that is not a backend ("eager",
    "floor", ...) runs under "auto", so a suite can wrap the reference variants and the floor as well
    and have every variant of a case pay the same harness cost (about 1 us a call: it matters only
    at small inputs; the losses suite does so)."""
    from .. import backends

    selection = name if name in backends.CHOICES else "auto"

    def run() -> None:
        with backends.use_backend(selection):
            step()
    return run


def interleaved_medians(fns: dict[str, Callable[[], object]], device: torch.device = torch.device("cpu"), *,
                        rounds: int = 9, round_time: float = 0.05, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each function. Calls per round are calibrated so that a round of
    one function lasts about `round_time`; the functions are timed in alternation, the order rotating
    each round (A B C, B C A, ...), so that load from other processes hits every variant alike."""
    names = list(fns)
    calls = {}
    for name in names:
        for _ in range(warmup):
            fns[name]()
        _sync(device)
        start = time.perf_counter()
        fns[name]()
        _sync(device)
        calls[name] = max(1, int(round_time / max(time.perf_counter() - start, 1e-7)))
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            _sync(device)
            start = time.perf_counter()
            for _ in range(calls[name]):
                fns[name]()
            _sync(device)
            samples[name].append((time.perf_counter() - start) / calls[name])
    medians = {name: statistics.median(v) for name, v in samples.items()}
    if _progress is not None:
        _progress[1] += 1
        timed = ", ".join(f"{name} {t * 1e6:,.1f} us" for name, t in medians.items()).removeprefix("fn ")
        print(f"bench {_progress[0]}: timing {_progress[1]} done ({timed})", file=sys.stderr, flush=True)
    return medians


def median_time(fn: Callable[[], object], device: torch.device = torch.device("cpu"), **kwargs) -> float:
    """Median seconds per call of one function (see interleaved_medians)."""
    return interleaved_medians({"fn": fn}, device, **kwargs)["fn"]


@dataclasses.dataclass(frozen=True)
class Floor:
    """The least time a case can take: `autograd` (dispatch and the autograd engine: a trivial
    differentiable op on the same tensors), `dispatch` (one trivial op, for forward-only cases) or
    `bytes` (the time of a copy moving the bytes the op must read and write: `copy_step`)."""
    seconds: float
    basis: str


def copy_step(nbytes: int, device: torch.device = torch.device("cpu")) -> Callable[[], object]:
    """A copy_ that moves `nbytes` (reads half, writes half). Timed beside a case's variants, it is
    the case's bytes floor at the bandwidth of the memory its bytes live in: one bandwidth from a
    128 MiB copy (DRAM) put the floor of inputs that fit the cache above the kernels that ran on them
    (interpolation of 64x3x32x32: 51 us against a 117 us floor on the Zen 2)."""
    src = torch.empty(max(1, nbytes // 8), device=device).uniform_()
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


def bytes_floor_seconds(nbytes: int, device: torch.device = torch.device("cpu")) -> float:
    """Median seconds of copy_step(nbytes) alone (the pytest-benchmark suites' extra_info)."""
    return median_time(copy_step(nbytes, device), device, rounds=5, round_time=0.02)


def binding_floor(*floors: Floor) -> Floor:
    """The floor that binds: the largest. A large input's autograd floor can lie above its bytes
    floor (on the 2-core Zen 2, `f.sum().backward()` on 57600 logits took 78 us), and a case runs
    no faster than either."""
    return max(floors, key=lambda f: f.seconds)


@dataclasses.dataclass
class Row:
    suite: str
    case: str
    variant: str  # "eager", "compiled", or a ganfast backend
    seconds: float
    vs_eager: float | None = None
    vs_compiled: float | None = None
    floor: Floor | None = None  # the limit for this case (suites that measure one)
    auto: bool = False  # the variant that `auto` runs for this case's input (suites that mark one)


def mark_auto(rows: list[Row], case: str, family: str, t: torch.Tensor, names: dict[str, str] | None = None) -> None:
    """Mark the row of `case` whose variant is what `auto` picks for the input `t` of `family` (the
    reference backend is the "eager" row). names: backend -> variant name, where a suite names its
    variants otherwise (e.g. "ganfast-cpu")."""
    from .. import backends

    pick = backends.resolve(t.device, family, t.dtype, t.numel())
    variant = "eager" if pick == "reference" else (names or {}).get(pick, pick)
    for r in rows:
        if r.case == case and r.variant == variant:
            r.auto = True


# auto's pick counts as losing where it takes longer than the fastest choice by more than this: a
# repeated run on a quiet machine moves medians by a few percent
AUTO_TOLERANCE = 1.05


def _is_choice(variant: str) -> bool:
    """A variant that `auto` could run: the reference ("eager") or a backend (named as is, or "ganfast-<name>")."""
    return variant == "eager" or variant.removeprefix("ganfast-") in ("cpu", "cuda", "triton")


def auto_misses(rows: list[Row], tolerance: float = AUTO_TOLERANCE) -> list[str]:
    """For each case with a marked auto row: a line when another choice `auto` could make (the
    reference, or another backend; not torch.compile, which is not a backend) was faster than its
    pick by more than `tolerance`. This is the check of `backends.SIZE_LIMITS`."""
    by_case: dict[str, list[Row]] = {}
    for r in rows:
        by_case.setdefault(r.case, []).append(r)
    lines = []
    for case, case_rows in by_case.items():
        picked = [r for r in case_rows if r.auto]
        if not picked:
            continue
        best = min((r for r in case_rows if _is_choice(r.variant)), key=lambda r: r.seconds)
        if picked[0].seconds > tolerance * best.seconds:
            lines.append(f"{case}: auto runs {picked[0].variant}, {picked[0].seconds / best.seconds:.2f}x the time "
                         f"of {best.variant}")
    return lines



def add_ratios(rows: list[Row]) -> list[Row]:
    """Fill vs_eager / vs_compiled of each row from the eager and compiled rows of its case."""
    by_case: dict[str, dict[str, float]] = {}
    for r in rows:
        by_case.setdefault(r.case, {})[r.variant] = r.seconds
    for r in rows:
        base = by_case[r.case]
        r.vs_eager = base["eager"] / r.seconds if "eager" in base else None
        r.vs_compiled = base["compiled"] / r.seconds if "compiled" in base else None
    return rows


def format_rows(rows: list[Row]) -> str:
    vw = max([16] + [len(r.variant) for r in rows])
    cw = max([34] + [len(r.case) for r in rows])
    head = (f"{'suite':<8} {'case':<{cw}} {'variant':<{vw}} {'median':>12} {'vs eager':>9} {'vs compiled':>12}"
            f" {'floor':>22}")
    lines = [head, "-" * len(head)]

    def fmt(seconds):
        us = seconds * 1e6
        return f"{us:,.1f} us" if us < 1e5 else f"{us / 1e6:,.3f} s"

    for r in rows:
        eager = f"{r.vs_eager:.2f}x" if r.vs_eager else ""
        comp = f"{r.vs_compiled:.2f}x" if r.vs_compiled else ""
        floor = f"{fmt(r.floor.seconds)} ({r.floor.basis})" if r.floor else ""
        lines.append(f"{r.suite:<8} {r.case:<{cw}} {r.variant:<{vw}} {fmt(r.seconds):>12} {eager:>9} {comp:>12}"
                     f" {floor:>22}" + ("  <- auto" if r.auto else ""))
    if any(r.auto for r in rows):
        misses = auto_misses(rows)
        checked = len({r.case for r in rows if r.auto})
        lines.append(f"auto check ({checked} cases; '<- auto' marks what auto runs): " + (
            f"auto's pick is the fastest choice (within {AUTO_TOLERANCE - 1:.0%}) in every case" if not misses else
            f"{len(misses)} case(s) where another choice was faster; a size limit "
            f"(ganfast.backends.SIZE_LIMITS) belongs there if a rerun on a quiet machine confirms it:\n  "
            + "\n  ".join(misses)))
    return "\n".join(lines)


def run(suites: list[str] | None = None, quick: bool = False, device: str | None = None,
        progress: bool = False) -> list[Row]:
    """Run the suites (default all) and print each one's table; progress: a line on stderr per case."""
    global _progress
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    for name in suites or ():
        if name not in SUITES:
            raise ValueError(f"unknown benchmark suite {name!r}; choose from {', '.join(SUITES)}")
    rows: list[Row] = []
    for name in suites or SUITES:
        module = importlib.import_module(f"{__name__}.{name}")
        _progress = [name, 0] if progress else None
        if progress:
            print(f"bench {name}: started (a line per timing)", file=sys.stderr, flush=True)
        try:
            suite_rows = add_ratios(module.run(quick=quick, device=dev))
        finally:
            _progress = None
        if suite_rows:
            print(format_rows(suite_rows), flush=True)
        rows.extend(suite_rows)
    return rows
