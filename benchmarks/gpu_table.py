"""Training and sampling throughput of the cU-Net against the DDPM U-Net at CelebA 64 on one accelerator.

python -m benchmarks.gpu_table [--out DIR] [--config configs/celeba64.py] [--time_limit SECONDS] [--dry_run]

For both denoisers, in this order (most important first; DIR/gpu_table.json and
DIR/gpu_table.md are rewritten after every row, so a run stopped by its time limit keeps
what it measured):
1. The training step (training.compute_dtype bfloat16, then float32) at the first of
   --batches (128): median ms per step over --steps steps, each waited for, after
   --warmup steps; images/s; the step's FLOPs (XLA's cost analysis of the step lowered for a
   CPU, 2 per multiply-add: benchmarks.paper_table.gflop); achieved TFLOP/s; MFU against the
   device's dense peak for the dtype (PEAK_TFLOPS); XLA's memory analysis of the compiled
   step (arguments + outputs + temporaries - aliased) and the device's peak bytes in use so
   far (a high-water mark of the whole process, where the device reports one). The step is
   the training loop's own (odediff.training.TrainingRun: donated state, the rate and the
   seed as arguments), on one batch already on the devices.
2. DDIM 50 (eta 0, float32, the library's sampler as training's sample grids use it) at
   each of --sample_batches (1, 256): images/s, median of a few runs after one that compiles.
3. The training loop (odediff.training.train_and_evaluate) on a folder: source of
   --loop_images JPEGs of 178x218 (CelebA's size; random smooth images generated first),
   decoded and resized by --loop_workers grain worker processes, at --loop_batch and
   --loop_dtype, --loop_steps steps after a first log interval that holds compilation:
   its own logged seconds per step over the same compiled step alone, timed in intervals of
   as many steps (`loop_over_step`; the input pipeline keeps up where it is near 1).
4. The training step at the other --batches (64).
5. XLA GPU options (--xla_flag_sets, ';'-separated, each a string of XLA_FLAGS): the first
   training row per model and DDIM 50 at batch 1, in a child process per option set (XLA
   reads its flags once per process), while --time_limit leaves time for one.
The cU-Net / U-Net ratios of images/s are written beside the rows.

--dry_run: the same code at a tiny size on any machine, one compilation of each kind per
model: 8x8 images, one level per denoiser (cU-Net nf 4 with Euler steps, U-Net ch 32), batch 4,
float32 only, a few steps, DDIM at batch 4 only, the training loop for the first model only on
24 small JPEGs read without worker processes, no option sets (unless given). Run as a program
it also compiles without XLA's CPU optimisation passes and initialises with the "rbg" PRNG, which
halves its compilation time.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
from PIL import Image

from benchmarks.common import machine, markdown_table, write_json
from benchmarks.paper_table import config_name, gflop, memory
from odediff import parallel
from odediff.config import load_config_file
from odediff.generation import make_sample_fn
from odediff.models import build_denoiser
from odediff.schedule import make_schedule
from odediff.train_state import init_params, make_optimizer
from odediff.training import TrainingRun, make_train_step, train_and_evaluate

REPO = Path(__file__).resolve().parents[1]
MODELS = ("cunet", "unet")
DTYPES = ("bfloat16", "float32")
SAMPLE_STEPS = 50
CELEBA_SIZE = (178, 218)  # width, height
# Dense (not sparse) peak TFLOP/s from NVIDIA's datasheets: H100 Tensor Core GPU (SXM, PCIe,
# NVL), H200 Tensor Core GPU (SXM, NVL), A100 Tensor Core GPU; their tensor-core figures
# marked "with sparsity" are twice these. XLA runs float32 convolutions and dots as TF32 on
# these GPUs at its default precision, so float32 compute is set against the TF32 peak
# ("float32_simt" is the CUDA-core float32 peak, for reference).
PEAK_TFLOPS = {
    "H100 SXM": {"bfloat16": 989.5, "float32": 494.5, "float32_simt": 67.0},
    "H100 PCIe": {"bfloat16": 756.5, "float32": 378.0, "float32_simt": 51.0},
    "H100 NVL": {"bfloat16": 835.5, "float32": 417.5, "float32_simt": 60.0},
    "H200 SXM": {"bfloat16": 989.5, "float32": 494.5, "float32_simt": 67.0},
    "H200 NVL": {"bfloat16": 835.5, "float32": 417.5, "float32_simt": 60.0},
    "A100": {"bfloat16": 312.0, "float32": 156.0, "float32_simt": 19.5},
}
# Options that may change how a launch-bound step runs: CUDA graphs (command buffers) off,
# no autotuning (compiles faster), and graphs made of any number of kernels.
DEFAULT_FLAG_SETS = "--xla_gpu_enable_command_buffer=;--xla_gpu_autotune_level=0;--xla_gpu_graph_min_graph_size=1"
FLAG_CHILD_OVERHEAD_S = 30.0  # a child process's start, imports and device set-up


def peak_name(device_kind: str) -> str | None:
    """The PEAK_TFLOPS entry of a device, by its name (jax's device_kind); None if unknown."""
    k = device_kind.upper()
    for name, gpu, variant in (
        ("H100 PCIe", "H100", "PCIE"),
        ("H100 NVL", "H100", "NVL"),
        ("H100 SXM", "H100", ""),
        ("H200 NVL", "H200", "NVL"),
        ("H200 SXM", "H200", ""),
        ("A100", "A100", ""),
    ):
        if gpu in k and variant in k:
            return name
    return None


def model_config(path: str, name: str, dry_run: bool) -> ml_collections.ConfigDict:
    """The config at `path` for denoiser `name`; with `dry_run` shrunk to a few seconds' work."""
    c = load_config_file(path)
    c.model.name = name
    if dry_run:
        c.data.image_size = 8
        c.model.cunet.update(nf=4, ch_mult=(1,), attn_resolutions=(), time_embed_dim=8, solver="euler")
        c.model.unet.update(ch=32, ch_mult=(1,), num_res_blocks=0, attn_resolutions=())
    return c


def ddim_config(base: ml_collections.ConfigDict, batch: int) -> ml_collections.ConfigDict:
    """`base` sampling DDIM 50 (eta 0, unguided) at `batch`: the timed sampler, and the training
    loop's last-step grid (the same compilation)."""
    c = base.copy_and_resolve_references()
    c.sampling.update(sampler="ddim", steps=SAMPLE_STEPS, eta=0.0, guidance=0.0, num_samples=batch)
    return c


def train_config(base: ml_collections.ConfigDict, dtype: str, batch: int) -> ml_collections.ConfigDict:
    """`base` training at `batch` with compute dtype `dtype`."""
    c = base.copy_and_resolve_references()
    c.training.batch_size, c.training.compute_dtype = batch, dtype
    return c


class Step:
    """The training loop's own compiled step (odediff.training.TrainingRun, in `workdir`), a
    fresh state and one batch of images on the devices."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: Path):
        self.config, self.mesh = config, parallel.make_mesh()
        shared: dict = {}
        self.run = TrainingRun(config, workdir, self.mesh, keep=1, shared=shared)
        self.run.close()  # no checkpoint is saved here
        self.state0 = self.run.state  # never donated: each timing steps on a copy
        s, b = config.data.image_size, config.training.batch_size
        images = np.random.default_rng(0).uniform(-1, 1, (b, s, s, config.data.channels)).astype(np.float32)
        self.images = parallel.global_batch(images, self.mesh)
        t0 = time.perf_counter()
        self.run.compile(self.images)
        self.compile_s = time.perf_counter() - t0
        compiled = getattr(next(iter(shared.values()), None), "compiled", None)
        m = None if compiled is None else compiled.memory_analysis()
        self.memory_bytes = None if m is None else memory(compiled)
        self.memory_analysis = (
            None
            if m is None
            else {k: int(getattr(m, f"{k}_size_in_bytes", 0)) for k in ("argument", "output", "temp", "alias")}
        )
        model, tx = build_denoiser(config.model), make_optimizer(config.training)
        schedule = make_schedule(config.diffusion.beta_schedule, config.diffusion.num_timesteps)
        # the same step with the rate and the seed as constants: the same FLOPs
        self.gflop = gflop(make_train_step(model, tx, schedule, config), self.state0, self.images)
        self.params = int(sum(v.size for v in jax.tree.leaves(self.state0.params)))

    def times(self, warmup: int, steps: int, chunk: int = 1) -> list[float]:
        """Seconds per step of `steps` steps from the initial state after `warmup`, waited for every
        `chunk` steps (1: each step timed alone; more: as the loop runs, between its logs)."""
        state = jax.tree.map(lambda v: jax.device_put(v.copy(), v.sharding), self.state0)
        for _ in range(warmup):
            state, metrics = self.run.step_fn(state, self.images)
        jax.block_until_ready(state)
        times = []
        for _ in range(max(1, steps // chunk)):
            t0 = time.perf_counter()
            for _ in range(chunk):
                state, metrics = self.run.step_fn(state, self.images)
            jax.block_until_ready(metrics["loss"])  # an execution's outputs are ready together
            times.append((time.perf_counter() - t0) / chunk)
        del state
        return times


def device_peak_bytes() -> int | None:
    """The device's peak bytes in use since the process started, where it reports them."""
    stats = jax.devices()[0].memory_stats() or {}
    return int(stats["peak_bytes_in_use"]) if "peak_bytes_in_use" in stats else None


def train_row(step: Step, dtype: str, batch: int, warmup: int, steps: int, peaks: dict | None) -> dict:
    """One training row: the median of `steps` steps, each waited for, and what follows from it."""
    times = step.times(warmup, steps)
    s = statistics.median(times)
    tflops = step.gflop / s / 1e3
    return {
        "dtype": dtype,
        "batch": batch,
        "ms_per_step": 1e3 * s,
        "images_per_s": batch / s,
        "tflops": tflops,
        "mfu": tflops / peaks[dtype] if peaks else None,
        "mfu_vs_float32_simt": tflops / peaks["float32_simt"] if peaks and dtype == "float32" else None,
        "memory_bytes": step.memory_bytes,
        "memory_analysis": step.memory_analysis,
        "device_peak_bytes_so_far": device_peak_bytes(),
        "gflop_per_step": step.gflop,
        "compile_s": step.compile_s,
        "steps_timed": len(times),
        "ms_per_step_min": 1e3 * min(times),
    }


def ddim_row(config: ml_collections.ConfigDict, params, batch: int, repeats: int) -> dict:
    """DDIM 50 at `batch`: the median of `repeats` runs after the one that compiles."""
    c = ddim_config(config, batch)
    model = build_denoiser(c.model)
    sample = make_sample_fn(model, make_schedule(c.diffusion.beta_schedule, c.diffusion.num_timesteps), c, batch)
    key = jax.random.key(0)
    t0 = time.perf_counter()
    jax.block_until_ready(sample(params, key))
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(sample(params, key))
        times.append(time.perf_counter() - t0)
    s = statistics.median(times)
    return {
        "batch": batch,
        "images_per_s": batch / s,
        "s_per_run": s,
        "steps": SAMPLE_STEPS,
        "dtype": "float32",
        "first_run_s": first,
        "repeats": repeats,
    }


def make_jpegs(directory: Path, num: int, size: tuple[int, int] = CELEBA_SIZE) -> Path:
    """`num` JPEGs of `size` (width, height): random colour fields, smooth as photos are."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(num):
        coarse = rng.integers(0, 256, (7, 6, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize(size, Image.BICUBIC).save(directory / f"{i:05d}.jpg", quality=90)
    return directory


def loop_row(step: Step, folder: Path, workdir: Path, a, grid: int) -> dict:
    """train_and_evaluate's logged seconds per step over the compiled step alone, both taken
    over intervals of the same number of steps (the loop's first interval, which compiles, dropped).
    The grid sampled at the last step (no part of the timing) is `grid` images of DDIM 50."""
    interval = max(1, a.loop_steps // 4)
    c = ddim_config(step.config, grid)
    c.data.update(source=f"folder:{folder}", num_workers=a.loop_workers)
    c.training.update(num_steps=a.loop_steps + interval, log_every=interval)
    c.training.sample_every = c.training.checkpoint_every = 10 * c.training.num_steps
    alone = statistics.median(step.times(3, a.loop_steps, chunk=interval))
    t0 = time.perf_counter()
    train_and_evaluate(c, workdir)
    wall = time.perf_counter() - t0
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line]
    if (
        not records or records[-1]["step"] < c.training.num_steps
    ):  # the loop took SIGTERM (a time limit) as its cue to stop
        raise SystemExit(f"gpu_table: the training loop was stopped at step {records[-1]['step'] if records else 0}")
    loop = statistics.median(1.0 / r["steps_per_sec"] for r in records[1:])
    return {
        "batch": c.training.batch_size,
        "dtype": c.training.compute_dtype,
        "workers": a.loop_workers,
        "prefetch": int(c.data.prefetch),
        "images": a.loop_images,
        "steps_timed": interval * (len(records) - 1),
        "interval": interval,
        "loop_ms_per_step": 1e3 * loop,
        "step_alone_ms_per_step": 1e3 * alone,
        "loop_over_step": loop / alone,
        "first_interval_s": interval / records[0]["steps_per_sec"],
        "wall_s": wall,
    }


def flag_set_run(flags: str, a, first: tuple[int, str, int], out: Path, time_left: float) -> dict:
    """The first training row per model and DDIM at the first sample batch, `first` = (batch,
    dtype, sample batch), in a child process run with `flags` added to XLA_FLAGS."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()}
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.gpu_table",
        "--out",
        str(out),
        "--config",
        str(Path(a.config).resolve()),
        "--models",
        a.models,
        "--parts",
        "train,ddim",
        "--batches",
        str(first[0]),
        "--dtypes",
        first[1],
        "--sample_batches",
        str(first[2]),
        "--steps",
        str(a.steps),
        "--warmup",
        str(a.warmup),
        "--xla_flag_sets",
        "",
        "--time_limit",
        str(int(time_left)),
    ] + ["--dry_run"] * a.dry_run
    rec: dict = {"xla_flags": flags}
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=time_left, check=False)
        rec["returncode"] = r.returncode
        if r.returncode:  # the end of its log, warnings left out
            rec["error"] = [
                line for line in r.stderr.splitlines() if line.strip() and not re.match(r"(WARNING|W\d{4} )", line)
            ][-3:]
    except subprocess.TimeoutExpired:
        rec["returncode"], rec["error"] = None, [f"stopped at the time limit ({time_left:.0f} s)"]
    rec["wall_s"] = time.perf_counter() - t0
    path = out / "gpu_table.json"
    if path.exists():  # rows the child wrote, also when it was stopped
        rec["models"] = {
            n: {k: m.get(k, []) for k in ("train", "ddim50")} for n, m in json.loads(path.read_text())["models"].items()
        }
    return rec


