"""Class-conditional digits and classifier-free guidance: does the sample show the class asked for?

python -m benchmarks.guidance [--seeds 0,1] [--guidance 0,1,2,4] [--per_class 100]

Trains (or resumes) configs/digits_cond.py and, as the unconditional reference,
configs/digits.py, one run per training seed under --runs_dir; then for every
guidance scale w draws --per_class samples of each of the ten classes (the configs'
sampler; sampling seed = training seed) and scores them with evaluation.score_run, as
evaluate.py does:

- the share of samples the classifier assigns to the class asked for;
- FD of all samples against the held-out split, beside the real-data floor (as many
  train images against the same held-out images) and the unconditional model's FD;
- FD per class: the samples of class c against half of the train images of class c,
  beside that class's floor (the other half against the same half).

Mean and spread over the training seeds. Writes <out>/guidance.json, guidance.md and
grid_w<w>.png (seed 0, one row per class).
"""

import argparse
from pathlib import Path

import numpy as np

from benchmarks.common import markdown_table, write_json
from odediff import data as data_lib
from odediff import images, parallel
from odediff.config import load_config_file
from odediff.evaluation import all_images, feature_space, score_run
from odediff.metrics import frechet_distance
from odediff.training import train_and_evaluate

REPO = Path(__file__).resolve().parents[1]


def train(config_name: str, seed: int, runs_dir: Path) -> Path:
    """The run directory of a finished (resumed if need be) training run."""
    config = load_config_file(REPO / "configs" / f"{config_name}.py")
    config.seed = seed
    workdir = runs_dir / f"{config_name}_s{seed}"
    train_and_evaluate(config, workdir)
    return workdir


def class_fd_split(train_images: np.ndarray, train_labels: np.ndarray, space, k: int) -> dict:
    """Per class: features of two disjoint halves of its train images."""
    out = {}
    for c in range(k):
        feats = space.features(train_images[train_labels == c])
        half = len(feats) // 2
        out[c] = (feats[:half], feats[half : 2 * half])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--guidance", default="0,1,2,4")
    ap.add_argument("--per_class", type=int, default=100)
    ap.add_argument("--runs_dir", default="runs/guidance")
    ap.add_argument("--cache_dir", default=str(Path("~/.cache/odediff").expanduser()))
    ap.add_argument("--out", default="benchmarks/results/guidance")
    a = ap.parse_args()
    seeds, scales = [int(s) for s in a.seeds.split(",")], [float(w) for w in a.guidance.split(",")]
    parallel.use_cpu_cores(a.per_class * 10)
    runs_dir, out = Path(a.runs_dir), Path(a.out)

    cond = load_config_file(REPO / "configs" / "digits_cond.py")
    k = cond.model.num_classes
    space = feature_space(cond.data, a.cache_dir)
    train_source = data_lib.load_source(cond.data, "train")
    held_out = all_images(data_lib.load_source(cond.data, "test"))[0]
    train_images, idx = all_images(train_source)
    train_labels = train_source.get_labels(idx)
    f_held = space.features(held_out)
    n = a.per_class * k
    floor_images = all_images(train_source, min(n, len(train_source)), seed=100)[0]
    floor = frechet_distance(space.features(floor_images), f_held)
    halves = class_fd_split(train_images, train_labels, space, k)
    class_floor = [frechet_distance(*halves[c]) for c in range(k)]
    labels = np.repeat(np.arange(k, dtype=np.int32), a.per_class)

    rows = []
    for seed in seeds:
        uncond_dir, cond_dir = train("digits", seed, runs_dir), train("digits_cond", seed, runs_dir)
        common = dict(num=n, seed=seed, batch=500, cache_dir=a.cache_dir, num_real=len(held_out))
        r, _ = score_run(uncond_dir, **common)
        rows.append({"seed": seed, "model": "unconditional", "step": r["step"], "guidance": None, "fd": r["fd"]})
        r, _ = score_run(cond_dir, sampling={"guidance": 0.0}, null_class=True, **common)
        rows.append(
            {"seed": seed, "model": "conditional, null class", "step": r["step"], "guidance": None, "fd": r["fd"]}
        )
        for w in scales:
            r, samples = score_run(cond_dir, sampling={"guidance": w}, labels=labels, **common)
            predicted = space.probabilities(samples).argmax(1)
            per_class_fd = [
                frechet_distance(space.features(samples[labels == c][: len(halves[c][1])]), halves[c][1])
                for c in range(k)
            ]
            row = {
                "seed": seed,
                "model": "conditional",
                "step": r["step"],
                "guidance": w,
                "nfe": r["nfe"],
                "class_accuracy": r["class_accuracy"],
                "class_accuracy_per_class": [float(np.mean(predicted[labels == c] == c)) for c in range(k)],
                "fd": r["fd"],
                "fd_per_class": per_class_fd,
            }
            rows.append(row)
            print(
                f"seed {seed} w={w:g}: class accuracy {row['class_accuracy']:.3f}, FD {row['fd']:.2f} "
                f"(floor {floor:.2f}), mean per-class FD {np.mean(per_class_fd):.2f}",
                flush=True,
            )
            if seed == seeds[0]:
                out.mkdir(parents=True, exist_ok=True)
                grid = np.concatenate([samples[labels == c][:10] for c in range(k)])
                images.save_grid(grid, out / f"grid_w{w:g}.png", scale=2, cols=10)

    def spread(values):
        return f"{np.mean(values):.3f} ± {np.std(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"

    table = [["real data (train vs held-out)", "", "", f"{floor:.2f}", f"{np.mean(class_floor):.2f}"]]
    for name in ("unconditional", "conditional, null class"):
        fds = [r["fd"] for r in rows if r["model"] == name]
        table.append([name, "", "", spread(fds), ""])
    for w in scales:
        rs = [r for r in rows if r["guidance"] == w]
        table.append(
            [
                f"conditional, w = {w:g}",
                spread([r["class_accuracy"] for r in rs]),
                str(rs[0]["nfe"]),
                spread([r["fd"] for r in rs]),
                spread([float(np.mean(r["fd_per_class"])) for r in rs]),
            ]
        )
    header = [
        "samples",
        "classified as the class asked for",
        "model evaluations",
        "FD vs held-out",
        "mean FD per class",
    ]
    md = markdown_table(header, table)
    print(md)
    out.mkdir(parents=True, exist_ok=True)
    (out / "guidance.md").write_text(
        f"digits 16x16, {a.per_class} samples per class, {len(seeds)} training seeds {seeds} (mean ± std), "
        f"{cond.sampling.sampler} {cond.sampling.steps} steps; FD in the feature classifier's space vs the "
        f"{len(held_out)} held-out images; per-class FD vs half of that class's train images\n\n{md}\n"
    )
    write_json(
        out / "guidance.json",
        {
            "protocol": {
                "seeds": seeds,
                "guidance": scales,
                "per_class": a.per_class,
                "sampler": cond.sampling.sampler,
                "steps": cond.sampling.steps,
                "num_held_out": len(held_out),
            },
            "floor_fd": floor,
            "class_floor_fd": class_floor,
            "rows": rows,
            "feature_space": {k_: v for k_, v in space.info.items() if k_ != "classifier_cache"},
        },
    )


if __name__ == "__main__":
    main()
