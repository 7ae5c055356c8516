"""The paper's central claim on real digits: the continuous U-Net against the DDPM U-Net,
trained until both draw digits, several seeds, scored beside the real-data floor. Resumable.

python benchmarks/train_compare.py [--data DIR] [--preset cpu|gpu] [--steps 6000] [--decay_steps 1500] [--seeds 0,1]
                                   [--runs_dir runs/mnist_compare] [--out benchmarks/results/mnist_compare]

Data: MNIST IDX files (--data; the 10k-image test set is enough), split into train and
held-out by data.holdout_fraction (0.1: 9,000 / 1,000). Models: the DDPM U-Net
(`unet`) and the cU-Net with every ODE block time-conditioned, at RK4 x1
(`cunet_rk4`) and at Heun x1 (`cunet_heun`).

1. Learning rate: every model runs the same sweep (--lrs, seed 0, --sweep_steps
   steps on the same batches); each keeps the rate with the lowest mean training
   loss over the sweep's last quarter. The seed-0 run at that rate continues as the
   model's first seed. A wider --lrs extends a finished sweep (only the new rates
   run); a model whose choice moves starts its main runs at the new rate. The rate
   stays constant, or with --decay_steps D falls linearly to zero over the last D
   steps before --steps (warmup-stable-decay, training.lr_schedule=wsd). A run at a
   constant rate is the same run as one with a decay until the decay starts, so a
   decay may be added to an experiment whose runs have not passed its start.
2. Training: every model and seed advances in turns of --eval_every steps, so an
   interrupted experiment leaves all models at a like stage. After each turn a run
   is checkpointed (orbax, a run directory that sample.py, evaluate.py, nfe_sweep.py
   and denoise.py read) and scored on --num_eval_samples DDIM samples (fixed seed,
   EMA params) against the held-out split: FD in the features of a classifier
   trained on the train split, precision/recall, KID on standardised features, the
   share of samples the classifier labels with p >= 0.9 and the entropy of their
   class histogram. The step loop's wall-clock seconds are kept with every score, but
   other load on the machine inflates them unevenly across runs; FD against time, the
   seconds a cU-Net needs to reach the U-Net's FD and the U-Net's FD after as many
   seconds as a cU-Net trained (interpolated between its scorings) therefore use steps x
   each model's step time, measured with the models alternating in one process (once
   per experiment, or again with --retime).
   Every run of a model (sweep rates, seeds) shares one compiled step, which takes the
   rate and the seed as arguments: the same numbers as a step compiled per run.
3. The real-data floor: the same metrics for as many train images as samples,
   against the same held-out images, over three draws. It is taken again at every
   start: a record whose floor differs (another machine or library version trained
   another feature classifier) is not continued, its scores and new ones being in
   different features.

Everything accumulates in <out>/train_compare.json; rerunning the same command
continues where it stopped (checkpoints and scores already there are kept); a larger
--steps or more --seeds extends the experiment. A seed may also be added on its own
(--seeds 1 after --seeds 0, say on another machine with the same JSON): the models' other
seeds keep their scores, and the sample files stay those of each model's lowest seed. A run
the JSON has scores of but --runs_dir has no checkpoint of stops the command (exit 2)
rather than starting that run over. After every turn the report is
rewritten: <out>/train_compare.png (FD against steps and against training seconds,
mean and range over seeds, the floor as a band), <out>/samples_<model>.png (a grid)
and <out>/samples_<model>.npz (`images`: uint8 NHWC, every sample of the latest
scoring of the model's lowest seed's run, unfiltered).

Presets: `cpu` (default; for 2 CPU cores, where one turn of 500 steps for the six
runs of two seeds takes about 30 minutes and the sweep about 40): MNIST at
16x16, batch 64, cU-Net nf 8 (ch_mult 2,4,8, attention at 4 px; 0.66 M parameters),
U-Net ch 32 (ch_mult 1,2,2,2, attention at 8 px; 2.24 M, 3.4x). `gpu`:
configs/mnist.py as it is (32x32, batch 128, cU-Net nf 16, U-Net ch 64), with
--time_budget giving every run the same training seconds.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, markdown_table, write_json  # noqa: E402

from odediff import data as data_lib  # noqa: E402
from odediff import images, parallel  # noqa: E402
from odediff.checkpoint import Checkpointer  # noqa: E402
from odediff.config import config_differences, config_to_json, load_config_file  # noqa: E402
from odediff.evaluation import Embedded, _all_images, embed, evaluate_samples, feature_space  # noqa: E402
from odediff.models import build_denoiser  # noqa: E402
from odediff.schedule import make_schedule  # noqa: E402
from odediff.generation import make_sample_fn  # noqa: E402
from odediff.train_state import abstract_train_state, create_train_state, make_optimizer  # noqa: E402
from odediff.training import checkpoint_meta, make_train_step  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODELS = {"unet": ("unet", None), "cunet_rk4": ("cunet", "rk4"), "cunet_heun": ("cunet", "heun")}
PRESETS = {
    "cpu": dict(image_size=16, batch=64, cunet_nf=8, cunet_ch_mult="2,4,8", cunet_attn="4",
                unet_ch=32, unet_ch_mult="1,2,2,2", unet_attn="8"),
    "gpu": dict(image_size=32, batch=128, cunet_nf=16, cunet_ch_mult="2,4,8", cunet_attn="8",
                unet_ch=64, unet_ch_mult="1,2,2", unet_attn="16"),
}
# Settings that define the experiment: a results JSON only continues with the same ones.
PROTOCOL = ("preset", "image_size", "batch", "lrs", "sweep_steps", "eval_every", "num_eval_samples", "eval_steps",
            "ema", "cunet_nf", "cunet_ch_mult", "cunet_attn", "unet_ch", "unet_ch_mult", "unet_attn", "time_budget",
            "decay_steps", "decay_start")
# Set once the rate decays: a constant-rate run is a wsd run until the decay starts, so the
# decay may be added (once) while no run has passed its start. Their values before they existed:
DECAY_KEYS = {"decay_steps": 0, "decay_start": None}
SAMPLE_SEED = 1234


def ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v)


def extends_grid(old: str, new: str) -> bool:
    """Whether the learning-rate grid `new` holds every rate of `old` (a sweep may grow)."""
    return {float(v) for v in old.split(",")} <= {float(v) for v in new.split(",")}


def protocol_change(record: dict, protocol: dict) -> str:
    """What continuing `record` with `protocol` changes ("" for nothing): a wider learning-rate
    grid, or a decay added before any main run has passed its start. ValueError otherwise."""
    old = {**DECAY_KEYS, **record["protocol"]}
    diff = [k for k in PROTOCOL if old.get(k) != protocol[k]]
    if not diff:
        return ""
    if diff == ["lrs"] and extends_grid(old["lrs"], protocol["lrs"]):
        return f"extending the learning-rate sweep from {old['lrs']} to {protocol['lrs']}"
    if set(diff) == set(DECAY_KEYS) and old["decay_steps"] == 0 and protocol["decay_start"] is not None:
        start = protocol["decay_start"]
        passed = [n for n in record.get("main_runs", [])
                  if max((e["step"] for e in record["runs"][n]["evals"]), default=0) > start]
        if not passed:
            return f"adding a linear decay of the rate over steps {start:,}-{start + protocol['decay_steps']:,}"
        raise ValueError(f"holds runs trained at a constant rate past step {start:,} ({', '.join(passed)}), where "
                         f"the decay would start: pass a larger --steps, or another --out")
    raise ValueError(f"holds an experiment with other settings ({', '.join(diff)}): pass the same ones to "
                     f"continue it (a wider --lrs may extend the sweep, a decay may be added before it starts), "
                     f"or another --out")


def other_feature_space(record: dict, floor: dict) -> str:
    """Why `record`'s scores cannot stand beside new ones ("" if they can): its real-data
    floor, the same images, differs from `floor`, so its features came from another
    classifier (another machine or library version may train another one)."""
    old = record.get("floor")
    if not old or old["num"] != floor["num"] or np.allclose(old["fd"], floor["fd"], rtol=1e-3, atol=0):
        return ""
    return (f"was scored in other features: its real-data floor FD is {np.mean(old['fd']):.4f}, here "
            f"{np.mean(floor['fd']):.4f} (same images, another feature classifier): pass another --out")


def make_config(a, model: str, lr: float, seed: int):
    name, solver = MODELS[model]
    c = load_config_file(REPO / "configs" / "mnist.py")
    c.data.source = f"idx:{Path(a.data).resolve()}"
    c.data.image_size = a.image_size
    c.seed = seed
    c.model.name = name
    if solver:
        c.model.cunet.solver, c.model.cunet.ode_steps = solver, 1
    c.model.cunet.nf, c.model.cunet.ch_mult, c.model.cunet.attn_resolutions = a.cunet_nf, ints(a.cunet_ch_mult), ints(a.cunet_attn)
    c.model.unet.ch, c.model.unet.ch_mult, c.model.unet.attn_resolutions = a.unet_ch, ints(a.unet_ch_mult), ints(a.unet_attn)
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
    """One (model, learning rate, seed): its train state, compiled step, losses and scores,
    kept in <runs_dir>/<name> and in the results record."""

    def __init__(self, a, model: str, lr: float, seed: int, record: dict, mesh, compiled: dict):
        self.name = f"{model}_lr{lr:g}_s{seed}"
        self.model_name, self.lr, self.seed = model, lr, seed
        self.config = make_config(a, model, lr, seed)
        self.dir = Path(a.runs_dir) / self.name
        self.rec = record.setdefault(self.name, {"model": model, "lr": lr, "seed": seed, "evals": []})
        self.mesh, self.rep = mesh, parallel.replicated(mesh)
        # The rate and the seed are arguments of the compiled step, so every run of a model
        # (sweep, seeds) shares one compiled step, init and sampler.
        self.compiled = compiled.setdefault(model, {})
        self.hyper = jax.device_put((np.float32(lr), np.int32(seed)), self.rep)
        self.model = build_denoiser(self.config.model)
        self.tx = make_optimizer(self.config.training)
        self.schedule = make_schedule(self.config.diffusion.beta_schedule, self.config.diffusion.num_timesteps)
        self.dir.mkdir(parents=True, exist_ok=True)
        saved = self.dir / "config.json"
        diffs = config_differences(json.loads(saved.read_text()), self.config) if saved.exists() else []
        # a constant-rate run is the same run with a decay added, up to the decay's start
        decay_added = set(diffs) == {"training.decay_steps", "training.lr_schedule"} and a.decay_start is not None
        if diffs and not decay_added:
            print(f"train_compare.py: {self.dir} holds a run with another config ({', '.join(diffs)}): "
                  f"pass another --runs_dir", file=sys.stderr)
            sys.exit(2)
        self.ckpt = Checkpointer(self.dir, keep=2)
        restored = self.ckpt.restore_latest(abstract_train_state(self.model, self.tx, self.config, self.rep))
        if decay_added and restored is not None and restored[0] > a.decay_start:
            print(f"train_compare.py: {self.dir} trained at a constant rate to step {restored[0]:,}, past the decay's "
                  f"start ({a.decay_start:,}): pass a larger --steps or another --runs_dir", file=sys.stderr)
            sys.exit(2)
        if restored is None and self.rec["evals"]:
            print(f"train_compare.py: {self.dir} holds no checkpoint, but the results record holds scores of "
                  f"{self.name} up to step {max(e['step'] for e in self.rec['evals']):,}: pass the --runs_dir "
                  f"that holds its checkpoints, or leave seed {seed} out of --seeds (its scores are kept)",
                  file=sys.stderr)
            sys.exit(2)
        saved.write_text(config_to_json(self.config))
        if restored is None:
            if "init" not in self.compiled:
                model_, tx, config = self.model, self.tx, self.config
                self.compiled["init"] = jax.jit(lambda k: create_train_state(model_, tx, config, k),
                                                out_shardings=self.rep)
            self.state, self.step, meta = self.compiled["init"](jax.random.split(jax.random.key(seed))[0]), 0, {}
        else:
            self.step, self.state, meta = restored
        self.train_seconds = float(meta.get("train_seconds", 0.0))
        self.losses = list(meta.get("losses", []))[: self.step]
        self.rec["losses"] = self.losses
        self.rec["evals"] = [e for e in self.rec["evals"] if e["step"] <= self.step]
        self.rec["params"] = int(sum(x.size for x in jax.tree.leaves(self.state.params)))
        self._step_fn = None

    def train_to(self, target: int, source) -> None:
        if self.step >= target:
            return
        c = self.config
        self._compile(source)
        t0, losses = time.perf_counter(), []
        for s in range(self.step, target):
            self.state, m = self._step_fn(self.state, self._batch(source, s))
            losses.append(m["loss"])
        jax.block_until_ready(self.state)
        self.train_seconds += time.perf_counter() - t0
        self.losses += [float(v) for v in jax.device_get(losses)]
        if not np.isfinite(self.losses[-len(losses):]).all():
            print(f"{self.name}: non-finite losses before step {target}", flush=True)
        self.step = target
        meta = {**checkpoint_meta(c, target), "train_seconds": self.train_seconds, "losses": self.losses}
        self.ckpt.save(target, self.state, meta, force=True)

    def _batch(self, source, step: int):
        c = self.config
        return parallel.global_batch(data_lib.get_batch(source, c.data, c.training.batch_size, c.seed, step), self.mesh)

    def _compile(self, source) -> None:
        if "step" not in self.compiled:
            model, schedule, c = self.model, self.schedule, self.config

            def step(state, batch, lr, seed):
                return make_train_step(model, make_optimizer(c.training, lr), schedule, c, seed)(state, batch)

            fn = jax.jit(step, out_shardings=(self.rep, self.rep), donate_argnums=0)
            self.compiled["step"] = fn.lower(self.state, self._batch(source, 0), *self.hyper).compile()
        if self._step_fn is None:
            step, hyper = self.compiled["step"], self.hyper
            self._step_fn = parallel.one_step_at_a_time(lambda state, batch: step(state, batch, *hyper), self.mesh)

    def time_steps(self, source, steps: int) -> float:
        """Seconds per step of the compiled step on a copy of the state (the run is not
        advanced), one batch already on the devices."""
        self._compile(source)
        batch = self._batch(source, 0)
        state = jax.tree.map(lambda x: x.copy(), self.state)
        state, _ = self._step_fn(state, batch)
        jax.block_until_ready(state)
        t0 = time.perf_counter()
        for _ in range(steps):
            state, _ = self._step_fn(state, batch)
        jax.block_until_ready(state)
        return (time.perf_counter() - t0) / steps

    def samples(self, num: int) -> np.ndarray:
        if ("sample", num) not in self.compiled:
            fn = make_sample_fn(self.model, self.schedule, self.config, num, mesh=self.mesh)
            self.compiled["sample", num] = fn.lower(self.state.ema_params, jax.random.key(SAMPLE_SEED)).compile()
        images_, _ = self.compiled["sample", num](self.state.ema_params, jax.random.key(SAMPLE_SEED))
        return data_lib.to_uint8(parallel.to_host(images_))

    def close(self) -> None:
        self.ckpt.close()


SCORES = ("fd", "precision", "recall", "kid_mean", "kid_std", "confident_fraction", "confident_entropy",
          "class_histogram_tv")


def score(samples: np.ndarray, real: Embedded, space) -> dict:
    ev = evaluate_samples(samples, real, space, kid_subsets=20, kid_subset_size=min(len(samples), 500))
    return {k: ev[k] for k in SCORES}


def real_floor(train_source, real: Embedded, space, num: int, draws: int = 3) -> dict:
    """The metrics of `num` train images against the held-out ones, per draw."""
    rows = [score(_all_images(train_source, num, seed=100 + d)[0], real, space) for d in range(draws)]
    return {"num": num, "draws": rows, **{k: [r[k] for r in rows] for k in SCORES}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "mnist"),
                    help="directory with MNIST IDX files (*images-idx3-ubyte[.gz] and labels)")
    ap.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    for k, v in PRESETS["cpu"].items():
        ap.add_argument(f"--{k}", type=type(v), default=None, help=f"preset cpu: {v}")
    ap.add_argument("--steps", type=int, default=6000, help="train every run to this step (more continues)")
    ap.add_argument("--decay_steps", type=int, default=0,
                    help="the rate falls linearly to zero over the last this many steps before --steps (warmup-"
                         "stable-decay, the same for every model); --steps is then fixed")
    ap.add_argument("--time_budget", type=float, default=0.0,
                    help="also stop a run once its training seconds reach this (equal wall clock); 0: no limit")
    ap.add_argument("--lrs", default="5e-4,1e-3,2e-3,4e-3,8e-3", help="the learning-rate sweep grid, the same for every model")
    ap.add_argument("--sweep_steps", type=int, default=300)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--eval_every", type=int, default=500)
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
    a = ap.parse_args()
    for k, v in PRESETS[a.preset].items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    parallel.use_cpu_cores(a.batch)
    bad = [m for m in a.models.split(",") if m not in MODELS]
    if bad:
        ap.error(f"unknown --models {bad}: choose from {list(MODELS)}")
    if a.num_eval_samples % 2 or a.num_eval_samples < 10:
        ap.error("--num_eval_samples must be even and at least 10")
    out = Path(a.out)
    path = out / "train_compare.json"
    record = json.loads(path.read_text()) if path.exists() else {}
    if a.decay_steps and not 100 <= a.steps - a.decay_steps:
        ap.error(f"--decay_steps {a.decay_steps} leaves no constant phase before --steps {a.steps}")
    a.decay_start = a.steps - a.decay_steps if a.decay_steps else None
    protocol = {k: getattr(a, k) for k in PROTOCOL}
    if record:
        try:
            note = protocol_change(record, protocol)
        except ValueError as e:
            print(f"train_compare.py: {path} {e}", file=sys.stderr)
            sys.exit(2)
        if note:
            print(note, flush=True)
    if a.report_only:
        report(record, out)
        return
    if not any(Path(a.data).glob("*images-idx3-ubyte*")):
        print(f"train_compare.py: no MNIST IDX files in {a.data} (pass --data <dir>)", file=sys.stderr)
        sys.exit(2)
    jax.config.update("jax_compilation_cache_dir", str(Path(a.runs_dir).absolute() / ".jax_cache"))
    record.update(protocol=protocol, machine=machine())
    record.setdefault("runs", {})
    models, seeds, lrs = a.models.split(","), ints(a.seeds), [float(v) for v in a.lrs.split(",")]
    mesh = parallel.make_mesh()

    data_config = make_config(a, models[0], lrs[0], 0).data
    source = data_lib.load_source(data_config, "train")
    space = feature_space(data_config, a.cache_dir, classifier_steps=a.classifier_steps)
    real = embed(_all_images(data_lib.load_source(data_config, "test"))[0], space)  # once, for every scoring
    record["feature_space"] = {k: v for k, v in space.info.items() if k != "classifier_cache"}
    floor = real_floor(source, real, space, a.num_eval_samples)
    if other := other_feature_space(record, floor):
        print(f"train_compare.py: {path} {other}", file=sys.stderr)
        sys.exit(2)
    record["floor"] = floor
    print(f"{len(source)} train / {len(real)} held-out images; classifier test accuracy "
          f"{space.info['classifier_test_accuracy']:.4f}; real-data FD floor "
          f"{np.mean(record['floor']['fd']):.2f} +- {np.std(record['floor']['fd']):.2f}", flush=True)

    def save():
        write_json(path, record)

    record.setdefault("sweep", {})
    chosen, compiled = {}, {}
    for m in models:
        sweep = record["sweep"].setdefault(m, {})
        for lr in lrs:
            if f"{lr:g}" in sweep:
                continue
            r = Run(a, m, lr, seeds[0], record["runs"], mesh, compiled)
            r.train_to(a.sweep_steps, source)
            tail = r.losses[a.sweep_steps - a.sweep_steps // 4: a.sweep_steps]
            sweep[f"{lr:g}"] = float(np.mean(tail))
            r.close()
            print(f"sweep {m} lr {lr:g}: mean loss over steps {a.sweep_steps - len(tail) + 1}-{a.sweep_steps} "
                  f"{sweep[f'{lr:g}']:.4f} ({r.train_seconds:.0f} s)", flush=True)
            save()
        chosen[m] = float(min(sweep, key=lambda k: sweep[k] if np.isfinite(sweep[k]) else np.inf))
    record["lr"] = chosen

    runs = [Run(a, m, chosen[m], s, record["runs"], mesh, compiled) for s in seeds for m in models]
    record["main_runs"] = main_runs(record, [r.name for r in runs], chosen)
    files_seed = {m: min(record["runs"][n]["seed"] for n in record["main_runs"] if record["runs"][n]["model"] == m)
                 for m in models}
    if a.retime or set(record.get("step_seconds", {})) != set(models):
        record["step_seconds"] = time_models({m: next(r for r in runs if r.model_name == m) for m in models},
                                             source, a.timed_steps, a.timing_repeats)
        print("step seconds, side by side:", {m: f"{v['median']:.3f}" for m, v in record["step_seconds"].items()},
              flush=True)
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
            ev = {"step": target, "train_seconds": r.train_seconds, **score(samples, real, space),
                  "loss": float(np.mean(r.losses[-a.eval_every:])), "eval_seconds": time.perf_counter() - t0}
            r.rec["evals"].append(ev)
            r.rec["losses"] = r.losses
            if r.seed == files_seed[r.model_name]:
                out.mkdir(parents=True, exist_ok=True)
                np.savez_compressed(out / f"samples_{r.model_name}.npz", images=samples)
                images.save_grid(samples[:100], out / f"samples_{r.model_name}.png", scale=2)
                r.rec["samples_step"] = target
            print(f"{r.name} step {target}: loss {ev['loss']:.4f} FD {ev['fd']:.2f} prec {ev['precision']:.2f} "
                  f"rec {ev['recall']:.2f} confident {ev['confident_fraction']:.2f} "
                  f"({r.train_seconds:.0f} s training, {ev['eval_seconds']:.0f} s scoring)", flush=True)
            save()
        report(record, out)
    for r in runs:
        r.close()
    report(record, out)


def main_runs(record: dict, names: list[str], chosen: dict) -> list[str]:
    """The main runs after this invocation: its own (`names`) and those of earlier ones at a
    model's chosen rate, so a seed added on its own joins the seeds already scored."""
    earlier = [n for n in record.get("main_runs", [])
               if record["runs"][n]["model"] in chosen and record["runs"][n]["lr"] == chosen[record["runs"][n]["model"]]]
    return sorted(set(earlier) | set(names))


