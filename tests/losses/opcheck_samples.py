"""opcheck samples of the loss ops (gathered by tests/test_ops.py)."""
import torch


def samples(backend: str, device: str):
    fused = torch.ops.ganfast.gan_loss_fused_triton.default if backend == "triton" else torch.ops.ganfast.gan_loss_fused.default
    out = []
    for kind, generator in ((0, False), (5, True), (7, False), (2, True)):
        r = torch.randn(7, device=device, requires_grad=True)
        f = torch.randn(7 if kind == 7 else 5, device=device, requires_grad=True)
        real = None if (generator and kind < 5) else r
        out.append((fused, (real, f, kind, generator)))
        if backend != "triton":
            out.append((torch.ops.ganfast.gan_loss.default, (real, f, kind, generator)))
    return out
