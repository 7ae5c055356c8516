"""Tests for odediff.features (the small classifier, trained on sklearn digits, and
its orbax cache) and odediff.inception (architecture, weight-file plumbing)."""

import json

import jax
import numpy as np
import pytest
from flax import traverse_util
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from odediff import features as F
from odediff import inception as I


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    x = d.images.astype(np.float32) / 16.0  # [N, 8, 8] in [0, 1]
    x = np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)[..., None]  # 16x16x1
    x = x * np.float32(2.0) - np.float32(1.0)
    return train_test_split(x, d.target, test_size=0.25, random_state=0, stratify=d.target)


# ----------------------------------------------------------------- classifier


@pytest.mark.parametrize("shape", [(16, 16, 1), (32, 32, 3), (28, 28, 1)])
def test_classifier_shapes(shape):
    model = F.Classifier(num_classes=7)
    x = np.zeros((2,) + shape, np.float32)
    params = model.init(jax.random.key(0), x)["params"]
    assert model.apply({"params": params}, x).shape == (2, 7)
    assert model.apply({"params": params}, x, features=True).shape == (2, 128)
    assert F.Classifier.from_params(params) == model
    feats = F.classifier_features(params, np.ones((5,) + shape, np.float32), batch_size=2)
    assert feats.shape == (5, 128) and feats.dtype == np.float32
    pred = F.classifier_predict(params, np.ones((3,) + shape, np.float32))
    assert pred.shape == (3,) and np.issubdtype(pred.dtype, np.integer)


@pytest.mark.long
def test_load_or_train_classifier_trains_then_loads(digits, tmp_path, monkeypatch):
    xtr, xte, ytr, yte = digits
    params, acc = F.load_or_train_classifier(xtr, ytr, xte, yte, 10, tmp_path, "digits16", steps=100, batch_size=64)
    assert acc > 0.9
    meta = json.loads((tmp_path / "digits16" / "classifier.json").read_text())
    assert meta["test_accuracy"] == acc and meta["num_classes"] == 10
    assert meta["image_shape"] == [16, 16, 1]

    # The second call must load, not train.
    def no_training(*args, **kwargs):
        raise AssertionError("train_classifier called on a cache hit")

    monkeypatch.setattr(F, "train_classifier", no_training)
    params2, acc2 = F.load_or_train_classifier(xtr, ytr, xte, yte, 10, str(tmp_path), "digits16", steps=100)
    assert acc2 == acc
    flat1 = traverse_util.flatten_dict(params)
    flat2 = traverse_util.flatten_dict(params2)
    assert flat1.keys() == flat2.keys()
    for k in flat1:
        assert flat2[k].dtype == np.float32 and flat2[k].shape == flat1[k].shape
        np.testing.assert_array_equal(np.asarray(flat2[k]), np.asarray(flat1[k]))
    pred = F.classifier_predict(params2, xte)
    assert np.mean(pred == yte) == pytest.approx(acc)

    # Features: penultimate layer, same with any batch size (padding is dropped).
    feats = F.classifier_features(params2, xte[:50], batch_size=16)
    np.testing.assert_allclose(feats, F.classifier_features(params2, xte[:50]), rtol=1e-5, atol=1e-5)
    assert feats.shape == (50, 128)
    # Class histogram of predictions covers all classes on the test set.
    assert np.bincount(pred, minlength=10).min() > 0

    # A cache entry for a different setup is refused rather than silently used.
    with pytest.raises(ValueError, match="different key"):
        F.load_or_train_classifier(xtr, ytr, xte, yte, 5, tmp_path, "digits16")


# ------------------------------------------------------------------ Inception


@pytest.fixture(scope="module")
def inception_vars():
    return I.init_inception_params(seed=0)


def test_inception_pool3_shape(inception_vars):
    n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(inception_vars["params"]))
    assert n_params == 21_785_568  # torchvision inception_v3 trunk up to Mixed_7c
    rng = np.random.default_rng(0)
    x1 = rng.uniform(-1, 1, size=(2, 75, 75, 1)).astype(np.float32)
    f1 = I.inception_features(inception_vars, x1, resize_input=False)
    assert f1.shape == (2, 2048) and np.isfinite(f1).all()
    # 1-channel input is tiled to RGB.
    f3 = I.inception_features(inception_vars, np.repeat(x1, 3, axis=-1), resize_input=False)
    np.testing.assert_allclose(f1, f3, rtol=1e-5, atol=1e-6)


def test_inception_npz_roundtrip_and_torch_conversion(inception_vars, tmp_path):
    path = tmp_path / "inception.npz"
    I.save_inception_params(path, inception_vars)
    loaded = I.load_inception_params(path)
    flat_a = traverse_util.flatten_dict(inception_vars, sep="/")
    flat_b = traverse_util.flatten_dict(loaded, sep="/")
    assert flat_a.keys() == flat_b.keys()
    k = "params/Mixed_7c/branch3x3dbl_3b/conv/kernel"
    assert flat_b[k].shape == (3, 1, 384, 384)
    np.testing.assert_array_equal(np.asarray(flat_a[k]), np.asarray(flat_b[k]))

    # A torch-layout state dict (as pytorch-fid would give) converts back exactly.
    torch_sd = {
        "fc.weight": np.zeros((1008, 2048), np.float32),
        "AuxLogits.conv0.conv.weight": np.zeros((128, 768, 1, 1), np.float32),
        "Mixed_5b.branch1x1.bn.num_batches_tracked": np.zeros((), np.int64),
    }
    for name, v in flat_a.items():
        coll, *mod, leaf = name.split("/")
        v = np.asarray(v)
        if leaf == "kernel":
            torch_sd[".".join(mod) + ".weight"] = v.transpose(3, 2, 0, 1)
        elif coll == "params":
            torch_sd[".".join(mod) + (".weight" if leaf == "scale" else ".bias")] = v
        else:
            torch_sd[".".join(mod) + ".running_" + leaf] = v
    converted = I.convert_torch_state_dict(torch_sd)
    assert converted.keys() == flat_a.keys()
    for name, v in converted.items():
        np.testing.assert_array_equal(v, np.asarray(flat_a[name]))

    # Wrong contents are rejected.
    bad = dict(converted)
    bad.pop(k)
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(ValueError, match="missing"):
        I.load_inception_params(tmp_path / "bad.npz")


def test_inception_matches_pytorch_fid_with_identical_weights(tmp_path):
    """tests/fixtures/inception_pytorch_fid.npz: pytorch-fid's FID Inception (pool3, resize to
    299) on fixed images with seeded weights, from benchmarks/inception_fixture.py."""
    from benchmarks.inception_fixture import seeded_state_dict
    from helpers import REPO
    from odediff.data import to_model_range

    with np.load(REPO / "tests" / "fixtures" / "inception_pytorch_fid.npz") as f:
        images, expected, shapes = f["images"], f["features"], json.loads(str(f["shapes"]))
    path = tmp_path / "fid_inception.npz"
    np.savez(path, **I.convert_torch_state_dict(seeded_state_dict(shapes)))  # the documented conversion
    ours = I.inception_features(I.load_inception_params(path), to_model_range(images), batch_size=len(images))
    assert ours.shape == expected.shape == (4, 2048)
    rel = np.linalg.norm(ours - expected, axis=1) / np.linalg.norm(expected, axis=1)
    assert rel.max() <= 1e-4, rel
