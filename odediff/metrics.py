"""Sample-quality metrics: FD (FID-style), KID, k-NN precision/recall, PSNR, SSIM.

Everything here works on host arrays in float64 NumPy (no JAX), so the results
do not depend on JAX's promotion settings or on float32 accumulation.

Feature-based metrics (`frechet_distance`, `kernel_inception_distance`,
`precision_recall`) take `[N, D]` feature matrices, e.g. from
`odediff.features.classifier_features` or the Inception-v3 pool3 extractor.
Image metrics (`psnr`, `ssim`) take `[..., H, W, C]` images and return one value
per image.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import scipy.linalg

__all__ = [
    "feature_statistics",
    "frechet_distance",
    "frechet_distance_from_stats",
    "polynomial_kernel",
    "mmd2_unbiased",
    "kernel_inception_distance",
    "precision_recall",
    "psnr",
    "ssim",
]


def _as_features(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be [N, D], got shape {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 samples, got {x.shape[0]}")
    return x


# ---------------------------------------------------------------------------
# Frechet distance
# ---------------------------------------------------------------------------


def feature_statistics(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean `[D]` and unbiased covariance `[D, D]` (float64) of `[N, D]` features."""
    x = _as_features(feats, "feats")
    mu = x.mean(axis=0)
    sigma = np.atleast_2d(np.cov(x, rowvar=False))
    return mu, sigma


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a (numerically) PSD matrix via eigh."""
    w, v = np.linalg.eigh(0.5 * (sigma + sigma.T))
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, method: str, eps: float) -> float:
    """tr(sqrtm(sigma1 @ sigma2)) for PSD sigma1, sigma2."""
    if method == "eigh":
        # sqrtm(S1 S2) is similar to sqrtm(S1^1/2 S2 S1^1/2), which is symmetric
        # PSD, so its trace is the sum of square roots of real eigenvalues.
        s1h = _psd_sqrt(sigma1)
        m = s1h @ sigma2 @ s1h
        w = np.linalg.eigvalsh(0.5 * (m + m.T))
        return float(np.sum(np.sqrt(np.clip(w, 0.0, None))))
    if method == "sqrtm":
        # The pytorch-fid recipe: scipy sqrtm, with an eps*I offset on both
        # covariances if the product is (near-)singular.
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            warnings.warn(
                f"frechet distance: singular product; adding {eps} to the diagonals",
                RuntimeWarning,
                stacklevel=3,
            )
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
        if np.iscomplexobj(covmean):
            imag = np.max(np.abs(np.diagonal(covmean).imag))
            if imag > 1e-3 * max(1.0, float(np.abs(np.trace(covmean)))):
                raise ValueError(f"frechet distance: imaginary component {imag}")
            covmean = covmean.real
        return float(np.trace(covmean))
    raise ValueError(f"unknown method {method!r}; use 'eigh' or 'sqrtm'")


def frechet_distance_from_stats(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    *,
    method: Literal["eigh", "sqrtm"] = "eigh",
    eps: float = 1e-6,
) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

    d^2 = ||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 sqrtm(sigma1 sigma2)), in
    float64. `method="eigh"` (default) uses the symmetric form
    sqrt(sigma1) sigma2 sqrt(sigma1), which is exact for PSD inputs and needs no
    offset; `method="sqrtm"` reproduces pytorch-fid (scipy sqrtm with an `eps`
    diagonal offset fallback). The result is clipped at 0.
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,):
        raise ValueError(f"mean shapes differ or are not 1-D: {mu1.shape}, {mu2.shape}")
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"covariances must be ({d}, {d}), got {sigma1.shape}, {sigma2.shape}")
    diff = mu1 - mu2
    tr_covmean = _trace_sqrt_product(sigma1, sigma2, method, eps)
    fd = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)
    return max(fd, 0.0)


def frechet_distance(
    feats_a: np.ndarray,
    feats_b: np.ndarray,
    *,
    method: Literal["eigh", "sqrtm"] = "eigh",
) -> float:
    """Frechet distance between Gaussians fitted to two `[N, D]` feature sets (FID
    when the features are Inception pool3)."""
    a = _as_features(feats_a, "feats_a")
    b = _as_features(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dims differ: {a.shape[1]} vs {b.shape[1]}")
    mu1, s1 = feature_statistics(a)
    mu2, s2 = feature_statistics(b)
    return frechet_distance_from_stats(mu1, s1, mu2, s2, method=method)


# ---------------------------------------------------------------------------
# Kernel Inception distance
# ---------------------------------------------------------------------------


def polynomial_kernel(
    x: np.ndarray,
    y: np.ndarray,
    *,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
) -> np.ndarray:
    """k(x, y) = (gamma x.y + coef0)^degree with gamma = 1/D by default."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if gamma is None:
        gamma = 1.0 / x.shape[1]
    return (gamma * (x @ y.T) + coef0) ** degree


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 between samples x `[m, D]` and y `[n, D]` with the cubic
    polynomial kernel (x.y/D + 1)^3 (Binkowski et al. 2018)::

        sum_{i!=j} k(x_i,x_j)/(m(m-1)) + sum_{i!=j} k(y_i,y_j)/(n(n-1))
        - 2 sum_{i,j} k(x_i,y_j)/(mn)
    """
    x = _as_features(x, "x")
    y = _as_features(y, "y")
    m, n = x.shape[0], y.shape[0]
    k_xx = polynomial_kernel(x, x)
    k_yy = polynomial_kernel(y, y)
    k_xy = polynomial_kernel(x, y)
    t_xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    t_yy = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    t_xy = k_xy.sum() / (m * n)
    return float(t_xx + t_yy - 2.0 * t_xy)


def kernel_inception_distance(
    feats_a: np.ndarray,
    feats_b: np.ndarray,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """KID: mean and std over `num_subsets` random subsets of the unbiased MMD^2
    with kernel (x.y/D + 1)^3. Each subset draws `min(subset_size, N_a, N_b)`
    rows without replacement from each set. Can be slightly negative."""
    a = _as_features(feats_a, "feats_a")
    b = _as_features(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dims differ: {a.shape[1]} vs {b.shape[1]}")
    if num_subsets < 1:
        raise ValueError("num_subsets must be >= 1")
    m = min(subset_size, a.shape[0], b.shape[0])
    if m < 2:
        raise ValueError("subset_size must be >= 2")
    rng = np.random.default_rng(seed)
    vals = np.empty(num_subsets, dtype=np.float64)
    for i in range(num_subsets):
        xa = a[rng.choice(a.shape[0], m, replace=False)]
        xb = b[rng.choice(b.shape[0], m, replace=False)]
        vals[i] = mmd2_unbiased(xa, xb)
    return float(vals.mean()), float(vals.std())


# ---------------------------------------------------------------------------
# Improved precision / recall (Kynkaanniemi et al. 2019)
# ---------------------------------------------------------------------------


def _pairwise_sq_dists(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    d = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * (x @ y.T)
    return np.maximum(d, 0.0)


def _knn_radii_sq(x: np.ndarray, k: int, block: int) -> np.ndarray:
    """Squared distance from each row of x to its k-th nearest other row."""
    out = np.empty(x.shape[0], dtype=np.float64)
    for s in range(0, x.shape[0], block):
        d = _pairwise_sq_dists(x[s : s + block], x)
        # Index 0 of the sorted row is the point itself (distance 0).
        out[s : s + block] = np.partition(d, k, axis=1)[:, k]
    return out


def _fraction_in_manifold(manifold: np.ndarray, radii_sq: np.ndarray, queries: np.ndarray, block: int) -> float:
    inside = np.zeros(queries.shape[0], dtype=bool)
    for s in range(0, queries.shape[0], block):
        d = _pairwise_sq_dists(queries[s : s + block], manifold)
        inside[s : s + block] = (d <= radii_sq[None, :]).any(axis=1)
    return float(inside.mean())


def precision_recall(
    real_feats: np.ndarray, fake_feats: np.ndarray, k: int = 3, *, block: int = 1024
) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019).

    Each set's manifold is the union of balls around its points with radius the
    distance to the point's k-th nearest neighbour in the same set. Precision is
    the fraction of fake points inside the real manifold; recall the fraction of
    real points inside the fake manifold (both with `<=`).
    """
    real = _as_features(real_feats, "real_feats")
    fake = _as_features(fake_feats, "fake_feats")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dims differ: {real.shape[1]} vs {fake.shape[1]}")
    if not 1 <= k < min(real.shape[0], fake.shape[0]):
        raise ValueError(f"k={k} must be in [1, min(N_real, N_fake) - 1]")
    real_r = _knn_radii_sq(real, k, block)
    fake_r = _knn_radii_sq(fake, k, block)
    precision = _fraction_in_manifold(real, real_r, fake, block)
    recall = _fraction_in_manifold(fake, fake_r, real, block)
    return precision, recall


