"""Samplers against an oracle denoiser for Gaussian data x0 ~ N(MU, SD^2) per pixel.

With the exact posterior mean every sampler is an affine map of its noise, so the
deterministic ones are checked sample by sample against float64 recursions written
in x_bar = x / sqrt(alpha_bar) (a different form from the samplers' own), the
stochastic ones against the exact moments of their linear-Gaussian chain, and the
ODE solvers against the exact probability-flow solution mu + (x_bar - mu) *
sqrt((SD^2 + sigma'^2) / (SD^2 + sigma^2)).
"""

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import FULL_OPTIMISATION
from odediff import samplers as S
from odediff.schedule import make_schedule
from odediff.train_state import init_params

T = 1000
SCHED = make_schedule("linear", T)
AB = np.asarray(SCHED.alphas_cumprod, np.float64)
BETAS = np.asarray(SCHED.betas, np.float64)
SIGMAS = np.sqrt((1.0 - AB) / AB)
MU, SD = 0.3, 0.2
BIG = (4096, 4, 4, 1)  # 65536 iid pixels: sampling error ~1e-3
SMALL = (256, 2, 2, 1)
STATIC = (
    "num_steps",
    "prediction",
    "clip",
    "solver",
    "rtol",
    "atol",
    "spacing",
    "continuous_t",
    "lower_order_final",
    "eta",
    "max_steps",
)


@functools.cache
def oracle(prediction: str = "eps"):
    """The exact denoiser for N(MU, SD^2) data; float t is interpolated like the samplers do."""
    steps = jnp.arange(T, dtype=jnp.float32)

    def apply_fn(params, x, t):
        del params
        if jnp.issubdtype(t.dtype, jnp.integer):
            ab = SCHED.alphas_cumprod[t]
            sa, sb = jnp.sqrt(ab), jnp.sqrt(1.0 - ab)
        else:
            sigma = jnp.exp(jnp.interp(t, steps, S.log_sigmas(SCHED)))
            sa = jax.lax.rsqrt(1.0 + jnp.square(sigma))
            sb = sigma * sa
        sa, sb = sa[:, None, None, None], sb[:, None, None, None]
        denom = jnp.square(sa) * SD**2 + jnp.square(sb)
        eps = sb * (x - sa * MU) / denom
        x0 = MU + SD**2 * sa * (x - sa * MU) / denom
        return {"eps": eps, "x0": x0, "v": sa * eps - sb * x0}[prediction]

    return apply_fn


@functools.cache
def _jitted(name: str, optimise: bool = False):
    fn = S.SAMPLERS[name]
    names = [a for a in STATIC if a in inspect.signature(fn).parameters]
    return jax.jit(
        fn, static_argnums=(0, 3), static_argnames=names, compiler_options=FULL_OPTIMISATION if optimise else None
    )


@functools.cache
def run(name: str, shape=BIG, seed: int = 0, prediction: str = "eps", optimise: bool = False, **kw):
    """(images as float64, nfe) of a sampler jitted with static arguments; `optimise` for runs of
    many steps, where XLA's optimisation saves more time than it costs."""
    images, nfe = _jitted(name, optimise)(
        oracle(prediction), None, jax.random.key(seed), shape, SCHED, prediction=prediction, **kw
    )
    return np.asarray(images, np.float64), int(nfe)


def noise(shape=BIG, seed: int = 0) -> np.ndarray:
    """The x_T every sampler starts from: normal(split(key)[0])."""
    k0 = jax.random.split(jax.random.key(seed))[0]
    return np.asarray(jax.random.normal(k0, shape, jnp.float32), np.float64)


# Float64 references. y = x_bar - MU; the posterior mean is x0_hat = MU + k(sigma) y and
# eps_hat = g(sigma) y, so each deterministic sampler multiplies y by a constant.
def k(s):
    return SD**2 / (SD**2 + s**2)


def g(s):
    return s / (SD**2 + s**2)


