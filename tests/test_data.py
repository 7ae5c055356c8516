"""odediff.data: sources, splits, deterministic batches and clear errors (numpy only)."""

import collections
import gzip
import socket
import time
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from PIL import Image

from odediff import data
from odediff.config import default_config
from odediff.data import DataError

SHARED_MNIST = Path(__file__).parents[2] / "shared/data/mnist"


def make_config(**overrides) -> ml_collections.ConfigDict:
    c = default_config().data
    for key, value in overrides.items():
        setattr(c, key, value)
    return c


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(payload)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every test here must work offline: any socket connection fails loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError("odediff.data tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


# ----------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits_train():
    return data.load_source(make_config(), "train")


def test_digits_shapes_range_and_labels(digits_train):
    test = data.load_source(make_config(), "test")
    assert len(digits_train) + len(test) == 1797
    assert len(test) == round(1797 * 0.1)
    images = digits_train[np.arange(len(digits_train))]
    assert images.shape == (len(digits_train), 16, 16, 1) and images.dtype == np.uint8
    assert images.max() > 200 and images.min() == 0
    labels = digits_train.get_labels(np.arange(5))
    assert labels.dtype == np.int32 and labels.shape == (5,) and digits_train.num_classes == 10


def test_digits_are_scikit_learns_load_digits_bit_for_bit():
    from sklearn.datasets import load_digits

    images, labels = data.digits_arrays()
    reference = load_digits()
    np.testing.assert_array_equal(images, reference.images)
    np.testing.assert_array_equal(labels, reference.target)


def rows(src: data.ImageSource) -> collections.Counter:
    idx = np.arange(len(src))
    return collections.Counter(im.tobytes() + bytes([lbl]) for im, lbl in zip(src[idx], src.get_labels(idx)))


def test_digits_train_test_partition():
    # train + test is exactly the dataset (as a multiset: digits has a few duplicate images), and fixed.
    from sklearn.datasets import load_digits

    c = make_config(image_size=8)
    train, test = data.load_source(c, "train"), data.load_source(c, "test")
    raw = load_digits()
    raw_images = np.rint(raw.images * (255 / 16)).astype(np.uint8)[..., None]
    full = collections.Counter(im.tobytes() + bytes([t]) for im, t in zip(raw_images, raw.target))
    assert rows(train) + rows(test) == full
    assert rows(data.load_source(c, "test")) == rows(test)


def test_digits_rgb_32():
    src = data.load_source(make_config(image_size=32, channels=3), "test")
    images = src[np.array([0, 1, 2])]
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[..., 0], images[..., 2])  # grey -> RGB: equal channels


def test_source_index_checks(digits_train):
    with pytest.raises(IndexError):
        digits_train[np.array([len(digits_train)])]
    with pytest.raises(IndexError):
        digits_train[np.array([[0]])]
    assert digits_train[np.array([], np.int64)].shape == (0, 16, 16, 1)


# ----------------------------------------------------------------------------- pixel ranges


def test_model_range_round_trip():
    x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    y = data.to_model_range(x)
    assert y.dtype == np.float32 and y.min() == -1.0 and y.max() == 1.0
    np.testing.assert_array_equal(data.to_uint8(y), x)
    np.testing.assert_array_equal(data.to_uint8(np.array([-3.0, 0.0, 7.0])), [0, 128, 255])
    with pytest.raises(DataError, match="uint8"):
        data.to_model_range(y)


# ----------------------------------------------------------------------------- batch indices


def test_batch_indices_deterministic_and_cover_each_epoch():
    n, bs = 10, 5
    first = np.concatenate([data.batch_indices(n, bs, seed=3, step=s) for s in range(2)])
    assert sorted(first) == list(range(n))
    second = np.concatenate([data.batch_indices(n, bs, seed=3, step=s) for s in range(2, 4)])
    assert sorted(second) == list(range(n)) and not np.array_equal(first, second)
    np.testing.assert_array_equal(data.batch_indices(n, bs, 3, 1), data.batch_indices(n, bs, 3, 1))
    assert not np.array_equal(data.batch_indices(100, 50, 3, 0), data.batch_indices(100, 50, 4, 0))


def test_batch_indices_cross_epoch_boundary():
    n, bs = 7, 3
    stream = np.concatenate([data.batch_indices(n, bs, seed=0, step=s) for s in range(7)])  # 21 = 3 epochs
    for e in range(3):
        assert sorted(stream[e * n : (e + 1) * n]) == list(range(n))
    straddling = data.batch_indices(n, bs, seed=0, step=2)  # positions 6, 7, 8
    np.testing.assert_array_equal(straddling, stream[6:9])
    big = data.batch_indices(n, 16, seed=0, step=0)  # one batch over 3 epochs
    assert sorted(big[:7]) == list(range(n)) and sorted(big[7:14]) == list(range(n))