# ---------------------------------------------------------------------------
# PSNR / SSIM
# ---------------------------------------------------------------------------


def _as_image_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    if a.ndim < 3:
        raise ValueError(f"images must be [..., H, W, C], got shape {a.shape}")
    return a, b


def psnr(a: np.ndarray, b: np.ndarray, max_val: float = 1.0) -> np.ndarray:
    """Per-image PSNR in dB, 10 log10(max_val^2 / MSE), for `[..., H, W, C]`
    images; returns shape `[...]` (inf where the images are equal)."""
    a, b = _as_image_pair(a, b)
    mse = np.mean((a - b) ** 2, axis=(-3, -2, -1))
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(max_val**2 / mse)


def _gaussian_filter_1d(size: int, sigma: float) -> np.ndarray:
    hw = size // 2
    shift = (2 * hw - size + 1) / 2
    f = np.exp(-0.5 * ((np.arange(size) - hw + shift) / sigma) ** 2)
    return f / f.sum()


def _filter_valid(z: np.ndarray, filt: np.ndarray) -> np.ndarray:
    """Separable 'valid' Gaussian blur over the H and W axes of `[..., H, W, C]`."""
    n = filt.shape[0]
    # Along W (axis -2).
    w = np.lib.stride_tricks.sliding_window_view(z, n, axis=-2)  # [..., H, W', C, n]
    z = w @ filt[::-1]
    # Along H (axis -3).
    h = np.lib.stride_tricks.sliding_window_view(z, n, axis=-3)  # [..., H', W', C, n]
    return h @ filt[::-1]


