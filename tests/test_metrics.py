"""Tests for odediff.metrics (pure float64 NumPy)."""

import numpy as np
import pytest

from odediff import metrics

# --------------------------------------------------------------------------- FD


def _diag_fd(mu1, s1, mu2, s2):
    return float(np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2.0 * np.sqrt(s1 * s2)))


@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_fd_from_stats_diagonal_closed_form(method):
    rng = np.random.default_rng(0)
    d = 6
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = rng.uniform(0.1, 3.0, size=d), rng.uniform(0.1, 3.0, size=d)
    got = metrics.frechet_distance_from_stats(mu1, np.diag(s1), mu2, np.diag(s2), method=method)
    assert got == pytest.approx(_diag_fd(mu1, s1, mu2, s2), rel=1e-10, abs=1e-10)


@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_fd_from_stats_rotation_invariant_and_identical_zero(method):
    rng = np.random.default_rng(1)
    d = 5
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = rng.uniform(0.1, 2.0, size=d), rng.uniform(0.1, 2.0, size=d)
    # Rotating both Gaussians by the same orthogonal Q leaves the distance unchanged,
    # but only if sigma1 and sigma2 share eigenvectors; they do here (both Q diag Q^T).
    got = metrics.frechet_distance_from_stats(
        q @ mu1, q @ np.diag(s1) @ q.T, q @ mu2, q @ np.diag(s2) @ q.T, method=method
    )
    assert got == pytest.approx(_diag_fd(mu1, s1, mu2, s2), rel=1e-8)
    a = rng.normal(size=(d, d))
    sig = a @ a.T + 0.1 * np.eye(d)
    assert metrics.frechet_distance_from_stats(mu1, sig, mu1, sig, method=method) == pytest.approx(0.0, abs=1e-9)


def test_fd_non_commuting_methods_agree_and_singular_ok():
    rng = np.random.default_rng(2)
    d = 8
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = a @ a.T, b @ b.T
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    e = metrics.frechet_distance_from_stats(mu1, s1, mu2, s2, method="eigh")
    s = metrics.frechet_distance_from_stats(mu1, s1, mu2, s2, method="sqrtm")
    assert e == pytest.approx(s, rel=1e-8)
    # Rank-deficient covariances (fewer samples than dims): eigh needs no offset.
    x = rng.normal(size=(3, d))
    low = np.cov(x, rowvar=False)
    assert np.isfinite(metrics.frechet_distance_from_stats(mu1, low, mu2, low))
    assert metrics.frechet_distance_from_stats(mu1, low, mu1, low) == pytest.approx(0.0, abs=1e-8)


def test_fd_known_gaussians_large_samples():
    rng = np.random.default_rng(3)
    d, n = 4, 200_000
    mu1, mu2 = np.zeros(d), np.array([1.0, -0.5, 0.0, 2.0])
    s1, s2 = np.array([1.0, 2.0, 0.5, 1.0]), np.array([0.5, 2.0, 1.5, 3.0])
    xa = mu1 + rng.normal(size=(n, d)) * np.sqrt(s1)
    xb = mu2 + rng.normal(size=(n, d)) * np.sqrt(s2)
    want = _diag_fd(mu1, s1, mu2, s2)
    got = metrics.frechet_distance(xa, xb)
    assert got == pytest.approx(want, rel=0.02)
    # Same distribution, independent samples: close to zero.
    xc = mu1 + rng.normal(size=(n, d)) * np.sqrt(s1)
    assert metrics.frechet_distance(xa, xc) < 1e-3


def test_fd_float32_input_and_validation():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(100, 3)).astype(np.float32)
    assert metrics.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError):
        metrics.frechet_distance(x, x[:, :2])
    with pytest.raises(ValueError):
        metrics.frechet_distance(x[0], x)
    with pytest.raises(ValueError):
        metrics.frechet_distance_from_stats(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))


# -------------------------------------------------------------------------- KID


def test_mmd2_unbiased_hand_case():
    x = np.array([[1.0, 0.0], [0.0, 1.0]])
    y = np.array([[1.0, 1.0], [2.0, 0.0], [0.0, 0.0]])
    d = 2

    def k(u, v):
        return (np.dot(u, v) / d + 1.0) ** 3

    # Kernel values by hand: k(x0,x1) = (0/2+1)^3 = 1.
    t_xx = (2 * 1.0) / (2 * 1)
    # y pairs: y0.y1 = 2 -> 8; y0.y2 = 0 -> 1; y1.y2 = 0 -> 1.
    t_yy = 2 * (8.0 + 1.0 + 1.0) / (3 * 2)
    # x0: y0 -> (1/2+1)^3 = 3.375, y1 -> (2/2+1)^3 = 8, y2 -> 1
    # x1: y0 -> 3.375, y1 -> 1, y2 -> 1
    t_xy = (3.375 + 8.0 + 1.0 + 3.375 + 1.0 + 1.0) / 6
    want = t_xx + t_yy - 2 * t_xy
    # Cross-check the hand numbers against a direct loop.
    loop_xy = np.mean([k(a, b) for a in x for b in y])
    assert loop_xy == pytest.approx(t_xy)
    assert metrics.mmd2_unbiased(x, y) == pytest.approx(want, rel=1e-12)


