"""Pictures of a GAN: samples, training curves, and what G and D do (`ganfast explore`).

    save_scatter(path, fake, real=None, mixture=None)            2-D samples over the data
    save_image_grid(path, images, nrow=8)                        images in [-1, 1] (value_range) -> PNG grid
    save_samples(path, samples, real=None, mixture=None)         either of the two, by shape
    plot_training_curves(csv_path_or_rows, out_path)             losses, logits, grad norms, sigma, modes
    latent_interpolation_grid(G, latent_dim, path, ...)          G along straight lines between random z
    latent_traversal(G, latent_dim, path, dims=None, ...)        G along single latent dimensions
    input_gradients(D, x) / saliency_maps(D, x, path, ...)       d D(x) / dx: D's saliency
    explore(G, D, latent_dim, kind, out_dir, real_samples)       all of the above -> {name: path}

Matplotlib is used through its object API with the Agg canvas (no pyplot, no global backend
switch); image grids are written with Pillow. Every function returns the path it wrote.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import torch

__all__ = ["explore", "image_range", "input_gradients", "latent_interpolation_grid", "latent_traversal",
           "plot_training_curves", "saliency_maps", "save_image_grid", "save_samples", "save_scatter"]


def _figure(figsize):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("plots need matplotlib: pip install matplotlib") from e
    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")
    return path


def _pil():
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError("image grids need Pillow: pip install pillow") from e
    return Image


def _cpu(x) -> torch.Tensor:
    return torch.as_tensor(x).detach().to("cpu", torch.float32)


def _points(x, name: str) -> torch.Tensor:
    x = _cpu(x)
    if x.dim() != 2 or x.shape[1] != 2:
        raise ValueError(f"{name} must be 2-D points of shape (N, 2), got {tuple(x.shape)}")
    return x


def _plane_limits(*clouds, mixture=None, margin: float = 0.25):
    """A square view holding the mode means (or, without a mixture, the given points)."""
    if mixture is not None:
        pts = _cpu(mixture.means)
        pad = max(margin * float((pts.max(0).values - pts.min(0).values).max()), 10 * mixture.std)
    else:
        pts = torch.cat([c[torch.isfinite(c).all(1)] for c in clouds if c is not None and len(c)])
        if len(pts) == 0:
            return (-1.0, 1.0), (-1.0, 1.0)
        lo, hi = pts.quantile(0.005, dim=0), pts.quantile(0.995, dim=0)
        pts = torch.stack([lo, hi])
        pad = margin * float((hi - lo).max()) + 1e-3
    lo, hi = pts.min(0).values - pad, pts.max(0).values + pad
    c, r = (lo + hi) / 2, float((hi - lo).max()) / 2
    return (float(c[0]) - r, float(c[0]) + r), (float(c[1]) - r, float(c[1]) + r)


def _draw_reference(ax, real=None, mixture=None):
    # mode means as thin grey crosses underneath, so tight real clusters (ring: std 0.01) stay visible
    if mixture is not None:
        m = _cpu(mixture.means)
        ax.scatter(m[:, 0], m[:, 1], s=80, marker="+", c="grey", linewidths=0.8, zorder=1, label="mode means")
    if real is not None:
        ax.scatter(real[:, 0], real[:, 1], s=6, c="tab:blue", alpha=0.5, linewidths=0, zorder=2, label="real")


# ----------------------------------------------------------------------------------------------
# Samples
# ----------------------------------------------------------------------------------------------
def save_scatter(path, fake, real=None, mixture=None, title: str | None = None) -> Path:
    """Generated points (orange) over real samples (blue) and the mixture's mode means (x)."""
    fake = _points(fake, "fake")
    real = None if real is None else _points(real, "real")
    fig = _figure((5, 5))
    ax = fig.add_subplot(1, 1, 1)
    _draw_reference(ax, real, mixture)
    ax.scatter(fake[:, 0], fake[:, 1], s=4, c="tab:orange", alpha=0.6, linewidths=0, zorder=3, label="generated")
    xl, yl = _plane_limits(fake, real, mixture=mixture)
    ax.set_xlim(*xl), ax.set_ylim(*yl), ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=7, markerscale=2)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def _grid_array(images, nrow: int, padding: int = 2, value_range=(-1.0, 1.0)) -> torch.Tensor:
    """(N, C, H, W) with values in value_range (black to white) -> uint8 (rows*(H+p)+p, nrow*(W+p)+p,
    C) with C in {1, 3}, white between the images."""
    lo, hi = (float(v) for v in value_range)
    if not hi > lo:
        raise ValueError(f"value_range must be (low, high) with low < high, got {tuple(value_range)}")
    x = _cpu(images)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or x.shape[0] == 0:
        raise ValueError(f"images must have shape (N, C, H, W) with N > 0, got {tuple(x.shape)}")
    n, c, h, w = x.shape
    if c not in (1, 3):
        x = x[:, :3] if c > 3 else x[:, :1]  # show the first channel(s) of unusual channel counts
        c = x.shape[1]
    x = ((x.clamp(lo, hi) - lo) * (255.0 / (hi - lo))).round().to(torch.uint8)
    nrow = max(1, min(int(nrow), n))
    rows = math.ceil(n / nrow)
    grid = torch.full((c, rows * (h + padding) + padding, nrow * (w + padding) + padding), 255, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top:top + h, left:left + w] = x[i]
    return grid.permute(1, 2, 0)


