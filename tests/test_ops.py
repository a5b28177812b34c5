"""torch.library checks over every ganfast:: op, and torch.compile without graph breaks."""
import pytest
import torch

import ganfast
from ganfast import backends, losses
from ganfast.ops import ganfast_ops

from .conftest import kernel_backends


def op_samples():
    """(op name, args) samples for every ganfast:: op whose kernels are available here; each op
    family adds its samples here."""
    samples = []
    for backend, device in kernel_backends():
        suffix = "_fused_triton" if backend == "triton" else "_fused"
        for kind, generator in ((0, False), (5, True), (7, False), (2, True)):
            r = torch.randn(7, device=device, requires_grad=True)
            f = torch.randn(7 if kind == 7 else 5, device=device, requires_grad=True)
            real = None if (generator and kind < 5) else r
            samples.append((f"ganfast::gan_loss{suffix}", (real, f, kind, generator)))
            if backend != "triton":
                samples.append(("ganfast::gan_loss", (real, f, kind, generator)))
    return samples


def _op(qualname):
    ns, name = qualname.split("::")
    return getattr(getattr(torch.ops, ns), name).default


@pytest.mark.parametrize("qualname,args", op_samples(), ids=lambda x: x if isinstance(x, str) else "")
def test_opcheck(qualname, args):
    torch.library.opcheck(_op(qualname), args)


def test_every_op_has_an_opcheck_sample():
    sampled = {name for name, _ in op_samples()}
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
