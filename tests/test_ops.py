"""torch.library checks over every ganfast:: op, and torch.compile without graph breaks."""
import importlib

import pytest
import torch

from ganfast import backends, losses
from ganfast.ops import ganfast_ops

from .conftest import kernel_backends


FAMILIES = ("losses", "spectral_norm", "penalties", "augment")  # each has tests/<family>/opcheck_samples.py


def op_samples():
    """(op, args) samples of every family, for each kernel backend available here."""
    out = []
    for family in FAMILIES:
        module = importlib.import_module(f"tests.{family}.opcheck_samples")
        for backend, device in kernel_backends():
            out.extend(module.samples(backend, device))
    return out


SAMPLES = op_samples()


@pytest.mark.parametrize("op,args", SAMPLES, ids=[f"{op._name}-{i}" for i, (op, _) in enumerate(SAMPLES)])
def test_opcheck(op, args):
    torch.library.opcheck(op, args)


def test_every_op_has_an_opcheck_sample():
    sampled = {op._name for op, _ in SAMPLES}
    available = {b for b, _ in kernel_backends()}
    for name in ganfast_ops():
        triton_op = name.endswith("_triton")
        if (triton_op and "triton" in available) or (not triton_op and available - {"triton"}):
            assert name in sampled, f"{name} has no opcheck sample"


@pytest.mark.parametrize("backend,device", kernel_backends(), ids=lambda x: str(x))
def test_compile_fullgraph(backend, device):
    torch._dynamo.reset()

    def step(r, f):
        d, stats = losses.d_loss(r, f, "rahinge", return_stats=True)
        g = losses.g_loss(f, "ns")
        return d + 0.5 * g, stats["real_acc"]

    r = torch.randn(33, device=device, requires_grad=True)
    f = torch.randn(21, device=device, requires_grad=True)
    with backends.use_backend(backend):
        eager, acc = step(r, f)
        eager.backward()
        grads = r.grad.clone(), f.grad.clone()
        r.grad = f.grad = None
        compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
        out, acc_c = compiled(r, f)
        out.backward()
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(acc_c, acc)
    torch.testing.assert_close((r.grad, f.grad), grads)
