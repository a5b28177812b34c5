"""Generators and discriminators for `ganfast train`: plain nn.Modules, no spectral norm inside
(the trainer applies it where asked).

    MLPGenerator / MLPDiscriminator        2-D points (the Gaussian mixtures)
    DCGANGenerator / DCGANDiscriminator    images, --arch dcgan (Radford et al. 2016)
    ResNetGenerator / ResNetDiscriminator  images, --arch resnet (SNGAN, Miyato et al. 2018)
    MinibatchStddev                        ProGAN's batch-variety feature for the image Ds (mbstd_group)
    build_models(kind, data_shape, latent_dim=None, arch=None, width=None, num_classes=None, pack=1,
                 d_width=None, mbstd_group=0) -> (G, D, latent_dim)

Every generator maps z (B, latent_dim) to a sample and has a `latent_dim` attribute; every
discriminator maps a batch to logits (B, 1). With num_classes=K each model is class-conditional,
called as G(z, y) and D(x, y) (y a LongTensor (B,)): G's batch norms become conditional ones
(ganfast.nn.ConditionalBatchNorm2d; the MLP adds a learned per-class offset to its first layer) and
D's last layer becomes a projection head (ganfast.nn.ProjectionHead) on its last features. Image
models take a square power-of-two resolution >= 8 (8, 16, 32, 64, ...) and any channel count; G ends
in tanh, so images are in [-1, 1].
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from .nn.conditional import ConditionalBatchNorm2d, ProjectionHead

__all__ = ["ARCHS", "DCGANDiscriminator", "DCGANGenerator", "MLPDiscriminator", "MLPGenerator", "MinibatchStddev",
           "ResNetDiscriminator", "ResNetGenerator", "build_models", "default_latent_dim"]

ARCHS = ("dcgan", "resnet")


def _check_positive(**kw) -> None:
    for name, v in kw.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")


def _n_doublings(resolution: int) -> int:
    """Number of 2x up/down steps between 4x4 and the resolution."""
    if (not isinstance(resolution, int) or resolution < 8 or resolution & (resolution - 1)):
        raise ValueError(f"image models need a square power-of-two resolution >= 8 (8, 16, 32, 64, ...), "
                         f"got {resolution!r}")
    return int(math.log2(resolution)) - 2


def _labels_for(num_classes, y, what: str):
    """y checked against the model's conditioning: labels iff num_classes."""
    if num_classes is None and y is not None:
        raise ValueError(f"this {what} is unconditional (num_classes=None) but got labels")
    if num_classes is not None and y is None:
        raise ValueError(f"this {what} is conditional (num_classes={num_classes}): call it with labels y")
    return y


class _LabelledSequential(nn.Sequential):
    """nn.Sequential that hands the labels y to its conditional batch norms."""

    def forward(self, x, y=None):
        for m in self:
            x = m(x, y) if isinstance(m, ConditionalBatchNorm2d) else m(x)
        return x


def _batch_norm(c: int, num_classes):
    return nn.BatchNorm2d(c) if num_classes is None else ConditionalBatchNorm2d(c, num_classes)


def _flat_latent(z: torch.Tensor, latent_dim: int) -> torch.Tensor:
    if z.dim() == 4 and z.shape[2:] == (1, 1):
        z = z.flatten(1)  # accept DCGAN-style (B, latent, 1, 1) noise too
    if z.dim() != 2 or z.shape[1] != latent_dim:
        raise ValueError(f"expected z of shape (B, {latent_dim}), got {tuple(z.shape)}")
    return z


# ----------------------------------------------------------------------------------------------
# 2-D points
# ----------------------------------------------------------------------------------------------
class MLPGenerator(nn.Module):
    """z (B, latent_dim) -> (B, out_dim): `depth` hidden layers of `hidden` ReLU units, linear out.
    Conditional: the first layer's pre-activation gets a learned per-class offset embed(y) (a linear
    layer on [z, one_hot(y)])."""

    def __init__(self, latent_dim: int = 2, out_dim: int = 2, hidden: int = 128, depth: int = 3,
                 num_classes: int | None = None):
        super().__init__()
        _check_positive(latent_dim=latent_dim, out_dim=out_dim, hidden=hidden, depth=depth)
        self.latent_dim, self.out_dim, self.num_classes = latent_dim, out_dim, num_classes
        layers, d = [], latent_dim
        for _ in range(depth):
            layers += [nn.Linear(d, hidden), nn.ReLU()]
            d = hidden
        layers.append(nn.Linear(d, out_dim))
        self.net = nn.Sequential(*layers)
        if num_classes is not None:
            self.embed = nn.Embedding(num_classes, hidden)
            nn.init.normal_(self.embed.weight, 0.0, 1.0 / math.sqrt(hidden))

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        z = _flat_latent(z, self.latent_dim)
        if _labels_for(self.num_classes, y, "generator") is None:
            return self.net(z)
        return self.net[1:](self.net[0](z) + self.embed(y))


