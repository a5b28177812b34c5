"""The plain-PyTorch GAN step on the CPU with glibc's default malloc against the same step with the
settings `Trainer` applies (ganfast.train.cpu_malloc.keep_freed_memory): median step time and minor
page faults a step. malloc's settings are per process, so each variant runs in its own child
processes, in alternation (this CPU is shared); the step is `ganfast bench step`'s careful plain loop.

    python -m ganfast.bench.malloc [--quick] [--rounds N] [--steps N]

`ganfast bench step` runs its plain loop in the trainer's process, with the trainer's malloc
settings: its ratios are those of the code, and this benchmark gives what the settings add.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

VARIANTS = ("default", "kept")


def _child(variant: str, case: str, steps: int) -> dict:
    import resource

    import torch

    from . import step as S
    from ..train.cpu_malloc import keep_freed_memory

    if variant == "kept" and not keep_freed_memory():
        raise SystemExit("the malloc settings could not be applied here (see ganfast.train.cpu_malloc)")
    torch.manual_seed(0)
    for name, factory, latent, shape in S.cases(case == "quick"):
        if name.startswith("DCGAN"):
            break
    else:
        raise SystemExit("ganfast.models is not there: no DCGAN case")
    G, D = factory()
    g_opt, d_opt = S._optims(G, D)
    real = torch.rand(shape) * 2 - 1
    for _ in range(2):
        S.plain_step(G, D, g_opt, d_opt, real, latent)
    times = []
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        t0 = time.perf_counter()
        S.plain_step(G, D, g_opt, d_opt, real, latent)
        times.append(time.perf_counter() - t0)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / steps
    return {"case": name, "median_s": statistics.median(times), "faults_per_step": faults}


def run(quick: bool = False, rounds: int = 3, steps: int = 8) -> dict[str, list[dict]]:
    """{variant: [one child's result per round]}, the variants' children in alternation."""
    from ..train.cpu_malloc import ENV_SWITCH

    # glibc's defaults in the children: without this process's malloc variables and switch
    env = {k: v for k, v in os.environ.items() if k != ENV_SWITCH and not (k.startswith("MALLOC_") and k.endswith("_"))}
    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for _ in range(rounds):
        for variant in VARIANTS:
            out = subprocess.run([sys.executable, "-m", "ganfast.bench.malloc", "--child", variant, "--steps",
                                  str(steps)] + (["--quick"] if quick else []), env=env, capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"the {variant!r} child failed: {out.stderr.strip()[-2000:]}")
            results[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
    return results


def report(results: dict[str, list[dict]]) -> str:
    case = results[VARIANTS[0]][0]["case"]
    med = {v: statistics.median(r["median_s"] for r in rs) for v, rs in results.items()}
    lines = [f"plain-PyTorch step, {case}, CPU ({len(results['default'])} child processes a variant):"]
    for v, rs in results.items():
        times = ", ".join(f"{r['median_s'] * 1e3:.1f}" for r in rs)
        faults = ", ".join(f"{r['faults_per_step']:.0f}" for r in rs)
        lines.append(f"  {v:8s} median {med[v] * 1e3:7.1f} ms (per process: {times}); minor faults a step: {faults}")
    lines.append(f"  kept / default: the step {med['default'] / med['kept']:.2f}x as fast with the trainer's settings")
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
    print(report(run(args.quick, args.rounds, args.steps)), flush=True)


if __name__ == "__main__":
    main()
