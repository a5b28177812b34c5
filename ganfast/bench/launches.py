"""`ganfast bench launches`: device launches per call of each op family and per `Trainer.step`, on the
`triton` and `cuda` paths, counted here without a GPU.

At GAN batch sizes a GPU step costs mostly launches (a few µs each), not arithmetic, so the count is
the figure to keep small. How each path is counted:

- triton: the calls run (under TRITON_INTERPRET=1 on a CPU) inside `LaunchCounter`, which counts
  every Triton kernel launch (`kernel[grid](...)`: KernelInterface.__getitem__, the one entry point
  of JITFunction and InterpretedFunction) and every aten op that reaches the dispatcher outside a
  launch, classified by who runs it (`Origin`). Each such aten op is at least one launch on a GPU,
  except the ops that only touch metadata or the allocator (`NO_LAUNCH`, `is_view`). ganfast's
  custom ops are entered (their Python implementations run under the counter) but not counted:
  what they run is.
- cuda: the launchers in csrc/cuda/*.cu make every kernel launch and device memset through
  GANFAST_LAUNCH / GANFAST_MEMSET (csrc/cuda/common.cuh; tests/test_cuda_launch_count.py fails on a
  raw `<<<` or cudaMemsetAsync). Built with -DGANFAST_COUNT_LAUNCHES those macros only count, so
  tests/cuda_launch_count.cu calls each launcher with the sizes of the rows below and prints the
  counts: no GPU needed, only nvcc. The bindings (*_binding.cpp) add no launch for contiguous
  inputs of the op's own dtype (they allocate with at::empty and pass pointers; see there).
"""
from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# aten ops that launch nothing on a GPU: allocation (the caching allocator hands out memory without
# a kernel), storage/metadata changes and autograd bookkeeping. Views (`OpOverload.is_view`: view,
# reshape-as-view, expand, t, select, slice, unbind, split...) are excluded by that flag.
NO_LAUNCH = frozenset({
    "aten::empty", "aten::empty_like", "aten::empty_strided", "aten::new_empty", "aten::new_empty_strided",
    "aten::set_", "aten::resize_", "aten::detach", "aten::detach_", "aten::lift_fresh", "aten::_reshape_alias",
    "aten::is_same_size", "aten::_has_compatible_shallow_copy_type", "aten::record_stream",
})
# .item() / .tolist() on a GPU tensor: a device-to-host copy that also waits for the device.
HOST_SYNC = frozenset({"aten::_local_scalar_dense"})


class Origin:
    """Who runs an aten op: ganfast's op code (launchers, op glue, the SN parametrization, the public
    loss/penalty functions), the trainer around them, or the user's model, optimizer and the autograd
    engine's backward of the model."""
    GANFAST = "ganfast ops"
    TRAINER = "trainer"
    MODEL = "model+optim+autograd"


_GANFAST = pathlib.Path(__file__).resolve().parents[1]
_TORCH = pathlib.Path(torch.__file__).resolve().parent
_OP_CODE = tuple(str(_GANFAST / p) for p in ("ops", "kernels", "nn", "losses.py", "penalties.py", "reference"))
_TRAINER_CODE = (str(_GANFAST / "train"),)
_MODEL_CODE = tuple(str(_TORCH / p) for p in ("nn/modules", "nn/functional.py", "optim", "autograd")) + (
    str(_GANFAST / "models.py"),)
_NEUTRAL = (str(_TORCH), str(pathlib.Path(__file__).resolve()), os.path.dirname(contextlib.__file__))


@functools.lru_cache(maxsize=4096)
def _classify_file(filename: str) -> str | None:
    """Origin of one frame's file, or None when the frame says nothing (torch internals, stdlib)."""
    path = os.path.abspath(filename)
    if path.startswith(_OP_CODE):
        return Origin.GANFAST
    if path.startswith(_TRAINER_CODE):
        return Origin.TRAINER
    if path.startswith(_MODEL_CODE):
        return Origin.MODEL
    if path.startswith(_NEUTRAL) or "/triton/" in path:
        return None
    if path.startswith(str(_GANFAST)):  # the rest of ganfast (bench, cli, ...): around the step
        return Origin.TRAINER
    return Origin.MODEL  # the user's own code: their model


def _origin() -> str:
    """The innermost frame that names an origin decides; no such frame (a C++ autograd node run
    from a backward() call site alone): the model's backward."""
    frame = sys._getframe(2)
    while frame is not None:
        origin = _classify_file(frame.f_code.co_filename)
        if origin is not None:
            return origin
        frame = frame.f_back
    return Origin.MODEL