class MLPDiscriminator(nn.Module):
    """x (B, in_dim) -> logits (B, 1): `depth` hidden layers of `hidden` LeakyReLU(0.2) units, then a
    linear layer, or a projection head on the last hidden layer when conditional."""

    def __init__(self, in_dim: int = 2, hidden: int = 128, depth: int = 3, negative_slope: float = 0.2,
                 num_classes: int | None = None):
        super().__init__()
        _check_positive(in_dim=in_dim, hidden=hidden, depth=depth)
        self.in_dim, self.num_classes = in_dim, num_classes
        layers, d = [], in_dim
        for _ in range(depth):
            layers += [nn.Linear(d, hidden), nn.LeakyReLU(negative_slope)]
            d = hidden
        if num_classes is None:
            layers.append(nn.Linear(d, 1))
        else:
            self.head = ProjectionHead(d, num_classes)
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"expected points of shape (B, {self.in_dim}), got {tuple(x.shape)}")
        if _labels_for(self.num_classes, y, "discriminator") is None:
            return self.net(x)
        return self.head(self.net(x), y)


# ----------------------------------------------------------------------------------------------
# DCGAN
# ----------------------------------------------------------------------------------------------
def _dcgan_init(module: nn.Module) -> None:
    # Radford et al.: conv weights ~ N(0, 0.02), batch-norm scales ~ N(1, 0.02)
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d) and m.affine:  # a conditional BN's γ, β start at 1, 0
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def _channels(width: int, level: int) -> int:
    """Feature maps `level` doublings below the image: width * 2^level, capped at 8 * width."""
    return width * min(2 ** level, 8)


def _extra_layers(resolution: int, extra_layers: int | None) -> int:
    # small images leave DCGAN only 1-2 layers deep; the WGAN reference code's `n_extra_layers`
    # (3x3 stride-1 convs at the finest feature map) adds capacity there
    if extra_layers is None:
        return 1 if resolution <= 16 else 0
    if not isinstance(extra_layers, int) or extra_layers < 0:
        raise ValueError(f"extra_layers must be a non-negative int, got {extra_layers!r}")
    return extra_layers


