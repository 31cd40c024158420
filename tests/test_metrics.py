"""Tests for dalle2.eval.metrics: parity with torchmetrics, closed forms, brute-force references."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from dalle2.eval.metrics import clip_score, fd, feature_stats, frechet_distance, kid, precision_recall


class Identity(torch.nn.Module):
    """Feature 'network' that returns its input, so torchmetrics sees our feature arrays directly."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def two_gaussians(n: int = 500, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    real = rng.normal(size=(n, d))
    mix = rng.normal(size=(d, d)) / math.sqrt(d)
    fake = rng.normal(size=(n, d)) @ mix * 1.5 + 0.3
    return real, fake


# ----------------------------------------------------------------------------------------- FD


def test_feature_stats_matches_numpy() -> None:
    real, _ = two_gaussians(n=50, d=5)
    mu, sigma = feature_stats(real)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    np.testing.assert_allclose(mu, real.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(real, rowvar=False, ddof=1), rtol=1e-10, atol=1e-14)


def test_fd_matches_torchmetrics() -> None:
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake = two_gaussians()
    metric = FrechetInceptionDistance(feature=Identity(real.shape[1]))
    metric.update(torch.from_numpy(real), real=True)
    metric.update(torch.from_numpy(fake), real=False)
    expected = float(metric.compute())
    ours = fd(real, fake)
    assert expected > 1.0  # the two distributions really differ
    assert ours == pytest.approx(expected, rel=1e-3)
    # tighter in practice: both are float64
    assert ours == pytest.approx(expected, rel=1e-9)


def test_fd_matches_scipy_sqrtm() -> None:
    real, fake = two_gaussians(n=300, d=8, seed=1)
    mu1, s1 = feature_stats(real)
    mu2, s2 = feature_stats(fake)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_fd_closed_form_mean_shift() -> None:
    d = 8
    mu = np.linspace(-1.0, 2.0, d)
    eye = np.eye(d)
    assert frechet_distance(np.zeros(d), eye, mu, eye) == pytest.approx(float(mu @ mu), rel=1e-12)
    # large-sample estimate, loosely
    rng = np.random.default_rng(2)
    a = rng.normal(size=(20000, d))
    b = rng.normal(size=(20000, d)) + mu
    assert fd(a, b) == pytest.approx(float(mu @ mu), rel=0.03)


@pytest.mark.parametrize("s", [0.0, 0.5, 1.0, 2.0, 3.5])
def test_fd_closed_form_scale(s: float) -> None:
    d = 6
    zeros, eye = np.zeros(d), np.eye(d)
    assert frechet_distance(zeros, eye, zeros, s**2 * eye) == pytest.approx(d * (1 - s) ** 2, abs=1e-10)
    # same law with a non-diagonal covariance: FD(N(0, S), N(0, c^2 S)) = (1 - c)^2 Tr S
    rng = np.random.default_rng(3)
    a = rng.normal(size=(d, d))
    cov = a @ a.T + 0.1 * eye
    expected = (1 - s) ** 2 * np.trace(cov)
    assert frechet_distance(zeros, cov, zeros, s**2 * cov) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_fd_identical_and_symmetric() -> None:
    real, fake = two_gaussians(n=400, d=32, seed=4)
    assert fd(real, real) == pytest.approx(0.0, abs=1e-9)
    assert fd(real, real) >= 0.0
    assert fd(real, fake) == pytest.approx(fd(fake, real), rel=1e-9)


def test_fd_singular_covariances() -> None:
    # fewer samples than dimensions: both covariances are rank-deficient
    rng = np.random.default_rng(5)
    a = rng.normal(size=(20, 64))
    b = rng.normal(size=(30, 64)) + 0.5
    assert fd(a, a) == pytest.approx(0.0, abs=1e-9)
    value = fd(a, b)
    assert math.isfinite(value) and value > 0
    assert value == pytest.approx(fd(b, a), rel=1e-8)


def test_fd_accepts_torch_and_float32() -> None:
    real, fake = two_gaussians(n=200, d=8, seed=6)
    ref = fd(real, fake)
    assert fd(torch.from_numpy(real), torch.from_numpy(fake)) == pytest.approx(ref, rel=1e-12)
    r32 = torch.from_numpy(real).float().requires_grad_(True)
    f32 = fake.astype(np.float32)
    assert fd(r32, f32) == pytest.approx(ref, rel=1e-5)


