import os

import torch

# Without a GPU, Triton kernels run on CPU tensors in the interpreter; it must be set before triton
# is imported (ganfast imports triton lazily, so here is early enough).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from ganfast import backends  # noqa: E402


def kernel_backends() -> list[tuple[str, str]]:
    """(backend, device type) for every available kernel backend and device it serves here."""
    return [(b, d) for b in backends.BACKENDS if b != "reference" and backends.status(b).available
            for d in backends.status(b).device_types]


@pytest.fixture(params=kernel_backends(), ids=lambda p: f"{p[0]}-{p[1]}")
def backend_device(request):
    return request.param


def poison_memory(numel: int = 1 << 20) -> None:
    """Leave NaN in freed memory, so an output element a kernel forgot to write is NaN rather than a
    stale correct value from an earlier identical call."""
    junk = torch.full((numel,), float("nan"))
    del junk


# `capability`: each copy of the vectorized CPU kernels this machine runs (default, avx2, avx512), in
# turn; pytest finds a fixture by its name, so importing it here makes it every test's.
from .cpu_paths import capability  # noqa: E402,F401


@pytest.fixture(autouse=True, scope="session")
def _image_runs_take_half_the_cores():
    """A CLI image run without --threads takes the cores idle at that moment (ganfast.run), and sets
    the process's thread count: in the tests, take half the cores instead, a count that does not
    depend on the load (tests/test_run_threads.py tests the default itself)."""
    from ganfast import run
    patch = pytest.MonkeyPatch()
    patch.setattr(run, "_busy_cores", lambda cores: cores - cores // 2)
    yield
    patch.undo()
