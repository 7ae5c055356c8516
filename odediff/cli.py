"""The command-line programs behind train.py and sample.py: flags, errors, exit codes."""

import sys
from pathlib import Path

from absl import flags, logging as absl_logging
from ml_collections import config_flags

from odediff.checkpoint import CheckpointError
from odediff.config import ConfigError
from odediff.data import DataError

REPO = Path(__file__).resolve().parent.parent
USAGE_ERRORS = (ConfigError, DataError, CheckpointError, FileExistsError)


def _fail(prog: str, message: str, code: int = 2):
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def parse_flags(prog: str, argv: list[str]) -> list[str]:
    """absl flag parsing whose every failure is one line on stderr and exit code 2."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _fail(prog, str(e).strip().splitlines()[0] + f" (see {prog} --help)")
    except Exception as e:  # a config file that does not load or a bad override
        _fail(prog, f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")


def run_main(prog: str, main) -> None:
    """Runs `main()`, turning the errors a user can fix into one line and exit code 2."""
    absl_logging.set_verbosity(absl_logging.WARNING)
    try:
        main()
    except USAGE_ERRORS as e:
        _fail(prog, str(e))


# ---------------------------------------------------------------------------- train.py


def define_train_flags() -> None:
    config_flags.DEFINE_config_file(
        "config", str(REPO / "configs" / "digits.py"),
        "A configs/<name>.py file; override fields with --config.a.b=value.", lock_config=True,
    )
    flags.DEFINE_string("workdir", None, "Run directory (default runs/<config name>).")
    flags.DEFINE_bool("allow_config_change", False,
                      "Continue a run in --workdir even though its config differs from this one.")
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs.")
    flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
    flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")


def train_main() -> None:
    from odediff import parallel

    f = flags.FLAGS
    parallel.initialize_distributed(f.coordinator_address, f.num_processes, f.process_id)
    from odediff.training import NonFiniteError, train_and_evaluate

    name = Path(config_flags.get_config_filename(f["config"])).stem
    workdir = f.workdir or str(Path("runs") / name)
    try:
        train_and_evaluate(f.config, workdir, allow_config_change=f.allow_config_change)
    except NonFiniteError as e:
        _fail("train.py", str(e), code=1)


# ---------------------------------------------------------------------------- sample.py


def define_sample_flags() -> None:
    flags.DEFINE_string("workdir", None, "Run directory holding checkpoints/.", required=True)
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
    flags.DEFINE_integer("num", 64, "Number of samples.")
    flags.DEFINE_string("sampler", None, "ancestral | ddim | ode | dpmpp2m (default: the run's config).")
    flags.DEFINE_integer("steps", None, "Sampler steps (default: the run's config); 0 with --sampler ode is adaptive.")
    flags.DEFINE_integer("seed", 0, "Random seed.")
    flags.DEFINE_string("out", None, "Output prefix: writes <out>.png and <out>.npz "
                        "(default <workdir>/samples/sample_<step>_<sampler><steps>_seed<seed>).")


def sample_main() -> None:
    from odediff.generation import generate, restore_run, write_samples

    f = flags.FLAGS
    if f.num <= 0 or (f.steps is not None and f.steps < 0):
        raise ConfigError(f"--num must be positive and --steps not negative, got --num={f.num} --steps={f.steps}")
    config, params, step = restore_run(f.workdir, f.step)
    sampler = f.sampler or config.sampling.sampler
    steps = config.sampling.num_steps if f.steps is None else f.steps
    out = f.out or str(Path(f.workdir) / "samples" / f"sample_{step}_{sampler}{steps}_seed{f.seed}")
    samples, seconds, nfe = generate(config, params, f.num, sampler=sampler, num_steps=steps, seed=f.seed)
    png, npz = write_samples(samples, out)
    print(f"{f.num} samples from step {step} ({sampler}, {nfe} evaluations) in {seconds:.2f} s "
          f"= {f.num / seconds:.2f} samples/s -> {png}, {npz}")
