"""opcheck samples of the augmentation ops (gathered by tests/test_ops.py)."""
import torch

from ganfast import augment


def samples(backend: str, device: str):
    suffix = "_triton" if backend == "triton" else ""
    fwd = getattr(torch.ops.ganfast, f"diffaugment{suffix}").default
    bwd = getattr(torch.ops.ganfast, f"diffaugment_backward{suffix}").default
    g = torch.Generator().manual_seed(0)
    out = []
    for policy, shape in (("color,translation,cutout", (3, 3, 5, 7)), ("translation,cutout", (2, 1, 8, 8)),
                          ("color", (2, 3, 4, 4))):
        color, geometry = augment.draw_params(shape[0], shape[2], shape[3], policy, 0.7,
                                              lambda s: torch.rand(s, generator=g))
        color = None if color is None else color.to(device)
        geometry = geometry.to(device)
        for op in (fwd, bwd):
            x = torch.randn(shape, generator=g).to(device).requires_grad_()
            out.append((op, (x, color, geometry)))
    return out
