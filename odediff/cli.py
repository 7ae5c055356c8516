"""The command-line programs behind train.py and sample.py: flags, errors, exit codes."""

import importlib.resources
import re
import sys
from pathlib import Path

import numpy as np
from absl import flags, logging as absl_logging
from ml_collections import config_flags

from odediff.checkpoint import CheckpointError
from odediff.config import ConfigError
from odediff.data import DataError

CONFIGS = importlib.resources.files("odediff.configs")  # the repository's configs/, installed with the package
USAGE_ERRORS = (ConfigError, DataError, CheckpointError, FileExistsError)


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
        lines = str(e.args[0] if e.args else e).splitlines() or ["?"]
        key = lines[0].strip("'\"")
        pattern = re.compile(rf"--?(config|sampling)(\.\w+)*\.{re.escape(key)}(\.|=|$)")
        where = next((a.split("=")[0] for a in argv if pattern.match(a)), "a --config.* or --sampling.* override")
        hint = " ".join(lines[1:]).strip()
        return f"unknown field {key!r} in {where}" + (f": {hint[0].lower()}{hint[1:]}" if hint else "")
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def parse_flags(prog: str, argv: list[str]) -> list[str]:
    """absl flag parsing whose every failure is one line on stderr and exit code 2."""
    try:
        return flags.FLAGS(argv)
    except Exception as e:  # flags.Error, or a bad --config.* override
        _fail(prog, _flag_failure(prog, e, argv))


def run_main(prog: str, main) -> None:
    """Runs `main()`, turning the errors a user can fix into one line and exit code 2."""
    absl_logging.set_verbosity(absl_logging.ERROR)  # libraries' absl warnings are noise to a user
    try:
        main()
    except USAGE_ERRORS as e:
        _fail(prog, str(e))


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


def define_train_flags(prog: str = "train.py") -> None:
    sys.argv[:] = resolve_config_arg(sys.argv, prog)
    try:  # without --config, ml_collections applies the --config.* overrides right here
        config_flags.DEFINE_config_file(
            "config", str(packaged_configs()["digits.py"]),
            "A configs/<name>.py file; override fields with --config.a.b=value.", lock_config=True,
        )
    except Exception as e:
        _fail(prog, _flag_failure(prog, e, sys.argv))
    flags.DEFINE_string("workdir", None, "Run directory (default runs/<config name>).")
    flags.DEFINE_bool("allow_config_change", False,
                      "Continue a run in --workdir even though its config differs from this one.")
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs.")
    flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
    flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")


def train_main(prog: str = "train.py") -> None:
    from odediff import parallel

    f = flags.FLAGS
    if not f.coordinator_address and (f.num_processes or 1) == 1:
        parallel.use_cpu_cores(f.config.training.batch_size)
    parallel.initialize_distributed(f.coordinator_address, f.num_processes, f.process_id)
    from odediff.training import NonFiniteError, train_and_evaluate

    name = Path(config_flags.get_config_filename(f["config"])).stem
    workdir = f.workdir or str(Path("runs") / name)
    try:
        train_and_evaluate(f.config, workdir, allow_config_change=f.allow_config_change)
    except NonFiniteError as e:
        _fail(prog, str(e), code=1)


# ---------------------------------------------------------------------------- sample.py


SHORTHANDS = ("sampler", "steps", "guidance")  # --<name> sets sampling.<name>


def define_sampling_flags(prog: str) -> None:
    """--sampling.<field>=value, overriding the run's saved sampling block, and shorthands."""
    from odediff.config import default_config

    try:  # ml_collections applies the --sampling.* overrides right here
        config_flags.DEFINE_config_dict(
            "sampling", default_config().sampling,
            "Sampling options; --sampling.<field>=value replaces the run's own (see odediff/config.py).")
    except Exception as e:
        _fail(prog, _flag_failure(prog, e, sys.argv))
    flags.DEFINE_string("sampler", None, "Shorthand for --sampling.sampler: ancestral | ddim | ode | dpmpp2m.")
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
    class; the number of grid columns), or (None, 0) without --labels."""
    if not spec:
        return None, 0
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


def define_sample_flags(prog: str = "sample.py") -> None:
    flags.DEFINE_string("workdir", None, "Run directory holding checkpoints/.", required=True)
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
    flags.DEFINE_integer("num", 64, "Number of samples (per class with --labels).")
    flags.DEFINE_string("labels", None, "Class-conditional runs: a class, a comma list, or 'all' (one grid row "
                        "per class); default: unconditional samples.")
    flags.DEFINE_integer("seed", 0, "Random seed.")
    flags.DEFINE_string("out", None, "Output prefix: writes <out>.png, <out>.npz and <out>.json (the options) "
                        "(default <workdir>/samples/sample_<step>_<sampler><steps>[_cfg<w>][_class<labels>]"
                        "_seed<seed>).")
    define_sampling_flags(prog)


def sample_main() -> None:
    from odediff import parallel
    from odediff.generation import describe_sampling, generate, restore_run, with_sampling, write_samples

    f = flags.FLAGS
    if f.num <= 0:
        raise ConfigError(f"--num must be positive, got --num={f.num}")
    parallel.use_cpu_cores(f.num)  # with --labels, a multiple of --num is drawn
    config, params, step = restore_run(f.workdir, f.step)
    config = with_sampling(config, **sampling_overrides(sys.argv))
    sc = config.sampling
    labels, cols = parse_labels(f.labels, config.model.num_classes, f.num)
    num = f.num if labels is None else len(labels)
    tag = (f"_cfg{sc.guidance:g}" if sc.guidance else "") + (f"_class{f.labels.replace(',', '-')}" if f.labels else "")
    out = f.out or str(Path(f.workdir) / "samples" / f"sample_{step}_{sc.sampler}{sc.steps}{tag}_seed{f.seed}")
    samples, seconds, nfe = generate(config, params, num, seed=f.seed, labels=labels)
    record = {"workdir": str(f.workdir), "step": step, "seed": f.seed, "num": num, "nfe": nfe,
              "labels": None if labels is None else labels.tolist(), "sampling": sc.to_dict(),
              "model": config.model.name, "sample_seconds": seconds}
    png, npz, js = write_samples(samples, out, record, cols=cols)
    print(f"{num} samples from step {step} ({describe_sampling(sc)}; {nfe} evaluations) in {seconds:.2f} s "
          f"= {num / seconds:.2f} samples/s -> {png}, {npz}, {js}")


def train_entry() -> None:
    """The `odediff-train` command (train.py)."""
    prog = program_name("train.py")
    define_train_flags(prog)
    parse_flags(prog, sys.argv)
    run_main(prog, lambda: train_main(prog))


def sample_entry() -> None:
    """The `odediff-sample` command (sample.py)."""
    prog = program_name("sample.py")
    define_sample_flags(prog)
    parse_flags(prog, sys.argv)
    run_main(prog, sample_main)
