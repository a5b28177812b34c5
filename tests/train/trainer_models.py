"""Tiny models shared by the trainer tests (plain PyTorch: nothing ganfast-specific inside)."""
import torch
from torch import nn


def mlp_pair(latent=3, hidden=8, out=2, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    G = nn.Sequential(nn.Linear(latent, hidden), nn.Tanh(), nn.Linear(hidden, out)).to(dtype)
    D = nn.Sequential(nn.Linear(out, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                      nn.Linear(hidden, 1)).to(dtype)
    return G, D


def adam_pair(G, D, lr=1e-2):
    return (torch.optim.Adam(G.parameters(), lr, betas=(0.5, 0.9)),
            torch.optim.Adam(D.parameters(), lr, betas=(0.5, 0.9)))


def points(n=64, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g, dtype=dtype) * 0.5 + 1.0
