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
    if backend == "cuda" and not ops.has_cuda_multi():
        return out  # an extension built before the CUDA multi-tensor kernels
    multi, bwd_multi = (ops._multi_triton, ops._bwd_multi_triton) if backend == "triton" else (ops._multi, ops._bwd_multi)
    ws = [torch.randn(5, 3, generator=g).to(device).requires_grad_(),
          torch.randn(2, 3, 4, generator=g).to(device).requires_grad_()]
    us = [torch.nn.functional.normalize(torch.randn(5, generator=g), dim=0).to(device), torch.randn(3, generator=g).to(device)]
    vs = [torch.randn(3, generator=g).to(device), torch.randn(8, generator=g).to(device)]
    out += [(multi, (ws, us, vs, [0, 1], n_iter, 1e-12)) for n_iter in (0, 1)]
    _, u3, v3, s3 = multi(ws, us, vs, [0, 1], 1, 1e-12)
    out.append((bwd_multi, ([torch.randn_like(x) for x in ws], [x.detach() for x in ws], u3, v3, s3, [0, 1], 1e-12)))
    return out
