"""README.md and docs/results.md against the committed files they quote.

Each figure the docs take from a file under benchmarks/results/ is read from that file,
formatted the way the docs print it and looked for in the text, so a rerun that changes
a file fails here until the docs say the new figure. Pure JSON and text: no JAX.
"""

import json
import re
import statistics
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
README = REPO / "README.md"
PAGE = REPO / "docs" / "results.md"
README_LIMIT = 12_000  # characters (bytes: the README is UTF-8)

CLAIM = (
    "The paper claims that its continuous U-Net needs about a quarter of a DDPM U-Net's "
    "parameters and 30% of its FLOPs, converges faster and is more robust to noise."
)
CPU_RUNS = ["mnist_compare", "mnist_long", "mnist_long12k", "mnist_long12k_rk4"]
GPU_RUNS = ["gpu", "gpu_h200"]


def _text(path: Path) -> str:
    """The doc with every run of whitespace made one space, so line breaks do not matter."""
    return " ".join(path.read_text().split())


def _json(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def _exact(v: float) -> str:
    """The mean of two 3-decimal scores, exactly: 0.6815, 0.682, 0.750."""
    s = f"{v:.4f}"
    return s[:-1] if s.endswith("0") else s


def _missing(text: str, quotes) -> list[str]:
    return [q for q in quotes if q not in text]


@pytest.fixture(scope="module")
def readme() -> str:
    return _text(README)


@pytest.fixture(scope="module")
def page() -> str:
    return _text(PAGE)


# --- the README itself ----------------------------------------------------------------


def test_the_readme_stays_short():
    size = len(README.read_bytes())
    assert size <= README_LIMIT, (
        f"README.md has {size} characters, more than {README_LIMIT}: move detail to docs/results.md"
    )


def test_the_readme_and_results_page_state_the_papers_claim_alike(readme, page):
    assert CLAIM in readme and CLAIM in page


def test_the_readme_shows_the_command_ci_runs(readme):
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line.startswith("python3 -m venv")]
    assert ci and ci[-1] in readme


def test_benchmark_commands_are_written_as_modules():
    for path in (README, PAGE):
        assert re.findall(r"python3? benchmarks/\w+\.py", path.read_text()) == [], path.name


def test_the_module_map_names_every_module(readme):
    modules = sorted((REPO / "odediff").glob("*.py")) + sorted((REPO / "odediff" / "models").glob("*.py"))
    names = [m.relative_to(REPO).as_posix() for m in modules]
    assert [n for n in names if f"`{n}`" not in readme] == []


# --- links ----------------------------------------------------------------------------


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_slug(m) for m in re.findall(r"^#+ (.+)$", _without_code(path.read_text()), flags=re.M)}


def _without_code(markdown: str) -> str:
    return re.sub(r"```.*?```", "", markdown, flags=re.S)


@pytest.mark.parametrize("doc", [README, PAGE], ids=lambda p: p.name)
def test_every_relative_link_and_image_exists(doc):
    targets = re.findall(r"\]\(([^)\s]+)\)", _without_code(doc.read_text()))
    assert targets
    broken = []
    for target in targets:
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists() or REPO not in file.parents:
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(target)
    assert broken == []


# --- the MNIST comparisons (train_compare.json) ---------------------------------------


def _seeds(values) -> str:
    return f"(seeds {values[0]:.2f}, {values[1]:.2f})"


@pytest.mark.parametrize("run", CPU_RUNS + GPU_RUNS)
def test_every_models_final_fd_per_seed_and_the_floor(run, readme, page):
    record = _json(f"{run}/train_compare.json")
    s = record["summary"]
    draws = [d["fd"] for d in record["floor"]["draws"]]
    assert f"{s['floor_fd_mean']:.2f}" == f"{statistics.mean(draws):.2f}"
    quotes = [f"{s['floor_fd_mean']:.2f} (draws " + ", ".join(f"{d:.2f}" for d in draws) + ")"]
    for m in s["models"].values():
        assert len(m["fd"]) == len(m["seeds"]) == 2
        quotes.append(f"{m['fd_mean']:.2f} {_seeds(m['fd'])}")
        quotes.append(f"{m['params']:,}")
        fd_over_floor = m["fd_over_floor"]
        assert any(q in page for q in (f"{fd_over_floor:.1f}x", f"{fd_over_floor:.2f}x", f"| {fd_over_floor:.1f} |"))
        quotes.append(f"{_exact(m['precision_mean'])} / {_exact(m['recall_mean'])}")
        quotes.append(f"{_exact(m['confident_fraction_mean'])}")
    assert _missing(page, quotes) == []
    # the README's table: every model's mean FD, the floor of the CPU runs, the step
    readme_quotes = [f"{m['fd_mean']:.2f}" for m in s["models"].values()]
    if run in CPU_RUNS:
        readme_quotes += [f"floor {s['floor_fd_mean']:.2f}", f"step {s['step']:,}"]
        assert f"step {s['step']:,}" in page
    assert _missing(readme, readme_quotes) == []


