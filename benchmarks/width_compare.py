"""FD against parameters, training FLOPs and step time for every model of several
train_compare records: the comparison across widths.

python -m benchmarks.width_compare [--records DIR ...] [--out benchmarks/results/mnist_widths]

Each record's models at --step (every seed scored there; a record or model short of it is
named and left out): parameters and FD per seed from the record; the training step's FLOPs as
lowered for a CPU (`paper_table.gflop`, with `lax.conv_general_dilated` at every size, so that
the small-image convolutions' matrix products do not count their zero padding) times the steps
trained; and each model's step time measured here (the library's build, median and range of
--repeats steps), the models alternating in this one process. Writes <out>/width_compare.json,
.md (also printed) and .png (one panel per axis, a point per seed).
"""

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from benchmarks import train_compare
from benchmarks.common import fail, machine, markdown_table, write_json
from benchmarks.compare_report import final_scores, summarize
from benchmarks.op_profile import lax_convolutions
from benchmarks.paper_table import alternated_times, gflop
from odediff.models import build_denoiser
from odediff.schedule import make_schedule
from odediff.train_state import create_train_state, make_optimizer
from odediff.training import make_train_step

RESULTS = Path(__file__).resolve().parent / "results"
RECORDS = ("mnist_compare", "mnist_width_unet16", "mnist_width_cunet16")
FAMILIES = {"unet": "U-Net", "cunet_rk4": "cU-Net RK4 x1", "cunet_heun": "cU-Net Heun x1"}


def record_config(protocol: dict, model: str) -> ml_collections.ConfigDict:
    """The run config of `model` under a record's protocol (a setting it lacks at the value
    such records ran with)."""
    a = train_compare.parse_args([])
    for k, v in {**train_compare.OLD_PROTOCOL_VALUES, **protocol}.items():
        if hasattr(a, k):
            setattr(a, k, v)
    a.steps = protocol.get("decay_start", 0) + protocol.get("decay_steps", 0) or a.steps
    return train_compare.make_config(a, model, 1e-3, 0)


def label(protocol: dict, model: str) -> str:
    width = f"ch {protocol['unet_ch']}" if model == "unet" else f"nf {protocol['cunet_nf']}"
    return f"{FAMILIES[model]}, {width}"


def entries(record: dict, step: int, name: str) -> tuple[list[dict], list[str]]:
    """One entry per model of `record` scored at `step` for all its seeds, and a line per
    model or record left out."""
    at, per_model = final_scores(record)
    if not per_model:
        return [], [f"{name}: no main run scored yet"]
    out, skipped, summary = [], [], summarize(record)
    for model, rows in sorted(per_model.items(), key=lambda kv: list(FAMILIES).index(kv[0])):
        if at != step:
            skipped.append(f"{name} {model}: scored to step {at:,}, not {step:,}")
            continue
        out.append(
            {
                "label": label(record["protocol"], model),
                "record": name,
                "model": model,
                "params": summary["models"][model]["params"],
                "lr": record["lr"][model],
                "seeds": [r["seed"] for r in rows],
                "fd": [r["fd"] for r in rows],
                "fd_mean": float(np.mean([r["fd"] for r in rows])),
                "steps": step,
                **(
                    {"norm_groups": {**train_compare.OLD_PROTOCOL_VALUES, **record["protocol"]}["unet_norm_groups"]}
                    if model == "unet"
                    else {}
                ),
            }
        )
    return out, skipped


def step_fns(configs: dict[str, ml_collections.ConfigDict]) -> tuple[dict, dict]:
    """Per label: a call that runs one training step of that config on a fixed batch (the state
    carried from call to call), and the step's GFLOP as lowered for a CPU with lax convolutions."""
    calls, flops = {}, {}
    for name, c in configs.items():
        model = build_denoiser(c.model)
        tx = make_optimizer(c.training)
        schedule = make_schedule(c.diffusion.beta_schedule, c.diffusion.num_timesteps)
        state = jax.jit(lambda k, model=model, tx=tx, c=c: create_train_state(model, tx, c, k))(jax.random.key(0))
        s = c.data.image_size
        batch = jax.random.normal(jax.random.key(1), (c.training.batch_size, s, s, c.data.channels), jnp.float32)
        with lax_convolutions():  # a step function of its own: jit reuses a function's trace, patch or not
            flops[name] = gflop(make_train_step(model, tx, schedule, c), state, batch)
        holder = {"state": state, "step": jax.jit(make_train_step(model, tx, schedule, c))}

        def call(holder=holder, batch=batch):
            holder["state"], metrics = holder["step"](holder["state"], batch)
            return metrics["loss"]

        calls[name] = call
    return calls, flops


