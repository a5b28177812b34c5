"""Image metrics of the MNIST family, as the mode-collapse literature scores them.

    mode_stats(labels, n_modes)        modes covered and KL(p_gen || uniform) of a label histogram
    frechet_distance(mu1, s1, mu2, s2) ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), float64
    gaussian_stats(features)           (mean, covariance) in float64
    kid(f1, f2, ...)                   the unbiased MMD^2 with the cubic polynomial kernel (KID), mean and std
                                       over subsets
    MNISTScorer(kind)                  the reference classifier + the test set's features: .score(images)
    inception_fid_kid(fake, real)      Inception FID / KID through torchmetrics (optional: ganfast[fid])

Stacked MNIST (PacGAN, Lin et al. 2018, after VEEGAN, Srivastava et al. 2017): the classifier labels
each of the three channels of 26,000 generated samples; the mode of a sample is 100*R + 10*G + B; the
figures are the number of the 1000 modes that appear at least once and KL(p || uniform) =
sum_k p_k log(p_k * 1000) of the mode histogram p (natural log, 0 log 0 = 0). MNIST: the same over 10
digit classes. For Stacked MNIST the score also gives each channel's KL over its 10 digits
(`channel_kl`, R, G, B): the channels are independent, so a mode KL far above their sum means the
channels' digits are correlated, and one large channel KL points at the channel G draws badly.

The Fréchet distance and KID here are computed on the reference classifier's penultimate features
(128-d per digit; for Stacked MNIST the three channels' features concatenated, 384-d) against the
MNIST test set (for Stacked MNIST, 10,000 test stacks drawn with a fixed seed). They are "classifier
FD / KID", comparable between ganfast runs, not Inception FID.
"""
from __future__ import annotations

import torch

__all__ = ["MNISTScorer", "frechet_distance", "gaussian_stats", "kid", "mode_stats", "N_MODE_SAMPLES"]

N_MODE_SAMPLES = 26_000  # the published protocol's sample count
TEST_STACK_SEED = 20180  # the seed of the Stacked MNIST test stacks (FD / KID reference)


def mode_stats(labels: torch.Tensor, n_modes: int) -> dict:
    """{"modes": how many of the n_modes labels occur, "kl": KL(histogram || uniform) in nats,
    "n": the sample count} of integer labels in [0, n_modes)."""
    labels = torch.as_tensor(labels).reshape(-1).long()
    if labels.numel() == 0:
        raise ValueError("mode_stats needs at least one label")
    if int(labels.min()) < 0 or int(labels.max()) >= n_modes:
        raise ValueError(f"labels must lie in [0, {n_modes}), got {int(labels.min())}..{int(labels.max())}")
    counts = torch.bincount(labels, minlength=n_modes).double()
    p = counts / counts.sum()
    nz = p > 0
    kl = float((p[nz] * torch.log(p[nz] * n_modes)).sum())
    return {"modes": int(nz.sum()), "kl": max(kl, 0.0), "n": int(labels.numel())}


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (d,), covariance (d, d), unbiased) of (n, d) features, in float64."""
    f = torch.as_tensor(features).double()
    if f.dim() != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be (n >= 2, d), got {tuple(f.shape)}")
    mu = f.mean(0)
    c = f - mu
    return mu, c.T @ c / (f.shape[0] - 1)


def _sqrt_psd(s: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(s)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """The Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2), in float64:
    ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)). tr((S1 S2)^(1/2)) is the sum of the
    square roots of the eigenvalues of S1^(1/2) S2 S1^(1/2), which is symmetric PSD: eigh, no
    complex sqrtm."""
    mu1, mu2 = torch.as_tensor(mu1).double(), torch.as_tensor(mu2).double()
    s1, s2 = torch.as_tensor(sigma1).double(), torch.as_tensor(sigma2).double()
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"shapes do not match: mu {tuple(mu1.shape)}, {tuple(mu2.shape)}; sigma "
                         f"{tuple(s1.shape)}, {tuple(s2.shape)}")
    r1 = _sqrt_psd((s1 + s1.T) / 2)
    m = r1 @ ((s2 + s2.T) / 2) @ r1
    tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    fd = float((mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * tr_sqrt)
    return max(fd, 0.0)


def _mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3 (Binkowski et al. 2018): the means of k over
    distinct pairs within x and within y, minus twice the mean over all x-y pairs."""
    d = x.shape[1]
    kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
    m, n = x.shape[0], y.shape[0]
    within_x = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    within_y = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(within_x + within_y - 2 * kxy.mean())


def kid(f1: torch.Tensor, f2: torch.Tensor, subsets: int = 100, subset_size: int = 1000,
        generator: torch.Generator | None = None) -> tuple[float, float]:
    """KID between two feature sets (n, d): the unbiased MMD^2 (cubic polynomial kernel) averaged over
    `subsets` random subsets of min(subset_size, n1, n2) from each (drawn without replacement within
    a subset); returns (mean, std over subsets)."""
    f1, f2 = torch.as_tensor(f1).double(), torch.as_tensor(f2).double()
    if f1.dim() != 2 or f2.dim() != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"features must be (n, d) with the same d, got {tuple(f1.shape)} and {tuple(f2.shape)}")
    m = min(subset_size, f1.shape[0], f2.shape[0])
    if m < 2:
        raise ValueError("KID needs at least 2 samples on each side")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    vals = torch.tensor([_mmd2_unbiased(f1[torch.randperm(f1.shape[0], generator=generator)[:m]],
                                        f2[torch.randperm(f2.shape[0], generator=generator)[:m]])
                         for _ in range(subsets)], dtype=torch.float64)
    return float(vals.mean()), float(vals.std()) if subsets > 1 else 0.0


