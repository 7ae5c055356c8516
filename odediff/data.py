"""Host-side image data: sources chosen by `config.data.source`, deterministic batches.

Sources (`config.data.source`):
  digits        scikit-learn's bundled 8x8 digits (offline), split by holdout_fraction.
  tfds:<name>   a TensorFlow Datasets dataset read lazily through `tfds.data_source`
                (ArrayRecord random access, no TensorFlow, never downloads).
  idx:<dir>     MNIST-format IDX files (optionally .gz).
  npz:<file>    an .npz with `images` and optional `labels`.
  folder:<dir>  PNG/JPEG files, searched recursively.

Every source yields uint8 (n, size, size, channels) images; `get_batch` turns a
(seed, step) pair into the same float32 [-1, 1] batch on every run and host.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.util
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
from PIL import Image

SPLITS = ("train", "test")
SOURCES = ("digits", "tfds:<name>", "idx:<dir>", "npz:<file>", "folder:<dir>")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_SPLIT_SEED = 20240229  # fixed: the train/test holdout never changes between runs
_PERM_TAG, _FLIP_TAG = 0, 1  # keep the permutation and flip random streams apart
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataError(ValueError):
    """A data source or batch request that cannot be served, with what to do about it."""


@dataclasses.dataclass(frozen=True, eq=False)
class ImageSource:
    """A random-access image collection at the configured size and channel count."""

    name: str
    num_examples: int
    num_classes: int | None
    read_images: Callable[[np.ndarray], np.ndarray]  # checked indices -> uint8 (n, H, W, C)
    read_labels: Callable[[np.ndarray], np.ndarray] | None = None  # checked indices -> int32 (n,)

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        """uint8 images (n, H, W, C) for a 1-D array of indices."""
        return self.read_images(self._check(idx))

    @property
    def has_labels(self) -> bool:
        return self.read_labels is not None

    def get_labels(self, idx: np.ndarray) -> np.ndarray | None:
        """int32 labels (n,) for a 1-D array of indices, or None when the source has none."""
        return None if self.read_labels is None else self.read_labels(self._check(idx))

    def _check(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx)
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise IndexError(f"{self.name}: indices must be a 1-D integer array, got {idx.dtype} {idx.shape}")
        idx = idx.astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_examples):
            raise IndexError(f"{self.name}: indices out of range [0, {self.num_examples})")
        return idx


# ----------------------------------------------------------------------------- pixels


def to_model_range(images: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise DataError(f"to_model_range expects uint8 images, got {images.dtype}")
    return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def to_uint8(images: Any) -> np.ndarray:
    """float [-1, 1] (clipped) -> uint8 [0, 255], rounded to nearest."""
    x = np.clip(np.asarray(images, dtype=np.float32), -1.0, 1.0)
    return np.rint((x + np.float32(1.0)) * np.float32(127.5)).astype(np.uint8)


def _standardize_image(image: np.ndarray, size: int, channels: int) -> np.ndarray:
    """One uint8 HW/HWC image -> center square crop, resized (bicubic), at `channels`."""
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    pil = Image.fromarray(image)
    return _standardize_pil(pil, size, channels)


def _standardize_pil(pil: Image.Image, size: int, channels: int) -> np.ndarray:
    pil = pil.convert("L" if channels == 1 else "RGB")
    w, h = pil.size
    side = min(w, h)
    if w != h:
        left, top = (w - side) // 2, (h - side) // 2
        pil = pil.crop((left, top, left + side, top + side))
    if side != size:
        pil = pil.resize((size, size), Image.Resampling.BICUBIC)  # PIL antialiases when shrinking
    out = np.asarray(pil, dtype=np.uint8)
    return out[..., None] if channels == 1 else out


def _standardize_all(images: np.ndarray, size: int, channels: int) -> np.ndarray:
    """uint8 (n, H, W, C) -> (n, size, size, channels); a no-op when already there."""
    n, h, w, c = images.shape
    if (h, w, c) == (size, size, channels):
        return np.ascontiguousarray(images)
    out = np.empty((n, size, size, channels), np.uint8)
    for i in range(n):
        out[i] = _standardize_image(images[i], size, channels)
    return out


def _images_to_uint8(images: np.ndarray, where: str) -> np.ndarray:
    """Array from a file -> uint8 NHWC; floats in [0, 1] or [-1, 1] are rescaled."""
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise DataError(f"{where}: images must be NHW or NHWC with C in 1/3/4, got shape {images.shape}")
    if images.dtype == np.uint8:
        return images
    if images.dtype.kind in "iu":
        if images.size and (images.min() < 0 or images.max() > 255):
            raise DataError(f"{where}: integer images must lie in 0..255, got {images.min()}..{images.max()}")
        return images.astype(np.uint8)
    if images.dtype.kind != "f":
        raise DataError(f"{where}: images must be uint8 or float, got {images.dtype}")
    lo, hi = (float(images.min()), float(images.max())) if images.size else (0.0, 1.0)
    if not np.isfinite([lo, hi]).all() or lo < -1.0 or hi > 1.0:
        raise DataError(f"{where}: float images must be in [0, 1] or [-1, 1], got range [{lo}, {hi}]")
    if lo < 0.0:  # [-1, 1]
        return to_uint8(images)
    return np.rint(np.asarray(images, np.float32) * np.float32(255.0)).astype(np.uint8)  # [0, 1]


# ----------------------------------------------------------------------------- splits and sources


def _holdout_indices(num_examples: int, holdout_fraction: float, split: str, where: str) -> np.ndarray:
    """Sorted indices of `split` under a fixed permutation; train and test never overlap."""
    if not 0.0 <= holdout_fraction < 1.0:
        raise DataError(f"data.holdout_fraction={holdout_fraction} must be in [0, 1)")
    num_test = int(round(num_examples * holdout_fraction))
    perm = np.random.default_rng(_SPLIT_SEED).permutation(num_examples)
    idx = np.sort(perm[:num_test] if split == "test" else perm[num_test:])
    if idx.size == 0:
        raise DataError(
            f"{where}: split {split!r} is empty ({num_examples} examples, holdout_fraction={holdout_fraction}): "
            "raise data.holdout_fraction or add data"
        )
    return idx


def _take(array: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return array[idx]


def _array_source(
    name: str, images: np.ndarray, labels: np.ndarray | None, c: ml_collections.ConfigDict, idx: np.ndarray | None
) -> ImageSource:
    """In-memory source: uint8 NHWC images (and labels) at `idx` (None: all), at the config's size/channels."""
    if labels is not None and len(labels) != len(images):
        raise DataError(f"{name}: {len(labels)} labels for {len(images)} images")
    if idx is not None:
        images, labels = images[idx], None if labels is None else labels[idx]
    images = _standardize_all(images, c.image_size, c.channels)
    return ImageSource(
        name=name,
        num_examples=len(images),
        num_classes=int(labels.max()) + 1 if labels is not None and labels.size else None,
        read_images=functools.partial(_take, images),
        read_labels=None if labels is None else functools.partial(_take, labels.astype(np.int32)),
    )


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits, images (1797, 8, 8) in 0..16 and labels, as `load_digits`
    gives them, read from its bundled file so that training need not import sklearn.datasets."""
    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.images, digits.target
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int)


def _load_digits(c: ml_collections.ConfigDict, split: str) -> ImageSource:
    digit_images, labels = digits_arrays()
    images = np.rint(digit_images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    idx = _holdout_indices(len(images), c.holdout_fraction, split, "digits")
    return _array_source("digits", images, labels, c, idx)


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (optionally gzip'd): big-endian magic, dims, then data."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read IDX file ({e}): re-download or fix it") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(f"{path}: IDX dims {dims} need {expected} data bytes, file has {len(raw) - header}")
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _idx_images_files(directory: Path) -> dict[str, Path]:
    """{'train': path, 'test': path} or {'all': path} for the IDX image files in a directory."""
    files = sorted(p for p in directory.iterdir() if "images-idx3-ubyte" in p.name and p.is_file())
    if not files:
        raise DataError(f"idx:{directory} has no '*images-idx3-ubyte[.gz]' file: point it at an MNIST-format dir")
    if len(files) == 1:
        return {"all": files[0]}
    train = [p for p in files if "train" in p.name]
    test = [p for p in files if "t10k" in p.name or "test" in p.name]
    if len(train) != 1 or len(test) != 1:
        raise DataError(
            f"idx:{directory} has image files {[p.name for p in files]}: expected one train-* and one t10k-* file"
        )
    return {"train": train[0], "test": test[0]}


def _idx_labels(images_path: Path) -> np.ndarray | None:
    labels_path = images_path.with_name(images_path.name.replace("images-idx3", "labels-idx1"))
    return read_idx(labels_path) if labels_path.is_file() else None


def _load_idx(c: ml_collections.ConfigDict, directory: Path, split: str) -> ImageSource:
    if not directory.is_dir():
        raise DataError(f"idx:{directory} is not a directory: pass idx:<dir with *-images-idx3-ubyte[.gz]>")
    files = _idx_images_files(directory)
    path = files.get(split, files.get("all"))
    images, labels = _images_to_uint8(read_idx(path), str(path)), _idx_labels(path)
    if "all" in files:
        idx = _holdout_indices(len(images), c.holdout_fraction, split, f"idx:{directory}")
        return _array_source(f"idx:{directory}", images, labels, c, idx)
    return _array_source(f"idx:{directory}[{split}]", images, labels, c, None)


def _load_npz(c: ml_collections.ConfigDict, path: Path, split: str) -> ImageSource:
    if not path.is_file():
        raise DataError(f"npz:{path} does not exist: pass npz:<file.npz with an 'images' array>")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {key: f[key] for key in f.files if key in ("images", "labels")}
    except (OSError, ValueError) as e:
        raise DataError(f"npz:{path} cannot be read as .npz ({e}): save it with numpy.savez") from e
    if "images" not in arrays:
        raise DataError(f"npz:{path} has no 'images' array: save it with numpy.savez(path, images=..., labels=...)")
    images, labels = arrays["images"], arrays.get("labels")
    if labels is not None and (labels.ndim != 1 or labels.dtype.kind not in "iu"):
        raise DataError(f"npz:{path}: 'labels' must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    images = _images_to_uint8(images, f"npz:{path}")
    idx = _holdout_indices(len(images), c.holdout_fraction, split, f"npz:{path}")
    return _array_source(f"npz:{path}", images, labels, c, idx)


def _read_image_file(path: Path, size: int, channels: int) -> np.ndarray:
    try:
        with Image.open(path) as pil:
            return _standardize_pil(pil, size, channels)
    except OSError as e:  # PIL's UnidentifiedImageError is an OSError
        raise DataError(f"folder: cannot read image {path} ({e}): remove or fix the file") from e


def _check_image_file(path: Path) -> None:
    try:
        with Image.open(path):  # reads the header only
            pass
    except OSError as e:  # PIL's UnidentifiedImageError is an OSError
        raise DataError(f"folder: cannot read image {path} ({e}): remove or fix the file") from e


def _read_files(files: list[Path], size: int, channels: int, idx: np.ndarray) -> np.ndarray:
    out = np.empty((len(idx), size, size, channels), np.uint8)
    for j, i in enumerate(idx):
        out[j] = _read_image_file(files[int(i)], size, channels)
    return out


def _load_folder(c: ml_collections.ConfigDict, directory: Path, split: str) -> ImageSource:
    """Files are checked now and decoded, cropped and resized when read (in the input
    pipeline's threads or workers)."""
    if not directory.is_dir():
        raise DataError(f"folder:{directory} is not a directory: pass folder:<dir of PNG/JPEG files>")
    files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"folder:{directory} has no {'/'.join(IMAGE_SUFFIXES)} files: point it at an image dir")
    idx = _holdout_indices(len(files), c.holdout_fraction, split, f"folder:{directory}")
    files = [files[i] for i in idx]
    for path in files:
        _check_image_file(path)
    return ImageSource(
        name=f"folder:{directory}",
        num_examples=len(files),
        num_classes=None,
        read_images=functools.partial(_read_files, files, c.image_size, c.channels),
    )


