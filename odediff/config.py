"""The default configuration that every `configs/<name>.py` starts from."""

import importlib.util
import inspect
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections


def default_config() -> ml_collections.ConfigDict:
    """Every field a run reads, with defaults; setups override what differs."""
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.source = "digits"  # digits | tfds:<name> | idx:<dir> | npz:<file> | folder:<dir>
    c.data.image_size = 16
    c.data.channels = 1
    c.data.random_flip = False
    c.data.data_dir = ""  # tfds data_dir; "" means tfds' default
    c.data.holdout_fraction = 0.1  # for sources without a test split
    c.data.prefetch = 2  # batches read ahead of the step (in threads); 0: each made in the loop
    c.data.num_workers = 0  # worker processes that decode and resize (0: threads of the training process)

    c.model = ml_collections.ConfigDict()
    c.model.name = "cunet"  # cunet | unet: which of the two sub-configs below is built
    c.model.num_classes = 0  # > 0: class-conditional (labels from the data source), plus a null class

    c.model.cunet = ml_collections.ConfigDict()
    c.model.cunet.nf = 16  # stem width
    c.model.cunet.ch_mult = (2, 4)  # ODE block widths in units of nf; bottleneck at 2x the last
    c.model.cunet.attn_resolutions = ()
    c.model.cunet.time_embed_dim = 64
    c.model.cunet.norm = "group"  # group | instance
    c.model.cunet.field = "residual"  # residual | release (the authors' field: + y, final softplus)
    c.model.cunet.num_heads = 4
    c.model.cunet.head_dim = 32
    c.model.cunet.solver = "euler"  # euler | heun | midpoint | rk4 | tsit5 | dopri5
    c.model.cunet.ode_steps = 1  # fixed steps per block; 0 = adaptive (rtol/atol)
    c.model.cunet.ode_mode = "unrolled"  # unrolled | diffeqsolve
    c.model.cunet.rtol = 1e-3
    c.model.cunet.atol = 1e-3
    c.model.cunet.adjoint = "recursive"  # recursive | direct | backsolve (diffeqsolve mode)
    c.model.cunet.max_ode_steps = 64
    c.model.cunet.stem_norm = False  # normalise the stem's features (runs before this field existed did)
    c.model.cunet.remat = False  # recompute each ODE block's solve in the backward pass (less memory)

    c.model.unet = ml_collections.ConfigDict()
    c.model.unet.ch = 32
    c.model.unet.ch_mult = (1, 2, 2)
    c.model.unet.num_res_blocks = 2
    c.model.unet.attn_resolutions = ()
    c.model.unet.dropout = 0.0
    c.model.unet.remat = False  # recompute each residual block in the backward pass (less memory)
    # group-norm groups: 0 = at most 32 of at least 4 channels; N = gcd(N, channels) (32: Ho et al.'s
    # rule at every width, which runs before this field existed used; below ch 128 it erases the timestep)
    c.model.unet.norm_groups = 0

    c.diffusion = ml_collections.ConfigDict()
    c.diffusion.num_timesteps = 1000
    c.diffusion.beta_schedule = "linear"  # linear | cosine | sigmoid
    c.diffusion.prediction = "eps"  # eps | v | x0

    c.training = ml_collections.ConfigDict()
    c.training.batch_size = 64
    c.training.grad_accum_steps = 1  # micro-batches per step: the batch is processed in this many pieces
    c.training.compute_dtype = "float32"  # float32 | bfloat16: activations; params, optimizer, loss stay float32
    c.training.num_steps = 2000
    c.training.optimizer = "adam"  # adam | adamw
    c.training.learning_rate = 2e-4
    c.training.lr_schedule = "constant"  # constant | cosine | wsd (after warmup)
    c.training.warmup_steps = 100
    c.training.decay_steps = 0  # wsd: the last steps before num_steps, over which the rate falls linearly to 0
    c.training.b1 = 0.9
    c.training.b2 = 0.99
    c.training.weight_decay = 0.0
    c.training.grad_clip = 1.0
    c.training.ema_decay = 0.999
    c.training.log_every = 50
    c.training.sample_every = 1000
    c.training.checkpoint_every = 500
    c.training.keep_checkpoints = 3
    c.training.nonfinite = "stop"  # stop | skip
    c.training.cond_drop_prob = 0.1  # conditional models: share of labels replaced by the null class

    c.sampling = ml_collections.ConfigDict()  # sample.py / evaluate.py: --sampling.<field>=value
    c.sampling.sampler = "ddim"  # ancestral | ddim | ode | dpmpp2m
    c.sampling.steps = 100  # model evaluations; 0 with "ode": adaptive
    c.sampling.eta = 0.0  # ddim: 0 deterministic, 1 DDPM-like
    c.sampling.solver = "tsit5"  # ode: euler | heun | midpoint | rk4 | tsit5 | dopri5
    c.sampling.rtol = 1e-3  # ode, adaptive (steps 0)
    c.sampling.atol = 1e-3
    c.sampling.spacing = ""  # "": the sampler's default; linspace | trailing (ancestral, ddim);
    #                          time_uniform | logsnr | time_quadratic (ode, dpmpp2m)
    c.sampling.clip = ml_collections.config_dict.placeholder(bool)  # clip x0 estimates; None: sampler default
    c.sampling.continuous_t = False  # ode, dpmpp2m: the model gets float t between grid steps
    c.sampling.guidance = 0.0  # classifier-free guidance w: eps = (1 + w) eps(x, c) - w eps(x, null)
    c.sampling.block_solver = ""  # cunet: solve every ODE block with this solver; "": the model's own
    c.sampling.block_steps = 0  # cunet: fixed steps per ODE block; 0: the model's own
    c.sampling.num_samples = 64  # the grids written during training
    return c