def coef_euler(sig: np.ndarray) -> float:  # = DDIM
    c = 1.0
    for s0, s1 in zip(sig, sig[1:]):
        c *= 1.0 + (s1 - s0) * g(s0)
    return c * k(sig[-1])


def coef_heun(sig: np.ndarray) -> float:
    c = 1.0
    for s0, s1 in zip(sig, sig[1:]):
        h = s1 - s0
        c *= 1.0 + 0.5 * h * (g(s0) + g(s1) * (1.0 + h * g(s0)))
    return c * k(sig[-1])


def coef_dpmpp2m(sig: np.ndarray, lower_order_final: bool = True) -> float:
    lam, n, c, m_prev = -np.log(sig), len(sig), 1.0, 0.0
    for i in range(n - 1):
        m, h = c * k(sig[i]), lam[i + 1] - lam[i]
        if i == 0 or (lower_order_final and n < 15 and i == n - 2):
            d = m
        else:
            d = m + (m - m_prev) * h / (2.0 * (lam[i] - lam[i - 1]))
        c, m_prev = np.exp(-h) * c + (1.0 - np.exp(-h)) * d, m
    return c * k(sig[-1])


def coef_exact() -> float:
    """The exact ODE from sigma(T-1) to sigma(0), then the x0 estimate at t = 0."""
    return SD**2 / np.sqrt((SD**2 + SIGMAS[0] ** 2) * (SD**2 + SIGMAS[-1] ** 2))


def affine_images(coef: float, shape=BIG, seed: int = 0) -> np.ndarray:
    w = noise(shape, seed) * np.sqrt(1.0 + SIGMAS[-1] ** 2) - MU
    return np.clip(MU + coef * w, -1.0, 1.0)


def chain_moments(kind: str, num_steps: int, eta: float = 0.0) -> tuple[float, float]:
    """Exact mean and std of the ancestral / DDIM chain: x_prev = A x + B + s z."""
    ts = np.asarray(S.timesteps(T, num_steps))
    mean, var = 0.0, 1.0
    for t, u in zip(ts, np.append(ts[1:], -1)):
        ab, abp = AB[t], (AB[u] if u >= 0 else 1.0)
        sa, sb = np.sqrt(ab), np.sqrt(1.0 - ab)
        a = SD**2 * sa / (ab * SD**2 + 1.0 - ab)
        b = MU * (1.0 - a * sa)  # x0_hat = a x + b
        if kind == "ancestral":
            beta = BETAS[t] if u == t - 1 else 1.0 - ab / abp
            om = (1.0 - abp) + abp * beta
            c0, c1 = np.sqrt(abp) * beta / om, np.sqrt(1.0 - beta) * (1.0 - abp) / om
            A, B, s2 = c0 * a + c1, c0 * b, beta * (1.0 - abp) / om
        else:
            s2 = eta**2 * (1.0 - abp) / (1.0 - ab) * (1.0 - ab / abp)
            dc = np.sqrt(max(1.0 - abp - s2, 0.0))
            A = np.sqrt(abp) * a + dc * (1.0 - sa * a) / sb
            B = np.sqrt(abp) * b - dc * sa * b / sb
        mean, var = A * mean + B, A * A * var + s2
    return mean, np.sqrt(var)


def assert_moments(x: np.ndarray, mean: float, std: float, extra: float = 0.0):
    """Within 5 standard errors (plus `extra`) of the given mean and std."""
    n = x.size
    assert abs(x.mean() - mean) < 5 * std / np.sqrt(n) + extra, (x.mean(), mean)
    assert abs(x.std() - std) < 5 * std / np.sqrt(2 * n) + extra, (x.std(), std)


def grid_sigmas(num_steps: int, spacing: str) -> np.ndarray:
    return SIGMAS[np.asarray(S.step_grid(SCHED, num_steps, spacing)[0])]