# ----------------------------------------------------------------------------- tfds


def _tfds_images(data_source: Any, size: int, channels: int, idx: np.ndarray) -> np.ndarray:
    out = np.empty((len(idx), size, size, channels), np.uint8)
    for j, i in enumerate(idx):  # one at a time: mocked sources (tfds.testing) lack __getitems__
        out[j] = _standardize_image(np.asarray(data_source[int(i)]["image"], np.uint8), size, channels)
    return out


def _tfds_labels(data_source: Any, idx: np.ndarray) -> np.ndarray:
    return np.array([int(data_source[int(i)]["label"]) for i in idx], np.int32)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _tfds_split(builder: Any, split: str) -> str:
    """'test' falls back to 'validation' for datasets without a test split (lsun)."""
    known = builder.info.splits  # empty when not prepared (or mocked)
    if split == "test" and known and "test" not in known and "validation" in known:
        return "validation"
    return split


def _tfds_not_ready(name: str, builder: Any, error: Exception) -> DataError:
    """Explain why `tfds.data_source` failed, without touching the network."""
    where = str(builder.data_dir_root)
    build = f"run `tfds build {name} --file_format=array_record --data_dir={where}` on a machine with network"
    if not builder.is_prepared():
        return DataError(
            f"tfds dataset {name!r} is not prepared in {where} and cannot be downloaded offline: "
            f"{build}, or pass --config.data.data_dir=<dir holding it>"
        )
    return DataError(
        f"tfds dataset {name!r} in {builder.data_dir} cannot be read by random access ({_first_line(error)}): "
        f"it must be stored as array_record; {build}"
    )


