"""Noise schedules, forward noising, posterior and the DDPM training targets."""

import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

PREDICTIONS = ("eps", "v", "x0")


@flax.struct.dataclass
class Schedule:
    """A discrete-time diffusion schedule over T steps (t = 0 .. T-1), as a pytree."""

    betas: jax.Array
    alphas_cumprod: jax.Array

    @property
    def num_timesteps(self) -> int:
        return self.betas.shape[0]


def _linear(num_timesteps: int) -> np.ndarray:
    scale = 1000.0 / num_timesteps
    return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)


def _cosine(num_timesteps: int) -> np.ndarray:  # Nichol & Dhariwal 2021
    s, t = 0.008, np.arange(num_timesteps, dtype=np.float64)
    f = lambda u: np.cos((u / num_timesteps + s) / (1 + s) * math.pi / 2) ** 2
    return np.clip(1.0 - f(t + 1) / f(t), 0.0, 0.999)


def _sigmoid(num_timesteps: int) -> np.ndarray:  # Jabri et al. 2022, as in lucidrains' denoising-diffusion-pytorch
    start, end, tau = -3.0, 3.0, 1.0
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))
    u = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    v_start, v_end = sig(start / tau), sig(end / tau)
    ab = (-sig((u * (end - start) + start) / tau) + v_end) / (v_end - v_start)
    ab = ab / ab[0]
    return np.clip(1.0 - ab[1:] / ab[:-1], 0.0, 0.999)


BETA_SCHEDULES = {"linear": _linear, "cosine": _cosine, "sigmoid": _sigmoid}  # kind -> betas in float64


def make_schedule(kind: str = "linear", num_timesteps: int = 1000) -> Schedule:
    """Builds the schedule; alpha_bar is accumulated in float64 then stored as float32."""
    if kind not in BETA_SCHEDULES:
        raise ValueError(f"unknown beta schedule {kind!r}: use one of {tuple(BETA_SCHEDULES)}")
    betas = BETA_SCHEDULES[kind](num_timesteps)
    alphas_cumprod = np.cumprod(1.0 - betas)
    return Schedule(
        betas=jnp.asarray(betas, jnp.float32),
        alphas_cumprod=jnp.asarray(alphas_cumprod, jnp.float32),
    )


def _bcast(a: jax.Array, t: jax.Array, ndim: int) -> jax.Array:
    """a[t] shaped (B, 1, ..., 1) to broadcast against an (B, ...) array."""
    return a[t].reshape(t.shape + (1,) * (ndim - t.ndim))


def q_sample(s: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise."""
    ab = _bcast(s.alphas_cumprod, t, x0.ndim)
    return jnp.sqrt(ab) * x0 + jnp.sqrt(1.0 - ab) * noise


def target(s: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array, prediction: str) -> jax.Array:
    """What the denoiser is trained to output: eps, v (Salimans & Ho 2022) or x0."""
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    if prediction == "v":
        ab = _bcast(s.alphas_cumprod, t, x0.ndim)
        return jnp.sqrt(ab) * noise - jnp.sqrt(1.0 - ab) * x0
    raise ValueError(f"unknown prediction {prediction!r}: use one of {PREDICTIONS}")


def alpha_bar(s: Schedule, t: jax.Array) -> jax.Array:
    """alpha_bar at step t, with alpha_bar(-1) = 1 (the clean data)."""
    return jnp.where(t >= 0, s.alphas_cumprod[jnp.maximum(t, 0)], 1.0)


def log_sigmas(s: Schedule) -> jax.Array:
    """log sigma_t = log(sqrt(1 - alpha_bar_t) / sqrt(alpha_bar_t)) = -lambda_t, increasing in t."""
    ab = s.alphas_cumprod
    return 0.5 * (jnp.log1p(-ab) - jnp.log(ab))


def x0_eps(
    out: jax.Array, x_t: jax.Array, sa: jax.Array, sb: jax.Array, prediction: str
) -> tuple[jax.Array, jax.Array]:
    """(x0, eps) estimates from a denoiser output of the given prediction type for x_t at
    the noise level sa = sqrt(alpha_bar), sb = sqrt(1 - alpha_bar)."""
    if prediction == "eps":
        return (x_t - sb * out) / sa, out
    if prediction == "x0":
        return out, (x_t - sa * out) / sb
    if prediction == "v":
        return sa * x_t - sb * out, sa * out + sb * x_t
    raise ValueError(f"unknown prediction {prediction!r}: use one of {PREDICTIONS}")


def posterior_between(
    ab: jax.Array, ab_prev: jax.Array, beta: jax.Array, x0: jax.Array, x_t: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """q(x_prev | x_t, x0) between two noise levels; beta = 1 - ab / ab_prev, passed in
    because float32 loses it to cancellation near t = 0."""
    one_minus_ab = (1.0 - ab_prev) + ab_prev * beta  # = 1 - ab, without the cancellation
    mean = (jnp.sqrt(ab_prev) * beta * x0 + jnp.sqrt(1.0 - beta) * (1.0 - ab_prev) * x_t) / one_minus_ab
    return mean, beta * (1.0 - ab_prev) / one_minus_ab


def draw_steps_and_noise(s: Schedule, x0: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The training draws for a batch: a uniform step per image and Gaussian noise."""
    kt, kn = jax.random.split(key)
    t = jax.random.randint(kt, (x0.shape[0],), 0, s.num_timesteps, dtype=jnp.int32)
    return t, jax.random.normal(kn, x0.shape, x0.dtype)


def loss_at(
    apply_fn, params, s: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array, prediction: str = "eps"
) -> jax.Array:
    """The DDPM simple loss for given steps and noise: mean squared error to the target."""
    out = apply_fn(params, q_sample(s, x0, t, noise), t)
    return jnp.mean(jnp.square(out - target(s, x0, t, noise, prediction)))


def diffusion_loss(apply_fn, params, s: Schedule, x0: jax.Array, key: jax.Array, prediction: str = "eps") -> jax.Array:
    """The DDPM simple loss: mean squared error to the target at a uniformly drawn step."""
    t, noise = draw_steps_and_noise(s, x0, key)
    return loss_at(apply_fn, params, s, x0, t, noise, prediction)