@pytest.mark.parametrize("run", CPU_RUNS)
def test_fd_per_run_and_scoring(run, page):
    record = _json(f"{run}/train_compare.json")
    rows = []
    for name in record["main_runs"]:
        r = record["runs"][name]
        fds = " | ".join(f"{e['fd']:.1f}" for e in r["evals"])
        if run == "mnist_compare":
            rows.append(f"| {r['model']} | {r['lr']} | {r['seed']} | {fds} |")
        else:
            rows.append(f"| seed {r['seed']} | {fds} |")
    assert _missing(page, rows) == []


def test_the_main_comparison_at_equal_steps_and_equal_seconds(readme, page):
    record = _json("mnist_compare/train_compare.json")
    s = record["summary"]
    assert f"step {s['step']}," in (RESULTS / "mnist_compare" / "train_compare.md").read_text()
    models = s["models"]
    unet_step = models["unet"]["step_seconds"]
    quotes = [f"U-Net {unet_step:.2f} s"]
    for name in ("cunet_rk4", "cunet_heun"):
        m = models[name]
        assert m["reach_unet_final_fd"] == [None, None]  # "no cU-Net run reaches the U-Net's final mean FD"
        per_seed = [
            e["fd"]
            for seed in (0, 1)
            for e in record["runs"][f"{name}_lr{m['lr']}_s{seed}"]["evals"]
            if e["step"] == m["equal_seconds_step"]
        ]
        quotes += [
            f"{m['step_seconds']:.2f} s ({m['step_seconds'] / unet_step:.2f}x)",
            f"{m['train_seconds_steps']:,.0f} s",
            "{:.1f} ({:.1f} and {:.1f}".format(m["unet_fd_at_equal_seconds_mean"], *m["unet_fd_at_equal_seconds"]),
            "{:.1f} (seeds {:.1f}, {:.1f}) at step {:,}".format(
                m["fd_at_equal_seconds_step_mean"], *per_seed, m["equal_seconds_step"]
            ),
            f"{m['fd_ratio_to_unet']:.2f}",
        ]
    assert _missing(page, quotes) == []
    # the cU-Nets' mean FD over the U-Net's, from step 1,500 on
    fd = {n: {e["step"]: e["fd"] for e in r["evals"]} for n, r in record["runs"].items() if n in record["main_runs"]}
    ratios = []
    for name in ("cunet_rk4", "cunet_heun"):
        c = [fd[f"{name}_lr{models[name]['lr']}_s{seed}"] for seed in (0, 1)]
        u = [fd[f"unet_lr{models['unet']['lr']}_s{seed}"] for seed in (0, 1)]
        for step in u[0]:
            assert min(c[0][step], c[1][step]) > max(u[0][step], u[1][step])  # the seeds apart at every scoring
            if step >= 1500:
                ratios.append((c[0][step] + c[1][step]) / (u[0][step] + u[1][step]))
    assert f"{min(ratios):.2f}-{max(ratios):.2f}x the U-Net's since step 1,500" in page


@pytest.mark.parametrize("run", ["mnist_long", "mnist_long12k", "mnist_long12k_rk4"])
def test_the_long_schedules_own_step_time_and_their_borrowed_ones(run, page):
    record = _json(f"{run}/train_compare.json")
    main = _json("mnist_compare/train_compare.json")["summary"]["models"]
    ((name, m),) = record["summary"]["models"].items()
    assert "unet" not in record["step_seconds"]  # timed alone: no ratio to the U-Net of its own
    assert f"{m['step_seconds'] * 1000:.0f} ms" in page  # its own time, quoted as its own
    steps = record["summary"]["step"]
    borrowed = main[name]["step_seconds"] * steps  # the main comparison's side-by-side step time
    unet_seconds = main["unet"]["step_seconds"] * _json("mnist_compare/train_compare.json")["summary"]["step"]
    assert (
        _missing(
            page,
            [
                f"{steps:,} {'Heun' if name == 'cunet_heun' else 'RK4'} steps are {borrowed:,.0f} s",
                f"{borrowed / unet_seconds:.2f}x the U-Net's",
                f"({unet_seconds:,.0f} s)",
                "borrow the main comparison's side-by-side step times",
            ],
        )
        == []
    )


@pytest.mark.parametrize("run", CPU_RUNS + GPU_RUNS)
def test_the_independent_classifier(run, page):
    record = _json(f"{run}/independent_classifier.json")
    for name, scores in record["sets"].items():
        f = scores["confident_fraction"]
        assert any(q in page for q in (f"{f:.2f}", f"{f:.3f}")), (name, f)
    assert f"{record['test_accuracy']:.3f}" in page


