"""odediff.denoising: the eps -> t* mapping and the denoising chain."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from odediff import denoising as D
from odediff.schedule import make_schedule
from odediff.train_state import init_params


@pytest.mark.parametrize(
    "kind,eps", [("linear", 0.05), ("linear", 0.1), ("linear", 0.3), ("cosine", 0.1), ("sigmoid", 0.2)]
)
def test_matching_step_against_closed_form(kind, eps):
    s = make_schedule(kind, 1000)
    ab = np.asarray(s.alphas_cumprod, np.float64)
    target = 1.0 / (1.0 + (2 * eps) ** 2)  # sqrt(1-ab)/sqrt(ab) = 2 eps
    t = D.matching_step(s, eps)
    # t* brackets the target: the closed-form alpha_bar lies between neighbouring steps' values
    lo, hi = max(t - 1, 0), min(t + 1, 999)
    assert ab[hi] <= target <= ab[lo]
    sigma = np.sqrt(1 - ab[t]) / np.sqrt(ab[t])
    assert sigma == pytest.approx(2 * eps, rel=0.05)


def test_matching_step_linear_eps_01_near_59():
    # linear betas: ab_t ~ exp(-(1e-4 t + 1e-5 t^2)) = 1/1.04 -> t ~ 59 (the notes' best step)
    assert 55 <= D.matching_step(make_schedule("linear", 1000), 0.1) <= 62


def _clean(n=3, size=16, seed=0):
    yy, xx = np.mgrid[:size, :size]
    base = ((np.sin(xx / 2.0 + seed) + np.cos(yy / 3.0)) * 60 + 128).astype(np.uint8)
    return np.stack([np.roll(base, i, axis=1) for i in range(n)])[..., None]


def _oracle(s, x0_true, prediction):
    """A denoiser that knows x0 and reads x and t: its output is the exact eps, v or x0
    for (x, t), so the chain's x0 estimate is x0_true at every step only if the chain
    passes the right t and converts the output correctly."""

    def apply(params, x, t):
        ab = s.alphas_cumprod[t][:, None, None, None]
        sa, sb = jnp.sqrt(ab), jnp.sqrt(1.0 - ab)
        eps = (x - sa * x0_true) / sb
        return {"eps": eps, "v": sa * eps - sb * x0_true, "x0": x0_true}[prediction]

    return apply


@pytest.mark.parametrize("sampler", ["ancestral", "ddim"])
@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_denoise_with_an_oracle_recovers_its_x0_at_every_step(sampler, prediction):
    from odediff.metrics import psnr

    clean = _clean()
    x0_true = jnp.asarray(0.97 * (clean.astype(np.float32) / 127.5 - 1.0))  # finite PSNR
    s = make_schedule("linear", 1000)
    r = D.denoise(
        _oracle(s, x0_true, prediction), None, s, prediction, clean, 0.1, 5, jax.random.key(0), sampler=sampler
    )
    expected = float(np.mean(psnr((np.asarray(x0_true) + 1.0) / 2.0, clean / 255.0)))
    assert r["t_star"] == D.matching_step(s, 0.1) and r["steps"] == 5
    np.testing.assert_allclose(r["psnr_curve"], expected, atol=0.01)
    assert r["psnr"] > r["noisy_psnr"] + 5 and r["ssim"] > r["noisy_ssim"]
    assert r["noisy_psnr"] == pytest.approx(20.0, abs=0.5)  # 20 log10(1 / 0.1)


def test_denoise_stops_at_t0_and_runs_a_tiny_model():
    from helpers import perturbed, tiny_config
    from odediff.models import build_denoiser

    c = tiny_config("cunet")
    model = build_denoiser(c.model)
    clean = _clean(2, 8)
    params = init_params(model, c, jax.random.key(0))
    s = make_schedule("linear", 50)
    apply = lambda p, x, t: model.apply({"params": p}, x, t)
    r = D.denoise(apply, perturbed(params, jax.random.key(2)), s, "eps", clean, 0.05, 100, jax.random.key(1), batch=1)
    assert r["steps"] == r["t_star"] + 1  # the chain ends at t = 0
    assert all(np.isfinite(r["psnr_curve"])) and all(np.isfinite(r["ssim_curve"]))
    # the initial params predict eps = 0 (zero-initialised output): the model's output must move the chain
    zero = D.denoise(apply, params, s, "eps", clean, 0.05, 100, jax.random.key(1), batch=1)
    assert np.abs(np.subtract(r["psnr_curve"], zero["psnr_curve"])).max() > 0.01


def test_classical_baselines_beat_the_noisy_input():
    clean = _clean(4, 16)
    key = jax.random.key(0)
    b = D.classical_baselines(clean, 0.2, key)
    noisy = D.noisy_images(clean, 0.2, key)
    from odediff.metrics import psnr

    base = float(np.mean(psnr(noisy, clean / 255.0)))
    assert b["gaussian_blur"]["psnr"] > base and b["wiener"]["psnr"] > base
