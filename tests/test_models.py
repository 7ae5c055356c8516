from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import perturbed
from odediff.config import default_config, load_config_file
from odediff.models import build_denoiser, with_block_solver
from odediff.models.layers import Conv, GroupNorm, softplus
from odediff.models.ode import ODEBlock, ODESettings
from odediff.train_state import init_params


def _count(params) -> int:
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))


def _abstract_count(model, shape) -> int:
    x = jnp.zeros(shape, jnp.float32)
    return _count(jax.eval_shape(lambda: model.init(jax.random.key(0), x, jnp.zeros((1,), jnp.int32))))


def _celeba64():
    return load_config_file(Path(__file__).parents[1] / "configs" / "celeba64.py")


def test_ddpm_unet_has_the_published_parameter_count():
    c = default_config()
    c.model.name = "unet"
    c.model.unet.update(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1)
    n = _abstract_count(build_denoiser(c.model), (1, 32, 32, 3))
    assert abs(n - 35_746_307) <= 0.001 * 35_746_307, n


def test_cunet_is_at_most_a_quarter_of_the_unet_at_the_paper_setting():
    c = _celeba64()
    shape = (1, 64, 64, 3)
    n_unet = _abstract_count(_with(c, "unet"), shape)
    n_cunet = _abstract_count(_with(c, "cunet"), shape)
    assert n_unet == 35_746_307
    assert n_cunet / n_unet <= 0.25, (n_cunet, n_unet)


def test_a_unet_narrower_than_32_channels_builds_with_attention_at_any_level():
    c = default_config()
    c.model.name = "unet"
    c.model.unet.update(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8, 4))  # 16 and 32 channels
    model = build_denoiser(c.model)
    out = jax.eval_shape(
        lambda: model.init_with_output(jax.random.key(0), jnp.zeros((2, 8, 8, 1)), jnp.zeros((2,), jnp.int32))[0]
    )
    assert out.shape == (2, 8, 8, 1)


def _with(c, name):
    c = c.copy_and_resolve_references()
    c.model.name = name
    return build_denoiser(c.model)


def _tiny(name: str, **cunet):
    c = default_config()
    c.data.image_size = 8
    c.model.name = name
    c.model.cunet.update(nf=4, ch_mult=(1,), time_embed_dim=8, num_heads=2, head_dim=4, **cunet)
    c.model.unet.update(ch=16, ch_mult=(1,), num_res_blocks=1)
    return c


def _init(model, c):
    return jax.jit(lambda k: init_params(model, c, k))(jax.random.key(0))


@pytest.mark.parametrize("name", ["cunet", "unet"])
def test_both_denoisers_share_one_interface_and_depend_on_t(name):
    c = _tiny(name)
    if name == "cunet":
        c.model.cunet.attn_resolutions = (4,)
    model = build_denoiser(c.model)
    params = perturbed(_init(model, c), jax.random.key(1))
    x = jax.random.normal(jax.random.key(2), (2, 8, 8, 1))
    apply = jax.jit(lambda p, x, t: model.apply({"params": p}, x, t))
    out_a = apply(params, x, jnp.array([3, 3], jnp.int32))
    out_b = apply(params, x, jnp.array([900, 900], jnp.int32))
    assert out_a.shape == x.shape and out_a.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out_a)))
    assert float(jnp.max(jnp.abs(out_a - out_b))) > 1e-3 * float(jnp.max(jnp.abs(out_a)))


def test_a_unet_group_of_one_channel_would_erase_the_timestep_its_blocks_add():
    # at ch 16, 32 groups (gcd 16) normalise each channel alone: the embedding added per channel is
    # subtracted again with the mean, and the output no longer depends on t; the default keeps 4 a group
    c = _tiny("unet")
    outputs = {}
    for groups in (32, 0):
        c.model.unet.norm_groups = groups
        model = build_denoiser(c.model)
        params = perturbed(_init(model, c), jax.random.key(1))
        x = jax.random.normal(jax.random.key(2), (2, 8, 8, 1))
        apply = jax.jit(lambda p, t, model=model: model.apply({"params": p}, x, t))
        a, b = apply(params, jnp.array([3, 3])), apply(params, jnp.array([900, 900]))
        outputs[groups] = float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))
    assert outputs[32] < 1e-5 and outputs[0] > 1e-3, outputs


def test_every_cunet_ode_block_is_time_conditioned():
    c = _tiny("cunet")
    model = build_denoiser(c.model)
    params = _init(model, c)
    blocks = [k for k in params if k.startswith("ODEBlock")]
    assert len(blocks) == 2 * len(c.model.cunet.ch_mult) + 1
    for k in blocks:
        assert "time_proj" in params[k] and "field" in params[k]


