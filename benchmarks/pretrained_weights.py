"""The shipped models: exported from train_compare runs, and rescored.

python -m benchmarks.pretrained_weights export --workdir runs/<dir>/<run> --record benchmarks/results/<record> --name NAME
    [--seeds_record benchmarks/results/<the comparison's record>]
python -m benchmarks.pretrained_weights rescore --data <MNIST IDX dir> [--num 1000]

`export` writes the run's final EMA params in float16 with its card (config, the FD it scored
in the record, the comparison's seeds' FDs, the floor) to odediff/weights/NAME, and the test's
reference draw to tests/fixtures/pretrained/NAME.npz. `rescore` scores --num samples of every
shipped model, drawn as the record drew them (DDIM 25 steps, eta 0), against the same held-out
split twice: the record's own draw (its noise, all at once), which the float16 weights should
score within float rounding of the recorded FD, and a fresh draw as `sample.py --seed 0` draws
it, which shows how far another draw of the noise moves the FD (against the two seeds' gap).
Writes benchmarks/results/pretrained/rescore.json and .md.
"""

import argparse
import json
from pathlib import Path

import jax
import numpy as np

from benchmarks.common import fail, machine, markdown_table, write_json
from benchmarks.train_compare import SAMPLE_SEED
from odediff import data, parallel, pretrained
from odediff.evaluation import default_cache_dir, evaluate_samples, feature_space, real_embedding, score_params
from odediff.generation import generate, make_sample_fn, restore_run, with_sampling
from odediff.models import build_denoiser
from odediff.schedule import make_schedule

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "pretrained"
# The test's draw: few enough to run in the suite, through the whole sampler.
CHECK = {"num": 4, "seed": 0, "sampling": {"sampler": "ddim", "steps": 10, "eta": 0.0}}
SCORED_AS = {"sampler": "ddim", "steps": 25, "eta": 0.0}


def check_draw(config, params) -> np.ndarray:
    """The uint8 samples the test compares with the committed ones."""
    config = with_sampling(config, **CHECK["sampling"])
    return generate(config, params, CHECK["num"], seed=CHECK["seed"])[0]


def export(workdir: Path, record_dir: Path, name: str, seeds_dir: Path | None = None, replace: bool = False) -> dict:
    """Ships a run's final EMA params; its FD from `record_dir`, the seeds' FDs from `seeds_dir`
    (default the same record: a model retrained for shipping is set against its comparison's seeds)."""
    if (pretrained.WEIGHTS / name).exists() and not replace:
        fail("pretrained_weights.py", f"{pretrained.WEIGHTS / name} exists: pass --replace to write it again")
    config, params, step = restore_run(workdir)
    record = json.loads((record_dir / "train_compare.json").read_text())
    run = record["runs"][workdir.name]
    scored = {e["step"]: e for e in run["evals"]}
    if step not in scored:
        fail("pretrained_weights.py", f"{record_dir} scores {workdir.name} at {sorted(scored)}, not at step {step}")
    seeds_dir = seeds_dir or record_dir
    seeds = json.loads((seeds_dir / "train_compare.json").read_text())
    model = seeds["summary"]["models"][run["model"]]
    config.data.source = "idx:mnist"  # the training data's kind; sampling reads no data
    info = {
        "description": f"{run['model']} trained on the MNIST 10k test split at 16 px (9,000 images), seed {run['seed']}",
        "fd": scored[step]["fd"],
        "fd_seeds": dict(zip(map(str, model["seeds"]), model["fd"])),
        "floor_fd": record["summary"]["floor_fd_mean"],
        "floor_fd_draws": record["floor"]["fd"],
        "scored_as": f"1,000 DDIM samples ({record['protocol']['eval_steps']} steps, eta 0) against 1,000 held-out "
        "images, in a feature classifier's features",
        "record": str((record_dir.resolve() / "train_compare.json").relative_to(REPO)),
        "seeds_record": str((seeds_dir.resolve() / "train_compare.json").relative_to(REPO)),
        "run": workdir.name,
    }
    size = pretrained.export(config, params, step, info, pretrained.WEIGHTS / name)
    shipped_config, shipped = pretrained.load(name)
    FIXTURES.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(FIXTURES / f"{name}.npz", images=check_draw(shipped_config, shipped))
    print(f"{name}: {size / 1e6:.2f} MB in {pretrained.WEIGHTS / name}; FD {info['fd']:.2f} at step {step:,}")
    return info


