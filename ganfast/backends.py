"""Which backends exist here, which one runs an op, and why a missing one is missing.

Backends: ``reference`` (plain PyTorch, always there), ``cpu`` (C++ kernels of ganfast._C),
``cuda`` (CUDA kernels of ganfast._C) and ``triton``.

The dispatch rule, one for every op family (losses, penalties, spectral_norm, augment):
- each backend declares what it takes per family (`TAKES`: device types and dtypes; the kernels take
  dense (strided) tensors only) and optionally a size range per (family, backend, device type)
  (`SIZE_LIMITS`);
- ``auto`` walks `AUTO_ORDER` for the input's device type and takes the first backend that is
  available and takes THIS input (device, dtype, layout, number of elements), ending at the
  reference; so a dtype one kernel lacks (float64 on triton, complex weights) falls through, it is
  not an error;
- an explicitly selected backend that cannot take the input raises, naming the backend, the family
  and what it does not support;
- inside torch.func transforms (grad, vmap, ...) `auto` takes the reference, whose aten ops those
  transforms know; a kernel selected by name raises there.
`backend_for(family, tensor)` applies the rule. It runs on every op call, so it costs a dict lookup
for a (selection, family, device type, dtype, layout) seen before.
On CUDA the C++ kernel goes before Triton: it was faster in every case timed on an H200 (the C++ op is
launched by the dispatcher, without the Python launcher Triton needs; README, "Backends").
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import os
import sys
import warnings

import torch

BACKENDS = ("reference", "cpu", "cuda", "triton")
CHOICES = ("auto",) + BACKENDS
FAMILIES = ("losses", "penalties", "spectral_norm", "augment")
# Preference order of `auto` for each device type (any other device type: the reference).
AUTO_ORDER = {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpu", "reference")}

_REAL = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_NO_FP64 = (torch.float32, torch.float16, torch.bfloat16)
# What each backend's kernels take, per family: the dtypes of the input (logits, g / the data, or
# the weight). Device types are the backend's own (`status(name).device_types`). Complex tensors go
# to the reference only, and only for spectral norm: a GAN loss or a penalty of complex values has
# no real-valued meaning, so those stay an error in the public functions.
TAKES: dict[str, dict[str, tuple[torch.dtype, ...]]] = {
    "reference": {"losses": _REAL, "penalties": _REAL,
                  "spectral_norm": _REAL + (torch.complex64, torch.complex128), "augment": _REAL},
    "cpu": {"losses": _REAL, "penalties": _REAL, "spectral_norm": _REAL, "augment": _REAL},
    "cuda": {"losses": _REAL, "penalties": _REAL, "spectral_norm": _NO_FP64,  # the SN kernel has no fp64
             "augment": _REAL},
    "triton": {"losses": _NO_FP64, "penalties": _NO_FP64, "spectral_norm": _NO_FP64, "augment": _NO_FP64},
}
# The per-size hook of `auto`: (family, backend, device type) -> (min numel, max numel), both
# inclusive, counted on the op's main input (the fake logits; g, or the data for the interpolation;
# the weight). Outside its range a backend is skipped by `auto` (an explicit selection ignores it),
# for the sizes where a measurement showed the next backend in AUTO_ORDER to be faster; NEVER, an
# empty range, skips it at every size.
NEVER = (1, 0)
# Measured on an NVIDIA H200 (torch 2.11, Triton 3.6, 2026-12-04; `python -m ganfast.bench.backend_order`,
# fwd+bwd, medians per call; every figure host-bound, the GPU work a few us):
# - losses, cuda: faster than the reference at every size timed. B = 64 / 4096 / 57600 / 2^20, ns:
#   243 / 266 / 238 / 234 us against 425 / 514 / 473 / 454; hinge 249 / 257 / 276 / 287 against
#   488 / 576 / 533 / 556. (Until the kernel ran as a grid of blocks over 8192 logits, its one block
#   took 916 us at 2^20, and auto stopped at 2^16.)
# - losses and penalty tails, triton: the custom-op call and Triton's launcher cost more than the
#   reference's aten ops at almost every size timed, over two runs (losses 445-3620 vs 425-576 us, a
#   win of 6 % at one size; tails 478-680 vs 484-688 us, two of eight timings lost by 6-8 %, the
#   others within 10 %), so `auto` goes from cuda to the reference.
# - spectral norm, triton: one layer fwd+bwd against PyTorch's parametrization (`ganfast bench sn
#   --quick --device cuda`) 0.78-0.91x on three of five layers (Linear 2304->256, 4608->512, 8192->1),
#   1.07x on the other two: never, as for the other two families. cuda: 2.6-4.3x there.
# - augment: cuda 294 / 287 us, triton 547 / 533, the reference 2567 / 2535 (DiffAugment color,
#   translation, cutout at B = 64, 32x32 / 64x64): no limit.
SIZE_LIMITS: dict[tuple[str, str, str], tuple[int, int]] = {
    ("losses", "triton", "cuda"): NEVER,
    ("penalties", "triton", "cuda"): NEVER,
    ("spectral_norm", "triton", "cuda"): NEVER,
}


class BackendUnavailableError(RuntimeError):
    """A backend was asked for by name where it cannot run."""


class UnsupportedInputError(BackendUnavailableError, TypeError):
    """A backend selected by name does not take this input (its dtype or device type)."""


@dataclasses.dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    reason: str  # why it is unavailable, or what it runs on
    device_types: tuple[str, ...] = ()


def triton_interpret() -> bool:
    """TRITON_INTERPRET=1 runs Triton kernels on CPU tensors (how the tests run without a GPU)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# --- the C++/CUDA extension ---------------------------------------------------------------------

