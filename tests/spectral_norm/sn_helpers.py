import pytest

from ganfast import backends

KERNEL_BACKENDS = ("cpu", "triton")
ALL_BACKENDS = ("reference",) + KERNEL_BACKENDS


def need(backend: str) -> None:
    st = backends.status(backend)
    if not st.available or "cpu" not in st.device_types:
        pytest.skip(f"{backend}: {st.reason}")