def record_draw(config, params, num: int) -> np.ndarray:
    """The samples train_compare scored: `num` at once from the key it always samples with."""
    config = with_sampling(config, **SCORED_AS)
    schedule = make_schedule(config.diffusion.beta_schedule, config.diffusion.num_timesteps)
    images, _ = make_sample_fn(build_denoiser(config.model), schedule, config, num)(params, jax.random.key(SAMPLE_SEED))
    return data.to_uint8(parallel.to_host(images))


def record_fd(config, params, num: int, cache_dir: Path) -> float:
    """The FD of `record_draw` against the held-out images, in score_params' feature space."""
    space = feature_space(config.data, cache_dir)
    real = real_embedding(config.data, "test", num, 1, space, cache_dir)
    return float(evaluate_samples(record_draw(config, params, num), real, space)["fd"])


def rescore(data_dir: Path, num: int, out: Path) -> dict:
    rows = []
    for name in pretrained.available():
        config, params = pretrained.load(name)
        card = pretrained.card(name)
        config.data.source = f"idx:{data_dir.resolve()}"
        fresh, _ = score_params(
            config, params, card["step"], num=num, sampling=SCORED_AS, cache_dir=default_cache_dir(str(out))
        )
        gap = abs(np.subtract(*card["fd_seeds"].values())) if len(card["fd_seeds"]) == 2 else float("nan")
        rows.append(
            {
                "name": name,
                "recorded_fd": card["fd"],
                "recorded_fd_seeds": card["fd_seeds"],
                "record_draw_fd": record_fd(config, params, num, default_cache_dir(str(out))),
                "rescored_fd": fresh["fd"],
                "floor_fd": fresh["fd_real_vs_real"],
                "seeds_gap": gap,
            }
        )
        r = rows[-1]
        r["record_draw_within_seeds_gap"] = bool(abs(r["record_draw_fd"] - r["recorded_fd"]) < gap)
        r["within_seeds_gap"] = bool(abs(r["rescored_fd"] - r["recorded_fd"]) < gap)
        print(
            f"{name}: the record's draw {r['record_draw_fd']:.2f}, a fresh draw {r['rescored_fd']:.2f}, "
            f"recorded {card['fd']:.2f} (seeds gap {gap:.2f})",
            flush=True,
        )
    rec = {"machine": machine(), "num": num, "sampling": SCORED_AS, "record_sample_seed": SAMPLE_SEED, "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "rescore.json", rec)
    table = markdown_table(
        [
            "model",
            "recorded FD (seeds)",
            "the record's draw",
            "a fresh draw (seed 0)",
            "floor",
            "within the seeds' gap",
        ],
        [
            [
                r["name"],
                f"{r['recorded_fd']:.2f} ({', '.join(f'{v:.2f}' for v in r['recorded_fd_seeds'].values())})",
                f"{r['record_draw_fd']:.2f}",
                f"{r['rescored_fd']:.2f}",
                f"{r['floor_fd']:.2f}",
                " / ".join("yes" if r[k] else "no" for k in ("record_draw_within_seeds_gap", "within_seeds_gap")),
            ]
            for r in rows
        ],
    )
    (out / "rescore.md").write_text(f"{num} samples each, float16 weights, {rec['machine']}\n\n{table}\n")
    print(table)
    return rec


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="pretrained_weights.py", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export")
    e.add_argument("--workdir", type=Path, required=True)
    e.add_argument("--record", type=Path, required=True)
    e.add_argument("--name", required=True)
    e.add_argument("--seeds_record", type=Path, default=None, help="the record of the seeds to set it against")
    e.add_argument("--replace", action="store_true", help="write over a shipped model of that name")
    r = sub.add_parser("rescore")
    r.add_argument("--data", type=Path, required=True, help="the MNIST IDX directory the models were trained on")
    r.add_argument("--num", type=int, default=1000)
    r.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "pretrained")
    a = ap.parse_args(argv)
    parallel.use_cpu_cores(250)
    if a.command == "export":
        export(a.workdir, a.record, a.name, a.seeds_record, a.replace)
    else:
        rescore(a.data, a.num, a.out)


if __name__ == "__main__":
    main()
