"""Tiny models and helpers shared by the trainer tests (plain PyTorch: no ganfast import inside)."""
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


def recorded_batch_sizes(trainer) -> list[int]:
    """The sizes of the real batches the trainer's steps take (recorded as they come)."""
    sizes, step = [], trainer.step

    def recorded(real, return_stats=True):
        sizes.append((real[0] if isinstance(real, tuple) else real).shape[0])
        return step(real, return_stats)

    trainer.step = recorded
    return sizes


def points(n=64, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g, dtype=dtype) * 0.5 + 1.0


class CondG(nn.Module):
    """G(z, y) = out(tanh(in(z) + embed(y))): the class enters as a learned offset of the first layer."""

    def __init__(self, classes, latent=3, hidden=8, out=2):
        super().__init__()
        self.inp = nn.Linear(latent, hidden)  # first: the trainer infers latent size from it
        self.embed = nn.Embedding(classes, hidden)
        self.out = nn.Linear(hidden, out)

    def forward(self, z, y):
        return self.out(torch.tanh(self.inp(z) + self.embed(y)))


class CondD(nn.Module):
    """A projection discriminator in plain PyTorch: psi(h) + <embed(y), h>, h = phi(x)."""

    def __init__(self, classes, hidden=8, inp=2):
        super().__init__()
        self.phi = nn.Sequential(nn.Linear(inp, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())
        self.psi = nn.Linear(hidden, 1)
        self.embed = nn.Embedding(classes, hidden)

    def forward(self, x, y):
        h = self.phi(x)
        return self.psi(h) + (self.embed(y) * h).sum(1, keepdim=True)


def cond_mlp_pair(classes=3, dtype=torch.float32, seed=0, hidden=8):
    torch.manual_seed(seed)
    return CondG(classes, hidden=hidden).to(dtype), CondD(classes, hidden=hidden).to(dtype)


def labelled_points(n=64, classes=3, dtype=torch.float32, seed=1):
    """Points around class-dependent centres, and their labels."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    return torch.randn(n, 2, generator=g, dtype=dtype) * 0.3 + y[:, None].to(dtype), y
