"""Training speed with an equal budget: the continuous U-Net against the DDPM U-Net on real MNIST.

python benchmarks/train_compare.py [--steps 1000 --batch 32 --lr 2e-3 --eval_every 250 --num_eval_samples 250]
                                   [--cunet_solver rk4 --cunet_ode_steps 1] [--cheap_solvers euler:1]
                                   [--runs_dir runs/train_compare] [--quick] [--out DIR]

Both denoisers train in this one process, alternating every --eval_every steps, on
the same batches (same seed), optimizer, schedule and learning rate: configs/mnist.py
with data from idx:<--data> (the MNIST test set's 10k images, split into train and
held-out by data.holdout_fraction). Every --eval_every steps each EMA model draws
--num_eval_samples DDIM samples, scored against the held-out images by FD in the
features of a small classifier trained on the train split ("FD (classifier
features)", not Inception FID). Writes <out>/train_compare.json and
<out>/train_compare.png (smoothed loss and FD against step for both), and reports
how many steps the cU-Net needs to reach the U-Net's final (smoothed) loss.
--cheap_solvers adds cU-Net runs with cheaper fixed-step solvers (solver:steps, e.g.
euler:1,heun:1), trained the same way, to show which keeps FD no worse than the U-Net's.
Each final state is saved as a run (config + orbax checkpoint) in <runs_dir>/<label>,
which sample.py, evaluate.py, nfe_sweep.py and denoise.py read; existing runs there
are never overwritten.

Sizes: CPU-friendly by default, sized for about 45 minutes on 2 CPU cores: cU-Net
nf 8 (ch_mult 2,4,8, RK4 x1, 0.66 M parameters), U-Net ch 32 (ch_mult 1,2,2, 2 res
blocks, attention at 16, 1.6 M) -- the U-Net keeps more capacity than the cU-Net.
On a GPU use --cunet_nf 16 --unet_ch 64 (configs/mnist.py's widths) and more steps.
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
from odediff.checkpoint import Checkpointer  # noqa: E402
from odediff.config import config_to_json, load_config_file  # noqa: E402
from odediff.evaluation import evaluate_samples, feature_space  # noqa: E402
from odediff.generation import generate  # noqa: E402
from odediff.models import build_denoiser  # noqa: E402
from odediff.schedule import make_schedule  # noqa: E402
from odediff.training import checkpoint_meta, create_train_state, make_optimizer, train_step  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average (shorter windows at the start)."""
    c = np.cumsum(np.insert(np.asarray(values, np.float64), 0, 0.0))
    i = np.arange(1, len(values) + 1)
    lo = np.maximum(i - window, 0)
    return (c[i] - c[lo]) / (i - lo)


