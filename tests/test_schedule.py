import jax
import jax.numpy as jnp
import numpy as np
import pytest

from odediff import schedule as sch


def test_linear_alpha_bar_matches_closed_form():
    s = sch.make_schedule("linear", 1000)
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    closed = np.cumprod(1.0 - betas)
    np.testing.assert_allclose(np.asarray(s.alphas_cumprod, np.float64), closed, atol=1e-6, rtol=0)
    # The published values (DDPM, and diffusers' DDPMScheduler with the same betas).
    np.testing.assert_allclose(np.asarray(s.alphas_cumprod)[[0, 499, 999]], [0.9999, 0.0785872, 4.03583e-05], rtol=1e-5)


@pytest.mark.parametrize("kind", ["linear", "cosine", "sigmoid"])
def test_schedules_are_decreasing_in_unit_interval(kind):
    ab = np.asarray(sch.make_schedule(kind, 1000).alphas_cumprod)
    assert ab[0] > 0.999 and ab[-1] < 1e-3
    assert np.all(np.diff(ab) < 0) and np.all(ab > 0)


def test_cosine_matches_nichol_dhariwal_closed_form():
    t = np.arange(1001)
    f = np.cos((t / 1000 + 0.008) / 1.008 * np.pi / 2) ** 2
    expected = f[1:] / f[0]
    ab = np.asarray(sch.make_schedule("cosine", 1000).alphas_cumprod)
    np.testing.assert_allclose(ab[:990], expected[:990], rtol=1e-5)  # before the 0.999 beta clip


def test_unknown_schedule_raises():
    with pytest.raises(ValueError, match="unknown beta schedule"):
        sch.make_schedule("quadratic")


@pytest.mark.parametrize("prediction", sch.PREDICTIONS)
def test_targets_invert_to_x0_and_eps(prediction):
    s = sch.make_schedule("linear", 1000)
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    x0 = jax.random.uniform(k1, (5, 4, 4, 3), minval=-1.0, maxval=1.0)
    noise = jax.random.normal(k2, x0.shape)
    t = jnp.array([0, 10, 300, 700, 999], jnp.int32)
    x_t = sch.q_sample(s, x0, t, noise)
    ab = sch.alpha_bar(s, t)[:, None, None, None]
    out = sch.target(s, x0, t, noise, prediction)
    x0_hat, eps_hat = sch.x0_eps(out, x_t, jnp.sqrt(ab), jnp.sqrt(1.0 - ab), prediction)
    # x0 from eps divides by sqrt(alpha_bar), tiny at t = 999: compare where it is well conditioned.
    np.testing.assert_allclose(x0_hat[:4], x0[:4], atol=2e-3)
    np.testing.assert_allclose(eps_hat[1:], noise[1:], atol=2e-3)


def test_posterior_matches_ddpm_formulas():
    s = sch.make_schedule("linear", 1000)
    x0 = jnp.full((3, 2, 2, 1), 0.5)
    x_t = jnp.full((3, 2, 2, 1), -0.2)
    t = jnp.array([0, 1, 500], jnp.int32)
    ab_t = sch.alpha_bar(s, t)[:, None, None, None]
    ab_prev = sch.alpha_bar(s, t - 1)[:, None, None, None]
    mean, var = sch.posterior_between(ab_t, ab_prev, s.betas[t][:, None, None, None], x0, x_t)
    b = np.linspace(1e-4, 0.02, 1000)
    ab = np.cumprod(1 - b)
    for i, ti in enumerate([0, 1, 500]):
        abp = ab[ti - 1] if ti > 0 else 1.0
        m = (np.sqrt(abp) * b[ti] / (1 - ab[ti])) * 0.5 + (np.sqrt(1 - b[ti]) * (1 - abp) / (1 - ab[ti])) * -0.2
        v = b[ti] * (1 - abp) / (1 - ab[ti])
        # float32 holds 1 - alpha_bar near t = 0 to ~1e-4 relative; the formula is what is checked.
        np.testing.assert_allclose(float(mean[i, 0, 0, 0]), m, rtol=5e-4, atol=1e-6)
        np.testing.assert_allclose(float(var[i, 0, 0, 0]), v, rtol=1e-4, atol=1e-9)


def test_loss_is_zero_for_a_perfect_eps_predictor():
    s = sch.make_schedule("linear", 100)
    x0 = jnp.zeros((8, 4, 4, 1))

    def perfect(params, x_t, t):  # x0 = 0, so x_t = sqrt(1 - ab) * eps
        return x_t / jnp.sqrt(1.0 - s.alphas_cumprod[t])[:, None, None, None]

    loss = sch.diffusion_loss(perfect, None, s, x0, jax.random.PRNGKey(0))
    assert float(loss) < 1e-8
    assert float(sch.diffusion_loss(lambda p, x, t: jnp.zeros_like(x), None, s, x0, jax.random.PRNGKey(0))) > 0.5
