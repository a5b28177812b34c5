"""opcheck samples of the penalty ops (gathered by tests/test_ops.py)."""
import torch


def samples(backend: str, device: str):
    g = torch.Generator().manual_seed(0)
    suffix = "_triton" if backend == "triton" else ""
    out = []
    tails = ["grad_penalty_fused_triton"] if backend == "triton" else ["grad_penalty_fused", "grad_penalty"]
    for name in tails:
        op = getattr(torch.ops.ganfast, name).default
        for kind in (0, 1, 2):
            # the C++ *_fused op has no autograd of its own (ganfast::grad_penalty is its wrapper)
            x = torch.randn(4, 3, 5, generator=g).to(device).requires_grad_(name != "grad_penalty_fused")
            out.append((op, (x, kind, 10.0, 1.0, 0.5)))
    interpolate = getattr(torch.ops.ganfast, f"gp_interpolate{suffix}").default
    for perturb in (False, True):
        out.append((interpolate, (torch.randn(4, 6, generator=g).to(device).requires_grad_(),
                                  torch.rand(4, 6, generator=g).to(device).requires_grad_(),
                                  torch.rand(4, generator=g).to(device).requires_grad_(), perturb, 0.5)))
    return out