_extension = None
_extension_error: str | None = "ganfast.ops has not loaded the extension yet"


def load_extension() -> None:
    """Load ganfast._C, which registers the C++/CUDA kernels of the ganfast:: ops.

    Called once by ganfast.ops after every op schema is defined. A missing extension is normal
    (GANFAST_NO_EXT=1, no compiler); one that exists but fails to load is worth a warning.
    """
    global _extension, _extension_error
    try:
        _extension = importlib.import_module("ganfast._C")
        _extension_error = None
    except ModuleNotFoundError:
        _extension_error = _not_built_reason()
    except (ImportError, OSError) as e:  # built against another torch, missing symbols...
        _extension_error = f"extension ganfast._C failed to load: {e}"
        warnings.warn(f"ganfast: {_extension_error}; using the reference/triton backends", stacklevel=2)
    status.cache_clear()
    _routes.clear()


def _not_built_reason() -> str:
    """Why ganfast._C is missing: a source tree imported in place of the installed package (python run
    from the clone's folder), or a package installed without it."""
    package = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(package)
    if os.path.isfile(os.path.join(root, "setup.py")) and os.path.isdir(os.path.join(root, "csrc")):
        return (f"extension ganfast._C is not built in the source tree {root}, which is the ganfast Python "
                f"imported here (run from inside a clone, Python takes its ganfast/ folder over an installed "
                f"one): run ganfast from another folder, or build it in place with `pip install "
                f"--no-build-isolation -e .`")
    return ("extension ganfast._C is not built: ganfast was installed with GANFAST_NO_EXT=1 or without torch "
            "at build time (pip install without --no-build-isolation); reinstall with `pip install "
            "--no-build-isolation .`")


def extension_function(name: str):
    """A Python function of ganfast._C (a faster entry to one of its ops), or None without the extension."""
    return getattr(_extension, name, None)


def extension_built_with_cuda() -> bool:
    return _extension is not None and bool(getattr(_extension, "built_with_cuda", 0))


# --- availability -------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def status(name: str) -> BackendStatus:
    """Availability of one backend here, with the reason (cached; the triton check imports triton)."""
    if name == "reference":
        return BackendStatus(name, True, "plain PyTorch, any device", ("cpu", "cuda"))
    if name == "cpu":
        if _extension is None:
            return BackendStatus(name, False, _extension_error or "extension not loaded")
        return BackendStatus(name, True, "C++ kernels of ganfast._C", ("cpu",))
    if name == "cuda":
        if _extension is None:
            return BackendStatus(name, False, _extension_error or "extension not loaded")
        if not extension_built_with_cuda():
            return BackendStatus(name, False, "extension built without CUDA (torch without CUDA or no nvcc at "
                                              "build time; GANFAST_BUILD_CUDA=1 forces it)")
        if not torch.cuda.is_available():
            return BackendStatus(name, False, "no CUDA device visible to torch")
        return BackendStatus(name, True, "CUDA kernels of ganfast._C", ("cuda",))
    if name == "triton":
        try:
            import triton  # noqa: F401
        except Exception as e:  # ImportError, or a broken install
            return BackendStatus(name, False, f"triton: not installed ({e.__class__.__name__}: {e})")
        devices = tuple(d for d, ok in (("cuda", torch.cuda.is_available()), ("cpu", triton_interpret())) if ok)
        if not devices:
            return BackendStatus(name, False, "triton: no CUDA device (set TRITON_INTERPRET=1 before importing "
                                              "triton to run its kernels on CPU tensors)")
        what = "interpreter on CPU tensors" if devices == ("cpu",) else "CUDA tensors" + (
            " (and CPU tensors under TRITON_INTERPRET=1)" if "cpu" in devices else "")
        return BackendStatus(name, True, f"Triton kernels, {what}", devices)
    raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(CHOICES)}")


def available_backends(device_type: str | None = None) -> list[str]:
    """Names of the backends that run here (on tensors of `device_type`, when given)."""
    return [b for b in BACKENDS if status(b).available and (device_type is None or device_type in status(b).device_types)]


# --- selection ----------------------------------------------------------------------------------

_selected = "auto"
# (selection, family, device type, dtype, layout) -> a backend name, or for `auto` where SIZE_LIMITS apply,
# the candidates ((name, min numel, max numel), ...) in preference order, the last one unlimited.
_routes: dict[tuple, str | tuple[tuple[str, int, int], ...]] = {}


def _check_name(name: str) -> str:
    if not isinstance(name, str) or name not in CHOICES:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(CHOICES)}")
    return name


