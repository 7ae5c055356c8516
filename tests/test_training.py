import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import assert_trees_equal, perturbed, tiny_config, tiny_training
from odediff import data
from odediff.config import ConfigError
from odediff.generation import make_sample_fn, with_sampling
from odediff.models import build_denoiser
from odediff.schedule import make_schedule
from odediff.train_state import create_train_state, make_optimizer
from odediff.training import ema_decay, make_train_step


def test_a_nonfinite_batch_changes_nothing_and_is_recorded():
    c, model, tx, schedule, state, batch = tiny_training()
    fn = jax.jit(make_train_step(model, tx, schedule, c))
    good, _ = fn(state, batch)
    bad_batch = batch.copy()
    bad_batch[0, 0, 0, 0] = np.nan
    after, metrics = fn(good, bad_batch)
    assert not np.isfinite(float(metrics["loss"]))
    assert int(after.first_nonfinite) == 1 and int(after.num_nonfinite) == 1
    assert_trees_equal(
        (good.params, good.ema_params, good.opt_state), (after.params, after.ema_params, after.opt_state)
    )
    # "stop" refuses every later update too; "skip" goes on training.
    stopped, _ = fn(after, batch)
    assert_trees_equal(stopped.params, good.params)
    c.training.nonfinite = "skip"
    fn_skip = jax.jit(make_train_step(model, tx, schedule, c))
    went_on, _ = fn_skip(after, batch)
    with pytest.raises(AssertionError):
        assert_trees_equal(went_on.params, good.params)


def test_training_reduces_the_loss():
    c, model, tx, schedule, state, _ = tiny_training()
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
    c, model, tx, schedule, state, batch = tiny_training()
    after, _ = jax.jit(make_train_step(model, tx, schedule, c))(state, batch)
    for e, p0, p1 in zip(*(jax.tree.leaves(t) for t in (after.ema_params, state.params, after.params))):
        np.testing.assert_allclose(e, 0.1 * p0 + 0.9 * p1, rtol=1e-5, atol=1e-7)


def test_a_traced_rate_and_seed_give_each_config_its_own_steps_from_one_compiled_step():
    c, model, _, schedule, state0, batch = tiny_training()
    c.training.update(lr_schedule="wsd", num_steps=4, decay_steps=2, warmup_steps=1)

    traces = []

    @jax.jit
    def shared(state, batch, lr, seed):
        traces.append(1)
        return make_train_step(model, make_optimizer(c.training, lr), schedule, c, seed)(state, batch)

    def three_steps(step, *args):
        state = state0
        for _ in range(3):
            state, _ = step(state, batch, *args)
        return state

    lr, seed = 3e-3, 5
    own = c.copy_and_resolve_references()
    own.seed, own.training.learning_rate = seed, lr
    own_step = make_train_step(model, make_optimizer(own.training), schedule, own)
    alone = three_steps(jax.jit(own_step))
    # to float rounding (XLA folds a constant rate into the update in another order, and
    # Adam's division by sqrt(v) magnifies it): far below one step's size, ~lr
    close = dict(rtol=2e-5, atol=1e-7)
    for x, y in zip(jax.tree.leaves(alone), jax.tree.leaves(three_steps(shared, jnp.float32(lr), jnp.int32(seed)))):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **close)
    other = three_steps(shared, jnp.float32(1e-3), jnp.int32(0))
    assert not np.allclose(jax.tree.leaves(other.params)[0], jax.tree.leaves(alone.params)[0], **close)
    assert len(traces) == 1


def test_a_training_run_resumes_its_newest_checkpoint_and_refuses_another_config(tmp_path):
    from odediff import parallel
    from odediff.config import config_to_json
    from odediff.training import ConfigMismatch, TrainingRun

    c, mesh = tiny_config(), parallel.make_mesh()
    source = data.load_source(c.data, "train")
    run = TrainingRun(c, tmp_path, mesh)
    assert run.step == 0 and run.meta == {}
    batch = lambda s: parallel.global_batch(data.get_batch(source, c.data, c.training.batch_size, c.seed, s), mesh)
    for s in range(2):
        run.train_step(batch(s))
    trained = jax.tree.map(np.asarray, run.state)
    assert run.seconds_per_step(batch(2), 1) > 0 and run.step == 2  # timed on a copy: the run stays
    assert_trees_equal(run.state, trained)
    run.save({"note": 1})
    run.close()
    again = TrainingRun(c, tmp_path, mesh)
    assert again.step == 2 and again.meta["note"] == 1 and again.meta["config"] == json.loads(config_to_json(c))
    assert_trees_equal(again.state, run.state)
    again.close()
    c.training.learning_rate = 1e-2
    with pytest.raises(ConfigMismatch, match="--allow_config_change") as e:
        TrainingRun(c, tmp_path, mesh)
    assert e.value.differences == ["training.learning_rate"]
    TrainingRun(c, tmp_path, mesh, allow_config_change=True).close()
    assert json.loads((tmp_path / "config.json").read_text())["training"]["learning_rate"] == 1e-2


