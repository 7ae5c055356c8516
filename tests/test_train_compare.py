"""benchmarks/train_compare.py and its report: runs sharing a compiled step, the record's rules, the statistics."""

import argparse
import json
import sys

import numpy as np
import pytest

from benchmarks import compare_report as cr
from benchmarks import train_compare as tc
from test_data import write_idx


def _record(unet_fds, cunet_fds, steps=(500, 1000)):
    runs = {}
    for model, finals in (("unet", unet_fds), ("cunet_rk4", cunet_fds)):
        for seed, final in enumerate(finals):
            evals = [
                {
                    "step": s,
                    "train_seconds": 10.0 * s,
                    "fd": final * (2.0 if s < steps[-1] else 1.0),
                    **{k: 0.5 for k in cr.SCORES if k != "fd"},
                }
                for s in steps
            ]
            runs[f"{model}_s{seed}"] = {"model": model, "seed": seed, "lr": 1e-3, "params": 10, "evals": evals}
    floor = {"num": 1000, **{k: [1.0, 2.0, 3.0] for k in cr.SCORES}}
    return {
        "protocol": {"image_size": 16, "batch": 64, "eval_steps": 25},
        "floor": floor,
        "runs": runs,
        "main_runs": sorted(runs),
        "lr": {"unet": 1e-3, "cunet_rk4": 1e-3},
        "step_seconds": {"unet": {"median": 4.0}, "cunet_rk4": {"median": 2.0}},
    }


def _args(tmp_path, **kw) -> argparse.Namespace:
    """A tiny experiment's settings on 40 random 28x28 images."""
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 256, (40, 28, 28)).astype(np.uint8), False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", rng.integers(0, 10, 40).astype(np.uint8), False)
    return argparse.Namespace(
        **{
            **tc.PRESETS["cpu"],
            "data": str(tmp_path),
            "image_size": 8,
            "batch": 4,
            "cunet_ch_mult": "2",
            "cunet_attn": "",
            "decay_steps": 0,
            "ema": 0.999,
            "steps": 10,
            "eval_steps": 2,
            "save_every": 0,
            **kw,
        }
    )


@pytest.mark.long
def test_the_runs_of_a_model_share_one_compiled_step_and_each_keeps_its_rate_and_seed(tmp_path):
    from odediff import data as data_lib
    from odediff import parallel

    a = _args(tmp_path)
    mesh, record = parallel.make_mesh(), {}
    source = data_lib.load_source(tc.make_config(a, "cunet_heun", 1e-3, 0).data, "train")

    def runs(runs_dir, settings):
        a.runs_dir, cache = str(tmp_path / runs_dir), {}
        out = [tc.Run(a, "cunet_heun", lr, seed, record, mesh, cache) for lr, seed in settings]
        for r in out:
            r.train_to(3, source)
            r.close()
        return out, cache

    (first, second), cache = runs("shared", [(1e-3, 0), (4e-3, 1)])
    a.save_every = 2  # a checkpoint on the way, the same steps
    (alone,), _ = runs("alone", [(4e-3, 1)])
    assert sorted(p.name for p in (tmp_path / "alone" / alone.name / "checkpoints").iterdir()) == ["2", "3"]
    (programs,) = cache["training"].values()
    assert programs.compiled is not None
    assert second.losses == alone.losses and first.losses[0] != second.losses[0]
    timed = tc.time_models({"cunet_heun": second}, source, steps=1, repeats=2)  # the shared step, on a copy
    assert len(timed["cunet_heun"]["all"]) == 2 and second.step == 3
    resumed = tc.Run(a, "cunet_heun", 4e-3, 1, record, mesh, {})  # the checkpoint's losses and seconds
    assert resumed.step == 3 and resumed.losses == alone.losses and resumed.train_seconds == alone.train_seconds
    resumed.close()


def test_a_seed_added_on_its_own_joins_the_scored_seeds_and_a_run_without_its_checkpoint_stops(tmp_path):
    record = _record([10.0], [5.0, 6.0])
    chosen = {"cunet_rk4": 1e-3}
    assert tc.main_runs(record, ["cunet_rk4_s2"], chosen) == ["cunet_rk4_s0", "cunet_rk4_s1", "cunet_rk4_s2"]
    assert tc.main_runs(record, ["cunet_rk4_s2"], {"cunet_rk4": 2e-3}) == ["cunet_rk4_s2"]  # the rate moved

    a = _args(tmp_path, runs_dir=str(tmp_path / "empty"))
    runs = {
        "cunet_heun_lr0.001_s0": {"model": "cunet_heun", "lr": 1e-3, "seed": 0, "evals": [{"step": 500, "fd": 9.0}]}
    }
    with pytest.raises(SystemExit) as e:
        tc.Run(a, "cunet_heun", 1e-3, 0, runs, None, {})
    assert e.value.code == 2 and runs["cunet_heun_lr0.001_s0"]["evals"] == [{"step": 500, "fd": 9.0}]
    assert not (tmp_path / "empty").exists()


