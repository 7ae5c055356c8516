"""odediff.checkpoint: damaged, half-written and foreign checkpoints are named and never used; the
EMA params restored alone; the state checksum."""

import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from helpers import (
    EVERY,
    N,
    assert_sample_error,
    assert_trees_equal,
    assert_usage_error,
    restored_state,
    run,
    snapshot,
    steps_on_disk,
    tiny_config,
    train_in_process,
)
from odediff import parallel
from odediff.checkpoint import Checkpointer, CheckpointError, FormatError, state_checksum
from odediff.generation import restore_run
from odediff.models import build_denoiser
from odediff.train_state import abstract_train_state, make_optimizer


def _truncate_array_files(step_dir: Path) -> None:
    """Cuts every array data file to 100 bytes: the EMA params sampling reads among them."""
    files = [p for p in (step_dir / "state").rglob("*") if p.parent.name == "d" and p.is_file()]
    assert files
    for path in files:
        os.truncate(path, 100)


def _alter_an_array(step_dir: Path) -> None:
    """Rewrites one array in place with other, well-formed values: damage that reads fine."""
    import tensorstore as ts

    kvstore = {"driver": "ocdbt", "base": f"file://{step_dir}/state/", "path": "ema_params.Conv_0.bias/"}
    array = ts.open({"driver": "zarr", "kvstore": kvstore}).result()
    array.write(array.read().result() + np.float32(1)).result()


DAMAGE = {  # what a crash, a full disk or a bad copy leaves behind in a step directory
    "no commit marker": (lambda d: (d / "commit_success.txt").unlink(), r"no commit_success.txt"),
    "truncated array files": (_truncate_array_files, r"files cannot be read"),
    "altered array": (_alter_an_array, r"differ from the checksum"),
    "no array metadata": (lambda d: (d / "state" / "_METADATA").unlink(), r"files cannot be read"),
    "no state": (lambda d: shutil.rmtree(d / "state"), r"files cannot be read"),
    "empty": (lambda d: [shutil.rmtree(d), d.mkdir()], r"no commit_success.txt"),
}


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax's reads left behind
def test_a_damaged_newest_step_is_named_and_skipped(reference, tmp_path, damage, caplog):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    damage_fn, reason = DAMAGE[damage]
    damage_fn(workdir / "checkpoints" / str(N))
    # sample.py's restore refuses it, saying which step and why.
    with pytest.raises(CheckpointError, match=rf"checkpoint step {N} in .* is unusable: .*{reason}"):
        restore_run(workdir)
    # Training's restore falls back to the newest intact step and moves the bad one aside.
    abstract = abstract_train_state(
        build_denoiser(tiny_config().model),
        make_optimizer(tiny_config().training),
        tiny_config(),
        parallel.replicated(parallel.make_mesh()),
    )
    with caplog.at_level(logging.WARNING, logger="odediff.checkpoint"):
        step, _, _ = Checkpointer(workdir).restore_latest(abstract)
    assert step == N - EVERY
    assert re.search(rf"checkpoint step {N} in .* is unusable \(.*{reason}", caplog.text), caplog.text
    assert Checkpointer(workdir).steps()[-1] == N - EVERY == steps_on_disk(workdir)[-1]
    assert list((workdir / "checkpoints").glob(f"{N}.unusable-*"))  # kept for inspection


def test_a_half_written_step_is_ignored_and_removed(reference, tmp_path, caplog):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    unfinished = workdir / "checkpoints" / f"{N}.orbax-checkpoint-tmp"  # how orbax leaves a save cut short
    (workdir / "checkpoints" / str(N)).rename(unfinished)
    assert restore_run(workdir)[2] == N - EVERY
    with caplog.at_level(logging.WARNING, logger="odediff.checkpoint"):
        ckpt = Checkpointer(workdir)
    assert ckpt.steps()[-1] == N - EVERY
    ckpt.close()
    assert f"removing {unfinished}: a save that never finished" in caplog.text
    assert not unfinished.exists()


def test_restore_run_reads_the_ema_params_alone_and_older_checkpoints_whole(reference, tmp_path, monkeypatch):
    import odediff.generation

    ema = restored_state(reference, N).ema_params
    with monkeypatch.context() as m:
        m.setattr(odediff.generation, "make_optimizer", lambda *a, **k: pytest.fail("an optimizer was built"))
        config, params, step = restore_run(reference)
    assert step == N and config.model.cunet.nf == 4
    assert_trees_equal(params, ema)

    # a checkpoint saved before the EMA params had a checksum of their own: restored whole, as before
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    meta = workdir / "checkpoints" / str(N) / "meta" / "metadata"
    record = json.loads(meta.read_text())
    del record["ema_params_checksum"]
    meta.write_text(json.dumps(record))
    assert_trees_equal(restore_run(workdir)[1], ema)


