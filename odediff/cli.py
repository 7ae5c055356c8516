"""The command-line programs behind train.py, sample.py and evaluate.py: flags, errors, exit codes.

Exit codes: 0 done; 1 training stopped on a non-finite loss (or an unexpected error);
2 bad command line or input, nothing changed; 3 the disk filled up while a checkpoint
was saved (the checkpoints saved before are intact: free space and run the command again).
"""

import difflib
import importlib.resources
import sys
from pathlib import Path

import numpy as np
from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

from odediff.config import RENAMED, ConfigError, default_config, flatten
from odediff.data import DataError

CONFIGS = importlib.resources.files("odediff.configs")  # the repository's configs/, installed with the package
USAGE_ERRORS = (ConfigError, DataError, FileExistsError)  # and odediff.checkpoint.CheckpointError
EXIT_CODES = "exit codes: 0 done; 1 an unexpected error; 2 bad command line or input (nothing changed)"
_CUNET = (
    "time_embed_dim",
    "norm",
    "num_heads",
    "head_dim",
    "solver",
    "ode_steps",
    "rtol",
    "atol",
    "adjoint",
    "ode_mode",
    "max_ode_steps",
)
# Config fields by their former names, for the command line: old dotted key -> new keys. Besides
# RENAMED (which saved configs may hold), the fields that moved into model.cunet and model.unet.
RENAMED_FIELDS: dict[str, tuple[str, ...]] = {
    **{old: (new,) for old, new in RENAMED.items()},
    **{f"model.{k}": (f"model.cunet.{k}",) for k in _CUNET},
    **{f"model.{k}": (f"model.unet.{k}",) for k in ("num_res_blocks", "dropout")},
    **{f"model.{k}": (f"model.cunet.{k}", f"model.unet.{k}") for k in ("ch_mult", "attn_resolutions")},
    "model.ch": ("model.cunet.nf", "model.unet.ch"),
}


def program_name(default: str) -> str:
    """The name this program was started by (train.py, odediff-train), for its messages."""
    return Path(sys.argv[0]).name if sys.argv and sys.argv[0] not in ("", "-c") else default


def _fail(prog: str, message: str, code: int = 2):
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def _flag_failure(prog: str, e: Exception, argv: list[str]) -> str:
    """One line for a flag that absl or ml_collections refused."""
    if isinstance(e, flags.Error):
        return str(e).strip().splitlines()[0] + f" (see {prog} --help)"
    if isinstance(e, (KeyError, AttributeError)):  # ml_collections: an override names no config field
        while e.args and isinstance(e.args[0], BaseException):
            e = e.args[0]
        key = (str(e.args[0] if e.args else e).splitlines() or ["?"])[0].strip("'\"")
        return unknown_override(argv, key) or f"unknown field {key!r} in a --config.* or --sampling.* override"
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def unknown_override(argv: list[str], key: str | None = None) -> str | None:
    """What is wrong with the first --config.<field>=value or --sampling.<field>=value in
    `argv` that names no config field (preferring one whose unknown name is `key`): the new
    name of a renamed field, or fields with close names. None if all of them name fields."""
    fields = flatten(default_config().to_dict())
    groups = {k.rsplit(".", j)[0] for k in fields for j in range(1, k.count(".") + 1)}
    problems = []
    for arg in argv:
        name = arg.lstrip("-").split("=", 1)[0]
        root = next((r for r in ("config.", "sampling.") if name.startswith(r)), None)
        if not arg.startswith("-") or root is None:
            continue
        parts = name.removeprefix("config.").split(".")
        for i in range(1, len(parts) + 1):
            head = ".".join(parts[:i])
            if head in fields and i < len(parts):  # a value where a group of fields would be
                problems.append((parts[i], _unknown_field(arg, root, ".".join(parts[: i + 1]), fields, head)))
                break
            if head not in fields and head not in groups:
                problems.append((parts[i - 1], _unknown_field(arg, root, head, fields)))
                break
    return next((message for part, message in problems if part == key), problems[0][1] if problems else None)


