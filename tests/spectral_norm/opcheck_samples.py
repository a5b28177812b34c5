"""opcheck samples of the spectral-norm ops (gathered by tests/test_ops.py)."""
import torch

from ganfast.ops import spectral_norm as ops
from ganfast.reference import spectral_norm as reference


def samples(backend: str, device: str):
    g = torch.Generator().manual_seed(5)
    shape, dim = (2, 5, 3), 1
    w = torch.randn(shape, generator=g).to(device).requires_grad_()
    outer, h, inner = reference.split_dims(shape, dim)
    u = torch.nn.functional.normalize(torch.randn(h, generator=g), dim=0).to(device)
    v = torch.nn.functional.normalize(torch.randn(outer * inner, generator=g), dim=0).to(device)
    fwd, bwd = (ops._fwd_triton, ops._bwd_triton) if backend == "triton" else (ops._fwd, ops._bwd)
    out = [(fwd, (w, u, v, dim, n_iter, 1e-12)) for n_iter in (0, 1)]
    _, u2, v2, sigma = fwd(w.detach(), u, v, dim, 1, 1e-12)
    out.append((bwd, (torch.randn(shape, generator=g).to(device), w.detach(), u2, v2, sigma, dim, 1e-12)))
    if backend == "cpu":  # the multi-tensor path is CPU only
        ws = [torch.randn(5, 3, generator=g, requires_grad=True), torch.randn(2, 3, 4, generator=g, requires_grad=True)]
        us = [torch.nn.functional.normalize(torch.randn(5, generator=g), dim=0), torch.randn(3, generator=g)]
        vs = [torch.randn(3, generator=g), torch.randn(8, generator=g)]
        out.append((ops._multi, (ws, us, vs, [0, 1], 1, 1e-12)))
        _, u3, v3, s3 = ops._multi(ws, us, vs, [0, 1], 1, 1e-12)
        out.append((ops._bwd_multi, ([torch.randn_like(x) for x in ws], [x.detach() for x in ws], u3, v3, s3,
                                     [0, 1], 1e-12)))
    return out
