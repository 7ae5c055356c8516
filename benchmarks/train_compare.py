"""The continuous U-Net against the DDPM U-Net on MNIST, several seeds, scored beside the real-data floor.

python -m benchmarks.train_compare [--data DIR] [--preset cpu|gpu] [--steps 6000] [--decay_steps 1500]
                                   [--seeds 0,1] [--models unet,cunet_rk4,cunet_heun]
                                   [--runs_dir runs/mnist_compare] [--out benchmarks/results/mnist_compare]

Data: MNIST IDX files (--data), split into train and held-out by data.holdout_fraction.
1. Learning rate: every model runs the sweep --lrs (seed 0, --sweep_steps steps) and keeps
   the rate of the lowest mean loss over the sweep's last quarter; a wider --lrs extends a
   finished sweep. The rate is constant, or with --decay_steps falls linearly to zero over
   the last that many steps before --steps.
2. Training: every model and seed advances in turns of --eval_every steps; after each turn
   a run is checkpointed in <runs_dir>/<model>_lr<lr>_s<seed> (also every --save_every
   steps, so that a stopped run resumes near where it stopped) and scored on
   --num_eval_samples DDIM samples against the held-out split (evaluation.evaluate_samples
   in the features of a classifier trained on the train split). Each model's step time is
   measured with the models alternating in one process (once, or again with --retime).
3. The real-data floor: as many train images as samples against the held-out ones, three
   draws, taken at every start; a record scored with another floor is not continued.

Everything accumulates in <out>/train_compare.json: the same command continues where it
stopped, a larger --steps or more --seeds extends the experiment. After every turn the
report (benchmarks.compare_report) is rewritten, with <out>/samples_<model>.{png,npz}
(every sample of the latest scoring of the model's lowest seed). --report_only rewrites
the report from the JSON alone. Presets: `cpu` (16 px, batch 64, narrow models) and `gpu`
(configs/mnist.py as it is).
"""

import argparse
import json
import sys
import time
from pathlib import Path
from typing import NoReturn

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from benchmarks.common import machine, write_json
from benchmarks.compare_report import MODELS, SCORES, write_report
from odediff import data as data_lib
from odediff import images, parallel
from odediff.checkpoint import checkpoint_dir
from odediff.config import load_config_file
from odediff.data import ImageSource
from odediff.evaluation import Embedded, FeatureSpace, all_images, embed, evaluate_samples, feature_space
from odediff.generation import make_sample_fn
from odediff.training import ConfigMismatch, TrainingRun

REPO = Path(__file__).resolve().parents[1]
PRESETS = {
    "cpu": dict(
        image_size=16,
        batch=64,
        cunet_nf=8,
        cunet_ch_mult="2,4,8",
        cunet_attn="4",
        unet_ch=32,
        unet_ch_mult="1,2,2,2",
        unet_attn="8",
        unet_norm_groups=0,
    ),
    "gpu": dict(
        image_size=32,
        batch=128,
        cunet_nf=16,
        cunet_ch_mult="2,4,8",
        cunet_attn="8",
        unet_ch=64,
        unet_ch_mult="1,2,2",
        unet_attn="16",
        unet_norm_groups=0,
    ),
}
# Settings that define the experiment: a results JSON only continues with the same ones.
PROTOCOL = (
    "preset",
    "image_size",
    "batch",
    "lrs",
    "sweep_steps",
    "eval_every",
    "num_eval_samples",
    "eval_steps",
    "ema",
    "cunet_nf",
    "cunet_ch_mult",
    "cunet_attn",
    "unet_ch",
    "unet_ch_mult",
    "unet_attn",
    "unet_norm_groups",
    "time_budget",
    "decay_steps",
    "decay_start",
)
# Settings added since some records began, at the value those records ran with.
OLD_PROTOCOL_VALUES = {"unet_norm_groups": 32}
SAMPLE_SEED = 1234


def fail(message: str) -> NoReturn:
    print(f"train_compare.py: {message}", file=sys.stderr)
    sys.exit(2)


def ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v)


def extends_grid(old: str, new: str) -> bool:
    """Whether the learning-rate grid `new` holds every rate of `old`."""
    return {float(v) for v in old.split(",")} <= {float(v) for v in new.split(",")}


