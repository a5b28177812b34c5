"""ganfast.image_metrics and ganfast.classifier: modes/KL, Fréchet distance, KID, the cached classifier."""
import json
import math

import numpy as np
import pytest
import torch

from ganfast import classifier as clf
from ganfast import image_metrics as im


# --- modes and KL --------------------------------------------------------------------------------
def test_mode_stats_known_answers():
    uniform = im.mode_stats(torch.arange(1000).repeat(26), 1000)
    assert uniform == {"modes": 1000, "kl": 0.0, "n": 26000}
    one = im.mode_stats(torch.full((500,), 7), 10)
    assert one["modes"] == 1 and one["kl"] == pytest.approx(math.log(10), rel=1e-12)
    two = im.mode_stats(torch.tensor([3, 5] * 50), 10)  # p = 1/2, 1/2: KL = log(10 / 2)
    assert two["modes"] == 2 and two["kl"] == pytest.approx(math.log(5), rel=1e-12)
    # p = (1/2, 1/4, 1/4) over 1000 modes: sum p log(1000 p)
    three = im.mode_stats(torch.tensor([0, 0, 1, 2]), 1000)
    expect = 0.5 * math.log(500) + 2 * 0.25 * math.log(250)
    assert three["modes"] == 3 and three["kl"] == pytest.approx(expect, rel=1e-12)
    # 990 of 1000 modes, equally often: KL = log(1000 / 990)
    most = im.mode_stats(torch.arange(990).repeat(3), 1000)
    assert most["modes"] == 990 and most["kl"] == pytest.approx(math.log(1000 / 990), rel=1e-9)


def test_mode_stats_bad_labels():
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        im.mode_stats(torch.tensor([0, 10]), 10)
    with pytest.raises(ValueError, match="at least one"):
        im.mode_stats(torch.tensor([], dtype=torch.long), 10)


# --- Fréchet distance ---------------------------------------------------------------------------
def _random_orthogonal(d, seed):
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


@pytest.mark.parametrize("d", [1, 7, 64])
def test_frechet_closed_form_commuting_covariances(d):
    g = torch.Generator().manual_seed(d)
    mu1, mu2 = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    a = torch.rand(d, generator=g, dtype=torch.float64) * 3 + 0.01
    b = torch.rand(d, generator=g, dtype=torch.float64) * 3 + 0.01
    # diagonal: ||mu1 - mu2||^2 + sum (sqrt a - sqrt b)^2
    expect = float((mu1 - mu2).square().sum() + (a.sqrt() - b.sqrt()).square().sum())
    assert im.frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(expect, rel=1e-10, abs=1e-12)
    # the same in a rotated basis (commuting, non-diagonal): the distance does not change
    q = _random_orthogonal(d, d + 100)
    got = im.frechet_distance(q @ mu1, q @ torch.diag(a) @ q.T, q @ mu2, q @ torch.diag(b) @ q.T)
    assert got == pytest.approx(expect, rel=1e-9, abs=1e-10)


def test_frechet_against_scipy_sqrtm_and_self():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(0)
    d = 12
    x, y = rng.standard_normal((d, 3 * d)), rng.standard_normal((d, 2 * d))
    s1, s2 = x @ x.T / d, y @ y.T / d  # non-commuting SPD matrices
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    covmean = scipy_linalg.sqrtm(s1 @ s2).real
    expect = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))
    got = im.frechet_distance(torch.from_numpy(mu1), torch.from_numpy(s1), torch.from_numpy(mu2), torch.from_numpy(s2))
    assert got == pytest.approx(expect, rel=1e-8)
    assert im.frechet_distance(torch.from_numpy(mu1), torch.from_numpy(s1), torch.from_numpy(mu1),
                               torch.from_numpy(s1)) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="shapes"):
        im.frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(2), torch.eye(2))


