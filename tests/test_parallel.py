"""odediff.parallel: one step or sampler over several devices equals one device's; CPU devices per core."""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from helpers import perturbed, tiny_training
from odediff.generation import make_sample_fn, with_sampling
from odediff.training import make_train_step


def _run_on(devices, c, model, tx, schedule, state, batch, steps=2):
    mesh = Mesh(np.array(devices), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    rep, split = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))
    fn = jax.jit(make_train_step(model, tx, schedule, c), out_shardings=(rep, rep))
    state = jax.device_put(state, rep)
    for _ in range(steps):
        state, metrics = fn(state, jax.device_put(batch, split))
    return state, metrics


@pytest.mark.parametrize("name", ["cunet", pytest.param("unet", marks=pytest.mark.long)])
def test_sharded_step_equals_single_device_step(name):
    assert jax.device_count() == 4, "conftest gives 4 fake CPU devices"
    setup = tiny_training(name)
    one, m1 = _run_on(jax.devices()[:1], *setup)
    four, m4 = _run_on(jax.devices(), *setup)
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert int(four.step) == 2


@pytest.mark.parametrize("sampler", ["ddim", "ancestral"])
def test_sampling_splits_the_batch_over_devices(sampler):
    c, model, _, schedule, state, _ = tiny_training()
    # with the zero-initialised output conv the denoiser would output zeros: perturb the params
    params = perturbed(state.params, jax.random.key(1), 0.1)
    one_device = Mesh(np.array(jax.devices()[:1]), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    c = with_sampling(c, sampler=sampler, steps=3)
    split = make_sample_fn(model, schedule, c, 8)
    whole = make_sample_fn(model, schedule, c, 8, mesh=one_device)
    key = jax.random.key(2)
    (a, nfe_a), (b, nfe_b) = split(params, key), whole(params, key)
    assert a.sharding.is_fully_replicated and len(a.sharding.device_set) == 4
    # float32 reductions split differently over 4 devices than on 1: a few 1e-5-level differences
    np.testing.assert_allclose(a, b, atol=2e-4)
    assert int(nfe_a) == int(nfe_b)
    # each of the 4 devices runs the denoiser's first conv on 2 of the 8 images
    assert "f32[2,8,8,4]" in split.lower(params, key).compile().as_text()


def test_cpu_devices_one_per_core_when_the_batch_splits_unless_the_environment_says():
    from odediff.parallel import cpu_devices_for

    assert cpu_devices_for(64, env={}, cores=2) == 2
    assert cpu_devices_for(63, env={}, cores=2) == 1
    assert cpu_devices_for(64, env={}, cores=16) == 16
    assert cpu_devices_for(8, env={}, cores=16) == 1
    assert cpu_devices_for(64, env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}, cores=2) is None
    assert cpu_devices_for(64, env={"JAX_NUM_CPU_DEVICES": "3"}, cores=2) is None