def test_kid_single_full_subset_equals_mmd():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(30, 4)), rng.normal(size=(30, 4)) + 0.3
    mean, std = metrics.kernel_inception_distance(a, b, num_subsets=1, subset_size=30)
    # A full-size subset is a permutation, which the estimator is invariant to.
    assert mean == pytest.approx(metrics.mmd2_unbiased(a, b), rel=1e-10)
    assert std == 0.0


def test_kid_identical_vs_shifted():
    rng = np.random.default_rng(6)
    d = 16
    a = rng.normal(size=(1000, d))
    b = rng.normal(size=(1000, d))
    mean, std = metrics.kernel_inception_distance(a, b, num_subsets=20, subset_size=200)
    assert abs(mean) < 3 * std + 1e-3
    c = rng.normal(size=(1000, d)) + 1.0
    mean_s, std_s = metrics.kernel_inception_distance(a, c, num_subsets=20, subset_size=200)
    assert mean_s > 10 * std_s and mean_s > 0.1
    # Deterministic given the seed.
    assert metrics.kernel_inception_distance(a, c, num_subsets=5, subset_size=50, seed=3) == (
        metrics.kernel_inception_distance(a, c, num_subsets=5, subset_size=50, seed=3)
    )


# --------------------------------------------------------------- precision/recall


def test_precision_recall_identical():
    x = np.random.default_rng(7).normal(size=(200, 8))
    assert metrics.precision_recall(x, x.copy(), k=3) == (1.0, 1.0)


def test_precision_recall_disjoint():
    rng = np.random.default_rng(8)
    real = rng.normal(size=(100, 5))
    fake = rng.normal(size=(100, 5)) + 100.0
    assert metrics.precision_recall(real, fake, k=3) == (0.0, 0.0)


def test_precision_recall_hand_case():
    # 1-D, k=1. Real radii: all 1. Fake radii: 0.1 -> 0.4, 0.5 -> 0.4, 5 -> 0.5, 5.5 -> 0.5.
    real = np.array([0.0, 1.0, 2.0, 3.0])[:, None]
    fake = np.array([0.1, 0.5, 5.0, 5.5])[:, None]
    # Precision: 0.1 and 0.5 are within 1 of a real point; 5 and 5.5 are not -> 0.5.
    # Recall: only real 0 lies within a fake ball (0.1 from 0.1, radius 0.4) -> 0.25.
    p, r = metrics.precision_recall(real, fake, k=1, block=3)
    assert (p, r) == (0.5, 0.25)
    # Mode collapse: all fake samples near one real point -> high precision, low recall.
    rng = np.random.default_rng(9)
    real = rng.normal(size=(300, 2))
    fake = 0.01 * rng.normal(size=(300, 2))
    p, r = metrics.precision_recall(real, fake, k=3)
    assert p > 0.9 and r < 0.1


# -------------------------------------------------------------------- PSNR/SSIM


def test_psnr_known_mse():
    rng = np.random.default_rng(10)
    a = rng.uniform(size=(3, 8, 8, 3))
    delta = np.array([0.1, 0.02, 0.3])
    signs = rng.choice([-1.0, 1.0], size=a.shape)
    b = a + delta[:, None, None, None] * signs  # per-image MSE = delta^2
    got = metrics.psnr(a, b)
    np.testing.assert_allclose(got, 10 * np.log10(1.0 / delta**2), rtol=1e-12)
    got2 = metrics.psnr(2 * a, 2 * b, max_val=2.0)
    np.testing.assert_allclose(got2, got, rtol=1e-12)
    assert got.shape == (3,)
    assert np.isinf(metrics.psnr(a, a)).all()


def test_ssim_identity_and_noise_monotone():
    rng = np.random.default_rng(11)
    img = rng.uniform(size=(2, 16, 16, 1))
    np.testing.assert_allclose(metrics.ssim(img, img), 1.0, atol=1e-12)
    vals = [
        metrics.ssim(img, np.clip(img + s * rng.normal(size=img.shape), 0, 1)).mean() for s in (0.01, 0.05, 0.2, 0.5)
    ]
    assert all(x > y for x, y in zip(vals, vals[1:]))
    assert vals[0] < 1.0
    # Small images (8x8 < default window 11) work with a clipped window.
    small = rng.uniform(size=(4, 8, 8, 3))
    assert metrics.ssim(small, small).shape == (4,)


def test_ssim_matches_dm_pix():
    import dm_pix as pix
    import jax

    rng = np.random.default_rng(12)
    a = rng.uniform(size=(2, 20, 24, 3)).astype(np.float32)
    b = np.clip(a + 0.1 * rng.normal(size=a.shape), 0, 1).astype(np.float32)
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        want = np.asarray(pix.ssim(a, b, max_val=1.0))
    np.testing.assert_allclose(metrics.ssim(a, b), want, atol=1e-5)
