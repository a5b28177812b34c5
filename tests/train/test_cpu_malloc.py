"""ganfast.train.cpu_malloc: when malloc's settings are left alone, and that the settings keep a step's
freed memory (no page faults to take it back), in fresh processes."""
import json
import platform
import subprocess
import sys
import textwrap

import pytest

from ganfast.train import cpu_malloc

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")


@pytest.mark.parametrize("env, libc, expected", [
    ({}, "glibc", None),
    ({"GANFAST_CPU_MALLOC": "1"}, "glibc", None),
    ({"GANFAST_CPU_MALLOC": "0"}, "glibc", "GANFAST_CPU_MALLOC=0"),
    ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}, "glibc", "jemalloc is preloaded"),
    ({"LD_PRELOAD": "libtcmalloc_minimal.so.4"}, "glibc", "tcmalloc is preloaded"),
    ({"MALLOC_ARENA_MAX_": "2"}, "glibc", "configured by the environment (MALLOC_ARENA_MAX_)"),
    ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}, "glibc", "GLIBC_TUNABLES"),
    ({}, "", "not glibc"),
    ({}, "musl", "not glibc (musl)"),
])
def test_reason_to_leave_alone(env, libc, expected):
    reason = cpu_malloc.reason_to_leave_alone(env, libc)
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and expected in reason


# In a fresh process: whether a 20 MiB block is mapped on its own (glibc's default: its mmap threshold
# starts at 128 KiB and grows only as mapped blocks are freed) or taken from the heap (the settings), by
# mallinfo2's mapped bytes; then the page faults of a step-like pattern that takes six 16 MiB blocks
# and frees them, ten times (after three). Whether glibc's defaults give that memory back depends on
# what else lies at the heap's top (1 in 3 runs here): the faults are checked with the settings.
_CHILD = textwrap.dedent("""
    import ctypes, json, resource, sys, torch
    from ganfast.train.cpu_malloc import keep_freed_memory
    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                   "fsmblks", "uordblks", "fordblks", "keepcost")]
    mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    mallinfo2.restype = MallInfo2
    applied = keep_freed_memory() if sys.argv[1] == "kept" else None
    mapped = mallinfo2().hblkhd
    block = torch.empty(5 << 20)  # 20 MiB
    mapped = mallinfo2().hblkhd - mapped
    del block
    def step():
        blocks = [torch.empty(4 << 20) for _ in range(6)]  # 6 x 16 MiB
        for b in blocks:
            b.fill_(1.0)  # touch every page
        del blocks
    for _ in range(3):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        step()
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10
    print(json.dumps({"applied": applied, "mapped": mapped, "faults": faults}))
""")


def _child(variant: str, env: dict) -> dict:
    # one thread: with more, the main thread can be moved to another glibc arena, whose 64 MiB heaps
    # are unmapped when they empty whatever the trim threshold (the settings keep the main arena's)
    out = subprocess.run([sys.executable, "-c", _CHILD, variant], capture_output=True, text=True,
                         env=dict(env, OMP_NUM_THREADS="1"), timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc
def test_settings_take_blocks_from_the_heap_and_keep_them():
    import os

    env = {k: v for k, v in cpu_malloc.with_glibc_defaults(os.environ).items()
           if k not in ("LD_PRELOAD", "GLIBC_TUNABLES")}
    default, kept = _child("default", env), _child("kept", env)
    assert default["mapped"] >= 20 << 20, default  # the premise: glibc maps such a block by default
    assert kept["applied"] is True and kept["mapped"] == 0, kept
    # the defaults, when they give the blocks back, fault in all of a step's pages (24,576); the heap may
    # still grow once in ten steps as the blocks move (16,384 pages seen)
    assert kept["faults"] < 6 * (16 << 20) // 4096 / 4, kept
    off = _child("kept", dict(env, GANFAST_CPU_MALLOC="0"))
    assert off["applied"] is False and off["mapped"] >= 20 << 20, off


def test_trainer_on_cpu_applies_it(monkeypatch):
    import torch
    from torch import nn

    from ganfast.train import Trainer, trainer as trainer_module

    calls = []
    monkeypatch.setattr(trainer_module, "keep_freed_memory", lambda: calls.append(1) or True)
    G, D = nn.Linear(2, 2), nn.Linear(2, 1)
    Trainer(G, D, torch.optim.Adam(G.parameters()), torch.optim.Adam(D.parameters()), seed=0)
    assert calls == [1]