@pytest.mark.parametrize("spacing", S.SPACINGS)
def test_step_grid(spacing):
    for n in (2, 7, 160, 1000):
        t, ls = S.step_grid(SCHED, n, spacing)
        t = np.asarray(t)
        assert t.dtype == np.int32 and t.shape == (n,) and t[0] == T - 1 and t[-1] == 0
        assert np.all(np.diff(t) < 0)
        np.testing.assert_allclose(np.exp(np.asarray(ls, np.float64)), SIGMAS[t], rtol=1e-5)
        if spacing == "time_uniform":
            np.testing.assert_array_equal(t, np.asarray(S.timesteps(T, n)))
    tc, lsc = S.step_grid(SCHED, 9, spacing, continuous_t=True)
    assert tc.dtype == jnp.float32 and np.all(np.diff(np.asarray(tc)) < 0)
    if spacing == "logsnr":
        step = np.log(SIGMAS[0] / SIGMAS[-1]) / 8
        np.testing.assert_allclose(np.diff(np.asarray(lsc)), step, rtol=1e-4)


def test_many_steps_reproduce_the_data():
    """Fine samplers give the data's moments up to their small, exactly known bias."""
    x, _ = run("ancestral", num_steps=1000, optimise=True)
    assert_moments(x, *chain_moments("ancestral", 1000))
    assert_moments(x, MU, SD, extra=0.006)
    for name, kw in [("ddim", dict(num_steps=1000)), ("ode", {}), ("dpmpp2m", dict(num_steps=50))]:
        x, _ = run(name, optimise=True, **kw)
        assert_moments(x, MU, SD, extra=0.004)


@pytest.mark.parametrize(
    "name,num_steps,eta",
    [
        ("ancestral", 10, 0.0),
        ("ddim", 10, 1.0),
        ("ddim", 10, 0.5),
        ("ddim", 4, 0.3),
    ],
)
def test_stochastic_chains_match_exact_moments(name, num_steps, eta):
    kw = dict(num_steps=num_steps) | (dict(eta=eta) if name == "ddim" else {})
    x, _ = run(name, **kw)
    assert_moments(x, *chain_moments(name, num_steps, eta))


def test_ddim_eta_one_is_ancestral():
    """Same keys, same chain: equal sample by sample, not only in distribution."""
    a, _ = run("ancestral", num_steps=10)
    d, _ = run("ddim", num_steps=10, eta=1.0)
    np.testing.assert_allclose(d, a, atol=2e-5)
    np.testing.assert_allclose(chain_moments("ddim", 10, 1.0), chain_moments("ancestral", 10), rtol=1e-9)


DETERMINISTIC = [  # (sampler, its arguments, the float64 recursion it must equal)
    ("ddim", dict(num_steps=10), coef_euler),
    ("ddim", dict(num_steps=50), coef_euler),
    ("ode", dict(num_steps=10, solver="euler"), coef_euler),
    ("ode", dict(num_steps=10, solver="heun"), coef_heun),
    ("ode", dict(num_steps=12, solver="heun", spacing="logsnr"), coef_heun),
    ("dpmpp2m", dict(num_steps=10), coef_dpmpp2m),
    ("dpmpp2m", dict(num_steps=10, lower_order_final=False), coef_dpmpp2m),
    ("dpmpp2m", dict(num_steps=20, spacing="time_uniform"), coef_dpmpp2m),
    ("dpmpp2m", dict(num_steps=16, spacing="time_quadratic"), coef_dpmpp2m),
]


@pytest.mark.parametrize("name,kw,coef", DETERMINISTIC)
def test_deterministic_samplers_are_the_exact_affine_map(name, kw, coef):
    spacing = kw.get("spacing", "logsnr" if name == "dpmpp2m" else "time_uniform")
    extra = {"lower_order_final": kw["lower_order_final"]} if "lower_order_final" in kw else {}
    x, nfe = run(name, clip=False, **kw)
    expected = affine_images(coef(grid_sigmas(kw["num_steps"], spacing), **extra))
    np.testing.assert_allclose(x, expected, atol=5e-5)
    if name == "ode":
        assert nfe == (1 if kw["solver"] == "euler" else 2) * (kw["num_steps"] - 1) + 1


