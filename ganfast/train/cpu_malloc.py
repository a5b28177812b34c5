"""glibc's malloc, set to keep the memory a CPU training step frees for the next step.

By default glibc serves a large block (above a threshold that grows to at most 32 MiB) with its own
mmap, and gives the free top of its heap back to the OS once it exceeds twice that threshold. A GAN
step allocates and frees the same activations every step, so the next step takes them back from the
OS page by page. On the 2-core CPU of the README, the plain-PyTorch DCGAN-32 step (width 64, B = 64)
took 10,000-11,400 minor page faults and a median 189 ms a step with glibc's defaults, against 56-192
faults and 172 ms with both limits raised; width 32, B = 32: 3,300-3,500 faults and 38.3 ms against
96-160 and 28.2 ms (`ganfast bench malloc [--quick]`, 2026-12-04). Raising one limit alone
is worse: an explicit trim threshold turns glibc's growing mmap threshold off (84,000 faults a step,
263-312 ms, against 172 ms with the defaults in the same run).

`keep_freed_memory()` raises both through mallopt: blocks up to 32 MiB (glibc's largest mmap
threshold) come from the heap, and up to 1 GiB of its free top stays with the process. The process
keeps the memory of its largest step instead of returning it between steps, as PyTorch's CUDA caching
allocator does on the GPU. It is left alone where the user chose an allocator or its settings
(jemalloc, tcmalloc or mimalloc in LD_PRELOAD, MALLOC_*_ variables, glibc.malloc tunables), off glibc,
and when GANFAST_CPU_MALLOC=0. `Trainer` calls it for models on the CPU.
"""
from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger("ganfast.train")

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit): mallopt refuses more
TRIM_THRESHOLD = 1 << 30

ENV_SWITCH = "GANFAST_CPU_MALLOC"
_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")

_state: str | None = None  # None: not tried yet; "" applied; else why not


def _is_malloc_variable(name: str) -> bool:
    """MALLOC_ARENA_MAX_, MALLOC_TRIM_THRESHOLD_, ...: glibc's malloc settings in the environment."""
    return name.startswith("MALLOC_") and name.endswith("_")


def with_glibc_defaults(env) -> dict[str, str]:
    """`env` without the variables that set malloc or switch these settings off: a child process
    started with it runs glibc's defaults (until it calls keep_freed_memory)."""
    return {k: v for k, v in env.items() if k != ENV_SWITCH and not _is_malloc_variable(k)}


def reason_to_leave_alone(env=os.environ, libc: str | None = None) -> str | None:
    """Why malloc's settings must not be changed in a process with environment `env`, or None."""
    if env.get(ENV_SWITCH, "1").strip() == "0":
        return f"{ENV_SWITCH}=0"
    preload = env.get("LD_PRELOAD", "")
    for name in _ALLOCATORS:
        if name in preload:
            return f"{name} is preloaded (LD_PRELOAD)"
    chosen = sorted(k for k in env if _is_malloc_variable(k))
    if chosen:
        return f"malloc is configured by the environment ({', '.join(chosen)})"
    if "glibc.malloc" in env.get("GLIBC_TUNABLES", ""):
        return "malloc is configured by GLIBC_TUNABLES"
    libc = platform.libc_ver()[0] if libc is None else libc
    if libc != "glibc":
        return f"the C library is not glibc ({libc or 'unknown'})"
    return None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (module docstring), once per process. True when they are
    set (now or before), False when left alone (the reason is logged at debug level)."""
    global _state
    if _state is None:
        _state = reason_to_leave_alone() or ""
        if not _state:
            try:
                mallopt = ctypes.CDLL("libc.so.6").mallopt
                mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
                if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1 or mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
                    _state = "mallopt refused the thresholds"
            except (OSError, AttributeError) as e:
                _state = f"mallopt is not available ({e})"
        if _state:
            log.debug("CPU malloc left as it is: %s", _state)
        else:
            log.info("CPU malloc: blocks up to 32 MiB from the heap, and up to 1 GiB of freed memory kept for the "
                     "next step (no page faults to take it back); %s=0 turns this off", ENV_SWITCH)
    return not _state