def make_config(a, name: str, solver: str | None = None, ode_steps: int | None = None):
    c = load_config_file(REPO / "configs" / "mnist.py")
    c.data.source = f"idx:{Path(a.data).resolve()}"
    c.seed = a.seed
    c.model.name = name
    c.model.cunet.nf = a.cunet_nf
    c.model.cunet.solver = solver or a.cunet_solver
    c.model.cunet.ode_steps = ode_steps or a.cunet_ode_steps
    c.model.unet.ch = a.unet_ch
    c.training.batch_size = a.batch
    c.training.num_steps = a.steps
    c.training.learning_rate = a.lr
    c.training.warmup_steps = min(200, max(a.steps // 10, 1))
    c.training.ema_decay = a.ema
    c.sampling.sampler = "ddim"
    c.sampling.num_steps = a.eval_steps
    return c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "mnist"),
                    help="directory with MNIST IDX files (t10k-images-idx3-ubyte.gz, labels)")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3, help="Adam's learning rate, the same for every model")
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--eval_every", type=int, default=250)
    ap.add_argument("--num_eval_samples", type=int, default=250)
    ap.add_argument("--eval_steps", type=int, default=25, help="DDIM steps of the evaluation samples")
    ap.add_argument("--classifier_steps", type=int, default=1000)
    ap.add_argument("--cunet_solver", default="rk4")
    ap.add_argument("--cunet_ode_steps", type=int, default=1)
    ap.add_argument("--cunet_nf", type=int, default=8)
    ap.add_argument("--unet_ch", type=int, default=32)
    ap.add_argument("--models", default="cunet,unet")
    ap.add_argument("--cheap_solvers", default="euler:1",
                    help="extra cU-Net runs, solver:steps comma-separated ('' for none)")
    ap.add_argument("--runs_dir", default="runs/train_compare", help="where each final state is saved as a run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache_dir", default=str(Path("~/.cache/odediff").expanduser()))
    ap.add_argument("--quick", action="store_true", help="a smoke test: minutes on 2 CPU cores")
    ap.add_argument("--out", default="benchmarks/results/train_compare")
    a = ap.parse_args()
    if a.quick:
        a.steps, a.eval_every, a.num_eval_samples = min(a.steps, 40), min(a.eval_every, 20), min(a.num_eval_samples, 64)
        a.eval_steps, a.classifier_steps = min(a.eval_steps, 10), min(a.classifier_steps, 200)
        a.cunet_nf, a.unet_ch = min(a.cunet_nf, 8), min(a.unet_ch, 32)
    if not any(Path(a.data).glob("*images-idx3-ubyte*")):
        print(f"train_compare.py: skipped: no MNIST IDX files in {a.data} (pass --data <dir>)")
        return
    configs = {n: make_config(a, n) for n in a.models.split(",")}
    if "cunet" in configs:
        for setting in filter(None, a.cheap_solvers.split(",")):
            solver, _, n = setting.partition(":")
            configs[f"cunet_{solver}{n or 1}"] = make_config(a, "cunet", solver, int(n or 1))
    run_dirs = {n: Path(a.runs_dir) / n for n in configs}
    taken = [str(d) for d in run_dirs.values() if (d / "checkpoints").exists()]
    if taken:
        print(f"train_compare.py: {', '.join(taken)} already hold runs: pass another --runs_dir "
              f"or move them away (nothing is overwritten)", file=sys.stderr)
        sys.exit(2)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data_config = next(iter(configs.values())).data
    source = data_lib.load_source(data_config, "train")
    held_out = data_lib.load_source(data_config, "test")
    real = held_out[np.arange(len(held_out))]
    t0 = time.perf_counter()
    space = feature_space(data_config, a.cache_dir, classifier_steps=a.classifier_steps)
    print(f"feature classifier: test accuracy {space.info['classifier_test_accuracy']:.4f} "
          f"({time.perf_counter() - t0:.0f} s); {len(source)} train / {len(real)} held-out images", flush=True)

    runs = {}
    for n, c in configs.items():
        model = build_denoiser(c.model)
        tx = make_optimizer(c.training)
        schedule = make_schedule(c.diffusion.beta_schedule, c.diffusion.num_timesteps)
        # jitted, so params and EMA params are distinct buffers (the step donates the state)
        state = jax.jit(lambda k, model=model, tx=tx, c=c: create_train_state(model, tx, c, k))(
            jax.random.split(jax.random.key(c.seed))[0])
        step_fn = jax.jit(lambda s, b, model=model, tx=tx, schedule=schedule, c=c: train_step(model, tx, schedule, c, s, b),
                          donate_argnums=0)
        batch0 = data_lib.get_batch(source, data_config, a.batch, a.seed, 0)
        tc = time.perf_counter()
        step_fn = step_fn.lower(state, batch0).compile()
        runs[n] = {"config": c, "state": state, "step_fn": step_fn, "losses": [], "train_seconds": 0.0,
                   "compile_seconds": time.perf_counter() - tc, "evals": [],
                   "params": int(sum(x.size for x in jax.tree.leaves(state.params)))}
        print(f"{n}: {runs[n]['params']:,} parameters, train step compiled in {runs[n]['compile_seconds']:.1f} s",
              flush=True)

    step = 0
    while step < a.steps:
        chunk = min(a.eval_every, a.steps - step)
        batches = [data_lib.get_batch(source, data_config, a.batch, a.seed, s) for s in range(step, step + chunk)]
        for n, r in runs.items():  # alternate: each model gets the same batches
            ms = []
            tt = time.perf_counter()
            for b in batches:
                r["state"], m = r["step_fn"](r["state"], b)
                ms.append(m["loss"])
            jax.block_until_ready(r["state"])
            r["train_seconds"] += time.perf_counter() - tt
            r["losses"] += [float(v) for v in jax.device_get(ms)]
        step += chunk
        line = [f"step {step}"]
        for n, r in runs.items():
            te = time.perf_counter()
            samples, _, _ = generate(r["config"], r["state"].ema_params, a.num_eval_samples,
                                     seed=a.seed, batch=min(a.num_eval_samples, 250))
            ev = evaluate_samples(samples, real, space, kid_subsets=20)
            r["evals"].append({"step": step, "fd": ev["fd"], "kid_mean": ev["kid_mean"], "precision": ev["precision"],
                               "recall": ev["recall"], "class_histogram_tv": ev.get("class_histogram_tv"),
                               "eval_seconds": time.perf_counter() - te, "train_seconds": r["train_seconds"]})
            line.append(f"{n}: loss {np.mean(r['losses'][-chunk:]):.4f} FD {ev['fd']:.2f} "
                        f"({r['train_seconds']:.0f} s training)")
            if step == a.steps:
                from odediff import images
                images.save_grid(samples[:64], out / f"samples_{n}.png", scale=2)
        print(" | ".join(line), flush=True)

    for n, r in runs.items():
        save_run(run_dirs[n], r["config"], r["state"], a.steps)
    print(f"runs saved: {', '.join(str(d) for d in run_dirs.values())}")

    window = max(10, a.steps // 20)
    summary = {}
    for n, r in runs.items():
        sm = smooth(r["losses"], window)
        r["smoothed"] = sm
        summary[n] = {"params": r["params"], "final_loss_smoothed": float(sm[-1]),
                      "final_fd": r["evals"][-1]["fd"], "best_fd": min(e["fd"] for e in r["evals"]),
                      "seconds_per_step": r["train_seconds"] / a.steps, "compile_seconds": r["compile_seconds"]}
    reach = None
    if {"cunet", "unet"} <= set(runs):
        target = summary["unet"]["final_loss_smoothed"]
        hit = np.nonzero(runs["cunet"]["smoothed"] <= target)[0]
        reach = int(hit[0]) + 1 if hit.size else None
        fd_target = summary["unet"]["final_fd"]
        fd_hit = [e["step"] for e in runs["cunet"]["evals"] if e["fd"] <= fd_target]
        summary["cunet_steps_to_unet_final_loss"] = reach
        summary["cunet_seconds_to_unet_final_loss"] = (
            None if reach is None else reach * summary["cunet"]["seconds_per_step"])
        summary["cunet_first_eval_step_at_or_below_unet_final_fd"] = fd_hit[0] if fd_hit else None
    if "unet" in runs:
        for n in runs:
            if n.startswith("cunet"):
                summary[n]["final_fd_ratio_to_unet"] = summary[n]["final_fd"] / summary["unet"]["final_fd"]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    for n, r in runs.items():
        cc = r["config"].model.cunet
        label = n if n == "unet" else f"cunet ({cc.solver} x{cc.ode_steps})"
        ax1.plot(np.arange(1, a.steps + 1), r["smoothed"], label=f"{label}, {r['params'] / 1e6:.2f} M")
        ax2.plot([e["step"] for e in r["evals"]], [e["fd"] for e in r["evals"]], "o-", label=label)
    ax1.set(xlabel="step", ylabel=f"training loss (moving average, {window} steps)", yscale="log")
    ax2.set(xlabel="step", ylabel="FD (classifier features) vs held-out", yscale="log")
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(f"MNIST (idx, {len(source)} train images), batch {a.batch}, lr {a.lr}, equal steps")
    fig.tight_layout()
    fig.savefig(out / "train_compare.png")
    plt.close(fig)

    rows = [[n, f"{s['params']:,}", f"{s['final_loss_smoothed']:.4f}", f"{s['final_fd']:.2f}", f"{s['best_fd']:.2f}",
             f"{s['final_fd_ratio_to_unet']:.2f}" if "final_fd_ratio_to_unet" in s else "",
             f"{1e3 * s['seconds_per_step']:.0f}"] for n, s in summary.items() if isinstance(s, dict)]
    print(f"\nEqual budget: {a.steps} steps of batch {a.batch} on {machine()}; "
          f"FD (classifier features, test accuracy {space.info['classifier_test_accuracy']:.3f}) "
          f"of {a.num_eval_samples} DDIM-{a.eval_steps} samples vs {len(real)} held-out images")
    print(markdown_table(["model", "params", f"final loss (avg {window})", "final FD", "best FD", "FD / U-Net FD",
                          "ms / step"], rows))
    if "cunet_steps_to_unet_final_loss" in summary:
        print(f"cU-Net steps to reach the U-Net's final smoothed loss "
              f"({summary['unet']['final_loss_smoothed']:.4f}): {reach if reach else 'not reached'}"
              + (f" ({reach / a.steps:.0%} of the budget)" if reach else ""))
    record = {"args": vars(a), "summary": summary, "window": window,
              "runs": {n: {"losses": r["losses"], "evals": r["evals"], "params": r["params"],
                           "config": json.loads(r["config"].to_json())} for n, r in runs.items()},
              "feature_space": space.info}
    write_json(out / "train_compare.json", record)
    print(f"-> {out / 'train_compare.json'}, {out / 'train_compare.png'}")


def save_run(workdir: Path, config, state, step: int) -> None:
    """A run directory as train.py writes one: config.json and an orbax checkpoint."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config_to_json(config))
    ckpt = Checkpointer(workdir, keep=1)
    ckpt.save(step, state, checkpoint_meta(config, step), force=True)
    ckpt.close()


if __name__ == "__main__":
    main()