@pytest.mark.parametrize("run", GPU_RUNS)
def test_the_gpu_comparisons(run, readme, page):
    record = _json(f"{run}/train_compare.json")
    assert record["machine"].startswith("gpu:")
    device = re.search(r"H\d00", record["machine"]).group()
    s = record["summary"]
    ratios = [f"{m['fd_ratio_to_unet']:.2f}x" for m in s["models"].values() if m.get("fd_ratio_to_unet")]
    assert ratios
    assert _missing(page, ratios) == [] and _missing(readme, ratios + [f"one {device}"]) == []
    unet_step = s["models"]["unet"]["step_seconds"]
    quotes = [f"U-Net {unet_step * 1000:.0f} ms"]
    for name, label in (("cunet_rk4", "RK4"), ("cunet_heun", "Heun")):
        step = s["models"][name]["step_seconds"]
        quotes.append(f"{label} cU-Net {step * 1000:.0f} ms ({step / unet_step:.2f}x)")
    assert _missing(page, quotes) == []


def test_the_h100_runs_had_not_converged(page):
    record = _json("gpu/train_compare.json")
    falls = [r["evals"][-2]["fd"] / r["evals"][-1]["fd"] for n, r in record["runs"].items() if n in record["main_runs"]]
    assert f"{min(falls):.2f}-{max(falls):.2f}x its last" in page


# --- the paper's table and one ODE block ----------------------------------------------


def test_the_papers_table_on_the_cpu(readme, page):
    t = _json("paper_table_cpu.json")
    assert t["machine"].startswith("cpu:cpu x2") and t["repeats"] == 5
    c, u, r = t["models"]["cunet"], t["models"]["unet"], t["ratios"]
    assert c["params"] == 8_787_011  # the older stem, with its group norm: the page says so
    rows = [
        f"| parameters | {c['params']:,} | {u['params']:,} | {r['params']:.3f} |",
        f"| GFLOP per evaluation (XLA, 2 x MAC) | {c['gflop_per_image']:.2f} | {u['gflop_per_image']:.2f} | {r['gflop_per_image']:.3f} |",
        f"| forward, batch 16 (ms) | {c['forward_batch16_s'] * 1e3:.1f} | {u['forward_batch16_s'] * 1e3:.1f} | {r['forward_batch16_s']:.3f} |",
        f"| forward, batch 1 (ms) | {c['forward_batch1_s'] * 1e3:.2f} | {u['forward_batch1_s'] * 1e3:.2f} | {r['forward_batch1_s']:.3f} |",
        f"| DDIM 50, one image (s) | {c['ddim50_per_image_s']:.3f} | {u['ddim50_per_image_s']:.3f} | {r['ddim50_per_image_s']:.3f} |",
        f"| DDIM 256, one image (s) | {c['ddim256_per_image_s']:.3f} | {u['ddim256_per_image_s']:.3f} | {r['ddim256_per_image_s']:.3f} |",
        f"| training step, batch 16 (ms) | {c['train_step_batch16_s'] * 1e3:.1f} | {u['train_step_batch16_s'] * 1e3:.1f} | {r['train_step_batch16_s']:.3f} |",
        f"| training step GFLOP, batch 16 | {c['train_step_gflop']:.1f} | {u['train_step_gflop']:.1f} | {r['train_step_gflop']:.3f} |",
        "| training step memory, batch 16 (MiB, XLA) | {:.0f} | {:.0f} | {:.3f} |".format(
            c["train_step_peak_bytes_xla_batch16"] / 2**20,
            u["train_step_peak_bytes_xla_batch16"] / 2**20,
            r["train_step_peak_bytes_xla_batch16"],
        ),
    ]
    for s in t["solvers"]:
        rows.append(
            f"| {s['solver']} x{s['ode_steps']} | {s['evaluations_per_block']} | {s['gflop_per_image']:.2f} | "
            f"{s['flops_ratio_to_unet']:.3f} | {s['forward_batch16_s'] * 1e3:.1f} |"
        )
    assert _missing(page, rows + ["8,787,011", "older defaults"]) == []
    assert (
        _missing(
            readme,
            [
                f"{r['params']:.3f}",
                f"{r['gflop_per_image']:.3f}",
                f"{r['forward_batch16_s']:.3f}",
                f"{u['params']:,}",
                "older defaults",
            ],
        )
        == []
    )


def test_the_training_step_memory_with_todays_defaults(page):
    t = _json("paper_table_memory_cpu.json")
    assert t["machine"].startswith("cpu:cpu x2") and t["config"] == "configs/celeba64.py" and t["batch"] == 16
    c, u = t["models"]["cunet"], t["models"]["unet"]
    rows = []
    for tag, label in (
        ("", "as configured"),
        ("remat_", "every block rematerialised"),
        ("bf16_", "bfloat16 activations"),
        ("remat_bf16_", "rematerialised, bfloat16"),
    ):
        k = f"train_step_peak_bytes_xla_{tag}batch16"
        rows.append(f"| {label} | {c[k] / 2**20:.0f} | {u[k] / 2**20:.0f} | {c[k] / u[k]:.3f} |")
    saved = {
        m: 1 - v["train_step_peak_bytes_xla_bf16_batch16"] / v["train_step_peak_bytes_xla_batch16"]
        for m, v in t["models"].items()
    }
    rows.append(f"bfloat16 activations save the cU-Net {saved['cunet']:.0%} and the U-Net {saved['unet']:.0%}")
    assert _missing(page, rows) == []