def test_gradient_accumulation_equals_one_batch_k_times_larger():
    c, model, tx, schedule, state, batch = tiny_training()

    def three_steps(config):  # the first update is 0 (warm-up): take three
        traced = jax.jit(make_train_step(model, tx, schedule, config)).trace(state, batch)
        fn, s, ms = traced.lower().compile(), state, []
        for _ in range(3):
            s, m = fn(s, batch)
            ms.append(m)
        return s, ms, str(traced.jaxpr)

    whole, m1, _ = three_steps(c)
    c.training.grad_accum_steps = 4
    accum, m4, jaxpr = three_steps(c)
    assert " scan[" in jaxpr  # micro-batches ran
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


def _conditional_setup(drop: float):
    c = tiny_config()
    c.model.num_classes, c.training.cond_drop_prob = 10, drop
    model, tx = build_denoiser(c.model), make_optimizer(c.training)
    schedule = make_schedule(c.diffusion.beta_schedule, c.diffusion.num_timesteps)
    state = create_train_state(model, tx, c, jax.random.key(0))
    # zero-initialised fields and output conv would hide the labels at init: move off it
    state = state.replace(params=perturbed(state.params, jax.random.key(1), 0.2))
    source = data.load_source(c.data, "train")
    images, labels = data.get_batch(source, c.data, c.training.batch_size, c.seed, 0, with_labels=True)
    np.testing.assert_array_equal(labels, source.get_labels(data.batch_indices(len(source), 8, c.seed, 0)))
    return c, model, tx, schedule, state, images, labels


def test_conditional_training_sees_the_labels_and_drops_them_to_the_null_class():
    c, model, tx, schedule, state, images, labels = _conditional_setup(drop=0.0)
    step = jax.jit(make_train_step(model, tx, schedule, c))
    # the first update is 0 (learning-rate warm-up): compare the gradients' moments
    a, _ = step(state, (images, labels))
    b, _ = step(state, (images, (labels + 1) % 10))
    assert not all(np.array_equal(p, q) for p, q in zip(jax.tree.leaves(a.opt_state), jax.tree.leaves(b.opt_state)))
    with pytest.raises(ValueError, match="the batch must be"):
        step(state, images)

    # with cond_drop_prob 1 every label is the null class: the labels given no longer matter
    c.training.cond_drop_prob = 0.999999
    step = jax.jit(make_train_step(model, tx, schedule, c))
    a, _ = step(state, (images, labels))
    b, _ = step(state, (images, (labels + 1) % 10))
    for p, q in zip(jax.tree.leaves(a.opt_state), jax.tree.leaves(b.opt_state)):
        np.testing.assert_array_equal(p, q)


