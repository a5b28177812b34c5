"""DiffAugment (Zhao et al. 2020) in plain PyTorch, given its random parameters: the oracle of the
fused kernels, written as the paper's transforms one after the other.

x: (B, C, H, W). Per sample b, with color = (β, s, k) and geometry = (dy, dx, y0, y1, x0, x1)
(ganfast.augment.draw_params draws them):
  brightness  y1 = x + β                                         β ~ U(-0.5, 0.5)
  saturation  y2 = (y1 - m_p) · s + m_p,  m_p = mean over C of y1 at pixel p     s ~ U(0, 2)
  contrast    y3 = (y2 - m) · k + m,      m = mean over C, H, W of y2           k ~ U(0.5, 1.5)
  translation t[c, i, j] = y3[c, i + dy, j + dx], 0 outside the image (zero padding)
  cutout      out = t, zeroed on rows [y0, y1) × columns [x0, x1)
`color` None skips the three color transforms. A sample drawn as not augmented has β = 0, s = k = 1,
dy = dx = 0 and an empty cutout box. Differentiable w.r.t. x by PyTorch's autograd.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def color(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Brightness, saturation, contrast; params (B, 3) = (β, s, k)."""
    beta, sat, con = (params[:, i].to(x.dtype).view(-1, 1, 1, 1) for i in range(3))
    x = x + beta
    m = x.mean(dim=1, keepdim=True)
    x = (x - m) * sat + m
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - m) * con + m


def translate(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """out[b, :, i, j] = x[b, :, i + dy_b, j + dx_b], 0 outside: a gather from x padded with zeros.
    Indices past the one-pixel pad are clamped onto it, so any shift reads zeros outside."""
    b, _, h, w = x.shape
    padded = F.pad(x, (1, 1, 1, 1))
    rows = (torch.arange(h, device=x.device) + dy.view(-1, 1).long() + 1).clamp(0, h + 1)  # (B, H)
    cols = (torch.arange(w, device=x.device) + dx.view(-1, 1).long() + 1).clamp(0, w + 1)  # (B, W)
    batch = torch.arange(b, device=x.device).view(-1, 1, 1)
    # (B, H, W, C) from advanced indexing of (B, C, H+2, W+2) over dims 0, 2, 3
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """x zeroed on rows [y0, y1) and columns [x0, x1) of each sample; box (B, 4) = (y0, y1, x0, x1)."""
    _, _, h, w = x.shape
    i = torch.arange(h, device=x.device).view(1, h, 1)
    j = torch.arange(w, device=x.device).view(1, 1, w)
    y0, y1, x0, x1 = (box[:, k].long().view(-1, 1, 1) for k in range(4))
    inside = (i >= y0) & (i < y1) & (j >= x0) & (j < x1)
    return x * (~inside).unsqueeze(1).to(x.dtype)


def diffaugment(x: torch.Tensor, color_params: torch.Tensor | None, geometry: torch.Tensor) -> torch.Tensor:
    """Color (when color_params is given), then translation, then cutout (module docstring)."""
    if color_params is not None:
        x = color(x, color_params)
    x = translate(x, geometry[:, 0], geometry[:, 1])
    return cutout(x, geometry[:, 2:6])