def test_the_papers_table_at_batch_1_2_on_one_h200(readme, page):
    t = _json("paper_table_gpu_quick.json")
    assert t["machine"].startswith("gpu:NVIDIA H200") and t["quick"] and t["batch"] == 2
    c, u, r = t["models"]["cunet"], t["models"]["unet"], t["ratios"]
    old = _json("paper_table_cpu.json")["models"]["cunet"]["params"]
    solvers = {s["solver"]: s for s in t["solvers"]}
    quotes = [
        f"| parameters | {c['params']:,} | {u['params']:,} | {r['params']:.3f} |",
        f"| forward, batch 2 (ms) | {c['forward_batch2_s'] * 1e3:.1f} | {u['forward_batch2_s'] * 1e3:.1f} | {r['forward_batch2_s']:.3f} |",
        f"| forward, batch 1 (ms) | {c['forward_batch1_s'] * 1e3:.2f} | {u['forward_batch1_s'] * 1e3:.2f} | {r['forward_batch1_s']:.3f} |",
        f"{old - c['params']} parameters fewer",
        f"Euler x1 forward took {solvers['euler']['forward_batch2_s'] * 1e3:.1f} ms against RK4's "
        f"{solvers['rk4']['forward_batch2_s'] * 1e3:.1f} ms",
        "one H200",
    ]
    assert _missing(page, quotes) == []
    assert (
        _missing(
            readme,
            [
                f"{c['params']:,}",
                f"{r['forward_batch1_s']:.2f}x (batch 1)",
                f"{r['forward_batch2_s']:.2f}x (batch 2)",
                "one H200",
            ],
        )
        == []
    )


def test_op_counts(page):
    d = _json("op_counts.json")["settings"]
    big, small = d["celeba64"], d["mnist16"]
    quotes = [f"{big['cunet'][f]['ops']:,} ops against {big['unet'][f]['ops']:,}" for f in ("train_step",)]
    quotes += [
        f"{big['cunet']['forward']['ops']} ops against {big['unet']['forward']['ops']}",
        f"{small['cunet_heun']['forward']['ops']} ops against the U-Net's {small['unet']['forward']['ops']}",
        f"{big['cunet']['gflop_per_image'] / big['unet']['gflop_per_image']:.3f}x the U-Net's FLOPs",
        f"{small['cunet_heun']['gflop_per_image'] / small['unet']['gflop_per_image']:.2f}x its FLOPs",
    ]
    assert not _missing(page, quotes)


def test_one_ode_block(page):
    t = _json("ode_block.json")
    rows, unrolled_fwd, unrolled_grad, diffeqsolve_grad = [], [], [], []
    for r in t["results"]:
        rows.append(
            f"| {r['size']}x{r['size']}x{r['channels']} | {r['solver']} x1 | {r['mode']} | "
            f"{r['forward_ratio']:.2f} | {r['grad_ratio']:.2f} |"
        )
        if r["mode"] == "unrolled":
            unrolled_fwd.append(r["forward_ratio"])
            unrolled_grad.append(r["grad_ratio"])
        else:
            diffeqsolve_grad.append(r["grad_ratio"])
    above = [x for x in unrolled_fwd if x > 1]
    below = [x for x in unrolled_fwd if x <= 1]
    assert len(above) == 3 and len(below) == 1
    quotes = rows + [
        f"took {min(above):.2f}-{max(above):.2f}x a hand-written solver's forward time in three of the four cases "
        f"and {below[0]:.2f}x in the fourth",
        f"{min(unrolled_grad):.2f}-{max(unrolled_grad):.2f}x its forward+gradient time",
        f"{min(diffeqsolve_grad):.1f}-{max(diffeqsolve_grad):.1f}x in the forward+gradient",
    ]
    assert _missing(page, quotes) == []


# --- the other benchmarks -------------------------------------------------------------


def test_guidance(readme, page):
    g = _json("guidance/guidance.json")
    assert g["protocol"]["seeds"] == [0, 1]
    rows = {}
    for r in g["rows"]:
        rows.setdefault((r["model"], r["guidance"]), {})[r["seed"]] = r
    quotes = [
        f"| real data (train vs held-out) | | | {g['floor_fd']:.2f} | {statistics.mean(g['class_floor_fd']):.2f} |"
    ]
    for (model, w), seeds in rows.items():
        a, b = seeds[0], seeds[1]
        cells = [f"{(a['fd'] + b['fd']) / 2:.2f} ({a['fd']:.2f}, {b['fd']:.2f})"]
        if w is not None:
            acc = [a["class_accuracy"], b["class_accuracy"]]
            per_class = [statistics.mean(a["fd_per_class"]), statistics.mean(b["fd_per_class"])]
            cells = (
                [f"{_exact(sum(acc) / 2)} ({acc[0]:.3f}, {acc[1]:.3f})", str(a["nfe"])]
                + cells
                + [f"{sum(per_class) / 2:.2f} ({per_class[0]:.2f}, {per_class[1]:.2f})"]
            )
            quotes.append(f"| {model}, w = {w:g} | " + " | ".join(cells) + " |")
        else:
            quotes.append(f"| {model} | | | {cells[0]} | |")
    assert _missing(page, quotes) == []
    at_2 = rows[("conditional", 2.0)]
    share = f"{100 * (at_2[0]['class_accuracy'] + at_2[1]['class_accuracy']) / 2:.2f}".rstrip("0") + "%"
    assert share in page and share in readme