def markdown(rec: dict) -> str:
    rows = [
        [
            e["label"],
            f"{e['params']:,}",
            f"{e['gflop_per_step']:.2f}",
            f"{e['gflop_per_step'] * e['steps'] / 1e3:.1f}",
            f"{e['step_seconds'] * 1e3:.0f} ({min(e['step_seconds_runs']) * 1e3:.0f}-{max(e['step_seconds_runs']) * 1e3:.0f})",
            f"{e['fd_mean']:.2f} ({', '.join(f'{v:.2f}' for v in e['fd'])})",
        ]
        for e in sorted(rec["models"], key=lambda e: e["params"])
    ]
    header = ["model", "params", "GFLOP / step", "TFLOP trained", "step ms, median (range)", "FD (seeds)"]
    floor = rec["floor"]
    lines = [
        f"step {rec['step']:,}, batch {rec['batch']}; FD of 1,000 DDIM samples vs held-out; "
        f"real-data floor {np.mean(floor):.2f} ({', '.join(f'{v:.2f}' for v in floor)}); {rec['machine']}",
        "",
        markdown_table(header, rows),
    ]
    if rec["left_out"]:
        lines += ["", "Left out: " + "; ".join(rec["left_out"]) + "."]
    return "\n".join(lines) + "\n"


def plot(rec: dict, path: Path) -> None:
    """FD against parameters, training FLOPs and step seconds: a point per seed, a line through
    each family's means, the step timings' range as a bar, the floor as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_of = (
        ("params", lambda e: e["params"], "parameters"),
        ("flops", lambda e: e["gflop_per_step"] * e["steps"] / 1e3, "training TFLOP (CPU-lowered step x steps)"),
        ("seconds", lambda e: e["step_seconds"], "seconds per training step (side by side)"),
    )
    markers = {"unet": "s", "cunet_rk4": "^", "cunet_heun": "o"}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), dpi=100)
    for ax, (key, x_of, xlabel) in zip(axes, axes_of):
        for family, marker in markers.items():
            es = sorted((e for e in rec["models"] if e["model"] == family), key=x_of)
            if not es:
                continue
            xs = [x_of(e) for e in es]
            (line,) = ax.plot(xs, [e["fd_mean"] for e in es], marker + "-", alpha=0.5, label=FAMILIES[family])
            for e in es:
                ax.scatter([x_of(e)] * len(e["fd"]), e["fd"], marker=marker, color=line.get_color(), zorder=3)
                if key == "seconds" and "step_seconds_runs" in e:  # the timings' range
                    lo, hi = min(e["step_seconds_runs"]), max(e["step_seconds_runs"])
                    xerr = [[e["step_seconds"] - lo], [hi - e["step_seconds"]]]
                    ax.errorbar([e["step_seconds"]], [e["fd_mean"]], xerr=xerr, fmt="none", color=line.get_color())
                ax.annotate(e["label"].split(", ")[-1], (x_of(e), max(e["fd"])), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")  # fmt: skip
        ax.axhspan(min(rec["floor"]), max(rec["floor"]), color="k", alpha=0.15, label="real data")
        ax.set(xlabel=xlabel, ylabel="FD vs held-out", xscale="log")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"MNIST 16 px after {rec['step']:,} steps: each seed a point, lines through the means")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run(records: list[Path], out: Path, step: int, repeats: int) -> dict:
    """Reads the records, measures FLOPs and step times, writes <out>/width_compare.*."""
    models, left_out, configs, floor, batch = [], [], {}, None, None
    for path in records:
        f = path / "train_compare.json"
        if not f.exists():
            left_out.append(f"{path.name}: no record yet")
            continue
        record = json.loads(f.read_text())
        floor = floor or record["floor"]["fd"]
        if not np.allclose(record["floor"]["fd"], floor, rtol=1e-4):
            fail("width_compare.py", f"{path} was scored against another real-data floor: not comparable")
        es, skipped = entries(record, step, path.name)
        left_out += skipped
        for e in es:
            configs[e["label"]] = record_config(record["protocol"], e["model"])
            batch = configs[e["label"]].training.batch_size
        models += es
    if not models:
        fail("width_compare.py", f"no model scored at step {step:,} in " + ", ".join(map(str, records)))
    calls, flops = step_fns(configs)
    seconds = alternated_times(calls, repeats)
    for e in models:
        runs = seconds[e["label"]]
        e["gflop_per_step"], e["step_seconds"], e["step_seconds_runs"] = flops[e["label"]], float(np.median(runs)), runs
    rec = {
        "machine": machine(),
        "step": step,
        "batch": batch,
        "floor": floor,
        "timing_repeats": repeats,
        "records": [p.name for p in records],
        "models": models,
        "left_out": left_out,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "width_compare.json", rec)
    (out / "width_compare.md").write_text(markdown(rec))
    plot(rec, out / "width_compare.png")
    print(markdown(rec))
    return rec


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="width_compare.py", description=__doc__.splitlines()[0])
    ap.add_argument("--records", nargs="+", type=Path, default=[RESULTS / r for r in RECORDS])
    ap.add_argument("--out", type=Path, default=RESULTS / "mnist_widths")
    ap.add_argument("--step", type=int, default=6000)
    ap.add_argument("--repeats", type=int, default=15, help="alternated timings of one step per model")
    a = ap.parse_args(argv)
    return run(a.records, a.out, a.step, a.repeats)


if __name__ == "__main__":
    main()
