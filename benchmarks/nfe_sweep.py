"""Sample quality against denoiser evaluations (NFE), for trained runs of both denoisers.

python -m benchmarks.nfe_sweep --workdirs runs/mnist_cunet runs/mnist_unet [--num 1000] [--append]

For each run: DDIM, DPM-Solver++(2M) and the probability-flow ODE (Heun) at about
each --nfe, and the ancestral reference of --ancestral_steps steps (0: none), each scored by
evaluation.score_run (FD against the held-out split) with its wall time per image. Prints a
table, writes <out>/nfe_sweep.json and .png. --append keeps the rows already in that JSON
(same --num) and runs only the points they lack.
"""

import argparse
import json
import sys
from pathlib import Path

from benchmarks.common import machine, markdown_table
from odediff import parallel
from odediff.evaluation import default_cache_dir, score_run


def points(nfes: list[int], ancestral_steps: int = 1000) -> list[tuple[str, int, dict]]:
    """(sampler, num_steps, options) per point; Heun takes 2 evaluations per step."""
    out = []
    for n in nfes:
        out += [("ddim", n, {}), ("dpmpp2m", n, {}), ("ode", max(n // 2, 2), {"solver": "heun"})]
    return out + ([("ancestral", ancestral_steps, {})] if ancestral_steps else [])


def score_point(workdir: str, sampling: dict, num: int, batch: int, cache_dir: Path) -> dict:
    """One row: `num` samples of a run drawn with `sampling` (fields of its sampling block),
    their FD against the held-out split and the wall time per image (compilation excluded)."""
    r, _ = score_run(workdir, num=num, sampling=sampling, batch=batch, cache_dir=cache_dir)
    row = {
        "run": Path(workdir).name,
        "model": r["model"],
        "workdir": workdir,
        "step": r["step"],
        "sampler": r["sampler"],
        "steps": r["steps"],
        "nfe": r["nfe"],
        "num": num,
        "fd": r["fd"],
        "seconds_per_image": r["sample_seconds"] / num,
    }
    print(
        f"{row['run']} ({row['model']}) {r['sampling_used']}: FD {row['fd']:.3f}, "
        f"{row['seconds_per_image'] * 1e3:.1f} ms/image",
        flush=True,
    )
    return row


def run_sweep(
    workdir: str,
    nfes: list[int],
    num: int,
    batch: int,
    cache_dir: Path,
    done: frozenset = frozenset(),
    ancestral_steps: int = 1000,
) -> list[dict]:
    """One row per point of `points(nfes, ancestral_steps)`, skipping the (sampler, steps) pairs in `done`."""
    return [
        score_point(workdir, {"sampler": name, "steps": steps, **options}, num, batch, cache_dir)
        for name, steps, options in points(nfes, ancestral_steps)
        if (name, steps) not in done
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdirs", nargs="+", required=True)
    ap.add_argument("--nfe", type=int, nargs="+", default=[10, 20, 50, 100])
    ap.add_argument("--num", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument(
        "--ancestral_steps", type=int, default=1000, help="the ancestral reference's steps; 0 leaves it out"
    )
    ap.add_argument("--cache_dir", default=None)
    ap.add_argument("--out", default="benchmarks/results/nfe_sweep")
    ap.add_argument(
        "--append", action="store_true", help="keep the rows in <out>/nfe_sweep.json, run only the points they lack"
    )
    a = ap.parse_args()
    parallel.use_cpu_cores(a.batch)
    out = Path(a.out)
    kept = []
    if a.append and (out / "nfe_sweep.json").exists():
        kept = json.loads((out / "nfe_sweep.json").read_text())["rows"]
        other = {r.get("num") for r in kept} - {a.num}
        if other:
            print(
                f"nfe_sweep.py: --append: {out / 'nfe_sweep.json'} holds rows with --num {other}, "
                f"not {a.num}; pass the same --num or another --out",
                file=sys.stderr,
            )
            sys.exit(2)
    cache = Path(a.cache_dir) if a.cache_dir else default_cache_dir(a.workdirs[0])
    rows = list(kept)
    for w in a.workdirs:
        done = frozenset((r["sampler"], r["steps"]) for r in kept if r["run"] == Path(w).name)
        rows += run_sweep(w, a.nfe, a.num, min(a.batch, a.num), cache, done, a.ancestral_steps)
    order = {run: i for i, run in enumerate(dict.fromkeys(r["run"] for r in rows))}
    rows.sort(key=lambda r: (order[r["run"]], r["sampler"] == "ancestral", r["nfe"]))

    out.mkdir(parents=True, exist_ok=True)
    print(f"\nFD (classifier features) against NFE, {a.num} samples each, on {machine()}")
    print(
        markdown_table(
            ["run", "model", "sampler", "NFE", "FD", "ms / image"],
            [
                [r["run"], r["model"], r["sampler"], r["nfe"], f"{r['fd']:.3f}", f"{r['seconds_per_image'] * 1e3:.1f}"]
                for r in rows
            ],
        )
    )
    for run in dict.fromkeys(r["run"] for r in rows):
        ref = next((r["fd"] for r in rows if r["run"] == run and r["sampler"] == "ancestral"), None)
        if ref is None:
            continue
        best50 = min(r["fd"] for r in rows if r["run"] == run and r["sampler"] != "ancestral" and r["nfe"] <= 51)
        print(f"{run}: best FD at <= 50 NFE / 1000-step ancestral FD = {best50 / ref:.3f}")
    (out / "nfe_sweep.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    _plot(rows, out / "nfe_sweep.png")


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for run, style in zip(dict.fromkeys(r["run"] for r in rows), ("-", "--", ":", "-.")):
        for sampler, color in zip(("ddim", "dpmpp2m", "ode"), ("C0", "C1", "C2")):
            pts = sorted((r["nfe"], r["fd"]) for r in rows if r["run"] == run and r["sampler"] == sampler)
            if pts:
                ax.plot(*zip(*pts), style, color=color, marker="o", label=f"{run} {sampler}")
        ref = [r["fd"] for r in rows if r["run"] == run and r["sampler"] == "ancestral"]
        if ref:
            ax.axhline(ref[0], linestyle=style, color="grey", label=f"{run} ancestral 1000")
    ax.set_xscale("log")
    nfes = sorted({r["nfe"] for r in rows if r["sampler"] == "ddim"})
    ax.set_xticks(nfes, [str(n) for n in nfes], minor=False)
    ax.set_xticks([], minor=True)
    ax.set_xlabel("denoiser evaluations (NFE)")
    ax.set_ylabel("FD (classifier features)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
