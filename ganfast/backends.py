"""Which backends exist here, which one runs an op, and why a missing one is missing.

Backends: ``reference`` (plain PyTorch, always there), ``cpu`` (C++ kernels of ganfast._C),
``cuda`` (CUDA kernels of ganfast._C) and ``triton``. The default, ``auto``, picks per device:
CUDA tensors -> cuda, else triton, else reference; CPU tensors -> cpu, else reference. On CUDA the
C++ kernel goes first: both backends run the same single-launch kernel shape, and the C++ op is
launched by the dispatcher without the Python launcher Triton needs (see README, "Backends").
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import os
import warnings

import torch

BACKENDS = ("reference", "cpu", "cuda", "triton")
CHOICES = ("auto",) + BACKENDS
# Preference order of `auto` for each device type.
AUTO_ORDER = {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpu", "reference")}


class BackendUnavailableError(RuntimeError):
    """A backend was asked for by name where it cannot run."""


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
    _resolved.clear()


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
_resolved: dict[tuple[str, str], str] = {}


def _check_name(name: str) -> str:
    if not isinstance(name, str) or name not in CHOICES:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(CHOICES)}")
    return name


def set_backend(name: str) -> None:
    """Use backend `name` for every ganfast op from now on ("auto" picks per device)."""
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


def resolve(device: torch.device) -> str:
    """The backend that runs an op on tensors of `device` under the current selection."""
    key = (_selected, device.type)
    backend = _resolved.get(key)
    if backend is None:
        backend = _resolved[key] = _resolve(_selected, device.type)
    return backend


def _resolve(selected: str, device_type: str) -> str:
    if selected == "auto":
        for name in AUTO_ORDER.get(device_type, ("reference",)):
            if status(name).available and device_type in status(name).device_types:
                return name
        return "reference"
    st = status(selected)
    if not st.available:
        raise BackendUnavailableError(f"backend {selected!r} is not available: {st.reason}")
    if device_type not in st.device_types:
        raise BackendUnavailableError(
            f"backend {selected!r} does not run on {device_type} tensors (it runs on: {', '.join(st.device_types)})")
    return selected


