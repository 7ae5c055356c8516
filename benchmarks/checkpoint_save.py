"""Does a checkpoint stall training? The step time around a save, with the state's checksum
taken on the host or on the devices.

python -m benchmarks.checkpoint_save [--config configs/digits.py] [--steps 40] [--repeats 3]
                                     [--out benchmarks/results/checkpoint_save.json]

The config's compiled training step runs --steps steps on one batch on the devices, with a
checkpoint saved after the middle step in two ways: "host checksum", the whole state copied
to the host and CRC-32 checksummed before orbax's asynchronous save starts; "device
checksum", odediff.checkpoint.Checkpointer, whose checksum is computed on the devices.
Reported: the median step time without a save, and the wall time of the step that saves as
a multiple of it; the two ways alternate --repeats times and the medians are compared.
"""

import argparse
import statistics
import tempfile
import time
import zlib
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from benchmarks.common import machine, markdown_table, write_json
from odediff import checkpoint, data, parallel
from odediff.config import load_config_file
from odediff.training import TrainingRun

REPO = Path(__file__).resolve().parents[1]


class HostChecksumSaver:
    """orbax's asynchronous save of the state and a record, the state copied to the host and
    CRC-32 checksummed first."""

    def __init__(self, workdir: Path, keep: int = 2):
        handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
        self._manager = ocp.CheckpointManager(
            checkpoint.checkpoint_dir(workdir),
            item_handlers=handlers,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def save(self, step: int, state, meta: dict, *, force: bool = False) -> None:
        crc = 0
        for leaf in jax.tree.leaves(state):
            crc = zlib.crc32(np.ascontiguousarray(parallel.to_host(leaf)).reshape(-1).view(np.uint8), crc)
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave({**meta, "state_crc32": crc})
        )
        self._manager.save(step, args=args, force=force)

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


WAYS = {
    "host checksum (before)": HostChecksumSaver,
    "device checksum (now)": lambda workdir: checkpoint.Checkpointer(workdir, keep=2),
}


def timed_run(fn, state, batch, steps: int, saver, workdir: Path) -> tuple[float, float]:
    """(median seconds of a step without a save, seconds of the step that saves), saving with `saver(workdir)`."""
    ckpt = saver(workdir)
    times, save_time = [], 0.0
    for s in range(steps):
        t0 = time.perf_counter()
        state, metrics = fn(state, batch)
        if s == steps // 2:
            ckpt.save(s, state, {"step": s}, force=True)
        float(metrics["loss"])  # the loop reads the loss back every step, as a log would
        dt = time.perf_counter() - t0
        if s == steps // 2:
            save_time = dt
        else:
            times.append(dt)
    ckpt.close()
    return statistics.median(times[3:]), save_time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "digits.py"))
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/checkpoint_save.json")
    a = ap.parse_args()
    config = load_config_file(a.config)
    parallel.use_cpu_cores(config.training.batch_size)
    mesh = parallel.make_mesh()
    source = data.load_source(config.data, "train")
    batch = parallel.global_batch(data.get_batch(source, config.data, config.training.batch_size, 0, 0), mesh)
    results: dict[str, dict[str, list[float]]] = {k: {"step": [], "save_step": []} for k in WAYS}
    with tempfile.TemporaryDirectory() as tmp:
        run = TrainingRun(config, Path(tmp) / "run", mesh)  # the training loop's step
        run.compile(batch)
        fresh = lambda: jax.tree.map(lambda x: x.copy(), run.state)
        num_params = sum(x.size for x in jax.tree.leaves(run.state.params))
        for i, saver in enumerate(WAYS.values()):  # a first save compiles the checksums, outside the timing
            ckpt = saver(Path(tmp) / f"warmup_{i}")
            ckpt.save(0, fresh(), {"step": 0}, force=True)
            ckpt.close()
        for r in range(a.repeats):
            for name, saver in WAYS.items():
                step, saving = timed_run(run.step_fn, fresh(), batch, a.steps, saver, Path(tmp) / f"{r}_{len(name)}")
                results[name]["step"].append(step)
                results[name]["save_step"].append(saving)
                print(f"{name}: step {step * 1e3:.1f} ms, step with save {saving * 1e3:.1f} ms", flush=True)
        run.close()
    rows = []
    for name, v in results.items():
        step, saving = statistics.median(v["step"]), statistics.median(v["save_step"])
        rows.append([name, f"{step * 1e3:.1f}", f"{saving * 1e3:.1f}", f"{saving / step:.2f}"])
    print(f"\n{Path(a.config).name} ({num_params:,} params), median of {a.repeats} alternating repeats, {machine()}")
    print(markdown_table(["save", "step ms", "step with save ms", "ratio"], rows))
    write_json(a.out, {"config": Path(a.config).name, "params": int(num_params), "results": results})


if __name__ == "__main__":
    main()