class MinibatchStddev(nn.Module):
    """Minibatch standard deviation (Karras et al. 2018, ProGAN, sec. 3; in StyleGAN2's grouped form):
    the standard deviation of every feature over a group of samples, averaged over the features and
    positions, appended to each sample of the group as one more constant channel. A G that covers
    too little of the data makes batches less varied than real ones, which D can then see.

    Groups are the samples i, i + M, i + 2M, ... (M = N / g), g = `group_size`, or its largest
    divisor of the batch size N when g does not divide N (g = 1: the channel is a constant)."""

    def __init__(self, group_size: int = 4):
        super().__init__()
        _check_positive(group_size=group_size)
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = next(d for d in range(min(self.group_size, n), 0, -1) if n % d == 0)
        y = x.reshape(g, n // g, c, h, w)
        y = (y - y.mean(dim=0)).square().mean(dim=0)  # variance over each group: (M, C, H, W)
        y = (y + 1e-8).sqrt().mean(dim=(1, 2, 3))  # mean standard deviation: (M,)
        y = y.reshape(1, n // g, 1, 1, 1).expand(g, n // g, 1, h, w).reshape(n, 1, h, w)
        return torch.cat([x, y], dim=1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}"


class DCGANGenerator(nn.Module):
    """z -> 4x4 (transposed conv) -> (BN, ReLU, 4x4 stride-2 transposed conv) x n -> tanh, with
    `extra_layers` 3x3 convs (BN, ReLU) before the last one (default: 1 up to 16x16, else 0)."""

    def __init__(self, latent_dim: int = 128, resolution: int = 32, channels: int = 3, width: int = 64,
                 extra_layers: int | None = None, num_classes: int | None = None):
        super().__init__()
        _check_positive(latent_dim=latent_dim, channels=channels, width=width)
        n = _n_doublings(resolution)
        extra = _extra_layers(resolution, extra_layers)
        self.latent_dim, self.resolution, self.channels = latent_dim, resolution, channels
        self.num_classes = num_classes
        k = num_classes
        c = _channels(width, n - 1)
        layers = [nn.ConvTranspose2d(latent_dim, c, 4, 1, 0, bias=False), _batch_norm(c, k), nn.ReLU(True)]
        for level in range(n - 2, -1, -1):  # 4 -> 8 -> ... -> resolution / 2
            c_out = _channels(width, level)
            layers += [nn.ConvTranspose2d(c, c_out, 4, 2, 1, bias=False), _batch_norm(c_out, k), nn.ReLU(True)]
            c = c_out
        for _ in range(extra):
            layers += [nn.Conv2d(c, c, 3, 1, 1, bias=False), _batch_norm(c, k), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(c, channels, 4, 2, 1), nn.Tanh()]  # last doubling to the image
        self.net = _LabelledSequential(*layers)
        _dcgan_init(self)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        y = _labels_for(self.num_classes, y, "generator")
        return self.net(_flat_latent(z, self.latent_dim)[:, :, None, None], y)


class DCGANDiscriminator(nn.Module):
    """image -> (4x4 stride-2 conv, LeakyReLU 0.2) x n -> 4x4 conv to one logit. No batch norm by
    default: it mixes samples of a batch, which breaks per-sample gradient penalties.
    `extra_layers` 3x3 convs follow the first one (default: 1 up to 16x16, else 0). Conditional: the
    last conv (a linear map of the 4x4 features) becomes a projection head on those features.
    mbstd_group > 0 appends a MinibatchStddev channel to the 4x4 features."""

    def __init__(self, resolution: int = 32, channels: int = 3, width: int = 64, batch_norm: bool = False,
                 extra_layers: int | None = None, num_classes: int | None = None, mbstd_group: int = 0):
        super().__init__()
        _check_positive(channels=channels, width=width)
        n = _n_doublings(resolution)
        extra = _extra_layers(resolution, extra_layers)
        self.resolution, self.channels, self.num_classes = resolution, channels, num_classes
        layers, c = [], channels
        for level in range(n):  # resolution -> ... -> 4
            c_out = _channels(width, level)
            layers.append(nn.Conv2d(c, c_out, 4, 2, 1, bias=not (batch_norm and level > 0)))
            if batch_norm and level > 0:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.LeakyReLU(0.2, True))
            c = c_out
            for _ in range(extra if level == 0 else 0):
                layers += [nn.Conv2d(c, c, 3, 1, 1), nn.LeakyReLU(0.2, True)]
        if mbstd_group:
            layers.append(MinibatchStddev(mbstd_group))
            c += 1
        if num_classes is None:
            layers.append(nn.Conv2d(c, 1, 4, 1, 0))  # 4x4 -> 1x1
        else:
            self.head = ProjectionHead(c * 16, num_classes)
        self.net = nn.Sequential(*layers)
        _dcgan_init(self)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        _check_image(x, self.channels, self.resolution)
        if _labels_for(self.num_classes, y, "discriminator") is None:
            return self.net(x).flatten(1)
        return self.head(self.net(x).flatten(1), y)


def _check_image(x: torch.Tensor, channels: int, resolution: int) -> None:
    if x.dim() != 4 or tuple(x.shape[1:]) != (channels, resolution, resolution):
        raise ValueError(f"expected images of shape (B, {channels}, {resolution}, {resolution}), "
                         f"got {tuple(x.shape)}")


# ----------------------------------------------------------------------------------------------
# SNGAN-style ResNet
# ----------------------------------------------------------------------------------------------
class GBlock(nn.Module):
    """BN-ReLU-up2-conv3-BN-ReLU-conv3, plus shortcut up2-conv1 (conditional batch norms when
    num_classes is given)."""

    def __init__(self, c_in: int, c_out: int, num_classes: int | None = None):
        super().__init__()
        self.bn1, self.bn2 = _batch_norm(c_in, num_classes), _batch_norm(c_out, num_classes)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, 1, 1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1, 1, 0)

    def forward(self, x, y=None):
        bn = (lambda m, h: m(h)) if y is None else (lambda m, h: m(h, y))
        h = F.interpolate(F.relu(bn(self.bn1, x)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(bn(self.bn2, self.conv1(h))))
        return h + self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest"))


class DBlock(nn.Module):
    """[ReLU]-conv3-ReLU-conv3-[avgpool2], plus shortcut conv1-[avgpool2]. The first block of the
    discriminator (`first=True`) skips the leading ReLU and pools before its shortcut conv
    (SNGAN's "optimized" block), since its input is the image itself."""

    def __init__(self, c_in: int, c_out: int, down: bool, first: bool = False):
        super().__init__()
        self.down, self.first = down, first
        self.conv1 = nn.Conv2d(c_in, c_out, 3, 1, 1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1, 1, 0) if (c_in != c_out or down or first) else None

    def forward(self, x):
        h = x if self.first else F.relu(x)
        h = self.conv2(F.relu(self.conv1(h)))
        if self.down:
            h = F.avg_pool2d(h, 2)
        s = x
        if self.shortcut is not None:
            if self.first:
                s = self.shortcut(F.avg_pool2d(x, 2) if self.down else x)
            else:
                s = self.shortcut(x)
                s = F.avg_pool2d(s, 2) if self.down else s
        return h + s


def _resnet_init(module: nn.Module) -> None:
    # SNGAN: Xavier-uniform, gain sqrt(2) on the residual convs, 1 on shortcuts and linear layers
    for name, m in module.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            gain = 1.0 if ("shortcut" in name or isinstance(m, nn.Linear) or name.endswith("to_rgb")) else math.sqrt(2)
            nn.init.xavier_uniform_(m.weight, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ResNetGenerator(nn.Module):
    """z -> linear to 4x4 -> GBlock (up 2x) x n -> BN-ReLU-conv3 -> tanh. Conditional: the blocks'
    batch norms are conditional (SNGAN's conditional generator; the last BN stays plain)."""

    def __init__(self, latent_dim: int = 128, resolution: int = 32, channels: int = 3, width: int = 64,
                 num_classes: int | None = None):
        super().__init__()
        _check_positive(latent_dim=latent_dim, channels=channels, width=width)
        n = _n_doublings(resolution)
        self.latent_dim, self.resolution, self.channels = latent_dim, resolution, channels
        self.num_classes = num_classes
        c = self._c0 = _channels(width, n)
        self.fc = nn.Linear(latent_dim, 4 * 4 * c)
        blocks = []
        for level in range(n - 1, -1, -1):
            blocks.append(GBlock(c, _channels(width, level), num_classes))
            c = _channels(width, level)
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(c)
        self.to_rgb = nn.Conv2d(c, channels, 3, 1, 1)
        _resnet_init(self)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        y = _labels_for(self.num_classes, y, "generator")
        h = self.fc(_flat_latent(z, self.latent_dim)).view(-1, self._c0, 4, 4)
        for block in self.blocks:
            h = block(h, y)
        return torch.tanh(self.to_rgb(F.relu(self.bn(h))))


class ResNetDiscriminator(nn.Module):
    """image -> DBlock (down 2x) x n to 4x4 -> DBlock -> ReLU -> sum over space -> linear (a projection
    head when conditional: SNGAN's projection discriminator). mbstd_group > 0 appends a
    MinibatchStddev channel to the input of the last DBlock."""

    def __init__(self, resolution: int = 32, channels: int = 3, width: int = 64, num_classes: int | None = None,
                 mbstd_group: int = 0):
        super().__init__()
        _check_positive(channels=channels, width=width)
        n = _n_doublings(resolution)
        self.resolution, self.channels, self.num_classes = resolution, channels, num_classes
        blocks, c = [], channels
        for level in range(n):
            c_out = _channels(width, level)
            blocks.append(DBlock(c, c_out, down=True, first=(level == 0)))
            c = c_out
        if mbstd_group:
            blocks.append(MinibatchStddev(mbstd_group))
        blocks.append(DBlock(c + (1 if mbstd_group else 0), c, down=False))
        self.blocks = nn.Sequential(*blocks)
        if num_classes is None:
            self.fc = nn.Linear(c, 1)
        else:
            self.head = ProjectionHead(c, num_classes)
        _resnet_init(self)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        _check_image(x, self.channels, self.resolution)
        h = F.relu(self.blocks(x)).sum(dim=(2, 3))
        if _labels_for(self.num_classes, y, "discriminator") is None:
            return self.fc(h)
        return self.head(h, y)


# ----------------------------------------------------------------------------------------------
# Factory
# ----------------------------------------------------------------------------------------------
def default_latent_dim(kind: str, data_shape=None) -> int:
    """2 for points (a 2-D plane mapped onto a 2-D mixture), 64 for images up to 16x16, else 128."""
    if kind == "points":
        return 2
    res = data_shape[-1] if data_shape is not None else 32
    return 64 if res <= 16 else 128


def build_models(kind: str, data_shape, latent_dim: int | None = None, arch: str | None = None,
                 width: int | None = None, num_classes: int | None = None,
                 pack: int = 1, d_width: int | None = None, mbstd_group: int = 0) -> tuple[nn.Module, nn.Module, int]:
    """(G, D, latent_dim) for data of `kind` ("points" | "images") whose samples have shape
    `data_shape` ((D,) or (C, H, W)). arch: for images "dcgan" (default) or "resnet"; for points
    only None or "mlp". width: hidden units (points, default 128) or the base channel count
    (images, default 64). num_classes: K for class-conditional models G(z, y), D(x, y). pack: D
    takes `pack` images at once on the channel axis (PacGAN; images, unconditional only). d_width: D's
    width when it differs from G's (images; width // 4 is the small-D setting of Metz et al. 2017 and
    PacGAN's Table 3). mbstd_group: a minibatch standard deviation channel in D over groups of this
    many of D's inputs (images; 0 for none; ProGAN and StyleGAN use 4)."""
    _check_positive(pack=pack)
    if isinstance(mbstd_group, bool) or not isinstance(mbstd_group, int) or mbstd_group < 0:
        raise ValueError(f"mbstd_group must be a non-negative int (0 for none), got {mbstd_group!r}")
    if d_width is not None:
        _check_positive(d_width=d_width)
    if num_classes is not None:
        _check_positive(num_classes=num_classes)
        if pack != 1:
            raise ValueError("pack (PacGAN) is for unconditional models: D would judge samples of several classes "
                             "as one")
    k = num_classes
    data_shape = tuple(int(s) for s in data_shape)
    if kind == "points":
        if pack != 1:
            raise ValueError("pack (PacGAN) is for images; the points' MLP D takes one sample at a time")
        if arch not in (None, "mlp"):
            raise ValueError(f"points use the MLP models; --arch {arch!r} is for images ({', '.join(ARCHS)})")
        if len(data_shape) != 1:
            raise ValueError(f"points must have shape (D,), got {data_shape}")
        if d_width is not None:
            raise ValueError("d_width is for images; the points' MLPs share one width")
        if mbstd_group:
            raise ValueError("mbstd_group (a minibatch standard deviation channel) is for the image discriminators")
        latent_dim = default_latent_dim(kind) if latent_dim is None else latent_dim
        hidden = 128 if width is None else width
        return (MLPGenerator(latent_dim, data_shape[0], hidden, num_classes=k),
                MLPDiscriminator(data_shape[0], hidden, num_classes=k), latent_dim)
    if kind == "images":
        arch = "dcgan" if arch is None else arch
        if arch not in ARCHS:
            raise ValueError(f"unknown image architecture {arch!r}; choose one of {', '.join(ARCHS)}")
        if len(data_shape) != 3 or data_shape[1] != data_shape[2]:
            raise ValueError(f"images must have shape (C, H, W) with H == W, got {data_shape}")
        c, res = data_shape[0], data_shape[1]
        latent_dim = default_latent_dim(kind, data_shape) if latent_dim is None else latent_dim
        width = 64 if width is None else width
        d_width = width if d_width is None else d_width
        if arch == "dcgan":
            return (DCGANGenerator(latent_dim, res, c, width, num_classes=k),
                    DCGANDiscriminator(res, c * pack, d_width, num_classes=k, mbstd_group=mbstd_group), latent_dim)
        return (ResNetGenerator(latent_dim, res, c, width, num_classes=k),
                ResNetDiscriminator(res, c * pack, d_width, num_classes=k, mbstd_group=mbstd_group), latent_dim)
    raise ValueError(f"kind must be 'points' or 'images', got {kind!r}")
