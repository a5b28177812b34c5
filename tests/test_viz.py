import csv

import pytest
import torch

pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")

from ganfast import viz  # noqa: E402
from ganfast.data import MIXTURES  # noqa: E402
from ganfast.models import build_models  # noqa: E402

RING = MIXTURES["ring"]


def _png(path, min_size=(20, 20)):
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.load()
        assert img.width >= min_size[0] and img.height >= min_size[1]
        return img.size, img.mode, img.copy()


def _gen():
    return torch.Generator().manual_seed(0)


def test_save_scatter(tmp_path):
    fake = torch.randn(200, 2, generator=_gen())
    p = viz.save_scatter(tmp_path / "s.png", fake, RING.sample(300, _gen()), RING, title="t")
    _png(p, (100, 100))
    _png(viz.save_scatter(tmp_path / "sub" / "s2.png", fake.numpy()))  # no reference, numpy, new folder
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        viz.save_scatter(tmp_path / "x.png", torch.zeros(5, 3))


def test_save_image_grid_layout(tmp_path):
    # 5 images of 4x4: 3 per row -> 2 rows; padding 2 -> 14 x 20 before scaling
    imgs = torch.full((5, 1, 4, 4), -1.0)
    imgs[1] = 1.0
    size, mode, img = _png(viz.save_image_grid(tmp_path / "g.png", imgs, nrow=3, scale=1), (1, 1))
    assert size == (3 * 6 + 2, 2 * 6 + 2) and mode == "L"
    assert img.getpixel((2, 2)) == 0          # first image is black (-1)
    assert img.getpixel((2 + 6, 2)) == 255    # second is white (+1)
    assert img.getpixel((0, 0)) == 255        # padding
    size, mode, _ = _png(viz.save_image_grid(tmp_path / "c.png", torch.rand(4, 3, 8, 8) * 2 - 1, nrow=2))
    assert mode == "RGB" and size == ((2 * 10 + 2) * 8, (2 * 10 + 2) * 8)  # default scale 64 // 8
    with pytest.raises(ValueError, match="N > 0"):
        viz.save_image_grid(tmp_path / "e.png", torch.zeros(0, 1, 4, 4))



def test_image_grids_on_the_datas_scale(tmp_path):
    """Data in [0, 1] (a sigmoid generator's) is drawn on (0, 1), not washed out to grey on [-1, 1];
    the trainer's sample pictures take the scale of the real images they train on."""
    imgs = torch.tensor([0.0, 0.5, 1.0]).reshape(3, 1, 1, 1).expand(3, 1, 4, 4)
    _, _, img = _png(viz.save_image_grid(tmp_path / "u.png", imgs, nrow=3, scale=1, value_range=(0, 1)), (1, 1))
    assert [img.getpixel((2 + 6 * i, 2)) for i in range(3)] == [0, 128, 255]
    _, _, img = _png(viz.save_image_grid(tmp_path / "s.png", imgs, nrow=3, scale=1), (1, 1))
    assert [img.getpixel((2 + 6 * i, 2)) for i in range(3)] == [128, 191, 255]  # on [-1, 1]
    assert viz.image_range(torch.rand(4, 1, 4, 4)) == (0.0, 1.0)
    assert viz.image_range(torch.rand(4, 1, 4, 4) * 2 - 1) == (-1.0, 1.0)
    assert viz.image_range(torch.tensor([-2.5, 3.0])) == (-2.5, 3.0)
    with pytest.raises(ValueError, match="low < high"):
        viz.save_image_grid(tmp_path / "x.png", imgs, value_range=(1, 1))
    import ganfast
    torch.manual_seed(0)
    G = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Sigmoid(), torch.nn.Unflatten(1, (1, 4, 4)))
    D = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 1))
    t = ganfast.Trainer(G, D, torch.optim.Adam(G.parameters()), torch.optim.Adam(D.parameters()), seed=0)
    t.fit(torch.rand(32, 1, 4, 4), steps=1, batch_size=8, log_dir=tmp_path / "run", sample_every=1, n_samples=8,
          progress=False)
    _, _, img = _png(next((tmp_path / "run" / "samples").glob("*.png")))
    fixed_z = t._noise(8, torch.Generator().manual_seed(t.seed + 2))  # fit's sample noise
    want = viz._grid_array(t.sample(8, z=fixed_z), 8, 2, (0, 1))[:, :, 0]
    got = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).reshape(img.height, img.width)[::16, ::16]
    assert torch.equal(got, want)

