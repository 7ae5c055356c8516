"""Fault injection, end to end: kills, preemption, a full disk, NaNs and bad input."""

import errno
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from helpers import (
    REPO,
    TINY,
    N,
    assert_sample_error,
    assert_trees_equal,
    assert_usage_error,
    restored_state,
    run,
    snapshot,
    steps_on_disk,
    subprocess_env,
    tiny_config,
    train_in_process,
)
from odediff import cli
from odediff.checkpoint import Checkpointer, _disk_full

ARGS = [f"--config.training.num_steps={N}", *TINY]


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


# ---------------------------------------------------------------------------- kills and preemption


class _Train:
    """train.py started in the background, its output going to files."""

    def __init__(self, workdir: Path, log: Path, *extra: str, devices: int = 4):
        env = subprocess_env(devices)
        self.out, self.err = open(log.with_suffix(".out"), "w+"), open(log.with_suffix(".err"), "w+")
        self.workdir = workdir
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "train.py"), f"--workdir={workdir}", *ARGS, *extra],
            cwd=REPO,
            env=env,
            stdout=self.out,
            stderr=self.err,
            text=True,
        )

    def wait_for_checkpoint_after(self, step: int, timeout: float = 240) -> None:
        deadline = time.time() + timeout
        while not (steps_on_disk(self.workdir) and steps_on_disk(self.workdir)[-1] > step):
            assert self.proc.poll() is None, f"train.py ended early: {self.output()[1][-3000:]}"
            assert time.time() < deadline, "no new checkpoint in time"
            time.sleep(0.02)

    def finish(self) -> tuple[int, str, str]:
        rc = self.proc.wait(timeout=240)
        out, err = self.output()
        self.out.close()
        self.err.close()
        return rc, out, err

    def output(self) -> tuple[str, str]:
        for f in (self.out, self.err):
            f.flush()
            f.seek(0)
        return self.out.read(), self.err.read()


@pytest.mark.long
def test_killed_and_preempted_run_resumes_bitwise_equal_to_an_uninterrupted_one(
    reference, tmp_path, monkeypatch, capsys
):
    from odediff import data

    workdir = tmp_path / "run"
    # SIGKILL once a checkpoint beyond step 2 is on disk: whatever was in flight is lost.
    killed = _Train(workdir, tmp_path / "killed")
    killed.wait_for_checkpoint_after(2)
    killed.proc.kill()
    assert killed.finish()[0] == -signal.SIGKILL
    resumed_from = steps_on_disk(workdir)[-1]
    assert 2 < resumed_from < N

    # Restarted with the same settings (in this process), then preempted while a batch two steps
    # on is made: SIGTERM saves the current step and returns.
    real_get_batch = data.get_batch

    def get_batch(source, config, batch_size, seed, step, *args, **kwargs):
        if step == resumed_from + 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_get_batch(source, config, batch_size, seed, step, *args, **kwargs)

    monkeypatch.setattr(data, "get_batch", get_batch)
    train_in_process(workdir)
    monkeypatch.undo()
    out = capsys.readouterr().out
    stopped = re.search(r"^stopped by SIGTERM at step (\d+): checkpoint saved in (\S+);", out, re.M)
    assert stopped, out
    step = int(stopped[1])
    assert resumed_from < step < N and steps_on_disk(workdir)[-1] == step
    assert Path(stopped[2]) == workdir / "checkpoints"
    restored_state(workdir, step)  # intact

    # Resumed once more, it finishes; every array equals the uninterrupted run's, bit for bit.
    train_in_process(workdir)
    assert_trees_equal(restored_state(workdir, N), restored_state(reference, N))