def test_nfe_sweep_and_sampling_time(readme, page):
    rows = _json("nfe_sweep/nfe_sweep.json")["rows"]
    for r in rows:
        assert f"{r['fd']:.1f}" in page, r
    timing = {r["run"]: r for r in _json("nfe_sweep/timing_10nfe/nfe_sweep.json")["rows"] if r["sampler"] == "dpmpp2m"}
    unet = timing["unet_lr0.004_s0"]["seconds_per_image"]
    quotes = [f"the U-Net {unet * 1e3:.1f} ms"]
    for run in ("cunet_rk4_lr0.008_s0", "cunet_heun_lr0.004_s0"):
        t = timing[run]["seconds_per_image"]
        quotes.append(f"{t * 1e3:.1f} ms ({t / unet:.2f}x)")
    assert _missing(page, quotes) == []
    dpm10 = [f"{timing[run]['fd']:.1f}" for run in ("unet_lr0.004_s0", "cunet_rk4_lr0.008_s0", "cunet_heun_lr0.004_s0")]
    assert _missing(readme, dpm10) == []


def test_denoising(readme, page):
    d = _json("denoise.json")
    assert not re.match(r"\w+:/", d["data_source"]), d["data_source"]  # no machine's own path
    by_model: dict[str, dict[float, dict]] = {}
    for r in d["results"]:
        by_model.setdefault(r["model"], {})[r["eps"]] = r
    cells = []
    for rows in by_model.values():
        for r in rows.values():
            cell = f"{r['psnr']:.2f} / {r['ssim']:.3f}"
            if "best_psnr" in r:
                cell += f" (best {r['best_psnr']:.2f} @ {r['best_step']})"
            cells.append(cell)
    assert _missing(page, cells) == []
    unet, cunets = (
        by_model.pop("unet_lr0.004_s0"),
        [by_model[m] for m in ("cunet_rk4_lr0.008_s0", "cunet_heun_lr0.004_s0")],
    )
    best = [unet[e]["best_psnr"] - c[e]["best_psnr"] for c in cunets for e in unet]
    after = [unet[e]["psnr"] - c[e]["psnr"] for c in cunets for e in unet]
    models = [unet] + cunets
    chain = [m[e]["best_psnr"] - m[e]["psnr"] for m in models for e in m]
    spread = [m[e]["psnr_std"] for m in models for e in m]
    filters = [
        m[e]["best_psnr"] - max(by_model["gaussian_blur"][e]["psnr"], by_model["wiener"][e]["psnr"])
        for m in models
        for e in m
    ]
    assert (
        _missing(
            page,
            [
                f"{min(best):.2f}-{max(best):.2f} dB at the best step",
                f"{min(after):.2f}-{max(after):.2f} dB after the chain",
                f"lose {min(chain):.2f}-{max(chain):.2f} dB",
                f"{min(spread):.1f}-{max(spread):.1f} dB",
                f"{min(filters):.1f}-{max(filters):.1f} dB",
            ],
        )
        == []
    )
    assert f"{min(after):.2f}-{max(best):.2f} dB" in readme


def test_input_pipeline_and_checkpoint_save(page):
    p = _json("input_pipeline.json")
    for source, label in (
        ("folder of 2,000 JPEGs 178x218", "folder of 2,000 JPEGs"),
        ("tfds celeb_a (mock_data)", "celeb_a"),
    ):
        rates = [f"{r['images_per_s']:,.0f}" for r in p["loader"] if r["source"] == source]
        row = next(line for line in PAGE.read_text().splitlines() if line.startswith("|") and label in line)
        assert _missing(row, rates) == [], row
    alone = p["loop"]["step alone"]["median"]
    for name, r in p["loop"].items():
        assert f"| {r['median'] * 1e3:.1f} | {r['median'] / alone:.3f} |" in page, name
    c = _json("checkpoint_save.json")
    assert f"{c['params']:,} parameters" in page
    for name, r in c["results"].items():
        step, save = statistics.median(r["step"]), statistics.median(r["save_step"])
        assert f"| {name} | {step * 1e3:.1f} | {save * 1e3:.1f} | {save / step:.2f} |" in page, name


def test_no_committed_result_names_a_path_of_the_machine_it_ran_on():
    def strings(node):
        if isinstance(node, dict):
            for v in node.values():
                yield from strings(v)
        elif isinstance(node, list):
            for v in node:
                yield from strings(v)
        elif isinstance(node, str):
            yield node

    absolute = [
        (f.relative_to(RESULTS).as_posix(), s)
        for f in sorted(RESULTS.rglob("*.json"))
        for s in strings(json.loads(f.read_text()))
        if re.match(r"(\w+:)?/\w", s)
    ]
    assert absolute == []