@dataclasses.dataclass
class Counts:
    """Launches seen by one LaunchCounter: Triton kernels by name, aten ops by (origin, name), host syncs."""
    triton: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    aten: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    syncs: int = 0  # scalar reads by the host (on a CPU tensor, tolist() reads each element)

    def total(self, origin: str | None = None) -> int:
        """Launches of `origin` (Triton kernels count as ganfast's), or of everything."""
        kernels = sum(self.triton.values()) if origin in (None, Origin.GANFAST) else 0
        return kernels + sum(n for (o, _), n in self.aten.items() if origin is None or o == origin)

    def describe(self, origin: str | None = Origin.GANFAST) -> str:
        parts = [f"{k} x{n}" if n > 1 else k for k, n in sorted(self.triton.items())
                 if origin in (None, Origin.GANFAST)]
        parts += [f"{op} x{n}" if n > 1 else op for (o, op), n in sorted(self.aten.items())
                  if origin is None or o == origin]
        return ", ".join(parts)


class LaunchCounter(TorchDispatchMode):
    """Counts device launches while active (see the module docstring):

        with LaunchCounter() as c:
            ganfast.losses.d_loss(real, fake)
        c.counts.total()
    """

    def __init__(self):
        super().__init__()
        self.counts = Counts()
        self._in_kernel = 0
        self._depth = 0  # __torch_dispatch__ re-enters the mode: the hook goes at the outermost exit
        self._patched = None

    # --- Triton kernel launches ---------------------------------------------------------------
    def __enter__(self):
        self._depth += 1
        try:
            from triton.runtime.jit import KernelInterface
        except ImportError:
            KernelInterface = None
        if KernelInterface is not None and self._patched is None:
            original = KernelInterface.__getitem__
            counter = self

            def counted_getitem(kernel, grid):
                launch = original(kernel, grid)

                def run(*args, **kwargs):
                    name = getattr(getattr(kernel, "fn", None), "__name__", None) or type(kernel).__name__
                    counter.counts.triton[name] += 1
                    counter._in_kernel += 1  # the interpreter's own tensor copies are not launches
                    try:
                        return launch(*args, **kwargs)
                    finally:
                        counter._in_kernel -= 1
                return run

            KernelInterface.__getitem__ = counted_getitem
            self._patched = (KernelInterface, original)
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._depth -= 1
            if self._depth == 0 and self._patched is not None:
                cls, original = self._patched
                cls.__getitem__ = original
                self._patched = None

    # --- aten ops ------------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "ganfast":
            # Run the op's own kernel with this mode active, so its launches are seen (the mode is
            # off inside __torch_dispatch__, and calling func again would come back here).
            key = _device_key(args, kwargs)
            with self:
                return func._op_dk(key, *args, **kwargs)
        if not self._in_kernel:
            op = func._schema.name  # without the overload: aten::empty for aten::empty.memory_format
            if op in HOST_SYNC:
                self.counts.syncs += 1
            elif not func.is_view and op not in NO_LAUNCH:
                self.counts.aten[(_origin(), func.name())] += 1
        return func(*args, **kwargs)


def _device_key(args, kwargs) -> torch._C.DispatchKey:
    flat = [a for x in list(args) + list(kwargs.values()) for a in (x if isinstance(x, (list, tuple)) else [x])]
    device = next((t.device.type for t in flat if isinstance(t, torch.Tensor)), "cpu")
    return torch._C.DispatchKey.CUDA if device == "cuda" else torch._C.DispatchKey.CPU


def count(fn, *args, **kwargs) -> Counts:
    """Launches of one call fn(*args, **kwargs)."""
    with LaunchCounter() as c:
        fn(*args, **kwargs)
    return c.counts


# --- the cases -------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Target:
    family: str
    limit: int
    what: str


# Per training-mode call (issue 17).
TARGETS = {
    "loss": Target("loss", 1, "a loss"),
    "penalty": Target("penalty", 2, "a penalty tail"),
    "sn_fwd": Target("sn_fwd", 3, "SN forward of one layer, power iteration included"),
    "sn_bwd": Target("sn_bwd", 2, "SN backward of one layer"),
    "sn_multi": Target("sn_multi", 4, "multi-tensor SN forward, every layer of a D"),
    "sn_multi_bwd": Target("sn_multi_bwd", 4, "multi-tensor SN backward, every layer of a D"),
}


@dataclasses.dataclass
class LaunchRow:
    case: str
    target: Target | None
    triton: Counts | None  # None: the path cannot run here
    cuda: int | None
    note: str = ""