@pytest.mark.long
def test_sigterm_to_one_of_two_processes_stops_both_at_one_step_with_one_checkpoint(reference, tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    def both(name: str) -> list[_Train]:  # two processes of two devices each
        return [
            _Train(
                tmp_path / "run",
                tmp_path / f"{name}{i}",
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
                devices=2,
            )
            for i in range(2)
        ]

    procs = both("preempted")
    procs[0].wait_for_checkpoint_after(2)
    procs[1].proc.send_signal(signal.SIGTERM)  # process 1 only
    steps = []
    for p in procs:
        rc, out, err = p.finish()
        assert rc == 0, err[-3000:]
        stopped = re.search(r"^stopped by SIGTERM at step (\d+): checkpoint saved", out, re.M)
        assert stopped, out
        steps.append(int(stopped[1]))
    assert steps[0] == steps[1] and 2 < steps[0] < N, steps
    assert steps_on_disk(tmp_path / "run")[-1] == steps[0]
    restored_state(tmp_path / "run", steps[0])  # intact

    # resumed by one process, it finishes like the uninterrupted run
    train_in_process(tmp_path / "run")
    for x, y in zip(
        jax.tree.leaves(restored_state(tmp_path / "run", N)), jax.tree.leaves(restored_state(reference, N))
    ):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- damaged checkpoints


# ---------------------------------------------------------------------------- a full disk

NO_SPACE = (
    'RESOURCE_EXHAUSTED: Error writing local file "{dir}/4.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/'
    '_sharding": Failed writing: "{dir}/4.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/_sharding.__lock": '
    "Failed to write 55714 bytes to file 15: No space left on device [os_error_code='28']"
)


@pytest.mark.parametrize(
    "error,full",
    [
        (ValueError(NO_SPACE.format(dir="/x")), True),  # what orbax raises from tensorstore
        (OSError(errno.ENOSPC, "No space left on device"), True),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), True),
        (ValueError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.2 GiB"), False),
        (OSError(errno.EACCES, "Permission denied"), False),
    ],
)
def test_a_full_disk_is_told_from_other_errors(error, full):
    try:
        try:
            raise error
        except Exception as e:
            raise RuntimeError("Save Finalize thread failed") from e
    except RuntimeError as wrapped:
        assert _disk_full(wrapped) is full


def test_a_disk_that_fills_up_during_a_save_is_one_line_and_exit_3_and_the_checkpoint_before_is_intact(
    tmp_path, monkeypatch, capsys, caplog
):
    import orbax.checkpoint as ocp
    from absl import logging as absl_logging

    from odediff.training import train_and_evaluate

    workdir = tmp_path / "run"
    config = tiny_config()
    config.training.update(num_steps=4, checkpoint_every=2)
    real_save = ocp.CheckpointManager.save

    def save(self, step, *args, **kwargs):  # step 2 saves, step 4 finds the disk full
        if step < 4:
            return real_save(self, step, *args, **kwargs)
        (workdir / "checkpoints" / "4.orbax-checkpoint-tmp").mkdir()
        error = ValueError(NO_SPACE.format(dir=workdir / "checkpoints"))
        absl_logging.error("[thread=array_type_handler] _SignalingThread.run() raised an exception: %s", error)
        absl_logging.error("an error of something else")
        raise error

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    with caplog.at_level(logging.ERROR, logger="absl"), pytest.raises(SystemExit) as stop:
        cli.run_main("train.py", lambda: train_and_evaluate(config, workdir))
    assert stop.value.code == 3
    lines = [line for line in capsys.readouterr().err.splitlines() if line and not re.search(r"\d+%\|", line)]
    assert len(lines) == 1, lines
    assert re.fullmatch(
        rf"train.py: error: the disk holding {re.escape(str(workdir))} filled up while a checkpoint was saved: a "
        r"checkpoint takes about [\d.]+ (KB|MB) and [\d.]+ (KB|MB|GB|TB) are free there; free some space or move "
        r"the run to a larger disk, then run the same command to resume from step 2, the newest checkpoint, "
        r"which is intact",
        lines[0],
    ), lines[0]
    assert "an error of something else" in caplog.text and "No space left" not in caplog.text
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2"]  # the unfinished save is gone
    assert int(restored_state(workdir, 2).step) == 2  # intact: restored with its checksum