def time_models(runs: dict, source, steps: int, repeats: int) -> dict:
    """Each model's step time, the models alternating `repeats` times in this one process,
    so that other load on the machine falls on all of them alike."""
    times: dict[str, list[float]] = {m: [] for m in runs}
    for _ in range(repeats):
        for m, r in runs.items():
            times[m].append(r.time_steps(source, steps))
    return {m: {"median": float(np.median(v)), "all": v} for m, v in times.items()}


def final_scores(record: dict) -> tuple[int, dict]:
    """The last step every main run was scored at, and each model's scores there per seed.
    Under a time budget, each run's last scoring instead (its budget's end: equal seconds,
    different steps), and step 0."""
    main = [record["runs"][n] for n in record.get("main_runs", []) if record["runs"][n]["evals"]]
    if not main:
        return 0, {}
    budget = record["protocol"].get("time_budget")
    step = 0 if budget else min(max(e["step"] for e in r["evals"]) for r in main)
    per_model = {}
    for r in main:
        if budget:
            ev = max(r["evals"], key=lambda e: e["step"])
        else:
            ev = next((e for e in r["evals"] if e["step"] == step), None)
        if ev is not None:
            per_model.setdefault(r["model"], []).append({"seed": r["seed"], **ev})
    return step, per_model


def fd_at_seconds(evals: list[dict], step_seconds: float, seconds: float) -> float | None:
    """A run's FD after `seconds` of training (steps x step time), interpolated in log FD
    between its scorings; None outside the scored range (no extrapolation)."""
    evals = sorted(evals, key=lambda e: e["step"])
    x = np.array([e["step"] * step_seconds for e in evals])
    if not len(x) or not x[0] <= seconds <= x[-1]:
        return None
    return float(np.exp(np.interp(seconds, x, np.log([e["fd"] for e in evals]))))