def test_the_comparison_across_widths(readme, page):
    from benchmarks.width_compare import markdown

    w = _json("mnist_widths/width_compare.json")
    rows = [line for line in markdown(w).splitlines() if line.startswith("| ") and not line.startswith("| model")]
    assert len(rows) == len(w["models"]) >= 4 and _missing(page, rows) == []
    e = {x["label"]: x for x in w["models"]}
    u16, heun, rk4 = e["U-Net, ch 16"], e["cU-Net Heun x1, nf 8"], e["cU-Net RK4 x1, nf 8"]
    u32, n16 = e["U-Net, ch 32"], e["cU-Net Heun x1, nf 16"]
    tflop = lambda x: x["gflop_per_step"] * x["steps"] / 1e3  # noqa: E731
    heun_12k_fd = _json("mnist_long12k/train_compare.json")["summary"]["models"]["cunet_heun"]["fd_mean"]
    ratio = lambda a, b: f"{tflop(a) / tflop(b):.2f}x"  # noqa: E731
    secs = lambda a, b: f"{a['step_seconds'] / b['step_seconds']:.2f}x"  # noqa: E731
    quotes = [
        f"{u16['params'] / heun['params']:.2f}x the nf-8 cU-Nets' parameters",
        f"with {ratio(u16, rk4)} the RK4 cU-Net's training FLOPs and {secs(u16, rk4)} its step time",
        f"at {ratio(heun, u16)} the ch-16 U-Net's FLOPs and {secs(heun, u16)} its step time",
        f"({ratio(n16, u32)} the ch-32 U-Net's FLOPs and {secs(n16, u32)} its step time)",
        f"ends {n16['fd_mean'] - u32['fd_mean']:.2f} above the ch-32 U-Net and {u16['fd_mean'] - n16['fd_mean']:.2f} "
        f"below the ch-16 U-Net, with {ratio(n16, u16)} the latter's FLOPs and {secs(n16, u16)} its step time",
        f"{heun['gflop_per_step'] * 12:.1f} TFLOP by this count",
        f"comes within {heun_12k_fd - n16['fd_mean']:.2f} of the nf-16 cU-Net's FD with "
        f"{heun['gflop_per_step'] * 12 / tflop(n16):.2f}x its FLOPs",
        f"{u32['step_seconds'] * 1e3:.0f} ms for the ch-32 U-Net's step against the "
        f"{_json('mnist_compare/train_compare.json')['summary']['models']['unet']['step_seconds'] * 1e3:.0f} ms",
        f"{n16['fd_mean']:.2f} (seeds {n16['fd'][0]:.2f}, {n16['fd'][1]:.2f})",
    ]
    assert n16["params"] / u32["params"] < 1.15
    assert max(u16["fd"]) < min(heun["fd"] + rk4["fd"]) and max(u32["fd"]) < min(n16["fd"])  # "both its seeds below"
    assert min(n16["fd"]) < min(u16["fd"]) < max(n16["fd"])  # "the ch-16 U-Net's seed 0 lies between the nf-16 seeds"
    assert _missing(page, quotes) == []
    readme_quotes = [
        f"{u16['fd_mean']:.2f} {_seeds(u16['fd'])}",
        f"{n16['fd_mean']:.2f} {_seeds(n16['fd'])}",
        f"{ratio(n16, u32)} its FLOPs",
    ]
    assert _missing(readme, readme_quotes) == []


def test_the_readme_lists_every_shipped_model_with_its_fd_and_floor(readme):
    from odediff import pretrained

    for name in pretrained.available():
        card = pretrained.card(name)
        others = [v for k, v in card["fd_seeds"].items() if v != card["fd"]]
        assert f"`{name}`" in readme and f"{card['fd']:.2f}" in readme and f"floor {card['floor_fd']:.2f}" in readme
        assert _missing(readme, [f"{v:.2f}" for v in others]) == []


