"""Feature extractors for sample-quality metrics, without downloading networks.

Two routes:

* A small CNN `Classifier` trained on the dataset itself
  (`train_classifier` / `load_or_train_classifier`). Its penultimate layer
  (`classifier_features`) feeds FD/KID/precision-recall in `odediff.metrics`;
  its predictions (`classifier_predict`) give class histograms of samples.
* `InceptionV3`, the pytorch-fid pool3 (2048-d) network in Flax, for when
  Inception weights are available locally as an `.npz` (see
  `load_inception_params` for the format and `convert_torch_state_dict` to make
  one from a pytorch-fid / torchvision state dict).

Images are float NHWC in [-1, 1] throughout, with 1 or 3 channels.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import traverse_util

__all__ = [
    "Classifier",
    "train_classifier",
    "load_or_train_classifier",
    "classifier_features",
    "classifier_logits",
    "classifier_predict",
    "InceptionV3",
    "init_inception_params",
    "load_inception_params",
    "save_inception_params",
    "convert_torch_state_dict",
    "inception_features",
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
    def from_params(cls, params: Params) -> "Classifier":
        """The `Classifier` whose `init` produces a tree shaped like `params`."""
        widths = []
        while f"conv{len(widths)}" in params:
            widths.append(int(params[f"conv{len(widths)}"]["kernel"].shape[-1]))
        return cls(
            num_classes=int(params["head"]["kernel"].shape[-1]),
            widths=tuple(widths),
            hidden=int(params["fc"]["kernel"].shape[-1]),
        )


def _as_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"images must be NHWC, got shape {images.shape}")
    return images


@functools.lru_cache(maxsize=None)
def _jitted_apply(module: nn.Module, features: bool):
    return jax.jit(lambda p, x: module.apply({"params": p}, x, features=features))


def _batched_apply(fn, params: Params, images: np.ndarray, batch_size: int) -> np.ndarray:
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
    return _batched_apply(fn, params, _as_images(images), batch_size)


def classifier_features(params: Params, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Penultimate-layer features `[N, hidden]` (float32) of a trained `Classifier`."""
    fn = _jitted_apply(Classifier.from_params(params), True)
    return _batched_apply(fn, params, _as_images(images), batch_size)


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
    images = _as_images(images)
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
            lambda: model.init(jax.random.key(0), jnp.zeros((1,) + image_shape, jnp.float32))[
                "params"
            ]
        )
        with ocp.StandardCheckpointer() as ckptr:
            params = ckptr.restore(ckpt_path, abstract)
        return params, float(meta["test_accuracy"])

    params = train_classifier(
        train_images, train_labels, num_classes, steps=steps, batch_size=batch_size, seed=seed
    )
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


# ---------------------------------------------------------------------------
# Inception-v3 (pytorch-fid architecture)
# ---------------------------------------------------------------------------


def _pad(p: int | tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    ph, pw = (p, p) if isinstance(p, int) else p
    return ((ph, ph), (pw, pw))


class BasicConv2d(nn.Module):
    """Conv (no bias) + BatchNorm(eps=1e-3, inference) + ReLU, as torchvision's."""

    features: int
    kernel: tuple[int, int] = (1, 1)
    strides: tuple[int, int] = (1, 1)
    padding: int | tuple[int, int] = 0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Conv(
            self.features, self.kernel, self.strides, padding=_pad(self.padding),
            use_bias=False, name="conv",
        )(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


def _avg_pool3(x: jax.Array, count_include_pad: bool) -> jax.Array:
    return nn.avg_pool(
        x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=count_include_pad
    )


def _max_pool3_s2(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(nn.Module):
    pool_features: int
    count_include_pad: bool = False

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv2d(64, name="branch1x1")(x)
        b5 = BasicConv2d(48, name="branch5x5_1")(x)
        b5 = BasicConv2d(64, (5, 5), padding=2, name="branch5x5_2")(b5)
        b3 = BasicConv2d(64, name="branch3x3dbl_1")(x)
        b3 = BasicConv2d(96, (3, 3), padding=1, name="branch3x3dbl_2")(b3)
        b3 = BasicConv2d(96, (3, 3), padding=1, name="branch3x3dbl_3")(b3)
        bp = _avg_pool3(x, self.count_include_pad)
        bp = BasicConv2d(self.pool_features, name="branch_pool")(bp)
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv2d(384, (3, 3), (2, 2), name="branch3x3")(x)
        bd = BasicConv2d(64, name="branch3x3dbl_1")(x)
        bd = BasicConv2d(96, (3, 3), padding=1, name="branch3x3dbl_2")(bd)
        bd = BasicConv2d(96, (3, 3), (2, 2), name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool3_s2(x)], axis=-1)


class InceptionC(nn.Module):
    channels_7x7: int
    count_include_pad: bool = False

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        b1 = BasicConv2d(192, name="branch1x1")(x)
        b7 = BasicConv2d(c7, name="branch7x7_1")(x)
        b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv2d(c7, name="branch7x7dbl_1")(x)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = _avg_pool3(x, self.count_include_pad)
        bp = BasicConv2d(192, name="branch_pool")(bp)
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv2d(192, name="branch3x3_1")(x)
        b3 = BasicConv2d(320, (3, 3), (2, 2), name="branch3x3_2")(b3)
        b7 = BasicConv2d(192, name="branch7x7x3_1")(x)
        b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv2d(192, (3, 3), (2, 2), name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool3_s2(x)], axis=-1)


class InceptionE(nn.Module):
    """`pool` is "avg" (count_include_pad per flag) or "max" (pytorch-fid's Mixed_7c)."""

    pool: str = "avg"
    count_include_pad: bool = False

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv2d(320, name="branch1x1")(x)
        b3 = BasicConv2d(384, name="branch3x3_1")(x)
        b3 = jnp.concatenate(
            [
                BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3),
            ],
            axis=-1,
        )
        bd = BasicConv2d(448, name="branch3x3dbl_1")(x)
        bd = BasicConv2d(384, (3, 3), padding=1, name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate(
            [
                BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd),
            ],
            axis=-1,
        )
        if self.pool == "max":
            bp = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        else:
            bp = _avg_pool3(x, self.count_include_pad)
        bp = BasicConv2d(192, name="branch_pool")(bp)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