def save_image_grid(path, images, nrow: int = 8, padding: int = 2, scale: int | None = None,
                    value_range=(-1.0, 1.0)) -> Path:
    """Images (N, C, H, W) with values in value_range ([-1, 1] by default; (0, 1) for data in [0, 1])
    as one PNG grid, `nrow` images per row. Small images are enlarged (nearest neighbour) by
    `scale`, by default so each image is at least 64 px."""
    Image = _pil()
    grid = _grid_array(images, nrow, padding, value_range)
    h = _cpu(images).shape[-2]
    scale = max(1, 64 // h) if scale is None else int(scale)
    arr = grid.numpy()
    img = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr, mode="L" if arr.shape[2] == 1 else "RGB")
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return path


def image_range(real) -> tuple[float, float]:
    """The black-to-white scale of pictures of data like `real`: (0, 1) for data in [0, 1] (a
    sigmoid generator's), (-1, 1) for data in [-1, 1] (a tanh generator's), else the data's own
    (min, max)."""
    x = _cpu(real).float()
    lo, hi = (float(v) for v in torch.aminmax(x)) if x.numel() else (-1.0, 1.0)
    if lo >= 0.0 and hi <= 1.0:
        return (0.0, 1.0)
    if lo >= -1.0 and hi <= 1.0:
        return (-1.0, 1.0)
    return (lo, hi) if hi > lo else (lo - 1.0, hi + 1.0)


def save_samples(path, samples, real=None, mixture=None, nrow: int = 8, title: str | None = None) -> Path:
    """Either picture by the samples' shape: (N, 2) points -> save_scatter, (N, C, H, W) images ->
    save_image_grid on the scale of the real images when given (image_range), else [-1, 1]."""
    x = _cpu(samples)
    if x.dim() == 2 and x.shape[1] == 2:
        return save_scatter(path, x, real, mixture, title=title)
    if x.dim() == 4:
        return save_image_grid(path, x, nrow=nrow, value_range=image_range(real) if real is not None else (-1.0, 1.0))
    raise ValueError(f"samples must be points (N, 2) or images (N, C, H, W), got {tuple(x.shape)}")


# ----------------------------------------------------------------------------------------------
# Training curves
# ----------------------------------------------------------------------------------------------
CURVE_PANELS = (
    ("losses", ("d_loss", "g_loss"), False),
    ("D logits (mean)", ("real_mean", "fake_mean"), False),
    ("gradient norms", ("d_grad_norm", "g_grad_norm"), True),
    ("penalty", ("penalty",), False),
    ("spectral norm σ", ("sigma_max", "sigma_min"), False),
    ("modes captured", ("modes_captured",), False),
    ("high-quality samples", ("hq_fraction",), False),
    ("KL(modes || uniform)", ("mode_kl",), True),
    ("classifier FD (MNIST family)", ("classifier_fd",), True),
)


def _to_float(v) -> float:
    if v is None:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan  # empty CSV cell or text


def _load_rows(source) -> list[dict]:
    if isinstance(source, (str, Path)):
        p = Path(source)
        if not p.is_file():
            raise FileNotFoundError(f"metrics CSV {str(p)!r} does not exist")
        with open(p, newline="") as f:
            return list(csv.DictReader(f))
    return list(source)


