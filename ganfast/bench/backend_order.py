"""The data behind `auto`'s order on a GPU: cuda against triton against the plain-PyTorch reference
("reference", what `auto` falls back to) for every op family, and single-layer against multi-tensor
spectral norm, timed in one run (scripts/gpu_check.sh runs this on a lent GPU).

    python -m ganfast.bench.backend_order --out DIR [--quick]

For each case it prints and writes (DIR/backend_order.txt, .json) the median time per call of each
variant (interleaved, ganfast.bench.interleaved_medians), the GPU kernels per call that the torch
profiler saw (the measured counterpart of `ganfast bench launches`), and per family which backend
won at each size, so that ganfast.backends.AUTO_ORDER / SIZE_LIMITS can be set from one run. A
case that fails is reported with its error and the run goes on.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import traceback

import torch

from . import interleaved_medians

BACKENDS = ("cuda", "triton")


def _available() -> list[str]:
    """The GPU kernel backends here, and "reference": a kernel that loses to it at some size must not
    be what `auto` picks there."""
    from .. import backends

    return [b for b in BACKENDS if backends.status(b).available and "cuda" in backends.status(b).device_types] + [
        "reference"]


def gpu_kernels(fn) -> int | None:
    """GPU activities (kernels, memcpy, memset) of one call, seen by the torch profiler."""
    try:
        from torch.profiler import ProfilerActivity, profile

        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    except Exception:  # a profiler without CUPTI: the timings still count
        return None


def _loss_cases(quick):
    from ..reference import losses as reference
    from ..ops import losses as ops

    # the sizes of `ganfast bench losses`; ns (softplus: transcendental) and hinge (relu: two compares)
    for kind in ("ns",) if quick else ("ns", "hinge"):
        for b in (64, 4096) if quick else (64, 4096, 57600, 1_048_576):
            real = torch.randn(b, 1, device="cuda", requires_grad=True)
            fake = torch.randn(b, 1, device="cuda", requires_grad=True)

            def make(backend, real=real, fake=fake, kind=kind):
                def step():
                    if backend == "reference":
                        loss = reference.d_loss(real, fake, kind)
                    else:
                        loss, _ = ops.gan_loss(real, fake, ops.KIND_IDS[kind], False, backend)
                    loss.backward()
                return step
            yield "losses", f"d_loss {kind} fwd+bwd B={b}", b, make


def _penalty_cases(quick):
    from ..ops import penalties as ops
    from ..reference import penalties as reference

    for shape in ((64, 3, 32, 32),) if quick else ((64, 2), (64, 3, 32, 32), (64, 3, 64, 64), (32, 3, 128, 128)):
        g = torch.randn(shape, device="cuda", requires_grad=True)
        n = g.numel()

        def make(backend, g=g):
            def step():
                if backend == "reference":
                    penalty, _ = reference.penalty_tail(g, ops.SQUARED, 10.0, 0.0, 1.0)
                else:
                    penalty, _ = ops.grad_penalty(g, ops.SQUARED, 10.0, 0.0, 1.0, backend)
                penalty.backward()
            return step
        yield "penalties", f"penalty tail fwd+bwd {tuple(shape)}", n, make


# the normalized layers of a DCGAN D at 32x32, width 64, and of a ResNet-ish D at 128x128
_MODELS = {"DCGAN-32 w64": ((64, 3, 4, 4), (128, 64, 4, 4), (256, 128, 4, 4), (1, 256, 4, 4)),
           "ResNet-128 w64": ((64, 3, 3, 3), (64, 64, 3, 3), (128, 64, 3, 3), (128, 128, 3, 3), (256, 128, 3, 3),
                              (256, 256, 3, 3), (512, 256, 3, 3), (512, 512, 3, 3), (1024, 512, 3, 3), (1, 1024))}


def _layers(shapes):
    from ..reference.spectral_norm import split_dims

    ws, us, vs = [], [], []
    for s in shapes:
        outer, h, inner = split_dims(s, 0)
        ws.append(torch.randn(s, device="cuda", requires_grad=True))
        us.append(torch.nn.functional.normalize(torch.randn(h, device="cuda"), dim=0))
        vs.append(torch.nn.functional.normalize(torch.randn(outer * inner, device="cuda"), dim=0))
    return ws, us, vs


def _sn_cases(quick):
    from ..ops import spectral_norm as ops
    from ..reference import spectral_norm as reference

    for name, shapes in list(_MODELS.items())[:1 if quick else None]:
        ws, us, vs = _layers(shapes)
        grads = [torch.randn_like(w) for w in ws]
        n = sum(w.numel() for w in ws)

        def single(backend, ws=ws, us=us, vs=vs, grads=grads):
            def step():
                if backend == "reference":
                    outs = [reference.spectral_norm(w, u, v, 0, 1, 1e-12)[0] for w, u, v in zip(ws, us, vs)]
                else:
                    outs = [ops.spectral_norm(w, u, v, 0, 1, 1e-12, backend)[0] for w, u, v in zip(ws, us, vs)]
                torch.autograd.backward(outs, grads)
            return step

        def multi(backend, ws=ws, us=us, vs=vs, grads=grads):
            if backend == "reference":  # no multi-tensor reference: the single-layer case has its time
                return None

            def step():
                outs = ops.spectral_norm_multi(ws, us, vs, [0] * len(ws), 1, 1e-12, backend)[0]
                torch.autograd.backward(outs, grads)
            return step
        yield "spectral_norm", f"SN fwd+bwd, every layer of {name}, one call per layer", n, single
        yield "spectral_norm", f"SN fwd+bwd, every layer of {name}, multi-tensor", n, multi


def _augment_cases(quick):
    from .. import augment
    from . import augment as bench_augment

    for shape in bench_augment.SHAPES[:1] if quick else bench_augment.SHAPES:
        x, up = bench_augment.inputs(shape, torch.device("cuda"))
        params = bench_augment.draw(x, torch.Generator(device="cuda").manual_seed(0))

        def make(backend, x=x, up=up, params=params):
            def step():
                x.grad = None
                augment.apply_params(x, *params, backend=backend).backward(up)
            return step
        yield ("augment", f"DiffAugment {bench_augment.POLICY} fwd+bwd B={x.shape[0]} {'x'.join(map(str, shape))}",
               x.numel(), make)


def run(quick: bool = False) -> list[dict]:
    """One record per case: family, case, numel, {backend: seconds}, {backend: GPU kernels}, winner, errors."""
    names = _available()
    rounds, round_time = (5, 0.02) if quick else (9, 0.05)
    records = []
    for cases in (_loss_cases, _penalty_cases, _sn_cases, _augment_cases):
        try:
            for family, case, numel, make in cases(quick):
                rec = {"family": family, "case": case, "numel": numel, "seconds": {}, "gpu_kernels": {}, "errors": {}}
                fns = {}
                for b in names:
                    try:
                        fn = make(b)
                        if fn is None:  # this variant has no such case
                            continue
                        fn()
                        fns[b] = fn
                        rec["gpu_kernels"][b] = gpu_kernels(fn)
                    except Exception as e:  # reported, not fatal
                        rec["errors"][b] = f"{type(e).__name__}: {e}"
                if fns:
                    rec["seconds"] = interleaved_medians(fns, torch.device("cuda"), rounds=rounds, round_time=round_time)
                    rec["winner"] = min(rec["seconds"], key=rec["seconds"].get)
                records.append(rec)
                print(format_record(rec), flush=True)
        except Exception as e:
            records.append({"family": cases.__name__, "case": "(setup)", "errors": {"setup": repr(e)},
                            "trace": traceback.format_exc()})
            print(f"{cases.__name__}: setup failed: {e!r}", flush=True)
    return records


def format_record(rec: dict) -> str:
    times = ", ".join(f"{b} {s * 1e6:,.1f} us ({rec['gpu_kernels'].get(b)} GPU ops)" for b, s in rec["seconds"].items())
    errors = "; ".join(f"{b}: {e}" for b, e in rec["errors"].items())
    win = f" -> {rec['winner']}" if rec.get("winner") else ""
    return f"{rec['family']:<14} {rec['case']:<55} {times}{win}" + (f"  [errors: {errors}]" if errors else "")


def summary(records: list[dict]) -> str:
    lines = ["", "winner per case (set ganfast.backends.AUTO_ORDER['cuda'] / SIZE_LIMITS from this):"]
    for rec in records:
        if rec.get("winner"):
            lines.append(f"  {rec['family']:<14} {rec['case']:<55} {rec['winner']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=".", help="folder for backend_order.txt and backend_order.json")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("backend_order: no CUDA device, nothing to time", file=sys.stderr)
        return 1
    names = _available()
    print(f"backend_order on {torch.cuda.get_device_name(0)}: backends {names}", flush=True)
    records = run(args.quick)
    text = "\n".join(format_record(r) for r in records if "seconds" in r) + summary(records)
    print(summary(records))
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "backend_order.txt").write_text(text + "\n")
    (out / "backend_order.json").write_text(json.dumps({"device": torch.cuda.get_device_name(0),
                                                        "torch": torch.__version__, "records": records}, indent=1))
    return 0 if records and all(not r["errors"] for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
