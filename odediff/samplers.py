"""Reverse-process samplers as pure functions that jit end to end.

Every sampler takes `(apply_fn, params, key, shape, schedule, num_steps, ...)`,
where `apply_fn(params, x, t)` returns the denoiser output for x (B, H, W, C) and
steps t (B,) (int32; float32 with `continuous_t=True`), and returns `(images, nfe)`:
images in [-1, 1] and the number of model evaluations per sample (int32). `sample`
calls any of them by name.

All of them draw the initial noise x_T ~ N(0, I) from `key` the same way, so the
deterministic samplers (DDIM eta=0, ODE, DPM-Solver++) start from the same x_T.
"""

import inspect
import math
from collections.abc import Callable

import diffrax
import jax
import jax.numpy as jnp

from odediff.models.ode import ADAPTIVE, SOLVERS
from odediff.schedule import Schedule, alpha_bar, log_sigmas, posterior_between, x0_eps

ApplyFn = Callable[[object, jax.Array, jax.Array], jax.Array]
SPACINGS = ("time_uniform", "logsnr", "time_quadratic")


DISCRETE_SPACINGS = ("linspace", "trailing")


def timesteps(num_timesteps: int, num_steps: int, spacing: str = "linspace") -> jax.Array:
    """`num_steps` integer steps, descending and evenly spaced: "linspace" from T-1 down
    to 0; "trailing" (Lin et al. 2024) T-1, T-1-T/n, ..., ending at T/n - 1, so every
    step, a single one included, starts from the noisiest level. With one step,
    "linspace" would evaluate the model at t = 0 on pure noise, so it is refused."""
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_timesteps}], got {num_steps}")
    if spacing == "trailing":
        starts = num_timesteps - jnp.arange(num_steps, dtype=jnp.float32) * (num_timesteps / num_steps)
        return jnp.round(starts).astype(jnp.int32) - 1
    if spacing != "linspace":
        raise ValueError(f"unknown spacing {spacing!r}: use one of {DISCRETE_SPACINGS}")
    if num_steps == 1:
        raise ValueError('one "linspace" step would denoise pure noise at t = 0: use spacing="trailing"')
    ts = jnp.round(jnp.linspace(0.0, num_timesteps - 1, num_steps)).astype(jnp.int32)
    return ts[::-1]


def _scales(log_sigma: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sqrt(alpha_bar), sqrt(1 - alpha_bar)) at a noise level sigma = exp(log_sigma)."""
    sigma = jnp.exp(log_sigma)
    sa = jax.lax.rsqrt(1.0 + jnp.square(sigma))
    return sa, sigma * sa


def _noise(key: jax.Array, shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """x_T ~ N(0, I) and the key left for the sampler's own noise."""
    k0, krest = jax.random.split(key)
    return jax.random.normal(k0, shape, jnp.float32), krest


def _denoise(apply_fn, params, x, t, sa, sb, prediction, clip):
    """(x0, eps) estimates for x at noise level (sa, sb) from the model output at step t."""
    x0, eps = x0_eps(apply_fn(params, x, jnp.broadcast_to(t, x.shape[:1])), x, sa, sb, prediction)
    if clip:
        x0 = jnp.clip(x0, -1.0, 1.0)
        eps = (x - sa * x0) / sb
    return x0, eps


def _reverse(step, key, shape, s, num_steps, spacing):
    ts = timesteps(s.num_timesteps, num_steps, spacing)
    ts_prev = jnp.concatenate([ts[1:], jnp.full((1,), -1, jnp.int32)])
    x, kloop = _noise(key, shape)
    keys = jax.random.split(kloop, num_steps)
    x, _ = jax.lax.scan(lambda x, a: (step(x, *a), None), x, (ts, ts_prev, keys))
    return jnp.clip(x, -1.0, 1.0)


def _denoise_at(apply_fn, params, s, x, t, prediction, clip):
    ab = alpha_bar(s, t)
    return _denoise(apply_fn, params, x, t, jnp.sqrt(ab), jnp.sqrt(1.0 - ab), prediction, clip)