def _unknown_field(arg: str, root: str, unknown: str, fields: dict, value_at: str | None = None) -> str:
    """One line for the override `arg`, whose config key is no field from the dotted name
    `unknown` on (its first part that names nothing)."""
    flag, _, value = arg.partition("=")
    leading = flag[: flag.index(root) + len(root)]  # "--config." or "--sampling."
    dotted = flag[len(leading) :] if root == "config." else root + flag[len(leading) :]
    rest = dotted[len(unknown) :]
    as_flag = lambda k: leading + (k if root == "config." else k.removeprefix(root))
    head = f"unknown field {unknown.rpartition('.')[2]!r} in {flag}"
    if value_at:
        return f"{head}: {value_at} is a value, not a group of fields (pass {as_flag(value_at)}={value or '...'})"
    settable = [k for k in fields if root == "config." or k.startswith(root)]
    new = [k for k in RENAMED_FIELDS.get(dotted, ()) if k in settable]
    if new:
        passed = " or ".join(as_flag(k) + (f"={value}" if value else "") for k in new)
        return f"{head}: {dotted} was renamed {' or '.join(new)} (pass {passed})"
    parent, _, leaf = unknown.rpartition(".")
    inside = [k.removeprefix(f"{parent}.") for k in settable if k.startswith(f"{parent}.")] if parent else settable
    names = sorted({k.split(".")[0] for k in inside})
    close = [f"{parent}.{n}" if parent else n for n in difflib.get_close_matches(leaf, names, n=3, cutoff=0.6)]
    close = close or [k for k in settable if k.rpartition(".")[2] == leaf]  # the name, in another group
    if close:
        return f"{head}: did you mean {' or '.join(as_flag(k + rest) for k in close)}?"
    return f"{head}: the fields of {parent or 'the config'} are {', '.join(names)}"


def parse_flags(prog: str, argv: list[str], about: str = "") -> list[str]:
    """absl flag parsing whose every failure is one line on stderr and exit code 2; with
    --help, `help_text` and exit code 0."""
    if any(a in ("-h", "-help", "--help", "--helpshort", "--helpfull") for a in argv[1:]):
        print(help_text(prog, about))
        sys.exit(0)
    try:
        return flags.FLAGS(argv)
    except Exception as e:  # flags.Error, or a bad --config.* override
        _fail(prog, _flag_failure(prog, e, argv))


def help_text(prog: str, about: str) -> str:
    """What --help prints: `about` (what the program does, its exit codes) and its own flags,
    not each config field."""
    own = sorted((f for f in flags.FLAGS.get_flags_for_module(__name__) if "." not in f.name), key=lambda f: f.name)
    scalar = lambda f: isinstance(f.default, (int, float, str))
    lines = [f"  --{f.name}: {f.help}" + (f" (default {f.default!r})" if scalar(f) else "") for f in own]
    return "\n".join([about.format(prog=prog).strip(), "", "flags:", *lines])


def run_main(prog: str, main) -> None:
    """Runs `main()`, turning the errors a user can fix into one line and exit code 2, a
    non-finite loss that stopped training into one line and exit code 1, and a disk that
    filled up while a checkpoint was saved into one line and exit code 3."""
    absl_logging.set_verbosity(absl_logging.ERROR)  # libraries' absl warnings are noise to a user
    try:
        main()
    except Exception as e:
        if isinstance(e, USAGE_ERRORS) or _raised_by(e, "odediff.checkpoint", "CheckpointError"):
            _fail(prog, str(e))
        if _raised_by(e, "odediff.checkpoint", "DiskFullError"):
            _fail(prog, str(e), code=3)
        if _raised_by(e, "odediff.training", "NonFiniteError"):
            _fail(prog, str(e), code=1)
        raise


def _raised_by(e: Exception, module: str, name: str) -> bool:
    """Whether `e` is `module`'s exception class `name`, without importing the module (JAX, orbax)
    for it: an error cannot be of a class whose module was never loaded."""
    loaded = sys.modules.get(module)
    return loaded is not None and isinstance(e, getattr(loaded, name))


# ---------------------------------------------------------------------------- train.py


def packaged_configs() -> dict[str, Path]:
    """The configs that ship with odediff, by file name."""
    return {p.name: Path(str(p)) for p in CONFIGS.iterdir() if p.name.endswith(".py") and p.name != "__init__.py"}