# ---------------------------------------------------------------------------- NaN and inf


def _faulty_data(monkeypatch, nan_step: int, sigint_step: int | None = None) -> None:
    """Batches that turn to NaN at `nan_step`, and SIGINT while the batch of `sigint_step` is fetched."""
    from odediff import data

    real_get_batch = data.get_batch

    def get_batch(source, config, batch_size, seed, step, *args, **kwargs):
        if step == sigint_step:
            os.kill(os.getpid(), signal.SIGINT)
        batch = real_get_batch(source, config, batch_size, seed, step, *args, **kwargs)
        return np.full_like(batch, np.nan) if step == nan_step else batch

    monkeypatch.setattr(data, "get_batch", get_batch)


def _train_main(workdir: Path, **training) -> None:
    """train.py's main in this process: its exit code as SystemExit, its one line on stderr."""
    from odediff.training import train_and_evaluate

    config = tiny_config()
    config.training.update(num_steps=N, **training)
    config.data.prefetch = 0  # batches made in the loop: a SIGINT arrives while its step is fetched
    cli.run_main("train.py", lambda: train_and_evaluate(config, workdir))


def _all_checkpoints_finite(workdir: Path) -> list[int]:
    steps = steps_on_disk(workdir)
    for step in steps:
        for leaf in jax.tree.leaves(restored_state(workdir, step)):
            assert np.isfinite(np.asarray(leaf)).all(), step
    return steps


def test_nonfinite_stop_names_the_step_and_writes_no_bad_checkpoint(tmp_path, monkeypatch, capsys):
    workdir = tmp_path / "run"
    _faulty_data(monkeypatch, nan_step=5)
    with pytest.raises(SystemExit) as stop:
        _train_main(workdir)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line and not re.search(r"\d+%\|", line)]
    assert stop.value.code == 1 and "Traceback" not in err and len(lines) == 1, err[-3000:]
    assert re.fullmatch(r"train.py: error: non-finite loss or gradient at step 5; training stopped .*", lines[0])
    assert _all_checkpoints_finite(workdir) == [4]


def test_nonfinite_skip_finishes_and_sigint_saves_a_checkpoint(tmp_path, monkeypatch, capsys):
    workdir = tmp_path / "run"
    _faulty_data(monkeypatch, nan_step=1, sigint_step=4)
    _train_main(workdir, nonfinite="skip")
    out = capsys.readouterr().out
    assert re.search(r"^stopped by SIGINT at step 5: checkpoint saved in ", out, re.M), out
    assert _all_checkpoints_finite(workdir) == [4, 5]
    _train_main(workdir, nonfinite="skip")  # resumes at 5 and finishes
    assert _all_checkpoints_finite(workdir) == [8, 12, N]
    state = restored_state(workdir, N)
    assert int(state.first_nonfinite) == 1 and int(state.num_nonfinite) == 1


# ---------------------------------------------------------------------------- bad input


def test_a_bad_flag_is_one_line_and_exit_2_from_the_command_line(existing):
    before = snapshot(existing)
    proc = run("train.py", f"--workdir={existing}", *ARGS, "--config.training.batch_size=abc")
    assert_usage_error(proc, "train.py", r"--config.training.batch_size=abc: invalid literal for int")
    assert snapshot(existing) == before


def test_an_unknown_config_file_is_one_line_listing_the_shipped_ones(capsys):
    from odediff import cli

    with pytest.raises(SystemExit) as stop:
        cli.resolve_config_arg(["train.py", "--config=configs/nope.py"])
    assert stop.value.code == 2
    assert re.fullmatch(
        r"train.py: error: config file configs/nope.py does not exist: pass a path to one, or one "
        r"of .*\n",
        capsys.readouterr().err,
    )


