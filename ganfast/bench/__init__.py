"""`ganfast bench`: timings of ganfast against plain PyTorch and torch.compile, in the same run.

Every suite reports median times and ratios (speedup = baseline time / ganfast time); nothing here
asserts a timing. Suites are modules of this package with a `run(quick, device)` that returns rows.
"""
from __future__ import annotations

import dataclasses
import importlib
import statistics
import time
from typing import Callable

import torch

SUITES = ("losses", "sn", "gp", "step", "dist")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], device: torch.device = torch.device("cpu"), *, rounds: int = 7,
                round_time: float = 0.05, warmup: int = 3) -> float:
    """Median over `rounds` of the mean time of one call (seconds); calls per round are calibrated
    so that a round lasts about `round_time`."""
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    once = max(time.perf_counter() - start, 1e-7)
    calls = max(1, int(round_time / once))
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        _sync(device)
        samples.append((time.perf_counter() - start) / calls)
    return statistics.median(samples)


@dataclasses.dataclass
class Row:
    suite: str
    case: str
    variant: str  # "eager", "compiled", or a ganfast backend
    seconds: float
    vs_eager: float | None = None
    vs_compiled: float | None = None


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
    head = f"{'suite':<8} {'case':<{cw}} {'variant':<{vw}} {'median':>12} {'vs eager':>9} {'vs compiled':>12}"
    lines = [head, "-" * len(head)]
    for r in rows:
        us = r.seconds * 1e6
        t = f"{us:,.1f} us" if us < 1e5 else f"{us / 1e6:,.3f} s"
        eager = f"{r.vs_eager:.2f}x" if r.vs_eager else ""
        comp = f"{r.vs_compiled:.2f}x" if r.vs_compiled else ""
        lines.append(f"{r.suite:<8} {r.case:<{cw}} {r.variant:<{vw}} {t:>12} {eager:>9} {comp:>12}")
    return "\n".join(lines)


def run(suites: list[str] | None = None, quick: bool = False, device: str | None = None) -> list[Row]:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rows: list[Row] = []
    for name in suites or SUITES:
        if name not in SUITES:
            raise ValueError(f"unknown benchmark suite {name!r}; choose from {', '.join(SUITES)}")
        module = importlib.import_module(f"{__name__}.{name}")
        suite_rows = add_ratios(module.run(quick=quick, device=dev))
        print(format_rows(suite_rows), flush=True)
        rows.extend(suite_rows)
    return rows