def fd_by_step(record: dict) -> str:
    """Markdown: every main run's FD at each scored step, then each cU-Net's mean FD over
    the U-Net's mean at the steps where all of them were scored."""
    runs = sorted((record["runs"][n] for n in record["main_runs"]), key=lambda r: (list(MODELS).index(r["model"]), r["seed"]))
    steps = sorted({e["step"] for r in runs for e in r["evals"]})
    rows = [[r["model"], f"{r['lr']:g}", r["seed"]] + [next((f"{e['fd']:.1f}" for e in r["evals"] if e["step"] == t), "")
                                                       for t in steps] for r in runs]
    mean = {}
    for t in steps:
        for m in {r["model"] for r in runs}:
            fd = [e["fd"] for r in runs if r["model"] == m for e in r["evals"] if e["step"] == t]
            if len(fd) == sum(r["model"] == m for r in runs):
                mean[m, t] = float(np.mean(fd))
    for m in dict.fromkeys(r["model"] for r in runs):
        if m != "unet":
            rows.append([f"{m} / unet (mean FD)", "", ""] + [f"{mean[m, t] / mean['unet', t]:.2f}" if (m, t) in mean and
                                                              ("unet", t) in mean else "" for t in steps])
    return markdown_table(["run", "lr", "seed"] + [f"step {t:,}" for t in steps], rows)