BAD_TRAIN = {  # config field -> value, and the one line it gives
    "unknown dataset": ({"data.source": "imagenet"}, r"data.source='imagenet' is not known: use one of"),
    "missing source path": ({"data.source": "npz:/nonexistent/x.npz"}, r"npz:/nonexistent/x.npz does not exist"),
    "tfds offline": (
        {"data.source": "tfds:mnist", "data.data_dir": "{empty}"},
        r"tfds dataset 'mnist' is not prepared in \S+ and cannot be downloaded offline",
    ),
    "image size": ({"data.image_size": 9}, r"data.image_size=9 is not divisible by 2"),
    "batch vs devices": ({"training.batch_size": 6}, r"batch_size=6 is not divisible by the 4 devices"),
    "different config": (
        {"model.cunet.nf": 8},
        r"holds a run with a different config \(model.cunet.nf\): .*--allow_config_change",
    ),
}


@pytest.mark.parametrize("case", BAD_TRAIN)
def test_bad_train_input_is_one_line_and_changes_nothing(existing, tmp_path, case, capsys):
    from odediff import cli
    from odediff.training import train_and_evaluate

    fields, pattern = BAD_TRAIN[case]
    config = tiny_config()
    config.training.num_steps = N
    for key, value in fields.items():
        group, _, name = key.rpartition(".")
        config[group][name] = value.format(empty=tmp_path) if isinstance(value, str) else value
    before = snapshot(existing)
    with pytest.raises(SystemExit) as stop:
        cli.run_main("train.py", lambda: train_and_evaluate(config, str(existing)))
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    assert stop.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("train.py: error: ") and re.search(pattern, lines[0]), lines[0]
    assert snapshot(existing) == before
    assert not list(tmp_path.iterdir())  # not even the empty tfds data_dir was written to


def test_allow_config_change_continues_the_run(existing, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(existing, workdir)
    before = restored_state(workdir, N)
    train_in_process(workdir, N + 2, allow_config_change=True, learning_rate=0.01)
    assert json.loads((workdir / "config.json").read_text())["training"]["learning_rate"] == 0.01
    assert steps_on_disk(workdir)[-1] == N + 2
    after = restored_state(workdir, N + 2)
    assert int(after.step) == N + 2 and not np.array_equal(
        np.asarray(jax.tree.leaves(after.params)[0]), np.asarray(jax.tree.leaves(before.params)[0])
    )
    meta = Checkpointer(workdir, read_only=True).read_meta(N + 2)
    assert meta["config"]["training"]["learning_rate"] == 0.01  # the new value trained those steps


def test_sample_without_checkpoints_or_workdir(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    assert_sample_error(tmp_path, capsys, rf"{tmp_path} has no checkpoints/ folder: train first")
    assert_usage_error(
        run("sample.py", "--num=2"), "sample.py", r"pass either --workdir \(a run directory\) or --pretrained"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
def test_a_decaying_run_resumes_only_with_the_num_steps_it_started_with(tmp_path, schedule):
    from odediff.config import ConfigError, config_to_json
    from odediff.training import check_workdir_config

    config = tiny_config()
    config.training.update(lr_schedule=schedule, num_steps=100, decay_steps=50)
    (tmp_path / "config.json").write_text(config_to_json(config))
    check_workdir_config(tmp_path, config, allow_config_change=False)
    config.training.num_steps = 200
    for allow in (False, True):
        with pytest.raises(
            ConfigError,
            match=rf"training.num_steps=100, and its {schedule} learning-rate schedule is "
            r"built from it: pass --config.training.num_steps=100 to resume it",
        ):
            check_workdir_config(tmp_path, config, allow_config_change=allow)
    config.training.lr_schedule = "constant"  # a constant rate does not depend on num_steps
    (tmp_path / "config.json").write_text(config_to_json(config))
    config.training.num_steps = 300
    check_workdir_config(tmp_path, config, allow_config_change=False)
