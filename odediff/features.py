"""The feature classifier for sample-quality metrics, trained on the dataset itself.

A small CNN `Classifier` (`train_classifier` / `load_or_train_classifier`): its
penultimate layer (`classifier_features`) feeds FD/KID/precision-recall in
`odediff.metrics`; its predictions (`classifier_predict`) give class histograms of
samples. The Inception-v3 network for FID is in `odediff.inception`.

Images are float NHWC in [-1, 1] throughout, with 1 or 3 channels.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

__all__ = [
    "Classifier",
    "train_classifier",
    "load_or_train_classifier",
    "classifier_features",
    "classifier_logits",
    "classifier_predict",
]

Params = Any  # a nested dict of arrays

# ---------------------------------------------------------------------------
# Small classifier
# ---------------------------------------------------------------------------


class Classifier(nn.Module):
    """Small CNN: [conv3x3(w) - relu - maxpool2] per width, flatten,
    dense(hidden) - relu (the "features"), dense(num_classes) (logits).

    Layers are named `conv0, conv1, ..., fc, head`; the architecture can be
    read back from a params tree (`Classifier.from_params`).
    """

    num_classes: int
    widths: Sequence[int] = (32, 64)
    hidden: int = 128

    @nn.compact
    def __call__(self, x: jax.Array, features: bool = False) -> jax.Array:
        x = jnp.asarray(x, jnp.float32)
        for i, w in enumerate(self.widths):
            x = nn.relu(nn.Conv(w, (3, 3), name=f"conv{i}")(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        h = nn.relu(nn.Dense(self.hidden, name="fc")(x))
        if features:
            return h
        return nn.Dense(self.num_classes, name="head")(h)

    @classmethod
    def from_params(cls, params: Params) -> Classifier:
        """The `Classifier` whose `init` produces a tree shaped like `params`."""
        widths = []
        while f"conv{len(widths)}" in params:
            widths.append(int(params[f"conv{len(widths)}"]["kernel"].shape[-1]))
        return cls(
            num_classes=int(params["head"]["kernel"].shape[-1]),
            widths=tuple(widths),
            hidden=int(params["fc"]["kernel"].shape[-1]),
        )


def as_images(images: np.ndarray) -> np.ndarray:
    """float32 NHWC images with 1 or 3 channels, or ValueError saying what is wrong."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"images must be NHWC, got shape {images.shape}")
    return images


@functools.cache
def _jitted_apply(module: nn.Module, features: bool):
    return jax.jit(lambda p, x: module.apply({"params": p}, x, features=features))