def test_the_cunet_config_fields_become_one_ode_settings_that_every_block_uses():
    c = _tiny(
        "cunet",
        solver="heun",
        ode_steps=3,
        ode_mode="diffeqsolve",
        rtol=1e-4,
        atol=1e-5,
        adjoint="direct",
        max_ode_steps=9,
        remat=True,
    )
    model = build_denoiser(c.model)
    assert model.ode == ODESettings("heun", 3, "diffeqsolve", 1e-4, 1e-5, "direct", 9, True)
    seen = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, ODEBlock) and context.method_name == "__call__":
            seen.append(context.module.ode)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,), jnp.int32)))
    assert len(seen) == 2 * len(c.model.cunet.ch_mult) + 1 and set(seen) == {model.ode}


def test_another_block_solver_applies_the_trained_params_and_rk4_converges_to_a_fine_solve():
    c = _tiny("cunet")  # one Euler step per block
    model = build_denoiser(c.model)
    params = perturbed(_init(model, c), jax.random.key(1), scale=0.1)
    x = jax.random.normal(jax.random.key(2), (2, 8, 8, 1))
    t = jnp.array([10, 500], jnp.int32)
    out = lambda m: np.asarray(jax.jit(lambda p: m.apply({"params": p}, x, t))(params), np.float64)  # noqa: E731
    base = out(model)
    np.testing.assert_array_equal(out(build_denoiser(c.model, block_solver="euler", block_steps=1)), base)
    rk4 = {
        1: out(build_denoiser(c.model, block_solver="rk4", block_steps=1)),
        2: out(with_block_solver(model, "rk4", 2)),
    }
    fine = out(model.clone(ode=ODESettings("rk4", 16, "diffeqsolve")))  # diffrax's loop compiles quicker
    assert all(np.isfinite(y).all() for y in (*rk4.values(), fine))
    assert np.abs(rk4[1] - base).max() > 1e-3 * np.abs(base).max()
    err = {n: np.abs(y - fine).max() for n, y in rk4.items()}
    assert err[2] < err[1] / 4, err


def test_cunet_output_differs_when_a_single_block_sees_another_t():
    """Each block's FiLM really reaches the solve: zeroing one block's time projection changes the output."""
    c = _tiny("cunet")
    model = build_denoiser(c.model)
    params = perturbed(_init(model, c), jax.random.key(1))
    x = jax.random.normal(jax.random.key(2), (2, 8, 8, 1))
    t = jnp.array([10, 500], jnp.int32)
    apply = jax.jit(lambda p: model.apply({"params": p}, x, t))
    base = apply(params)
    for block in [k for k in params if k.startswith("ODEBlock")]:
        cut = jax.tree.map(lambda a: a, params)
        cut[block]["time_proj"] = jax.tree.map(jnp.zeros_like, cut[block]["time_proj"])
        assert float(jnp.max(jnp.abs(apply(cut) - base))) > 0, block


