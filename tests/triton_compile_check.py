"""Compile every Triton kernel of ganfast for real GPU targets (sm_80, sm_90) on a machine without a GPU.

The interpreter (TRITON_INTERPRET=1, what the other tests use) accepts code that the compiler
rejects, so this runs the real compiler: a stand-in Triton driver reports a CUDA target, and
`JITFunction.run` compiles (warmup) instead of launching. ganfast's own launchers are called with
CPU tensors, so every kernel is compiled exactly as the launchers specialize it (dtypes, constexpr
flags, block sizes, and Triton's own specialization of integer arguments: 1, a multiple of 16, other).
The Triton wheel's ptxas turns the PTX into a cubin, so both the Triton front end and ptxas are checked.

Run it in a process where TRITON_INTERPRET is unset (tests/test_triton_compile.py does that):
    python -m tests.triton_compile_check [--arch 80 90] [-k CASE_SUBSTRING] [--jobs N] [--json out.json]
It prints each failure (case, kernel, specialization, compiler message) and exits 1 if any case
failed or a jit function was never compiled. Compiled kernels land in Triton's cache (~/.triton),
so a second run recompiles only what changed.

To cover a new kernel: add a Case to the list of its family below (one per flag combination its
launcher can produce). A @triton.jit function that no case compiles fails the check by name.
"""
from __future__ import annotations

import argparse
import ast
import concurrent.futures
import importlib
import json
import multiprocessing
import os
import pkgutil
import sys
import textwrap
import time
from dataclasses import dataclass
from typing import Callable

import torch

ARCHS = (80, 90)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
KERNEL_PACKAGE = "ganfast.kernels.triton"


@dataclass(frozen=True)
class Case:
    """One way a launcher can call its kernels: `run(dtype, shape)` calls the launcher on CPU tensors
    for each of `shapes` (the sizes that change a kernel's specialization)."""
    family: str
    flags: str  # the launcher arguments that pick this specialization, e.g. "kind=3 generator=True"
    run: Callable[[torch.dtype, object], object]
    shapes: tuple
    dtypes: tuple = DTYPES

    @property
    def name(self) -> str:
        return f"{self.family}[{self.flags}]"


def _rand(*shape, dtype, offset=False):
    """Random CPU tensor; with offset, a contiguous view whose data pointer is not 16-byte aligned."""
    if not offset:
        return torch.randn(*shape).to(dtype)
    n = 1
    for s in shape:
        n *= s
    return torch.randn(n + 1).to(dtype)[1:].view(*shape)


# Triton specializes an integer argument by value: 1 becomes a constant, a multiple of 16 gets an
# alignment hint, any other value neither. The shapes below reach each of these for every size argument.

def _loss_cases() -> list[Case]:
    from ganfast.kernels.triton import losses as k

    def run(kind, generator, with_real):
        def call(dtype, sizes):
            nr, nf = sizes
            real = _rand(nr, dtype=dtype, offset=True) if with_real else None
            k.gan_loss_fused(real, _rand(nf, dtype=dtype), kind, generator)
        return call

    cases = []
    for (kind, generator), (phi, _psi, mode) in sorted(k.LOSS_SPECS.items()):
        # (real size, fake size); rpgan pairs them, so they are equal there.
        sizes = ((1, 1), (48, 48)) if mode == k.PAIRED else ((1, 1), (7, 48), (48, 7))
        # Losses whose real term is absent also take real=None (a G step without real logits).
        for with_real in (True, False) if phi == k.NONE else (True,):
            cases.append(Case("gan_loss_fused", f"kind={kind} generator={generator} real={'tensor' if with_real else 'None'}",
                              run(kind, generator, with_real), sizes))
    return cases


def _penalty_cases() -> list[Case]:
    from ganfast.kernels.triton import penalties as k

    def gp(kind):
        def call(dtype, shape):
            k.grad_penalty_fused(_rand(*shape, dtype=dtype), kind, 10.0, 1.0, 0.5)
        return call

    def interp(perturb):
        def call(dtype, shape):
            k.gp_interpolate(_rand(*shape, dtype=dtype), _rand(*shape, dtype=dtype, offset=True),
                             torch.rand(shape[0]), perturb, 0.5)
        return call

    # g of shape (rows, ...): the kernels' BLOCK is the next power of two of the columns (1 .. k.BLOCK)
    # and of the rows (the mean kernel).
    gp_shapes = ((1, 1), (7, 3, 5), (48, 2 * k.BLOCK + 3))
    interp_shapes = ((2,), (7, 3, 5), (48, 16))
    return ([Case("grad_penalty_fused", f"kind={kind}", gp(kind), gp_shapes) for kind in (0, 1, 2)]
            + [Case("gp_interpolate", f"perturb={p} (DRAGAN {'on' if p else 'off'})", interp(p), interp_shapes)
               for p in (False, True)])


