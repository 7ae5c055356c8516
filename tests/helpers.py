"""Tiny settings that keep end-to-end tests fast on 2 CPU cores."""

import os
import re
import subprocess
import sys
from pathlib import Path

import jax
from jax.flatten_util import ravel_pytree

REPO = Path(__file__).resolve().parents[1]

TINY = [
    "--config.model.cunet.nf=4",
    "--config.model.cunet.ch_mult=(1,)",
    "--config.model.cunet.time_embed_dim=8",
    "--config.model.unet.ch=16",
    "--config.model.unet.ch_mult=(1,)",
    "--config.model.unet.num_res_blocks=1",
    "--config.data.image_size=8",
    "--config.training.batch_size=8",
    "--config.training.log_every=2",
    "--config.training.sample_every=1000",
    "--config.training.checkpoint_every=2",
    "--config.sampling.num_samples=4",
    "--config.sampling.steps=3",
    "--config.diffusion.num_timesteps=50",
]


# Per-program override of conftest's compile-light flags, for tests where float numerics are the point.
FULL_OPTIMISATION = {"xla_backend_optimization_level": 2, "xla_llvm_disable_expensive_passes": False}


def tiny_config(name: str = "cunet", config_file: str = "digits.py"):
    """A config of configs/ (digits by default) shrunk the way TINY shrinks it on the command line."""
    from odediff.config import load_config_file

    c = load_config_file(REPO / "configs" / config_file)
    c.model.name = name
    c.model.cunet.update(nf=4, ch_mult=(1,), time_embed_dim=8)
    c.model.unet.update(ch=16, ch_mult=(1,), num_res_blocks=1)
    c.data.image_size = 8
    c.training.update(batch_size=8, log_every=2, sample_every=1000, checkpoint_every=2)
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
