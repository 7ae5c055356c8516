"""Inception-v3 with the pytorch-fid architecture (pool3, 2048-d), in Flax, for FID.

No weights ship with any package and nothing is downloaded: `load_inception_params`
reads a local `.npz` (its format is documented there), which
`convert_torch_state_dict` + `save_inception_params` make from a pytorch-fid or
torchvision state dict. Images are float NHWC in [-1, 1].
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from odediff.features import Params, as_images, batched_apply


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
            self.features,
            self.kernel,
            self.strides,
            padding=_pad(self.padding),
            use_bias=False,
            name="conv",
        )(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


def _avg_pool3(x: jax.Array, count_include_pad: bool) -> jax.Array:
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=count_include_pad)


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
            x = jax.image.resize(x, (x.shape[0], INCEPTION_SIZE, INCEPTION_SIZE, 3), "bilinear", antialias=False)
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
            out[f"batch_stats/{prefix}/{leaf[len('running_') :]}"] = v
        elif leaf == "num_batches_tracked":
            continue
        else:
            raise ValueError(f"unexpected Inception state-dict key {name!r}")
    return out


@functools.cache
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
    return batched_apply(fn, variables, as_images(images), batch_size)