def test_scores_from_another_feature_classifier_are_not_mixed_with_the_record():
    record = _record([10.0], [5.0])  # floor FD draws 1, 2, 3
    same = {"num": 1000, "fd": [1.0, 2.0, 3.0 * (1 + 1e-5)]}  # float noise of the same classifier
    assert tc.other_feature_space(record, same) == ""
    assert tc.other_feature_space({}, same) == "" and tc.other_feature_space(record, {**same, "num": 250}) == ""
    other = {"num": 1000, "fd": [1.0, 2.1, 3.0]}
    assert "floor FD is 2.0000, here 2.0333" in tc.other_feature_space(record, other)


def test_a_ratio_only_where_the_seeds_do_not_overlap():
    s = cr.summarize(_record([10.0, 12.0], [5.0, 6.0]))
    assert s["step"] == 1000 and s["floor_fd_mean"] == 2.0
    c = s["models"]["cunet_rk4"]
    assert c["fd_mean"] == 5.5 and c["fd_ratio_to_unet"] == 5.5 / 11.0
    assert c["fd_over_floor"] == 5.5 / 2.0
    # the U-Net's final mean FD is 11: seed 0 is at 10 by step 500, seed 1 (12 there) only by
    # step 1000; seconds are steps x the step time measured side by side (not the runs' wall clock)
    assert c["reach_unet_final_fd"] == [(500, 1000.0), (1000, 2000.0)]
    # at step 1000 the cU-Net has trained 2000 s: where the U-Net's seeds stood then (step 500)
    np.testing.assert_allclose(c["unet_fd_at_equal_seconds"], [20.0, 24.0])
    assert np.isclose(c["unet_fd_at_equal_seconds_mean"], 22.0)

    overlapping = cr.summarize(_record([10.0, 12.0], [9.0, 11.0]))
    assert overlapping["models"]["cunet_rk4"]["fd_ratio_to_unet"] is None
    one_seed = cr.summarize(_record([10.0], [5.0]))
    assert one_seed["models"]["cunet_rk4"]["fd_ratio_to_unet"] is None  # no spread to judge by


def test_the_markdown_holds_the_summary_and_every_runs_fd_per_step():
    record = _record([10.0, 12.0], [5.0, 6.0])
    md = cr.markdown(record, cr.summarize(record))
    assert md.startswith("step 1000, 2 seeds, FD of 1000 samples vs held-out (mean ± std over seeds)\n\n")
    assert "| cunet_rk4 | 10 | 0.001 | 5.50 ± 0.50 | 2.8 | 0.500 / 0.500 | 0.500 / 0.50 | 2000 | 10000 | 22.00 |" in md
    assert "| unet | 0.001 | 1 | 24.0 | 12.0 |" in md  # every run's FD per step
    assert "| cunet_rk4 / unet (mean FD) |  |  | 0.50 | 0.50 |" in md  # 11 / 22, then 5.5 / 11