def _loss_cases(device):
    from ..ops import losses as ops

    real = torch.randn(64, 1, device=device)
    fake = torch.randn(64, 1, device=device)
    for kind in ("ns", "hinge", "rahinge"):
        yield (f"loss d {kind}", "loss", lambda k=kind: lambda: ops.gan_loss(real, fake, ops.KIND_IDS[k], False, "triton"),
               ("gan_loss", f"kind={kind} d"))
        yield (f"loss g {kind}", "loss",
               lambda k=kind: lambda: ops.gan_loss(real if k == "rahinge" else None, fake, ops.KIND_IDS[k], True, "triton"),
               ("gan_loss", f"kind={kind} g"))


def _penalty_cases(device):
    from ..ops import penalties as ops

    g = torch.randn(64, 3, 8, 8, device=device)
    for kind, name in ((ops.SQUARED, "r1/r2"), (ops.TWO_SIDED, "wgan-gp"), (ops.ONE_SIDED, "wgan-gp one-sided")):
        yield (f"penalty tail {name}", "penalty", lambda k=kind: lambda: ops.grad_penalty(g, k, 10.0, 1.0, 1.0, "triton"),
               ("grad_penalty", f"kind={kind}"))
    real, other = torch.randn(64, 3, 8, 8, device=device), torch.rand(64, 3, 8, 8, device=device)
    alpha = torch.rand(64, device=device)
    yield ("interpolation (wgan-gp)", None, lambda: lambda: ops.interpolate(real, other, alpha, False, 0.0, "triton"),
           ("gp_interpolate", "perturb=0"))
    yield ("interpolation (dragan)", None, lambda: lambda: ops.interpolate(real, other, alpha, True, 0.5, "triton"),
           ("gp_interpolate", "perturb=1"))


def _sn_layer(device, shape=(64, 32, 3, 3)):
    from ..reference.spectral_norm import split_dims

    w = torch.randn(shape, device=device, requires_grad=True)
    outer, h, inner = split_dims(w.shape, 0)
    u = torch.nn.functional.normalize(torch.randn(h, device=device), dim=0)
    v = torch.nn.functional.normalize(torch.randn(outer * inner, device=device), dim=0)
    return w, u, v


def _backward_of(forward, inputs):
    """A function that runs the backward of forward()'s outputs w.r.t. inputs (forward runs once,
    outside the count)."""
    outs = forward()
    outs = [outs] if isinstance(outs, torch.Tensor) else list(outs)
    grads = [torch.randn_like(o) for o in outs]
    return lambda: torch.autograd.grad(outs, inputs, grads, retain_graph=True)


def _sn_cases(device):
    from ..ops import spectral_norm as ops

    w, u, v = _sn_layer(device)
    train = lambda: ops.spectral_norm(w, u, v, 0, 1, 1e-12, "triton")  # noqa: E731
    yield "SN forward, training (1 iteration)", "sn_fwd", lambda: train, ("spectral_norm_forward", "n_iter=1")
    yield ("SN forward, eval", None, lambda: lambda: ops.spectral_norm(w, u, v, 0, 0, 1e-12, "triton"),
           ("spectral_norm_forward", "n_iter=0"))
    yield "SN backward", "sn_bwd", lambda: _backward_of(lambda: train()[0], [w]), ("spectral_norm_backward", "")
    layers = [_sn_layer(device, s) for s in _D_SHAPES]
    ws, us, vs = ([layer[i] for layer in layers] for i in range(3))
    dims = [0] * len(layers)
    multi = lambda: ops.spectral_norm_multi(ws, us, vs, dims, 1, 1e-12, "triton")  # noqa: E731
    yield (f"SN multi-tensor forward, {len(layers)} layers", "sn_multi", lambda: multi,
           ("spectral_norm_multi_forward", f"layers={len(layers)} n_iter=1"))
    yield (f"SN multi-tensor backward, {len(layers)} layers", "sn_multi_bwd",
           lambda: _backward_of(lambda: multi()[0], ws), ("spectral_norm_multi_backward", f"layers={len(layers)}"))


# The weights of a DCGAN discriminator at 32x32, width 32 (ganfast.models.DCGANDiscriminator).
_D_SHAPES = ((32, 3, 4, 4), (64, 32, 4, 4), (128, 64, 4, 4), (1, 128, 4, 4))


class _MultiTensorSN:
    """ganfast.nn as the trainer sees it, with sn_step(multi_tensor=True): what a step costs when every
    layer of D is normalized in one multi-tensor call per D-call group."""

    def __init__(self, module):
        self._module = module

    def sn_step(self, model):
        return self._module.sn_step(model, multi_tensor=True)

    def __getattr__(self, name):
        return getattr(self._module, name)