def test_the_block_solver_table(page):
    from benchmarks.block_solver import markdown

    t = _json("block_solver/block_solver.json")
    rows = [" ".join(line.split()) for line in markdown(t).splitlines() if line.startswith("| ")]
    assert len(rows) == 23 and _missing(page, rows) == []
    heun_run, rk4_run = "cunet_heun_lr0.004_s0", "cunet_rk4_lr0.008_s0"
    for sampler in ("dpmpp2m", "ddim"):
        fd = {(r["run"], r["block_solver"], r["block_steps"]): r["fd"] for r in t["rows"] if r["sampler"] == sampler}
        heun = {k[1:]: v for k, v in fd.items() if k[0] == heun_run}
        rk4 = {k[1:]: v for k, v in fd.items() if k[0] == rk4_run}
        # "the Heun x1 cU-Net is best with its own Heun x1; a more accurate solve is worse"
        assert heun["heun", 1] < min(v for k, v in heun.items() if k != ("heun", 1))
        # "RK4 x2 matches or beats its own solver, and the cheaper solvers fail"
        assert rk4["rk4", 2] <= rk4["rk4", 1] < min(v for k, v in rk4.items() if k[0] != "rk4")
    at = {(r["run"], r["block_solver"], r["sampler"]): r for r in t["rows"] if r["block_steps"] == 1}
    heun, euler = (at[heun_run, b, "dpmpp2m"] for b in ("heun", "euler"))
    rerun = _json("mnist_rk4_rerun/train_compare.json")["summary"]["models"]["cunet_rk4"]["fd"]
    seeds = _json("mnist_compare/train_compare.json")["summary"]["models"]["cunet_rk4"]["fd"]
    quotes = [
        f"Euler x1 takes {euler['seconds_per_image'] / heun['seconds_per_image']:.2f}x",
        f"RK4: {rerun[0]:.2f} at step 6,000",
        f"seeds ended at {seeds[0]:.2f} and {seeds[1]:.2f})",
    ]
    assert len(rerun) == 1 and _missing(page, quotes) == []


def test_the_shipped_models_rescored_and_classified(page):
    rows = {r["name"]: r for r in _json("pretrained/rescore.json")["rows"]}
    cu, u32, u16 = (rows[f"mnist16-{n}"] for n in ("cunet-heun-nf16", "unet-ch32", "unet-ch16"))
    assert len(rows) == 3 and all(r["record_draw_within_seeds_gap"] and r["within_seeds_gap"] for r in rows.values())
    off = [abs(r["record_draw_fd"] - r["recorded_fd"]) for r in rows.values()]
    moved = [r["rescored_fd"] - r["recorded_fd"] for r in rows.values()]
    quotes = [
        f"{cu['record_draw_fd']:.2f} for the nf-16 cU-Net, {u32['record_draw_fd']:.2f} for the ch-32 U-Net and "
        f"{u16['record_draw_fd']:.2f} for the ch-16 U-Net",
        f"at most {max(off):.2f} from",
        f"{cu['rescored_fd']:.2f}, {u32['rescored_fd']:.2f} and {u16['rescored_fd']:.2f}",
        f"{min(moved):+.2f} to {max(moved):+.2f}",
        f"gaps ({cu['seeds_gap']:.2f}, {u32['seeds_gap']:.2f} and {u16['seeds_gap']:.2f})",
        f"is {cu['floor_fd']:.2f}",
    ]
    c = _json("pretrained/independent_classifier.json")
    sets = {n.removeprefix("samples_mnist16-"): s for n, s in c["sets"].items()}
    assert set(sets) == {"held-out real images", "cunet-heun-nf16", "unet-ch32", "unet-ch16"}
    quotes += [
        f"accuracy {c['test_accuracy']:.3f}",
        f"labels {sets['cunet-heun-nf16']['confident_fraction']:.3f} of the nf-16 cU-Net's samples, "
        f"{sets['unet-ch32']['confident_fraction']:.3f} of the ch-32 U-Net's",
        f"{sets['unet-ch16']['confident_fraction']:.3f} of the ch-16 U-Net's",
        f"at least {100 * min(min(s['confident_histogram']) for n, s in sets.items() if 'held-out' not in n):.1f}%",
    ]
    assert _missing(page, quotes) == []


def test_the_papers_table_rerun_with_todays_defaults_and_bfloat16_steps(page):
    t = _json("paper_table_cpu_today.json")
    assert t["machine"].startswith("cpu:cpu x2") and t["repeats"] == 5 and t["devices"] == 2
    c, u = t["models"]["cunet"], t["models"]["unet"]
    assert c["params"] == 8_786_979 and u["params"] == 35_746_307

    def row(label, key, fmt, scale=1.0):
        return f"| {label} | {fmt(c[key] * scale)} | {fmt(u[key] * scale)} | {c[key] / u[key]:.3f} |"

    rows = [
        row("forward, batch 16 (ms)", "forward_batch16_s", lambda v: f"{v:.1f}", 1e3),
        row("DDIM 256, one image (s)", "ddim256_per_image_s", lambda v: f"{v:.3f}"),
        row("training step, batch 16 (ms)", "train_step_batch16_s", lambda v: f"{v:.1f}", 1e3),
        row("training step, batch 16, bfloat16 compute (ms)", "train_step_bf16_batch16_s", lambda v: f"{v:.1f}", 1e3),
        row("training step GFLOP, batch 16", "train_step_gflop", lambda v: f"{v:.1f}"),
    ]
    rows += [
        f"| {s['solver']} x{s['ode_steps']} | {s['evaluations_per_block']} | {s['gflop_per_image']:.2f} | "
        f"{s['flops_ratio_to_unet']:.3f} | {s['forward_batch16_s'] * 1e3:.1f} |"
        for s in t["solvers"]
    ]
    quotes = [
        f"the cU-Net's step takes {c['train_step_bf16_over_f32']:.3f}x its float32 time, the U-Net's "
        f"{u['train_step_bf16_over_f32']:.3f}x",
        f"training step {c['train_step_batch16_s'] / u['train_step_batch16_s']:.3f}, below its FLOPs ratio "
        f"({c['train_step_gflop'] / u['train_step_gflop']:.3f})",
    ]
    assert c["train_step_bf16_over_f32"] > 1 > u["train_step_bf16_over_f32"] > 0.9  # "buys little"
    assert _missing(page, rows + quotes) == []


