import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from odediff.models.ode import FIELDS, MODES, SOLVERS, ODEBlock, ODESettings, VectorField, solve


def _decay(y, args):
    return -args * y


@pytest.mark.parametrize(
    "solver,steps,expected",
    [
        ("euler", 1, 0.0),  # 1 - h
        ("midpoint", 1, 0.5),  # 1 - h + h^2/2
        ("heun", 1, 0.5),
        ("rk4", 1, 1 - 1 + 1 / 2 - 1 / 6 + 1 / 24),  # the RK4 stability polynomial at h = -1
        ("euler", 4, 0.75**4),
    ],
)
def test_one_step_matches_the_stability_polynomial(solver, steps, expected):
    y = solve(_decay, jnp.ones((3,)), jnp.float32(1.0), ODESettings(solver, steps))
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("solver", ["rk4", "tsit5", "dopri5"])
def test_high_order_solvers_converge_to_the_exponential(solver):
    y = solve(_decay, jnp.ones((2,)), jnp.float32(1.0), ODESettings(solver, 8))
    np.testing.assert_allclose(y, np.exp(-1.0), rtol=1e-5)  # RK4 at h = 1/8: ~2e-6


def test_adaptive_solve_meets_its_tolerance():
    y = solve(_decay, jnp.ones((2,)), jnp.float32(3.0), ODESettings("tsit5", 0, "diffeqsolve", rtol=1e-6, atol=1e-8))
    np.testing.assert_allclose(y, np.exp(-3.0), rtol=1e-4)


def _conv_field(y, params):
    w, b = params
    h = jax.lax.conv_general_dilated(y, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jax.nn.softplus(h + b[None, None, None, :]) - y


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_modes_agree_in_value_and_gradient(solver):
    k1, k2 = jax.random.split(jax.random.key(0))
    y0 = jax.random.normal(k1, (2, 6, 6, 3))
    params = (0.3 * jax.random.normal(k2, (3, 3, 3, 3)), jnp.full((3,), 0.1))

    def loss(p, mode):
        return jnp.mean(jnp.square(solve(_conv_field, y0, p, ODESettings(solver, 2, mode))))

    values = {m: jax.jit(jax.value_and_grad(lambda p: loss(p, m)))(params) for m in MODES}
    (va, ga), (vb, gb) = values["unrolled"], values["diffeqsolve"]
    np.testing.assert_allclose(va, vb, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("adjoint", ["recursive", "direct", "backsolve"])
def test_adjoints_give_the_same_gradient(adjoint):
    def loss(a):
        return jnp.sum(solve(_decay, jnp.ones((2,)), a, ODESettings("rk4", 4, "diffeqsolve", adjoint=adjoint)))

    g = jax.grad(loss)(jnp.float32(0.7))
    # d/da of 2 * R(-a/4)^4 with R the RK4 polynomial, checked against the exact gradient of the exact flow.
    np.testing.assert_allclose(g, -2.0 * np.exp(-0.7), rtol=1e-3)


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="unknown ODE solver 'rk5'"):
        ODESettings(solver="rk5")
    with pytest.raises(ValueError, match="adaptive solves"):
        ODESettings("rk4", 0, "diffeqsolve")
    with pytest.raises(ValueError, match="adaptive solves"):
        ODESettings("tsit5", 0, "unrolled")
    with pytest.raises(ValueError, match="unknown ODE mode"):
        ODESettings(mode="scan")
    with pytest.raises(ValueError, match="unknown ODE adjoint"):
        ODESettings().replace(adjoint="forward")


ORDERS = {"euler": 1, "heun": 2, "midpoint": 2, "rk4": 4, "tsit5": 5, "dopri5": 5}


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_every_fixed_step_solver_has_its_order_of_accuracy(solver):
    """dy/ds = -y from y(0) = 1: the error against exp(-1) falls by 2^order as the steps
    double (in float64, where the fifth-order solvers stay clear of rounding)."""
    with jax.enable_x64(True):
        errs = [
            abs(float(solve(_decay, jnp.ones((), jnp.float64), 1.0, ODESettings(solver, n))) - np.exp(-1.0))
            for n in (8, 16, 32)
        ]
    orders = [np.log2(a / b) for a, b in zip(errs, errs[1:])]
    assert all(abs(o - ORDERS[solver]) < 0.4 for o in orders), (errs, orders)


def _hand_written_field(kind, p, y, scale, shift):
    """The two fields written out with flax's GroupNorm and jax.nn.softplus (8 channels: 2 groups)."""
    gn = lambda q, h: nn.GroupNorm(num_groups=2).apply({"params": q}, h)
    conv = lambda q, h: (
        jax.lax.conv_general_dilated(h, q["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        + q["bias"][None, None, None, :]
    )
    h = jax.nn.softplus(conv(p["Conv_0"], gn(p["GroupNorm_0"], y)))
    h = gn(p["GroupNorm_1"], h) * (1.0 + scale[:, None, None, :]) + shift[:, None, None, :]
    if kind == "release":
        return jax.nn.softplus(conv(p["Conv_1"], h)) + y
    return conv(p["Conv_1"], jax.nn.softplus(h))


@pytest.mark.parametrize("kind", FIELDS)
def test_vector_fields_match_their_written_out_form(kind):
    y = jax.random.normal(jax.random.key(0), (2, 5, 5, 8))
    scale, shift = (0.5 * jax.random.normal(k, (2, 8)) for k in jax.random.split(jax.random.key(1)))
    field = VectorField(8, "group", kind)
    params = field.init(jax.random.key(2), y, scale, shift)["params"]
    params = jax.tree.map(lambda a: a + 0.2 * jax.random.normal(jax.random.key(3), a.shape), params)
    np.testing.assert_allclose(
        field.apply({"params": params}, y, scale, shift),
        _hand_written_field(kind, params, y, scale, shift),
        rtol=1e-4,
        atol=1e-5,
    )


def test_residual_ode_block_starts_as_the_identity_and_the_release_block_does_not():
    y = jax.random.normal(jax.random.key(0), (2, 6, 6, 8))
    temb = jax.random.normal(jax.random.key(1), (2, 16))
    out = {}
    for kind in FIELDS:
        block = ODEBlock(8, field=kind, ode=ODESettings("rk4"))
        params = block.init(jax.random.key(2), y, temb)
        out[kind] = block.apply(params, y, temb)
    np.testing.assert_array_equal(out["residual"], y)
    # dy/ds = softplus(..) + y: y(1) is about e y + (e - 1) softplus(..)
    assert float(jnp.mean(jnp.abs(out["release"]))) > 2.0 * float(jnp.mean(jnp.abs(y)))


def test_unknown_field_is_a_clear_error():
    y = jnp.zeros((1, 4, 4, 8))
    with pytest.raises(ValueError, match="unknown ODE field 'second_order'"):
        VectorField(8, "group", "second_order").init(jax.random.key(0), y, y[:, 0, 0], y[:, 0, 0])
