"""The vectorized CPU kernels exist in one copy per capability (default, avx2, avx512; see
csrc/cpu/kernels.h). These helpers let a test run on each copy this machine supports, one after
the other in the same process, through the ganfast_cpu:: ops; and write outputs of any size with
non-temporal stores (which only large outputs get otherwise)."""
import contextlib

import pytest
import torch

from ganfast import backends


def cpu_capabilities() -> list[str]:
    """Capabilities built into ganfast._C that this CPU runs (empty without the extension)."""
    if not backends.status("cpu").available:
        return []
    return list(torch.ops.ganfast_cpu.capabilities())


@contextlib.contextmanager
def _setting(get, set_, value):
    """One ganfast_cpu:: setting at `value` inside the block, restored after."""
    previous = get()
    set_(value)
    try:
        yield
    finally:
        set_(previous)


def cpu_capability(name: str):
    """Run the CPU kernels with the copy compiled for `name` inside the block."""
    return _setting(torch.ops.ganfast_cpu.capability, torch.ops.ganfast_cpu.set_capability, name)


CAPABILITIES = cpu_capabilities()


@pytest.fixture(params=CAPABILITIES or [pytest.param(None, marks=pytest.mark.skip(reason="no ganfast._C"))])
def capability(request):
    """Each CPU capability in turn, active for the test."""
    with cpu_capability(request.param):
        yield request.param


def nontemporal_stores(min_bytes: int):
    """Outputs of at least `min_bytes` bytes go around the caches inside the block (0: every output)."""
    return _setting(torch.ops.ganfast_cpu.nontemporal_min_bytes, torch.ops.ganfast_cpu.set_nontemporal_min_bytes,
                    min_bytes)