def test_batch_indices_independent_of_history():
    late = data.batch_indices(50, 8, seed=1, step=123)
    for s in range(5):
        data.batch_indices(50, 8, seed=1, step=s)
    np.testing.assert_array_equal(data.batch_indices(50, 8, seed=1, step=123), late)
    with pytest.raises(DataError, match="batch_size > 0"):
        data.batch_indices(50, 0, seed=1, step=0)


# ----------------------------------------------------------------------------- get_batch


def test_get_batch_process_slices_concatenate(digits_train):
    c = make_config(random_flip=True)
    full = data.get_batch(digits_train, c, 8, seed=0, step=5)
    assert full.shape == (8, 16, 16, 1) and full.dtype == np.float32
    assert full.min() >= -1.0 and full.max() <= 1.0
    parts = [data.get_batch(digits_train, c, 8, 0, 5, process_index=i, process_count=2) for i in range(2)]
    np.testing.assert_array_equal(np.concatenate(parts), full)
    with pytest.raises(DataError, match="not divisible by process_count=3"):
        data.get_batch(digits_train, c, 8, 0, 5, process_index=0, process_count=3)


def test_get_batch_flips(digits_train):
    bs, seed, step = 64, 2, 9
    plain = data.get_batch(digits_train, make_config(random_flip=False), bs, seed, step)
    flipped = data.get_batch(digits_train, make_config(random_flip=True), bs, seed, step)
    again = data.get_batch(digits_train, make_config(random_flip=True), bs, seed, step)
    np.testing.assert_array_equal(flipped, again)
    mask = data.flip_mask(bs, seed, step)
    assert 0 < mask.sum() < bs
    np.testing.assert_array_equal(flipped[mask], plain[mask][:, :, ::-1])
    np.testing.assert_array_equal(flipped[~mask], plain[~mask])


# ----------------------------------------------------------------------------- idx


@pytest.mark.parametrize("compress", [False, True])
def test_idx_train_test_files(tmp_path, compress):
    rng = np.random.default_rng(0)
    suffix = ".gz" if compress else ""
    arrays = {}
    for prefix, n in (("train", 6), ("t10k", 4)):
        images = rng.integers(0, 256, (n, 8, 8), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)
        arrays[prefix] = images, labels
    for split, prefix in (("train", "train"), ("test", "t10k")):
        src = data.load_source(make_config(source=f"idx:{tmp_path}", image_size=8), split)
        np.testing.assert_array_equal(src[np.arange(len(src))][..., 0], arrays[prefix][0])
        np.testing.assert_array_equal(src.get_labels(np.arange(len(src))), arrays[prefix][1])


def test_read_idx_other_dtype_and_bad_magic(tmp_path):
    values = np.arange(-3, 9, dtype=np.int32).reshape(3, 4)
    write_idx(tmp_path / "x.idx", values, compress=False)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "x.idx"), values)
    (tmp_path / "bad.idx").write_bytes(b"\x12\x34\x08\x01\x00\x00\x00\x01\x00")
    with pytest.raises(DataError, match="bad magic"):
        data.read_idx(tmp_path / "bad.idx")
    (tmp_path / "short.idx").write_bytes(bytes([0, 0, 8, 1]) + np.array([5], ">u4").tobytes() + b"\x00")
    with pytest.raises(DataError, match="need 5 data bytes"):
        data.read_idx(tmp_path / "short.idx")