class MNISTScorer:
    """Scores generated MNIST-family images with the reference classifier. kind: "mnist" (1 channel,
    10 classes) or "stacked-mnist" (3 channels, 1000 modes). score(images (N, C, 28 or 32, 28 or 32) in
    [-1, 1]) -> {modes, n_modes, kl, n_samples, classifier_fd, classifier_kid, classifier_kid_std}."""

    def __init__(self, kind: str, classifier=None, data_dir=None, batch: int = 2000, progress: bool = True):
        from . import classifier as clf
        from .mnist import StackedMNIST, load_mnist

        if kind not in ("mnist", "stacked-mnist"):
            raise ValueError(f"kind must be 'mnist' or 'stacked-mnist', got {kind!r}")
        self.kind, self.batch = kind, batch
        self.channels, self.n_modes = (1, 10) if kind == "mnist" else (3, 1000)
        if classifier is None:
            classifier, info = clf.reference_classifier(data_dir, progress=progress)
        else:
            info = {}
        self.model, self.classifier_info = classifier.eval(), info
        images, labels = load_mnist("test", data_dir)
        if kind == "mnist":
            test = images.float().div(127.5).sub(1.0).unsqueeze(1)  # (N, 1, 28, 28)
        else:
            seeded = torch.Generator().manual_seed(TEST_STACK_SEED)
            stacks = StackedMNIST(images, labels, n=len(labels), generator=seeded)
            test = images[stacks.triples].float().div(127.5).sub(1.0)  # (N, 3, 28, 28)
        self.test_images = test  # (N, C, 28, 28) float32 in [-1, 1]
        feats, _ = self.features_and_modes(test)
        self.test_mu, self.test_sigma = gaussian_stats(feats)
        self.test_features = feats

    @torch.no_grad()
    def features_and_modes(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (N, 128 * C) float64, modes (N,)) of images (N, C, 28|32, 28|32) in [-1, 1]."""
        from .mnist import to_28

        if images.dim() != 4 or images.shape[1] != self.channels:
            raise ValueError(f"{self.kind} images must be (N, {self.channels}, 28, 28) or (N, {self.channels}, 32, "
                             f"32), got {tuple(images.shape)}")
        feats, modes = [], []
        for chunk in images.split(self.batch):
            x = to_28(chunk.float().cpu()).clamp(-1, 1)
            b = x.shape[0]
            digits = x.reshape(b * self.channels, 1, 28, 28)  # each channel is one digit
            f = self.model.features(digits)
            labels = self.model.fc2(f).argmax(1).view(b, self.channels)
            feats.append(f.view(b, self.channels * f.shape[1]).double())
            weights = torch.tensor([10 ** (self.channels - 1 - c) for c in range(self.channels)])
            modes.append((labels * weights).sum(1))
        return torch.cat(feats), torch.cat(modes)

    def score(self, images: torch.Tensor, with_fd: bool = True, with_kid: bool = True,
              labels: torch.Tensor | None = None) -> dict:
        """Modes and KL(p || uniform); the classifier FD and KID against the test set; with `labels`
        (the classes a conditional G was asked for, one per image), label_hit_rate: the fraction of
        images the classifier puts in the class asked for."""
        feats, modes = self.features_and_modes(images)
        st = mode_stats(modes, self.n_modes)
        out = {"modes": st["modes"], "n_modes": self.n_modes, "kl": st["kl"], "n_samples": st["n"]}
        if labels is not None:
            if labels.shape != modes.shape:
                raise ValueError(f"labels must be one class per image, shape ({len(modes)},), got "
                                 f"{tuple(labels.shape)}")
            out["label_hit_rate"] = float((modes == labels.cpu()).double().mean())
        if self.channels > 1:  # mode = sum_c digit_c * 10^(C-1-c)
            digits = [modes // 10 ** (self.channels - 1 - c) % 10 for c in range(self.channels)]
            out["channel_kl"] = [mode_stats(d, 10)["kl"] for d in digits]
        if with_fd:
            mu, sigma = gaussian_stats(feats)
            out["classifier_fd"] = frechet_distance(mu, sigma, self.test_mu, self.test_sigma)
        if with_fd and with_kid:
            kid_mean, kid_std = kid(feats, self.test_features, subsets=10)
            out["classifier_kid"], out["classifier_kid_std"] = kid_mean, kid_std
        return out


def _to_uint8_rgb(x: torch.Tensor) -> torch.Tensor:
    x = x.float().cpu()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def inception_fid_kid(fake: torch.Tensor, real: torch.Tensor, batch: int = 200) -> dict:
    """Inception FID and KID of images (N, C, H, W) in [-1, 1] (grayscale repeated to RGB) through
    torchmetrics, which downloads its Inception weights on first use (none are shipped here)."""
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance
    except ImportError as e:
        raise ImportError(f"Inception FID (--fid) needs torchmetrics with its image extra, which is not installed "
                          f"here ({e}): pip install 'torchmetrics[image]' (ganfast's `fid` extra)") from e
    n = min(len(fake), len(real))
    fid = FrechetInceptionDistance(feature=2048)
    kid_metric = KernelInceptionDistance(subset_size=min(1000, n))
    for images, is_real in ((real, True), (fake, False)):
        for chunk in images.split(batch):
            u8 = _to_uint8_rgb(chunk)
            fid.update(u8, real=is_real)
            kid_metric.update(u8, real=is_real)
    kid_mean, kid_std = kid_metric.compute()
    return {"inception_fid": float(fid.compute()), "inception_kid": float(kid_mean),
            "inception_kid_std": float(kid_std),
            "inception_n_fake": len(fake), "inception_n_real": len(real)}
