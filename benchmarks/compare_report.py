"""train_compare's report: the statistics of a results record, its markdown tables and its plot."""

from pathlib import Path

import numpy as np

from benchmarks.common import markdown_table, write_json

# model name -> (denoiser, ODE solver of its blocks); also the order of the report's rows
MODELS = {"unet": ("unet", None), "cunet_rk4": ("cunet", "rk4"), "cunet_heun": ("cunet", "heun")}
SCORES = (
    "fd",
    "precision",
    "recall",
    "kid_mean",
    "kid_std",
    "confident_fraction",
    "confident_entropy",
    "class_histogram_tv",
)


def final_scores(record: dict) -> tuple[int, dict]:
    """The last step every main run was scored at, and each model's scores there per seed.
    Under a time budget: each run's last scoring, and step 0."""
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
    between its scorings; None outside the scored range."""
    evals = sorted(evals, key=lambda e: e["step"])
    x = np.array([e["step"] * step_seconds for e in evals])
    if not len(x) or not x[0] <= seconds <= x[-1]:
        return None
    return float(np.exp(np.interp(seconds, x, np.log([e["fd"] for e in evals]))))


def _main_runs_of(record: dict, model: str) -> list[dict]:
    return [record["runs"][n] for n in record["main_runs"] if record["runs"][n]["model"] == model]


def summarize(record: dict) -> dict:
    """The summary: the floor, and per model its final scores (mean, std, per seed), FD over
    the floor and, for each cU-Net against the U-Net, the FD ratio (only where both have
    several seeds whose ranges do not overlap), where each seed reached the U-Net's final FD,
    and the U-Net's FD after as many seconds (steps x step time) as the model trained, taken
    at the decay's start where the rate decays."""
    step, per_model = final_scores(record)
    floor = record["floor"]
    step_seconds = {m: v["median"] for m, v in record.get("step_seconds", {}).items()}
    summary = {
        "step": step,
        "floor_fd_mean": float(np.mean(floor["fd"])),
        "floor_fd_std": float(np.std(floor["fd"])),
        "models": {},
    }
    for m, rows in per_model.items():
        s = {
            "seeds": [r["seed"] for r in rows],
            "lr": record["lr"][m],
            "params": _main_runs_of(record, m)[0]["params"],
            "train_seconds_mean": float(np.mean([r["train_seconds"] for r in rows])),
            "step_seconds": step_seconds.get(m),
        }
        for k in SCORES:
            v = [r[k] for r in rows]
            s[k + "_mean"], s[k + "_std"], s[k] = float(np.mean(v)), float(np.std(v)), v
        s["fd_over_floor"] = s["fd_mean"] / summary["floor_fd_mean"]
        summary["models"][m] = s
    u = summary["models"].get("unet")
    for m, s in summary["models"].items():
        if u is None or m == "unet":
            continue
        lo, hi = min(s["fd"]), max(s["fd"])
        separated = min(len(s["fd"]), len(u["fd"])) >= 2 and (hi < min(u["fd"]) or lo > max(u["fd"]))
        s["fd_ratio_to_unet"] = s["fd_mean"] / u["fd_mean"] if separated else None
        reach = []
        for r in _main_runs_of(record, m):
            hit = next((e for e in sorted(r["evals"], key=lambda e: e["step"]) if e["fd"] <= u["fd_mean"]), None)
            reach.append(None if hit is None else (hit["step"], hit["step"] * step_seconds.get(m, np.nan)))
        s["reach_unet_final_fd"] = reach
        if not step:
            continue  # a time budget: the final scores are at equal seconds already
        decay_start = record["protocol"].get("decay_start")
        eq_step = min(step, decay_start) if decay_start else step
        seconds = eq_step * step_seconds.get(m, np.nan)
        at = [
            fd_at_seconds(r["evals"], step_seconds.get("unet", np.nan), seconds) for r in _main_runs_of(record, "unet")
        ]
        own = [e["fd"] for r in _main_runs_of(record, m) for e in r["evals"] if e["step"] == eq_step]
        s["equal_seconds_step"] = eq_step
        s["fd_at_equal_seconds_step_mean"] = float(np.mean(own)) if own else None
        s["train_seconds_steps"] = seconds
        s["unet_fd_at_equal_seconds"] = at
        s["unet_fd_at_equal_seconds_mean"] = float(np.mean(at)) if at and None not in at else None
    return summary


def equal_seconds_text(s: dict, step: int) -> str:
    """The U-Net's FD after as many seconds as this model trained, with this model's own FD
    where that is taken at another step than the table's."""
    if not s.get("unet_fd_at_equal_seconds_mean"):
        return ""
    text = f"{s['unet_fd_at_equal_seconds_mean']:.2f}"
    if s["equal_seconds_step"] != step:
        text += f" (vs {s['fd_at_equal_seconds_step_mean']:.2f} at step {s['equal_seconds_step']:,})"
    return text


