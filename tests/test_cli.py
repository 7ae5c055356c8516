"""End to end, as a user runs it: train.py, resume, sample.py (several processes: test_faults.py)."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from helpers import REPO, TINY, run, tiny_config
from odediff import cli
from odediff.checkpoint import Checkpointer
from odediff.generation import restore_run
from odediff.training import train_and_evaluate


def _ok(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.long
def test_train_resume_and_sample_on_digits(tmp_path):
    wd = tmp_path / "run"
    _ok(run("train.py", f"--workdir={wd}", "--config.training.num_steps=4", *TINY))
    assert Checkpointer(wd).steps() == [4]
    for name in ("config.json", "metrics.jsonl", "loss.png"):
        assert (wd / name).is_file(), name
    assert list((wd / "tensorboard").iterdir()), "no TensorBoard events"
    assert (wd / "samples" / "step_00000004.png").is_file()

    # Resuming continues at step 4 and trains to 6 (num_steps may grow on resume); in this
    # process, with the config the flags above build.
    config = tiny_config()
    config.training.num_steps = 6
    train_and_evaluate(config, wd)
    assert Checkpointer(wd).steps() == [4, 6]
    steps = [json.loads(line)["step"] for line in (wd / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6]

    out = tmp_path / "s" / "grid"
    proc = _ok(run("sample.py", f"--workdir={wd}", "--num=5", "--sampler=ddim", "--steps=3", f"--out={out}"))
    assert "samples/s" in proc.stdout
    images = np.load(f"{out}.npz")["images"]
    assert images.shape == (5, 8, 8, 1) and images.dtype == np.uint8
    assert (tmp_path / "s" / "grid.png").is_file()


@pytest.mark.long
def test_train_on_mock_tfds_mnist_in_process(tmp_path):
    c = tiny_config()  # the reference run's denoiser and step: one compilation in the suite
    c.data.source = "tfds:mnist"
    c.training.num_steps = 2
    with tfds.testing.mock_data(num_examples=16):
        state = train_and_evaluate(c, tmp_path)
    assert int(state.step) == 2
    config, params, step = restore_run(tmp_path)
    assert step == 2 and config.data.source == "tfds:mnist"
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(state.ema_params)):
        np.testing.assert_array_equal(a, b)


def test_config_names_resolve_to_the_shipped_configs_from_any_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no configs/ here, as for an installed package
    shipped = cli.packaged_configs()
    assert {"digits.py", "mnist.py", "cifar10.py", "celeba64.py"} <= set(shipped)
    for arg in ("--config=mnist", "--config=configs/mnist.py", "--config=mnist.py"):
        assert cli.resolve_config_arg(["train.py", arg]) == ["train.py", f"--config={shipped['mnist.py']}"]
    assert cli.resolve_config_arg(["train.py", "--config", "digits"]) == [
        "train.py",
        "--config",
        str(shipped["digits.py"]),
    ]
    own = tmp_path / "mine.py"
    own.write_text("")
    assert cli.resolve_config_arg(["train.py", f"--config={own}"]) == ["train.py", f"--config={own}"]
    with pytest.raises(SystemExit) as e:
        cli.resolve_config_arg(["train.py", "--config=nope"])
    assert e.value.code == 2
    assert (
        "config file nope does not exist: pass a path to one, or one of configs/celeba64.py" in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    "argv,message",
    [
        (
            ["--config.training.num_steps=400", "--config.sampling.num_steps=5"],
            "unknown field 'num_steps' in --config.sampling.num_steps: sampling.num_steps was renamed sampling.steps "
            "(pass --config.sampling.steps=5)",
        ),
        (
            ["--sampling.num_steps=5"],
            "unknown field 'num_steps' in --sampling.num_steps: sampling.num_steps was renamed sampling.steps "
            "(pass --sampling.steps=5)",
        ),
        (
            ["--config.model.ch_mult=(1,2)"],
            "unknown field 'ch_mult' in --config.model.ch_mult: model.ch_mult was renamed model.cunet.ch_mult or "
            "model.unet.ch_mult (pass --config.model.cunet.ch_mult=(1,2) or --config.model.unet.ch_mult=(1,2))",
        ),
        (
            ["--config.training.batch_sise=8"],
            "unknown field 'batch_sise' in --config.training.batch_sise: did you mean --config.training.batch_size?",
        ),
        (
            ["--config.trainin.batch_size=8"],
            "unknown field 'trainin' in --config.trainin.batch_size: did you mean --config.training.batch_size?",
        ),
        (
            ["--config.training.solver=rk4"],
            "unknown field 'solver' in --config.training.solver: did you mean --config.model.cunet.solver or "
            "--config.sampling.solver?",
        ),
        (
            ["--config.data.zzz=1"],
            "unknown field 'zzz' in --config.data.zzz: the fields of data are channels, data_dir, "
            "holdout_fraction, image_size, num_workers, prefetch, random_flip, source",
        ),
        (
            ["--config.training.batch_size.x=1"],
            "unknown field 'x' in --config.training.batch_size.x: training.batch_size "
            "is a value, not a group of fields (pass --config.training.batch_size=1)",
        ),
    ],
)
def test_an_unknown_config_field_names_its_own_flag_and_what_to_pass(argv, message):
    key = message.split("'")[1]
    refused = AttributeError(KeyError(f"'{key}'"))  # as ml_collections raises it
    assert cli._flag_failure("train.py", refused, ["train.py", "--config.model.cunet.nf=4", *argv]) == message
    assert cli.unknown_override(["train.py", "--config.training.num_steps=400", "--config.model.name=unet"]) is None


def test_a_conditional_run_without_labels_draws_the_classes_in_turn():
    labels, cols = cli.parse_labels(None, 10, 12)
    assert labels.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1] and cols == 10
    labels, cols = cli.parse_labels(None, 10, 2)
    assert labels.tolist() == [0, 1] and labels.dtype == np.int32 and cols == 0
    assert cli.parse_labels(None, 0, 2) == (None, 0)  # an unconditional run
    labels, cols = cli.parse_labels("3,1", 10, 2)
    assert labels.tolist() == [3, 3, 1, 1] and cols == 2
    labels, cols = cli.parse_labels("all", 3, 2)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2] and cols == 2


@pytest.mark.parametrize("command", ["odediff-train", "odediff-sample", "odediff-evaluate"])
def test_the_installed_commands_name_themselves_in_their_errors(command, tmp_path):
    exe = Path(sys.executable).with_name(command)
    if not exe.exists():
        pytest.skip(f"{command} is not installed next to {sys.executable} (pip install -e .)")
    arg = "--config=nope" if command == "odediff-train" else f"--workdir={tmp_path / 'none'}"  # no run there
    proc = subprocess.run([str(exe), arg], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith(f"{command}: error: "), proc.stderr


def test_a_train_py_mistake_is_answered_without_importing_jax():
    # the error and --help paths load neither the models nor the checkpoint library
    code = (
        "import atexit, runpy, sys; atexit.register(lambda: print(sorted({'jax', 'flax', 'orbax'} & set(sys.modules))));"
        "sys.argv = ['train.py', '--config.training.batch_sise=8']; runpy.run_path('train.py', run_name='__main__')"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "did you mean --config.training.batch_size?" in proc.stderr, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.long
def test_conditional_run_samples_by_class_with_every_sampler_option_from_the_command_line(tmp_path):
    wd = tmp_path / "cond"
    config = tiny_config(config_file="digits_cond.py")
    config.training.num_steps = 2
    train_and_evaluate(config, wd)
    # without --labels (sampling.guidance is 2 in this config), the classes in turn
    out = tmp_path / "s" / "by_class"
    proc = _ok(
        run(
            "sample.py",
            f"--workdir={wd}",
            "--num=12",
            "--guidance=2",
            "--sampling.sampler=ode",
            "--sampling.solver=heun",
            "--sampling.steps=20",
            f"--out={out}",
        )
    )
    assert "ode steps=20 solver=heun" in proc.stdout and "guidance=2" in proc.stdout
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["sampling"]["solver"] == "heun" and record["sampling"]["steps"] == 20
    assert record["nfe"] == 2 * 19 + 1 and record["labels"] == [*range(10), 0, 1]
    saved = np.load(out.with_suffix(".npz"))
    assert saved["images"].shape == (12, 8, 8, 1) and saved["labels"].tolist() == record["labels"]

    # bad sampling input: one line and exit 2 from the command line, each check in-process below
    proc = run("sample.py", f"--workdir={wd}", "--num=2", "--steps=3", "--sampling.steps=4")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "disagree" in proc.stderr, (
        proc.stderr
    )


def test_bad_sampling_input_is_a_config_error_naming_it():
    from odediff.config import ConfigError, check_sampling, default_config

    with pytest.raises(ConfigError, match=r"classes \[11\] are not in \[0, 10\)"):
        cli.parse_labels("11", 10, 2)
    sampling = default_config().sampling
    sampling.update(sampler="ode", solver="nope")
    with pytest.raises(ConfigError, match="sampling.solver='nope' is not one of"):
        check_sampling(sampling)
    assert "unknown field 'stepz' in --sampling.stepz" in cli.unknown_override(["sample.py", "--sampling.stepz=3"])
