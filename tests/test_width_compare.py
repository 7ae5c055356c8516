import json

import jax
import numpy as np
import pytest

from benchmarks import width_compare as wc
from test_train_compare import _record


def _tiny(record: dict) -> dict:
    record["protocol"] = {
        **record["protocol"],
        "image_size": 8,
        "batch": 4,
        "unet_ch": 8,
        "unet_ch_mult": "1,2",
        "unet_attn": "",
        "cunet_nf": 4,
        "cunet_ch_mult": "2",
        "cunet_attn": "",
        "decay_start": 800,
        "decay_steps": 200,
    }
    return record


def test_each_model_scored_at_the_step_is_a_point_and_the_others_are_named():
    record = _tiny(_record([10.0, 12.0], [20.0, 22.0]))
    es, skipped = wc.entries(record, 1000, "rec")
    assert [(e["label"], e["fd"], e["seeds"]) for e in es] == [
        ("U-Net, ch 8", [10.0, 12.0], [0, 1]),
        ("cU-Net RK4 x1, nf 4", [20.0, 22.0], [0, 1]),
    ] and not skipped
    es, skipped = wc.entries(record, 6000, "rec")
    assert not es and skipped == [
        "rec unet: scored to step 1,000, not 6,000",
        "rec cunet_rk4: scored to step 1,000, not 6,000",
    ]


def test_a_record_without_the_newer_norm_groups_setting_is_rebuilt_with_its_old_value():
    protocol = _tiny(_record([1.0], [1.0]))["protocol"]
    assert wc.record_config(protocol, "unet").model.unet.norm_groups == 32
    c = wc.record_config({**protocol, "unet_norm_groups": 0}, "cunet_heun")
    assert (c.model.unet.norm_groups, c.model.cunet.nf, c.model.cunet.solver, c.training.num_steps) == (
        0,
        4,
        "heun",
        1000,
    )


def _only(record: dict, model: str) -> dict:
    record["runs"] = {n: r for n, r in record["runs"].items() if r["model"] == model}
    record["main_runs"] = sorted(record["runs"])
    return record


@pytest.mark.long
def test_the_report_measures_each_model_and_writes_json_markdown_and_plot(tmp_path):
    for name, record in (
        ("a", _only(_tiny(_record([10.0, 12.0], [20.0, 22.0])), "cunet_rk4")),
        ("b", _tiny(_record([30.0], [40.0], steps=(500,)))),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "train_compare.json").write_text(json.dumps(record))
    rec = wc.main(["--records", str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "c"),
                   "--out", str(tmp_path / "out"), "--step", "1000", "--repeats", "1"])  # fmt: skip
    assert rec["left_out"] == [
        "b unet: scored to step 500, not 1,000",
        "b cunet_rk4: scored to step 500, not 1,000",
        "c: no record yet",
    ]
    (e,) = rec["models"]
    assert e["label"] == "cU-Net RK4 x1, nf 4" and e["fd"] == [20.0, 22.0]
    assert e["gflop_per_step"] > 0 and np.isfinite(e["step_seconds"]) and e["step_seconds"] > 0
    assert json.loads((tmp_path / "out" / "width_compare.json").read_text())["models"][0]["params"] == 10
    assert "| cU-Net RK4 x1, nf 4 | 10 |" in (tmp_path / "out" / "width_compare.md").read_text()
    assert (tmp_path / "out" / "width_compare.png").stat().st_size > 10_000


def test_flops_count_lax_convolutions_and_the_timed_step_is_the_librarys():
    from benchmarks.op_profile import lax_convolutions
    from odediff.models import build_denoiser
    from odediff.schedule import make_schedule
    from odediff.train_state import make_optimizer
    from odediff.training import make_train_step

    c = wc.record_config({**_tiny(_record([1.0], [1.0]))["protocol"], "image_size": 2}, "cunet_heun")
    calls, flops = wc.step_fns({"x": c})  # 2x2 images: every 3x3 convolution is a matrix product in the library
    holder, batch = calls["x"].__defaults__

    def measure(lowered) -> tuple[float, int]:
        """GFLOP and convolutions of a lowered step."""
        return lowered.cost_analysis()["flops"] / 1e9, lowered.as_text().count("convolution")

    model, tx = build_denoiser(c.model), make_optimizer(c.training)
    with lax_convolutions():
        step = make_train_step(model, tx, make_schedule(c.diffusion.beta_schedule, c.diffusion.num_timesteps), c)
        lax_flops, lax_convs = measure(jax.jit(step).lower(holder["state"], batch))
    timed_flops, timed_convs = measure(holder["step"].lower(holder["state"], batch))
    assert flops["x"] == pytest.approx(lax_flops) and flops["x"] < timed_flops and timed_convs < lax_convs