def ssim(
    a: np.ndarray,
    b: np.ndarray,
    max_val: float = 1.0,
    *,
    filter_size: int = 11,
    filter_sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> np.ndarray:
    """Per-image mean SSIM (Wang et al. 2004) for `[..., H, W, C]` images, in
    float64; matches `dm_pix.ssim` / `tf.image.ssim` (Gaussian window, 'valid'
    filtering, channels averaged). `filter_size` is clipped to min(H, W) so small
    images (e.g. 8x8) work; returns shape `[...]`."""
    a, b = _as_image_pair(a, b)
    size = int(min(filter_size, a.shape[-3], a.shape[-2]))
    filt = _gaussian_filter_1d(size, filter_sigma)
    mu0 = _filter_valid(a, filt)
    mu1 = _filter_valid(b, filt)
    mu00, mu11, mu01 = mu0 * mu0, mu1 * mu1, mu0 * mu1
    eps = float(np.finfo(np.float32).eps) ** 2
    s00 = np.maximum(eps, _filter_valid(a * a, filt) - mu00)
    s11 = np.maximum(eps, _filter_valid(b * b, filt) - mu11)
    s01 = _filter_valid(a * b, filt) - mu01
    s01 = np.sign(s01) * np.minimum(np.sqrt(s00 * s11), np.abs(s01))
    c1 = (k1 * max_val) ** 2
    c2 = (k2 * max_val) ** 2
    ssim_map = ((2 * mu01 + c1) * (2 * s01 + c2)) / ((mu00 + mu11 + c1) * (s00 + s11 + c2))
    return ssim_map.mean(axis=(-3, -2, -1))