def test_cunet_instance_norm_normalises_per_channel_where_group_norm_pools_channels():
    group, instance = (build_denoiser(_tiny("cunet", norm=n).model) for n in ("group", "instance"))
    c = _tiny("cunet")
    params = perturbed(_init(group, c), jax.random.key(1))
    # the same parameters fit both (per-channel scale and shift), and the norm changes the function
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, _init(instance, c))
    x = jax.random.normal(jax.random.key(2), (2, 8, 8, 1))
    t = jnp.array([3, 700], jnp.int32)
    a, b = (jax.jit(m.apply)({"params": params}, x, t) for m in (group, instance))
    assert np.isfinite(a).all() and np.isfinite(b).all() and float(jnp.max(jnp.abs(a - b))) > 1e-3
    from odediff.models.layers import make_norm

    y = jax.random.normal(jax.random.key(3), (2, 4, 4, 8)) * jnp.arange(1.0, 9.0)[None, None, None] + 5.0
    inst = make_norm("instance", 8)
    out = inst.apply(inst.init(jax.random.key(0), y), y)
    np.testing.assert_allclose(out.mean((1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std((1, 2)), 1.0, atol=1e-3)


def test_unet_dropout_uses_the_rng_only_in_training():
    c = _tiny("unet")
    c.model.unet.dropout = 0.5
    model = build_denoiser(c.model)
    params = perturbed(_init(model, c), jax.random.key(1))
    x = jax.random.normal(jax.random.key(2), (2, 8, 8, 1))
    t = jnp.array([1, 2], jnp.int32)
    apply = jax.jit(
        lambda k, train: model.apply({"params": params}, x, t, train=train, rngs={"dropout": k}), static_argnums=1
    )
    e1, e2 = (apply(jax.random.key(i), False) for i in range(2))
    np.testing.assert_array_equal(e1, e2)
    tr = [apply(jax.random.key(i), True) for i in range(2)]
    assert float(jnp.max(jnp.abs(tr[0] - tr[1]))) > 0


def test_unknown_denoiser_is_a_clear_error():
    c = default_config()
    c.model.name = "transformer"
    with pytest.raises(ValueError, match="unknown model.name 'transformer'"):
        build_denoiser(c.model)


def test_softplus_matches_float64_reference_and_its_derivative_is_the_sigmoid():
    x = np.linspace(-80.0, 80.0, 200_001, dtype=np.float32)
    ref = np.logaddexp(x.astype(np.float64), 0.0)
    out = np.asarray(softplus(jnp.asarray(x)), np.float64)
    # Within float32 rounding of the value itself (and absolutely where it underflows).
    assert np.all(np.abs(out - ref) <= 2.5e-7 * np.maximum(ref, 1.0) + 1e-30), np.max(np.abs(out - ref))
    grad = np.asarray(jax.vmap(jax.grad(softplus))(jnp.asarray(x[::97])), np.float64)
    sig = 1.0 / (1.0 + np.exp(-x[::97].astype(np.float64)))
    np.testing.assert_allclose(grad, sig, rtol=1e-6, atol=1e-7)


def test_softplus_gradients_in_a_jitted_composition_match_jax_softplus():
    x = 4.0 * jax.random.normal(jax.random.key(0), (2, 6, 6, 8))
    w = jax.random.normal(jax.random.key(1), (8, 8))

    def loss(act, w, x):
        return jnp.sum(jnp.sin(act(act(x @ w) @ w.T - 1.0)))

    ours = jax.jit(jax.grad(lambda w, x: loss(softplus, w, x), argnums=(0, 1)))(w, x)
    theirs = jax.jit(jax.grad(lambda w, x: loss(jax.nn.softplus, w, x), argnums=(0, 1)))(w, x)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(b))))
    g16 = jax.grad(lambda x: jnp.sum(softplus(x)))(x.astype(jnp.bfloat16))
    assert g16.dtype == jnp.bfloat16
    np.testing.assert_allclose(g16.astype(jnp.float32), jax.nn.sigmoid(x), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize(
    "groups, shape", [(1, (3, 8, 8, 32)), (8, (3, 8, 8, 32)), (32, (3, 8, 8, 32)), (12, (2, 5, 7, 48))]
)
def test_group_norm_and_its_gradients_match_flax(groups, shape):
    c = shape[-1]
    x = 2.0 * jax.random.normal(jax.random.key(0), shape) + 1.5
    params = {"params": {"scale": jax.random.normal(jax.random.key(1), (c,)), "bias": jnp.arange(float(c))}}
    ours, theirs = GroupNorm(num_groups=groups), nn.GroupNorm(num_groups=groups)
    np.testing.assert_allclose(ours.apply(params, x), theirs.apply(params, x), atol=1e-5)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x)) == jax.tree.map(
        jnp.shape, theirs.init(jax.random.key(0), x)
    )
    w = jax.random.normal(jax.random.key(2), shape)
    grad = lambda m: jax.jit(jax.grad(lambda p, x: jnp.sum(w * jnp.sin(m.apply(p, x))), argnums=(0, 1)))(params, x)
    for a, b in zip(jax.tree.leaves(grad(ours)), jax.tree.leaves(grad(theirs))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(b))))