def test_fd_negative_beyond_rounding_warns() -> None:
    d = 3
    with pytest.warns(RuntimeWarning, match="negative"):
        value = frechet_distance(np.zeros(d), -np.eye(d), np.zeros(d), -np.eye(d))
    assert value < 0


# ---------------------------------------------------------------------------------------- KID


def _torchmetrics_kid(real: np.ndarray, fake: np.ndarray, subsets: int, subset_size: int, seed: int):
    from torchmetrics.image.kid import KernelInceptionDistance

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "will save all extracted features in buffer"
        metric = KernelInceptionDistance(feature=Identity(real.shape[1]), subsets=subsets, subset_size=subset_size)
    metric.update(torch.from_numpy(real), real=True)
    metric.update(torch.from_numpy(fake), real=False)
    torch.manual_seed(seed)
    mean, std = metric.compute()
    return float(mean), float(std)


@pytest.mark.parametrize("shift", [0.0, 0.3])
def test_kid_matches_torchmetrics(shift: float) -> None:
    real, fake = two_gaussians(n=300, d=16, seed=7)
    if shift == 0.0:
        fake = np.random.default_rng(8).normal(size=(250, 16))  # same law, KID ~ 0
    else:
        fake = fake + shift
    exp_mean, exp_std = _torchmetrics_kid(real, fake, subsets=20, subset_size=100, seed=123)
    mean, std = kid(real, fake, num_subsets=20, subset_size=100, seed=123)
    assert mean == pytest.approx(exp_mean, rel=1e-4, abs=1e-6)
    assert std == pytest.approx(exp_std, rel=1e-4, abs=1e-6)


def test_kid_rng_options_agree() -> None:
    real, fake = two_gaussians(n=120, d=4, seed=9)
    by_seed = kid(real, fake, num_subsets=5, subset_size=50, seed=11)
    by_gen = kid(real, fake, num_subsets=5, subset_size=50, generator=torch.Generator().manual_seed(11))
    torch.manual_seed(11)
    by_global = kid(real, fake, num_subsets=5, subset_size=50, seed=None)
    assert by_seed == by_gen == by_global
    assert kid(real, fake, num_subsets=5, subset_size=50, seed=12) != by_seed


def _mmd2_brute(x: np.ndarray, y: np.ndarray) -> float:
    m, d = x.shape

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return (a @ b / d + 1.0) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_unbiased_mmd_brute_force_and_can_be_negative() -> None:
    rng = np.random.default_rng(10)
    x = rng.normal(size=(12, 5))
    y = rng.normal(size=(12, 5)) * 1.3 + 0.2
    # subset_size == N: each subset is the whole set, so the value is deterministic
    mean, std = kid(x, y, num_subsets=3, subset_size=12)
    assert mean == pytest.approx(_mmd2_brute(x, y), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)
    # the same set against itself: unbiased estimate is negative and must not be clamped
    neg, _ = kid(x, x, num_subsets=1, subset_size=12)
    assert neg < 0
    assert neg == pytest.approx(_mmd2_brute(x, x), rel=1e-10)


def test_kid_subset_size_too_large() -> None:
    real, fake = two_gaussians(n=50, d=4)
    with pytest.raises(ValueError, match="subset_size"):
        kid(real, fake, subset_size=51)
    with pytest.raises(ValueError, match="subset_size"):
        kid(real, fake[:20], subset_size=30)
    with pytest.raises(ValueError, match="subset_size"):
        kid(real, fake, subset_size=1)
    with pytest.raises(ValueError, match="num_subsets"):
        kid(real, fake, num_subsets=0, subset_size=10)


# -------------------------------------------------------------------------- precision / recall


