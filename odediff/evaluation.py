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
* `score_run(...)`: the above for N samples of a trained run; `evaluate_run` also writes
  them to the run's directory (what evaluate.py runs).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    key: str = ""  # identifies the embedding (classifier cache key, weights digest); "" = do not cache


@dataclasses.dataclass
class Embedded:
    """Images as a feature space sees them: features, and class probabilities or ids where it gives them."""

    features: np.ndarray
    probabilities: np.ndarray | None = None
    predictions: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.features)


def embed(images: np.ndarray, space: FeatureSpace) -> Embedded:
    """uint8 NHWC images in `space`."""
    probs = space.probabilities(images) if space.probabilities else None
    preds = probs.argmax(1) if probs is not None else space.predict(images) if space.predict else None
    return Embedded(space.features(images), probs, preds)


def real_embedding(
    data_config: ml_collections.ConfigDict,
    split: str,
    num: int | None,
    seed: int,
    space: FeatureSpace,
    cache_dir: str | Path | None,
) -> Embedded:
    """`num` images of a split (all: None) drawn with `seed`, embedded in `space`; cached
    as <cache_dir>/real_<digest>.npz per data set, split, draw and feature space, so
    evaluating again reads no images and runs no network on them."""
    identity = json.dumps(
        {
            "source": str(data_config.source),
            "size": data_config.image_size,
            "channels": data_config.channels,
            "holdout": data_config.holdout_fraction,
            "data_dir": data_config.get("data_dir", ""),
            "split": split,
            "num": num,
            "seed": seed,
            "space": space.key,
        },
        sort_keys=True,
    )
    path = Path(cache_dir or ".") / f"real_{hashlib.sha1(identity.encode()).hexdigest()[:16]}.npz"
    if space.key and cache_dir and path.is_file():
        with np.load(path) as f:
            return Embedded(
                f["features"],
                f["probabilities"] if "probabilities" in f else None,
                f["predictions"] if "predictions" in f else None,
            )
    images, _ = all_images(data_lib.load_source(data_config, split), num, seed=seed)
    e = embed(images, space)
    if space.key and cache_dir:
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {k: v for k, v in dataclasses.asdict(e).items() if v is not None}
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, identity=identity, **arrays)
        os.replace(tmp, path)
    return e


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