def _spectral_norm_cases() -> list[Case]:
    from ganfast.kernels.triton import spectral_norm as k

    # (weight shape, dim): inner size 1 (Linear, dim 0), a multiple of 16, other; outer > 1 (dim 1).
    layouts = (((1, 1), 0), ((7, 5), 0), ((6, 4, 4, 4), 0), ((3, 5, 3, 3), 1))

    def forward(n_iter):
        def call(dtype, layout):
            shape, dim = layout
            w, h = _rand(*shape, dtype=dtype), shape[dim]
            k.spectral_norm_fused(w, torch.randn(h), torch.randn(w.numel() // h), dim, n_iter, 1e-12)
        return call

    def backward(dtype, layout):
        shape, dim = layout
        w, h = _rand(*shape, dtype=dtype), shape[dim]
        k.spectral_norm_backward(_rand(*shape, dtype=dtype), w, torch.randn(h), torch.randn(w.numel() // h),
                                 torch.tensor(1.5), dim, 1e-12)

    def multi_forward(n_iter):
        def call(dtype, layouts):
            ws = [_rand(*shape, dtype=dtype) for shape, _ in layouts]
            hs = [shape[dim] for shape, dim in layouts]
            k.spectral_norm_multi(ws, [torch.randn(h) for h in hs], [torch.randn(w.numel() // h) for w, h in zip(ws, hs)],
                                  [dim for _, dim in layouts], n_iter, 1e-12)
        return call

    def multi_backward(dtype, layouts):
        ws = [_rand(*shape, dtype=dtype) for shape, _ in layouts]
        hs = [shape[dim] for shape, dim in layouts]
        k.spectral_norm_backward_multi([_rand(*w.shape, dtype=dtype) for w in ws], ws, [torch.randn(h) for h in hs],
                                       [torch.randn(w.numel() // h) for w, h in zip(ws, hs)],
                                       [torch.tensor(1.5) for _ in ws], [dim for _, dim in layouts], 1e-12)

    # multi-tensor: the layer sizes come from the table, so one mixed model (and one layer) covers them
    models = ((((1, 1), 0),), layouts)
    return ([Case("spectral_norm_fused", f"n_iter={n}", forward(n), layouts) for n in (0, 1, 2)]
            + [Case("spectral_norm_backward", "", backward, layouts)]
            + [Case("spectral_norm_multi", f"n_iter={n}", multi_forward(n), models) for n in (0, 1, 2)]
            + [Case("spectral_norm_backward_multi", "", multi_backward, models)])


def _augment_cases() -> list[Case]:
    from ganfast.kernels.triton import augment as k

    def call(backward: bool, color: bool):
        def run(dtype, shape):
            b, _, h, w = shape
            geometry = torch.zeros(b, 6, dtype=torch.int32)
            colors = torch.rand(b, 3) if color else None
            (k.diffaugment_backward if backward else k.diffaugment)(_rand(*shape, dtype=dtype), colors, geometry)
        return run

    # C = 1 / 3 (a channel loop of one or several), H·W below and above one block, widths 1, 16k, other
    shapes = ((1, 1, 1, 1), (3, 3, 5, 7), (2, 3, 32, 32), (2, 1, 48, 40))
    return [Case("diffaugment_backward" if bw else "diffaugment", f"color={c}", call(bw, c), shapes)
            for bw in (False, True) for c in (True, False)]


def cases() -> list[Case]:
    return _loss_cases() + _penalty_cases() + _spectral_norm_cases() + _augment_cases()


def case_ids() -> list[str]:
    return [_case_id(c, dt) for c in cases() for dt in c.dtypes]


# ---- the stand-in driver and the compile-instead-of-launch hook ----

class KernelCompileError(Exception):
    def __init__(self, kernel: str, specialization: str, message: str):
        super().__init__(f"{kernel}: {message}")
        self.kernel, self.specialization, self.message = kernel, specialization, message


def _install_compile_only_driver():
    """Make Triton believe a CUDA GPU is present and compile instead of launching; returns a setter of
    the target arch and the set of names of the jit kernels compiled so far."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("TRITON_INTERPRET is set: @triton.jit gives interpreted functions, nothing would compile")

    class CompileOnlyCudaDriver:
        """The parts of a Triton driver that compiling needs. The arch doubles as the device id, so
        each JITFunction keeps one kernel cache per target."""
        arch = ARCHS[0]

        def get_current_target(self):
            return GPUTarget("cuda", self.arch, 32)

        def get_current_device(self):
            return self.arch

        def get_current_stream(self, device=None):
            return 0

        def get_active_torch_device(self):
            return torch.device("cpu")

    stand_in = CompileOnlyCudaDriver()
    driver.set_active(stand_in)
    compiled: set[str] = set()
    compile_for_real = JITFunction.run

    def compile_only(self, *args, grid, warmup, **kwargs):
        name = f"{self.fn.__module__}.{self.fn.__name__}"
        try:
            kernel = compile_for_real(self, *args, grid=grid, warmup=True, **kwargs)
            # Force the whole pipeline (ptx and cubin) even if this Triton compiles lazily.
            assert kernel.asm.get("cubin"), "no cubin produced"
        except Exception as e:  # any compiler error, named with the kernel and its specialization
            bound = dict(zip(self.arg_names, args)) | kwargs
            spec = ", ".join(f"{n}={_describe(v)}" for n, v in bound.items())
            raise KernelCompileError(name, f"sm_{stand_in.arch}: {spec}", f"{type(e).__name__}: {e}") from None
        compiled.add(name)
        return kernel

    JITFunction.run = compile_only

    def set_arch(arch: int):
        stand_in.arch = arch

    assert triton.runtime.driver.active is stand_in
    return set_arch, compiled


def _describe(v) -> str:
    if isinstance(v, torch.Tensor):
        return f"*{str(v.dtype).removeprefix('torch.')}" + ("" if v.data_ptr() % 16 == 0 else "(unaligned)")
    return repr(v)


def jit_functions() -> dict[str, object]:
    """Every @triton.jit function defined in the kernel package, by qualified name."""
    from triton.runtime.jit import JITFunction

    pkg = importlib.import_module(KERNEL_PACKAGE)
    found = {}
    for info in pkgutil.iter_modules(pkg.__path__):
        mod = importlib.import_module(f"{KERNEL_PACKAGE}.{info.name}")
        for obj in vars(mod).values():
            if isinstance(obj, JITFunction) and obj.fn.__module__ == mod.__name__:
                found[f"{mod.__name__}.{obj.fn.__name__}"] = obj
    return found


def _callees(fn, known: dict[str, object]) -> set[str]:
    """jit functions called by name in fn's source (compiled inline with it)."""
    tree = ast.parse(textwrap.dedent(fn.src))
    names = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    return {q for q, f in known.items() if f.fn.__name__ in names and f.fn.__module__ == fn.fn.__module__}


_worker_state = None


def _compile_case(item) -> tuple[str, list[dict], set[str]]:
    """Worker: run one (case, dtype, arch) and return (case id, failures, jit kernels compiled so far)."""
    global _worker_state
    if _worker_state is None:
        _worker_state = (cases(), *_install_compile_only_driver())
    all_cases, set_arch, compiled = _worker_state
    case_index, dtype, arch = item
    case = all_cases[case_index]
    set_arch(arch)
    failures = []
    for shape in case.shapes:
        try:
            case.run(dtype, shape)
        except KernelCompileError as e:
            failures.append({"kernel": e.kernel, "specialization": e.specialization, "message": e.message[-4000:]})
        except Exception as e:
            failures.append({"kernel": "(launcher)", "specialization": f"sm_{arch}, shape {shape}",
                             "message": f"the launcher raised {type(e).__name__}: {e}"})
    return _case_id(case, dtype), failures, set(compiled)


def _case_id(case: Case, dtype: torch.dtype) -> str:
    return f"{case.name} {str(dtype).removeprefix('torch.')}"


def run(archs=ARCHS, jobs: int = 1, only: str | None = None) -> dict:
    """Compile every case (or those whose id contains `only`) for every arch in `jobs` processes;
    returns {"ran", "failures", "compiled", "never_compiled", "archs", "seconds"}."""
    start = time.perf_counter()
    items = [(i, dtype, arch) for i, case in enumerate(cases()) for dtype in case.dtypes for arch in archs
             if only is None or only in _case_id(case, dtype)]
    if jobs > 1:
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch threads
        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
            results = list(pool.map(_compile_case, items))
    else:
        results = [_compile_case(item) for item in items]
    failures: dict[str, list[dict]] = {}
    compiled: set[str] = set()
    for case_id, fails, done in results:
        if fails:
            failures.setdefault(case_id, []).extend(fails)
        compiled |= done
    known = jit_functions()
    covered, todo = set(), [q for q in compiled if q in known]
    while todo:
        q = todo.pop()
        if q not in covered:
            covered.add(q)
            todo.extend(_callees(known[q], known))
    return {"ran": sorted({r[0] for r in results}), "failures": failures, "compiled": sorted(compiled),
            "never_compiled": sorted(set(known) - covered), "archs": list(archs),
            "seconds": round(time.perf_counter() - start, 1)}


def format_failure(case_id: str, f: dict) -> str:
    return f"{case_id}: kernel {f['kernel']} ({f['specialization']})\n{textwrap.indent(f['message'], '    ')}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, nargs="+", default=list(ARCHS))
    p.add_argument("--jobs", type=int, default=min(os.cpu_count() or 1, 8), help="compiler processes")
    p.add_argument("-k", dest="only", help="only the cases whose id contains this string")
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)
    import triton

    result = run(tuple(args.arch), args.jobs, args.only)
    result["triton"] = triton.__version__
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    for case_id, fails in result["failures"].items():
        for f in fails:
            print(format_failure(case_id, f), file=sys.stderr)
    for q in result["never_compiled"]:
        print(f"never compiled (add a Case that reaches it): {q}", file=sys.stderr)
    n_fail = sum(len(v) for v in result["failures"].values())
    print(f"triton {triton.__version__}: {len(result['ran'])} cases x sm_{'/sm_'.join(map(str, args.arch))}, "
          f"{len(result['compiled'])} kernels compiled, {n_fail} failures, "
          f"{len(result['never_compiled'])} jit functions never compiled, {result['seconds']} s")
    return 1 if n_fail or result["never_compiled"] else 0


if __name__ == "__main__":
    sys.exit(main())
