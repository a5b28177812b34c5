"""The `ganfast` command (also `python -m ganfast`)."""
from __future__ import annotations

import argparse
import sys


def _cmd_info(args) -> int:
    import platform

    import torch

    import ganfast
    from ganfast import backends

    try:
        import triton
        triton_version = triton.__version__
    except Exception as e:  # noqa: BLE001 - any failure means "not usable"
        triton_version = f"not available ({type(e).__name__})"
    print(f"ganfast {ganfast.__version__}")
    print(f"python  {platform.python_version()}")
    print(f"torch   {torch.__version__} (CUDA {torch.version.cuda or 'none'}; "
          f"GPU {'available: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'not available'})")
    print(f"triton  {triton_version} (TRITON_INTERPRET={'1' if backends.triton_interpret() else '0'})")
    print(f"backend selection: {backends.get_backend()}")
    print("\nbackends:")
    for name in backends.BACKENDS:
        st = backends.status(name)
        print(f"  {name:<10} {'available' if st.available else 'not available':<14} {st.reason}")
    print("\nauto picks:")
    for device_type in ("cpu", "cuda"):
        print(f"  {device_type} tensors -> {backends._resolve('auto', device_type)}")
    return 0


def _cmd_validate(args) -> int:
    from ganfast import validate

    results = validate.run_validation(seed=args.seed, families=args.family or None, backend_names=args.backend or None)
    if not results:
        print("no kernel backend available to validate (only the reference runs here); see `ganfast info`")
        return 0
    head = f"{'op':<26} {'backend':<8} {'dtype':<6} {'max rel err':>12} {'tolerance':>10}  result"
    print(head)
    print("-" * len(head))
    for r in results:
        verdict = "pass" if r.passed else f"FAIL ({r.detail})"
        print(f"{r.op:<26} {r.backend:<8} {r.dtype:<6} {r.max_rel_error:>12.3e} {r.tolerance:>10.1e}  {verdict}")
    failed = sum(not r.passed for r in results)
    print(f"\n{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


def _cmd_bench(args) -> int:
    from ganfast import bench

    bench.run(args.suite or None, quick=args.quick, device=args.device)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ganfast", description="Fast, stable GAN training.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="versions, backends and what auto picks")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("validate", help="check every backend's ops against the reference")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--family", action="append", help="only this op family (repeatable)")
    p.add_argument("--backend", action="append", help="only this backend (repeatable)")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("bench", help="time ganfast against PyTorch eager and torch.compile")
    p.add_argument("suite", nargs="*", help="suites to run (default: all)")
    p.add_argument("--quick", action="store_true", help="fewer cases")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