def batched_apply(fn, params: Params, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Apply `fn(params, batch)` over `images` in fixed-size (padded) batches."""
    n = images.shape[0]
    if n == 0:
        raise ValueError("no images")
    bs = max(1, min(batch_size, n))
    outs = []
    for s in range(0, n, bs):
        batch = images[s : s + bs]
        k = batch.shape[0]
        if k < bs:  # pad so every call has one shape (one compilation)
            batch = np.concatenate([batch, np.zeros((bs - k,) + batch.shape[1:], batch.dtype)])
        outs.append(np.asarray(fn(params, batch))[:k])
    return np.concatenate(outs, axis=0)


def classifier_logits(params: Params, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits `[N, num_classes]` (float32) of a trained `Classifier`."""
    fn = _jitted_apply(Classifier.from_params(params), False)
    return batched_apply(fn, params, as_images(images), batch_size)


def classifier_features(params: Params, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Penultimate-layer features `[N, hidden]` (float32) of a trained `Classifier`."""
    fn = _jitted_apply(Classifier.from_params(params), True)
    return batched_apply(fn, params, as_images(images), batch_size)


def classifier_predict(params: Params, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Predicted class ids `[N]` (int64), e.g. for class histograms of samples."""
    return np.argmax(classifier_logits(params, images, batch_size), axis=-1)


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    steps: int = 1000,
    batch_size: int = 128,
    seed: int = 0,
    learning_rate: float = 1e-3,
    widths: Sequence[int] = (32, 64),
    hidden: int = 128,
) -> Params:
    """Train a `Classifier` with Adam on `images` (NHWC float in [-1, 1]) and
    integer `labels`; returns its params (the `"params"` collection)."""
    images = as_images(images)
    labels = np.asarray(labels).astype(np.int32)
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels shape {labels.shape} != ({images.shape[0]},)")
    model = Classifier(num_classes=num_classes, widths=tuple(widths), hidden=hidden)
    params = model.init(jax.random.key(seed), jnp.asarray(images[:1]))["params"]
    tx = optax.adam(learning_rate)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, x, y):
        def loss_fn(p):
            logits = model.apply({"params": p}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        # optax's Adam bias correction computes `float ** int32`, which strict
        # dtype promotion rejects; allow standard promotion just for the update.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    n = images.shape[0]
    bs = min(batch_size, n)
    rng = np.random.default_rng(seed)
    perm, pos = rng.permutation(n), 0
    for _ in range(steps):
        if pos + bs > n:  # epoch-wise shuffling, dropping the remainder
            perm, pos = rng.permutation(n), 0
        idx = perm[pos : pos + bs]
        pos += bs
        params, opt_state, _ = step(params, opt_state, images[idx], labels[idx])
    return params


_META_FILE = "classifier.json"
_PARAMS_DIR = "params"


def load_or_train_classifier(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    num_classes: int,
    cache_dir: str | os.PathLike,
    key: str,
    steps: int = 1000,
    *,
    batch_size: int = 128,
    seed: int = 0,
) -> tuple[Params, float]:
    """Params and test accuracy of a `Classifier` for one dataset, cached.

    Cache layout under `cache_dir/<key>/`: `params/` (an orbax
    StandardCheckpointer checkpoint of the params tree) and `classifier.json`
    (`test_accuracy`, `num_classes`, `image_shape`, `widths`, `hidden`, `steps`,
    ...). The JSON is written last, so it marks a complete cache entry; if it is
    present the params are restored (no training), otherwise the classifier is
    trained with `train_classifier` and saved. A cached entry whose
    `num_classes` or image shape differs from the arguments raises ValueError
    (pick another `key`).
    """
    root = Path(cache_dir).expanduser().resolve() / key
    meta_path = root / _META_FILE
    ckpt_path = root / _PARAMS_DIR
    image_shape = tuple(int(s) for s in np.shape(train_images)[1:])

    if meta_path.exists() and ckpt_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta["num_classes"] != num_classes or tuple(meta["image_shape"]) != image_shape:
            raise ValueError(
                f"cached classifier at {root} is for num_classes={meta['num_classes']}, "
                f"image_shape={tuple(meta['image_shape'])}; asked for {num_classes}, "
                f"{image_shape}. Use a different key."
            )
        model = Classifier(num_classes, tuple(meta["widths"]), meta["hidden"])
        abstract = jax.eval_shape(
            lambda: model.init(jax.random.key(0), jnp.zeros((1,) + image_shape, jnp.float32))["params"]
        )
        with ocp.StandardCheckpointer() as ckptr:
            params = ckptr.restore(ckpt_path, abstract)
        return params, float(meta["test_accuracy"])

    params = train_classifier(train_images, train_labels, num_classes, steps=steps, batch_size=batch_size, seed=seed)
    pred = classifier_predict(params, test_images)
    accuracy = float(np.mean(pred == np.asarray(test_labels)))
    model = Classifier.from_params(params)

    root.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(ckpt_path, params, force=True)
        ckptr.wait_until_finished()
    meta = {
        "test_accuracy": accuracy,
        "num_classes": num_classes,
        "image_shape": list(image_shape),
        "widths": list(model.widths),
        "hidden": model.hidden,
        "steps": steps,
        "batch_size": batch_size,
        "seed": seed,
        "num_train": int(np.shape(train_images)[0]),
        "num_test": int(np.shape(test_images)[0]),
    }
    tmp = meta_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, meta_path)
    return params, accuracy