def test_gaussian_stats_matches_numpy():
    f = torch.randn(200, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    mu, sigma = im.gaussian_stats(f)
    assert mu.dtype == torch.float64
    np.testing.assert_allclose(mu.numpy(), f.double().numpy().mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma.numpy(), np.cov(f.double().numpy(), rowvar=False), rtol=1e-10)


def test_frechet_of_samples_approaches_the_closed_form():
    g = torch.Generator().manual_seed(3)
    n, d = 200_000, 3
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    y = torch.randn(n, d, generator=g, dtype=torch.float64) + torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    expect = 1.0 + (1 - 1) ** 2 + (2 - 1) ** 2 + (0.5 - 1) ** 2
    got = im.frechet_distance(*im.gaussian_stats(x), *im.gaussian_stats(y))
    assert got == pytest.approx(expect, rel=0.02)


# --- KID -----------------------------------------------------------------------------------------
def _mmd2_by_loops(x, y):
    d = x.shape[1]
    k = lambda a, b: (float(a @ b) / d + 1) ** 3  # noqa: E731 - the kernel, written out
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_is_the_unbiased_polynomial_mmd():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(15, 4, generator=g, dtype=torch.float64)
    y = torch.randn(15, 4, generator=g, dtype=torch.float64) + 0.7
    mean, std = im.kid(x, y, subsets=3, subset_size=15)  # whole sets: every subset is the same
    assert mean == pytest.approx(_mmd2_by_loops(x, y), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_kid_near_zero_for_one_distribution_and_grows_with_a_shift():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(2000, 8, generator=g), torch.randn(2000, 8, generator=g)
    same, same_std = im.kid(x, y, subsets=20, subset_size=500)
    near, _ = im.kid(x, y + 0.3, subsets=20, subset_size=500)
    far, _ = im.kid(x, y + 1.0, subsets=20, subset_size=500)
    assert abs(same) < 3 * same_std + 1e-3  # unbiased: zero in expectation, may be negative
    assert 0 < near < far
    with pytest.raises(ValueError, match="same d"):
        im.kid(torch.zeros(5, 3), torch.zeros(5, 4))


# --- the classifier --------------------------------------------------------------------------------
@pytest.fixture
def one_thread():
    """Small convolutions on a shared 2-core machine: one thread is several times faster than two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_train_set(n=600, seed=0):
    """Synthetic 'digits': class k is a bright bar at rows 2k..2k+4, with noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = (torch.rand(n, 28, 28, generator=g) * 60).to(torch.uint8)
    for i, k in enumerate(labels.tolist()):
        images[i, 2 * k + 2:2 * k + 6, 4:24] = 255
    return images, labels


def test_cache_dir_overrides(monkeypatch, tmp_path):
    monkeypatch.setenv("GANFAST_CACHE", str(tmp_path / "a"))
    assert clf.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("GANFAST_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert clf.cache_dir() == tmp_path / "xdg" / "ganfast"


def test_train_save_load_and_checksum(tmp_path, one_thread):
    images, labels = tiny_train_set()
    model = clf.train_classifier((images, labels), epochs=2, subset=500, seed=0, batch_size=50, lr=3e-3)
    acc = clf.test_accuracy(model, images[500:], labels[500:])
    assert acc > 0.8  # the bars are easy; a broken training loop stays near 0.1
    again = clf.train_classifier((images, labels), epochs=2, subset=500, seed=0, batch_size=50, lr=3e-3)
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # seeded
    path = tmp_path / "c.pt"
    clf.save_classifier(model, path, {"test_accuracy": acc})
    loaded, info = clf.load_classifier(path)
    assert info["test_accuracy"] == acc and len(info["sha256"]) == 64
    x = images[:8].float().div(127.5).sub(1).unsqueeze(1)
    torch.testing.assert_close(loaded(x), model(x))
    assert loaded.features(x).shape == (8, clf.FEATURE_DIM)
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        loaded.features(torch.zeros(2, 3, 28, 28))
    # a changed file fails its checksum, with the way out
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(clf.ClassifierError, match="fails its checksum.*ganfast classifier"):
        clf.load_classifier(path)
    (tmp_path / "c.json").write_text(json.dumps({"no": "sha"}))
    with pytest.raises(clf.ClassifierError, match="not a classifier record"):
        clf.load_classifier(path)
    with pytest.raises(clf.ClassifierError, match="no MNIST classifier"):
        clf.load_classifier(tmp_path / "missing.pt")


def test_scorer_modes_on_stacked_digits(tmp_path, monkeypatch, one_thread):
    """MNISTScorer labels each channel: stacks of known digits give their known modes, with a
    classifier that reads them (trained on the synthetic bars, which is what the fake MNIST holds)."""
    from tests.test_mnist_data import fake_mnist

    monkeypatch.setenv("GANFAST_CACHE", str(tmp_path / "cache"))
    images, labels = tiny_train_set(800)
    model = clf.train_classifier((images, labels), epochs=2, seed=0, batch_size=50, lr=3e-3)
    test_images, test_labels = tiny_train_set(300, seed=1)
    assert clf.test_accuracy(model, test_images, test_labels) > 0.5
    fake_mnist(tmp_path / "data")  # only read for the test features here
    scorer = im.MNISTScorer("stacked-mnist", classifier=model, data_dir=tmp_path / "data")
    assert scorer.test_images.shape == (20, 3, 28, 28)
    digits = test_images.float().div(127.5).sub(1)
    stacks = torch.stack([digits[0:100], digits[100:200], digits[200:300]], 1)  # (100, 3, 28, 28)
    m = scorer.score(stacks, with_fd=False)
    predicted = model(digits.unsqueeze(1)).argmax(1)
    expect = im.mode_stats(predicted[0:100] * 100 + predicted[100:200] * 10 + predicted[200:300], 1000)
    assert (m["modes"], m["kl"], m["n_samples"]) == (expect["modes"], expect["kl"], 100)
    # each channel's digit KL is that of its own predicted digits
    assert m["channel_kl"] == pytest.approx([im.mode_stats(predicted[c * 100:(c + 1) * 100], 10)["kl"]
                                             for c in range(3)], abs=1e-12)
    padded = torch.nn.functional.pad(stacks, (2, 2, 2, 2), value=-1.0)
    assert scorer.score(padded, with_fd=False)["modes"] == m["modes"]
    with pytest.raises(ValueError, match=r"\(N, 3, 28, 28\)"):
        scorer.score(digits.unsqueeze(1))


def test_inception_fid_needs_torchmetrics():
    try:
        import torchmetrics  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"torchmetrics\[image\]"):
            im.inception_fid_kid(torch.zeros(4, 1, 28, 28), torch.zeros(4, 1, 28, 28))
    else:
        pytest.skip("torchmetrics is installed: the Inception path needs its weights download")