def test_ddim_bias_and_ode_euler_is_ddim():
    # DDIM shrinks the variance at few steps: std ~0.176 at 50 steps for SD = 0.2.
    assert 0.17 < SD * coef_euler(grid_sigmas(50, "time_uniform")) / coef_exact() < 0.18
    for n in (10,):
        np.testing.assert_allclose(
            run("ode", num_steps=n, solver="euler", clip=False)[0], run("ddim", num_steps=n, clip=False)[0], atol=2e-6
        )


def test_dpmpp2m_first_order_steps_are_ddim():
    """DPM-Solver++ 1 is DDIM: with 2 or 3 points every step is first order."""
    for n in (2, 3):
        d, _ = run("dpmpp2m", shape=SMALL, num_steps=n, spacing="time_uniform")
        np.testing.assert_allclose(d, run("ddim", shape=SMALL, num_steps=n)[0], atol=3e-5)


@pytest.mark.parametrize("prediction", ["v", "x0"])
def test_v_and_x0_predictions_match_eps(prediction):
    for name, kw in [
        ("ddim", dict(num_steps=10)),
        ("dpmpp2m", dict(num_steps=10)),
        ("ode", dict(num_steps=10, solver="heun")),
    ]:
        ref, _ = run(name, clip=False, **kw)
        np.testing.assert_allclose(run(name, prediction=prediction, clip=False, **kw)[0], ref, atol=1e-4)


ORDERS = [
    ("ode", dict(solver="euler"), (20, 40, 80), (1.6, 2.6)),
    ("ode", dict(solver="heun"), (20, 40, 80), (3.0, 5.5)),
    ("dpmpp2m", {}, (20, 40, 80), (3.0, 5.5)),
    ("dpmpp2m", dict(continuous_t=True), (40, 80, 160), (3.0, 5.5)),
]


@pytest.mark.parametrize("name,kw,ns,band", ORDERS)
def test_convergence_order(name, kw, ns, band):
    """Per-sample error against the exact ODE solution from the same x_T, as steps double.

    On logSNR-spaced grids of the discrete schedule; at 160 steps the integer grid is
    distorted near t = 0 (several points want the same step), hence continuous t there.
    """
    ideal = affine_images(coef_exact(), SMALL)
    xs = [run(name, shape=SMALL, num_steps=n, spacing="logsnr", clip=False, **kw)[0] for n in ns]
    errs = [np.sqrt(np.mean((x - ideal) ** 2)) for x in xs]
    ratios = [a / b for a, b in zip(errs, errs[1:])]
    assert all(band[0] < r < band[1] for r in ratios), (errs, ratios)


def test_ode_adaptive():
    ideal = affine_images(coef_exact())
    x, nfe = run("ode", continuous_t=True, rtol=1e-5, atol=1e-5)
    assert np.sqrt(np.mean((x - ideal) ** 2)) < 2e-5 and 50 < nfe < 1000
    # Rounding t for the model costs accuracy between grid points, not stability.
    x, nfe = run("ode", optimise=True)
    assert np.sqrt(np.mean((x - ideal) ** 2)) < 1.5e-2 and 20 < nfe < 1000
    x2, nfe2 = _jitted("ode", True)(oracle(), None, jax.random.key(0), BIG, SCHED)
    np.testing.assert_array_equal(x, np.asarray(x2, np.float64))
    assert nfe == int(nfe2)