@pytest.mark.long
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax's reads left behind
def test_cli_reports_a_damaged_checkpoint_and_training_resumes_before_it(reference, tmp_path, caplog):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    _truncate_array_files(workdir / "checkpoints" / str(N))
    before = snapshot(workdir)
    assert_usage_error(
        run("sample.py", f"--workdir={workdir}", "--num=2"),
        "sample.py",
        rf"checkpoint step {N} in \S+ is unusable: its files cannot be read \(.*\)",
    )
    assert snapshot(workdir) == before

    with caplog.at_level(logging.WARNING, logger="odediff.checkpoint"):
        train_in_process(workdir)
    assert re.search(rf"checkpoint step {N} in \S+ is unusable \(its files cannot be read", caplog.text)
    assert_trees_equal(restored_state(workdir, N), restored_state(reference, N))


def test_only_the_aftermath_of_a_failed_read_is_silenced(monkeypatch):
    """A failed restore leaves tensorstore callbacks on a closed event loop and orbax read
    coroutines with unretrieved errors; those tracebacks are dropped, nothing else is."""
    from types import SimpleNamespace

    from odediff.checkpoint import _drop_failed_io_aftermath

    def coroutine_from(path):
        scope = {}
        exec(compile("async def read():\n    pass", path, "exec"), scope)
        return scope["read"]()

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    _drop_failed_io_aftermath()
    _drop_failed_io_aftermath()  # idempotent: one filter, not two
    orbax_read = coroutine_from(os.path.join("site-packages", "orbax", "checkpoint", "serialization.py"))
    other = coroutine_from(os.path.join("site-packages", "mylib", "io.py"))
    try:
        dropped = [
            SimpleNamespace(exc_value=RuntimeError("Event loop is closed"), object=None),
            SimpleNamespace(exc_value=Exception("Encountered error while reading"), object=orbax_read),
        ]
        kept = [
            SimpleNamespace(exc_value=RuntimeError("something else"), object=None),
            SimpleNamespace(exc_value=Exception("Encountered error while reading"), object=other),
        ]
        for u in dropped + kept:
            sys.unraisablehook(u)
    finally:
        orbax_read.close()
        other.close()
    assert seen == kept


def test_sample_refuses_params_that_do_not_fit_the_saved_config(existing, tmp_path, capsys):
    workdir = tmp_path / "run"
    shutil.copytree(existing, workdir)
    meta = workdir / "checkpoints" / str(N) / "meta" / "metadata"
    record = json.loads(meta.read_text())
    record["config"]["model"]["cunet"]["nf"] = 8
    meta.write_text(json.dumps(record))
    before = snapshot(workdir)
    assert_sample_error(
        workdir,
        capsys,
        rf"checkpoint step {N} in \S+ is unusable: its params do not fit the model its "
        r"config builds \(Conv_0.bias is \(4,\) on disk but \(8,\) in the model\)",
    )
    assert snapshot(workdir) == before


@pytest.mark.parametrize(
    "version,pattern",
    [
        (0, r"has checkpoint format 0, and this odediff reads format 1: .* train a new run"),
        (7, r"has checkpoint format 7, newer than this odediff's 1: upgrade odediff"),
    ],
)
def test_checkpoints_of_another_format_are_refused_and_left_alone(existing, tmp_path, version, pattern, capsys):
    workdir = tmp_path / "run"
    shutil.copytree(existing, workdir)
    meta = workdir / "checkpoints" / str(N) / "meta" / "metadata"
    record = json.loads(meta.read_text())
    record["format_version"] = version
    meta.write_text(json.dumps(record))
    before = snapshot(workdir)
    assert_sample_error(workdir, capsys, pattern)
    ckpt = Checkpointer(workdir)  # resuming training: refused, not skipped as damaged
    config = ml_collections.ConfigDict(record["config"])
    abstract = abstract_train_state(
        build_denoiser(config.model), make_optimizer(config.training), config, parallel.replicated(parallel.make_mesh())
    )
    with pytest.raises(FormatError, match=pattern):
        ckpt.restore_latest(abstract)
    ckpt.close()
    assert snapshot(workdir) == before


def test_the_state_checksum_sees_any_changed_word_and_not_the_sharding():
    mesh = parallel.make_mesh()
    state = {
        "w": jnp.arange(64, dtype=jnp.float32).reshape(8, 8),
        "n": jnp.int32(3),
        "key": jax.random.key(1),
        "h": jnp.ones(4, jnp.bfloat16),
    }
    value = int(state_checksum(state))
    sharded = {**state, "w": jax.device_put(state["w"], parallel.batch_sharded(mesh))}
    assert int(state_checksum(sharded)) == value
    for changed in (
        {**state, "w": state["w"].at[5, 2].set(np.nextafter(np.float32(42), np.float32(43)))},
        {**state, "w": state["w"].T},
        {**state, "n": jnp.int32(4)},
        {**state, "h": state["h"].at[0].set(2)},
        {**state, "key": jax.random.key(2)},
    ):
        assert int(state_checksum(changed)) != value