def test_plot_training_curves_csv_and_rows(tmp_path):
    rows = [{"step": i, "d_loss": 1.0 / (i + 1), "g_loss": 0.5 + 0.01 * i, "real_mean": 0.1 * i,
             "fake_mean": -0.1 * i, "d_grad_norm": 1 + i, "g_grad_norm": 2 + i,
             "sigma_max": 1.0, "sigma_min": 0.1, "modes_captured": "" if i % 5 else min(i, 8)}
            for i in range(40)]
    csv_path = tmp_path / "metrics.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    big, _, _ = _png(viz.plot_training_curves(csv_path, tmp_path / "curves.png"), (300, 300))
    # missing columns tolerated: only losses present -> a single, smaller panel
    small, _, _ = _png(viz.plot_training_curves([{"d_loss": 1.0, "g_loss": 2.0}, {"d_loss": 0.5}],
                                                tmp_path / "c2.png"))
    assert small[1] < big[1]
    with pytest.raises(ValueError, match="none of the plotted columns"):
        viz.plot_training_curves([{"foo": 1}], tmp_path / "c3.png")
    with pytest.raises(FileNotFoundError):
        viz.plot_training_curves(tmp_path / "missing.csv", tmp_path / "c4.png")


def _tiny(kind, shape):
    return build_models(kind, shape, latent_dim=3, width=8)


def test_latent_pictures_points(tmp_path):
    G, D, latent = _tiny("points", (2,))
    _png(viz.latent_interpolation_grid(G, latent, tmp_path / "i.png", n_rows=3, n_steps=5,
                                       generator=_gen(), mixture=RING))
    _png(viz.latent_traversal(G, latent, tmp_path / "t.png", dims=[0, 2], n_steps=4, generator=_gen()))
    with pytest.raises(ValueError, match="dims"):
        viz.latent_traversal(G, latent, tmp_path / "t2.png", dims=[3])


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
def test_latent_pictures_images(tmp_path, arch):
    G, D, latent = build_models("images", (1, 8, 8), latent_dim=3, arch=arch, width=4)
    size, _, _ = _png(viz.latent_interpolation_grid(G, latent, tmp_path / "i.png", n_rows=2, n_steps=3,
                                                    generator=_gen()))
    assert size == ((3 * 10 + 2) * 8, (2 * 10 + 2) * 8)  # 3 steps per row, 2 rows, scale 8
    size, _, _ = _png(viz.latent_traversal(G, latent, tmp_path / "t.png", n_steps=4, generator=_gen()))
    assert size == ((4 * 10 + 2) * 8, (3 * 10 + 2) * 8)  # one row per latent dim


def test_slerp_endpoints():
    a, b = torch.randn(4, 6, generator=_gen()), torch.randn(4, 6, generator=_gen())
    z = viz._slerp(a, b, torch.linspace(0, 1, 5))
    torch.testing.assert_close(z[:, 0], a)
    torch.testing.assert_close(z[:, -1], b)


def test_input_gradients_match_autograd_and_leave_params_alone():
    D = torch.nn.Sequential(torch.nn.Linear(2, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1))
    x = torch.randn(7, 2, generator=_gen())
    g = viz.input_gradients(D, x)
    for i in range(7):  # per-sample gradient, one sample at a time
        xi = x[i:i + 1].clone().requires_grad_(True)
        (gi,) = torch.autograd.grad(D(xi).sum(), xi)
        torch.testing.assert_close(g[i], gi[0])
    assert all(p.grad is None for p in D.parameters())


def test_saliency_maps(tmp_path):
    G, D, latent = _tiny("points", (2,))
    _png(viz.saliency_maps(D, RING.sample(100, _gen()), tmp_path / "p.png", mixture=RING,
                           fake=torch.randn(50, 2)), (100, 100))
    _, Di, _ = build_models("images", (3, 8, 8), arch="dcgan", width=4)
    size, mode, _ = _png(viz.saliency_maps(Di, torch.rand(5, 3, 8, 8) * 2 - 1, tmp_path / "im.png"))
    assert mode == "RGB" and size == ((5 * 10 + 2) * 8, (2 * 10 + 2) * 8)  # images row + maps row


@pytest.mark.parametrize("kind,shape", [("points", (2,)), ("images", (1, 8, 8))])
def test_explore_writes_all(tmp_path, kind, shape):
    G, D, latent = _tiny(kind, shape)
    real = RING.sample(400, _gen()) if kind == "points" else torch.rand(40, *shape) * 2 - 1
    paths = viz.explore(G, D, latent, kind, tmp_path / "explore", real,
                        mixture=RING if kind == "points" else None, n_samples=64 if kind == "points" else 8)
    expected = {"samples", "interpolation", "traversal"} | (
        {"saliency"} if kind == "points" else {"saliency_real", "saliency_fake"})
    assert set(paths) == expected
    for p in paths.values():
        assert p.parent == tmp_path / "explore"
        _png(p)
    with pytest.raises(ValueError, match="kind"):
        viz.explore(G, D, latent, "audio", tmp_path, real)


def test_save_samples_dispatches_on_shape(tmp_path):
    _, mode, _ = _png(viz.save_samples(tmp_path / "p.png", torch.randn(30, 2), RING.sample(30), RING))
    assert mode == "RGBA"  # matplotlib figure
    _, mode, _ = _png(viz.save_samples(tmp_path / "i.png", torch.zeros(4, 1, 8, 8)))
    assert mode == "L"     # Pillow grid
    with pytest.raises(ValueError, match="points .N, 2. or images"):
        viz.save_samples(tmp_path / "x.png", torch.zeros(4, 3))
