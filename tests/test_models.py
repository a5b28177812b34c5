import pytest
import torch

from ganfast import models


def _check_grads(G, D, latent_dim, n=3):
    z = torch.randn(n, latent_dim)
    out = D(G(z))
    assert out.shape == (n, 1)
    out.sum().backward()
    for name, p in list(G.named_parameters()) + list(D.named_parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_mlp_shapes_and_grads():
    G, D, latent = models.build_models("points", (2,), latent_dim=4, width=16)
    assert latent == 4 and G.latent_dim == 4
    assert isinstance(G, models.MLPGenerator) and isinstance(D, models.MLPDiscriminator)
    assert G(torch.randn(5, 4)).shape == (5, 2)
    _check_grads(G, D, latent)
    assert models.build_models("points", (2,))[2] == 2  # default latent
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        D(torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"z of shape \(B, 4\)"):
        G(torch.zeros(3, 5))


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 16, 16), (3, 32, 32), (2, 64, 64)])
def test_image_models_shapes(arch, shape):
    width = 8 if shape[-1] >= 32 else 16
    G, D, latent = models.build_models("images", shape, latent_dim=10, arch=arch, width=width)
    assert latent == 10 and G.latent_dim == 10
    x = G(torch.randn(2, 10))
    assert x.shape == (2, *shape)
    assert x.abs().max() <= 1  # tanh output
    assert D(x).shape == (2, 1)
    assert D(torch.randn(3, *shape)).shape == (3, 1)
    assert G(torch.randn(2, 10, 1, 1)).shape == (2, *shape)  # DCGAN-style noise


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
def test_image_models_get_gradients_digits(arch):
    G, D, latent = models.build_models("images", (1, 8, 8), arch=arch, width=8)
    _check_grads(G, D, latent)


def _n_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
def test_d_width_sizes_only_the_discriminator(arch):
    # the small-D setting: D at a quarter of G's channels, so about 1/16 of its conv weights
    G, D, _ = models.build_models("images", (3, 32, 32), arch=arch, width=16)
    G4, D4, _ = models.build_models("images", (3, 32, 32), arch=arch, width=16, d_width=4)
    assert _n_params(G4) == _n_params(G) and _n_params(D4) < _n_params(D) / 8
    assert D4(G4(torch.randn(2, G4.latent_dim))).shape == (2, 1)
    with pytest.raises(ValueError, match="d_width must be a positive int"):
        models.build_models("images", (3, 32, 32), d_width=0)
    with pytest.raises(ValueError, match="d_width is for images"):
        models.build_models("points", (2,), d_width=8)


def test_minibatch_stddev_against_its_definition():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 5, 3, 3, generator=g, dtype=torch.float64)
    out = models.MinibatchStddev(4)(x)
    assert out.shape == (12, 6, 3, 3) and torch.equal(out[:, :5], x)
    for i in range(12):  # sample i is grouped with i + 3k (M = 12 / 4 = 3 groups)
        group = x[i % 3::3]
        expected = (group.var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
        assert torch.allclose(out[i, 5], expected.expand(3, 3))
    # a batch that 4 does not divide uses the largest divisor below 4; groups of 1 are constant
    assert torch.allclose(models.MinibatchStddev(4)(x[:9])[:, 5], models.MinibatchStddev(3)(x[:9])[:, 5])
    assert torch.allclose(models.MinibatchStddev(4)(x[:7])[:, 5], torch.full((7, 3, 3), 1e-4, dtype=torch.float64))
    with pytest.raises(ValueError, match="positive int"):
        models.MinibatchStddev(0)


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
def test_mbstd_discriminator_sees_its_group_only(arch):
    """A sample's logit depends on the other members of its group and on no other sample."""
    torch.manual_seed(0)
    G, D, latent = models.build_models("images", (3, 16, 16), arch=arch, width=8, pack=2, mbstd_group=2)
    assert any(isinstance(m, models.MinibatchStddev) for m in D.modules())
    D(torch.cat([G(torch.randn(4, latent))] * 2, dim=1)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in list(G.parameters()) + list(D.parameters()))
    x = torch.randn(4, 6, 16, 16)
    y = x.clone()
    y[0] += 1.0  # groups are {0, 2} and {1, 3}
    changed = (D(x) - D(y)).abs().flatten() > 0
    assert changed.tolist() == [True, False, True, False]
    with pytest.raises(ValueError, match="mbstd_group must be a non-negative int"):
        models.build_models("images", (3, 16, 16), mbstd_group=-1)
    with pytest.raises(ValueError, match="for the image discriminators"):
        models.build_models("points", (2,), mbstd_group=4)


def test_default_sizes_and_no_spectral_norm():
    G, D, latent = models.build_models("images", (1, 8, 8))
    assert latent == 64
    assert models.build_models("images", (3, 32, 32), arch="resnet")[2] == 128
    for m in list(G.modules()) + list(D.modules()):
        assert not any("weight_orig" in n or "parametrizations" in n for n, _ in m.named_parameters())
    # D has no batch norm by default (per-sample penalties need per-sample logits)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in D.modules())
    d_bn = models.DCGANDiscriminator(16, 3, 8, batch_norm=True)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in d_bn.modules())


def test_bad_arguments():
    with pytest.raises(ValueError, match="power-of-two resolution"):
        models.build_models("images", (3, 28, 28))
    with pytest.raises(ValueError, match="H == W"):
        models.build_models("images", (3, 16, 32))
    with pytest.raises(ValueError, match="unknown image architecture 'vit'"):
        models.build_models("images", (3, 16, 16), arch="vit")
    with pytest.raises(ValueError, match="for images"):
        models.build_models("points", (2,), arch="dcgan")
    with pytest.raises(ValueError, match="kind must be"):
        models.build_models("audio", (2,))
    G, D, _ = models.build_models("images", (1, 8, 8), width=4)
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\)"):
        D(torch.zeros(2, 3, 8, 8))