def resolve_config_arg(argv: list[str], prog: str = "train.py") -> list[str]:
    """argv with --config naming an existing file, or a shipped config by its name
    (configs/mnist.py, mnist.py or mnist, found in the package when not on disk here);
    anything else fails with one line listing the shipped configs."""
    out = list(argv)
    for i, arg in enumerate(argv):
        if arg.startswith(("--config=", "-config=")):
            flag, value = arg.split("=", 1)
            where = lambda v, i=i, flag=flag: out.__setitem__(i, f"{flag}={v}")
        elif arg in ("--config", "-config") and i + 1 < len(argv):
            value = argv[i + 1]
            where = lambda v, i=i: out.__setitem__(i + 1, v)
        else:
            continue
        path, _, rest = value.partition(":")
        if Path(path).is_file():
            continue
        shipped = packaged_configs()
        name = Path(path).name if path.endswith(".py") else f"{Path(path).name}.py"
        if name not in shipped:
            names = ", ".join(f"configs/{n}" for n in sorted(shipped))
            _fail(prog, f"config file {value} does not exist: pass a path to one, or one of {names}")
        where(str(shipped[name]) + (f":{rest}" if rest else ""))
    return out


TRAIN_ABOUT = """Trains a diffusion model, resuming from the newest intact checkpoint in --workdir.

{prog} [--config configs/<name>.py] [--workdir runs/<name>] [--config.<field>=value ...]

exit codes: 0 done; 1 a non-finite loss stopped training, or an unexpected error; 2 bad
command line or input (nothing changed); 3 the disk filled up while a checkpoint was saved
(the ones saved before are intact: free space and run the same command again)."""


def define_train_flags(prog: str = "train.py") -> None:
    """train.py's flags: --config (with its --config.<field>=value overrides), --workdir, ..."""
    sys.argv[:] = resolve_config_arg(sys.argv, prog)
    try:  # without --config, ml_collections applies the --config.* overrides right here
        config_flags.DEFINE_config_file(
            "config",
            str(packaged_configs()["digits.py"]),
            "A configs/<name>.py file; override fields with --config.a.b=value.",
            lock_config=True,
        )
    except Exception as e:
        _fail(prog, _flag_failure(prog, e, sys.argv))
    flags.DEFINE_string("workdir", None, "Run directory (default runs/<config name>).")
    flags.DEFINE_bool(
        "allow_config_change", False, "Continue a run in --workdir even though its config differs from this one."
    )
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs.")
    flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
    flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")


def train_main() -> None:
    """Trains with the parsed flags."""
    from odediff import parallel

    f = flags.FLAGS
    if not f.coordinator_address and (f.num_processes or 1) == 1:
        parallel.use_cpu_cores(f.config.training.batch_size)
    parallel.initialize_distributed(f.coordinator_address, f.num_processes, f.process_id)
    from odediff.training import train_and_evaluate

    name = Path(config_flags.get_config_filename(f["config"])).stem
    workdir = f.workdir or str(Path("runs") / name)
    train_and_evaluate(f.config, workdir, allow_config_change=f.allow_config_change)


# ---------------------------------------------------------------------------- sample.py


SHORTHANDS = ("sampler", "steps", "guidance")  # --<name> sets sampling.<name>


def define_sampling_flags(prog: str) -> None:
    """--sampling.<field>=value, overriding the run's saved sampling block, and shorthands."""
    from odediff.samplers import SAMPLERS

    try:  # ml_collections applies the --sampling.* overrides right here
        config_flags.DEFINE_config_dict(
            "sampling",
            default_config().sampling,
            "Sampling options; --sampling.<field>=value replaces the run's own (see odediff/config.py).",
        )
    except Exception as e:
        _fail(prog, _flag_failure(prog, e, sys.argv))
    flags.DEFINE_string("sampler", None, f"Shorthand for --sampling.sampler: {' | '.join(SAMPLERS)}.")
    flags.DEFINE_integer("steps", None, "Shorthand for --sampling.steps; 0 with the ode sampler is adaptive.")
    flags.DEFINE_float("guidance", None, "Shorthand for --sampling.guidance (classifier-free guidance scale).")


def sampling_overrides(argv: list[str]) -> dict:
    """The sampling fields this command line sets, by --sampling.<field> or a shorthand."""
    f = flags.FLAGS
    out = {}
    for arg in argv:
        if arg.startswith(("--sampling.", "-sampling.")):
            key = arg.split("sampling.", 1)[1].split("=", 1)[0]
            out[key] = f.sampling[key]
    for key in SHORTHANDS:
        value = f[key].value
        if value is not None:
            if key in out and out[key] != value:
                raise ConfigError(f"--{key}={value} and --sampling.{key}={out[key]} disagree: pass one of them")
            out[key] = value
    return out


