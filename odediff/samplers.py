"""Reverse-process samplers as pure functions that jit end to end.

Every sampler takes `(apply_fn, params, key, shape, schedule, num_steps, ...)`,
where `apply_fn(params, x, t)` returns the denoiser output for x (B, H, W, C) and
integer steps t (B,), and returns images in [-1, 1].
"""

from typing import Callable

import jax
import jax.numpy as jnp

from odediff.schedule import Schedule, posterior_between, predict_x0_eps

ApplyFn = Callable[[object, jax.Array, jax.Array], jax.Array]


def timesteps(num_timesteps: int, num_steps: int) -> jax.Array:
    """`num_steps` integer steps from T-1 down to 0, evenly spaced (descending)."""
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_timesteps}], got {num_steps}")
    ts = jnp.round(jnp.linspace(0.0, num_timesteps - 1, num_steps)).astype(jnp.int32)
    return ts[::-1]


def _alpha_bar(s: Schedule, t: jax.Array) -> jax.Array:
    """alpha_bar at step t, with alpha_bar(-1) = 1 (the clean data)."""
    return jnp.where(t >= 0, s.alphas_cumprod[jnp.maximum(t, 0)], 1.0)


def _denoise(apply_fn, params, s, x, t, prediction, clip):
    tb = jnp.full((x.shape[0],), t, jnp.int32)
    x0, eps = predict_x0_eps(s, x, tb, apply_fn(params, x, tb), prediction)
    if clip:
        x0 = jnp.clip(x0, -1.0, 1.0)
        ab = _alpha_bar(s, t)
        eps = (x - jnp.sqrt(ab) * x0) / jnp.sqrt(1.0 - ab)
    return x0, eps


def _reverse(step, key, shape, s, num_steps):
    ts = timesteps(s.num_timesteps, num_steps)
    ts_prev = jnp.concatenate([ts[1:], jnp.full((1,), -1, jnp.int32)])
    k0, kloop = jax.random.split(key)
    x = jax.random.normal(k0, shape, jnp.float32)
    keys = jax.random.split(kloop, num_steps)
    x, _ = jax.lax.scan(lambda x, a: (step(x, *a), None), x, (ts, ts_prev, keys))
    return jnp.clip(x, -1.0, 1.0)


def ancestral_sample(
    apply_fn: ApplyFn,
    params,
    key: jax.Array,
    shape: tuple[int, ...],
    schedule: Schedule,
    num_steps: int | None = None,
    prediction: str = "eps",
    clip: bool = True,
) -> jax.Array:
    """DDPM ancestral sampling (Ho et al.): x_{t-1} ~ q(x_{t-1} | x_t, x0_hat).

    With fewer steps than T the chain is respaced (Nichol & Dhariwal): the
    betas between kept steps are recomputed from alpha_bar.
    """
    num_steps = num_steps or schedule.num_timesteps

    def step(x, t, t_prev, key):
        x0, _ = _denoise(apply_fn, params, schedule, x, t, prediction, clip)
        ab, ab_prev = _alpha_bar(schedule, t), _alpha_bar(schedule, t_prev)
        beta = jnp.where(t_prev == t - 1, schedule.betas[t], 1.0 - ab / ab_prev)
        mean, var = posterior_between(ab, ab_prev, beta, x0, x)
        return mean + jnp.sqrt(var) * jax.random.normal(key, x.shape, x.dtype)

    return _reverse(step, key, shape, schedule, num_steps)


def ddim_sample(
    apply_fn: ApplyFn,
    params,
    key: jax.Array,
    shape: tuple[int, ...],
    schedule: Schedule,
    num_steps: int = 50,
    eta: float = 0.0,
    prediction: str = "eps",
    clip: bool = True,
) -> jax.Array:
    """DDIM (Song et al. 2021); eta = 0 is deterministic, eta = 1 matches ancestral."""

    def step(x, t, t_prev, key):
        x0, eps = _denoise(apply_fn, params, schedule, x, t, prediction, clip)
        ab, ab_prev = _alpha_bar(schedule, t), _alpha_bar(schedule, t_prev)
        sigma = eta * jnp.sqrt((1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev))
        direction = jnp.sqrt(jnp.maximum(1.0 - ab_prev - sigma**2, 0.0)) * eps
        noise = sigma * jax.random.normal(key, x.shape, x.dtype)
        return jnp.sqrt(ab_prev) * x0 + direction + noise

    return _reverse(step, key, shape, schedule, num_steps)


SAMPLERS: dict[str, Callable[..., jax.Array]] = {
    "ancestral": ancestral_sample,
    "ddim": ddim_sample,
}