def all_images(source: data_lib.ImageSource, limit: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A source's images and their indices: all in order, or `limit` drawn with `seed` (sorted)."""
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
            raise ConfigError(
                f"--inception_weights {path} does not exist: pass an .npz made with "
                "odediff.inception.convert_torch_state_dict + save_inception_params"
            )
        try:
            variables = load_inception_params(path)
        except (ValueError, OSError) as e:
            raise ConfigError(f"--inception_weights {path}: {str(e).splitlines()[0]}") from e
        return FeatureSpace(
            kind="inception",
            fd_label=INCEPTION_FD,
            features=lambda x: inception_features(variables, data_lib.to_model_range(x)),
            info={"inception_weights": str(path)},
            key="inception_" + hashlib.sha1(path.read_bytes()).hexdigest()[:16],
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
    train_x, train_idx = all_images(train, max_train_images)
    test_x, test_idx = all_images(test)
    key = classifier_key(data_config, classifier_steps)
    t0 = time.perf_counter()
    params, accuracy = load_or_train_classifier(
        data_lib.to_model_range(train_x),
        train.get_labels(train_idx),
        data_lib.to_model_range(test_x),
        test.get_labels(test_idx),
        max(train.num_classes, test.num_classes or 0),
        cache_dir,
        key,
        steps=classifier_steps,
    )
    return FeatureSpace(
        kind="classifier",
        fd_label=CLASSIFIER_FD,
        features=lambda x: classifier_features(params, data_lib.to_model_range(x)),
        predict=lambda x: np.argmax(classifier_logits(params, data_lib.to_model_range(x)), axis=-1),
        probabilities=lambda x: np.asarray(jax.nn.softmax(classifier_logits(params, data_lib.to_model_range(x)))),
        num_classes=train.num_classes,
        info={
            "classifier_test_accuracy": accuracy,
            "classifier_cache": str(Path(cache_dir) / key),
            "classifier_train_images": int(len(train_x)),
            "classifier_test_images": int(len(test_x)),
            "classifier_seconds": time.perf_counter() - t0,
        },
        key=key,
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
    """FD, KID (mean, std), precision, recall of uint8 NHWC `samples` against `real`
    (images, or their `Embedded` form), and the classifier's class histogram of both.
    With `reference` (other real images or their embedding, e.g. from the training
    split) also the real-vs-real FD floor.

    With classifier features, KID is taken on features standardised by the real
    images' per-dimension mean and std (the raw activations have no common scale), and
    where the space gives class probabilities, `confident_fraction` is the share of
    samples whose top class has probability >= `confidence`, and `confident_entropy`
    the entropy (bits; log2(classes) when uniform) of those samples' class histogram.
    With the `labels` a conditional model was asked for, `class_accuracy` is the share
    of samples the classifier assigns to their requested class."""
    samples = np.asarray(samples)
    as_embedded = lambda x: x if isinstance(x, Embedded) else embed(_uint8(x), space)
    er, es = as_embedded(real), embed(_uint8(samples), space)
    fs, fr = es.features, er.features
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
        out["fd_real_vs_real"] = metrics.frechet_distance(as_embedded(reference).features, fr)
        out["num_reference"] = int(len(reference))
    probs = (es.probabilities, er.probabilities) if es.probabilities is not None else None
    if es.predictions is not None:
        n = space.num_classes
        ps, pr = es.predictions, er.predictions
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


def _uint8(images) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"evaluate_samples takes uint8 images, got {images.dtype}")
    return images


def confidence_stats(probabilities: np.ndarray, confidence: float = 0.9) -> dict:
    """The share of rows whose top class probability is >= `confidence`, and the entropy
    (bits) of the class histogram of those rows (0 when there are none)."""
    p = np.asarray(probabilities, np.float64)
    sure = p.max(1) >= confidence
    hist = np.bincount(p[sure].argmax(1), minlength=p.shape[1]) / max(int(sure.sum()), 1)
    nz = hist[hist > 0]
    return {
        "confidence": confidence,
        "confident_fraction": float(sure.mean()),
        "confident_entropy": float(-(nz * np.log2(nz)).sum()),
        "confident_histogram": [float(v) for v in hist],
    }


def format_metrics(result: dict) -> str:
    """A markdown table of an `evaluate_samples` result."""
    rows = [[result["fd_label"], f"{result['fd']:.3f}"]]
    if "fd_real_vs_real" in result:
        rows.append([f"{result['fd_label']}, real vs real (floor)", f"{result['fd_real_vs_real']:.3f}"])
    rows += [
        [
            "KID" + (" (standardised features)" if result["feature_space"] == "classifier" else ""),
            f"{result['kid_mean']:.4g} +- {result['kid_std']:.2g}",
        ],
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


def score_run(
    workdir: str | Path, *, step: int | None = None, cache_dir: str | Path | None = None, **options: Any
) -> tuple[dict, np.ndarray]:
    """Restores a run's EMA params (newest step unless `step`) and scores them with
    `score_params` (`options`: its keyword arguments; `cache_dir` defaults to the run's);
    the result also names the workdir."""
    from odediff.generation import restore_run

    config, params, step = restore_run(workdir, step)
    result, samples = score_params(config, params, step, cache_dir=cache_dir or default_cache_dir(workdir), **options)
    return {"workdir": str(workdir), **result}, samples


def score_params(
    config: ml_collections.ConfigDict,
    params: Any,
    step: int,
    *,
    cache_dir: str | Path,
    num: int = 1000,
    sampling: dict | None = None,
    seed: int = 0,
    batch: int = 250,
    labels: np.ndarray | None = None,
    null_class: bool = False,
    inception_weights: str | None = None,
    classifier_steps: int = 1000,
    num_real: int | None = None,
) -> tuple[dict, np.ndarray]:
    """Draws `num` samples of `params` with the config's sampling block (fields in `sampling`
    replaced) and scores them with `evaluate_samples` against `num_real` (default `num`)
    held-out ("test") images of `config.data`, the same number of train images as the floor.

    A class-conditional model draws `labels` (default: the classes in turn) and is also scored
    on `class_accuracy`; with `null_class` it draws its unconditional samples instead.
    Returns the scores with the model and sampling described, and the uint8 NHWC samples."""
    from odediff.generation import class_labels, describe_sampling, generate, with_sampling

    if num < 2:
        raise ConfigError(f"--num must be at least 2, got {num}")
    config = with_sampling(config, **(sampling or {}))
    sc = config.sampling
    if config.model.num_classes and labels is None and not null_class:
        labels = class_labels(config.model.num_classes, num)
    cache_dir = Path(cache_dir).expanduser()
    space = feature_space(
        config.data, cache_dir, inception_weights=inception_weights, classifier_steps=classifier_steps
    )
    real = real_embedding(config.data, "test", num_real or num, 1, space, cache_dir)
    reference = real_embedding(config.data, "train", len(real), 2, space, cache_dir)
    samples, seconds, nfe = generate(config, params, num, seed=seed, batch=batch, labels=labels)
    result = evaluate_samples(samples, real, space, reference=reference, labels=labels)
    result.update(
        {
            "step": step,
            "model": config.model.name,
            "sampler": sc.sampler,
            "steps": sc.steps,
            "sampling": sc.to_dict(),
            "sampling_used": describe_sampling(sc),
            "nfe": nfe,
            "seed": seed,
            "sample_seconds": seconds,
            "samples_per_second": num / max(seconds, 1e-9),
            "data_source": str(config.data.source),
            "real_split": "test",
            "reference_split": "train",
        }
    )
    return result, samples


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
    """`score_run`'s scores, also written to <workdir>/eval_<step>_<sampler><steps>[_cfg<w>][_blocks-<solver>x<steps>].json;
    returns them and that path."""
    result, _ = score_run(
        workdir,
        step=step,
        num=num,
        sampling=sampling,
        seed=seed,
        batch=batch,
        cache_dir=cache_dir,
        inception_weights=inception_weights,
        classifier_steps=classifier_steps,
        num_real=num_real,
    )
    guidance = result["sampling"].get("guidance")
    from odediff.generation import block_tag

    name = f"eval_{result['step']}_{result['sampler']}{result['steps']}" + (f"_cfg{guidance:g}" if guidance else "")
    name += block_tag(ml_collections.ConfigDict(result["sampling"]))
    path = Path(workdir) / f"{name}.json"
    path.write_text(json.dumps(result, indent=2))
    return result, path