# Fields renamed since a saved config could have been written: old dotted key -> new.
RENAMED = {"sampling.num_steps": "sampling.steps"}
# Fields added with a default that changes what older runs computed: a saved config
# without the field gets the value those runs had.
ADDED_WITH_OLD_VALUE = {"model.cunet.stem_norm": True, "model.unet.norm_groups": 32}


def complete_config(saved: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """A saved config (dict) as a ConfigDict with every current field: renamed fields
    moved, fields added to odediff since at their defaults (or, where the default
    changes the model, at the value the run was trained with)."""
    saved = json.loads(json.dumps(saved))
    for old, new in RENAMED.items():
        (a, b), (_, d) = old.split("."), new.split(".")
        if b in saved.get(a, {}):
            saved[a].setdefault(d, saved[a].pop(b))
    for key, value in ADDED_WITH_OLD_VALUE.items():
        *parents, leaf = key.split(".")
        node = saved
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.setdefault(leaf, value)

    def merge(default: dict, given: Mapping[str, Any]) -> dict:
        out = dict(default)
        for k, v in given.items():
            out[k] = merge(default[k], v) if isinstance(v, Mapping) and isinstance(default.get(k), dict) else v
        return out

    return ml_collections.ConfigDict(merge(default_config().to_dict(), saved))


class ConfigError(ValueError):
    """A configuration that cannot run, with what to change."""


# Keys that may change when a run is resumed: they do not alter what is being trained.
RESUMABLE_KEYS = (
    "training.num_steps",
    "training.log_every",
    "training.sample_every",
    "training.checkpoint_every",
    "training.keep_checkpoints",
    "sampling.",
    "data.prefetch",
    "data.num_workers",
)


def choices() -> dict[str, tuple]:
    """The fields that take one of a fixed set of values, and those values: the denoisers,
    their ODE solvers, modes, adjoints, norms and fields, and the predictions are the keys
    of the tables that implement them (fields of model.<name> apply to that denoiser only)."""
    from odediff.models import DENOISERS
    from odediff.models.layers import NORMS
    from odediff.models.ode import ADJOINTS, FIELDS, MODES, SOLVERS
    from odediff.schedule import BETA_SCHEDULES, PREDICTIONS

    return {
        "model.name": tuple(DENOISERS),
        "model.cunet.field": tuple(FIELDS),
        "model.cunet.solver": tuple(SOLVERS),
        "model.cunet.ode_mode": tuple(MODES),
        "model.cunet.adjoint": tuple(ADJOINTS),
        "model.cunet.norm": tuple(NORMS),
        "diffusion.beta_schedule": tuple(BETA_SCHEDULES),
        "diffusion.prediction": tuple(PREDICTIONS),
        "training.nonfinite": ("stop", "skip"),
        "training.compute_dtype": ("float32", "bfloat16"),
        "data.channels": (1, 3),
    }


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}, with tuples as lists (as JSON holds them)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def config_to_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


