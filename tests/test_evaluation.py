"""odediff.evaluation: sample metrics, scoring a run, evaluate.py."""

import json
import shutil

import numpy as np
import pytest

from helpers import N, run
from odediff import evaluation as E


def _space(dim=6, seed=0):
    """A fixed random linear feature map (no training), with a 3-class 'predictor'."""
    w = np.random.default_rng(seed).standard_normal((8 * 8, dim))
    feats = lambda x: x.reshape(len(x), -1).astype(np.float64) / 255.0 @ w
    return E.FeatureSpace(
        kind="test",
        fd_label=E.CLASSIFIER_FD,
        features=feats,
        predict=lambda x: (x.reshape(len(x), -1).mean(1) > 127).astype(int) + (x[:, 0, 0, 0] > 200),
        num_classes=3,
    )


def _images(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)


def test_identical_sets_give_zero_fd_and_full_precision_recall():
    x = _images(64, 0)
    r = E.evaluate_samples(x, x, _space(), kid_subsets=5, kid_subset_size=32)
    assert r["fd"] == pytest.approx(0.0, abs=1e-6)
    assert r["precision"] == pytest.approx(1.0) and r["recall"] == pytest.approx(1.0)
    assert r["fd_label"] == "FD (classifier features)"
    assert sum(r["class_histogram"]) == pytest.approx(1.0) and r["class_histogram_tv"] == 0.0
    json.dumps(r)  # everything serialisable


def test_different_sets_give_positive_fd():
    a = _images(64, 0)
    b = np.clip(_images(64, 1).astype(int) // 2, 0, 255).astype(np.uint8)  # darker
    r = E.evaluate_samples(b, a, _space(), reference=_images(64, 2), kid_subsets=5, kid_subset_size=32)
    assert r["fd"] > 1.0 and r["fd"] > r["fd_real_vs_real"]
    same = E.evaluate_samples(a, a, _space(), kid_subsets=5, kid_subset_size=32)
    assert r["kid_mean"] > abs(same["kid_mean"])
    assert "FD (classifier features)" in E.format_metrics(r)


def test_rgb_without_inception_weights_is_a_clear_error(tmp_path):
    from helpers import tiny_config
    from odediff.config import ConfigError

    c = tiny_config().data
    c.channels = 3
    with pytest.raises(ConfigError, match="inception_weights"):
        E.feature_space(c, tmp_path)


@pytest.mark.long
def test_evaluate_py_end_to_end(reference, tmp_path):
    wd = tmp_path / "run"
    shutil.copytree(reference, wd)
    proc = run(
        "evaluate.py",
        f"--workdir={wd}",
        "--num=20",
        "--sampling.sampler=dpmpp2m",
        "--steps=2",
        "--batch=8",
        "--sampling.spacing=time_uniform",
        f"--cache_dir={tmp_path / 'cache'}",
        "--classifier_steps=20",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "FD (classifier features)" in proc.stdout and "dpmpp2m steps=2 spacing=time_uniform" in proc.stdout
    out = json.loads((wd / f"eval_{N}_dpmpp2m2.json").read_text())
    assert out["num_samples"] == 20 and np.isfinite(out["fd"]) and len(out["class_histogram"]) == 10
    assert out["sampling"]["spacing"] == "time_uniform" and out["sampling"]["eta"] == 0.0
    assert len(list((tmp_path / "cache").glob("real_*.npz"))) == 2  # held-out and train draws, for next time


def test_score_run_draws_a_conditional_runs_classes_in_turn_unless_told_otherwise(tmp_path, monkeypatch):
    from helpers import tiny_config
    from odediff import generation as G

    c = tiny_config()
    c.model.num_classes = 3
    drawn = []

    def generate(config, params, num, *, seed, batch, labels):
        drawn.append(labels)
        return _images(num, seed), 0.5, config.sampling.steps

    monkeypatch.setattr(G, "restore_run", lambda workdir, step: (c, None, 7))
    monkeypatch.setattr(G, "generate", generate)
    monkeypatch.setattr(E, "feature_space", lambda *a, **k: _space())
    result, samples = E.score_run(tmp_path, num=6, sampling={"steps": 2}, cache_dir=tmp_path)
    assert list(drawn[-1]) == [0, 1, 2, 0, 1, 2] and "class_accuracy" in result and samples.shape == (6, 8, 8, 1)
    assert (result["step"], result["nfe"], result["num_real"], result["num_reference"]) == (7, 2, 6, 6)
    result, _ = E.score_run(tmp_path, num=6, null_class=True, num_real=10, cache_dir=tmp_path)
    assert drawn[-1] is None and "class_accuracy" not in result and result["num_real"] == 10
    E.score_run(tmp_path, num=6, labels=np.full(6, 2), cache_dir=tmp_path)
    assert list(drawn[-1]) == [2] * 6


def test_confidence_stats_share_and_entropy_of_the_confident():
    p = np.array([[0.95, 0.05], [0.5, 0.5], [0.05, 0.95], [0.92, 0.08]])
    r = E.confidence_stats(p, 0.9)
    assert r["confident_fraction"] == 0.75 and r["confident_histogram"] == pytest.approx([2 / 3, 1 / 3])
    assert r["confident_entropy"] == pytest.approx(-(2 / 3 * np.log2(2 / 3) + 1 / 3 * np.log2(1 / 3)))
    assert E.confidence_stats(np.full((3, 4), 0.25))["confident_fraction"] == 0.0
    assert E.confidence_stats(np.eye(4))["confident_entropy"] == pytest.approx(2.0)  # four classes, uniform


def test_real_embeddings_are_cached_per_data_set_split_draw_and_space(tmp_path, monkeypatch):
    from helpers import tiny_config
    from odediff import data as data_lib

    c = tiny_config().data
    space = _space()
    space.key = "test-space"
    first = E.real_embedding(c, "test", 20, 1, space, tmp_path)
    assert len(list(tmp_path.glob("real_*.npz"))) == 1
    x = E.all_images(data_lib.load_source(c, "test"), 20, seed=1)[0]
    np.testing.assert_allclose(first.features, space.features(x))
    np.testing.assert_array_equal(first.predictions, space.predict(x))

    def no_reading(*a, **k):
        raise AssertionError("the cached embedding should not read images")

    monkeypatch.setattr(data_lib, "load_source", no_reading)
    again = E.real_embedding(c, "test", 20, 1, space, tmp_path)
    np.testing.assert_array_equal(first.features, again.features)
    with pytest.raises(AssertionError, match="should not read"):  # another draw, another split: not cached
        E.real_embedding(c, "test", 20, 2, space, tmp_path)
    space.key = "other-weights"
    with pytest.raises(AssertionError, match="should not read"):
        E.real_embedding(c, "test", 20, 1, space, tmp_path)
    # an embedded real set scores like the images themselves
    s = _images(20, 3)
    assert E.evaluate_samples(s, first, _space(), kid_subsets=2, kid_subset_size=10)["fd"] == pytest.approx(
        E.evaluate_samples(s, x, _space(), kid_subsets=2, kid_subset_size=10)["fd"]
    )
