"""Trained weights shipped with the package: `available()`, `card(name)`, `load(name)`.

Each model is a folder under `odediff/weights/<name>/`: `params.npz` (the final EMA params in
float16, one array per '/'-joined parameter path) and `card.json` (the run's config, the step,
the FD it scored with its seeds and the real-data floor, and the record that holds them).
"""

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from odediff.config import ConfigError, complete_config
from odediff.models import build_denoiser
from odediff.train_state import init_params

WEIGHTS = Path(__file__).resolve().parent / "weights"


def available() -> list[str]:
    """The names of the shipped models."""
    return sorted(p.name for p in WEIGHTS.iterdir() if (p / "card.json").is_file()) if WEIGHTS.is_dir() else []


def card(name: str) -> dict:
    """A shipped model's card: config, step, parameter count, dtype, scores and their source."""
    if name not in available():
        raise ConfigError(f"no pretrained model {name!r}: choose one of {available()}")
    return json.loads((WEIGHTS / name / "card.json").read_text())


def load(name: str) -> tuple[ml_collections.ConfigDict, Any]:
    """(config, float32 params) of a shipped model; `build_denoiser(config.model)` applies them."""
    info = card(name)
    config = complete_config(info["config"])
    shapes = jax.eval_shape(lambda k: init_params(build_denoiser(config.model), config, k), jax.random.key(0))
    with np.load(WEIGHTS / name / "params.npz") as stored:
        flat = {tuple(k.split("/")): stored[k] for k in stored.files}
    want = traverse_util.flatten_dict(shapes)
    if set(flat) != set(want) or any(flat[k].shape != want[k].shape for k in want):
        raise ConfigError(f"{WEIGHTS / name / 'params.npz'} does not fit its card's model: reinstall odediff")
    params = {k: jnp.asarray(v, jnp.float32) for k, v in flat.items()}
    return config, traverse_util.unflatten_dict(params)


def export(config: ml_collections.ConfigDict, params: Any, step: int, info: dict, out: str | Path) -> int:
    """Writes a model folder (params.npz in float16, card.json with `info`) and returns its bytes."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    flat = traverse_util.flatten_dict(jax.device_get(params))
    np.savez_compressed(out / "params.npz", **{"/".join(k): np.asarray(v).astype(np.float16) for k, v in flat.items()})
    count = int(sum(np.size(v) for v in flat.values()))
    full = {"config": config.to_dict(), "step": step, "params": count, "dtype": "float16", **info}
    (out / "card.json").write_text(json.dumps(full, indent=1) + "\n")
    return sum(p.stat().st_size for p in out.iterdir())
