import json

import pytest

from benchmarks import block_solver as bs
from benchmarks import nfe_sweep


def test_every_cunet_at_every_block_setting_and_the_unets_with_the_samplers_alone_are_scored(tmp_path, monkeypatch):
    scored = []

    def score_run(workdir, *, num, sampling, batch, cache_dir):
        scored.append((workdir, sampling))
        cost = {"euler": 1, "heun": 2, "midpoint": 2, "rk4": 4}.get(sampling.get("block_solver"), 3)
        cost *= sampling.get("block_steps", 1)
        nfe = sampling["steps"]
        result = {"model": "unet" if workdir == "u" else "cunet", "step": 6000, "nfe": nfe, "fd": 30.0 / cost}
        return {**result, "sampler": sampling["sampler"], "steps": nfe, "sample_seconds": 0.01 * num * cost * nfe,
                "sampling_used": str(sampling)}, None  # fmt: skip

    monkeypatch.setattr(nfe_sweep, "score_run", score_run)
    monkeypatch.setattr(bs.parallel, "use_cpu_cores", lambda batch: None)
    rec = bs.main(["--cunets", "c", "--unets", "u", "--blocks", "euler:1", "rk4:2", "--samplers", "dpmpp2m:10",
                   "ddim:25", "--num", "4", "--cache_dir", str(tmp_path), "--out", str(tmp_path / "out")])  # fmt: skip
    assert scored == [
        ("c", {"sampler": "dpmpp2m", "steps": 10, "block_solver": "euler", "block_steps": 1}),
        ("c", {"sampler": "dpmpp2m", "steps": 10, "block_solver": "rk4", "block_steps": 2}),
        ("u", {"sampler": "dpmpp2m", "steps": 10}),
        ("c", {"sampler": "ddim", "steps": 25, "block_solver": "euler", "block_steps": 1}),
        ("c", {"sampler": "ddim", "steps": 25, "block_solver": "rk4", "block_steps": 2}),
        ("u", {"sampler": "ddim", "steps": 25}),
    ]
    assert rec["rows"][1]["seconds_per_image"] == pytest.approx(0.01 * 8 * 10) and rec["rows"][1]["fd"] == 30.0 / 8
    assert json.loads((tmp_path / "out" / "block_solver.json").read_text())["rows"][2]["block_solver"] == ""
    md = (tmp_path / "out" / "block_solver.md").read_text()
    assert "| c | rk4 x2 | DPM-Solver++(2M), 10 NFE | 3.75 | 800.00 |" in md and "| u |  | DDIM, 25 NFE | 10.00 |" in md
    assert (tmp_path / "out" / "block_solver.png").stat().st_size > 10_000


@pytest.mark.parametrize("flag, value", [("--blocks", "tsit5:1"), ("--blocks", "rk4"), ("--samplers", "ode:10")])
def test_an_unknown_block_setting_or_sampler_is_one_line_and_exit_2(flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        bs.main(["--cunets", "c", flag, value])
    assert e.value.code == 2 and f"{flag} {value!r} is not NAME:COUNT" in capsys.readouterr().err
