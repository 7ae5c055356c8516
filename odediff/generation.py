"""Sampling from a trained run: a compiled sampler, restoring a run's config and EMA params, generating, writing files."""

import functools
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np

from odediff import data, images, parallel
from odediff.checkpoint import CheckpointError, Checkpointer, FormatError, check_format, checkpoint_dir
from odediff.config import ConfigError
from odediff.models import build_denoiser
from odediff.samplers import SAMPLERS, sample
from odediff.schedule import Schedule, make_schedule
from odediff.train_state import abstract_train_state, make_optimizer


def input_shape(config: ml_collections.ConfigDict, batch: int) -> tuple[int, int, int, int]:
    """(batch, H, W, C) of the images a config's model takes."""
    return (batch, config.data.image_size, config.data.image_size, config.data.channels)


def make_sample_fn(model, schedule: Schedule, config, num: int, sampler: str | None = None,
                   num_steps: int | None = None, mesh: jax.sharding.Mesh | None = None, **options):
    """A jitted `(params, key) -> (images in [-1, 1], nfe)` for the chosen sampler (extra
    `options` go to it, e.g. solver="heun" for "ode"); num_steps 0 means the adaptive
    probability-flow ODE (sampler "ode").

    Where `num` splits evenly over the mesh's devices (default: all of them) each device
    denoises its share of the batch; the images come back replicated. Params must be
    replicated on the mesh or uncommitted."""
    name = sampler or config.sampling.sampler
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}: use one of {sorted(SAMPLERS)}")
    steps = config.sampling.num_steps if num_steps is None else num_steps
    if steps == 0 and name != "ode":
        raise ConfigError(f"0 steps (adaptive) is only for the 'ode' sampler, not {name!r}")
    if name == "ddim":
        options = {"eta": config.sampling.eta, **options}
    mesh = mesh or parallel.make_mesh()
    split = parallel.batch_sharded(mesh) if num % mesh.size == 0 else parallel.replicated(mesh)

    def apply(p, x, t):
        return model.apply({"params": p}, jax.lax.with_sharding_constraint(x, split), t)

    @functools.partial(jax.jit, out_shardings=parallel.replicated(mesh))
    def sample_fn(params, key):
        return sample(name, apply, params, key, input_shape(config, num), schedule, steps or None,
                      prediction=config.diffusion.prediction, **options)

    return sample_fn


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
        config = ml_collections.ConfigDict(meta["config"])
        abstract = abstract_train_state(build_denoiser(config.model), make_optimizer(config.training), config,
                                        parallel.replicated(parallel.make_mesh()))
        state, _ = ckpt.restore(step, abstract)
    except FormatError:
        raise
    except CheckpointError as e:
        raise CheckpointError(f"checkpoint step {step} in {ckpt.directory} is unusable: {e}") from e
    finally:
        ckpt.close()
    return config, state.ema_params, step


def generate(
    config: ml_collections.ConfigDict,
    params,
    num: int,
    *,
    sampler: str | None = None,
    num_steps: int | None = None,
    seed: int = 0,
    batch: int | None = None,
    **options,
) -> tuple[np.ndarray, float, int]:
    """`num` uint8 NHWC samples made `batch` at a time (default: all at once) with one
    compiled sampler, chunk i from key fold_in(key(seed), i); also the seconds they took
    (compilation excluded) and the denoiser evaluations (NFE) per sample."""
    if num <= 0 or (batch is not None and batch <= 0):
        raise ConfigError(f"the number of samples and the batch must be positive, got {num}, {batch}")
    batch = min(batch or num, num)
    model = build_denoiser(config.model)
    schedule = make_schedule(config.diffusion.beta_schedule, config.diffusion.num_timesteps)
    fn = make_sample_fn(model, schedule, config, batch, sampler, num_steps, **options)
    base = jax.random.key(seed)
    compiled = fn.lower(params, base).compile()
    chunks, seconds, nfe = [], 0.0, 0
    for i in range(-(-num // batch)):
        t0 = time.perf_counter()
        images, n = jax.block_until_ready(compiled(params, jax.random.fold_in(base, i)))
        seconds += time.perf_counter() - t0
        chunks.append(data.to_uint8(parallel.to_host(images)))
        nfe = max(nfe, int(parallel.to_host(n)))
    return np.concatenate(chunks)[:num], seconds, nfe


def write_samples(samples: np.ndarray, prefix: str | Path) -> tuple[Path, Path]:
    """<prefix>.png (a grid) and <prefix>.npz (key `images`, uint8 NHWC); never overwrites."""
    prefix = Path(prefix)
    png, npz = prefix.with_name(prefix.name + ".png"), prefix.with_name(prefix.name + ".npz")
    for p in (png, npz):
        if p.exists():
            raise FileExistsError(f"{p} already exists: choose another --out or remove it")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(npz, images=samples)
    images.save_grid(samples, png, scale=max(1, 64 // samples.shape[1]))
    return png, npz
