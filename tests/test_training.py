import json

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from helpers import tiny_config
from odediff import data
from odediff.models import build_denoiser
from odediff.schedule import make_schedule
from odediff.generation import make_sample_fn
from odediff.train_state import create_train_state, make_optimizer
from odediff.training import ema_decay, make_train_step


def _setup(name="cunet"):
    c = tiny_config(name)
    model = build_denoiser(c.model)
    tx = make_optimizer(c.training)
    schedule = make_schedule(c.diffusion.beta_schedule, c.diffusion.num_timesteps)
    state = create_train_state(model, tx, c, jax.random.key(0))
    source = data.load_source(c.data, "train")
    batch = data.get_batch(source, c.data, c.training.batch_size, c.seed, 0)
    return c, model, tx, schedule, state, batch


def _run_on(devices, c, model, tx, schedule, state, batch, steps=2):
    mesh = Mesh(np.array(devices), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    rep, split = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))
    fn = jax.jit(make_train_step(model, tx, schedule, c), out_shardings=(rep, rep))
    state = jax.device_put(state, rep)
    for _ in range(steps):
        state, metrics = fn(state, jax.device_put(batch, split))
    return state, metrics


@pytest.mark.parametrize("name", ["cunet", "unet"])
def test_sharded_step_equals_single_device_step(name):
    assert jax.device_count() == 4, "conftest gives 4 fake CPU devices"
    setup = _setup(name)
    one, m1 = _run_on(jax.devices()[:1], *setup)
    four, m4 = _run_on(jax.devices(), *setup)
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert int(four.step) == 2


@pytest.mark.parametrize("sampler", ["ddim", "ancestral"])
def test_sampling_splits_the_batch_over_devices(sampler):
    c, model, _, schedule, state, _ = _setup()
    # with the zero-initialised output conv the denoiser would output zeros: perturb the params
    leaves, tree = jax.tree.flatten(state.params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    one_device = Mesh(np.array(jax.devices()[:1]), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    split = make_sample_fn(model, schedule, c, 8, sampler, 3)
    whole = make_sample_fn(model, schedule, c, 8, sampler, 3, mesh=one_device)
    key = jax.random.key(2)
    (a, nfe_a), (b, nfe_b) = split(params, key), whole(params, key)
    assert a.sharding.is_fully_replicated and len(a.sharding.device_set) == 4
    # float32 reductions split differently over 4 devices than on 1: a few 1e-5-level differences
    np.testing.assert_allclose(a, b, atol=2e-4)
    assert int(nfe_a) == int(nfe_b)
    # each of the 4 devices runs the denoiser's first conv on 2 of the 8 images
    assert "f32[2,8,8,4]" in split.lower(params, key).compile().as_text()


def test_a_nonfinite_batch_changes_nothing_and_is_recorded():
    c, model, tx, schedule, state, batch = _setup()
    fn = jax.jit(make_train_step(model, tx, schedule, c))
    good, _ = fn(state, batch)
    bad_batch = batch.copy()
    bad_batch[0, 0, 0, 0] = np.nan
    after, metrics = fn(good, bad_batch)
    assert not np.isfinite(float(metrics["loss"]))
    assert int(after.first_nonfinite) == 1 and int(after.num_nonfinite) == 1
    _assert_same((good.params, good.ema_params, good.opt_state), (after.params, after.ema_params, after.opt_state))
    # "stop" refuses every later update too; "skip" goes on training.
    stopped, _ = fn(after, batch)
    _assert_same(stopped.params, good.params)
    c.training.nonfinite = "skip"
    fn_skip = jax.jit(make_train_step(model, tx, schedule, c))
    went_on, _ = fn_skip(after, batch)
    with pytest.raises(AssertionError):
        _assert_same(went_on.params, good.params)


def _assert_same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


def test_training_reduces_the_loss():
    c, model, tx, schedule, state, _ = _setup()
    c.training.update(learning_rate=3e-3, warmup_steps=5)
    tx = make_optimizer(c.training)
    state = create_train_state(model, tx, c, jax.random.key(0))
    source = data.load_source(c.data, "train")
    fn = jax.jit(make_train_step(model, tx, schedule, c))
    losses = []
    for step in range(60):
        state, m = fn(state, data.get_batch(source, c.data, 32, c.seed, step))
        losses.append(float(m["loss"]))
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10])


def test_ema_is_warmed_up_then_follows_the_configured_decay():
    assert float(ema_decay(0.999, 0)) == pytest.approx(0.1)
    assert float(ema_decay(0.999, 90)) == pytest.approx(91 / 100)
    assert float(ema_decay(0.999, 100_000)) == pytest.approx(0.999)
    c, model, tx, schedule, state, batch = _setup()
    after, _ = jax.jit(make_train_step(model, tx, schedule, c))(state, batch)
    for e, p0, p1 in zip(*(jax.tree.leaves(t) for t in (after.ema_params, state.params, after.params))):
        np.testing.assert_allclose(e, 0.1 * p0 + 0.9 * p1, rtol=1e-5, atol=1e-7)


def test_cpu_devices_one_per_core_when_the_batch_splits_unless_the_environment_says():
    from odediff.parallel import cpu_devices_for

    assert cpu_devices_for(64, env={}, cores=2) == 2
    assert cpu_devices_for(63, env={}, cores=2) == 1
    assert cpu_devices_for(64, env={}, cores=16) == 16
    assert cpu_devices_for(8, env={}, cores=16) == 1
    assert cpu_devices_for(64, env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}, cores=2) is None
    assert cpu_devices_for(64, env={"JAX_NUM_CPU_DEVICES": "3"}, cores=2) is None


def test_gradient_accumulation_equals_one_batch_k_times_larger():
    c, model, tx, schedule, state, batch = _setup()

    def three_steps(config):  # the first update is 0 (warm-up): take three
        fn, s, ms = jax.jit(make_train_step(model, tx, schedule, config)), state, []
        for _ in range(3):
            s, m = fn(s, batch)
            ms.append(m)
        return s, ms

    whole, m1 = three_steps(c)
    c.training.grad_accum_steps = 4
    accum, m4 = three_steps(c)
    assert " scan[" in str(jax.make_jaxpr(make_train_step(model, tx, schedule, c))(state, batch))  # micro-batches ran
    for a, b in zip(m1, m4):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
        np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-4)
    for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(accum.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(whole.params)))


def test_configs_saved_before_a_key_existed_resume_with_its_default():
    from odediff.config import config_differences, config_to_json, default_config

    saved = json.loads(config_to_json(default_config()))
    del saved["training"]["grad_accum_steps"]
    assert config_differences(saved, default_config()) == []
    c = default_config()
    c.training.grad_accum_steps = 2
    assert config_differences(saved, c) == ["training.grad_accum_steps"]