@pytest.mark.parametrize("kw", [dict(), dict(solver="heun", rtol=1e-2, atol=1e-2), dict(num_steps=5, solver="rk4")])
def test_nfe_counts_every_model_evaluation(kw):
    count = [0]

    def counting(params, x, t):
        jax.debug.callback(lambda: count.__setitem__(0, count[0] + 1))
        return oracle()(params, x, t)

    fn = jax.jit(lambda key: S.ode_sample(counting, None, key, (8, 2, 2, 1), SCHED, **kw))
    x, nfe = jax.block_until_ready(fn(jax.random.key(0)))
    assert int(nfe) == count[0] and np.all(np.isfinite(np.asarray(x)))


def test_every_sampler_jits_and_is_reproducible():
    fn = jax.jit(S.sample, static_argnums=(0, 1, 4, 6), static_argnames=STATIC)
    for name, steps in [(name, 3) for name in S.SAMPLERS] + [("ode", None)]:
        args = (name, oracle(), None)
        a, nfe = fn(*args, jax.random.key(1), (4, 2, 2, 1), SCHED, steps)
        b, nfe_b = fn(*args, jax.random.key(1), (4, 2, 2, 1), SCHED, steps)
        c, _ = fn(*args, jax.random.key(2), (4, 2, 2, 1), SCHED, steps)
        assert a.shape == (4, 2, 2, 1) and a.dtype == jnp.float32 and nfe.shape == () and nfe.dtype == jnp.int32
        assert np.array_equal(a, b) and int(nfe) == int(nfe_b) and not np.array_equal(a, c)
        if name != "ode":
            assert int(nfe) == steps
        elif steps:  # tsit5: 6 new evaluations a step, 1 more on the first, 1 for the x0 estimate
            assert int(nfe) == 6 * (steps - 1) + 2


@pytest.mark.long
def test_ode_sampler_with_a_cunet_converges_to_a_fine_solve():
    """An ODE inside an ODE: the probability-flow solve of a cU-Net, whose blocks are
    solves themselves, approaches a fine reference (RK4 x96) at second order with Heun and
    within tolerance adaptively. x0 prediction with small weights keeps the samples inside
    [-1, 1], where clipping hides nothing."""
    from helpers import perturbed, tiny_config
    from odediff.models import build_denoiser

    c = tiny_config("cunet")
    model = build_denoiser(c.model)
    shape = (2, 8, 8, 1)
    params = perturbed(init_params(model, c, jax.random.key(0)), jax.random.key(1), scale=0.1)

    def draw(**kw):
        apply = lambda p, x, t: model.apply({"params": p}, x, t)  # noqa: E731
        fn = jax.jit(
            lambda p: S.ode_sample(apply, p, jax.random.key(3), shape, SCHED, prediction="x0", continuous_t=True, **kw)
        )
        return np.asarray(fn(params)[0], np.float64)

    ref = draw(num_steps=96, solver="rk4")
    assert 0.05 < np.abs(ref).max() < 0.9
    err = {
        k: np.sqrt(np.mean((draw(**kw) - ref) ** 2))
        for k, kw in [
            ("heun12", dict(num_steps=12, solver="heun")),
            ("heun24", dict(num_steps=24, solver="heun")),
            ("adaptive", dict(rtol=1e-2, atol=1e-2)),
        ]
    }
    assert err["heun24"] < err["heun12"] / 3 and err["heun24"] < 0.02, err  # order > log2(3): second, not first
    assert err["adaptive"] < 2e-3, err


def test_bad_arguments():
    f, key = oracle(), jax.random.key(0)
    with pytest.raises(ValueError, match="solver"):
        S.ode_sample(f, None, key, SMALL, SCHED, 5, solver="nope")
    with pytest.raises(ValueError, match="adaptive"):
        S.ode_sample(f, None, key, SMALL, SCHED, None, solver="euler")
    with pytest.raises(ValueError, match="spacing"):
        S.dpmpp2m_sample(f, None, key, SMALL, SCHED, 5, spacing="nope")
    with pytest.raises(ValueError, match="num_steps"):
        S.dpmpp2m_sample(f, None, key, SMALL, SCHED, 1)
    with pytest.raises(ValueError, match="prediction"):
        S.dpmpp2m_sample(f, None, key, SMALL, SCHED, 5, prediction="nope")
    with pytest.raises(ValueError, match="sampler"):
        S.sample("nope", f, None, key, SMALL, SCHED, 5)