def ratios(models: dict) -> dict:
    """cU-Net / U-Net images/s for each training and DDIM row both models have."""
    if not all(n in models for n in MODELS):
        return {}
    out = {}
    for part, key in (("train", ("dtype", "batch")), ("ddim50", ("batch",))):
        un = {tuple(r[k] for k in key): r for r in models["unet"][part]}
        out[part] = [
            {
                **dict(zip(key, tuple(r[k] for k in key))),
                "cunet_over_unet_images_per_s": r["images_per_s"] / un[tuple(r[k] for k in key)]["images_per_s"],
            }
            for r in models["cunet"][part]
            if tuple(r[k] for k in key) in un
        ]
    return out


def fmt(v, spec: str) -> str:
    """`v` formatted, or "" for None."""
    return "" if v is None else format(v, spec)


def markdown(rec: dict) -> str:
    """The record as Markdown tables."""
    m = rec["models"]
    lines = [
        f"# Training and sampling at {rec['config']} ({rec['image_size']}x{rec['image_size']}), {rec['machine']}",
        "",
    ]
    rows = [
        [
            n,
            r["dtype"],
            r["batch"],
            fmt(r["ms_per_step"], ".2f"),
            fmt(r["images_per_s"], ".0f"),
            fmt(r["gflop_per_step"], ".0f"),
            fmt(r["tflops"], ".1f"),
            fmt(r["mfu"], ".3f"),
            fmt(r["memory_bytes"] and r["memory_bytes"] / 2**20, ".0f"),
        ]
        for n in m
        for r in m[n]["train"]
    ]
    lines += [
        f"Training step (peak for MFU: {rec['peak_name'] or 'unknown device'}; float32 against TF32)",
        "",
        markdown_table(
            ["model", "dtype", "batch", "ms/step", "images/s", "GFLOP/step", "TFLOP/s", "MFU", "memory MiB (XLA)"], rows
        ),
        "",
    ]
    rows = [
        [n, r["batch"], fmt(r["images_per_s"], ".1f"), fmt(r["s_per_run"], ".3f")] for n in m for r in m[n]["ddim50"]
    ]
    lines += ["DDIM 50 (float32)", "", markdown_table(["model", "batch", "images/s", "s per run"], rows), ""]
    r = rec.get("ratios", {})
    rows = [
        [f"train {x['dtype']} b{x['batch']}", fmt(x["cunet_over_unet_images_per_s"], ".3f")] for x in r.get("train", [])
    ]
    rows += [[f"DDIM 50 b{x['batch']}", fmt(x["cunet_over_unet_images_per_s"], ".3f")] for x in r.get("ddim50", [])]
    lines += ["cU-Net / U-Net images/s", "", markdown_table(["", "ratio"], rows), ""]
    rows = [
        [
            n,
            d["batch"],
            d["dtype"],
            d["workers"],
            fmt(d["loop_ms_per_step"], ".2f"),
            fmt(d["step_alone_ms_per_step"], ".2f"),
            fmt(d["loop_over_step"], ".3f"),
        ]
        for n in m
        for d in [m[n].get("loop")]
        if d and "error" not in d
    ]
    rows += [[n, "", "", "", m[n]["loop"]["error"], "", ""] for n in m if "error" in (m[n].get("loop") or {})]
    lines += [
        "Training loop on a folder of JPEGs against the step alone",
        "",
        markdown_table(["model", "batch", "dtype", "workers", "loop ms/step", "step ms/step", "loop / step"], rows),
        "",
    ]
    rows = []
    for f in rec.get("xla_flags", []):
        for n, mm in (f.get("models") or {}).items():
            for r in mm["train"]:
                rows.append(
                    [
                        f["xla_flags"],
                        n,
                        f"train {r['dtype']} b{r['batch']}",
                        fmt(r["ms_per_step"], ".2f"),
                        fmt(r["images_per_s"], ".0f"),
                        fmt(r["compile_s"], ".0f"),
                    ]
                )
            for r in mm["ddim50"]:
                rows.append([f["xla_flags"], n, f"DDIM 50 b{r['batch']}", "", fmt(r["images_per_s"], ".1f"), ""])
        if f.get("error") or f.get("skipped"):
            rows.append(
                [f["xla_flags"], "", " ".join(f.get("error") or []) or f"skipped: {f.get('skipped')}", "", "", ""]
            )
    lines += [
        "XLA options (each in its own process)",
        "",
        markdown_table(["XLA_FLAGS", "model", "row", "ms/step", "images/s", "compile s"], rows),
        "",
    ]
    return "\n".join(lines)