def test_idx_single_file_holdout_no_labels(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (20, 5, 7), dtype=np.uint8)
    write_idx(tmp_path / "stuff-images-idx3-ubyte", images, compress=False)
    c = make_config(source=f"idx:{tmp_path}", image_size=4, holdout_fraction=0.25)
    train, test = data.load_source(c, "train"), data.load_source(c, "test")
    assert (len(train), len(test)) == (15, 5)
    assert train.get_labels(np.arange(3)) is None and not train.has_labels
    assert train[np.arange(2)].shape == (2, 4, 4, 1)


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason=f"no shared MNIST IDX files at {SHARED_MNIST}")
def test_idx_real_mnist_test_set():
    c = make_config(source=f"idx:{SHARED_MNIST}", image_size=28)
    train, test = data.load_source(c, "train"), data.load_source(c, "test")
    assert (len(train), len(test)) == (9000, 1000) and train.num_classes == 10
    labels = np.concatenate([s.get_labels(np.arange(len(s))) for s in (train, test)])
    np.testing.assert_array_equal(np.bincount(labels), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    images = test[np.arange(len(test))]
    assert images.shape == (1000, 28, 28, 1) and images.max() == 255 and images[:, 0, 0].max() == 0


# ----------------------------------------------------------------------------- npz and folder


@pytest.mark.parametrize(
    "images",
    [
        np.full((10, 6, 6), 255, np.uint8),
        np.ones((10, 6, 6, 1), np.float32),  # [0, 1]
        np.concatenate([np.full((5, 6, 6, 3), -1.0), np.ones((5, 6, 6, 3))]),  # [-1, 1]
    ],
)
def test_npz_formats(tmp_path, images):
    labels = np.arange(10) % 3
    np.savez(tmp_path / "d.npz", images=images, labels=labels)
    c = make_config(source=f"npz:{tmp_path / 'd.npz'}", image_size=6, channels=3, holdout_fraction=0.2)
    train, test = data.load_source(c, "train"), data.load_source(c, "test")
    assert (len(train), len(test)) == (8, 2) and train.num_classes == 3
    out = np.concatenate([train[np.arange(8)], test[np.arange(2)]])
    assert out.shape == (10, 6, 6, 3) and set(np.unique(out)) <= {0, 255} and out.max() == 255


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "nokey.npz", x=np.zeros(3))
    with pytest.raises(DataError, match="no 'images' array"):
        data.load_source(make_config(source=f"npz:{tmp_path / 'nokey.npz'}"))
    np.savez(tmp_path / "range.npz", images=np.full((4, 6, 6), 2.5))
    with pytest.raises(DataError, match=r"must be in \[0, 1\] or \[-1, 1\]"):
        data.load_source(make_config(source=f"npz:{tmp_path / 'range.npz'}"))
    np.savez(tmp_path / "nchw.npz", images=np.zeros((4, 3, 6, 6), np.uint8))
    with pytest.raises(DataError, match="NHW or NHWC"):
        data.load_source(make_config(source=f"npz:{tmp_path / 'nchw.npz'}"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot be read as .npz"):
        data.load_source(make_config(source=f"npz:{tmp_path / 'junk.npz'}"))


def test_folder_images(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "sub").mkdir()
    for i in range(4):
        array = rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)  # portrait: center-cropped to 20x20
        Image.fromarray(array).save(tmp_path / f"{i}.png")
    Image.fromarray(np.full((12, 16), 200, np.uint8)).save(tmp_path / "sub" / "grey.JPG", quality=95)
    (tmp_path / "notes.txt").write_text("ignored")
    c = make_config(source=f"folder:{tmp_path}", image_size=8, channels=3, holdout_fraction=0.2)
    train, test = data.load_source(c, "train"), data.load_source(c, "test")
    assert (len(train), len(test)) == (4, 1) and train.num_classes is None and not train.has_labels
    images = np.concatenate([train[np.arange(4)], test[np.arange(1)]])
    assert images.shape == (5, 8, 8, 3) and images.dtype == np.uint8
    grey = [im for im in images if np.abs(im.astype(int) - 200).max() <= 3]
    assert len(grey) == 1  # the JPEG in the subfolder was found and converted to RGB


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="has no .png"):
        data.load_source(make_config(source=f"folder:{tmp_path}"))
    (tmp_path / "broken.png").write_bytes(b"definitely not a png")
    with pytest.raises(DataError, match="cannot read image .*broken.png"):
        data.load_source(make_config(source=f"folder:{tmp_path}", holdout_fraction=0.0))


# ----------------------------------------------------------------------------- tfds


def test_tfds_mnist_mocked():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6):
        src = data.load_source(make_config(source="tfds:mnist", image_size=16, channels=3), "train")
        assert len(src) == 6 and src.num_classes == 10 and src.has_labels
        images = src[np.array([0, 5, 2])]
        labels = src.get_labels(np.array([0, 5]))
    assert images.shape == (3, 16, 16, 3) and images.dtype == np.uint8
    assert labels.shape == (2,) and labels.dtype == np.int32 and 0 <= labels.min() and labels.max() < 10


def test_tfds_celeb_a_mocked_center_crop():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=3):
        src = data.load_source(make_config(source="tfds:celeb_a", image_size=64, channels=3), "test")
        images = src[np.arange(3)]
        assert src.get_labels(np.arange(3)) is None and src.num_classes is None
    assert images.shape == (3, 64, 64, 3) and images.dtype == np.uint8