def fd_by_step(record: dict) -> str:
    """Markdown: every main run's FD at each scored step, then each cU-Net's mean FD over
    the U-Net's at the steps where all their seeds were scored."""
    runs = sorted(
        (record["runs"][n] for n in record["main_runs"]), key=lambda r: (list(MODELS).index(r["model"]), r["seed"])
    )
    steps = sorted({e["step"] for r in runs for e in r["evals"]})
    rows = [
        [r["model"], f"{r['lr']:g}", r["seed"]]
        + [next((f"{e['fd']:.1f}" for e in r["evals"] if e["step"] == t), "") for t in steps]
        for r in runs
    ]
    mean = {}
    for t in steps:
        for m in {r["model"] for r in runs}:
            fd = [e["fd"] for r in runs if r["model"] == m for e in r["evals"] if e["step"] == t]
            if len(fd) == sum(r["model"] == m for r in runs):
                mean[m, t] = float(np.mean(fd))
    for m in dict.fromkeys(r["model"] for r in runs):
        if m != "unet":
            rows.append(
                [f"{m} / unet (mean FD)", "", ""]
                + [
                    f"{mean[m, t] / mean['unet', t]:.2f}" if (m, t) in mean and ("unet", t) in mean else ""
                    for t in steps
                ]
            )
    return markdown_table(["run", "lr", "seed"] + [f"step {t:,}" for t in steps], rows)


def markdown(record: dict, summary: dict) -> str:
    """The report's text: a title, the summary table and every run's FD per step."""
    step, per_model = final_scores(record)
    floor = record["floor"]
    rows = [
        [
            "real data (train vs held-out)",
            "",
            "",
            f"{summary['floor_fd_mean']:.2f} ± {summary['floor_fd_std']:.2f}",
            "1.0",
            f"{np.mean(floor['precision']):.3f} / {np.mean(floor['recall']):.3f}",
            f"{np.mean(floor['confident_fraction']):.3f} / {np.mean(floor['confident_entropy']):.2f}",
            "",
            "",
            "",
        ]
    ]
    for m, s in summary["models"].items():
        rows.append(
            [
                m,
                f"{s['params']:,}",
                f"{s['lr']:g}",
                f"{s['fd_mean']:.2f} ± {s['fd_std']:.2f}",
                f"{s['fd_over_floor']:.1f}",
                f"{s['precision_mean']:.3f} / {s['recall_mean']:.3f}",
                f"{s['confident_fraction_mean']:.3f} / {s['confident_entropy_mean']:.2f}",
                f"{s['step_seconds'] * 1e3:.0f}" if s["step_seconds"] else "",
                f"{s['train_seconds_mean']:.0f}",
                equal_seconds_text(s, step),
            ]
        )
    seeds = len(next(iter(per_model.values()), []))
    if step:
        title = f"step {step}, {seeds} seeds"
    else:
        reached = "; ".join(
            m + " " + "/".join(f"{r['step']:,}" for r in seed_rows) for m, seed_rows in per_model.items()
        )
        title = (
            f"each run's first scoring after {record['protocol']['time_budget']:g} s of training "
            f"(steps {reached}), {seeds} seeds"
        )
    title += f", FD of {floor['num']} samples vs held-out (mean ± std over seeds)"
    table = markdown_table(
        [
            "model",
            "params",
            "lr",
            "FD",
            "FD / floor",
            "precision / recall",
            "p>=0.9 share / entropy (bits)",
            "step ms (side by side)",
            "training s (wall)",
            "U-Net FD at this model's steps x step time",
        ],
        rows,
    )
    return f"{title}\n\n{table}\n\n{fd_by_step(record)}\n"


def plot(record: dict, path: Path) -> None:
    """FD against training steps and against training seconds (steps x step time): each
    model's mean and range over seeds, the real-data floor as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, per_model = final_scores(record)
    floor, p = record["floor"], record["protocol"]
    step_seconds = {m: v["median"] for m, v in record.get("step_seconds", {}).items()}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    for ax, per_step, label in (
        (axes[0], None, "training step"),
        (axes[1], step_seconds, "training seconds (steps x step time, measured side by side)"),
    ):
        for m in per_model:
            if per_step is not None and m not in per_step:
                continue
            curves = [sorted(r["evals"], key=lambda e: e["step"]) for r in _main_runs_of(record, m)]
            n = min(len(c) for c in curves)
            x = np.array([e["step"] for e in curves[0][:n]]) * (1.0 if per_step is None else per_step[m])
            fd = np.array([[e["fd"] for e in c[:n]] for c in curves])
            (line,) = ax.plot(x, fd.mean(0), "o-", ms=3, label=f"{m} ({len(curves)} seeds)")
            ax.fill_between(x, fd.min(0), fd.max(0), color=line.get_color(), alpha=0.2)
        ax.axhspan(min(floor["fd"]), max(floor["fd"]), color="k", alpha=0.15, label="real data (train vs held-out)")
        if p.get("decay_start") and per_step is None:
            ax.axvline(p["decay_start"], color="k", ls=":", lw=1, label="learning-rate decay starts")
        ax.set(xlabel=label, ylabel="FD (classifier features) vs held-out", yscale="log")
        ax.grid(True, alpha=0.3)
    axes[0].legend()
    fig.suptitle(
        f"MNIST {p['image_size']}x{p['image_size']}, batch {p['batch']}, {floor['num']} DDIM-{p['eval_steps']} "
        f"samples per point (mean, min-max over seeds)"
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(record: dict, out: Path) -> None:
    """Stores the summary in `record` and writes <out>/train_compare.json, .md (also printed)
    and .png; nothing before any main run exists."""
    if not record.get("main_runs"):
        return
    record["summary"] = summarize(record)
    write_json(out / "train_compare.json", record)
    text = markdown(record, record["summary"])
    print(f"\n{text}", flush=True)
    (out / "train_compare.md").write_text(text)
    plot(record, out / "train_compare.png")