def protocol_change(record: dict, protocol: dict) -> str:
    """What continuing `record` with `protocol` changes: "" for nothing, a note for a wider
    learning-rate grid; ValueError for any other difference."""
    old = {**OLD_PROTOCOL_VALUES, **record["protocol"]}
    diff = [k for k in PROTOCOL if old.get(k) != protocol[k]]
    if not diff:
        return ""
    if diff == ["lrs"] and extends_grid(old["lrs"], protocol["lrs"]):
        return f"extending the learning-rate sweep from {old['lrs']} to {protocol['lrs']}"
    raise ValueError(
        f"holds an experiment with other settings ({', '.join(diff)}): pass the same ones to "
        f"continue it (a wider --lrs may extend the sweep), or another --out"
    )


def other_feature_space(record: dict, floor: dict) -> str:
    """Why `record`'s scores cannot stand beside new ones ("" if they can): its real-data
    floor, on the same images, differs from `floor`, so another classifier gave its features."""
    old = record.get("floor")
    if not old or old["num"] != floor["num"] or np.allclose(old["fd"], floor["fd"], rtol=1e-3, atol=0):
        return ""
    return (
        f"was scored in other features: its real-data floor FD is {np.mean(old['fd']):.4f}, here "
        f"{np.mean(floor['fd']):.4f} (same images, another feature classifier): pass another --out"
    )


def make_config(a: argparse.Namespace, model: str, lr: float, seed: int) -> ml_collections.ConfigDict:
    """The run config of one model, rate and seed under the command's settings."""
    name, solver = MODELS[model]
    c = load_config_file(REPO / "configs" / "mnist.py")
    c.data.source = f"idx:{Path(a.data).resolve()}"
    c.data.image_size = a.image_size
    c.seed = seed
    c.model.name = name
    if solver:
        c.model.cunet.solver, c.model.cunet.ode_steps = solver, 1
    c.model.cunet.nf, c.model.cunet.ch_mult, c.model.cunet.attn_resolutions = (
        a.cunet_nf,
        ints(a.cunet_ch_mult),
        ints(a.cunet_attn),
    )
    c.model.unet.ch, c.model.unet.ch_mult, c.model.unet.attn_resolutions = (
        a.unet_ch,
        ints(a.unet_ch_mult),
        ints(a.unet_attn),
    )
    c.model.unet.norm_groups = a.unet_norm_groups
    c.training.batch_size = a.batch
    c.training.learning_rate = lr
    c.training.lr_schedule = "wsd" if a.decay_steps else "constant"
    c.training.decay_steps = a.decay_steps
    c.training.warmup_steps = 100
    c.training.ema_decay = a.ema
    c.training.num_steps = a.steps
    c.sampling.sampler, c.sampling.steps = "ddim", a.eval_steps
    return c