INCEPTION_SIZE = 299


class InceptionV3(nn.Module):
    """Inception-v3 up to pool3 (2048-d), torchvision layout, in Flax.

    `fid_variant=True` (default) is pytorch-fid's FIDInceptionA/C/E_1/E_2 (avg
    pools exclude padding; Mixed_7c's pool branch uses max pooling), matching
    the TF FID graph; `False` is plain torchvision.

    Input: NHWC float images in [-1, 1] with 1 (tiled to 3) or 3 channels. With
    `resize_input` they are bilinearly resized to 299x299 (like pytorch-fid's
    `F.interpolate(..., align_corners=False)`); without it any size >= 75 works
    since the final pooling is global. Output: `[B, 2048]` float32.
    Submodule names equal torchvision's (`Conv2d_1a_3x3`, `Mixed_5b/branch1x1`,
    ... each with `conv` and `bn`).
    """

    fid_variant: bool = True
    resize_input: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.asarray(x, jnp.float32)
        if x.ndim != 4 or x.shape[-1] not in (1, 3):
            raise ValueError(f"expected NHWC with 1 or 3 channels, got {x.shape}")
        if x.shape[-1] == 1:
            x = jnp.tile(x, (1, 1, 1, 3))
        if self.resize_input and x.shape[1:3] != (INCEPTION_SIZE, INCEPTION_SIZE):
            x = jax.image.resize(
                x, (x.shape[0], INCEPTION_SIZE, INCEPTION_SIZE, 3), "bilinear", antialias=False
            )
        cip = not self.fid_variant  # count_include_pad
        x = BasicConv2d(32, (3, 3), (2, 2), name="Conv2d_1a_3x3")(x)
        x = BasicConv2d(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = BasicConv2d(64, (3, 3), padding=1, name="Conv2d_2b_3x3")(x)
        x = _max_pool3_s2(x)
        x = BasicConv2d(80, name="Conv2d_3b_1x1")(x)
        x = BasicConv2d(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max_pool3_s2(x)
        x = InceptionA(32, cip, name="Mixed_5b")(x)
        x = InceptionA(64, cip, name="Mixed_5c")(x)
        x = InceptionA(64, cip, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        x = InceptionC(128, cip, name="Mixed_6b")(x)
        x = InceptionC(160, cip, name="Mixed_6c")(x)
        x = InceptionC(160, cip, name="Mixed_6d")(x)
        x = InceptionC(192, cip, name="Mixed_6e")(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE("avg", cip, name="Mixed_7b")(x)
        x = InceptionE("max" if self.fid_variant else "avg", cip, name="Mixed_7c")(x)
        return jnp.mean(x, axis=(1, 2))


def _inception_abstract(image_size: int, fid_variant: bool) -> dict[str, Params]:
    model = InceptionV3(fid_variant=fid_variant, resize_input=False)
    x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), x)


def init_inception_params(seed: int = 0) -> dict[str, Params]:
    """Random variables `{"params", "batch_stats"}` for `InceptionV3` (tests and
    shape checks; real use loads weights with `load_inception_params`).

    Built in NumPy from the abstract shapes (He-normal conv kernels, identity
    BatchNorm), which is far faster on CPU than compiling `model.init`.
    """
    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(_inception_abstract(INCEPTION_SIZE, True), sep="/")
    out = {}
    for k, sd in flat.items():
        leaf = k.rsplit("/", 1)[-1]
        if leaf == "kernel":
            fan_in = int(np.prod(sd.shape[:-1]))
            v = rng.standard_normal(sd.shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        elif leaf in ("scale", "var"):
            v = np.ones(sd.shape, np.float32)
        else:  # bias, mean
            v = np.zeros(sd.shape, np.float32)
        out[k] = jnp.asarray(v)
    return traverse_util.unflatten_dict(out, sep="/")


def _flatten_vars(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    flat = traverse_util.flatten_dict(dict(variables), sep="/")
    return {k: np.asarray(v) for k, v in flat.items()}


def save_inception_params(path: str | os.PathLike, variables: Mapping[str, Any]) -> None:
    """Write variables to `.npz` in the format `load_inception_params` reads."""
    np.savez(path, **_flatten_vars(variables))


def load_inception_params(path: str | os.PathLike, *, validate: bool = True) -> dict[str, Params]:
    """Load `InceptionV3` variables from an `.npz` file.

    Format: one array per leaf, keyed by the "/"-joined variable path, e.g.::

        params/Conv2d_1a_3x3/conv/kernel        [3, 3, 3, 32]   (HWIO)
        params/Mixed_5b/branch1x1/bn/scale       [64]
        params/Mixed_5b/branch1x1/bn/bias        [64]
        batch_stats/Mixed_5b/branch1x1/bn/mean   [64]
        batch_stats/Mixed_5b/branch1x1/bn/var    [64]

    (conv kernels have no bias; BN eps is 1e-3). `convert_torch_state_dict`
    maps a pytorch-fid / torchvision state dict (numpy arrays) to these keys;
    `save_inception_params` writes such a file. With `validate`, the keys and
    shapes are checked against the architecture. Returns
    `{"params": ..., "batch_stats": ...}` with float32 arrays.
    """
    with np.load(path) as data:
        flat = {k: np.asarray(data[k], dtype=np.float32) for k in data.files}
    variables = traverse_util.unflatten_dict(flat, sep="/")
    if validate:
        abstract = _inception_abstract(INCEPTION_SIZE, True)
        want = {k: v.shape for k, v in traverse_util.flatten_dict(abstract, sep="/").items()}
        missing = sorted(set(want) - set(flat))
        extra = sorted(set(flat) - set(want))
        bad = sorted(k for k in set(want) & set(flat) if tuple(flat[k].shape) != tuple(want[k]))
        if missing or extra or bad:
            raise ValueError(
                f"{path}: not InceptionV3 variables: missing={missing[:5]} "
                f"({len(missing)}), unexpected={extra[:5]} ({len(extra)}), "
                f"wrong shape={[(k, flat[k].shape, want[k]) for k in bad[:5]]} ({len(bad)})"
            )
    return jax.tree_util.tree_map(jnp.asarray, variables)


def convert_torch_state_dict(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Map a torchvision / pytorch-fid Inception-v3 state dict (values as numpy
    arrays, e.g. `{k: v.numpy() for k, v in sd.items()}`) to the flat `.npz`
    keys of `load_inception_params`. Conv weights OIHW -> HWIO; BN weight ->
    scale, running_mean/var -> mean/var. Keys outside the pool3 trunk (`fc`,
    `AuxLogits`, `num_batches_tracked`) are dropped."""
    out = {}
    for name, value in state_dict.items():
        parts = name.split(".")
        if not (parts[0].startswith("Conv2d_") or parts[0].startswith("Mixed_")):
            continue
        *mod, layer, leaf = parts
        prefix = "/".join(mod + [layer])
        v = np.asarray(value, dtype=np.float32)
        if layer == "conv" and leaf == "weight":
            out[f"params/{prefix}/kernel"] = v.transpose(2, 3, 1, 0)
        elif layer == "bn" and leaf in ("weight", "bias"):
            out[f"params/{prefix}/{'scale' if leaf == 'weight' else 'bias'}"] = v
        elif layer == "bn" and leaf in ("running_mean", "running_var"):
            out[f"batch_stats/{prefix}/{leaf[len('running_'):]}"] = v
        elif leaf == "num_batches_tracked":
            continue
        else:
            raise ValueError(f"unexpected Inception state-dict key {name!r}")
    return out


@functools.lru_cache(maxsize=None)
def _jitted_inception(resize_input: bool, fid_variant: bool):
    model = InceptionV3(fid_variant=fid_variant, resize_input=resize_input)
    return jax.jit(model.apply)


def inception_features(
    variables: Mapping[str, Any],
    images: np.ndarray,
    batch_size: int = 50,
    *,
    resize_input: bool = True,
    fid_variant: bool = True,
) -> np.ndarray:
    """Pool3 features `[N, 2048]` of NHWC images in [-1, 1]."""
    fn = _jitted_inception(resize_input, fid_variant)
    return _batched_apply(fn, variables, _as_images(images), batch_size)
