"""Sampling from a trained run: a compiled sampler, restoring a run's config and EMA params, generating, writing files."""

import functools
import inspect
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from odediff import data, images, parallel
from odediff.checkpoint import Checkpointer, CheckpointError, FormatError, check_format, checkpoint_dir
from odediff.config import ConfigError, check_sampling, complete_config
from odediff.models import build_denoiser, with_block_solver
from odediff.samplers import SAMPLERS, sample
from odediff.schedule import Schedule, make_schedule
from odediff.train_state import abstract_train_state, init_params, make_optimizer


def input_shape(config: ml_collections.ConfigDict, batch: int) -> tuple[int, int, int, int]:
    """(batch, H, W, C) of the images a config's model takes."""
    return (batch, config.data.image_size, config.data.image_size, config.data.channels)


def sampling_options(sampling: ml_collections.ConfigDict) -> dict:
    """The keyword arguments that a config's sampling block gives its sampler: the fields
    that sampler takes, less those left at "use the sampler's default" ("" or None)."""
    check_sampling(sampling)
    takes = inspect.signature(SAMPLERS[sampling.sampler]).parameters
    return {
        k: sampling[k]
        for k in ("eta", "solver", "rtol", "atol", "spacing", "clip", "continuous_t")
        if k in takes and sampling.get(k) not in (None, "")
    }


def describe_sampling(sampling: ml_collections.ConfigDict) -> str:
    """The sampler and the options it is given, e.g. "ode steps=20 solver=heun"."""
    parts = [sampling.sampler, f"steps={sampling.steps}"] + [f"{k}={v}" for k, v in sampling_options(sampling).items()]
    parts += [f"{k}={sampling[k]}" for k in ("block_solver", "block_steps") if sampling.get(k)]
    return " ".join(parts + ([f"guidance={sampling.guidance:g}"] if sampling.guidance else []))


def with_sampling(config: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
    """A copy of `config` whose sampling block has `fields` replaced (None values ignored)."""
    config = ml_collections.ConfigDict(config.to_dict())
    for k, v in fields.items():
        if v is not None:
            if k not in config.sampling:
                raise ConfigError(f"sampling.{k} is not a sampling field: use one of {sorted(config.sampling)}")
            config.sampling[k] = v
    return config


def _block_choice(sampling: ml_collections.ConfigDict) -> tuple[str, int]:
    return sampling.get("block_solver") or "", sampling.get("block_steps") or 0


def block_tag(sampling: ml_collections.ConfigDict) -> str:
    """The file-name part naming a block solver chosen at sampling time ("" for the model's own)."""
    solver, steps = _block_choice(sampling)
    return f"_blocks-{solver or 'own'}x{steps or 'own'}" if solver or steps else ""


def sampling_model(model, config: ml_collections.ConfigDict):
    """`model` as `config.sampling` has it solved: a cU-Net's ODE blocks with
    `sampling.block_solver` in `sampling.block_steps` steps where set (same params).
    ConfigError, one line, where they are set for a U-Net or cannot be used."""
    solver, steps = _block_choice(config.sampling)
    if not solver and not steps:
        return model
    given = f"sampling.block_solver={solver!r}, sampling.block_steps={steps}"
    if config.model.name != "cunet":
        raise ConfigError(
            f"{given}: these apply to cU-Nets only (model.name=cunet), and this model is a "
            f"{config.model.name}; leave them unset"
        )
    if not steps and not model.ode.steps:
        raise ConfigError(
            f"{given}: the model solves its blocks adaptively, so the block solver needs sampling.block_steps > 0"
        )
    try:
        return with_block_solver(model, solver, steps)
    except ValueError as e:
        raise ConfigError(f"{given}: {e}") from None


def class_labels(num_classes: int, num: int) -> np.ndarray:
    """`num` labels cycling through the classes, (0, 1, ..., K-1, 0, 1, ...)."""
    return (np.arange(num) % num_classes).astype(np.int32)


def make_sample_fn(
    model, schedule: Schedule, config: ml_collections.ConfigDict, num: int, mesh: jax.sharding.Mesh | None = None
):
    """A jitted `(params, key, labels=None) -> (images in [-1, 1], nfe)` drawing `num`
    samples with the sampler, steps and options of `config.sampling` (see `with_sampling`),
    a cU-Net's ODE blocks solved as its `block_solver` and `block_steps` say (`sampling_model`).

    A class-conditional model draws class `labels[i]` (int32, (num,)) for sample i;
    without labels, unconditional samples (the null class). With `sampling.guidance`
    w > 0 each evaluation is classifier-free guided, (1 + w) out(x, c) - w out(x, null),
    in one batched call of twice the size (the outputs mix linearly with weights
    summing to one, so this is eps guidance for eps, v and x0 models alike). Where
    `num` splits evenly over the mesh's devices (default: all of them) each device
    denoises its share; the images come back replicated. Params must be replicated on
    the mesh or uncommitted."""
    sc = config.sampling
    options = sampling_options(sc)
    model = sampling_model(model, config)
    num_classes = config.model.get("num_classes", 0)
    if sc.guidance and not num_classes:
        raise ConfigError(f"sampling.guidance={sc.guidance} needs a class-conditional model (model.num_classes > 0)")
    mesh = mesh or parallel.make_mesh()
    split = parallel.batch_sharded(mesh) if num % mesh.size == 0 else parallel.replicated(mesh)
    w = float(sc.guidance)

    @functools.partial(jax.jit, out_shardings=parallel.replicated(mesh))
    def sample_fn(params, key, labels=None):
        if labels is not None and not num_classes:
            raise ConfigError("labels were given, but the model is unconditional (model.num_classes=0)")
        if w and labels is None:
            raise ConfigError("sampling.guidance > 0 needs class labels to guide towards")

        def apply(p, x, t):
            x = jax.lax.with_sharding_constraint(x, split)
            if not w:
                return model.apply({"params": p}, x, t, labels)
            null = jnp.full_like(labels, num_classes)
            out = model.apply(
                {"params": p}, jnp.concatenate([x, x]), jnp.concatenate([t, t]), jnp.concatenate([labels, null])
            )
            out_c, out_u = jnp.split(out, 2)
            return (1.0 + w) * out_c - w * out_u

        return sample(
            sc.sampler,
            apply,
            params,
            key,
            input_shape(config, num),
            schedule,
            sc.steps or None,
            prediction=config.diffusion.prediction,
            **options,
        )

    return sample_fn


def check_labels(config: ml_collections.ConfigDict, labels: np.ndarray | None, num: int) -> np.ndarray | None:
    """`labels` as int32 (num,), checked against the model's classes; ConfigError if unusable."""
    if labels is None:
        return None
    k = config.model.get("num_classes", 0)
    if not k:
        raise ConfigError("labels were asked for, but this run's model is unconditional (model.num_classes=0)")
    labels = np.asarray(labels)
    if labels.shape != (num,) or labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() >= k:
        raise ConfigError(f"labels must be {num} integers in [0, {k}), got {labels.dtype} {labels.shape}")
    return labels.astype(np.int32)


def restore_run(workdir: str | Path, step: int | None = None) -> tuple[ml_collections.ConfigDict, object, int]:
    """(config, EMA params, step) from the newest (or the given) checkpoint of a run,
    on whatever devices this process has."""
    if not checkpoint_dir(workdir).is_dir():
        raise CheckpointError(f"{workdir} has no checkpoints/ folder: train first with train.py --workdir {workdir}")
    ckpt = Checkpointer(workdir, read_only=True)
    steps = ckpt.steps()
    if not steps:
        raise CheckpointError(f"{ckpt.directory} holds no checkpoint: train first with train.py --workdir {workdir}")
    if step is not None and step not in steps:
        raise CheckpointError(f"there is no checkpoint at step {step} in {ckpt.directory}; steps there: {steps}")
    step = steps[-1] if step is None else step
    try:
        meta = ckpt.read_meta(step)
        check_format(meta, f"checkpoint step {step} in {ckpt.directory}")
        config = complete_config(meta["config"])
        model, sharding = build_denoiser(config.model), parallel.replicated(parallel.make_mesh())
        if "ema_params_checksum" in meta:
            shapes = jax.eval_shape(lambda k: init_params(model, config, k), jax.random.key(0))
            params = ckpt.restore_ema_params(
                step, jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)
            )
        else:  # saved before the EMA params had a checksum of their own: checked with the whole state
            abstract = abstract_train_state(model, make_optimizer(config.training), config, sharding)
            params = ckpt.restore(step, abstract)[0].ema_params
    except FormatError:
        raise
    except CheckpointError as e:
        raise CheckpointError(f"checkpoint step {step} in {ckpt.directory} is unusable: {e}") from e
    finally:
        ckpt.close()
    return config, params, step


