"""Distribution and alignment metrics on feature arrays (specs/evaluation.md sections 2 and 4).

Every function accepts numpy arrays or torch tensors of shape ``(N, D)`` (any float dtype, any
device), converts them to float64 and returns Python floats (``feature_stats`` returns float64
numpy arrays, the usual format for stored reference statistics). Invalid inputs raise ``ValueError``.

- ``feature_stats`` / ``frechet_distance`` / ``fd``: Frechet distance (Heusel et al. 2017) between
  Gaussians fitted to two feature sets; equals torchmetrics' ``FrechetInceptionDistance`` on the
  same features. Name the number after the feature network (``FD_clip-shapes-v1``), never "FID".
- ``kid``: Kernel Inception Distance (Binkowski et al. 2018), unbiased MMD^2 with the kernel
  ``(x.y / d + 1)^3`` averaged over random subsets drawn exactly as torchmetrics'
  ``KernelInceptionDistance`` draws them, so equal seeds give equal numbers.
- ``precision_recall``: improved precision and recall (Kynkaanniemi et al. 2019), k-NN balls.
- ``clip_score``: mean of ``100 * max(cos(image, text), 0)`` over paired rows (Hessel et al. 2021).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

__all__ = ["clip_score", "fd", "feature_stats", "frechet_distance", "kid", "precision_recall"]

ArrayLike = np.ndarray | torch.Tensor

# A computed FD below zero is rounding error when it is within this fraction of Tr(S1) + Tr(S2).
_FD_ROUNDING_RTOL = 1e-8
_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _as_float64(x: ArrayLike, name: str, ndim: int, device: torch.device | str | None = "cpu") -> torch.Tensor:
    """Convert numpy / torch input to a float64 torch tensor with ``ndim`` dims and finite values."""
    if isinstance(x, torch.Tensor):
        if x.is_complex() or not (x.is_floating_point() or x.dtype in _INT_DTYPES):
            raise ValueError(f"{name} must hold real numbers, got dtype {x.dtype}")
        t = x.detach()
    elif isinstance(x, np.ndarray):
        if x.dtype.kind not in "fiu":
            raise ValueError(f"{name} must hold real numbers, got dtype {x.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
    else:
        raise ValueError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    t = t.to(device=device, dtype=torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


def _features(x: ArrayLike, name: str, min_samples: int, device: torch.device | str | None = "cpu") -> torch.Tensor:
    """A float64 ``(N, D)`` feature tensor with at least ``min_samples`` rows and ``D >= 1``."""
    t = _as_float64(x, name, 2, device)
    if t.shape[1] < 1:
        raise ValueError(f"{name} has no feature dimension (shape {tuple(t.shape)})")
    if t.shape[0] < min_samples:
        raise ValueError(f"{name} needs at least {min_samples} samples, got {t.shape[0]}")
    return t


def _same_dim(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    """Raise unless both feature sets have the same feature dimension."""
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{name_a} and {name_b} differ in feature dimension: {a.shape[1]} vs {b.shape[1]}")


def feature_stats(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (N-1 normalisation) of ``(N, D)`` features in float64 (Heusel et al. 2017)."""
    x = _features(features, "features", 2)
    mu = x.mean(dim=0)
    centred = x - mu
    sigma = centred.T @ centred / (x.shape[0] - 1)
    return mu.numpy(), sigma.numpy()


