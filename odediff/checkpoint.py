"""Orbax checkpoints under <workdir>/checkpoints: train state plus a JSON record (config, step, format version)."""

import errno
import logging
import os
import shutil
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from odediff import parallel

log = logging.getLogger(__name__)

COMMIT_FILE = "commit_success.txt"  # orbax writes it last, in every step it finishes
# Bumped whenever the function that the same saved parameters compute changes.
# 1: the cU-Net's `field` option exists (records without a version but with it are 1).
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was needed, with the reason."""


class FormatError(CheckpointError):
    """A checkpoint written in another format version: intact, but not for this odediff."""


class DiskFullError(RuntimeError):
    """The disk filled up while a checkpoint was saved; the checkpoints saved before are intact."""


def check_format(meta: dict, where: str) -> None:
    """Raises FormatError, saying what to do, unless `meta` (a checkpoint's JSON record)
    is of FORMAT_VERSION."""
    version = meta.get("format_version")
    if version is None:  # written before versions existed
        version = 1 if "field" in meta.get("config", {}).get("model", {}).get("cunet", {}) else 0
    if version == FORMAT_VERSION:
        return
    if version < FORMAT_VERSION:
        raise FormatError(
            f"{where} has checkpoint format {version}, and this odediff reads format {FORMAT_VERSION}: its "
            f"parameters compute another function here (before format 1 the cU-Net's vector field was the "
            f"release's). Sample it with the odediff release that wrote it, or train a new run"
        )
    raise FormatError(
        f"{where} has checkpoint format {version}, newer than this odediff's {FORMAT_VERSION}: "
        f"upgrade odediff to read it"
    )


def checkpoint_dir(workdir: str | Path) -> Path:
    return Path(workdir).absolute() / "checkpoints"


class Checkpointer:
    """Saves asynchronously, keeps the last `keep`, restores the newest intact step."""

    def __init__(self, workdir: str | Path, keep: int = 3, *, read_only: bool = False):
        options = ocp.CheckpointManagerOptions(max_to_keep=None if read_only else keep, create=not read_only)
        self.directory = checkpoint_dir(workdir)
        if not read_only and jax.process_index() == 0:
            for tmp in sorted(self.directory.glob("*.orbax-checkpoint-tmp*")):  # orbax ignores them
                log.warning("removing %s: a save that never finished", tmp)
                shutil.rmtree(tmp)
        handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
        self._closed = False
        self._state_bytes = 0
        if not read_only:
            _drop_disk_full_logs()

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict, *, force: bool = False) -> None:
        """Starts an asynchronous save, with checksums of the state (and of its EMA params)
        in the record; every process must call it. The checksums are computed where the
        state lives and only their 8 bytes come to the host: no copy of the state blocks
        the training loop. Raises DiskFullError when the disk fills up during this save or
        the one before."""
        full, ema = (int(c) for c in parallel.to_host(_save_checksums(state)))
        meta = {**meta, "state_checksum": full, "ema_params_checksum": ema}
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        self._state_bytes = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(state))
        try:
            self._manager.save(step, args=args, force=force)
        except Exception as e:
            self._raise_if_disk_full(e)
            raise

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """The state at `step`, shaped and sharded like `abstract_state`, and its JSON record.
        Raises CheckpointError saying why when the step is unfinished, unreadable, corrupted
        or does not fit `abstract_state`."""
        check_format(self.read_meta(step), f"checkpoint step {step} in {self.directory}")
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
        _drop_failed_io_aftermath()
        try:
            _check_fits(self._manager.item_metadata(step)["state"], abstract_state.params)
            out = self._manager.restore(step, args=args)
        except CheckpointError:
            raise
        except Exception as e:  # missing or truncated files, unreadable metadata
            raise CheckpointError(f"its files cannot be read ({_one_line(e)})") from e
        state, meta = out.state, dict(out.meta)
        leaves = _host_leaves(state)
        if "state_checksum" in meta:
            intact = int(parallel.to_host(state_checksum(state))) == meta["state_checksum"]
        else:  # written before the checksum moved to the devices
            intact = "state_crc32" not in meta or _crc32(leaves) == meta["state_crc32"]
        _check_arrays(leaves, intact)
        return state, meta

    def restore_ema_params(self, step: int, abstract_params: Any) -> Any:
        """The EMA params at `step` alone, shaped and sharded like `abstract_params`, without
        reading the rest of the state. Raises CheckpointError as `restore` does, and for a
        checkpoint saved before the EMA params had a checksum of their own (restore those
        with `restore`)."""
        meta = self.read_meta(step)
        check_format(meta, f"checkpoint step {step} in {self.directory}")
        if "ema_params_checksum" not in meta:
            raise CheckpointError("its record has no checksum of the EMA params alone: restore the whole state")
        item = {"ema_params": abstract_params}
        args = ocp.args.PyTreeRestore(
            item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True
        )
        _drop_failed_io_aftermath()
        try:
            stored = self._manager.item_metadata(step)["state"]
            if stored is None:  # the arrays alone might still read, but the step is damaged
                raise CheckpointError("its files cannot be read (the state's metadata is missing)")
            _check_fits(stored, abstract_params, "ema_params.")
            with ocp.PyTreeCheckpointer() as reader:
                params = reader.restore(self.directory / str(step) / "state", args=args)["ema_params"]
        except CheckpointError:
            raise
        except Exception as e:  # missing or truncated files, unreadable metadata
            raise CheckpointError(f"its files cannot be read ({_one_line(e)})") from e
        _check_arrays(
            _host_leaves(params), int(parallel.to_host(state_checksum(params))) == meta["ema_params_checksum"]
        )
        return params

    def read_meta(self, step: int) -> dict:
        """The JSON record alone (config and step), without touching the arrays."""
        self._check_committed(step)
        _drop_failed_io_aftermath()
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        except Exception as e:
            raise CheckpointError(f"its record cannot be read ({_one_line(e)})") from e
        return dict(out.meta)

    def _check_committed(self, step: int) -> None:
        if not (self.directory / str(step) / COMMIT_FILE).is_file():
            raise CheckpointError(f"it has no {COMMIT_FILE}, so its save never finished")

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
        """The newest step that restores and passes checks; damaged ones are skipped with a
        warning naming them, and the newer ones moved aside to <step>.unusable so that training
        can save those steps again. None if there is no checkpoint at all."""
        steps = self.steps()
        reasons = []
        for step in reversed(steps):
            try:
                state, meta = self.restore(step, abstract_state)
            except FormatError:
                raise
            except CheckpointError as e:
                reasons.append(f"step {step}: {e}")
                log.warning("checkpoint step %d in %s is unusable (%s); trying an older one", step, self.directory, e)
                continue
            self._move_aside([s for s in steps if s > step])
            return step, state, meta
        if steps:
            raise CheckpointError(f"no usable checkpoint in {self.directory} ({'; '.join(reasons)})")
        return None

    def _move_aside(self, steps: list[int]) -> None:
        """Renames unusable steps out of orbax's sight (keeping them for inspection)."""
        if not steps:
            return
        if jax.process_index() == 0:
            for step in steps:
                (self.directory / str(step)).rename(self.directory / f"{step}.unusable-{time.time_ns()}")
            log.warning(
                "moved unusable checkpoint steps %s in %s aside to <step>.unusable-<time>", steps, self.directory
            )
        ocp.multihost.sync_global_processes("odediff_move_unusable_checkpoints")
        self._manager.reload()

    def close(self) -> None:
        """Finishes the saves in flight (DiskFullError if the disk filled up) and closes."""
        if self._closed:
            return
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            self._raise_if_disk_full(e)
            raise
        self._manager.close()
        self._closed = True

    def _raise_if_disk_full(self, e: Exception) -> None:
        """Raises DiskFullError in place of `e` where `e` is a disk that filled up, after
        closing orbax and removing the unfinished save (the finished steps stay as they are)."""
        if not _disk_full(e):
            return
        self._closed = True
        _drop_failed_io_aftermath()
        try:
            self._manager.close()  # each failed save raises once, so this waits for the rest
        except Exception:
            pass
        if jax.process_index() == 0:
            for tmp in self.directory.glob("*.orbax-checkpoint-tmp*"):
                shutil.rmtree(tmp, ignore_errors=True)
        intact = sorted(
            int(p.name) for p in self.directory.iterdir() if p.name.isdigit() and (p / COMMIT_FILE).is_file()
        )
        newest = self.directory / str(intact[-1]) if intact else None
        on_disk = sum(f.stat().st_size for f in newest.rglob("*") if f.is_file()) if newest else 0
        needed = max(self._state_bytes, on_disk)  # a small state's files hold more than its arrays
        free = shutil.disk_usage(self.directory).free
        resume = (
            f"run the same command to resume from step {intact[-1]}, the newest checkpoint, which is intact"
            if intact
            else "run the same command to start again"
        )
        raise DiskFullError(
            f"the disk holding {self.directory.parent} filled up while a checkpoint was saved: a checkpoint "
            f"takes about {_size(needed)} and {_size(free)} are free there; free some space or move "
            f"the run to a larger disk, then {resume}"
        ) from None


def _disk_full(e: BaseException | None) -> bool:
    """Whether `e`, or an error it was raised from, is a full disk (or quota): an OSError
    ENOSPC or EDQUOT, or tensorstore's RESOURCE_EXHAUSTED that orbax raises for one."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(e)
        if any(s in text for s in ("No space left on device", "Disk quota exceeded", "os_error_code='28'")):
            return True
        e = e.__cause__ or e.__context__
    return False


def _drop_disk_full_logs() -> None:
    """Orbax logs each failed write of a save, with its traceback, from the threads that
    write: a full disk prints dozens of them before the save's error reaches
    `Checkpointer`, which turns it into one DiskFullError. This process drops those
    records, and only those."""
    logger = logging.getLogger("absl")
    if any(getattr(f, "drops_disk_full", False) for f in logger.filters):
        return

    def keep(record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (_disk_full(error) or _disk_full(Exception(record.getMessage())))

    keep.drops_disk_full = True
    logger.addFilter(keep)


def _size(num_bytes: float) -> str:
    """A byte count for a reader: 512 bytes, 3.4 MB, 1.2 GB."""
    unit = "bytes"
    for bigger in ("KB", "MB", "GB", "TB"):
        if num_bytes < 1000:
            break
        num_bytes, unit = num_bytes / 1000, bigger
    return f"{num_bytes:.0f} bytes" if unit == "bytes" else f"{num_bytes:.1f} {unit}"


def _drop_failed_io_aftermath() -> None:
    """When one read of a restore (or write of a save) fails, the others end on their own:
    tensorstore's callbacks find orbax's event loop closed ('RuntimeError: Event loop is
    closed') and orbax's coroutines are collected with their errors unretrieved. Each
    would print a traceback through `sys.unraisablehook` around our one-line error; this
    process drops those, and only those, once it has started a restore or seen a save fail."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_failed_io_aftermath", False):
        return

    def hook(unraisable):
        e, code = unraisable.exc_value, getattr(unraisable.object, "cr_code", None)
        closed_loop = isinstance(e, RuntimeError) and str(e) == "Event loop is closed"
        orbax_io = code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename
        if not (closed_loop or orbax_io):
            previous(unraisable)

    hook.drops_failed_io_aftermath = True
    sys.unraisablehook = hook


def _host_leaves(state: Any) -> list[np.ndarray]:
    return [np.ascontiguousarray(parallel.to_host(leaf)) for leaf in jax.tree.leaves(state)]


def _words(x: jax.Array) -> jax.Array:
    """An array's bits as a flat uint32 vector (one word per element of 1, 2 or 4 bytes)."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    x = x.reshape(-1)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32).reshape(-1)


def _mix(w: jax.Array) -> jax.Array:
    """A bijection of uint32 that spreads every input bit over the word."""
    w = (w ^ (w >> 16)) * jnp.uint32(0x7FEB352D)
    w = (w ^ (w >> 15)) * jnp.uint32(0x846CA68B)
    return w ^ (w >> 16)


@jax.jit
def state_checksum(state: Any) -> jax.Array:
    """A uint32 checksum of every array's bits, computed on the arrays' own devices.

    Each word is mixed with its position in the state and the results summed modulo
    2**32: any single changed word changes the sum (the mixing is a bijection), and
    the sum does not depend on how the arrays are sharded or reduced.
    """
    words = jnp.concatenate([_words(leaf) for leaf in jax.tree.leaves(state)])
    salt = jnp.arange(words.size, dtype=jnp.uint32) * jnp.uint32(0x9E3779B9)
    return jnp.sum(_mix(_mix(words) ^ salt), dtype=jnp.uint32)


@jax.jit
def _save_checksums(state: Any) -> jax.Array:
    """`state_checksum` of a train state and of its EMA params, uint32 (2,)."""
    return jnp.stack([state_checksum(state), state_checksum(state.ema_params)])


def _check_arrays(leaves: list[np.ndarray], intact: bool) -> None:
    """Raises CheckpointError for restored arrays that fail their checksum or are not finite."""
    if not intact:
        raise CheckpointError("its arrays differ from the checksum saved with them: the files are corrupted")
    if not all(np.isfinite(a).all() for a in leaves if np.issubdtype(a.dtype, np.floating)):
        raise CheckpointError("it holds non-finite values")


def _crc32(leaves: list[np.ndarray]) -> int:
    """The host checksum that checkpoints written before `state_checksum` carry."""
    crc = 0
    for a in leaves:
        crc = zlib.crc32(a.reshape(-1).view(np.uint8), crc)
    return crc


def _check_fits(stored: Any, abstract_params: Any, prefix: str = "params.") -> None:
    """Raises CheckpointError when the saved params under `prefix` have other names or
    shapes than `abstract_params`, those of the model built from the config (a config
    edited or copied from another run)."""
    if stored is None:  # no readable state metadata: restore will say why
        return
    on_disk = {
        m.name.removeprefix(prefix): tuple(m.shape) for m in jax.tree.leaves(stored) if m.name.startswith(prefix)
    }
    wanted = {
        ".".join(str(k.key) for k in path): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params)[0]
    }
    if on_disk == wanted:
        return
    missing, extra = sorted(set(wanted) - set(on_disk)), sorted(set(on_disk) - set(wanted))
    shapes = sorted(k for k in set(wanted) & set(on_disk) if wanted[k] != on_disk[k])
    detail = (
        f"{shapes[0]} is {on_disk[shapes[0]]} on disk but {wanted[shapes[0]]} in the model"
        if shapes
        else f"{len(missing)} params missing and {len(extra)} unexpected, e.g. {(missing or extra)[0]}"
    )
    raise CheckpointError(f"its params do not fit the model its config builds ({detail})")


def _one_line(e: BaseException) -> str:
    while e.__cause__ is not None:  # the innermost error says what actually broke
        e = e.__cause__
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]