@pytest.mark.parametrize(
    "image, kernel, padding",
    [((2, 2), (3, 3), "SAME"), ((1, 1), (3, 3), "SAME"), ((2, 3), (3, 5), "SAME"), ((2, 2), (3, 3), ((2, 0), (1, 1)))],
)
def test_a_conv_on_an_image_smaller_than_its_kernel_is_one_product_with_flax_conv_s_outputs_and_gradients(
    image, kernel, padding
):
    x = jax.random.normal(jax.random.key(0), (3, *image, 8))
    ours, theirs = Conv(6, kernel, padding=padding), nn.Conv(6, kernel, padding=padding)
    params = theirs.init(jax.random.key(1), x)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.key(1), x)) == jax.tree.map(jnp.shape, params)
    hlo = jax.jit(ours.apply).lower(params, x).as_text()
    assert "convolution" not in hlo and "dot_general" in hlo
    np.testing.assert_allclose(ours.apply(params, x), theirs.apply(params, x), rtol=1e-5, atol=1e-5)
    grad = lambda m: jax.grad(lambda p, x: jnp.sum(jnp.sin(m.apply(p, x))), argnums=(0, 1))(params, x)
    for a, b in zip(jax.tree.leaves(grad(ours)), jax.tree.leaves(grad(theirs))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_a_conv_on_an_image_as_large_as_its_kernel_or_strided_stays_a_convolution():
    for shape, kw in [((2, 3, 3, 4), {}), ((2, 2, 2, 4), {"strides": 2}), ((2, 2, 2, 4), {"feature_group_count": 2})]:
        x = jnp.ones(shape)
        m = Conv(4, (3, 3), **kw)
        assert "convolution" in jax.jit(m.apply).lower(m.init(jax.random.key(0), x), x).as_text()


def test_group_norm_film_is_the_written_out_formula():
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 16)) - 0.5
    params = {"params": {"scale": 1.0 + jax.random.normal(jax.random.key(1), (16,)), "bias": jnp.linspace(-1, 1, 16)}}
    film_scale, film_shift = (jax.random.normal(k, (2, 16)) for k in jax.random.split(jax.random.key(2)))
    ours = GroupNorm(num_groups=4).apply(params, x, film_scale, film_shift)
    g = x.reshape(2, 4, 4, 4, 4)
    mean, var = g.mean((1, 2, 4), keepdims=True), g.var((1, 2, 4), keepdims=True)
    scale, bias = (params["params"][k][None, None, None, :] for k in ("scale", "bias"))
    normed = ((g - mean) / jnp.sqrt(var + 1e-6)).reshape(x.shape) * scale + bias
    expected = normed * (1.0 + film_scale[:, None, None]) + film_shift[:, None, None]
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["cunet", "unet"])
def test_class_conditional_denoisers_depend_on_the_label_and_treat_none_as_the_null_class(name):
    c = _tiny(name)
    base = _init(build_denoiser(c.model), c)
    c.model.num_classes = 3
    model = build_denoiser(c.model)
    params = perturbed(_init(model, c), jax.random.key(1))
    dim = c.model.cunet.time_embed_dim if name == "cunet" else 4 * c.model.unet.ch
    count = lambda p: sum(x.size for x in jax.tree.leaves(p))
    assert count(params) - count(base) == (3 + 1) * dim  # one vector per class and the null class
    x = jax.random.normal(jax.random.key(2), (2, 8, 8, 1))
    t = jnp.array([100, 100], jnp.int32)
    apply = jax.jit(lambda p, y: model.apply({"params": p}, x, t, y))
    out = {y: apply(params, jnp.array([y, y], jnp.int32)) for y in range(4)}
    assert float(jnp.max(jnp.abs(out[0] - out[1]))) > 1e-4
    np.testing.assert_allclose(
        jax.jit(lambda p: model.apply({"params": p}, x, t))(params), out[3], rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("name", ["cunet", "unet"])
def test_rematerialised_blocks_keep_names_and_gradients(name):
    c = _tiny(name)
    model = build_denoiser(c.model)
    params = perturbed(_init(model, c), jax.random.key(1), scale=0.1)
    c.model[name].remat = True
    remat = build_denoiser(c.model)
    assert jax.tree.structure(_init(remat, c)) == jax.tree.structure(params)  # checkpoints load either way
    x = jax.random.normal(jax.random.key(2), (2, 8, 8, 1))
    t = jnp.array([5, 40], jnp.int32)
    grad = lambda m: jax.jit(jax.grad(lambda p: jnp.sum(m.apply({"params": p}, x, t) ** 2)))
    recompute = grad(remat)
    assert "remat" in str(recompute.trace(params).jaxpr)  # the trace the call below compiles
    plain, recomputed = jax.tree.leaves(grad(model)(params)), jax.tree.leaves(recompute(params))
    scale = max(float(np.abs(a).max()) for a in plain)  # float32 reassociation: compare on the gradients' scale
    for a, b in zip(plain, recomputed):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-4 * scale)


@pytest.mark.parametrize("name", ["cunet", "unet"])
def test_bfloat16_params_and_input_keep_every_activation_in_bfloat16(name):
    c = _tiny(name)
    c.model.num_classes = 3
    model = build_denoiser(c.model)
    params = jax.tree.map(lambda a: a.astype(jnp.bfloat16), perturbed(_init(model, c), jax.random.key(1)))
    x = jax.random.normal(jax.random.key(2), (2, 8, 8, 1), jnp.bfloat16)
    # float32 anywhere on the way would promote everything after it, the output included
    assert jax.jit(model.apply)({"params": params}, x, jnp.array([5, 40]), jnp.array([0, 2])).dtype == jnp.bfloat16
