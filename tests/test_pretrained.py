import json

import numpy as np
import pytest

from benchmarks.pretrained_weights import CHECK, FIXTURES, check_draw
from helpers import run
from odediff import pretrained
from odediff.config import ConfigError

NAMES = pretrained.available()


def _close(ours: np.ndarray, committed: np.ndarray) -> None:
    """The same draw up to float rounding across machines and compilers (uint8 pixels)."""
    diff = np.abs(ours.astype(int) - committed.astype(int))
    assert ours.shape == committed.shape and diff.mean() < 0.5 and diff.max() <= 16, (diff.mean(), diff.max())


def test_the_shipped_models_are_small_and_carry_their_scores():
    assert len(NAMES) >= 1
    size = sum(p.stat().st_size for p in pretrained.WEIGHTS.rglob("*") if p.is_file())
    assert size <= 10_000_000
    for name in NAMES:
        card = pretrained.card(name)
        assert card["dtype"] == "float16" and len(card["fd_seeds"]) == 2
        assert card["floor_fd"] == pytest.approx(np.mean(card["floor_fd_draws"]))
        record, seeds = (
            json.loads((pretrained.WEIGHTS.parents[1] / card[k]).read_text()) for k in ("record", "seeds_record")
        )
        run = record["runs"][card["run"]]
        assert card["fd"] == next(e["fd"] for e in run["evals"] if e["step"] == card["step"])
        model = seeds["summary"]["models"][run["model"]]
        assert card["fd_seeds"] == dict(zip(map(str, model["seeds"]), model["fd"]))


@pytest.mark.parametrize("name", NAMES[1:])  # the first: through sample.py, below
def test_a_shipped_model_draws_the_committed_samples(name):
    config, params = pretrained.load(name)
    _close(check_draw(config, params), np.load(FIXTURES / f"{name}.npz")["images"])


def test_an_unknown_model_is_named_with_the_choices():
    with pytest.raises(ConfigError, match=r"no pretrained model 'nope': choose one of \['"):
        pretrained.load("nope")


@pytest.mark.long
def test_sample_py_draws_from_a_shipped_model_without_a_workdir(tmp_path):
    name = NAMES[0]
    s = CHECK["sampling"]
    proc = run("sample.py", f"--pretrained={name}", f"--num={CHECK['num']}", f"--seed={CHECK['seed']}",
               f"--sampler={s['sampler']}", f"--steps={s['steps']}", f"--out={tmp_path / 'x'}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "x.json").read_text())["pretrained"] == name
    _close(np.load(tmp_path / "x.npz")["images"], np.load(FIXTURES / f"{name}.npz")["images"])