def _load_tfds(c: ml_collections.ConfigDict, name: str, split: str) -> ImageSource:
    import tensorflow_datasets as tfds  # lazy: ~0.3 s import, only needed here

    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?(:[\d.*]+)?", name):  # no 'namespace:' (those fetch remotely)
        raise DataError(f"tfds name {name!r} is not of the form name[/config][:version], e.g. lsun/church_outdoor")
    data_dir = c.data_dir or None
    try:
        builder = tfds.builder(name, data_dir=data_dir)  # local only: reads nothing remote
    except tfds.core.registered.DatasetNotFoundError as e:
        raise DataError(f"tfds dataset {name!r} does not exist in tensorflow-datasets: check the name") from e
    except Exception as e:  # noqa: BLE001 -- bad version/config: AssertionError, ValueError, ...
        raise DataError(f"tfds dataset {name!r} cannot be constructed ({_first_line(e)}): fix config/version") from e
    tfds_split = _tfds_split(builder, split)
    try:
        source = tfds.data_source(name, split=tfds_split, data_dir=data_dir, download=False)
    except Exception as e:  # noqa: BLE001 -- tfds raises KeyError/NotImplementedError/... when not prepared
        raise _tfds_not_ready(name, builder, e) from e
    features = source.dataset_info.features
    if "image" not in features:
        raise DataError(f"tfds dataset {name!r} has no 'image' feature (has {list(features)}): use an image dataset")
    has_label = "label" in features and hasattr(features["label"], "num_classes")
    return ImageSource(
        name=f"tfds:{name}[{tfds_split}]",
        num_examples=len(source),
        num_classes=features["label"].num_classes if has_label else None,
        read_images=functools.partial(_tfds_images, source, c.image_size, c.channels),
        read_labels=functools.partial(_tfds_labels, source) if has_label else None,
    )