def _psd_sqrt(sigma: torch.Tensor) -> torch.Tensor:
    """Symmetric PSD square root via eigh, with rounding-negative eigenvalues clipped to zero."""
    w, v = torch.linalg.eigh(sigma)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians (Dowson & Landau 1982; FID).

    ``Tr (S1 S2)^(1/2)`` is the nuclear norm of ``S1^(1/2) S2^(1/2)`` (its singular values are the
    square roots of the eigenvalues of ``S1^(1/2) S2 S1^(1/2)``, which equal those of ``S1 S2``).
    This stays real and exact for singular covariances (N < D), so no eps offset is needed. A result
    below zero within rounding tolerance is returned as 0; a larger negative one (inputs that are not
    covariance matrices) is returned unchanged with a warning.
    """
    m1 = _as_float64(mu1, "mu1", 1)
    m2 = _as_float64(mu2, "mu2", 1)
    s1 = _as_float64(sigma1, "sigma1", 2)
    s2 = _as_float64(sigma2, "sigma2", 2)
    d = m1.shape[0]
    if d < 1:
        raise ValueError("mu1 is empty")
    if m2.shape != (d,):
        raise ValueError(f"mu1 and mu2 differ in shape: {tuple(m1.shape)} vs {tuple(m2.shape)}")
    for name, s in (("sigma1", s1), ("sigma2", s2)):
        if s.shape != (d, d):
            raise ValueError(f"{name} must have shape ({d}, {d}) to match the means, got {tuple(s.shape)}")
        if not torch.allclose(s, s.T, rtol=1e-5, atol=1e-8 * float(s.abs().max())):
            raise ValueError(f"{name} is not symmetric, so it is not a covariance matrix")
    s1 = (s1 + s1.T) / 2
    s2 = (s2 + s2.T) / 2
    mean_term = float((m1 - m2).square().sum())
    traces = float(s1.trace() + s2.trace())
    tr_sqrt = float(torch.linalg.svdvals(_psd_sqrt(s1) @ _psd_sqrt(s2)).sum())
    value = mean_term + traces - 2.0 * tr_sqrt
    if value < 0:
        if -value <= _FD_ROUNDING_RTOL * max(traces, 1e-300):
            return 0.0
        warnings.warn(
            f"Frechet distance came out negative ({value:.3g}); are sigma1 and sigma2 PSD covariances?",
            RuntimeWarning,
            stacklevel=2,
        )
    return value


def fd(real_features: ArrayLike, fake_features: ArrayLike) -> float:
    """Frechet distance between Gaussians fitted to two ``(N, D)`` feature sets (Heusel et al. 2017)."""
    real = _features(real_features, "real_features", 2)
    fake = _features(fake_features, "fake_features", 2)
    _same_dim(real, fake, "real_features", "fake_features")
    mu1, sigma1 = feature_stats(real)
    mu2, sigma2 = feature_stats(fake)
    return frechet_distance(mu1, sigma1, mu2, sigma2)


def _poly_mmd2(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3 (Binkowski et al. 2018; torchmetrics poly_mmd)."""
    m = x.shape[0]
    gamma = 1.0 / x.shape[1]
    k_xx = (x @ x.T * gamma + 1.0) ** 3
    k_yy = (y @ y.T * gamma + 1.0) ** 3
    k_xy = (x @ y.T * gamma + 1.0) ** 3
    off_diag = (k_xx.sum() - k_xx.diagonal().sum()) + (k_yy.sum() - k_yy.diagonal().sum())
    return float(off_diag / (m * (m - 1)) - 2.0 * k_xy.sum() / (m * m))