def ancestral_step(
    apply_fn: ApplyFn,
    params,
    s: Schedule,
    x: jax.Array,
    t: jax.Array,
    t_prev: jax.Array,
    key: jax.Array,
    prediction: str = "eps",
    clip: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """One DDPM step from step t to t_prev < t (t_prev = -1: the data): x_prev ~ q(x_prev | x_t,
    x0_hat), the betas between respaced steps recomputed from alpha_bar. Returns (x_prev, x0_hat)."""
    x0, _ = _denoise_at(apply_fn, params, s, x, t, prediction, clip)
    ab, ab_prev = alpha_bar(s, t), alpha_bar(s, t_prev)
    beta = jnp.where(t_prev == t - 1, s.betas[t], 1.0 - ab / ab_prev)
    mean, var = posterior_between(ab, ab_prev, beta, x0, x)
    return mean + jnp.sqrt(var) * jax.random.normal(key, x.shape, x.dtype), x0


def ddim_step(
    apply_fn: ApplyFn,
    params,
    s: Schedule,
    x: jax.Array,
    t: jax.Array,
    t_prev: jax.Array,
    key: jax.Array,
    prediction: str = "eps",
    clip: bool = True,
    eta: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    """One DDIM step from step t to t_prev < t (Song et al. 2021; eta = 0 deterministic).
    Returns (x_prev, x0_hat)."""
    x0, eps = _denoise_at(apply_fn, params, s, x, t, prediction, clip)
    ab, ab_prev = alpha_bar(s, t), alpha_bar(s, t_prev)
    sigma = eta * jnp.sqrt((1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev))
    direction = jnp.sqrt(jnp.maximum(1.0 - ab_prev - sigma**2, 0.0)) * eps
    noise = sigma * jax.random.normal(key, x.shape, x.dtype)
    return jnp.sqrt(ab_prev) * x0 + direction + noise, x0


def ancestral_sample(
    apply_fn: ApplyFn,
    params,
    key: jax.Array,
    shape: tuple[int, ...],
    schedule: Schedule,
    num_steps: int | None = None,
    prediction: str = "eps",
    clip: bool = True,
    spacing: str = "linspace",
) -> tuple[jax.Array, jax.Array]:
    """DDPM ancestral sampling (Ho et al.): x_{t-1} ~ q(x_{t-1} | x_t, x0_hat).

    With fewer steps than T the chain is respaced (Nichol & Dhariwal): the
    betas between kept steps are recomputed from alpha_bar.
    """
    num_steps = num_steps or schedule.num_timesteps

    def step(x, t, t_prev, key):
        return ancestral_step(apply_fn, params, schedule, x, t, t_prev, key, prediction, clip)[0]

    return _reverse(step, key, shape, schedule, num_steps, spacing), jnp.asarray(num_steps, jnp.int32)


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
    spacing: str = "linspace",
) -> tuple[jax.Array, jax.Array]:
    """DDIM (Song et al. 2021); eta = 0 is deterministic, eta = 1 matches ancestral.
    `spacing`: see `timesteps`."""

    def step(x, t, t_prev, key):
        return ddim_step(apply_fn, params, schedule, x, t, t_prev, key, prediction, clip, eta)[0]

    return _reverse(step, key, shape, schedule, num_steps, spacing), jnp.asarray(num_steps, jnp.int32)


def _t_of(table: jax.Array, log_sigma: jax.Array, continuous_t: bool) -> jax.Array:
    """The model step for a noise level: t interpolated linearly against the log sigma
    `table`, rounded to int32 unless `continuous_t`."""
    t = jnp.interp(log_sigma, table, jnp.arange(table.shape[0], dtype=jnp.float32))
    return t if continuous_t else jnp.round(t).astype(jnp.int32)


def step_grid(
    s: Schedule, num_steps: int, spacing: str = "time_uniform", continuous_t: bool = False
) -> tuple[jax.Array, jax.Array]:
    """`num_steps` model steps t from T-1 down to 0 and their log sigmas.

    time_uniform is evenly spaced in t (DDIM's `timesteps`), time_quadratic evenly
    in sqrt(t), logsnr evenly in lambda = -log sigma (Lu et al. 2022). Unless
    `continuous_t`, the steps are integers, made strictly decreasing where rounding
    would repeat one, and the log sigmas are the table's own.
    """
    big_t = s.num_timesteps
    if not 2 <= num_steps <= big_t:
        raise ValueError(f"num_steps must be in [2, {big_t}], got {num_steps}")
    table = log_sigmas(s)
    if spacing == "time_uniform":
        t = jnp.linspace(0.0, big_t - 1, num_steps)[::-1]
    elif spacing == "time_quadratic":
        t = jnp.square(jnp.linspace(0.0, math.sqrt(big_t - 1), num_steps))[::-1]
    elif spacing == "logsnr":
        ls = jnp.linspace(table[0], table[-1], num_steps)[::-1]
        t = jnp.interp(ls, table, jnp.arange(big_t, dtype=jnp.float32))
    else:
        raise ValueError(f"unknown spacing {spacing!r}: use one of {SPACINGS}")
    if continuous_t:
        return t, jnp.interp(t, jnp.arange(big_t, dtype=jnp.float32), table)
    # Step i may only lie in [n-1-i, T-1-i]; the reversed running max then keeps a
    # gap of at least one between neighbours while leaving a valid grid untouched.
    floor = jnp.arange(num_steps - 1, -1, -1, dtype=jnp.float32)
    t = jnp.clip(jnp.round(t), floor, floor + (big_t - num_steps))
    t = (jax.lax.cummax(t - floor, reverse=True) + floor).astype(jnp.int32)
    return t, table[t]


def _nfe_per_step(solver: diffrax.AbstractSolver) -> tuple[int, int]:
    """(evaluations per attempted step, extra evaluations on the first step)."""
    tableau = getattr(solver, "tableau", None)
    if tableau is None:  # Euler
        return 1, 0
    fsal = int(tableau.fsal)
    return len(tableau.c) + 1 - fsal, fsal


def ode_sample(
    apply_fn: ApplyFn,
    params,
    key: jax.Array,
    shape: tuple[int, ...],
    schedule: Schedule,
    num_steps: int | None = None,
    solver: str = "tsit5",
    rtol: float = 1e-3,
    atol: float = 1e-3,
    max_steps: int = 4096,
    spacing: str = "time_uniform",
    continuous_t: bool = False,
    prediction: str = "eps",
    clip: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """Solves the probability-flow ODE with diffrax; returns (images, nfe).

    The ODE is DDIM's: d x_bar / d sigma = eps_hat(x, t(sigma)) with x_bar =
    x / sqrt(alpha_bar) and sigma = sqrt(1 - alpha_bar) / sqrt(alpha_bar), from
    sigma(T-1) to sigma(0), followed by the x0 estimate at t = 0. The model gets
    round(t(sigma)) with t(sigma) interpolated against log sigma over the table, so
    the stages of a step between two grid points see the nearest integer step: the
    field is piecewise constant in t, which costs adaptive solves extra steps. With
    `continuous_t` the model gets the float t (both denoisers embed any real t). x0
    and v outputs are converted at the exact sigma. `clip` clips the x0 estimate
    inside the field; off by default, since it makes the field non-smooth.
    `num_steps` > 0 takes fixed steps between `num_steps` grid points of
    `step_grid` (so "euler" is exactly DDIM with as many steps); 0/None is adaptive
    (PIDController with rtol/atol on x_bar, at most `max_steps` steps). nfe counts every model
    evaluation, the final x0 estimate included. A failed solve yields NaN images.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown ODE solver {solver!r}: use one of {sorted(SOLVERS)}")
    adaptive = not num_steps
    if adaptive and solver not in ADAPTIVE:
        raise ValueError(f"adaptive solves need a solver with an error estimate {ADAPTIVE}")
    impl = SOLVERS[solver]()

    table = log_sigmas(schedule)

    def field(sigma, x_bar, args):
        ls = jnp.log(sigma)
        sa, sb = _scales(ls)
        t = _t_of(table, ls, continuous_t)
        return _denoise(apply_fn, params, x_bar * sa, t, sa, sb, prediction, clip)[1]

    if adaptive:
        controller, steps = diffrax.PIDController(rtol=rtol, atol=atol), max_steps
        t_end = jnp.zeros((), jnp.float32 if continuous_t else jnp.int32)
        ls0, ls1 = table[-1], table[0]
        # A first step this small is accepted: were it rejected, the FSAL solvers would
        # re-evaluate its first stage and nfe would miss one evaluation.
        dt0 = 1e-3 * (jnp.exp(ls1) - jnp.exp(ls0))
    else:
        ts, ls = step_grid(schedule, num_steps, spacing, continuous_t)
        controller, steps = diffrax.StepTo(ts=jnp.exp(ls)), num_steps - 1
        t_end, ls0, ls1, dt0 = ts[-1], ls[0], ls[-1], None
    z, _ = _noise(key, shape)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        impl,
        jnp.exp(ls0),
        jnp.exp(ls1),
        dt0,
        z / _scales(ls0)[0],
        stepsize_controller=controller,
        max_steps=steps,
        saveat=diffrax.SaveAt(t1=True),
        throw=False,
    )
    sa, sb = _scales(ls1)
    x0, _ = _denoise(apply_fn, params, sol.ys[-1] * sa, t_end, sa, sb, prediction, clip)
    ok = sol.result == diffrax.RESULTS.successful
    per_step, first = _nfe_per_step(impl)
    nfe = per_step * sol.stats["num_steps"] + first + 1
    return jnp.where(ok, jnp.clip(x0, -1.0, 1.0), jnp.nan), jnp.asarray(nfe, jnp.int32)


def dpmpp2m_sample(
    apply_fn: ApplyFn,
    params,
    key: jax.Array,
    shape: tuple[int, ...],
    schedule: Schedule,
    num_steps: int = 20,
    spacing: str = "logsnr",
    lower_order_final: bool = True,
    continuous_t: bool = False,
    prediction: str = "eps",
    clip: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """DPM-Solver++(2M) (Lu et al. 2022): the multistep second-order data-prediction solver.

    The model is evaluated at the `num_steps` points of `step_grid` (t = T-1 .. 0);
    the first step is first order (DDIM), and so is the last with
    `lower_order_final` when num_steps < 15; the output is the x0 estimate at t = 0.
    `clip` clips each x0 estimate (off by default: the solver extrapolates them).
    """
    ts, ls = step_grid(schedule, num_steps, spacing, continuous_t)
    sa, sb = _scales(ls)
    low_final = lower_order_final and num_steps < 15

    def step(carry, i):
        x, m_prev = carry
        m, _ = _denoise(apply_fn, params, x, ts[i], sa[i], sb[i], prediction, clip)
        h = ls[i] - ls[i + 1]  # lambda_{i+1} - lambda_i
        first_order = (i == 0) | (low_final & (i == num_steps - 2))
        w = jnp.where(first_order, 0.0, 0.5 * h / (ls[i - 1] - ls[i]))  # 1/(2r); unused at i=0
        d = m + w * (m - m_prev)
        x = (sb[i + 1] / sb[i]) * x - (sa[i + 1] * jnp.expm1(-h)) * d
        return (x, m), None

    x, _ = _noise(key, shape)
    (x, _), _ = jax.lax.scan(step, (x, jnp.zeros_like(x)), jnp.arange(num_steps - 1))
    x0, _ = _denoise(apply_fn, params, x, ts[-1], sa[-1], sb[-1], prediction, clip)
    return jnp.clip(x0, -1.0, 1.0), jnp.asarray(num_steps, jnp.int32)


SAMPLERS: dict[str, Callable[..., tuple[jax.Array, jax.Array]]] = {
    "ancestral": ancestral_sample,
    "ddim": ddim_sample,
    "ode": ode_sample,
    "dpmpp2m": dpmpp2m_sample,
}


def sample(
    name: str,
    apply_fn: ApplyFn,
    params,
    key: jax.Array,
    shape: tuple[int, ...],
    schedule: Schedule,
    num_steps: int | None = None,
    **options,
) -> tuple[jax.Array, jax.Array]:
    """Any sampler by name, as (images, nfe); num_steps None is the sampler's default."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}: use one of {sorted(SAMPLERS)}")
    fn = SAMPLERS[name]
    if num_steps is None:
        num_steps = inspect.signature(fn).parameters["num_steps"].default
    return fn(apply_fn, params, key, shape, schedule, num_steps, **options)
