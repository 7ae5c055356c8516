"""Sample quality of trained runs (the denoising task is in `odediff.denoising`).

* `feature_space(config.data, cache_dir)`: the features sample quality is measured
  in. For labelled single-channel datasets (digits, MNIST, Fashion-MNIST, ...) a
  small classifier trained once on the dataset's own training split (cached), whose
  penultimate layer gives the features and whose argmax gives class histograms;
  the distance is reported as "FD (classifier features)", never as Inception FID.
  For RGB data an Inception-v3 weights file (`.npz`, see
  `odediff.inception.load_inception_params`) must be given: no weights ship with
  any package and nothing is downloaded.
* `evaluate_samples(samples, real, space)`: FD, KID, precision/recall and the
  class histogram of the samples.
* `evaluate_run(...)`: the above for N samples of a trained run (what evaluate.py runs).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Callable

import jax
import ml_collections
import numpy as np

from odediff import data as data_lib
from odediff import metrics
from odediff.config import ConfigError

CLASSIFIER_FD = "FD (classifier features)"
INCEPTION_FD = "FID (Inception-v3 pool3, local weights)"


# ----------------------------------------------------------------------------- feature spaces


@dataclasses.dataclass
class FeatureSpace:
    """How samples are embedded: `features(uint8 NHWC) -> [N, D]`; optional `predict` -> class
    ids and `probabilities` -> [N, num_classes] class probabilities."""

    kind: str  # "classifier" | "inception"
    fd_label: str
    features: Callable[[np.ndarray], np.ndarray]
    predict: Callable[[np.ndarray], np.ndarray] | None = None
    probabilities: Callable[[np.ndarray], np.ndarray] | None = None
    num_classes: int | None = None
    info: dict = dataclasses.field(default_factory=dict)


def default_cache_dir(workdir: str | Path | None = None) -> Path:
    """~/.cache/odediff, or <workdir>/../.cache where the home directory is not writable."""
    home = Path("~/.cache/odediff").expanduser()
    try:
        home.mkdir(parents=True, exist_ok=True)
        if os.access(home, os.W_OK):
            return home
    except OSError:
        pass
    if workdir is None:
        raise ConfigError(f"{home} is not writable: pass --cache_dir")
    return Path(workdir).absolute().parent / ".cache"


def classifier_key(data_config: ml_collections.ConfigDict, steps: int) -> str:
    """A cache key from the source, image size and channels (and training steps)."""
    source = str(data_config.source)
    slug = re.sub(r"[^A-Za-z0-9]+", "_", source).strip("_")[-40:]
    digest = hashlib.sha1(f"{source}|{data_config.holdout_fraction}".encode()).hexdigest()[:8]
    return f"classifier_{slug}_{digest}_{data_config.image_size}px_{data_config.channels}ch_{steps}steps"


def _all_images(source: data_lib.ImageSource, limit: int | None = None, seed: int = 0) -> np.ndarray:
    idx = np.arange(len(source))
    if limit is not None and limit < len(source):
        idx = np.sort(np.random.default_rng(seed).choice(len(source), limit, replace=False))
    return source[idx], idx


def feature_space(
    data_config: ml_collections.ConfigDict,
    cache_dir: str | Path,
    *,
    inception_weights: str | None = None,
    classifier_steps: int = 1000,
    max_train_images: int = 60_000,
) -> FeatureSpace:
    """The feature space for a dataset (see the module docstring). Raises ConfigError
    when none is available (RGB data without an Inception weights file)."""
    if inception_weights:
        from odediff.inception import inception_features, load_inception_params

        path = Path(inception_weights).expanduser()
        if not path.is_file():
            raise ConfigError(f"--inception_weights {path} does not exist: pass an .npz made with "
                              "odediff.inception.convert_torch_state_dict + save_inception_params")
        try:
            variables = load_inception_params(path)
        except (ValueError, OSError) as e:
            raise ConfigError(f"--inception_weights {path}: {str(e).splitlines()[0]}") from e
        return FeatureSpace(
            kind="inception", fd_label=INCEPTION_FD,
            features=lambda x: inception_features(variables, data_lib.to_model_range(x)),
            info={"inception_weights": str(path)},
        )
    train = data_lib.load_source(data_config, "train")
    if data_config.channels != 1 or not train.has_labels or not train.num_classes:
        raise ConfigError(
            f"no feature space for {data_config.source} ({data_config.channels} channels, "
            f"{'with' if train.has_labels else 'without'} labels): the classifier features are for labelled "
            "grey datasets (digits, MNIST, Fashion-MNIST); for RGB data pass --inception_weights=<file.npz> "
            "(Inception-v3 pool3 weights converted with odediff.inception.convert_torch_state_dict)"
        )
    from odediff.features import classifier_features, classifier_logits, load_or_train_classifier

    test = data_lib.load_source(data_config, "test")
    train_x, train_idx = _all_images(train, max_train_images)
    test_x, test_idx = _all_images(test)
    key = classifier_key(data_config, classifier_steps)
    t0 = time.perf_counter()
    params, accuracy = load_or_train_classifier(
        data_lib.to_model_range(train_x), train.get_labels(train_idx),
        data_lib.to_model_range(test_x), test.get_labels(test_idx),
        max(train.num_classes, test.num_classes or 0), cache_dir, key, steps=classifier_steps,
    )
    return FeatureSpace(
        kind="classifier", fd_label=CLASSIFIER_FD,
        features=lambda x: classifier_features(params, data_lib.to_model_range(x)),
        predict=lambda x: np.argmax(classifier_logits(params, data_lib.to_model_range(x)), axis=-1),
        probabilities=lambda x: np.asarray(jax.nn.softmax(classifier_logits(params, data_lib.to_model_range(x)))),
        num_classes=train.num_classes,
        info={"classifier_test_accuracy": accuracy, "classifier_cache": str(Path(cache_dir) / key),
              "classifier_train_images": int(len(train_x)), "classifier_test_images": int(len(test_x)),
              "classifier_seconds": time.perf_counter() - t0},
    )


def evaluate_samples(
    samples: np.ndarray,
    real: np.ndarray,
    space: FeatureSpace,
    *,
    reference: np.ndarray | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    pr_k: int = 3,
    confidence: float = 0.9,
    labels: np.ndarray | None = None,
) -> dict:
    """FD, KID (mean, std), precision, recall of uint8 NHWC `samples` against `real`,
    and the classifier's class histogram of both. With `reference` (other real
    images, e.g. from the training split) also the real-vs-real FD floor.

    With classifier features, KID is taken on features standardised by the real
    images' per-dimension mean and std (the raw activations have no common scale), and
    where the space gives class probabilities, `confident_fraction` is the share of
    samples whose top class has probability >= `confidence`, and `confident_entropy`
    the entropy (bits; log2(classes) when uniform) of those samples' class histogram.
    With the `labels` a conditional model was asked for, `class_accuracy` is the share
    of samples the classifier assigns to their requested class."""
    samples, real = np.asarray(samples), np.asarray(real)
    if samples.dtype != np.uint8 or real.dtype != np.uint8:
        raise ValueError(f"evaluate_samples takes uint8 images, got {samples.dtype}, {real.dtype}")
    fs, fr = space.features(samples), space.features(real)
    ks, kr = fs, fr
    if space.kind == "classifier":
        mu, sd = fr.mean(0), fr.std(0) + 1e-6
        ks, kr = (fs - mu) / sd, (fr - mu) / sd
    kid_m, kid_s = metrics.kernel_inception_distance(ks, kr, num_subsets=kid_subsets, subset_size=kid_subset_size)
    k = min(pr_k, len(fs) - 1, len(fr) - 1)
    precision, recall = metrics.precision_recall(fr, fs, k=k)
    out = {
        "fd_label": space.fd_label,
        "fd": metrics.frechet_distance(fs, fr),
        "kid_mean": kid_m,
        "kid_std": kid_s,
        "precision": precision,
        "recall": recall,
        "pr_k": k,
        "num_samples": int(len(samples)),
        "num_real": int(len(real)),
        "feature_space": space.kind,
        **space.info,
    }
    if reference is not None:
        out["fd_real_vs_real"] = metrics.frechet_distance(space.features(np.asarray(reference)), fr)
        out["num_reference"] = int(len(reference))
    probs = (space.probabilities(samples), space.probabilities(real)) if space.probabilities else None
    if space.predict is not None:
        n = space.num_classes
        ps, pr = (p.argmax(1) for p in probs) if probs else (space.predict(samples), space.predict(real))
        hs = np.bincount(ps, minlength=n)[:n] / len(samples)
        hr = np.bincount(pr, minlength=n)[:n] / len(real)
        out["class_histogram"] = [float(v) for v in hs]
        out["real_class_histogram"] = [float(v) for v in hr]
        out["class_histogram_tv"] = float(0.5 * np.abs(hs - hr).sum())  # total variation distance
        if labels is not None:
            out["class_accuracy"] = float(np.mean(ps == np.asarray(labels)))
    if probs:
        out.update(confidence_stats(probs[0], confidence))
        out["real_confident_fraction"] = confidence_stats(probs[1], confidence)["confident_fraction"]
    return out


def confidence_stats(probabilities: np.ndarray, confidence: float = 0.9) -> dict:
    """The share of rows whose top class probability is >= `confidence`, and the entropy
    (bits) of the class histogram of those rows (0 when there are none)."""
    p = np.asarray(probabilities, np.float64)
    sure = p.max(1) >= confidence
    hist = np.bincount(p[sure].argmax(1), minlength=p.shape[1]) / max(int(sure.sum()), 1)
    nz = hist[hist > 0]
    return {"confidence": confidence, "confident_fraction": float(sure.mean()),
            "confident_entropy": float(-(nz * np.log2(nz)).sum()), "confident_histogram": [float(v) for v in hist]}


def format_metrics(result: dict) -> str:
    """A markdown table of an `evaluate_samples` result."""
    rows = [[result["fd_label"], f"{result['fd']:.3f}"]]
    if "fd_real_vs_real" in result:
        rows.append([f"{result['fd_label']}, real vs real (floor)", f"{result['fd_real_vs_real']:.3f}"])
    rows += [
        ["KID" + (" (standardised features)" if result["feature_space"] == "classifier" else ""),
         f"{result['kid_mean']:.4g} +- {result['kid_std']:.2g}"],
        [f"precision (k={result['pr_k']})", f"{result['precision']:.3f}"],
        [f"recall (k={result['pr_k']})", f"{result['recall']:.3f}"],
    ]
    if "class_histogram" in result:
        rows.append(["class histogram (samples)", " ".join(f"{v:.2f}" for v in result["class_histogram"])])
        rows.append(["class histogram (real)", " ".join(f"{v:.2f}" for v in result["real_class_histogram"])])
        rows.append(["histogram total variation", f"{result['class_histogram_tv']:.3f}"])
    if "class_accuracy" in result:
        rows.append(["samples classified as their requested class", f"{result['class_accuracy']:.3f}"])
    if "confident_fraction" in result:
        rows.append([f"samples classified with p >= {result['confidence']}", f"{result['confident_fraction']:.3f}"])
        rows.append(["entropy of their class histogram (bits)", f"{result['confident_entropy']:.3f}"])
    if "classifier_test_accuracy" in result:
        rows.append(["feature classifier test accuracy", f"{result['classifier_test_accuracy']:.4f}"])
    lines = ["| metric | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- runs


def evaluate_run(
    workdir: str | Path,
    *,
    step: int | None = None,
    num: int = 1000,
    sampling: dict | None = None,
    seed: int = 0,
    batch: int = 250,
    cache_dir: str | Path | None = None,
    inception_weights: str | None = None,
    classifier_steps: int = 1000,
    num_real: int | None = None,
) -> tuple[dict, Path]:
    """Generates `num` samples of a run's EMA params with its sampling block (fields in
    `sampling` replaced), compares them with the held-out ("test") split and writes
    <workdir>/eval_<step>_<sampler><steps>[_cfg<w>].json. A class-conditional run
    draws the classes in turn and is also scored on `class_accuracy`."""
    from odediff.generation import class_labels, describe_sampling, generate, restore_run, with_sampling

    if num < 2:
        raise ConfigError(f"--num must be at least 2, got {num}")
    config, params, step = restore_run(workdir, step)
    config = with_sampling(config, **(sampling or {}))
    sc = config.sampling
    labels = class_labels(config.model.num_classes, num) if config.model.num_classes else None
    cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir(workdir)
    space = feature_space(config.data, cache_dir, inception_weights=inception_weights,
                          classifier_steps=classifier_steps)
    test = data_lib.load_source(config.data, "test")
    real, _ = _all_images(test, num_real or num, seed=1)
    train = data_lib.load_source(config.data, "train")
    reference, _ = _all_images(train, len(real), seed=2)
    samples, seconds, nfe = generate(config, params, num, seed=seed, batch=batch, labels=labels)
    result = evaluate_samples(samples, real, space, reference=reference, labels=labels)
    result.update({
        "workdir": str(workdir), "step": step, "model": config.model.name, "sampler": sc.sampler,
        "steps": sc.steps, "sampling": sc.to_dict(), "sampling_used": describe_sampling(sc), "nfe": nfe, "seed": seed, "sample_seconds": seconds,
        "samples_per_second": num / max(seconds, 1e-9), "data_source": str(config.data.source),
        "real_split": "test", "reference_split": "train",
    })
    name = f"eval_{step}_{sc.sampler}{sc.steps}" + (f"_cfg{sc.guidance:g}" if sc.guidance else "")
    path = Path(workdir) / f"{name}.json"
    path.write_text(json.dumps(result, indent=2))
    return result, path
