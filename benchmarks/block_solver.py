"""FD and time per image of trained cU-Nets whose ODE blocks are solved at sampling time with
other fixed-step solvers than in training, beside U-Nets sampled the same way.

python -m benchmarks.block_solver --cunets runs/.../cunet_heun_lr0.004_s0 [--unets runs/.../unet_...]
    [--blocks euler:1 heun:1 midpoint:1 rk4:1 rk4:2] [--samplers dpmpp2m:10 ddim:25] [--num 1000]

Every cU-Net at every --blocks setting (`sampling.block_solver`, `sampling.block_steps`) with
every --samplers sampler, every U-Net with the samplers alone: 1,000 samples from the EMA
params each, FD against the held-out split and wall seconds per image (compilation excluded),
all in this one process. Writes <out>/block_solver.json, .md (also printed) and .png (FD
against time per image).
"""

import argparse
import sys
from pathlib import Path

from benchmarks.common import machine, markdown_table, write_json
from benchmarks.nfe_sweep import score_point
from odediff import parallel
from odediff.evaluation import default_cache_dir

FIXED = ("euler", "heun", "midpoint", "rk4")  # the classic fixed-step solvers of odediff.models.SOLVERS
NAMES = {"ddim": "DDIM", "dpmpp2m": "DPM-Solver++(2M)"}


def choices(text: str, known: tuple[str, ...], what: str) -> tuple[str, int]:
    """`name:count` -> (name, count), or exit 2 naming what was wrong."""
    name, _, count = text.partition(":")
    if name not in known or not count.isdigit() or int(count) < 1:
        print(
            f"block_solver.py: {what} {text!r} is not NAME:COUNT with NAME one of {known}, COUNT >= 1", file=sys.stderr
        )
        sys.exit(2)
    return name, int(count)


def points(
    cunets: list[str], unets: list[str], blocks: list[tuple[str, int]], samplers: list[tuple[str, int]]
) -> list[tuple[str, dict]]:
    """(workdir, sampling fields) per point: each cU-Net at each block setting with each sampler,
    each U-Net with each sampler."""
    out = []
    for sampler, steps in samplers:
        for w in cunets:
            out += [(w, {"sampler": sampler, "steps": steps, "block_solver": b, "block_steps": n}) for b, n in blocks]
        out += [(w, {"sampler": sampler, "steps": steps}) for w in unets]
    return out


def markdown(rec: dict) -> str:
    rows = [
        [
            r["run"],
            f"{r['block_solver']} x{r['block_steps']}" if r.get("block_solver") else "",
            f"{NAMES[r['sampler']]}, {r['nfe']} NFE",
            f"{r['fd']:.2f}",
            f"{r['seconds_per_image'] * 1e3:.2f}",
        ]
        for r in rec["rows"]
    ]
    head = f"{rec['num']} samples per point, FD (classifier features) vs held-out; {rec['machine']}"
    return head + "\n\n" + markdown_table(["run", "ODE blocks", "sampler", "FD", "ms / image"], rows) + "\n"


def plot(rec: dict, path: Path) -> None:
    """FD against milliseconds per image: a line per (run, sampler) through its block settings."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    runs = list(dict.fromkeys(r["run"] for r in rec["rows"]))
    for i, run in enumerate(runs):
        for sampler, marker in zip(NAMES, ("o", "s")):
            rs = [r for r in rec["rows"] if r["run"] == run and r["sampler"] == sampler]
            if not rs:
                continue
            rs.sort(key=lambda r: r["seconds_per_image"])
            xs, ys = [r["seconds_per_image"] * 1e3 for r in rs], [r["fd"] for r in rs]
            (line,) = ax.plot(xs, ys, marker + "-", color=f"C{i}", label=f"{run}, {NAMES[sampler]} {rs[0]['nfe']} NFE")
            for r, x, y in zip(rs, xs, ys):
                if r.get("block_solver"):
                    ax.annotate(f"{r['block_solver']} x{r['block_steps']}", (x, y), fontsize=7, xytext=(3, 3),
                                textcoords="offset points", color=line.get_color())  # fmt: skip
    ax.set(xscale="log", yscale="log", xlabel="milliseconds per image (compilation excluded)", ylabel="FD vs held-out")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="block_solver.py", description=__doc__.splitlines()[0])
    ap.add_argument("--cunets", nargs="+", required=True, help="cU-Net run directories")
    ap.add_argument("--unets", nargs="*", default=[], help="U-Net run directories, sampled with --samplers only")
    ap.add_argument("--blocks", nargs="+", default=["euler:1", "heun:1", "midpoint:1", "rk4:1", "rk4:2"])
    ap.add_argument("--samplers", nargs="+", default=["dpmpp2m:10", "ddim:25"])
    ap.add_argument("--num", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--cache_dir", default=None)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/block_solver"))
    a = ap.parse_args(argv)
    blocks = [choices(b, FIXED, "--blocks") for b in a.blocks]
    samplers = [choices(s, tuple(NAMES), "--samplers") for s in a.samplers]
    parallel.use_cpu_cores(a.batch)
    cache = Path(a.cache_dir) if a.cache_dir else default_cache_dir(a.cunets[0])
    rows = []
    for w, sampling in points(a.cunets, a.unets, blocks, samplers):
        row = score_point(w, sampling, a.num, min(a.batch, a.num), cache)
        rows.append(
            {**row, "block_solver": sampling.get("block_solver", ""), "block_steps": sampling.get("block_steps", 0)}
        )
    rec = {"machine": machine(), "num": a.num, "rows": rows}
    a.out.mkdir(parents=True, exist_ok=True)
    write_json(a.out / "block_solver.json", rec)
    (a.out / "block_solver.md").write_text(markdown(rec))
    plot(rec, a.out / "block_solver.png")
    print(markdown(rec))
    return rec


if __name__ == "__main__":
    main()