# ----------------------------------------------------------------------------- public entry points


def _check_config(c: ml_collections.ConfigDict, split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"split={split!r} is not one of {SPLITS}")
    if not isinstance(c.image_size, (int, np.integer)) or c.image_size <= 0:
        raise DataError(f"data.image_size={c.image_size!r} must be a positive integer, e.g. 32")
    if c.channels not in (1, 3):
        raise DataError(f"data.channels={c.channels!r} must be 1 (grey) or 3 (RGB)")


def load_source(data_config: ml_collections.ConfigDict, split: str = "train") -> ImageSource:
    """The `split` ("train" | "test") of `data_config.source`, at image_size/channels."""
    c = data_config
    _check_config(c, split)
    source = str(c.source)
    kind, _, arg = source.partition(":")
    if kind == "digits" and not arg:
        return _load_digits(c, split)
    if kind in ("tfds", "idx", "npz", "folder") and not arg:
        raise DataError(f"data.source={source!r} needs an argument after ':', e.g. {kind}:<...>")
    if kind == "tfds":
        return _load_tfds(c, arg, split)
    if kind == "idx":
        return _load_idx(c, Path(arg).expanduser(), split)
    if kind == "npz":
        return _load_npz(c, Path(arg).expanduser(), split)
    if kind == "folder":
        return _load_folder(c, Path(arg).expanduser(), split)
    raise DataError(f"data.source={source!r} is not known: use one of {', '.join(SOURCES)}")


