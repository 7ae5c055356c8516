"""The training loop: one jitted, data-parallel step; orbax checkpoints; logs and pictures.

All randomness is a function of (seed, step), so a run restarted from a checkpoint
continues exactly as if it had never stopped.
"""

import contextlib
import dataclasses
import json
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from odediff import data, images, parallel
from odediff.checkpoint import FORMAT_VERSION, Checkpointer
from odediff.config import ConfigError, check_config, config_differences, config_to_json
from odediff.generation import class_labels, make_sample_fn
from odediff.input_pipeline import BatchIterator
from odediff.models import build_denoiser
from odediff.schedule import Schedule, draw_steps_and_noise, loss_at, make_schedule
from odediff.train_state import (
    TrainState,
    abstract_train_state,
    create_train_state,
    learning_rate_schedule,
    make_optimizer,
)

log = logging.getLogger(__name__)
Batch = jax.Array | tuple[jax.Array, jax.Array]  # images, or (images, labels)


class NonFiniteError(RuntimeError):
    """Training met a non-finite loss or gradient and was configured to stop."""


def ema_decay(decay: float, step: jax.Array) -> jax.Array:
    """The EMA decay at a step, warmed up as min(decay, (1 + step) / (10 + step)): without
    the warm-up a 0.999 EMA still weighs the random initialisation by 0.999^1000 = 0.37
    after 1,000 steps."""
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def train_step(
    apply_fn: Callable,
    tx: optax.GradientTransformation,
    schedule: Schedule,
    state: TrainState,
    batch: jax.Array,
    key: jax.Array,
    *,
    labels: jax.Array | None = None,
    prediction: str = "eps",
    ema: float = 0.999,
    stop_on_nonfinite: bool = True,
    accum_steps: int = 1,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One update of `state` on a batch of images in [-1, 1], usable from any JAX code.

    `apply_fn(params, x, t, key)` is the denoiser in training mode (`key` for its dropout),
    `apply_fn(params, x, t, key, labels)` when class `labels` (B,) are given;
    `key` draws the diffusion steps, the noise and the dropout. With `accum_steps` k > 1
    the batch is processed as k micro-batches in sequence (a lax.scan, so activations
    are held for one micro-batch at a time) and their mean gradient applied: the same
    update as the whole batch at once, up to float rounding (dropout masks aside). The
    EMA decay is warmed up (`ema_decay`). A non-finite loss or gradient leaves params,
    EMA and optimizer untouched; with `stop_on_nonfinite` every later update is refused too."""
    k_loss, k_dropout = jax.random.split(key)
    t, noise = draw_steps_and_noise(schedule, batch, k_loss)

    def loss_fn(p, x0, t, noise, y):
        extra = () if y is None else (y,)
        return loss_at(lambda p_, x, t_: apply_fn(p_, x, t_, k_dropout, *extra), p, schedule, x0, t, noise, prediction)

    if accum_steps == 1:  # no loop: XLA:CPU runs convolution gradients inside loops many times slower
        loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, t, noise, labels)
    else:
        if batch.shape[0] % accum_steps:
            raise ValueError(f"a batch of {batch.shape[0]} does not split into {accum_steps} micro-batches")
        micro = lambda a: a.reshape((accum_steps, a.shape[0] // accum_steps) + a.shape[1:])

        def add(total, xs):
            loss, grads = jax.value_and_grad(loss_fn)(state.params, *xs)
            return jax.tree.map(jnp.add, total, (loss, grads)), None

        zero = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, state.params))
        ys = None if labels is None else micro(labels)
        (loss, grads), _ = jax.lax.scan(add, zero, (micro(batch), micro(t), micro(noise), ys))
        loss, grads = jax.tree.map(lambda a: a / accum_steps, (loss, grads))
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    with jax.numpy_dtype_promotion("standard"):  # optax mixes int32 counts with floats
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    d = ema_decay(ema, state.step)
    new_ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, state.ema_params, params)
    accept = finite & ~((state.first_nonfinite >= 0) & stop_on_nonfinite)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(accept, a, b), new, old)
    new_state = TrainState(
        step=state.step + 1,
        params=keep(params, state.params),
        ema_params=keep(new_ema, state.ema_params),
        opt_state=keep(opt_state, state.opt_state),
        first_nonfinite=jnp.where((state.first_nonfinite < 0) & ~finite, state.step, state.first_nonfinite),
        num_nonfinite=state.num_nonfinite + (~finite).astype(jnp.int32),
    )
    return new_state, {"loss": loss, "grad_norm": grad_norm}


def make_train_step(
    model,
    tx: optax.GradientTransformation,
    schedule: Schedule,
    config: ml_collections.ConfigDict,
    seed: int | jax.Array | None = None,
):
    """`(state, batch) -> (state, metrics)`: `train_step` with the model and settings of a
    config, its key a function of (seed, state.step), seed config.seed unless given (it may be
    traced). A class-conditional model
    takes `batch` as (images, labels) and sees each label replaced by the null class with
    probability `training.cond_drop_prob` (classifier-free guidance training). With
    `training.compute_dtype` bfloat16 the denoiser runs in bfloat16 on a cast of the
    float32 params; loss, gradients, optimizer and EMA stay float32."""
    num_classes = config.model.get("num_classes", 0)
    dtype = jnp.dtype(config.training.get("compute_dtype", "float32"))
    run_seed = config.seed if seed is None else seed

    def apply(p, x, t, key, labels=None):
        if dtype != jnp.float32:  # mixed precision: the float32 params are cast here, their gradients back
            p, x = jax.tree.map(lambda a: a.astype(dtype), p), x.astype(dtype)
        out = model.apply({"params": p}, x, t, labels, train=True, rngs={"dropout": key})
        return out.astype(jnp.float32)

    def step_fn(state: TrainState, batch):
        images, labels = batch if isinstance(batch, (tuple, list)) else (batch, None)
        if (labels is None) != (not num_classes):
            raise ValueError(
                f"model.num_classes={num_classes}: the batch must be "
                f"{'(images, labels)' if num_classes else 'images alone'}"
            )
        key = jax.random.fold_in(jax.random.split(jax.random.key(run_seed))[1], state.step)
        if labels is not None:
            drop = jax.random.bernoulli(jax.random.fold_in(key, 1), config.training.cond_drop_prob, labels.shape)
            labels = jnp.where(drop, num_classes, labels)
        return train_step(
            apply,
            tx,
            schedule,
            state,
            images,
            key,
            labels=labels,
            prediction=config.diffusion.prediction,
            ema=config.training.ema_decay,
            stop_on_nonfinite=config.training.nonfinite == "stop",
            accum_steps=config.training.grad_accum_steps,
        )

    return step_fn


class _StopFlag:
    """Turns SIGTERM/SIGINT into a request to checkpoint and exit at the next step.

    With several processes a stop must happen at the same step everywhere, since the
    checkpoint is a collective: SIGTERM is then left to JAX's preemption service,
    which tells every process the same step to stop at (`preempted`), whichever of
    them got the signal; SIGINT keeps its default there (KeyboardInterrupt)."""

    def __init__(self):
        self.signum = None
        self._old = {}
        self._multi = jax.process_count() > 1

    def __enter__(self):
        for s in () if self._multi else (signal.SIGTERM, signal.SIGINT):
            self._old[s] = signal.signal(s, self._handle)
        return self

    def preempted(self, step: int) -> bool:
        """Called at every step by every process: whether all stop at this one."""
        if self._multi and self.signum is None and multihost_utils.reached_preemption_sync_point(step):
            self.signum = signal.SIGTERM
        return self.signum is not None

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


class _Writer:
    """TensorBoard events and metrics.jsonl in the workdir; silent on processes other than 0."""

    def __init__(self, workdir: Path, active: bool):
        self.active = active
        if active:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(workdir / "tensorboard"))
            self._jsonl = open(workdir / "metrics.jsonl", "a")

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.active:
            return
        for k, v in scalars.items():
            self._tb.add_scalar(k, v, step)
        self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
        self._jsonl.flush()

    def close(self) -> None:
        if self.active:
            self._tb.close()
            self._jsonl.close()


def checkpoint_meta(config: ml_collections.ConfigDict, step: int) -> dict:
    """The JSON record saved beside each checkpoint (restore_run reads the config from it)."""
    return {
        "step": step,
        "seed": config.seed,
        "format_version": FORMAT_VERSION,
        "config": json.loads(config_to_json(config)),
    }


def check_labels_available(config: ml_collections.ConfigDict, source: data.ImageSource) -> bool:
    """Whether the model is class-conditional; ConfigError if its data cannot serve it."""
    k = config.model.num_classes
    if not k:
        return False
    if not source.has_labels:
        raise ConfigError(
            f"model.num_classes={k} needs labels, but data.source={config.data.source} has none: "
            f"use a labelled source (digits, idx: with label files, tfds:, npz: with 'labels') "
            f"or model.num_classes=0"
        )
    if source.num_classes is not None and source.num_classes > k:
        raise ConfigError(
            f"data.source={config.data.source} has labels up to {source.num_classes - 1}, more than "
            f"model.num_classes={k}: set --config.model.num_classes={source.num_classes}"
        )
    return True


class ConfigMismatch(ConfigError):
    """A work directory holds a run with another config; `differences` names the keys."""

    def __init__(self, workdir: Path, differences: list[str]):
        self.workdir, self.differences = workdir, differences
        super().__init__(
            f"{workdir} holds a run with a different config ({', '.join(differences)}): use another "
            f"--workdir, or pass --allow_config_change to continue this run with the new values"
        )


def check_workdir_config(
    workdir: str | Path, config: ml_collections.ConfigDict, allow_config_change: bool = False
) -> None:
    """Refuses to mix runs: ConfigMismatch where the workdir's config.json differs from `config`
    (unless `allow_config_change`), ConfigError where a decaying schedule would change its length."""
    path = Path(workdir) / "config.json"
    if not path.exists():
        return
    saved = json.loads(path.read_text())
    before = saved.get("training", {}).get("num_steps")
    schedule = saved.get("training", {}).get("lr_schedule")
    if schedule in ("cosine", "wsd") and before not in (None, config.training.num_steps):
        raise ConfigError(
            f"{workdir} holds a run with training.num_steps={before}, and its {schedule} learning-rate schedule "
            f"is built from it: pass --config.training.num_steps={before} to resume it, or use another --workdir"
        )
    diffs = config_differences(saved, config)
    if diffs and not allow_config_change:
        raise ConfigMismatch(Path(workdir), diffs)


@dataclasses.dataclass
class _Programs:
    """What runs differing only in learning rate and seed share: model, optimizer, schedule,
    jitted init and step, and the step once compiled."""

    model: Any
    tx: optax.GradientTransformation
    schedule: Schedule
    init: Callable
    step: Callable
    compiled: Callable | None = None


def _programs(config: ml_collections.ConfigDict, mesh: Mesh, shared: dict) -> _Programs:
    key = json.loads(config_to_json(config))
    key["seed"] = key["training"]["learning_rate"] = None
    key = (json.dumps(key, sort_keys=True), mesh)
    if key not in shared:
        rep = parallel.replicated(mesh)
        model, tx = build_denoiser(config.model), make_optimizer(config.training)
        schedule = make_schedule(config.diffusion.beta_schedule, config.diffusion.num_timesteps)

        def step(state, batch, lr, seed):
            return make_train_step(model, make_optimizer(config.training, lr), schedule, config, seed)(state, batch)

        shared[key] = _Programs(
            model,
            tx,
            schedule,
            init=jax.jit(lambda k: create_train_state(model, tx, config, k), out_shardings=rep),
            step=jax.jit(step, out_shardings=(rep, rep), donate_argnums=0),
        )
    return shared[key]


class TrainingRun:
    """A run in a work directory: its config (checked against and written to config.json), its
    train state (restored from the newest intact checkpoint, else initialised from config.seed),
    one compiled step and its checkpoints (`keep`: default training.keep_checkpoints).

    The step takes the learning rate and the seed as arguments, so runs whose configs differ
    in nothing else share one compilation when given the same `shared` dict."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        workdir: str | Path,
        mesh: Mesh,
        *,
        keep: int | None = None,
        allow_config_change: bool = False,
        shared: dict | None = None,
    ):
        self.config, self.workdir, self.mesh = config, Path(workdir), mesh
        check_workdir_config(self.workdir, config, allow_config_change)
        self.workdir.mkdir(parents=True, exist_ok=True)
        if jax.process_index() == 0:
            (self.workdir / "config.json").write_text(config_to_json(config))
        self._programs = _programs(config, mesh, {} if shared is None else shared)
        self.model, self.schedule = self._programs.model, self._programs.schedule
        rep = parallel.replicated(mesh)
        self.checkpointer = Checkpointer(self.workdir, config.training.keep_checkpoints if keep is None else keep)
        restored = self.checkpointer.restore_latest(abstract_train_state(self.model, self._programs.tx, config, rep))
        if restored is None:
            self.step, self.meta = 0, {}
            self.state = self._programs.init(jax.random.split(jax.random.key(config.seed))[0])
        else:
            self.step, self.state, self.meta = restored
        self._hyper = jax.device_put((np.float32(config.training.learning_rate), np.int32(config.seed)), rep)
        self._step = parallel.one_step_at_a_time(
            lambda state, batch: self._programs.compiled(state, batch, *self._hyper), mesh
        )

    def compile(self, batch: Batch) -> None:
        """Compiles the step for batches like `batch`, unless a run sharing it has."""
        if self._programs.compiled is None:
            self._programs.compiled = self._programs.step.lower(self.state, batch, *self._hyper).compile()

    def step_fn(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        """One update of `state` (donated) at this run's rate and seed; the run does not advance."""
        self.compile(batch)
        return self._step(state, batch)

    def train_step(self, batch: Batch) -> dict[str, jax.Array]:
        """Advances the run by one step on `batch`; returns the step's metrics."""
        self.state, metrics = self.step_fn(self.state, batch)
        self.step += 1
        return metrics

    def seconds_per_step(self, batch: Batch, steps: int, warmup: int = 1) -> float:
        """Wall seconds per step on `batch` (already on the devices) after `warmup` steps, timed
        on a copy of the state: the run does not advance."""
        state = jax.tree.map(lambda x: x.copy(), self.state)
        for _ in range(warmup):
            state, _ = self.step_fn(state, batch)
        jax.block_until_ready(state)
        t0 = time.perf_counter()
        for _ in range(steps):
            state, _ = self.step_fn(state, batch)
        jax.block_until_ready(state)
        return (time.perf_counter() - t0) / steps

    def save(self, meta: dict | None = None) -> None:
        """Checkpoints the state at the current step, its record `checkpoint_meta` and `meta`."""
        self.checkpointer.save(
            self.step, self.state, {**checkpoint_meta(self.config, self.step), **(meta or {})}, force=True
        )

    def close(self) -> None:
        """Finishes the saves in flight."""
        self.checkpointer.close()


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str | Path, *, allow_config_change: bool = False
) -> TrainState:
    """Trains (resuming from the newest intact checkpoint in workdir) and writes logs,
    sample grids, checkpoints and a loss curve there. Returns the final state."""
    workdir = Path(workdir)
    check_config(config)
    parallel.check_batch_size(config.training.batch_size)
    source = data.load_source(config.data, "train")
    conditional = check_labels_available(config, source)
    tc = config.training
    is_main = jax.process_index() == 0
    mesh = parallel.make_mesh()
    run = TrainingRun(config, workdir, mesh, allow_config_change=allow_config_change)
    start, state = run.step, run.state
    if start:
        log.info("resuming from step %d in %s", start, run.checkpointer.directory)
    sample_fn = make_sample_fn(run.model, run.schedule, config, config.sampling.num_samples)
    grid_labels = class_labels(config.model.num_classes, config.sampling.num_samples) if conditional else None
    writer = _Writer(workdir, is_main)
    pending, t_last, step_last = [], time.time(), start

    from tqdm import tqdm

    bar = tqdm(total=tc.num_steps, initial=start, disable=not is_main, unit="step", dynamic_ncols=True)
    batches = BatchIterator(
        source,
        config.data,
        tc.batch_size,
        config.seed,
        mesh,
        start=start,
        with_labels=conditional,
        state=run.meta.get("data_iterator"),
    )
    # Closing also on errors finishes the saves in flight, so no good step is lost.
    with _StopFlag() as stop, bar, contextlib.closing(run), contextlib.closing(writer), batches:
        while run.step < tc.num_steps:
            pending.append(run.train_step(next(batches)))
            step, state = run.step, run.state
            bar.update(1)
            last = step == tc.num_steps
            stopping = stop.preempted(step)
            save_now = step % tc.checkpoint_every == 0 or last or stopping
            if step % tc.log_every == 0 or save_now:
                _check_nonfinite(state, tc)
                stats = {k: float(np.mean([parallel.to_host(m[k]) for m in pending])) for k in pending[0]}
                now = time.time()
                stats["steps_per_sec"] = (step - step_last) / max(now - t_last, 1e-9)
                stats["learning_rate"] = float(learning_rate_schedule(tc)(step))
                writer.write(step, stats)
                bar.set_postfix(loss=f"{stats['loss']:.4f}", refresh=False)
                pending, t_last, step_last = [], now, step
            if step % tc.sample_every == 0 or last:
                grid = parallel.to_host(sample_fn(state.ema_params, jax.random.key(config.seed), grid_labels)[0])
                if is_main:
                    images.save_grid(data.to_uint8(grid), workdir / "samples" / f"step_{step:08d}.png", scale=2)
            if save_now:
                run.save({"data_iterator": batches.state()})
            if stopping:
                break
    if is_main:
        _plot_loss(workdir)
    if stop.signum:
        print(
            f"stopped by {signal.Signals(stop.signum).name} at step {run.step}: checkpoint saved in "
            f"{run.checkpointer.directory}; run the same command to resume",
            flush=True,
        )
    return run.state


def _check_nonfinite(state: TrainState, tc) -> None:
    first = int(parallel.to_host(state.first_nonfinite))
    if first >= 0 and tc.nonfinite == "stop":
        raise NonFiniteError(
            f"non-finite loss or gradient at step {first}; training stopped and no update from it was "
            f"kept (set --config.training.nonfinite=skip to skip such steps instead)"
        )
    if first >= 0:
        log.warning(
            "%d non-finite steps skipped so far (first at step %d)", int(parallel.to_host(state.num_nonfinite)), first
        )


def _plot_loss(workdir: Path) -> None:
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line]
    if records:
        images.save_curves({"loss": ([r["step"] for r in records], [r["loss"] for r in records])}, workdir / "loss.png")