class Run:
    """One (model, learning rate, seed): a TrainingRun in <runs_dir>/<name> with its losses,
    training seconds and its entry in the record's runs (scores in "evals").

    `cache` is shared by all runs of an invocation: the runs of a model share one compiled
    step and sampler."""

    def __init__(
        self, a: argparse.Namespace, model: str, lr: float, seed: int, record: dict, mesh: Mesh | None, cache: dict
    ):
        self.name = f"{model}_lr{lr:g}_s{seed}"
        self.save_every = a.save_every
        self.model_name, self.lr, self.seed = model, lr, seed
        self.rec = record.setdefault(self.name, {"model": model, "lr": lr, "seed": seed, "evals": []})
        self.samplers = cache.setdefault("samplers", {})
        directory = Path(a.runs_dir) / self.name
        if self.rec["evals"] and not any(p.name.isdigit() for p in checkpoint_dir(directory).glob("*")):
            fail(
                f"{directory} holds no checkpoint, but the results record holds scores of {self.name} up to step "
                f"{max(e['step'] for e in self.rec['evals']):,}: pass the --runs_dir that holds its checkpoints, "
                f"or leave seed {seed} out of --seeds (its scores are kept)"
            )
        try:
            self.run = TrainingRun(
                make_config(a, model, lr, seed), directory, mesh, keep=2, shared=cache.setdefault("training", {})
            )
        except ConfigMismatch as e:
            fail(f"{directory} holds a run with another config ({', '.join(e.differences)}): pass another --runs_dir")
        self.train_seconds = float(self.run.meta.get("train_seconds", 0.0))
        self.losses = list(self.run.meta.get("losses", []))[: self.step]
        self.rec["losses"] = self.losses
        self.rec["evals"] = [e for e in self.rec["evals"] if e["step"] <= self.step]
        self.rec["params"] = int(sum(x.size for x in jax.tree.leaves(self.run.state.params)))

    @property
    def step(self) -> int:
        return self.run.step

    def batch(self, source: ImageSource, step: int) -> jax.Array:
        """The run's batch of step `step`, on the devices."""
        c = self.run.config
        return parallel.global_batch(
            data_lib.get_batch(source, c.data, c.training.batch_size, c.seed, step), self.run.mesh
        )

    def train_to(self, target: int, source: ImageSource) -> None:
        """Trains to step `target` (compilation and saves not timed), checkpointing at every
        multiple of --save_every on the way and at `target`."""
        if self.step >= target:
            return
        self.run.compile(self.batch(source, self.step))
        while self.step < target:
            stop = min(target, (self.step // self.save_every + 1) * self.save_every) if self.save_every else target
            t0, losses = time.perf_counter(), []
            while self.step < stop:
                losses.append(self.run.train_step(self.batch(source, self.step))["loss"])
            jax.block_until_ready(self.run.state)
            self.train_seconds += time.perf_counter() - t0
            self.losses += [float(v) for v in jax.device_get(losses)]
            if not np.isfinite(self.losses[-len(losses) :]).all():
                print(f"{self.name}: non-finite losses before step {stop}", flush=True)
            self.run.save({"train_seconds": self.train_seconds, "losses": self.losses})

    def samples(self, num: int) -> np.ndarray:
        """`num` uint8 samples of the EMA params, always from the same key."""
        r, key = self.run, jax.random.key(SAMPLE_SEED)
        if (self.model_name, num) not in self.samplers:
            fn = make_sample_fn(r.model, r.schedule, r.config, num, mesh=r.mesh)
            self.samplers[self.model_name, num] = fn.lower(r.state.ema_params, key).compile()
        images_, _ = self.samplers[self.model_name, num](r.state.ema_params, key)
        return data_lib.to_uint8(parallel.to_host(images_))

    def close(self) -> None:
        self.run.close()


def score(samples: np.ndarray, real: Embedded, space: FeatureSpace) -> dict:
    ev = evaluate_samples(samples, real, space, kid_subsets=20, kid_subset_size=min(len(samples), 500))
    return {k: ev[k] for k in SCORES}


def real_floor(train_source: ImageSource, real: Embedded, space: FeatureSpace, num: int, draws: int = 3) -> dict:
    """The scores of `num` train images against the held-out ones, per draw."""
    rows = [score(all_images(train_source, num, seed=100 + d)[0], real, space) for d in range(draws)]
    return {"num": num, "draws": rows, **{k: [r[k] for r in rows] for k in SCORES}}


def main_runs(record: dict, names: list[str], chosen: dict) -> list[str]:
    """The main runs after this invocation: its own (`names`) and those of earlier ones at a
    model's chosen rate, so a seed added on its own joins the seeds already scored."""
    earlier = [
        n
        for n in record.get("main_runs", [])
        if record["runs"][n]["model"] in chosen and record["runs"][n]["lr"] == chosen[record["runs"][n]["model"]]
    ]
    return sorted(set(earlier) | set(names))


def time_models(runs: dict[str, Run], source: ImageSource, steps: int, repeats: int) -> dict:
    """Each model's step time, the models alternating `repeats` times in this one process."""
    times: dict[str, list[float]] = {m: [] for m in runs}
    for _ in range(repeats):
        for m, r in runs.items():
            times[m].append(r.run.seconds_per_step(r.batch(source, 0), steps))
    return {m: {"median": float(np.median(v)), "all": v} for m, v in times.items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="train_compare.py", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data",
        default=str(REPO.parent / "shared" / "data" / "mnist"),
        help="directory with MNIST IDX files (*images-idx3-ubyte[.gz] and labels)",
    )
    ap.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    for k, v in PRESETS["cpu"].items():
        ap.add_argument(f"--{k}", type=type(v), default=None, help=f"preset cpu: {v}")
    ap.add_argument("--steps", type=int, default=6000, help="train every run to this step (more continues)")
    ap.add_argument(
        "--decay_steps",
        type=int,
        default=0,
        help="the rate falls linearly to zero over the last this many steps before --steps (warmup-"
        "stable-decay, the same for every model); --steps is then fixed",
    )
    ap.add_argument(
        "--time_budget",
        type=float,
        default=0.0,
        help="also stop a run once its training seconds reach this (equal wall clock); 0: no limit",
    )
    ap.add_argument(
        "--lrs", default="5e-4,1e-3,2e-3,4e-3,8e-3", help="the learning-rate sweep grid, the same for every model"
    )
    ap.add_argument("--sweep_steps", type=int, default=300)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--eval_every", type=int, default=500)
    ap.add_argument(
        "--save_every",
        type=int,
        default=500,
        help="also checkpoint every this many steps, to resume from (0: only at the scorings)",
    )
    ap.add_argument("--num_eval_samples", type=int, default=1000)
    ap.add_argument("--eval_steps", type=int, default=25, help="DDIM steps (eta 0) of the scored samples")
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--classifier_steps", type=int, default=1000)
    ap.add_argument("--runs_dir", default="runs/mnist_compare")
    ap.add_argument("--cache_dir", default=str(Path("~/.cache/odediff").expanduser()))
    ap.add_argument("--out", default="benchmarks/results/mnist_compare")
    ap.add_argument("--timed_steps", type=int, default=10, help="steps per timing of each model's step")
    ap.add_argument("--timing_repeats", type=int, default=3)
    ap.add_argument("--retime", action="store_true", help="measure the models' step times again")
    ap.add_argument("--report_only", action="store_true", help="rewrite the report from the JSON, train nothing")
    a = ap.parse_args(argv)
    for k, v in PRESETS[a.preset].items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    bad = [m for m in a.models.split(",") if m not in MODELS]
    if bad:
        ap.error(f"unknown --models {bad}: choose from {list(MODELS)}")
    if a.save_every < 0:
        ap.error(f"--save_every {a.save_every} is negative: pass a number of steps, or 0 to save only at scorings")
    if a.num_eval_samples % 2 or a.num_eval_samples < 10:
        ap.error("--num_eval_samples must be even and at least 10")
    if a.decay_steps and not 100 <= a.steps - a.decay_steps:
        ap.error(f"--decay_steps {a.decay_steps} leaves no constant phase before --steps {a.steps}")
    a.decay_start = a.steps - a.decay_steps if a.decay_steps else None
    return a


def main() -> None:
    a = parse_args()
    parallel.use_cpu_cores(a.batch)
    out = Path(a.out)
    path = out / "train_compare.json"
    record = json.loads(path.read_text()) if path.exists() else {}
    protocol = {k: getattr(a, k) for k in PROTOCOL}
    if record:
        try:
            note = protocol_change(record, protocol)
        except ValueError as e:
            fail(f"{path} {e}")
        if note:
            print(note, flush=True)
    if a.report_only:
        write_report(record, out)
        return
    if not any(Path(a.data).glob("*images-idx3-ubyte*")):
        fail(f"no MNIST IDX files in {a.data} (pass --data <dir>)")
    jax.config.update("jax_compilation_cache_dir", str(Path(a.runs_dir).absolute() / ".jax_cache"))
    record.update(protocol=protocol, machine=machine())
    record.setdefault("runs", {})
    models, seeds, lrs = a.models.split(","), ints(a.seeds), [float(v) for v in a.lrs.split(",")]
    mesh = parallel.make_mesh()

    data_config = make_config(a, models[0], lrs[0], 0).data
    source = data_lib.load_source(data_config, "train")
    space = feature_space(data_config, a.cache_dir, classifier_steps=a.classifier_steps)
    real = embed(all_images(data_lib.load_source(data_config, "test"))[0], space)  # once, for every scoring
    record["feature_space"] = {k: v for k, v in space.info.items() if k != "classifier_cache"}
    floor = real_floor(source, real, space, a.num_eval_samples)
    if other := other_feature_space(record, floor):
        fail(f"{path} {other}")
    record["floor"] = floor
    print(
        f"{len(source)} train / {len(real)} held-out images; classifier test accuracy "
        f"{space.info['classifier_test_accuracy']:.4f}; real-data FD floor "
        f"{np.mean(record['floor']['fd']):.2f} +- {np.std(record['floor']['fd']):.2f}",
        flush=True,
    )

    def save():
        write_json(path, record)

    record.setdefault("sweep", {})
    chosen, cache = {}, {}
    for m in models:
        sweep = record["sweep"].setdefault(m, {})
        for lr in lrs:
            if f"{lr:g}" in sweep:
                continue
            r = Run(a, m, lr, seeds[0], record["runs"], mesh, cache)
            r.train_to(a.sweep_steps, source)
            tail = r.losses[a.sweep_steps - a.sweep_steps // 4 : a.sweep_steps]
            sweep[f"{lr:g}"] = float(np.mean(tail))
            r.close()
            print(
                f"sweep {m} lr {lr:g}: mean loss over steps {a.sweep_steps - len(tail) + 1}-{a.sweep_steps} "
                f"{sweep[f'{lr:g}']:.4f} ({r.train_seconds:.0f} s)",
                flush=True,
            )
            save()
        chosen[m] = float(min(sweep, key=lambda k: sweep[k] if np.isfinite(sweep[k]) else np.inf))
    record["lr"] = chosen

    runs = [Run(a, m, chosen[m], s, record["runs"], mesh, cache) for s in seeds for m in models]
    record["main_runs"] = main_runs(record, [r.name for r in runs], chosen)
    files_seed = {
        m: min(record["runs"][n]["seed"] for n in record["main_runs"] if record["runs"][n]["model"] == m)
        for m in models
    }
    if a.retime or set(record.get("step_seconds", {})) != set(models):
        record["step_seconds"] = time_models(
            {m: next(r for r in runs if r.model_name == m) for m in models}, source, a.timed_steps, a.timing_repeats
        )
        print(
            "step seconds, side by side:",
            {m: f"{v['median']:.3f}" for m, v in record["step_seconds"].items()},
            flush=True,
        )
        save()
    for target in range(a.eval_every, a.steps + 1, a.eval_every):
        if a.time_budget and all(r.train_seconds >= a.time_budget and r.step < target for r in runs):
            break
        for r in runs:
            if a.time_budget and r.train_seconds >= a.time_budget and r.step < target:
                continue
            if r.step > target or any(e["step"] == target for e in r.rec["evals"]):
                continue
            r.train_to(target, source)
            t0 = time.perf_counter()
            samples = r.samples(a.num_eval_samples)
            ev = {
                "step": target,
                "train_seconds": r.train_seconds,
                **score(samples, real, space),
                "loss": float(np.mean(r.losses[-a.eval_every :])),
                "eval_seconds": time.perf_counter() - t0,
            }
            r.rec["evals"].append(ev)
            r.rec["losses"] = r.losses
            if r.seed == files_seed[r.model_name]:
                out.mkdir(parents=True, exist_ok=True)
                np.savez_compressed(out / f"samples_{r.model_name}.npz", images=samples)
                images.save_grid(samples[:100], out / f"samples_{r.model_name}.png", scale=2)
                r.rec["samples_step"] = target
            print(
                f"{r.name} step {target}: loss {ev['loss']:.4f} FD {ev['fd']:.2f} prec {ev['precision']:.2f} "
                f"rec {ev['recall']:.2f} confident {ev['confident_fraction']:.2f} "
                f"({r.train_seconds:.0f} s training, {ev['eval_seconds']:.0f} s scoring)",
                flush=True,
            )
            save()
        write_report(record, out)
    for r in runs:
        r.close()
    write_report(record, out)


if __name__ == "__main__":
    main()