def plot_training_curves(source, out_path) -> Path:
    """One subplot per group of columns present in `source` (a CSV path or a list of dicts):
    d_loss/g_loss, real_mean/fake_mean, d_grad_norm/g_grad_norm (log scale), penalty,
    sigma_max/sigma_min, modes_captured, hq_fraction. Missing columns and empty cells are skipped;
    the x axis is `step` where present, else the row number."""
    rows = _load_rows(source)
    if not rows:
        raise ValueError("no rows to plot: the metrics log is empty")
    cols = {k for r in rows for k in r}
    xs = [_to_float(r.get("step")) for r in rows] if "step" in cols else list(range(len(rows)))
    panels = []
    for title, names, logy in CURVE_PANELS:
        series = []
        for name in names:
            if name in cols:
                pts = [(x, _to_float(r.get(name))) for x, r in zip(xs, rows)]
                pts = [(x, y) for x, y in pts if math.isfinite(x) and math.isfinite(y)]
                if pts:
                    series.append((name, pts))
        if series:
            panels.append((title, series, logy))
    if not panels:
        wanted = sorted({n for _, names, _ in CURVE_PANELS for n in names})
        raise ValueError(f"none of the plotted columns ({', '.join(wanted)}) has a value; columns: "
                         f"{', '.join(sorted(cols)) or 'none'}")
    ncols = 2 if len(panels) > 1 else 1
    nrows = math.ceil(len(panels) / ncols)
    fig = _figure((5.5 * ncols, 3.0 * nrows))
    for i, (title, series, logy) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for name, pts in series:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1, label=name,
                    marker="o" if len(pts) < 30 else None, ms=3)
        if logy and all(p[1] > 0 for _, pts in series for p in pts):
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out_path)