def _pr_brute(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    def radii(x: np.ndarray) -> np.ndarray:
        out = []
        for i in range(len(x)):
            dists = sorted(np.linalg.norm(x[i] - x[j]) for j in range(len(x)) if j != i)
            out.append(dists[k - 1])
        return np.array(out)

    def coverage(points: np.ndarray, centres: np.ndarray, r: np.ndarray) -> float:
        inside = [any(np.linalg.norm(p - c) <= rc for c, rc in zip(centres, r, strict=True)) for p in points]
        return float(np.mean(inside))

    r_real, r_fake = radii(real), radii(fake)
    return coverage(fake, real, r_real), coverage(real, fake, r_fake)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_precision_recall_brute_force(k: int) -> None:
    rng = np.random.default_rng(20 + k)
    real = rng.normal(size=(60, 3))
    fake = rng.normal(size=(45, 3)) * 0.5 + np.array([2.5, 0.0, -0.5])
    expected = _pr_brute(real, fake, k)
    assert 0 < expected[0] < 1 and 0 < expected[1] < 1  # a non-trivial case
    got = precision_recall(real, fake, k=k, chunk_size=7)  # small chunks exercise the batching
    assert got == pytest.approx(expected, abs=1e-12)
    assert precision_recall(torch.from_numpy(real), fake, k=k) == got


def test_precision_recall_identical_and_disjoint() -> None:
    rng = np.random.default_rng(30)
    real = rng.normal(size=(200, 8))
    assert precision_recall(real, real.copy()) == (1.0, 1.0)
    far = rng.normal(size=(150, 8)) + 100.0
    assert precision_recall(real, far) == (0.0, 0.0)


def test_precision_recall_tight_subset() -> None:
    rng = np.random.default_rng(31)
    real = rng.normal(size=(1000, 4))
    fake = rng.normal(size=(300, 4)) * 0.05  # collapsed onto the middle of the real cloud
    precision, recall = precision_recall(real, fake)
    assert precision >= 0.99
    assert recall <= 0.1


def test_precision_recall_validation() -> None:
    real = np.zeros((3, 2))
    with pytest.raises(ValueError, match="at least 4 samples"):
        precision_recall(real, np.ones((10, 2)), k=3)
    with pytest.raises(ValueError, match="k must"):
        precision_recall(np.ones((10, 2)), np.ones((10, 2)), k=0)


# ------------------------------------------------------------------------------------- CLIP score


def test_clip_score_known_angles() -> None:
    e = np.eye(3)
    assert clip_score(e[:1] * 3.0, e[:1] * 0.5) == pytest.approx(100.0)  # parallel
    assert clip_score(e[:1], e[1:2]) == pytest.approx(0.0, abs=1e-12)  # orthogonal
    assert clip_score(e[:1], -2.0 * e[:1]) == 0.0  # opposite: clamped
    theta = 0.7
    img = np.array([[1.0, 0.0, 0.0]])
    txt = np.array([[math.cos(theta), math.sin(theta), 0.0]]) * 4.0
    assert clip_score(img, txt) == pytest.approx(100 * math.cos(theta), rel=1e-12)
    # mean over paired rows, negatives clamped per row before averaging
    imgs = np.concatenate([img, e[:1], e[:1]])
    txts = np.concatenate([txt, e[:1], -e[:1]])
    assert clip_score(torch.from_numpy(imgs), txts) == pytest.approx((100 * math.cos(theta) + 100 + 0) / 3)


def test_clip_score_validation() -> None:
    with pytest.raises(ValueError, match="paired rows"):
        clip_score(np.ones((3, 4)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="zero norm"):
        clip_score(np.zeros((1, 4)), np.ones((1, 4)))


# ------------------------------------------------------------------------------------ validation


def test_input_validation() -> None:
    good = np.ones((10, 4))
    with pytest.raises(ValueError, match="2-D"):
        fd(np.ones(10), good)
    with pytest.raises(ValueError, match="feature dimension"):
        fd(good, np.ones((10, 5)))
    with pytest.raises(ValueError, match="at least 2 samples"):
        fd(np.ones((1, 4)), good)
    with pytest.raises(ValueError, match="at least 2 samples"):
        feature_stats(np.ones((1, 4)))
    with pytest.raises(ValueError, match="NaN"):
        fd(np.full((10, 4), np.nan), good)
    with pytest.raises(ValueError, match="numpy array or a torch tensor"):
        fd([[1.0, 2.0], [3.0, 4.0]], good)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="real numbers"):
        fd(good.astype(complex), good)
    with pytest.raises(ValueError, match="feature dimension"):
        kid(good, np.ones((10, 3)), subset_size=5)
    with pytest.raises(ValueError, match="feature dimension"):
        precision_recall(good, np.ones((10, 3)))
    d = 3
    with pytest.raises(ValueError, match="shape"):
        frechet_distance(np.zeros(d), np.eye(d), np.zeros(d + 1), np.eye(d + 1))
    with pytest.raises(ValueError, match="sigma2"):
        frechet_distance(np.zeros(d), np.eye(d), np.zeros(d), np.eye(d + 1))
    with pytest.raises(ValueError, match="symmetric"):
        frechet_distance(np.zeros(d), np.eye(d), np.zeros(d), np.triu(np.ones((d, d))))