@pytest.fixture(scope="module")
def tiny_tfds_dir(tmp_path_factory) -> Path:
    """A real ArrayRecord tfds dataset built offline without TensorFlow (PNG paths, no encoding)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    root = tmp_path_factory.mktemp("tfds")
    for i in range(5):
        Image.fromarray(np.full((10, 6, 3), 20 * i, np.uint8)).save(root / f"{i}.png")

    with tfds.core.registered.skip_registration():  # read back from files, as a user's prepared dataset

        class OdediffTinyImages(tfds.core.GeneratorBasedBuilder):
            VERSION = tfds.core.Version("1.0.0")

            def _info(self):
                features = tfds.features.FeaturesDict(
                    {"image": tfds.features.Image(shape=(10, 6, 3)), "label": tfds.features.ClassLabel(num_classes=4)}
                )
                return tfds.core.DatasetInfo(builder=self, features=features)

            def _split_generators(self, dl_manager):
                return {"train": self._generate_examples(5), "validation": self._generate_examples(3)}

            def _generate_examples(self, n):
                for i in range(n):
                    yield i, {"image": str(root / f"{i}.png"), "label": i % 4}

    OdediffTinyImages(data_dir=str(root), file_format="array_record").download_and_prepare()
    return root


def test_tfds_real_array_record_source(tiny_tfds_dir):
    c = make_config(source="tfds:odediff_tiny_images", data_dir=str(tiny_tfds_dir), image_size=4, channels=1)
    train, test = data.load_source(c, "train"), data.load_source(c, "test")
    assert test.name.endswith("[validation]")  # no 'test' split: falls back to 'validation'
    assert (len(train), len(test), train.num_classes) == (5, 3, 4)
    idx = np.array([2, 0, 1])
    labels = test.get_labels(idx)
    images = test[idx]
    assert images.shape == (3, 4, 4, 1) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[:, 0, 0, 0] // 20, labels)  # examples come back in index order
    assert sorted(labels) == [0, 1, 2]
    batch = data.get_batch(train, make_config(random_flip=True), 4, seed=0, step=1)
    assert batch.shape == (4, 4, 4, 1) and batch.dtype == np.float32


def test_tfds_unprepared_fails_fast_offline(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    start = time.monotonic()
    with pytest.raises(DataError, match=r"'mnist' is not prepared in .* cannot be downloaded offline: run `tfds build"):
        data.load_source(make_config(source="tfds:mnist", data_dir=str(tmp_path)), "train")
    assert time.monotonic() - start < 20
    assert list(tmp_path.iterdir()) == []  # nothing created, nothing downloaded


@pytest.mark.parametrize(
    "name, match",
    [
        ("no_such_dataset_xyz", "'no_such_dataset_xyz' does not exist"),
        ("mnist:9.9.9", "'mnist:9.9.9' cannot be constructed .*9.9.9"),
        ("huggingface:mnist", "not of the form name\\[/config\\]\\[:version\\]"),
    ],
)
def test_tfds_bad_names(tmp_path, name, match):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(DataError, match=match):
        data.load_source(make_config(source=f"tfds:{name}", data_dir=str(tmp_path)))


# ----------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "overrides, split, match",
    [
        ({"source": "imagenet"}, "train", "data.source='imagenet' is not known"),
        ({"source": "digits:extra"}, "train", "is not known"),
        ({"source": "npz:"}, "train", "needs an argument"),
        ({"source": "idx:/no/such/dir"}, "train", "idx:/no/such/dir is not a directory"),
        ({"source": "npz:/no/such.npz"}, "train", "does not exist"),
        ({"source": "folder:/no/such/dir"}, "train", "is not a directory"),
        ({"image_size": 0}, "train", "image_size=0 must be a positive integer"),
        ({"image_size": -4}, "train", "image_size=-4"),
        ({"channels": 2}, "train", "channels=2 must be 1"),
        ({}, "valid", "split='valid' is not one of"),
        ({"holdout_fraction": 0.0}, "test", "split 'test' is empty"),
        ({"holdout_fraction": 1.5}, "train", "holdout_fraction=1.5 must be in"),
    ],
)
def test_bad_inputs_raise_data_error(overrides, split, match):
    with pytest.raises(DataError, match=match):
        data.load_source(make_config(**overrides), split)


def test_idx_dir_without_images(tmp_path):
    with pytest.raises(DataError, match="has no '\\*images-idx3-ubyte"):
        data.load_source(make_config(source=f"idx:{tmp_path}"))