def parse_labels(spec: str | None, num_classes: int, num: int) -> tuple[np.ndarray | None, int]:
    """--labels: "3", "1,7" or "all" -> (`num` samples of each class listed, class after
    class; the number of grid columns). Without --labels, a class-conditional run's `num`
    samples go through the classes in turn (as evaluate.py draws them, one grid column per
    class) and an unconditional run's have none: (None, 0)."""
    from odediff.generation import class_labels

    if not spec:
        return (class_labels(num_classes, num), num_classes if num > num_classes else 0) if num_classes else (None, 0)
    if not num_classes:
        raise ConfigError(f"--labels={spec}: this run's model is unconditional (model.num_classes=0)")
    try:
        classes = list(range(num_classes)) if spec == "all" else [int(v) for v in spec.split(",")]
    except ValueError:
        raise ConfigError(f"--labels={spec} is not a class, a comma list of classes, or 'all'") from None
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise ConfigError(f"--labels={spec}: classes {bad} are not in [0, {num_classes})")
    return np.repeat(np.asarray(classes, np.int32), num), (num if len(classes) > 1 else 0)


SAMPLE_ABOUT = f"""Samples from a trained run's EMA params and writes a grid, the images and the options.

{{prog}} --workdir runs/<name> [--num 64 --sampler ddim --steps 100 --labels all --sampling.<field>=value ...]
{{prog}} --pretrained NAME [...]   (a model shipped with odediff: odediff.pretrained.available())

{EXIT_CODES}."""


def define_sample_flags(prog: str = "sample.py") -> None:
    """sample.py's flags: --workdir, --num, --labels, --out, ... and the sampling options."""
    flags.DEFINE_string("workdir", None, "Run directory holding checkpoints/ (or --pretrained).")
    flags.DEFINE_string("pretrained", None, "A model shipped with odediff instead of --workdir.")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
    flags.DEFINE_integer("num", 64, "Number of samples (per class with --labels).")
    flags.DEFINE_string(
        "labels",
        None,
        "Class-conditional runs: a class, a comma list, or 'all' (one grid row "
        "per class); default: the classes in turn.",
    )
    flags.DEFINE_integer("seed", 0, "Random seed.")
    flags.DEFINE_string(
        "out",
        None,
        "Output prefix: writes <out>.png, <out>.npz and <out>.json (the options) "
        "(default <workdir>/samples/sample_<step>_<sampler><steps>[_cfg<w>][_class<labels>]"
        "_seed<seed>; with --pretrained, samples/<name>/ in the current directory).",
    )
    define_sampling_flags(prog)


def sample_main() -> None:
    """Draws and writes the samples the parsed flags ask for."""
    from odediff import parallel
    from odediff.generation import block_tag, describe_sampling, generate, restore_run, with_sampling, write_samples

    f = flags.FLAGS
    if f.num <= 0:
        raise ConfigError(f"--num must be positive, got --num={f.num}")
    if (f.workdir is None) == (f.pretrained is None):
        raise ConfigError("pass either --workdir (a run directory) or --pretrained NAME (a shipped model)")
    if f.pretrained is not None and f.step is not None:
        raise ConfigError(f"--step: the pretrained model {f.pretrained!r} has one step; leave --step out")
    parallel.use_cpu_cores(f.num)  # with --labels, a multiple of --num is drawn
    if f.pretrained is not None:
        from odediff import pretrained

        config, params = pretrained.load(f.pretrained)
        step, home = pretrained.card(f.pretrained)["step"], Path("samples") / f.pretrained
    else:
        (config, params, step), home = restore_run(f.workdir, f.step), Path(f.workdir) / "samples"
    config = with_sampling(config, **sampling_overrides(sys.argv))
    sc = config.sampling
    labels, cols = parse_labels(f.labels, config.model.num_classes, f.num)
    num = f.num if labels is None else len(labels)
    tag = (f"_cfg{sc.guidance:g}" if sc.guidance else "") + (f"_class{f.labels.replace(',', '-')}" if f.labels else "")
    tag += block_tag(sc)
    out = f.out or str(home / f"sample_{step}_{sc.sampler}{sc.steps}{tag}_seed{f.seed}")
    samples, seconds, nfe = generate(config, params, num, seed=f.seed, labels=labels)
    record = {
        **({"pretrained": f.pretrained} if f.pretrained else {"workdir": str(f.workdir)}),
        "step": step,
        "seed": f.seed,
        "num": num,
        "nfe": nfe,
        "labels": None if labels is None else labels.tolist(),
        "sampling": sc.to_dict(),
        "model": config.model.name,
        "sample_seconds": seconds,
    }
    png, npz, js = write_samples(samples, out, record, cols=cols)
    print(
        f"{num} samples from step {step} ({describe_sampling(sc)}; {nfe} evaluations) in {seconds:.2f} s "
        f"= {num / seconds:.2f} samples/s -> {png}, {npz}, {js}"
    )