def _step_cases(device):
    from ..models import DCGANDiscriminator, DCGANGenerator, MLPDiscriminator, MLPGenerator
    from ..train import Trainer

    def trainer(G, D, multi_tensor=False):
        G, D = G.to(device), D.to(device)
        opts = (torch.optim.Adam(G.parameters(), 2e-4, betas=(0.5, 0.999)),
                torch.optim.Adam(D.parameters(), 2e-4, betas=(0.5, 0.999)))
        t = Trainer(G, D, *opts, loss="ns", penalty="r1", spectral_norm=True, seed=0)
        if multi_tensor:
            t._nn = _MultiTensorSN(t._nn)
        return t

    real_2d = torch.randn(64, 2, device=device)
    real_img = torch.rand(16, 3, 32, 32, device=device) * 2 - 1
    for multi in (False, True):
        torch.manual_seed(0)
        suffix = ", multi-tensor SN" if multi else ""
        for name, t, real in ((f"MLP sn+r1{suffix}", trainer(MLPGenerator(2, 2, 64), MLPDiscriminator(2, 64), multi),
                               real_2d),
                              (f"DCGAN sn+r1{suffix}",
                               trainer(DCGANGenerator(32, 32, 3, 16), DCGANDiscriminator(32, 3, 16), multi), real_img)):
            t.step(real, return_stats=False)  # first step: checks and lazy state, not a steady step
            yield name, t, real


def triton_rows(device: torch.device) -> list[tuple]:
    """(case, target key, Counts or None, cuda launcher key, error) of every op-family case on the
    triton path."""
    rows = []
    for cases in (_loss_cases, _penalty_cases, _sn_cases):
        for name, target, make, cuda_key in cases(device):
            try:
                fn = make()
                fn()  # warm: compile (GPU) and lazy imports outside the count
            except Exception as e:  # a path missing here: reported in the table, not fatal
                rows.append((name, target, None, cuda_key, f"{type(e).__name__}: {e}"))
                continue
            rows.append((name, target, count(fn), cuda_key, ""))
    return rows


def step_counts(device: torch.device, limit: int | None = None) -> list[tuple[str, Counts]]:
    """(case, Counts) of one steady Trainer.step (SN + R1) with the triton backend selected (the first
    `limit` cases only, when given)."""
    from .. import backends

    out = []
    with backends.use_backend("triton"):
        for name, t, real in _step_cases(device):
            out.append((name, count(t.step, real, return_stats=True)))
            if limit is not None and len(out) >= limit:
                break
    return out


# --- the CUDA path: counted from the launchers ---------------------------------------------------

ROOT = _GANFAST.parent
COUNT_DRIVER = "tests/cuda_launch_count.cu"


def nvcc() -> str | None:
    return shutil.which("nvcc") or shutil.which("nvcc", path="/usr/local/cuda/bin")


def _check_build(cmd: list[str], proc: subprocess.CompletedProcess) -> None:
    if proc.returncode != 0:
        raise RuntimeError(f"the CUDA launch-count build failed:\n{' '.join(cmd)}\n{proc.stderr[-3000:]}")


def cuda_launch_counts(timeout: float = 600) -> dict[tuple[str, str], int]:
    """{(launcher, case): launches} from the counting build of csrc/cuda (tests/cuda_launch_count.cu);
    built once per source version into a cache folder. Raises RuntimeError without nvcc or on a
    failed build."""
    compiler = nvcc()
    if compiler is None:
        raise RuntimeError("nvcc not found: the CUDA launch counts need the CUDA toolkit (no GPU)")
    sources = sorted((ROOT / "csrc" / "cuda").glob("*.cu")) + [ROOT / COUNT_DRIVER]  # every family's launchers
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted((ROOT / "csrc" / "cuda").glob("*"))
                                     + sources)).hexdigest()[:16]
    cache = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "ganfast"
    binary = cache / f"cuda_launch_count-{digest}"
    if not binary.exists():
        cache.mkdir(parents=True, exist_ok=True)
        print(f"bench launches: compiling the counting build of csrc/cuda ({len(sources)} files, nvcc)",
              file=sys.stderr, flush=True)
        # Host code is what is counted: one cheap device target is enough.
        flags = [compiler, "-std=c++17", "-O0", "-DGANFAST_COUNT_LAUNCHES", "-gencode", "arch=compute_80,code=sm_80"]
        with tempfile.TemporaryDirectory() as tmp:
            objects = [str(pathlib.Path(tmp) / f"{i}_{p.stem}.o") for i, p in enumerate(sources)]
            steps = [flags + ["-c", str(p), "-o", o] for p, o in zip(sources, objects)]
            # one nvcc per file, side by side (one nvcc call compiles its files one after another)
            with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
                procs = list(pool.map(lambda cmd: subprocess.run(cmd, capture_output=True, text=True,
                                                                 timeout=timeout), steps))
            built = pathlib.Path(tmp) / "count"
            link = [compiler, "-o", str(built)] + objects
            for cmd, proc in zip(steps, procs):
                _check_build(cmd, proc)
            _check_build(link, subprocess.run(link, capture_output=True, text=True, timeout=timeout))
            shutil.move(str(built), binary)
    proc = subprocess.run([str(binary)], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"the CUDA launch-count driver failed: {proc.stderr[-2000:]}")
    counts = {}
    for line in proc.stdout.splitlines():  # "<launcher>\t<case>\t<launches>"
        launcher, case, n = line.split("\t")
        counts[(launcher, case)] = int(n)
    return counts