def equal_seconds_text(s: dict, step: int) -> str:
    """The U-Net's FD after as many seconds as this model trained, with this model's own FD
    when that is taken at an earlier step than the table's (the decay's start)."""
    if not s.get("unet_fd_at_equal_seconds_mean"):
        return ""
    text = f"{s['unet_fd_at_equal_seconds_mean']:.2f}"
    if s["equal_seconds_step"] != step:
        text += f" (vs {s['fd_at_equal_seconds_step_mean']:.2f} at step {s['equal_seconds_step']:,})"
    return text


def report(record: dict, out: Path) -> None:
    """The summary table (printed, stored in the JSON and, with every run's FD per step, in
    <out>/train_compare.md) and the plot."""
    if not record.get("main_runs"):
        return
    step, per_model = final_scores(record)
    floor = record["floor"]
    step_seconds = {m: v["median"] for m, v in record.get("step_seconds", {}).items()}
    summary = {"step": step, "floor_fd_mean": float(np.mean(floor["fd"])), "floor_fd_std": float(np.std(floor["fd"])),
               "models": {}}
    for m, rows in per_model.items():
        s = {"seeds": [r["seed"] for r in rows], "lr": record["lr"][m],
             "params": record["runs"][next(n for n in record["main_runs"] if record["runs"][n]["model"] == m)]["params"],
             "train_seconds_mean": float(np.mean([r["train_seconds"] for r in rows])),
             "step_seconds": step_seconds.get(m)}
        for k in SCORES:
            v = [r[k] for r in rows]
            s[k + "_mean"], s[k + "_std"], s[k] = float(np.mean(v)), float(np.std(v)), v
        s["fd_over_floor"] = s["fd_mean"] / summary["floor_fd_mean"]
        summary["models"][m] = s
    u = summary["models"].get("unet")
    for m, s in summary["models"].items():
        if u is None or m == "unet":
            continue
        # a ratio only where both have several seeds and their ranges do not overlap
        lo, hi = min(s["fd"]), max(s["fd"])
        separated = min(len(s["fd"]), len(u["fd"])) >= 2 and (hi < min(u["fd"]) or lo > max(u["fd"]))
        s["fd_ratio_to_unet"] = s["fd_mean"] / u["fd_mean"] if separated else None
        reach = []
        for n in record["main_runs"]:
            r = record["runs"][n]
            if r["model"] == m:
                hit = next((e for e in sorted(r["evals"], key=lambda e: e["step"]) if e["fd"] <= u["fd_mean"]), None)
                reach.append(None if hit is None else (hit["step"], hit["step"] * step_seconds.get(m, np.nan)))
        s["reach_unet_final_fd"] = reach
        if not step:
            continue  # a time budget: the final scores are at equal seconds already
        # the other way round: where the U-Net's runs stood after this model's training seconds.
        # Once the rate decays, that U-Net would be at a constant rate still, so this is taken
        # at the decay's start: a decayed model against an undecayed one would flatter the first.
        decay_start = record["protocol"].get("decay_start")
        eq_step = min(step, decay_start) if decay_start else step
        seconds = eq_step * step_seconds.get(m, np.nan)
        at = [fd_at_seconds(record["runs"][n]["evals"], step_seconds.get("unet", np.nan), seconds)
              for n in record["main_runs"] if record["runs"][n]["model"] == "unet"]
        own = [e["fd"] for n in record["main_runs"] if record["runs"][n]["model"] == m
               for e in record["runs"][n]["evals"] if e["step"] == eq_step]
        s["equal_seconds_step"] = eq_step
        s["fd_at_equal_seconds_step_mean"] = float(np.mean(own)) if own else None
        s["train_seconds_steps"] = seconds
        s["unet_fd_at_equal_seconds"] = at
        s["unet_fd_at_equal_seconds_mean"] = float(np.mean(at)) if at and None not in at else None
    record["summary"] = summary
    write_json(out / "train_compare.json", record)  # the machine it ran on, also when only reported here

    rows = [["real data (train vs held-out)", "", "", f"{summary['floor_fd_mean']:.2f} ± {summary['floor_fd_std']:.2f}",
             "1.0", f"{np.mean(floor['precision']):.3f} / {np.mean(floor['recall']):.3f}",
             f"{np.mean(floor['confident_fraction']):.3f} / {np.mean(floor['confident_entropy']):.2f}", "", "", ""]]
    for m, s in summary["models"].items():
        rows.append([m, f"{s['params']:,}", f"{s['lr']:g}", f"{s['fd_mean']:.2f} ± {s['fd_std']:.2f}",
                     f"{s['fd_over_floor']:.1f}", f"{s['precision_mean']:.3f} / {s['recall_mean']:.3f}",
                     f"{s['confident_fraction_mean']:.3f} / {s['confident_entropy_mean']:.2f}",
                     f"{s['step_seconds'] * 1e3:.0f}" if s["step_seconds"] else "",
                     f"{s['train_seconds_mean']:.0f}",
                     equal_seconds_text(s, step)])
    seeds = len(next(iter(per_model.values()), []))
    if step:
        title = f"step {step}, {seeds} seeds"
    else:
        reached = "; ".join(m + " " + "/".join(f"{r['step']:,}" for r in seed_rows) for m, seed_rows in per_model.items())
        title = (f"each run's first scoring after {record['protocol']['time_budget']:g} s of training "
                 f"(steps {reached}), {seeds} seeds")
    title += f", FD of {floor['num']} samples vs held-out (mean ± std over seeds)"
    table = markdown_table(["model", "params", "lr", "FD", "FD / floor", "precision / recall",
                            "p>=0.9 share / entropy (bits)", "step ms (side by side)", "training s (wall)",
                            "U-Net FD at this model's steps x step time"], rows)
    print(f"\n{title}\n{table}", flush=True)
    (out / "train_compare.md").write_text(f"{title}\n\n{table}\n\n{fd_by_step(record)}\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    for ax, per_step, label in ((axes[0], None, "training step"),
                                (axes[1], step_seconds, "training seconds (steps x step time, measured side by side)")):
        for m in per_model:
            if per_step is not None and m not in per_step:
                continue
            curves = [sorted(record["runs"][n]["evals"], key=lambda e: e["step"]) for n in record["main_runs"]
                      if record["runs"][n]["model"] == m]
            n = min(len(c) for c in curves)
            x = np.array([e["step"] for e in curves[0][:n]]) * (1.0 if per_step is None else per_step[m])
            fd = np.array([[e["fd"] for e in c[:n]] for c in curves])
            (line,) = ax.plot(x, fd.mean(0), "o-", ms=3, label=f"{m} ({len(curves)} seeds)")
            ax.fill_between(x, fd.min(0), fd.max(0), color=line.get_color(), alpha=0.2)
        f_lo, f_hi = min(floor["fd"]), max(floor["fd"])
        ax.axhspan(f_lo, f_hi, color="k", alpha=0.15, label="real data (train vs held-out)")
        start = record["protocol"].get("decay_start")
        if start and per_step is None:
            ax.axvline(start, color="k", ls=":", lw=1, label="learning-rate decay starts")
        ax.set(xlabel=label, ylabel="FD (classifier features) vs held-out", yscale="log")
        ax.grid(True, alpha=0.3)
    axes[0].legend()
    p = record["protocol"]
    fig.suptitle(f"MNIST {p['image_size']}x{p['image_size']}, batch {p['batch']}, {floor['num']} DDIM-{p['eval_steps']} "
                 f"samples per point (mean, min-max over seeds)")
    fig.tight_layout()
    fig.savefig(out / "train_compare.png")
    plt.close(fig)


if __name__ == "__main__":
    main()