def config_differences(saved: Mapping[str, Any], config: ml_collections.ConfigDict) -> list[str]:
    """Keys whose values differ between a saved config and this one, ignoring resumable keys
    and the sub-config of the denoiser neither builds; a key the saved config lacks (added
    to odediff since) counts as holding its default."""
    a = flatten(json.loads(config_to_json(complete_config(saved))))
    b = flatten(json.loads(config_to_json(config)))
    unused = tuple(f"model.{name}." for name in ("cunet", "unet") if name not in (a["model.name"], b["model.name"]))
    return sorted(
        k
        for k in set(a) | set(b)
        if a.get(k) != b.get(k) and not k.startswith(RESUMABLE_KEYS) and not (unused and k.startswith(unused))
    )


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first field a run could not use."""
    from odediff.models import num_downsamples

    flat = flatten(config.to_dict())
    allowed = choices()
    for key, values in allowed.items():
        denoiser = key.split(".")[1] if key.startswith("model.") else None
        if denoiser in allowed["model.name"] and denoiser != flat["model.name"]:
            continue  # the sub-config of the denoiser not built
        if flat[key] not in values:
            raise ConfigError(f"{key}={flat[key]!r} is not one of {values}")
    mult = config.model[config.model.name].ch_mult
    if not isinstance(mult, tuple) or not mult or not all(isinstance(m, int) and m > 0 for m in mult):
        raise ConfigError(
            f"model.{config.model.name}.ch_mult={mult!r} must be a tuple of positive integers, e.g. (1,2)"
        )
    size, factor = config.data.image_size, 2 ** num_downsamples(config.model)
    if size <= 0 or size % factor:
        raise ConfigError(
            f"data.image_size={size} is not divisible by {factor}, which the {config.model.name} "
            f"with ch_mult={tuple(config.model[config.model.name].ch_mult)} needs: use a multiple of {factor}"
        )
    if not isinstance(flat["model.num_classes"], int) or flat["model.num_classes"] < 0:
        raise ConfigError(
            f"model.num_classes={flat['model.num_classes']!r} must be 0 (unconditional) or the "
            f"number of classes of the data"
        )
    groups = flat["model.unet.norm_groups"]
    if config.model.name == "unet" and (not isinstance(groups, int) or isinstance(groups, bool) or groups < 0):
        raise ConfigError(
            f"model.unet.norm_groups={groups!r} must be 0 (at most 32 groups of at least 4 channels) or a "
            f"positive number of groups, of which the U-Net uses its gcd with each layer's channels"
        )
    if not 0.0 <= flat["training.cond_drop_prob"] < 1.0:
        raise ConfigError(f"training.cond_drop_prob={flat['training.cond_drop_prob']!r} must be in [0, 1)")
    check_sampling(config.sampling)
    for key in (
        "training.batch_size",
        "training.grad_accum_steps",
        "training.num_steps",
        "training.log_every",
        "training.sample_every",
        "training.checkpoint_every",
        "sampling.num_samples",
    ):
        if not isinstance(flat[key], int) or flat[key] <= 0:
            raise ConfigError(f"{key}={flat[key]!r} must be a positive integer")
    for key in ("data.prefetch", "data.num_workers"):
        if not isinstance(flat[key], int) or flat[key] < 0:
            raise ConfigError(f"{key}={flat[key]!r} must be a non-negative integer")
    if flat["training.batch_size"] % flat["training.grad_accum_steps"]:
        raise ConfigError(
            f"training.batch_size={flat['training.batch_size']} does not split into "
            f"training.grad_accum_steps={flat['training.grad_accum_steps']} micro-batches"
        )


def check_sampling(sampling: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first field of a sampling block no sampler could use."""
    from odediff.models.ode import ADAPTIVE, SOLVERS
    from odediff.samplers import DISCRETE_SPACINGS, SAMPLERS, SPACINGS

    s = sampling
    if s.sampler not in SAMPLERS:
        raise ConfigError(f"sampling.sampler={s.sampler!r} is not one of {tuple(SAMPLERS)}")
    takes = {name: inspect.signature(fn).parameters for name, fn in SAMPLERS.items()}
    solving = [name for name in SAMPLERS if "solver" in takes[name]]  # the ODE samplers: adaptive with steps 0
    solves = s.sampler in solving
    if not isinstance(s.steps, int) or s.steps < 0 or (s.steps == 0 and not solves):
        raise ConfigError(
            f"sampling.steps={s.steps!r} must be a positive integer (0, adaptive, only with "
            f"sampling.sampler={' or '.join(solving)})"
        )
    if solves and s.solver not in SOLVERS:
        raise ConfigError(f"sampling.solver={s.solver!r} is not one of {tuple(SOLVERS)}")
    if solves and s.steps == 0 and s.solver not in ADAPTIVE:
        raise ConfigError(
            f"sampling.steps=0 (adaptive) needs a solver with an error estimate: "
            f"sampling.solver one of {tuple(ADAPTIVE)}"
        )
    spacings = DISCRETE_SPACINGS if takes[s.sampler]["spacing"].default in DISCRETE_SPACINGS else SPACINGS
    if s.spacing and s.spacing not in spacings:
        raise ConfigError(
            f"sampling.spacing={s.spacing!r} does not suit sampler {s.sampler!r}: use one of "
            f"{spacings}, or '' for its default"
        )
    if s.guidance < 0:
        raise ConfigError(f"sampling.guidance={s.guidance!r} must not be negative")
    if (s.get("block_solver") or "") not in ("",) + tuple(SOLVERS):
        raise ConfigError(
            f"sampling.block_solver={s.block_solver!r} is not one of {tuple(SOLVERS)}, or '' for the model's own"
        )
    steps = s.get("block_steps") or 0
    if not isinstance(steps, int) or steps < 0:
        raise ConfigError(f"sampling.block_steps={steps!r} must be a non-negative integer (0: the model's own)")


def load_config_file(path: str | Path) -> ml_collections.ConfigDict:
    """`get_config()` of a configs/<name>.py file, loaded by path (as train.py does)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist: pass one of the files in configs/")
    spec = importlib.util.spec_from_file_location(f"_odediff_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()