def generate(
    config: ml_collections.ConfigDict,
    params,
    num: int,
    *,
    seed: int = 0,
    batch: int | None = None,
    labels: np.ndarray | None = None,
) -> tuple[np.ndarray, float, int]:
    """`num` uint8 NHWC samples drawn as `config.sampling` says, `batch` at a time
    (default: all at once) with one compiled sampler, chunk i from key
    fold_in(key(seed), i), sample j of class labels[j] for a conditional model; also
    the seconds they took (compilation excluded) and the model evaluations per sample."""
    if num <= 0 or (batch is not None and batch <= 0):
        raise ConfigError(f"the number of samples and the batch must be positive, got {num}, {batch}")
    batch = min(batch or num, num)
    labels = check_labels(config, labels, num)
    chunks_of = lambda i: None if labels is None else np.resize(labels[i * batch :], batch)
    model = build_denoiser(config.model)
    schedule = make_schedule(config.diffusion.beta_schedule, config.diffusion.num_timesteps)
    fn = make_sample_fn(model, schedule, config, batch)
    base = jax.random.key(seed)
    compiled = fn.lower(params, base, chunks_of(0)).compile()
    chunks, seconds, nfe = [], 0.0, 0
    for i in range(-(-num // batch)):
        t0 = time.perf_counter()
        images, n = jax.block_until_ready(compiled(params, jax.random.fold_in(base, i), chunks_of(i)))
        seconds += time.perf_counter() - t0
        chunks.append(data.to_uint8(parallel.to_host(images)))
        nfe = max(nfe, int(parallel.to_host(n)))
    return np.concatenate(chunks)[:num], seconds, nfe


def write_samples(
    samples: np.ndarray, prefix: str | Path, record: dict | None = None, cols: int = 0
) -> tuple[Path, ...]:
    """<prefix>.png (a grid, `cols` per row; 0: as square as it goes), <prefix>.npz (key
    `images`, uint8 NHWC; `labels` too where the record has them) and, with a `record`,
    <prefix>.json; never overwrites."""
    prefix = Path(prefix)
    paths = [prefix.with_name(prefix.name + ext) for ext in (".png", ".npz", ".json")[: 3 if record else 2]]
    for p in paths:
        if p.exists():
            raise FileExistsError(f"{p} already exists: choose another --out or remove it")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    labels = (record or {}).get("labels")
    np.savez_compressed(paths[1], images=samples, **({} if labels is None else {"labels": np.asarray(labels)}))
    images.save_grid(samples, paths[0], scale=max(1, 64 // samples.shape[1]), cols=cols)
    if record:
        paths[2].write_text(json.dumps(record, indent=2))
    return tuple(paths)