# --- the table -------------------------------------------------------------------------------------

def collect(device: torch.device | None = None, with_cuda: bool = True, with_steps: bool = True):
    """(op rows, step rows, cuda note): what `ganfast bench launches` prints."""
    device = device or torch.device("cpu")
    cuda, cuda_note = {}, ""
    if with_cuda:
        try:
            cuda = cuda_launch_counts()
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
            cuda_note = f"cuda column not counted: {e}"
    rows = [LaunchRow(name, TARGETS.get(target), counts, cuda.get(key), error)
            for name, target, counts, key, error in triton_rows(device)]
    steps = step_counts(device) if with_steps else []
    return rows, steps, cuda_note


def format_table(rows: list[LaunchRow], steps: list[tuple[str, Counts]], cuda_note: str = "") -> str:
    w = max(len(r.case) for r in rows) + 2
    head = f"{'case':<{w}} {'target':>7} {'triton':>7} {'cuda':>5}  {'met':<4} triton launches"
    lines = [head, "-" * len(head)]
    for r in rows:
        tri = r.triton.total() if r.triton is not None else None
        target = f"<= {r.target.limit}" if r.target else ""
        met = ""
        if r.target:
            met = "yes" if all(n is not None and n <= r.target.limit for n in (tri, r.cuda)) else "NO"
        lines.append(f"{r.case:<{w}} {target:>7} {'' if tri is None else tri:>7} "
                     f"{'' if r.cuda is None else r.cuda:>5}  {met:<4} {r.triton.describe() if r.triton else r.note}")
    if steps:
        sw = max(len(n) for n, _ in steps) + 2
        lines += ["", f"{'Trainer.step, triton backend':<{sw}} {'ganfast ops':>11} {'trainer':>8} "
                      f"{'model+optim+autograd':>21} {'all':>5} {'host reads':>10}"]
        for name, c in steps:
            lines.append(f"{name:<{sw}} {c.total(Origin.GANFAST):>11} {c.total(Origin.TRAINER):>8} "
                         f"{c.total(Origin.MODEL):>21} {c.total():>5} {c.syncs:>10}")
        for name, c in steps:
            lines.append(f"  {name}, ganfast ops: {c.describe(Origin.GANFAST)}")
            lines.append(f"  {name}, trainer: {c.describe(Origin.TRAINER)}")
    lines.append("")
    lines.append("triton: Triton kernel launches + aten ops run by ganfast's op code, counted under the "
                 "interpreter; cuda: kernel launches + memsets of the csrc/cuda launchers (counting build).")
    if cuda_note:
        lines.append(cuda_note)
    return "\n".join(lines)


def _interpreter_ready() -> bool:
    """Whether Triton kernels can run on this process's CPU tensors (TRITON_INTERPRET=1 before triton
    was imported)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        if "triton" in sys.modules:
            return False
        os.environ["TRITON_INTERPRET"] = "1"
        from .. import backends

        backends.status.cache_clear()  # the triton status read the variable before it was set
        backends._routes.clear()
    return True


def run(quick: bool = False, device: torch.device = torch.device("cpu")) -> list:
    """Print the launch table. Without a GPU the Triton path runs in the interpreter: set here when
    triton is not imported yet, else in a fresh process."""
    if device.type != "cuda" and not _interpreter_ready():
        env = dict(os.environ, TRITON_INTERPRET="1")
        subprocess.run([sys.executable, "-m", "ganfast.bench.launches"], env=env, check=True)
        return []
    rows, steps, note = collect(device if device.type == "cuda" else torch.device("cpu"))
    print(format_table(rows, steps, note), flush=True)
    return []


if __name__ == "__main__":
    run()
