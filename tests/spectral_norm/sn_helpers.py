import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ganfast import backends

KERNEL_BACKENDS = ("cpu", "triton")
ALL_BACKENDS = ("reference",) + KERNEL_BACKENDS


def need(backend: str) -> None:
    st = backends.status(backend)
    if not st.available or "cpu" not in st.device_types:
        pytest.skip(f"{backend}: {st.reason}")


class RecordOps(TorchDispatchMode):
    """The names of the ops dispatched under it (`seen`)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


def check_eager_entry_declines(call) -> None:
    """call(weight, sigma=None) of one of ganfast._C's eager entries on a 4x3 weight: a result for
    plain tensors; None (the caller then goes through torch.ops) for a subclass weight or sigma, and
    under inference mode or autocast."""
    class Subclass(torch.Tensor):
        pass

    w = torch.randn(4, 3)
    assert call(w) is not None
    assert call(w.as_subclass(Subclass)) is None
    assert call(w, torch.ones(()).as_subclass(Subclass)) is None
    with torch.inference_mode():
        assert call(w) is None
    with torch.autocast("cpu"):
        assert call(w) is None
