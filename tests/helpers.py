"""What the tests share: tiny settings that keep end-to-end tests fast on 2 CPU cores, the
subprocess environment, runs and checkpoints on disk, and tree equality."""

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from odediff import cli, data, parallel
from odediff.checkpoint import Checkpointer
from odediff.generation import restore_run
from odediff.models import build_denoiser
from odediff.schedule import make_schedule
from odediff.train_state import abstract_train_state, create_train_state, make_optimizer

REPO = Path(__file__).resolve().parents[1]

N = 16  # steps of every full run: long enough to interrupt between its checkpoints
EVERY = 4  # steps between checkpoints: a save, even of this tiny state, takes longer than many steps

TINY = [
    "--config.model.cunet.nf=4",
    "--config.model.cunet.ch_mult=(1,)",
    "--config.model.cunet.time_embed_dim=8",
    "--config.model.unet.ch=16",
    "--config.model.unet.ch_mult=(1,)",
    "--config.model.unet.num_res_blocks=0",
    "--config.data.image_size=8",
    "--config.training.batch_size=8",
    "--config.training.log_every=2",
    "--config.training.sample_every=1000",
    f"--config.training.checkpoint_every={EVERY}",
    "--config.sampling.num_samples=4",
    "--config.sampling.steps=3",
    "--config.diffusion.num_timesteps=50",
]


# Per-program override of conftest's compile-light flags, for programs that run longer than they compile.
FULL_OPTIMISATION = {
    "xla_backend_optimization_level": 2,
    "xla_llvm_disable_expensive_passes": False,
    "xla_cpu_use_fusion_emitters": True,
}


def tiny_config(name: str = "cunet", config_file: str = "digits.py"):
    """A config of configs/ (digits by default) shrunk the way TINY shrinks it on the command line."""
    from odediff.config import load_config_file

    c = load_config_file(REPO / "configs" / config_file)
    c.model.name = name
    c.model.cunet.update(nf=4, ch_mult=(1,), time_embed_dim=8)
    c.model.unet.update(ch=16, ch_mult=(1,), num_res_blocks=0)
    c.data.image_size = 8
    c.training.update(batch_size=8, log_every=2, sample_every=1000, checkpoint_every=EVERY)
    c.sampling.update(num_samples=4, steps=3)
    c.diffusion.num_timesteps = 50
    return c


def subprocess_env(devices: int = 4, **extra: str) -> dict:
    """This process's environment for a child on `devices` fake CPU devices, other XLA flags kept."""
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", ""))
    return {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} {flags}".strip(),
        "JAX_PLATFORMS": "cpu",
        **extra,
    }


def run(script: str, *args: str, devices: int = 4, timeout: int = 300) -> subprocess.CompletedProcess:
    """Runs train.py / sample.py as a user would, on `devices` fake CPU devices."""
    return subprocess.run(
        [sys.executable, str(REPO / script), *args],
        cwd=REPO,
        env=subprocess_env(devices),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def perturbed(params, key, scale: float = 0.3):
    """`params` plus Gaussian noise of std `scale`: off the zero-initialised output layers,
    which would hide any dependence. One compiled program per params structure, one draw."""
    return _add_noise(params, key, scale)


@jax.jit
def _add_noise(params, key, scale):
    flat, unravel = ravel_pytree(params)
    return unravel(flat + scale * jax.random.normal(key, flat.shape, flat.dtype))


def tiny_training(name="cunet"):
    c = tiny_config(name)
    model = build_denoiser(c.model)
    tx = make_optimizer(c.training)
    schedule = make_schedule(c.diffusion.beta_schedule, c.diffusion.num_timesteps)
    state = create_train_state(model, tx, c, jax.random.key(0))
    source = data.load_source(c.data, "train")
    batch = data.get_batch(source, c.data, c.training.batch_size, c.seed, 0)
    return c, model, tx, schedule, state, batch


def assert_trees_equal(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def assert_usage_error(proc: subprocess.CompletedProcess, prog: str, pattern: str) -> None:
    """Exit code 2 and exactly one line on stderr: '<prog>: error: ...' matching `pattern`."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, proc.stderr[-3000:])
    assert lines[0].startswith(f"{prog}: error: ") and re.search(pattern, lines[0]), lines[0]


def assert_sample_error(workdir: Path, capsys, pattern: str) -> None:
    """sample.py's restore, in this process: exit code 2 and one line matching `pattern`."""
    with pytest.raises(SystemExit) as stop:
        cli.run_main("sample.py", lambda: restore_run(workdir))
    proc = subprocess.CompletedProcess([], stop.value.code, "", capsys.readouterr().err)
    assert_usage_error(proc, "sample.py", pattern)


def snapshot(workdir: Path) -> dict[str, str]:
    return {
        str(p.relative_to(workdir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(workdir.rglob("*"))
        if p.is_file()
    }


def steps_on_disk(workdir: Path) -> list[int]:
    d = workdir / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def restored_state(workdir: Path, step: int):
    """The full train state of a checkpoint, restored with its own config."""
    ckpt = Checkpointer(workdir, read_only=True)
    config = ml_collections.ConfigDict(ckpt.read_meta(step)["config"])
    abstract = abstract_train_state(
        build_denoiser(config.model), make_optimizer(config.training), config, parallel.replicated(parallel.make_mesh())
    )
    return ckpt.restore(step, abstract)[0]


def train_in_process(workdir: Path, num_steps: int = N, allow_config_change: bool = False, **training) -> None:
    """train.py's run with ARGS, in this process (4 devices, as every train.py started here)."""
    from odediff.training import train_and_evaluate

    config = tiny_config()
    config.training.update(num_steps=num_steps, **training)
    train_and_evaluate(config, workdir, allow_config_change=allow_config_change)
