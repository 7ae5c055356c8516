"""Orbax checkpoints under <workdir>/checkpoints: train state plus a JSON record (config, step, data position)."""

import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was needed, with the reason."""


def checkpoint_dir(workdir: str | Path) -> Path:
    return Path(workdir).absolute() / "checkpoints"


class Checkpointer:
    """Saves asynchronously, keeps the last `keep`, restores the newest intact step."""

    def __init__(self, workdir: str | Path, keep: int = 3, *, read_only: bool = False):
        options = ocp.CheckpointManagerOptions(max_to_keep=None if read_only else keep, create=not read_only)
        self.directory = checkpoint_dir(workdir)
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict, *, force: bool = False) -> None:
        """Starts an asynchronous save; every process must call it."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        self._manager.save(step, args=args, force=force)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """The state at `step`, shaped and sharded like `abstract_state`, and its JSON record."""
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
        )
        out = self._manager.restore(step, args=args)
        return out.state, dict(out.meta)

    def read_meta(self, step: int) -> dict:
        """The JSON record alone (config and step), without touching the arrays."""
        out = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(out.meta)

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
        """The newest step that restores and passes checks; damaged ones are skipped with a
        warning naming them. None if there is no checkpoint at all."""
        steps = self.steps()
        for step in reversed(steps):
            try:
                state, meta = self.restore(step, abstract_state)
                _check_finite(state)
                return step, state, meta
            except Exception as e:  # any damage: missing files, bad metadata, truncated arrays
                log.warning("checkpoint step %d in %s is unusable (%s); trying an older one",
                            step, self.directory, _one_line(e))
        if steps:
            raise CheckpointError(f"no usable checkpoint in {self.directory} (steps {steps} are all damaged)")
        return None

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def _check_finite(state: Any) -> None:
    for leaf in jax.tree.leaves(state):
        if jnp.issubdtype(leaf.dtype, jnp.floating) and not bool(jnp.isfinite(leaf).all()):
            raise CheckpointError("it holds non-finite values")


def _one_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]