def test_the_report_writes_the_summary_into_the_record_with_its_markdown_and_plot(tmp_path):
    record = _record([10.0, 12.0], [5.0, 6.0])
    record["machine"] = "gpu:the one it ran on"
    cr.write_report(record, tmp_path)
    saved = json.loads((tmp_path / "train_compare.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(record["summary"])) and saved["machine"] == "gpu:the one it ran on"
    assert (tmp_path / "train_compare.md").read_text() == cr.markdown(record, record["summary"])
    assert (tmp_path / "train_compare.png").stat().st_size > 0
    cr.write_report({"runs": {}}, tmp_path / "none")  # no main runs yet: nothing to report
    assert not (tmp_path / "none").exists()


def test_fd_at_equal_seconds_interpolates_in_log_fd_and_never_extrapolates():
    evals = [{"step": 500, "fd": 20.0}, {"step": 1000, "fd": 10.0}]
    assert np.isclose(cr.fd_at_seconds(evals, 4.0, 3000.0), np.sqrt(200.0))
    assert np.isclose(cr.fd_at_seconds(evals, 4.0, 4000.0), 10.0)
    assert cr.fd_at_seconds(evals, 4.0, 1999.0) is None and cr.fd_at_seconds(evals, 4.0, 4001.0) is None
    record = _record([10.0, 12.0], [5.0, 6.0])
    record["step_seconds"]["cunet_rk4"]["median"] = 1.0  # 1000 s: before the U-Net's first scoring
    assert cr.summarize(record)["models"]["cunet_rk4"]["unet_fd_at_equal_seconds_mean"] is None


def test_after_the_decay_starts_equal_time_is_taken_at_its_start():
    record = _record([10.0, 12.0], [5.0, 6.0])
    record["protocol"]["decay_start"] = 500  # the step-1000 scores are after a decay the U-Net's 500 s lacks
    c = cr.summarize(record)["models"]["cunet_rk4"]
    assert c["equal_seconds_step"] == 500 and c["fd_at_equal_seconds_step_mean"] == 11.0
    assert c["train_seconds_steps"] == 1000.0 and c["unet_fd_at_equal_seconds"] == [
        None,
        None,
    ]  # before its first scoring
    record["step_seconds"]["cunet_rk4"]["median"] = 4.0  # 2000 s: the U-Net's step 500
    summary = cr.summarize(record)
    assert summary["models"]["cunet_rk4"]["unet_fd_at_equal_seconds_mean"] == 22.0
    assert "| 22.00 (vs 11.00 at step 500) |" in cr.markdown(record, summary)


def test_final_scores_use_the_last_step_every_run_reached():
    record = _record([10.0, 12.0], [5.0, 6.0])
    record["runs"]["unet_s1"]["evals"].pop()  # one run is a turn behind
    step, per_model = cr.final_scores(record)
    assert step == 500
    assert sorted(r["fd"] for r in per_model["cunet_rk4"]) == [10.0, 12.0]
    assert np.isclose(sum(r["fd"] for r in per_model["unet"]), 20.0 + 24.0)


def test_under_a_time_budget_each_run_is_scored_where_its_budget_ended():
    record = _record([10.0, 12.0], [5.0, 6.0], steps=(500, 1000, 1500))
    record["protocol"]["time_budget"] = 20.0
    for n in ("unet_s0", "unet_s1"):  # the slower model spent its seconds by step 1000
        record["runs"][n]["evals"].pop()
    step, per_model = cr.final_scores(record)
    assert step == 0
    assert [r["step"] for r in per_model["unet"]] == [1000, 1000] and [r["fd"] for r in per_model["unet"]] == [
        20.0,
        24.0,
    ]
    assert [r["step"] for r in per_model["cunet_rk4"]] == [1500, 1500]
    summary = cr.summarize(record)
    c = summary["models"]["cunet_rk4"]
    assert c["fd_mean"] == 5.5 and c["fd_ratio_to_unet"] == 5.5 / 22.0
    assert "unet_fd_at_equal_seconds" not in c  # equal seconds by construction
    assert "after 20 s of training (steps cunet_rk4 1,500/1,500; unet 1,000/1,000)" in cr.markdown(record, summary)


def test_a_record_continues_with_its_own_settings_or_a_wider_learning_rate_grid_only():
    assert tc.extends_grid("5e-4,1e-3,2e-3", "5e-4,1e-3,2e-3,4e-3,8e-3")
    assert tc.extends_grid("1e-3,2e-3", "0.002,0.001")  # same rates, other spelling
    assert not tc.extends_grid("5e-4,1e-3,2e-3", "1e-3,2e-3,4e-3")  # drops a rate already swept
    same = {k: 1 for k in tc.PROTOCOL} | {"lrs": "1e-3", "decay_steps": 0, "decay_start": None}
    record = {"protocol": same}
    assert tc.protocol_change(record, same) == ""
    assert tc.protocol_change(record, {**same, "lrs": "1e-3,2e-3"}).startswith("extending the learning-rate sweep")
    with pytest.raises(ValueError, match=r"other settings \(decay_steps, decay_start\)"):
        tc.protocol_change(record, {**same, "decay_steps": 500, "decay_start": 1000})
    with pytest.raises(ValueError, match=r"other settings \(lrs\)"):
        tc.protocol_change(record, {**same, "lrs": "2e-3"})


def test_report_only_rewrites_the_report_and_other_settings_stop_with_exit_2(tmp_path, monkeypatch, capsys):
    record = _record([10.0, 12.0], [5.0, 6.0])
    args = ["--out", str(tmp_path), "--report_only"]
    record["protocol"] = {k: getattr(tc.parse_args(args), k) for k in tc.PROTOCOL}
    (tmp_path / "train_compare.json").write_text(json.dumps(record))
    monkeypatch.setattr(sys, "argv", ["train_compare.py", *args])
    tc.main()
    assert (tmp_path / "train_compare.md").read_text().startswith("step 1000, 2 seeds")
    monkeypatch.setattr(sys, "argv", ["train_compare.py", *args, "--batch", "32"])
    with pytest.raises(SystemExit) as e:
        tc.main()
    assert e.value.code == 2 and "other settings (batch)" in capsys.readouterr().err