EVALUATE_ABOUT = f"""Sample quality of a trained run against held-out images.

{{prog}} --workdir runs/<name> [--num 1000 --sampling.sampler=ddim --sampling.steps=100 --batch 250]

Generates --num samples from the run's EMA params (a class-conditional run's going
through the classes in turn), embeds them and the held-out ("test") split in the
dataset's feature space (a small classifier trained on the training split for labelled
grey datasets, reported as "FD (classifier features)"; Inception-v3 with
--inception_weights for RGB data), prints FD, KID, precision/recall and class
histograms (and for class-conditional runs the share of samples classified as the
class asked for), and writes <workdir>/eval_<step>_<sampler><steps>[_cfg<w>].json.
Sampling options are the run's own, each replaceable with --sampling.<field>=value
as for sample.py.

{EXIT_CODES}."""


def define_evaluate_flags(prog: str = "evaluate.py") -> None:
    """evaluate.py's flags: --workdir, --num, --batch, the feature space's, and the sampling options."""
    flags.DEFINE_string("workdir", None, "Run directory holding checkpoints/.", required=True)
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
    flags.DEFINE_integer("num", 1000, "Number of samples to generate.")
    flags.DEFINE_integer("num_real", None, "Held-out real images to compare with (default: --num, or all there are).")
    flags.DEFINE_integer("seed", 0, "Random seed of the samples.")
    flags.DEFINE_integer("batch", 250, "Samples generated per compiled call.")
    flags.DEFINE_string(
        "cache_dir",
        None,
        "Where the feature classifier is cached "
        "(default ~/.cache/odediff, or <workdir>/../.cache if that is not writable).",
    )
    flags.DEFINE_string("inception_weights", None, "Inception-v3 .npz (odediff.features format) for RGB datasets.")
    flags.DEFINE_integer("classifier_steps", 1000, "Training steps of the feature classifier (part of its cache key).")
    define_sampling_flags(prog)


def evaluate_main() -> None:
    """Scores the run the parsed flags name, prints the scores and writes them beside its checkpoints."""
    from odediff import parallel
    from odediff.evaluation import evaluate_run, format_metrics

    f = flags.FLAGS
    parallel.use_cpu_cores(f.batch)
    result, path = evaluate_run(
        f.workdir,
        step=f.step,
        num=f.num,
        sampling=sampling_overrides(sys.argv),
        seed=f.seed,
        batch=f.batch,
        cache_dir=f.cache_dir,
        inception_weights=f.inception_weights,
        classifier_steps=f.classifier_steps,
        num_real=f.num_real,
    )
    print(
        f"{result['model']} step {result['step']}, {result['num_samples']} samples ({result['sampling_used']}; "
        f"{result['nfe']} evaluations, {result['samples_per_second']:.2f} samples/s) "
        f"vs {result['num_real']} held-out images of {result['data_source']}"
    )
    print(format_metrics(result))
    print(f"-> {path}")


def train_entry() -> None:
    """The `odediff-train` command (train.py)."""
    prog = program_name("train.py")
    define_train_flags(prog)
    parse_flags(prog, sys.argv, TRAIN_ABOUT)
    run_main(prog, train_main)


def sample_entry() -> None:
    """The `odediff-sample` command (sample.py)."""
    prog = program_name("sample.py")
    define_sample_flags(prog)
    parse_flags(prog, sys.argv, SAMPLE_ABOUT)
    run_main(prog, sample_main)


def evaluate_entry() -> None:
    """The `odediff-evaluate` command (evaluate.py)."""
    prog = program_name("evaluate.py")
    define_evaluate_flags(prog)
    parse_flags(prog, sys.argv, EVALUATE_ABOUT)
    run_main(prog, evaluate_main)