def test_trailing_spacing_starts_every_step_at_the_noisiest_level():
    np.testing.assert_array_equal(np.asarray(S.timesteps(1000, 1, "trailing")), [999])
    np.testing.assert_array_equal(np.asarray(S.timesteps(1000, 4, "trailing")), [999, 749, 499, 249])
    np.testing.assert_array_equal(np.asarray(S.timesteps(1000, 1000, "trailing")), np.arange(999, -1, -1))
    np.testing.assert_array_equal(np.asarray(S.timesteps(1000, 4)), [999, 666, 333, 0])
    with pytest.raises(ValueError, match='use spacing="trailing"'):
        S.timesteps(1000, 1)
    with pytest.raises(ValueError, match="unknown spacing"):
        S.timesteps(1000, 4, "leading")


def _tiny_sampling(name: str):
    """A tiny config, its denoiser, schedule and params off the zero-initialised output layer."""
    from helpers import perturbed, tiny_config
    from odediff.models import build_denoiser

    c = tiny_config(name)
    model = build_denoiser(c.model)
    params = init_params(model, c, jax.random.key(0))
    return c, model, make_schedule("linear", c.diffusion.num_timesteps), perturbed(params, jax.random.key(1), 0.1)


def test_sampling_with_the_training_block_solver_is_bit_identical_and_another_changes_the_samples():
    from odediff.generation import describe_sampling, make_sample_fn, with_sampling

    c, model, schedule, params = _tiny_sampling("cunet")
    assert (c.model.cunet.solver, c.model.cunet.ode_steps) == ("euler", 1)

    def draw(config):
        return np.asarray(make_sample_fn(model, schedule, config, 4)(params, jax.random.key(2))[0])

    base = draw(c)
    np.testing.assert_array_equal(draw(with_sampling(c, block_solver="euler", block_steps=1)), base)
    rk4 = with_sampling(c, block_solver="rk4", block_steps=2)
    x = draw(rk4)
    assert np.isfinite(x).all() and np.abs(x - base).max() > 1e-3
    assert describe_sampling(rk4.sampling).endswith(" block_solver=rk4 block_steps=2")


def test_block_solver_settings_no_model_could_use_are_one_line_errors():
    from odediff.config import ConfigError
    from odediff.generation import make_sample_fn, with_sampling
    from odediff.models import build_denoiser

    c, model, schedule, _ = _tiny_sampling("unet")
    with pytest.raises(ConfigError, match=r"^sampling\.block_solver='rk4'.*cU-Nets only") as e:
        make_sample_fn(model, schedule, with_sampling(c, block_solver="rk4"), 4)
    assert isinstance(e.value, ValueError) and "\n" not in str(e.value)  # the CLI prints it as one line
    with pytest.raises(ValueError, match="cU-Nets only"):
        build_denoiser(c.model, block_solver="rk4", block_steps=2)
    c, model, schedule, _ = _tiny_sampling("cunet")
    for fields, message in [
        (dict(block_solver="rk5"), "sampling.block_solver='rk5' is not one of"),
        (dict(block_steps=-1), "sampling.block_steps=-1 must be"),
    ]:
        with pytest.raises(ConfigError, match=message):
            make_sample_fn(model, schedule, with_sampling(c, **fields), 4)
    c.model.cunet.update(solver="tsit5", ode_steps=0, ode_mode="diffeqsolve")
    with pytest.raises(ConfigError, match="needs sampling.block_steps > 0"):
        make_sample_fn(build_denoiser(c.model), schedule, with_sampling(c, block_solver="rk4"), 4)