def parse_ints(text: str) -> list[int] | None:
    """Positive integers separated by commas; None if `text` is not that."""
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        return None
    return values if values and min(values) >= 1 else None


def main(argv: list[str] | None = None) -> dict:
    """Runs the table (see the module's docstring) and returns the record it wrote."""
    start = time.monotonic()
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_table", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "celeba64.py"))
    ap.add_argument("--out", default="benchmarks/results/gpu_table", help="directory for gpu_table.json and .md")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--parts", default="train,ddim,loop,flags")
    ap.add_argument("--batches", default="128,64", help="training batches; the first is measured first")
    ap.add_argument("--dtypes", default=",".join(DTYPES), help="training compute dtypes, in order")
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per row")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--sample_batches", default="1,256")
    ap.add_argument("--sample_repeats", type=int, default=3)
    ap.add_argument("--loop_steps", type=int, default=200)
    ap.add_argument("--loop_batch", type=int, default=128)
    ap.add_argument("--loop_dtype", default="bfloat16")
    ap.add_argument("--loop_images", type=int, default=3000)
    ap.add_argument("--loop_workers", type=int, default=min(12, max(1, len(os.sched_getaffinity(0)) - 4)))
    ap.add_argument(
        "--xla_flag_sets",
        default=DEFAULT_FLAG_SETS,
        help="';'-separated XLA_FLAGS strings; pass as --xla_flag_sets=...",
    )
    ap.add_argument("--time_limit", type=float, default=0.0, help="seconds; option sets that would not fit are skipped")
    ap.add_argument("--dry_run", action="store_true", help="a tiny size, for a test on a CPU")
    a = ap.parse_args(argv)
    models = a.models.split(",")
    parts = set(a.parts.split(","))
    dtypes = a.dtypes.split(",")
    for bad, known, flag in (
        (set(models) - set(MODELS), MODELS, "--models"),
        (parts - {"train", "ddim", "loop", "flags"}, ("train", "ddim", "loop", "flags"), "--parts"),
        (set(dtypes) - set(DTYPES), DTYPES, "--dtypes"),
        ({a.loop_dtype} - set(DTYPES), DTYPES, "--loop_dtype"),
    ):
        if bad:
            ap.error(f"{flag}: unknown {sorted(bad)}; choose from {', '.join(known)}")
    batches, sample_batches = parse_ints(a.batches), parse_ints(a.sample_batches)
    if batches is None or sample_batches is None:
        ap.error(
            f"--batches {a.batches!r} / --sample_batches {a.sample_batches!r}: positive integers separated by commas"
        )
    if a.steps < 1 or a.warmup < 0 or a.loop_steps < 1 or a.loop_images < 1 or a.loop_workers < 0:
        ap.error("--steps, --loop_steps and --loop_images must be positive, --warmup and --loop_workers not negative")
    if not Path(a.config).is_file():
        ap.error(f"--config {a.config} does not exist")
    if a.dry_run:  # defaults shrunk to one compilation of each kind per model
        a.steps, a.warmup, a.sample_repeats = min(a.steps, 3), min(a.warmup, 1), min(a.sample_repeats, 1)
        a.loop_steps, a.loop_images, a.loop_workers = min(a.loop_steps, 4), min(a.loop_images, 24), 0
        if a.batches == ap.get_default("batches"):
            batches = [4]
        if a.dtypes == ap.get_default("dtypes"):
            dtypes = ["float32"]
        if a.sample_batches == ap.get_default("sample_batches"):
            sample_batches = [4]
        if a.xla_flag_sets == DEFAULT_FLAG_SETS:
            a.xla_flag_sets = ""
        a.loop_batch, a.loop_dtype = batches[0], dtypes[0]
    if jax.config.jax_compilation_cache_dir is None:  # the loop's step and the option sets' children reuse compilations
        jax.config.update("jax_compilation_cache_dir", str(Path(tempfile.gettempdir()) / "odediff_gpu_table_cache"))
    deadline = start + a.time_limit if a.time_limit else float("inf")
    out = Path(a.out)
    kind = getattr(jax.devices()[0], "device_kind", "")
    name = peak_name(kind) if jax.devices()[0].platform == "gpu" else None
    peaks = PEAK_TFLOPS.get(name)
    configs = {n: model_config(a.config, n, a.dry_run) for n in models}
    first = configs[models[0]]
    rec = {
        "config": config_name(a.config),
        "image_size": first.data.image_size,
        "dry_run": a.dry_run,
        "devices": jax.device_count(),
        "device_kind": kind,
        "peak_name": name,
        "peak_tflops": peaks,
        "flop_convention": "XLA cost_analysis flops of the step lowered for a CPU (2 per multiply-add)",
        "models": {n: {"train": [], "ddim50": [], "loop_over_step": None, "loop": None} for n in models},
        "ratios": {},
        "xla_flags": [],
        "time_limit_s": a.time_limit,
    }

    def flush(note: str) -> None:
        rec["ratios"] = ratios(rec["models"])
        rec["elapsed_s"] = time.monotonic() - start
        write_json(out / "gpu_table.json", rec)
        (out / "gpu_table.md").write_text(markdown({**rec, "machine": machine()}) + "\n")
        print(f"[{rec['elapsed_s']:.0f} s] {note}", flush=True)

    with tempfile.TemporaryDirectory(prefix="gpu_table_") as tmp:  # run directories, JPEGs, option sets
        work = Path(tmp)
        steps: dict[tuple, Step] = {}
        spent: dict[str, float] = {}  # seconds the rows an option set repeats took here

        def train_rows(batch: int) -> None:
            for dtype in dtypes:
                for n in models:
                    t0 = time.monotonic()
                    steps[(n, dtype, batch)] = st = Step(
                        train_config(configs[n], dtype, batch), work / f"step_{n}_{dtype}_{batch}"
                    )
                    rec["models"][n]["params"] = st.params
                    row = train_row(st, dtype, batch, a.warmup, a.steps, peaks)
                    rec["models"][n]["train"].append(row)
                    if (batch, dtype) == (batches[0], dtypes[0]):
                        spent[f"train {n}"] = time.monotonic() - t0
                    flush(
                        f"{n} train {dtype} batch {batch}: {row['ms_per_step']:.2f} ms/step, "
                        f"{row['images_per_s']:.0f} images/s, {row['tflops']:.2f} TFLOP/s"
                    )

        if "train" in parts:
            train_rows(batches[0])
        if "ddim" in parts:
            rep = parallel.replicated(parallel.make_mesh())
            for batch in sample_batches:
                for n in models:
                    t0 = time.monotonic()
                    c = configs[n]
                    st = next((v for k, v in steps.items() if k[0] == n), None)
                    if st is not None:  # no second compilation of the initialisation
                        params = st.state0.params
                    else:
                        params = jax.jit(lambda k, c=c: init_params(build_denoiser(c.model), c, k), out_shardings=rep)(
                            jax.random.key(0)
                        )
                    row = ddim_row(c, params, batch, a.sample_repeats if batch > 1 else 2 * a.sample_repeats)
                    rec["models"][n]["ddim50"].append(row)
                    if batch == sample_batches[0]:
                        spent[f"ddim {n}"] = time.monotonic() - t0
                    flush(f"{n} DDIM 50 batch {batch}: {row['images_per_s']:.1f} images/s")
        if "loop" in parts and time.monotonic() < deadline:
            t0 = time.monotonic()
            folder = make_jpegs(work / "jpegs", a.loop_images, (44, 54) if a.dry_run else CELEBA_SIZE)
            print(f"{a.loop_images} JPEGs written in {time.monotonic() - t0:.1f} s", flush=True)
            for n in models[:1] if a.dry_run else models:
                try:
                    key = (n, a.loop_dtype, a.loop_batch)
                    st = steps.get(key) or Step(
                        train_config(configs[n], a.loop_dtype, a.loop_batch), work / f"step_{n}"
                    )
                    d = loop_row(st, folder, work / f"run_{n}", a, sample_batches[0])
                    rec["models"][n]["loop"], rec["models"][n]["loop_over_step"] = d, d["loop_over_step"]
                    flush(
                        f"{n} training loop: {d['loop_ms_per_step']:.2f} ms/step against "
                        f"{d['step_alone_ms_per_step']:.2f} for the step alone ({d['loop_over_step']:.3f})"
                    )
                except Exception as e:  # noqa: BLE001  (one failed part must not lose the rows still to come)
                    rec["models"][n]["loop"] = {"error": f"{type(e).__name__}: {e}".splitlines()[0]}
                    flush(f"{n} training loop failed: {rec['models'][n]['loop']['error']}")
        if "train" in parts:
            for batch in batches[1:]:
                train_rows(batch)
        if "flags" in parts:
            need = sum(spent.values()) + FLAG_CHILD_OVERHEAD_S
            for i, flags in enumerate(f.strip() for f in a.xla_flag_sets.split(";") if f.strip()):
                left = deadline - time.monotonic()
                if left < need:
                    rec["xla_flags"].append(
                        {"xla_flags": flags, "skipped": f"{left:.0f} s left, about {need:.0f} s needed"}
                    )
                    flush(f"XLA_FLAGS {flags}: skipped, {left:.0f} s left")
                    continue
                rec["xla_flags"].append(
                    flag_set_run(
                        flags, a, (batches[0], dtypes[0], sample_batches[0]), work / f"flags{i}", min(left, 1e6)
                    )
                )
                flush(f"XLA_FLAGS {flags}: done in {rec['xla_flags'][-1]['wall_s']:.0f} s")
    print(markdown({**rec, "machine": machine()}), flush=True)
    return rec


if __name__ == "__main__":
    if "--dry_run" in sys.argv[1:]:
        # A tiny run is nearly all compilation: XLA:CPU without its optimisation passes and fusion
        # emitters, and one RNG op per initialised array instead of Threefry's unrolled rounds,
        # compile it in about half the time.
        light = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
        light += " --xla_cpu_use_fusion_emitters=false"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {light}".strip()
        jax.config.update("jax_default_prng_impl", "rbg")
    main()
