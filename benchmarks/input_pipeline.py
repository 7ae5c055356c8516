"""Does the input pipeline keep up? The loader alone, and the training loop against its step.

python -m benchmarks.input_pipeline [--batches 30] [--loop_steps 300] [--repeats 3]
                                    [--out benchmarks/results/input_pipeline.json]

1. The loader alone (odediff.input_pipeline.BatchIterator, batch 64, image_size 64, RGB):
   images/s with 0 worker processes (threads of this process), 1 and 2, on
   - a folder of 2,000 JPEGs of 178x218 (CelebA's size; generated once into a temporary
     directory), decoded, center-cropped and resized when read;
   - the TFDS CelebA code path with tfds.testing.mock_data (random 218x178 images).
   After a warm-up of a few batches (worker start-up excluded).
2. The training loop at configs/digits.py: train_and_evaluate's own steps/s (its
   metrics log, sampling and checkpoints pushed past the end, the first log interval,
   which holds compilation, dropped) with the default prefetch and with batches made
   in the loop (data.prefetch=0), against the same compiled step alone on a batch
   already on the devices. The variants alternate, --repeats times, and the medians
   are compared, so that load from other processes falls on all of them alike.
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from PIL import Image

from benchmarks.common import machine, markdown_table, write_json
from odediff import data, parallel
from odediff.config import load_config_file
from odediff.input_pipeline import BatchIterator
from odediff.training import TrainingRun, train_and_evaluate

REPO = Path(__file__).resolve().parents[1]
BATCH, SIZE, WARMUP = 64, 64, 3


def make_jpeg_folder(directory: Path, num: int = 2000) -> Path:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)
    for i in range(num):
        shift = rng.integers(0, 40, size=3, dtype=np.uint8)
        Image.fromarray(base + shift).save(directory / f"{i:05d}.jpg", quality=90)
    return directory


def loader_rate(source, data_config, workers: int, batches: int) -> float:
    c = data_config.copy_and_resolve_references()
    c.num_workers = workers
    mesh = parallel.make_mesh()
    with BatchIterator(source, c, BATCH, 0, mesh) as it:
        for _ in range(WARMUP):
            jax.block_until_ready(next(it))
        t0 = time.perf_counter()
        for _ in range(batches):
            jax.block_until_ready(next(it))
        return batches * BATCH / (time.perf_counter() - t0)


def loader_table(a) -> list[dict]:
    import tensorflow_datasets as tfds

    base = load_config_file(REPO / "configs" / "digits.py").data
    base.image_size, base.channels, base.holdout_fraction = SIZE, 3, 0.0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = base.copy_and_resolve_references()
        folder.source = f"folder:{make_jpeg_folder(Path(tmp))}"
        sources = {"folder of 2,000 JPEGs 178x218": (folder, data.load_source(folder, "train"))}
        for name, (c, source) in sources.items():
            for workers in (0, 1, 2):
                rate = loader_rate(source, c, workers, a.batches)
                rows.append({"source": name, "workers": workers, "images_per_s": rate})
                print(f"{name}, {workers} workers: {rate:.0f} images/s", flush=True)
    with tfds.testing.mock_data(num_examples=2000):
        c = base.copy_and_resolve_references()
        c.source = "tfds:celeb_a"
        source = data.load_source(c, "train")
        for workers in (0, 1, 2):
            rate = loader_rate(source, c, workers, a.batches)
            rows.append({"source": "tfds celeb_a (mock_data)", "workers": workers, "images_per_s": rate})
            print(f"tfds celeb_a (mock), {workers} workers: {rate:.0f} images/s", flush=True)
    return rows


def step_alone(config, steps: int, workdir: Path) -> float:
    """Seconds per step of the training loop's compiled step on one batch already on the devices."""
    mesh = parallel.make_mesh()
    run = TrainingRun(config, workdir, mesh)
    source = data.load_source(config.data, "train")
    batch = parallel.global_batch(data.get_batch(source, config.data, config.training.batch_size, 0, 0), mesh)
    seconds = run.seconds_per_step(batch, steps, warmup=5)
    run.close()
    return seconds


def loop_step(config, steps: int, prefetch: int, workdir: Path) -> float:
    """Seconds per step of train_and_evaluate, from its own log (first interval dropped)."""
    c = config.copy_and_resolve_references()
    c.data.prefetch = prefetch
    c.training.num_steps, c.training.log_every = steps + steps // 3, steps // 3
    c.training.sample_every = c.training.checkpoint_every = 10 * c.training.num_steps
    train_and_evaluate(c, workdir)
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line]
    return 1.0 / statistics.median(r["steps_per_sec"] for r in records[1:-1])


def loop_table(a) -> dict:
    config = load_config_file(REPO / "configs" / "digits.py")
    times: dict[str, list[float]] = {"step alone": [], "loop, prefetch 2 (default)": [], "loop, prefetch 0": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.repeats):
            times["step alone"].append(step_alone(config, a.loop_steps, Path(tmp) / f"alone_{r}"))
            times["loop, prefetch 2 (default)"].append(loop_step(config, a.loop_steps, 2, Path(tmp) / f"p2_{r}"))
            times["loop, prefetch 0"].append(loop_step(config, a.loop_steps, 0, Path(tmp) / f"p0_{r}"))
            print({k: f"{v[-1] * 1e3:.1f} ms" for k, v in times.items()}, flush=True)
    return {k: {"seconds": v, "median": statistics.median(v)} for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=30, help="timed batches per loader setting")
    ap.add_argument("--loop_steps", type=int, default=300, help="timed steps per loop measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip_loader", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/input_pipeline.json")
    a = ap.parse_args()
    parallel.use_cpu_cores(BATCH)
    jax.config.update("jax_compilation_cache_dir", str(Path(tempfile.gettempdir()) / "odediff_jax_cache"))
    result = {"batch": BATCH}
    if not a.skip_loader:
        result["loader"] = loader_table(a)
        print(f"\nloader alone, batch {BATCH} at {SIZE}x{SIZE} RGB, {machine()}")
        print(
            markdown_table(
                ["source", "workers", "images/s"],
                [[r["source"], r["workers"], f"{r['images_per_s']:.0f}"] for r in result["loader"]],
            )
        )
    result["loop"] = loop = loop_table(a)
    alone = loop["step alone"]["median"]
    print(f"\nconfigs/digits.py training step, median of {a.repeats} alternating repeats of {a.loop_steps} steps")
    print(
        markdown_table(
            ["", "ms per step", "/ step alone"],
            [[k, f"{v['median'] * 1e3:.1f}", f"{v['median'] / alone:.3f}"] for k, v in loop.items()],
        )
    )
    write_json(a.out, result)


if __name__ == "__main__":
    main()
