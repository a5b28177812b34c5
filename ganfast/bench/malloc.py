"""`ganfast bench malloc`: the plain-PyTorch GAN step on the CPU with glibc's default malloc ("eager")
against the same step with the settings `Trainer` applies to its process ("eager-kept-memory",
ganfast.train.cpu_malloc.keep_freed_memory): median step time, and minor page faults a step on a line
of its own. malloc's settings are per process, so each variant runs in child processes of its own, in
alternation (this CPU is shared); the step is `ganfast bench step`'s careful plain loop on the DCGAN-32
case. CPU only (glibc).

    ganfast bench malloc [--quick]
    python -m ganfast.bench.malloc [--quick] [--rounds N] [--steps N]   # more children or steps

`ganfast bench step` runs its plain loop in the trainer's process, with the trainer's malloc
settings: its ratios are those of the code, and this suite gives what the settings add.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from . import Row
from ..train.cpu_malloc import keep_freed_memory, reason_to_leave_alone, with_glibc_defaults

VARIANTS = ("default", "kept")
ROW_NAMES = {"default": "eager", "kept": "eager-kept-memory"}


def _child(variant: str, case: str, steps: int) -> dict:
    import resource

    from . import step as S

    if variant == "kept" and not keep_freed_memory():
        raise SystemExit("the malloc settings could not be applied here (see ganfast.train.cpu_malloc)")
    torch.manual_seed(0)
    for spec in S.cases(case == "quick"):
        if spec.name.startswith("DCGAN"):  # the first, unconditional DCGAN case
            break
    else:
        raise SystemExit("ganfast.models is not there: no DCGAN case")
    G, D = spec.models()
    g_opt, d_opt = S._optims(G, D)
    real, _ = spec.batch("cpu")
    for _ in range(2):
        S.plain_step(G, D, g_opt, d_opt, real, spec.latent)
    times = []
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        t0 = time.perf_counter()
        S.plain_step(G, D, g_opt, d_opt, real, spec.latent)
        times.append(time.perf_counter() - t0)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / steps
    return {"case": spec.name, "median_s": statistics.median(times), "faults_per_step": faults}


def run_children(quick: bool, rounds: int, steps: int) -> dict[str, list[dict]]:
    """{variant: [one child's result per round]}, the variants' children in alternation."""
    env = with_glibc_defaults(os.environ)
    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for _ in range(rounds):
        for variant in VARIANTS:
            out = subprocess.run([sys.executable, "-m", "ganfast.bench.malloc", "--child", variant, "--steps",
                                  str(steps)] + (["--quick"] if quick else []), env=env, capture_output=True, text=True)
            if out.returncode != 0:
                raise RuntimeError(f"bench malloc: the {ROW_NAMES[variant]!r} child failed: {out.stderr.strip()[-2000:]}")
            results[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
    return results


def run(quick: bool = False, device: torch.device = torch.device("cpu")) -> list[Row]:
    """The suite: a row per variant (median over the children of their median step), and the report
    with the faults printed."""
    reason = None if torch.device(device).type == "cpu" else f"the device is {torch.device(device).type}"
    reason = reason or reason_to_leave_alone(env=with_glibc_defaults(os.environ))
    if reason is not None:
        print(f"bench malloc: skipped ({reason})", flush=True)
        return []
    results = run_children(quick, rounds=2 if quick else 3, steps=4 if quick else 8)
    print(report(results), flush=True)
    case = results["default"][0]["case"]
    return [Row("malloc", case, ROW_NAMES[v], statistics.median(r["median_s"] for r in rs))
            for v, rs in results.items()]


def report(results: dict[str, list[dict]]) -> str:
    case = results[VARIANTS[0]][0]["case"]
    med = {v: statistics.median(r["median_s"] for r in rs) for v, rs in results.items()}
    lines = [f"plain-PyTorch step, {case}, CPU ({len(results['default'])} child processes a variant):"]
    for v, rs in results.items():
        times = ", ".join(f"{r['median_s'] * 1e3:.1f}" for r in rs)
        faults = ", ".join(f"{r['faults_per_step']:.0f}" for r in rs)
        lines.append(f"  {ROW_NAMES[v]:17s} median {med[v] * 1e3:7.1f} ms (per process: {times}); minor faults a step: "
                     f"{faults}")
    lines.append(f"  the step {med['default'] / med['kept']:.2f}x as fast with the trainer's malloc settings")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m ganfast.bench.malloc", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="DCGAN width 32, B = 32")
    ap.add_argument("--rounds", type=int, default=3, help="child processes per variant")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per child")
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.steps < 1:
        ap.error("--rounds and --steps must be at least 1")
    if args.child:
        print(json.dumps(_child(args.child, "quick" if args.quick else "full", args.steps)))
        return
    print(report(run_children(args.quick, args.rounds, args.steps)), flush=True)


if __name__ == "__main__":
    main()