def kid(
    real: ArrayLike,
    fake: ArrayLike,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018): mean and std of unbiased MMD^2 over subsets.

    Each subset takes the first ``subset_size`` entries of ``torch.randperm(N_real)`` then of
    ``torch.randperm(N_fake)``, exactly like torchmetrics' ``KernelInceptionDistance.compute``; the
    std is the population std (``unbiased=False``), as there. Randomness: ``generator`` if given, else
    a fresh CPU generator seeded with ``seed`` (equal to ``torch.manual_seed(seed)`` before
    torchmetrics' compute), else (``seed=None``) torch's global RNG. The mean can be negative.
    """
    x = _features(real, "real", 2)
    y = _features(fake, "fake", 2)
    _same_dim(x, y, "real", "fake")
    if not (isinstance(num_subsets, int) and num_subsets >= 1):
        raise ValueError(f"num_subsets must be an integer >= 1, got {num_subsets!r}")
    if not (isinstance(subset_size, int) and subset_size >= 2):
        raise ValueError(f"subset_size must be an integer >= 2, got {subset_size!r}")
    for name, t in (("real", x), ("fake", y)):
        if t.shape[0] < subset_size:
            raise ValueError(
                f"subset_size ({subset_size}) is larger than the number of {name} samples ({t.shape[0]}); "
                "lower subset_size or pass more samples"
            )
    if generator is None and seed is not None:
        generator = torch.Generator().manual_seed(seed)
    scores = []
    for _ in range(num_subsets):
        idx_real = torch.randperm(x.shape[0], generator=generator)[:subset_size]
        idx_fake = torch.randperm(y.shape[0], generator=generator)[:subset_size]
        scores.append(_poly_mmd2(x[idx_real], y[idx_fake]))
    values = np.asarray(scores, dtype=np.float64)
    return float(values.mean()), float(values.std())


def _squared_distances(a: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances between rows of ``a`` and ``b`` (``b_sq`` = row norms^2)."""
    return (a.square().sum(dim=1, keepdim=True) + b_sq[None, :] - 2.0 * (a @ b.T)).clamp_(min=0)


def _knn_radii_sq(x: torch.Tensor, k: int, chunk_size: int) -> torch.Tensor:
    """Squared distance from each row of ``x`` to its k-th nearest other row (itself excluded)."""
    x_sq = x.square().sum(dim=1)
    radii = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    for start in range(0, x.shape[0], chunk_size):
        stop = min(start + chunk_size, x.shape[0])
        dist = _squared_distances(x[start:stop], x, x_sq)
        rows = torch.arange(stop - start, device=x.device)
        dist[rows, rows + start] = float("inf")
        radii[start:stop] = dist.topk(k, dim=1, largest=False).values[:, -1]
    return radii


def precision_recall(
    real: ArrayLike,
    fake: ArrayLike,
    k: int = 3,
    chunk_size: int = 1024,
    device: torch.device | str | None = "cpu",
) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) with k-NN balls, distances in chunks.

    A sample's ball has the radius to its k-th nearest neighbour within its own set (itself
    excluded, duplicates counted). Precision: fraction of fakes inside at least one real ball
    (distance <= radius). Recall: fraction of reals inside at least one fake ball. Memory is
    ``O(chunk_size * N)``; pass ``device="cuda"`` to compute on a GPU.
    """
    if not (isinstance(k, int) and k >= 1):
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if not (isinstance(chunk_size, int) and chunk_size >= 1):
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    x = _features(real, "real", k + 1, device)
    y = _features(fake, "fake", k + 1, device)
    _same_dim(x, y, "real", "fake")
    real_radii = _knn_radii_sq(x, k, chunk_size)
    fake_radii = _knn_radii_sq(y, k, chunk_size)
    x_sq = x.square().sum(dim=1)
    fake_in_real = torch.zeros(y.shape[0], dtype=torch.bool, device=x.device)
    real_in_fake = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for start in range(0, y.shape[0], chunk_size):
        stop = min(start + chunk_size, y.shape[0])
        dist = _squared_distances(y[start:stop], x, x_sq)  # (chunk of fakes, reals)
        fake_in_real[start:stop] = (dist <= real_radii[None, :]).any(dim=1)
        real_in_fake |= (dist <= fake_radii[start:stop, None]).any(dim=0)
    return float(fake_in_real.double().mean()), float(real_in_fake.double().mean())


def clip_score(image_embeds: ArrayLike, text_embeds: ArrayLike) -> float:
    """Mean over paired rows of 100 * max(cos(image, text), 0) (Hessel et al. 2021, CLIPScore with w=100)."""
    img = _features(image_embeds, "image_embeds", 1)
    txt = _features(text_embeds, "text_embeds", 1)
    if img.shape != txt.shape:
        raise ValueError(
            f"image_embeds and text_embeds must be paired rows of equal shape, "
            f"got {tuple(img.shape)} and {tuple(txt.shape)}"
        )
    img_norm = img.norm(dim=1)
    txt_norm = txt.norm(dim=1)
    if bool((img_norm == 0).any()) or bool((txt_norm == 0).any()):
        raise ValueError("an embedding has zero norm, so its cosine similarity is undefined")
    cos = (img * txt).sum(dim=1) / (img_norm * txt_norm)
    return float((100.0 * cos.clamp(min=0)).mean())
