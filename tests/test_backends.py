import os
import subprocess
import sys

import pytest
import torch

import ganfast
from ganfast import backends, losses


def test_selection_and_restore():
    assert ganfast.get_backend() == "auto"
    with ganfast.use_backend("reference"):
        assert ganfast.get_backend() == "reference"
        assert backends.resolve(torch.device("cpu")) == "reference"
    assert ganfast.get_backend() == "auto"


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="unknown backend 'fast'; choose one of auto, reference, cpu, cuda, triton"):
        ganfast.set_backend("fast")


def test_unavailable_backend_says_why():
    missing = [b for b in backends.BACKENDS if not backends.status(b).available]
    if not missing:
        pytest.skip("every backend is available here")
    with pytest.raises(ganfast.BackendUnavailableError, match=f"backend '{missing[0]}' is not available: .+"):
        ganfast.set_backend(missing[0])
    assert ganfast.get_backend() == "auto"


def test_auto_picks_cpu_kernels_for_cpu_tensors():
    expected = "cpu" if backends.status("cpu").available else "reference"
    assert backends.resolve(torch.device("cpu")) == expected


def test_backend_wrong_device():
    if not backends.status("cpu").available:
        pytest.skip("cpu backend not built")
    with ganfast.use_backend("cpu"):
        with pytest.raises(ganfast.BackendUnavailableError, match="does not run on meta tensors"):
            losses.d_loss(torch.randn(3, device="meta"), torch.randn(3, device="meta"))


def test_import_without_extension_uses_reference():
    # ganfast._C made unimportable: the package still imports, says why, and runs the reference.
    code = """
import sys
sys.modules['ganfast._C'] = None
import torch, ganfast
from ganfast import backends, losses
st = backends.status('cpu')
assert not st.available and 'not built' in st.reason, st
assert backends.resolve(torch.device('cpu')) == 'reference'
r = torch.randn(5, requires_grad=True)
losses.d_loss(r, torch.randn(4), 'hinge').backward()
assert r.grad is not None
print('ok')
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TRITON_INTERPRET": "0"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
