"""Does a checkpoint stall training? The step time around a save, before and after the
checksum moved to the devices.

python benchmarks/checkpoint_save.py [--config configs/digits.py] [--steps 40] [--repeats 3]
                                     [--out benchmarks/results/checkpoint_save.json]

The compiled training step of the config runs --steps steps on one batch already on
the devices, with a checkpoint saved (odediff.checkpoint.Checkpointer, orbax's
asynchronous save) after the middle step, in two ways:
  - "host checksum" (odediff before): the whole state copied to the host and CRC-32
    checksummed before the save starts;
  - "device checksum" (now): `state_checksum` computed on the devices, 4 bytes to the host.
Reported: the median step time without a save, and the wall time of the step that
saves (the save call plus its step) as a multiple of it. The two ways alternate,
--repeats times, and the medians are compared.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, markdown_table, write_json  # noqa: E402

from odediff import checkpoint, data, parallel  # noqa: E402
from odediff.config import load_config_file  # noqa: E402
from odediff.models import build_denoiser  # noqa: E402
from odediff.schedule import make_schedule  # noqa: E402
from odediff.train_state import create_train_state, make_optimizer  # noqa: E402
from odediff.training import make_train_step  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def save_host_checksum(ckpt: checkpoint.Checkpointer, step: int, state, meta: dict) -> None:
    """The save as odediff did it before: host copy and CRC-32 first."""
    meta = {**meta, "state_crc32": checkpoint._crc32(checkpoint._host_leaves(state))}
    ckpt._manager.save(step, args=checkpoint.ocp.args.Composite(
        state=checkpoint.ocp.args.StandardSave(state), meta=checkpoint.ocp.args.JsonSave(meta)), force=True)


def timed_run(fn, state, batch, steps: int, save, workdir: Path) -> tuple[float, float]:
    """(median seconds of a step without a save, seconds of the step that saves)."""
    ckpt = checkpoint.Checkpointer(workdir, keep=2)
    times, save_time = [], 0.0
    for s in range(steps):
        t0 = time.perf_counter()
        state, metrics = fn(state, batch)
        if s == steps // 2:
            save(ckpt, s, state, {"step": s})
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
    rep = parallel.replicated(mesh)
    model, tx = build_denoiser(config.model), make_optimizer(config.training)
    schedule = make_schedule(config.diffusion.beta_schedule, config.diffusion.num_timesteps)
    init = jax.jit(lambda k: create_train_state(model, tx, config, k), out_shardings=rep)
    source = data.load_source(config.data, "train")
    batch = parallel.global_batch(data.get_batch(source, config.data, config.training.batch_size, 0, 0), mesh)
    fn = jax.jit(make_train_step(model, tx, schedule, config), out_shardings=(rep, rep))
    fn = fn.lower(init(jax.random.key(0)), batch).compile()
    num_params = sum(x.size for x in jax.tree.leaves(init(jax.random.key(0)).params))
    checkpoint.state_checksum(init(jax.random.key(0)))  # compiled once per process, outside the timing
    ways = {"host checksum (before)": save_host_checksum,
            "device checksum (now)": lambda ckpt, s, state, meta: ckpt.save(s, state, meta, force=True)}
    results: dict[str, dict[str, list[float]]] = {k: {"step": [], "save_step": []} for k in ways}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.repeats):
            for name, save in ways.items():
                step, saving = timed_run(fn, init(jax.random.key(0)), batch, a.steps, save, Path(tmp) / f"{r}_{len(name)}")
                results[name]["step"].append(step)
                results[name]["save_step"].append(saving)
                print(f"{name}: step {step * 1e3:.1f} ms, step with save {saving * 1e3:.1f} ms", flush=True)
    rows = []
    for name, v in results.items():
        step, saving = statistics.median(v["step"]), statistics.median(v["save_step"])
        rows.append([name, f"{step * 1e3:.1f}", f"{saving * 1e3:.1f}", f"{saving / step:.2f}"])
    print(f"\n{Path(a.config).name} ({num_params:,} params), median of {a.repeats} alternating repeats, {machine()}")
    print(markdown_table(["save", "step ms", "step with save ms", "ratio"], rows))
    write_json(a.out, {"config": Path(a.config).name, "params": int(num_params), "results": results})


if __name__ == "__main__":
    main()
