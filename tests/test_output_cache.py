"""The CPU ops' cache of large output buffers (csrc/cpu/output_cache.h): a freed output of 1 MiB or
more is handed to the next output of its size, and every op rewrites all of it."""
import pytest
import torch

import ganfast

pytestmark = pytest.mark.skipif(not ganfast.backends.status("cpu").available, reason="ganfast._C not built")

N = 300_000  # 1.2 MB in float32: above the cache's 1 MiB threshold


def _cases():
    g = torch.Generator().manual_seed(0)
    r, f = torch.randn(N, generator=g), torch.randn(N, generator=g)
    img = torch.randn(32, 3, 64, 64, generator=g)  # 1.5 MB
    geometry = torch.tensor([[3, -5, 4, 20, 10, 30]], dtype=torch.int32).repeat(32, 1)
    color = torch.tensor([[0.1, 1.2, 0.8]]).repeat(32, 1)
    alpha = torch.rand(32, generator=g)
    ops = torch.ops.ganfast
    yield "gan_loss grads", lambda: ops.gan_loss_fused(r, f, 0, False)[1:3]
    yield "grad_penalty grad", lambda: ops.grad_penalty_fused(img, 0, 10.0, 1.0, 1.0)[1:2]
    yield "gp_interpolate", lambda: (ops.gp_interpolate(img, img.flip(0), alpha, False, 0.0),)
    yield "diffaugment", lambda: (ops.diffaugment(img, color, geometry),)
    yield "diffaugment_backward", lambda: (ops.diffaugment_backward(img, color, geometry),)


@pytest.mark.parametrize("name,op", list(_cases()), ids=[c[0] for c in _cases()])
def test_large_outputs_reuse_freed_buffers_and_rewrite_them(name, op):
    expected = [t.clone() for t in op()]
    outputs = op()
    kept = op()  # a live output is never handed out again
    assert {t.data_ptr() for t in outputs}.isdisjoint(t.data_ptr() for t in kept)
    freed = {t.data_ptr() for t in outputs}
    for t in outputs:
        t.fill_(float("nan"))  # poison them, then free them into the cache
    del outputs, t
    again = op()
    assert {t.data_ptr() for t in again} <= freed, f"{name}: a freed buffer of the same size was not reused"
    for a, e, k in zip(again, expected, kept):
        assert torch.equal(a, e) and torch.equal(k, e), name
