"""The train state and what builds it: optimizer, learning-rate schedule, initial and abstract states."""

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from odediff.config import ConfigError


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any
    first_nonfinite: jax.Array  # the first step whose update was refused, -1 if none
    num_nonfinite: jax.Array


def learning_rate_schedule(
    tc: ml_collections.ConfigDict, learning_rate: float | jax.Array | None = None
) -> optax.Schedule:
    """Linear warmup, then constant, cosine decay to zero at num_steps, or wsd (warmup-stable-
    decay): constant until the last decay_steps before num_steps, then linear to zero. The peak
    is `learning_rate` when given (it may be traced: one compiled step for a whole sweep), else
    tc.learning_rate."""
    peak = tc.learning_rate if learning_rate is None else learning_rate
    warmup = optax.linear_schedule(0.0, peak, max(tc.warmup_steps, 1))
    if tc.lr_schedule == "constant":
        after = optax.constant_schedule(peak)
    elif tc.lr_schedule == "cosine":
        after = optax.cosine_decay_schedule(peak, max(tc.num_steps - tc.warmup_steps, 1))
    elif tc.lr_schedule == "wsd":
        start = tc.num_steps - tc.decay_steps
        if not (0 < tc.decay_steps and tc.warmup_steps <= start):
            raise ConfigError(
                f"training.decay_steps={tc.decay_steps} with lr_schedule=wsd must be positive and leave "
                f"the {tc.warmup_steps} warmup steps before the decay (num_steps={tc.num_steps})"
            )
        decay = optax.linear_schedule(peak, 0.0, tc.decay_steps)
        after = optax.join_schedules([optax.constant_schedule(peak), decay], [start - tc.warmup_steps])
    else:
        raise ConfigError(f"training.lr_schedule={tc.lr_schedule!r}: use constant, cosine or wsd")
    return optax.join_schedules([warmup, after], [tc.warmup_steps])


def make_optimizer(
    tc: ml_collections.ConfigDict, learning_rate: float | jax.Array | None = None
) -> optax.GradientTransformation:
    """Adam or AdamW with global-norm clipping, its rate `learning_rate_schedule(tc, learning_rate)`.
    The optimizer state's structure does not depend on the rate."""
    lr = learning_rate_schedule(tc, learning_rate)
    if tc.optimizer == "adam":
        opt = optax.adam(lr, b1=tc.b1, b2=tc.b2)
    elif tc.optimizer == "adamw":
        opt = optax.adamw(lr, b1=tc.b1, b2=tc.b2, weight_decay=tc.weight_decay)
    else:
        raise ConfigError(f"training.optimizer={tc.optimizer!r}: use adam or adamw")
    return optax.chain(optax.clip_by_global_norm(tc.grad_clip), opt) if tc.grad_clip > 0 else opt


def init_params(model, config: ml_collections.ConfigDict, key: jax.Array) -> Any:
    """The denoiser's initial params for `config`'s image shape, from `key`."""
    return _init_params(model, (config.data.image_size, config.data.image_size, config.data.channels), key)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _init_params(model, image_shape: tuple[int, int, int], key: jax.Array) -> Any:
    # One compiled program per model and shape: run eagerly, init dispatches every op of a
    # forward pass one by one, each compiled on first use (seconds per process on a CPU).
    x = jnp.zeros((1, *image_shape), jnp.float32)
    return model.init(key, x, jnp.zeros((1,), jnp.int32))["params"]


def create_train_state(model, tx: optax.GradientTransformation, config, key: jax.Array) -> TrainState:
    params = init_params(model, config, key)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=params,
        opt_state=tx.init(params),
        first_nonfinite=jnp.full((), -1, jnp.int32),
        num_nonfinite=jnp.zeros((), jnp.int32),
    )


def abstract_train_state(model, tx, config, sharding) -> TrainState:
    """Shapes, dtypes and shardings of a train state, to restore a checkpoint into."""
    shapes = jax.eval_shape(lambda k: create_train_state(model, tx, config, k), jax.random.key(0))
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)
