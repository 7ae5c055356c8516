"""Training batches read ahead with grain while the device runs the step before.

Batch `step` is `data.get_batch(source, ..., seed, step)` (this process's slice of the
global batch), so the stream is a pure function of (seed, step) whatever the number of
threads or worker processes; grain reads it ahead, in threads of this process
(`num_workers=0`) or in worker processes that decode and resize in parallel, and a
thread moves finished batches onto the devices. The iterator's state is saved in
every checkpoint's record and restored on resume (a state saved with another layout,
say another number of workers, is not needed: the iterator starts afresh at the step).
"""

import dataclasses
import functools
import logging
from collections.abc import Iterator

import grain
import jax
import ml_collections
from absl import flags
from grain.experimental import ThreadPrefetchIterDataset
from jax.sharding import Mesh

from odediff import data, parallel

MAX_THREADS = 4
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class _MakeBatch:
    """step -> this process's numpy batch (picklable, for worker processes)."""

    source: data.ImageSource
    data_config: ml_collections.ConfigDict
    batch_size: int
    seed: int
    process_index: int
    process_count: int
    with_labels: bool

    def __call__(self, step: int):
        # Looked up at call time, so that a patched data.get_batch is the one used.
        return data.get_batch(
            self.source,
            self.data_config,
            self.batch_size,
            self.seed,
            int(step),
            self.process_index,
            self.process_count,
            with_labels=self.with_labels,
        )


def _to_global(mesh: Mesh, local):
    return jax.tree.map(functools.partial(parallel.global_batch, mesh=mesh), local)


class BatchIterator:
    """Yields the global batches of steps start, start + 1, ... as sharded arrays, endlessly
    (the loop decides where to stop).

    Use it as a context manager (or call `close`) so worker processes and threads end.
    `state()` is JSON-serialisable; `BatchIterator(..., state=saved)` continues after the
    last batch handed out when `saved` was taken.
    """

    def __init__(
        self,
        source: data.ImageSource,
        data_config: ml_collections.ConfigDict,
        batch_size: int,
        seed: int,
        mesh: Mesh,
        *,
        start: int = 0,
        with_labels: bool = False,
        state: dict | None = None,
    ):
        make = _MakeBatch(source, data_config, batch_size, seed, jax.process_index(), jax.process_count(), with_labels)
        prefetch, num_workers = int(data_config.prefetch), int(data_config.num_workers)
        self._layout = {
            "num_workers": num_workers,
            "seed": seed,
            "batch_size": batch_size,
            "process_index": jax.process_index(),
            "process_count": jax.process_count(),
        }
        self._make, self._mesh, self.step = make, mesh, start
        self._base, self._it = start, None
        if prefetch == 0 and num_workers == 0:
            return  # each batch made in the loop when asked for
        if state is not None and not self._fits(state, start):
            log.info(
                "the data iterator saved at step %s was laid out otherwise (%s); it starts afresh at "
                "step %d, which reads the same batches",
                state.get("step"),
                state.get("layout"),
                start,
            )
            state = None
        base = start if state is None else state["base"]
        # Endless, so that training.num_steps may grow on resume.
        ds = grain.MapDataset.range(base, base + 2**40).map(make)
        threads = max(1, min(prefetch, MAX_THREADS))
        ids = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(prefetch, 1)))
        if num_workers:
            if not flags.FLAGS.is_parsed():  # grain's workers read absl flags (notebooks never parse them)
                flags.FLAGS.mark_as_parsed()
            ids = ids.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
        ids = ThreadPrefetchIterDataset(ids.map(functools.partial(_to_global, mesh)), prefetch_buffer_size=1)
        self._base, self._it = base, iter(ids)
        if state is not None:
            self._it.set_state(state["grain"])

    def _fits(self, state: dict, start: int) -> bool:
        return state.get("layout") == self._layout and state.get("step") == start and "grain" in state

    def state(self) -> dict:
        """Where the stream stands: the next step, the layout and grain's own state."""
        out: dict = {"step": self.step, "layout": self._layout}
        if self._it is not None:
            out.update(base=self._base, grain=self._it.get_state())
        return out

    def __iter__(self) -> Iterator:
        return self

    def __next__(self):
        batch = next(self._it) if self._it is not None else _to_global(self._mesh, self._make(self.step))
        self.step += 1
        return batch

    def close(self) -> None:
        if self._it is not None:
            self._it.close()
            self._it = None

    def __enter__(self) -> "BatchIterator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["BatchIterator"]
