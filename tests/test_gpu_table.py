"""benchmarks/gpu_table.py: its dry run at a tiny size, its option-set children, its peaks, and gpu_check.sh."""

import json
import math
import os
import subprocess
import sys

import pytest

from benchmarks import gpu_table
from helpers import REPO

TRAIN_KEYS = {"dtype", "batch", "ms_per_step", "images_per_s", "tflops", "mfu", "memory_bytes"}


def positive(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


@pytest.mark.long
def test_gpu_table_dry_run_writes_every_part_in_the_json_layout(tmp_path):
    # as gpu_check.sh runs it; one CPU device, and a process of its own for the dry run's compile settings
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    r = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_table", "--dry_run", "--out", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads((tmp_path / "gpu_table.json").read_text())
    assert rec["machine"].startswith("cpu:") and rec["dry_run"] and rec["config"] == "configs/celeba64.py"
    assert set(rec["models"]) == {"cunet", "unet"}
    for m in rec["models"].values():
        assert {"train", "ddim50", "loop_over_step"} <= set(m) and positive(m["params"])
        (row,) = m["train"]
        assert TRAIN_KEYS <= set(row) and (row["dtype"], row["batch"]) == ("float32", 4)
        assert all(positive(row[k]) for k in ("ms_per_step", "images_per_s", "tflops", "memory_bytes"))
        assert row["mfu"] is None  # no peak for a CPU
        assert math.isclose(row["images_per_s"], 4e3 / row["ms_per_step"])
        (ddim,) = m["ddim50"]
        assert ddim["batch"] == 4 and positive(ddim["images_per_s"]) and ddim["steps"] == 50
    loop = rec["models"]["cunet"]["loop"]
    assert (
        positive(rec["models"]["cunet"]["loop_over_step"])
        and loop["loop_over_step"] == rec["models"]["cunet"]["loop_over_step"]
    )
    assert loop["steps_timed"] == 4 and positive(loop["loop_ms_per_step"]) and positive(loop["step_alone_ms_per_step"])
    assert rec["models"]["unet"]["loop_over_step"] is None  # the dry run's loop: first model only
    (ratio,) = rec["ratios"]["train"]
    train = {n: rec["models"][n]["train"][0]["images_per_s"] for n in ("cunet", "unet")}
    assert math.isclose(ratio["cunet_over_unet_images_per_s"], train["cunet"] / train["unet"])
    assert positive(rec["ratios"]["ddim50"][0]["cunet_over_unet_images_per_s"])
    md = (tmp_path / "gpu_table.md").read_text()
    assert "| cunet | float32 | 4 |" in md and "DDIM 50" in md and "loop / step" in md


def test_gpu_table_option_sets_run_in_child_processes_and_are_skipped_when_time_runs_short(tmp_path):
    rec = gpu_table.main(
        ["--parts", "flags", "--models", "cunet", "--xla_flag_sets=--xla_no_such_option=1", "--out", str(tmp_path)]
    )
    (child,) = rec["xla_flags"]
    # the child got as far as XLA reading its flags (a wrong command line would stop in argparse)
    assert child["returncode"] != 0 and "xla_no_such_option" in " ".join(child["error"])
    assert (
        json.loads((tmp_path / "gpu_table.json").read_text())["xla_flags"][0]["xla_flags"] == "--xla_no_such_option=1"
    )
    rec = gpu_table.main(
        [
            "--parts",
            "flags",
            "--models",
            "cunet",
            "--xla_flag_sets=--a=1;--b=2",
            "--time_limit",
            "5",
            "--out",
            str(tmp_path),
        ]
    )
    assert [f["xla_flags"] for f in rec["xla_flags"]] == ["--a=1", "--b=2"] and all(
        "skipped" in f for f in rec["xla_flags"]
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--models", "cunet,resnet"],
        ["--parts", "train,fid"],
        ["--dtypes", "float16"],
        ["--batches", "128,0"],
        ["--sample_batches", "x"],
        ["--config", "no/such.py"],
    ],
)
def test_gpu_table_refuses_a_wrong_command_line_with_exit_2(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        gpu_table.main(argv + ["--out", str(tmp_path)])
    assert e.value.code == 2 and "gpu_table" in capsys.readouterr().err
    assert not (tmp_path / "gpu_table.json").exists()


def test_gpu_table_takes_the_dense_peak_of_each_datasheet_device_by_its_name():
    names = {
        "NVIDIA H100 80GB HBM3": "H100 SXM",
        "NVIDIA H100 PCIe": "H100 PCIe",
        "NVIDIA H100 NVL": "H100 NVL",
        "NVIDIA H200": "H200 SXM",
        "NVIDIA H200 NVL": "H200 NVL",
        "NVIDIA A100-SXM4-80GB": "A100",
        "NVIDIA A100 80GB PCIe": "A100",
        "Tesla V100-SXM2-16GB": None,
        "cpu": None,
    }
    assert {k: gpu_table.peak_name(k) for k in names} == names
    for peaks in gpu_table.PEAK_TFLOPS.values():  # dense bfloat16 is twice dense TF32 on these parts
        assert peaks["bfloat16"] == pytest.approx(2 * peaks["float32"], rel=0.01)


def test_gpu_table_part_of_gpu_check_is_valid_bash_and_runs_the_module():
    script = REPO / "benchmarks" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True, check=False).returncode == 0
    assert "-m benchmarks.gpu_table --out" in script.read_text()