def batch_indices(num_examples: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Example indices of global batch `step`: a pure function of (seed, step).

    Position p = step * batch_size + j lies in epoch p // num_examples, whose order is a
    permutation seeded by (seed, epoch); batches run on across epoch boundaries.
    """
    if num_examples <= 0 or batch_size <= 0 or step < 0 or seed < 0:
        raise DataError(
            f"batch_indices needs num_examples > 0, batch_size > 0, step >= 0, seed >= 0; "
            f"got {num_examples}, {batch_size}, {step}, {seed}"
        )
    positions = np.int64(step) * np.int64(batch_size) + np.arange(batch_size, dtype=np.int64)
    epochs, offsets = np.divmod(positions, np.int64(num_examples))
    out = np.empty(batch_size, np.int64)
    for epoch in np.unique(epochs):
        mask = epochs == epoch
        out[mask] = _epoch_order(num_examples, seed, int(epoch))[offsets[mask]]
    return out


@functools.lru_cache(maxsize=4)
def _epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The order of one epoch, drawn once per epoch rather than once per batch."""
    order = np.random.default_rng([_PERM_TAG, seed, epoch]).permutation(num_examples)
    order.flags.writeable = False
    return order


def flip_mask(batch_size: int, seed: int, step: int) -> np.ndarray:
    """Which positions of global batch `step` are flipped: a pure function of (seed, step)."""
    return np.random.default_rng([_FLIP_TAG, seed, step]).random(batch_size) < 0.5


def get_batch(
    source: ImageSource,
    data_config: ml_collections.ConfigDict,
    batch_size: int,
    seed: int,
    step: int,
    process_index: int = 0,
    process_count: int = 1,
    with_labels: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """This process's contiguous slice of global batch `step`: float32 [-1, 1] NHWC, and
    with `with_labels` also its int32 labels, as (images, labels)."""
    if process_count <= 0 or batch_size % process_count != 0:
        raise DataError(f"batch_size={batch_size} is not divisible by process_count={process_count}")
    if not 0 <= process_index < process_count:
        raise DataError(f"process_index={process_index} is not in [0, {process_count})")
    per_process = batch_size // process_count
    local = slice(process_index * per_process, (process_index + 1) * per_process)
    idx = batch_indices(len(source), batch_size, seed, step)[local]
    if with_labels and not source.has_labels:
        raise DataError(f"{source.name} has no labels: use a labelled source for a class-conditional model")
    images = source[idx]
    if data_config.random_flip:
        flip = flip_mask(batch_size, seed, step)[local]
        images[flip] = images[flip, :, ::-1]
    return (to_model_range(images), source.get_labels(idx)) if with_labels else to_model_range(images)