def test_conditional_accumulation_splits_the_labels_with_the_images():
    c, model, tx, schedule, state, images, labels = _conditional_setup(drop=0.5)
    whole, _ = jax.jit(make_train_step(model, tx, schedule, c))(state, (images, labels))
    c.training.grad_accum_steps = 2
    accum, _ = jax.jit(make_train_step(model, tx, schedule, c))(state, (images, labels))
    for a, b in zip(jax.tree.leaves(whole.opt_state), jax.tree.leaves(accum.opt_state)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_guided_sampling_is_the_guidance_formula_in_one_batched_call():
    """One DDIM step (trailing) from x_T: x0 = (x - sb eps) / sa with eps mixed as (1 + w) e(c) - w e(null)."""
    c, model, _, _, state, _, _ = _conditional_setup(drop=0.1)
    params = state.params
    schedule = make_schedule(c.diffusion.beta_schedule, c.diffusion.num_timesteps)
    labels = np.array([1, 2, 3, 4], np.int32)
    c = with_sampling(c, sampler="ddim", steps=1, spacing="trailing", guidance=2.0)
    images, nfe = make_sample_fn(model, schedule, c, 4)(params, jax.random.key(5), labels)
    x = jax.random.normal(jax.random.split(jax.random.key(5))[0], (4, 8, 8, 1))
    t = jnp.full((4,), c.diffusion.num_timesteps - 1, jnp.int32)
    apply = jax.jit(model.apply)
    e_c = apply({"params": params}, x, t, jnp.asarray(labels))
    e_u = apply({"params": params}, x, t)
    ab = schedule.alphas_cumprod[-1]
    expected = jnp.clip((x - jnp.sqrt(1 - ab) * (3.0 * e_c - 2.0 * e_u)) / jnp.sqrt(ab), -1, 1)
    # x0 divides float32 differences of eps (one batch of 8 there, two of 4 here) by sqrt(ab) ~ 0.003
    np.testing.assert_allclose(images, expected, atol=1e-5 / float(jnp.sqrt(ab)))
    assert int(nfe) == 1
    with pytest.raises(ConfigError, match="needs class labels"):
        make_sample_fn(model, schedule, c, 4)(params, jax.random.key(5))


def test_a_conditional_model_on_an_unlabelled_source_fails_with_one_line(tmp_path):
    from PIL import Image

    from odediff.training import train_and_evaluate

    (tmp_path / "imgs").mkdir()
    for i in range(12):
        Image.fromarray(np.full((8, 8), 20 * i, np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    c = tiny_config()
    c.model.num_classes, c.data.source = 10, f"folder:{tmp_path / 'imgs'}"
    with pytest.raises(ConfigError, match="needs labels, but data.source=folder:.* has none"):
        train_and_evaluate(c, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_saved_configs_are_read_with_renamed_fields_moved_and_new_ones_at_their_defaults():
    from odediff.config import complete_config, config_to_json, default_config

    saved = json.loads(config_to_json(default_config()))
    saved["sampling"]["num_steps"] = 25  # the name before it became sampling.steps
    del saved["sampling"]["steps"], saved["model"]["num_classes"], saved["sampling"]["solver"]
    del saved["model"]["cunet"]["stem_norm"], saved["model"]["unet"]["norm_groups"]
    c = complete_config(saved)
    assert c.sampling.steps == 25 and "num_steps" not in c.sampling
    assert c.model.num_classes == 0 and c.sampling.solver == "tsit5"
    assert c.model.cunet.stem_norm and not default_config().model.cunet.stem_norm  # what the old run computed
    assert c.model.unet.norm_groups == 32 and default_config().model.unet.norm_groups == 0


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(sampler="ddim", steps=0), "only with sampling.sampler=ode"),
        (dict(sampler="ode", steps=0, solver="rk4"), "needs a solver with an error estimate"),
        (dict(sampler="ddim", spacing="logsnr"), "does not suit sampler 'ddim'"),
        (dict(sampler="dpmpp2m", spacing="trailing"), "does not suit sampler 'dpmpp2m'"),
        (dict(guidance=-1.0), "must not be negative"),
    ],
)
def test_sampling_blocks_no_sampler_could_use_are_refused(fields, message):
    from odediff.config import check_sampling, default_config

    s = default_config().sampling
    s.update(fields)
    with pytest.raises(ConfigError, match=message):
        check_sampling(s)


@pytest.mark.parametrize("name", ["cunet", pytest.param("unet", marks=pytest.mark.long)])
def test_bfloat16_compute_gives_the_float32_loss_and_gradients_closely(name):
    c, model, tx, schedule, state, batch = tiny_training(name)
    # off the zero-initialised start, where gradients are trivial
    state = state.replace(params=perturbed(state.params, jax.random.key(1), 0.05))

    def grads(dtype):
        c.training.compute_dtype = dtype
        traced = jax.jit(make_train_step(model, tx, schedule, c)).trace(state, batch)
        new, metrics = traced.lower().compile()(state, batch)
        return metrics["loss"], new.opt_state, str(traced.jaxpr)

    loss32, opt32, _ = grads("float32")
    loss16, opt16, jaxpr = grads("bfloat16")
    assert "bf16[8,8,8," in jaxpr  # activations of the batch in bfloat16
    assert jax.tree.leaves(opt16)[1].dtype == jnp.float32  # float32 optimizer state
    np.testing.assert_allclose(loss16, loss32, rtol=3e-2)
    mu32, mu16 = (np.concatenate([np.ravel(a) for a in jax.tree.leaves(o[1][0].mu)]) for o in (opt32, opt16))
    cosine = mu32 @ mu16 / (np.linalg.norm(mu32) * np.linalg.norm(mu16))
    assert cosine > 0.99 and 0.9 < np.linalg.norm(mu16) / np.linalg.norm(mu32) < 1.1