def set_backend(name: str) -> None:
    """Use backend `name` for every ganfast op from now on ("auto" picks per input)."""
    global _selected
    _check_name(name)
    if name != "auto" and not status(name).available:
        raise BackendUnavailableError(f"backend {name!r} is not available: {status(name).reason}")
    _selected = name


def get_backend() -> str:
    """The backend selection in force ("auto" or a backend name)."""
    return _selected


@contextlib.contextmanager
def use_backend(name: str):
    """`with ganfast.use_backend("reference"): ...` selects a backend for a block of code."""
    previous = _selected
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def takes(name: str, family: str) -> tuple[tuple[str, ...], tuple[torch.dtype, ...]]:
    """(device types, dtypes) that backend `name` takes for `family` here (no device types when the
    backend is unavailable)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown op family {family!r}; choose one of {', '.join(FAMILIES)}")
    st = status(name)
    return (st.device_types if st.available else ()), TAKES[name][family]


def _refusal(name: str, family: str, device_type: str, dtype: torch.dtype,
             layout: torch.layout = torch.strided) -> BackendUnavailableError | None:
    """The error saying why backend `name` cannot take a `family` input of this device type, dtype
    and layout (None: it can)."""
    st = status(name)
    if not st.available:
        return BackendUnavailableError(f"backend {name!r} is not available: {st.reason}")
    if device_type not in st.device_types and name != "reference":  # plain PyTorch runs anywhere
        return BackendUnavailableError(
            f"backend {name!r} does not run on {device_type} tensors (it runs on: {', '.join(st.device_types)})")
    dtypes = TAKES[name][family]
    if dtype not in dtypes:
        return UnsupportedInputError(
            f"backend {name!r} does not take {dtype_name(dtype)} tensors for {family} (it takes "
            f"{', '.join(map(dtype_name, dtypes))}); select 'auto' to fall through to a backend that does")
    if layout != torch.strided and name != "reference":
        return UnsupportedInputError(f"backend {name!r} takes dense (strided) tensors only, got {layout}; select "
                                     f"'auto' to fall through to the reference")
    return None


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _route(selected: str, family: str, device_type: str, dtype: torch.dtype, layout: torch.layout):
    """The `_routes` entry of one key (see there); raises for a selection that cannot take the input."""
    if selected != "auto":
        error = _refusal(selected, family, device_type, dtype, layout)
        if error is not None:
            raise error
        return selected
    candidates = []
    for name in AUTO_ORDER.get(device_type, ()) + ("reference",):
        if _refusal(name, family, device_type, dtype, layout) is not None:
            continue
        limits = SIZE_LIMITS.get((family, name, device_type))
        if limits is None or name == "reference":  # the reference takes every size
            return tuple(candidates) + ((name, 0, sys.maxsize),) if candidates else name
        candidates.append((name, *limits))
    raise UnsupportedInputError(f"no backend takes {dtype_name(dtype)} tensors for {family}")


def _pick(route, numel: int) -> str:
    for name, low, high in route:
        if low <= numel <= high:
            return name
    raise AssertionError("unreachable: the last candidate of a route has no size limit")


def _backend(key: tuple, numel: int) -> str:
    """The backend of one `_routes` key for an input of `numel` elements (the route cached on first use)."""
    route = _routes.get(key)
    if route is None:
        route = _routes[key] = _route(*key)
    # isinstance, not `route.__class__ is str`: torch 2.11's dynamo treated a str route as a tuple there
    return route if isinstance(route, str) else _pick(route, numel)


def backend_for(family: str, t: torch.Tensor) -> str:
    """The backend that runs a `family` op on input `t` under the current selection (the dispatch rule
    of the module docstring). Raises when an explicitly selected backend cannot take `t`."""
    # is_cpu / is_cuda before device.type: the string costs 0.28 us a read (an ostringstream each time)
    device_type = "cpu" if t.is_cpu else "cuda" if t.is_cuda else t.device.type
    name = _backend((_selected, family, device_type, t.dtype, t.layout), t.numel())
    if name != "reference" and torch._C._are_functorch_transforms_active():  # 0.03 us; dynamo folds it
        return _under_func_transforms(name, family)
    return name


def _under_func_transforms(name: str, family: str) -> str:
    """Inside torch.func.grad / vmap / jacrev / ...: the kernels' autograd (C++ autograd functions, and
    Python ones without vmap rules) cannot run under functorch, whose transforms need the aten ops of
    the reference. `auto` takes the reference there; a kernel selected by name raises."""
    if _selected == "auto":
        return "reference"
    raise UnsupportedInputError(f"the {name} backend's {family} kernels do not run under torch.func transforms "
                                f"(grad, vmap, jacrev, functional_call under grad, ...): select 'auto' or "
                                f"'reference' around them")


def resolve(device: torch.device, family: str = "losses", dtype: torch.dtype = torch.float32,
            numel: int = 1) -> str:
    """The backend that runs a `family` op on a dense `dtype` input of `numel` elements on `device`
    (what `backend_for` picks for such a tensor)."""
    return _backend((_selected, family, torch.device(device).type, dtype, torch.strided), numel)