def _op_profile_rows(runs: list[dict]) -> list[str]:
    """The docs' table of the two op_profile runs, row by row (each cell: run 1, run 2)."""
    rows = []
    for m in ("cunet_heun", "cunet_rk4", "unet"):
        for part, name in (("train_step", "training step"), ("forward", "forward")):
            cells = [
                ", ".join(f"{r['models'][m][part]['lax_conv_wall_ms']:.1f}" for r in runs),
                ", ".join(f"{r['models'][m][part]['wall_ms']:.1f}" for r in runs),
            ]
            if m != "unet":
                ratios = [r["ratios_to_unet"][m][part] for r in runs]
                cells += [
                    ", ".join(f"{q['lax_conv_time_over_flops']:.2f}" for q in ratios),
                    ", ".join(f"{q['time_over_flops']:.2f}" for q in ratios),
                ]
            else:
                cells += ["", ""]
            rows.append(f"| {m} | {name} | " + " | ".join(cells) + " |")
    return rows


def test_op_profile(page, readme):
    runs = [_json("op_profile/op_profile.json"), _json("op_profile_lax_conv/op_profile.json")]
    assert [r["models"]["cunet_heun"]["train_step"]["profiled"] for r in runs] == ["library", "lax convolutions"]
    ratios = [
        r["ratios_to_unet"][m][p] for r in runs for m in ("cunet_heun", "cunet_rk4") for p in ("train_step", "forward")
    ]
    now = [q["time_over_flops"] for q in ratios]
    before = [q["lax_conv_time_over_flops"] for q in ratios]
    heun = runs[1]["models"]["cunet_heun"]["forward"]
    slow = [o for o in heun["top_ops"] if "ODEBlock_3" in o["source"]]
    diffs = [
        runs[0]["models"][m][p]["max_rel_diff_to_lax_conv"]
        for m in runs[0]["models"]
        for p in ("train_step", "forward")
    ]
    quotes = _op_profile_rows(runs) + [
        f"within {max(now):.2f}x of its FLOPs ratio (before: {min(before):.2f}-{max(before):.2f}x)",
        f"{sum(o['share'] for o in slow):.0%} of its op time in four convolutions",
        f"largest relative difference {max(diffs):.0e}",
    ]
    rows = {m: [r["models"][m][p] for r in runs for p in ("train_step", "forward")] for m in runs[0]["models"]}
    speedup = {m: [q["lax_conv_wall_ms"] / q["wall_ms"] for q in v] for m, v in rows.items()}
    cunets = [m for m in rows if m != "unet"]
    step_speedup = [s for m in cunets for s in speedup[m][0::2]]
    forward_speedup = [s for m in cunets for s in speedup[m][1::2]]
    conv = {m: [q["categories"]["conv/dot"]["ms"] / q["op_ms"] for q in v[:2]] for m, v in rows.items()}  # run 1
    rate = {m: [q["conv_gflop_per_s"] for q in v[:2]] for m, v in rows.items()}
    cu_conv, cu_rate = [c for m in cunets for c in conv[m]], [c for m in cunets for c in rate[m]]
    step = runs[0]["models"]["cunet_heun"]["train_step"]
    quotes += [
        f"steps run {min(step_speedup):.2f}-{max(step_speedup):.2f}x faster than before",
        f"forwards {min(forward_speedup):.2f}-{max(forward_speedup):.2f}x faster",
        f"within the noise ({min(speedup['unet']):.2f}-{max(speedup['unet']):.2f}x)",
        f"take {min(cu_conv):.0%}-{max(cu_conv):.0%} of the cU-Nets' op time".replace("%-", "-"),
        f"{min(conv['unet']):.0%}-{max(conv['unet']):.0%} of the U-Net's".replace("%-", "-"),
        f"at {min(cu_rate):.0f}-{max(cu_rate):.0f} GFLOP/s of op time against the U-Net's "
        f"{min(rate['unet']):.0f}-{max(rate['unet']):.0f}",
        f"{step['gflop_as_compiled']:.2f} GFLOP against {step['gflop']:.2f} for the Heun step",
        f"about {statistics.mean(o['ms'] for o in slow):.0f} ms each for {slow[0]['gflop']:.3f} GFLOP",
    ]
    assert len(slow) == 4 and max(now) < 1.3
    assert _missing(page, [" ".join(q.split()) for q in quotes]) == []
    assert f"time ratio within {max(now):.2f}x of its FLOPs ratio" in readme
    assert f"cU-Net steps now {min(step_speedup):.2f}-{max(step_speedup):.2f}x faster" in readme