# ----------------------------------------------------------------------------------------------
# Latent space
# ----------------------------------------------------------------------------------------------
def _device(module: torch.nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def _generate(G, z: torch.Tensor) -> torch.Tensor:
    return G(z.to(_device(G))).detach().float().cpu()


def _slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation (White 2016): stays in the Gaussian's typical shell, unlike lerp.
    a, b (R, L); t (S,) -> (R, S, L). Falls back to lerp for (anti)parallel pairs."""
    an, bn = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    omega = torch.acos((an * bn).sum(1).clamp(-1 + 1e-7, 1 - 1e-7))[:, None, None]  # (R,1,1)
    t = t[None, :, None]
    so = torch.sin(omega)
    lerp = (1 - t) * a[:, None] + t * b[:, None]
    slerp = (torch.sin((1 - t) * omega) * a[:, None] + torch.sin(t * omega) * b[:, None]) / so
    return torch.where(so > 1e-4, slerp, lerp)


def _kind_of(out: torch.Tensor) -> str:
    if out.dim() == 2 and out.shape[1] == 2:
        return "points"
    if out.dim() == 4:
        return "images"
    raise ValueError(f"can only draw 2-D points (B, 2) or images (B, C, H, W); G gives {tuple(out.shape)}")


def _draw_paths(path, paths: torch.Tensor, labels, title: str, real=None, mixture=None) -> Path:
    """paths (R, S, 2): R polylines of S points, start marked with a circle."""
    fig = _figure((5, 5))
    ax = fig.add_subplot(1, 1, 1)
    _draw_reference(ax, None if real is None else _points(real, "real_samples"), mixture)
    try:
        from matplotlib import colormaps
        cmap = colormaps["tab10"]
    except ImportError:  # very old matplotlib
        from matplotlib import cm
        cmap = cm.get_cmap("tab10")
    for r in range(paths.shape[0]):
        color = cmap(r % 10)
        ax.plot(paths[r, :, 0], paths[r, :, 1], "-", color=color, lw=1, alpha=0.8,
                label=None if labels is None else labels[r])
        ax.scatter(paths[r, :, 0], paths[r, :, 1], s=10, color=color)
        ax.scatter(paths[r, :1, 0], paths[r, :1, 1], s=40, facecolors="none", edgecolors=color)
    xl, yl = _plane_limits(paths.reshape(-1, 2), mixture=mixture)
    ax.set_xlim(*xl), ax.set_ylim(*yl), ax.set_aspect("equal")
    ax.set_title(title, fontsize=10)
    if labels is not None:
        ax.legend(fontsize=7, loc="upper right")
    return _save(fig, path)


def latent_interpolation_grid(G, latent_dim: int, path, n_rows: int = 8, n_steps: int = 10,
                              generator: torch.Generator | None = None, real=None, mixture=None) -> Path:
    """n_rows pairs of random z ~ N(0, I), each walked in n_steps spherical-interpolation steps.
    Images: one row of the grid per pair. Points: each walk drawn as a path over the data."""
    if n_rows < 1 or n_steps < 2:
        raise ValueError(f"need n_rows >= 1 and n_steps >= 2, got {n_rows}, {n_steps}")
    a = torch.randn(n_rows, latent_dim, generator=generator)
    b = torch.randn(n_rows, latent_dim, generator=generator)
    z = _slerp(a, b, torch.linspace(0, 1, n_steps)).reshape(n_rows * n_steps, latent_dim)
    out = _generate(G, z)
    if _kind_of(out) == "images":
        return save_image_grid(path, out, nrow=n_steps)
    return _draw_paths(path, out.reshape(n_rows, n_steps, 2), None,
                       f"latent interpolation ({n_rows} random pairs)", real, mixture)


def latent_traversal(G, latent_dim: int, path, dims=None, n_steps: int = 9, span: float = 3.0,
                     base: torch.Tensor | None = None, generator: torch.Generator | None = None,
                     real=None, mixture=None) -> Path:
    """Vary one latent coordinate at a time over [-span, span] from a base point (random unless
    given), the others fixed. Images: one row per dimension. Points: one path per dimension.
    dims default to the first min(latent_dim, 10)."""
    dims = list(range(min(latent_dim, 10))) if dims is None else [int(d) for d in dims]
    if not dims or any(not 0 <= d < latent_dim for d in dims):
        raise ValueError(f"dims must be non-empty indices in [0, {latent_dim}), got {dims}")
    if n_steps < 2:
        raise ValueError(f"n_steps must be >= 2, got {n_steps}")
    base = torch.randn(latent_dim, generator=generator) if base is None else _cpu(base).reshape(latent_dim)
    values = torch.linspace(-span, span, n_steps)
    z = base.repeat(len(dims), n_steps, 1)  # (dims, steps, latent)
    for i, d in enumerate(dims):
        z[i, :, d] = values
    out = _generate(G, z.reshape(-1, latent_dim))
    if _kind_of(out) == "images":
        return save_image_grid(path, out, nrow=n_steps)
    return _draw_paths(path, out.reshape(len(dims), n_steps, 2), [f"z[{d}]" for d in dims],
                       f"latent traversal (z[d] from {-span:g} to {span:g})", real, mixture)


# ----------------------------------------------------------------------------------------------
# Discriminator saliency
# ----------------------------------------------------------------------------------------------
def input_gradients(D, x: torch.Tensor) -> torch.Tensor:
    """dD(x_i)/dx_i for each sample (same shape as x), by one backward of sum_i D(x_i): per-sample
    exact when D treats samples independently (no batch norm in train mode). D's parameters'
    .grad are left untouched."""
    dev = _device(D)
    x = _cpu(x).to(dev).requires_grad_(True)
    with torch.enable_grad():
        out = D(x)
        (g,) = torch.autograd.grad(out.float().sum(), x)
    return g.detach().float().cpu()


def _saliency_points(path, D, x, mixture, fake=None, grid_n: int = 40) -> Path:
    x = _points(x, "x")
    fake = None if fake is None else _points(fake, "fake")
    xl, yl = _plane_limits(x, fake, mixture=mixture)
    gx, gy = torch.linspace(*xl, grid_n), torch.linspace(*yl, grid_n)
    xx, yy = torch.meshgrid(gx, gy, indexing="xy")
    plane = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
    grad = input_gradients(D, plane)
    with torch.no_grad():
        logits = D(plane.to(_device(D))).float().cpu().reshape(grid_n, grid_n)
    fig = _figure((6, 5))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(logits.numpy(), origin="lower", extent=(*xl, *yl), cmap="RdBu_r", alpha=0.8,
                   aspect="equal")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="D(x) logit")
    step = max(1, grid_n // 20)  # a sparser arrow field on top of the heat map
    sub = grad.reshape(grid_n, grid_n, 2)[::step, ::step]
    sub = sub / sub.norm(dim=2).amax().clamp_min(1e-12)  # arrow length ∝ |∇ₓD|, longest = 1
    ax.quiver(xx[::step, ::step], yy[::step, ::step], sub[..., 0], sub[..., 1], color="black",
              angles="xy", scale=22, width=0.003, alpha=0.7)
    _draw_reference(ax, x, mixture)
    if fake is not None:
        ax.scatter(fake[:, 0], fake[:, 1], s=4, c="tab:orange", linewidths=0, alpha=0.6, zorder=3, label="generated")
    ax.set_xlim(*xl), ax.set_ylim(*yl)
    ax.set_title("D's logit (colour) and input gradient ∇ₓD (arrows, length ∝ |∇ₓD|)", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    return _save(fig, path)


def _saliency_images(path, D, x) -> Path:
    x = _cpu(x)
    g = input_gradients(D, x).abs().amax(dim=1, keepdim=True)  # |dD/dx| max over channels
    g = g / g.flatten(1).amax(1).clamp_min(1e-12)[:, None, None, None]  # each map scaled to [0, 1]
    sal = (2 * g - 1).expand(-1, x.shape[1], -1, -1)  # to [-1, 1]: black = 0, white = max
    nrow = min(8, x.shape[0])
    rows = []
    for i in range(0, x.shape[0], nrow):  # a row of images, then the row of their saliency maps
        rows += [x[i:i + nrow], sal[i:i + nrow]]
    return save_image_grid(path, torch.cat(rows), nrow=nrow)


def saliency_maps(D, x, path, mixture=None, fake=None) -> Path:
    """D's saliency |∇ₓ D(x)|. Images (N, C, H, W): rows of samples, each followed by the row of
    their gradient-magnitude maps (max over channels, scaled per sample). Points (N, 2): D's logit
    as a heat map over the plane with arrows along ∇ₓD, and the samples x (and `fake`) on top."""
    xt = _cpu(x)
    if xt.dim() == 2:
        return _saliency_points(path, D, xt, mixture, fake)
    if xt.dim() == 4:
        return _saliency_images(path, D, xt)
    raise ValueError(f"x must be points (N, 2) or images (N, C, H, W), got {tuple(xt.shape)}")


# ----------------------------------------------------------------------------------------------
# Everything for `ganfast explore`
# ----------------------------------------------------------------------------------------------
def explore(G, D, latent_dim: int, kind: str, out_dir, real_samples, mixture=None,
            generator: torch.Generator | None = None, n_samples: int | None = None) -> dict[str, Path]:
    """Write samples, a latent interpolation grid, a latent traversal and D's saliency maps into
    out_dir; returns {name: path}. kind: "points" | "images"."""
    if kind not in ("points", "images"):
        raise ValueError(f"kind must be 'points' or 'images', got {kind!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    real = _cpu(real_samples)
    n = n_samples or (1000 if kind == "points" else 32)
    if len(real) > n:
        real = real[torch.randperm(len(real), generator=g)[:n]]
    fake = _generate(G, torch.randn(n, latent_dim, generator=g))
    paths = {}
    if kind == "points":
        paths["samples"] = save_scatter(out / "samples.png", fake, real, mixture, title="generated vs real")
        paths["interpolation"] = latent_interpolation_grid(G, latent_dim, out / "interpolation.png",
                                                           n_rows=6, n_steps=12, generator=g, mixture=mixture)
        paths["traversal"] = latent_traversal(G, latent_dim, out / "traversal.png", n_steps=15,
                                              generator=g, mixture=mixture)
        paths["saliency"] = saliency_maps(D, real, out / "saliency.png", mixture=mixture, fake=fake)
    else:
        paths["samples"] = save_image_grid(out / "samples.png", fake, nrow=8)
        paths["interpolation"] = latent_interpolation_grid(G, latent_dim, out / "interpolation.png",
                                                           n_rows=8, n_steps=10, generator=g)
        paths["traversal"] = latent_traversal(G, latent_dim, out / "traversal.png", n_steps=9, generator=g)
        k = min(16, len(real), len(fake))
        paths["saliency_real"] = saliency_maps(D, real[:k], out / "saliency_real.png")
        paths["saliency_fake"] = saliency_maps(D, fake[:k], out / "saliency_fake.png")
    return paths
