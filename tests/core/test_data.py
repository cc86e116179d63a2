"""Data sets: built-in sets, deterministic splits, and loaders for a user's own files."""

import gzip
import pickle
import struct

import numpy as np
import pytest

from exitflow.core.data import (
    DataSpec,
    ImageSet,
    digits,
    load_splits,
    mnist5k,
    read_cifar10_binary,
    read_cifar10_python,
    read_idx,
    read_mnist_idx,
    read_npz,
    split_indices,
)
from exitflow.core.errors import ConfigError, DataError
from exitflow.core.schema import from_data


def test_digits():
    ds = digits()
    assert len(ds) == 1797 and ds.shape == (1, 8, 8)
    assert ds.x.dtype == np.uint8 and ds.y.dtype == np.int64
    assert ds.x.max() == 255 and ds.x.min() == 0
    assert set(np.unique(ds.y)) == set(range(10))


def test_mnist5k():
    ds = mnist5k()
    assert len(ds) == 5000 and ds.shape == (1, 28, 28)
    assert ds.x.dtype == np.uint8
    assert np.array_equal(np.bincount(ds.y), np.full(10, 500))


@pytest.mark.parametrize("name", ["digits", "mnist5k"])
def test_builtin_split_is_deterministic_disjoint_and_stratified(name):
    spec = DataSpec(name=name, seed=3)
    a, b = load_splits(spec), load_splits(spec)
    for part in ("train", "val", "test"):
        assert np.array_equal(getattr(a, part).x, getattr(b, part).x)
        assert np.array_equal(getattr(a, part).y, getattr(b, part).y)
    total = len(a.train) + len(a.val) + len(a.test)
    full = digits() if name == "digits" else mnist5k()
    assert total == len(full)
    assert abs(len(a.test) - 0.15 * total) <= 10 and abs(len(a.val) - 0.15 * total) <= 10

    # a partition: every (image, label) of the full set lands in exactly one split
    def records(*sets):
        return sorted(x.tobytes() + bytes([int(y)]) for s in sets for x, y in zip(s.x, s.y, strict=False))

    assert records(a.train, a.val, a.test) == records(full)
    counts = np.bincount(a.test.y, minlength=10)
    assert counts.min() >= counts.max() - 2  # stratified
    other = load_splits(DataSpec(name=name, seed=4))
    assert not np.array_equal(other.test.y, a.test.y)


def test_spec_shape_pads_every_split():
    splits = load_splits(DataSpec(name="digits", shape=(3, 32, 32)))
    assert splits.train.shape == splits.test.shape == (3, 32, 32)
    with pytest.raises(ConfigError, match=r"shape: must be \[C, H, W\] with C = 1 or 3; got \[2, 32, 32\]"):
        from_data(DataSpec, {"shape": [2, 32, 32]})


def test_split_indices_partition_every_index():
    y = np.repeat(np.arange(7), [5, 9, 1, 30, 2, 11, 4])
    parts = split_indices(y, (0.6, 0.2, 0.2), seed=11)
    joined = np.concatenate(parts)
    assert np.array_equal(np.sort(joined), np.arange(len(y)))
    assert np.array_equal(parts[0], split_indices(y, (0.6, 0.2, 0.2), seed=11)[0])


def test_to_shape_pads_and_repeats_channels():
    ds = ImageSet("t", np.full((2, 1, 28, 28), 7, np.uint8), np.array([0, 1]), 10)
    out = ds.to_shape(3, 32, 32)
    assert out.shape == (3, 32, 32)
    assert out.x[:, :, 2:30, 2:30].min() == 7 and out.x.sum() == 7 * 28 * 28 * 3 * 2
    with pytest.raises(DataError, match="cannot pad 28x28 images to a smaller 16x16"):
        ds.to_shape(3, 16, 16)


# ---------------------------------------------------------------------------- user files


def _idx(array: np.ndarray) -> bytes:
    code = 0x08
    return (
        bytes([0, 0, code, array.ndim])
        + struct.pack(f">{array.ndim}I", *array.shape)
        + array.astype(np.uint8).tobytes()
    )


def _images(n, c, h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, c, h, w), dtype=np.uint8)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_round_trip(tmp_path, gz):
    x = _images(12, 1, 28, 28)[:, 0]
    y = np.arange(12) % 10
    write = (lambda p, b: p.write_bytes(gzip.compress(b))) if gz else (lambda p, b: p.write_bytes(b))
    suffix = ".gz" if gz else ""
    write(tmp_path / f"train-images-idx3-ubyte{suffix}", _idx(x))
    write(tmp_path / f"train-labels-idx1-ubyte{suffix}", _idx(y))
    write(tmp_path / f"t10k-images-idx3-ubyte{suffix}", _idx(x[:5]))
    write(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", _idx(y[:5]))
    ds = read_mnist_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", tmp_path / f"train-labels-idx1-ubyte{suffix}")
    assert np.array_equal(ds.x[:, 0], x) and np.array_equal(ds.y, y)
    splits = load_splits(DataSpec(name="mnist_idx", path=str(tmp_path), val_fraction=0.25))
    assert np.array_equal(splits.test.x[:, 0], x[:5])  # the files' own test set is kept
    assert len(splits.train) + len(splits.val) == 12


def test_idx_errors(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x03")
    with pytest.raises(DataError, match="not an idx file"):
        read_idx(bad)
    truncated = tmp_path / "truncated"
    truncated.write_bytes(_idx(np.zeros((4, 3, 3)))[:-5])
    with pytest.raises(DataError, match=r"header says 4x3x3 = 36 bytes of data, file holds 31"):
        read_idx(truncated)
    with pytest.raises(DataError, match="file not found"):
        read_idx(tmp_path / "missing")
    corrupt = tmp_path / "c.gz"
    corrupt.write_bytes(b"\x1f\x8b" + b"garbage")
    with pytest.raises(DataError, match="corrupt gzip data"):
        read_idx(corrupt)


def test_mnist_idx_label_out_of_range_and_count_mismatch(tmp_path):
    (tmp_path / "i").write_bytes(_idx(np.zeros((3, 4, 4))))
    (tmp_path / "l").write_bytes(_idx(np.array([1, 12, 3])))
    with pytest.raises(DataError, match=r"label 12 at index 1 is outside 0..9"):
        read_mnist_idx(tmp_path / "i", tmp_path / "l")
    (tmp_path / "l").write_bytes(_idx(np.array([1, 2])))
    with pytest.raises(DataError, match="3 images but 2 labels"):
        read_mnist_idx(tmp_path / "i", tmp_path / "l")


def test_mnist_idx_folder_without_labels(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx(np.zeros((3, 4, 4))))
    with pytest.raises(DataError, match="found train-images-idx3-ubyte but not its labels file"):
        load_splits(DataSpec(name="mnist_idx", path=str(tmp_path)))


def _cifar_binary(x, y) -> bytes:
    return np.concatenate([y[:, None].astype(np.uint8), x.reshape(len(x), -1)], axis=1).tobytes()


def test_cifar10_binary_round_trip(tmp_path):
    x, y = _images(20, 3, 32, 32), np.arange(20) % 10
    (tmp_path / "data_batch_1.bin").write_bytes(_cifar_binary(x[:10], y[:10]))
    (tmp_path / "data_batch_2.bin").write_bytes(_cifar_binary(x[10:16], y[10:16]))
    (tmp_path / "test_batch.bin").write_bytes(_cifar_binary(x[16:], y[16:]))
    ds = read_cifar10_binary(tmp_path / "data_batch_1.bin")
    assert np.array_equal(ds.x, x[:10]) and np.array_equal(ds.y, y[:10])
    splits = load_splits(DataSpec(name="cifar10_binary", path=str(tmp_path), val_fraction=0.2))
    assert len(splits.train) + len(splits.val) == 16
    assert np.array_equal(splits.test.x, x[16:]) and splits.test.shape == (3, 32, 32)


def test_cifar10_binary_errors(tmp_path):
    (tmp_path / "data_batch_1.bin").write_bytes(b"\x00" * 3000)
    with pytest.raises(DataError, match="3000 bytes is not a whole number of CIFAR-10 records"):
        load_splits(DataSpec(name="cifar10_binary", path=str(tmp_path)))
    x = _images(2, 3, 32, 32)
    (tmp_path / "data_batch_1.bin").write_bytes(_cifar_binary(x, np.array([3, 10])))
    with pytest.raises(DataError, match="label 10 at index 1 is outside 0..9"):
        read_cifar10_binary(tmp_path / "data_batch_1.bin")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no CIFAR-10 training batch"):
        load_splits(DataSpec(name="cifar10_binary", path=str(empty)))


def _cifar_python(x, y) -> bytes:
    batch = {
        b"batch_label": b"testing batch 1 of 1",
        b"labels": [int(v) for v in y],
        b"data": x.reshape(len(x), -1),
        b"filenames": [b"f%d.png" % i for i in range(len(y))],
    }
    return pickle.dumps(batch, protocol=2)


def test_cifar10_python_round_trip(tmp_path):
    x, y = _images(10, 3, 32, 32, seed=1), np.arange(10)
    (tmp_path / "data_batch_1").write_bytes(_cifar_python(x[:8], y[:8]))
    (tmp_path / "test_batch").write_bytes(_cifar_python(x[8:], y[8:]))
    ds = read_cifar10_python(tmp_path / "data_batch_1")
    assert np.array_equal(ds.x, x[:8]) and np.array_equal(ds.y, y[:8])
    splits = load_splits(DataSpec(name="cifar10_python", path=str(tmp_path), val_fraction=0.25))
    assert np.array_equal(splits.test.x, x[8:])


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


def test_cifar10_python_refuses_foreign_pickles(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": [0]}))
    with pytest.raises(DataError, match=r"not a CIFAR-10 python batch \(refusing to load (posix|os).system\)"):
        read_cifar10_python(tmp_path / "data_batch_1")
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "data_batch_1").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="not a CIFAR-10 python batch"):
        read_cifar10_python(tmp_path / "data_batch_1")
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DataError, match=r"'data' has shape \(2, 100\)"):
        read_cifar10_python(tmp_path / "data_batch_1")


def test_npz_round_trip(tmp_path):
    x, y = _images(30, 1, 9, 9)[:, 0], np.arange(30) % 3
    np.savez(tmp_path / "d.npz", x=x, y=y)
    ds = read_npz(tmp_path / "d.npz")
    assert ds.shape == (1, 9, 9) and ds.num_classes == 3
    assert np.array_equal(ds.x[:, 0], x)
    splits = load_splits(DataSpec(name="npz", path=str(tmp_path / "d.npz"), seed=1))
    assert len(splits.train) + len(splits.val) + len(splits.test) == 30


@pytest.mark.parametrize(
    "x, y, message",
    [
        (np.zeros((4, 8, 8), np.float32), np.zeros(4, np.int64), r"dtype float32 but must be uint8"),
        (
            np.zeros((4, 5, 8, 8), np.uint8),
            np.zeros(4, np.int64),
            r"shape \(4, 5, 8, 8\) but must be \(N, C, H, W\) with C = 1 or 3",
        ),
        (np.zeros((4, 64), np.uint8), np.zeros(4, np.int64), r"shape \(4, 64\) but must be"),
        (np.zeros((4, 8, 8), np.uint8), np.zeros(3, np.int64), "4 images but 3 labels"),
        (np.zeros((4, 8, 8), np.uint8), np.array([0, 1, -1, 1]), r"label -1 at index 2 is outside"),
        (np.zeros((4, 8, 8), np.uint8), np.array([0.0, 1, 1, 1]), "labels have dtype float64 but must be integers"),
    ],
)
def test_npz_bad_data(tmp_path, x, y, message):
    np.savez(tmp_path / "d.npz", x=x, y=y)
    with pytest.raises(DataError, match=message):
        read_npz(tmp_path / "d.npz")


def test_npz_missing_key_and_corrupt_file(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(DataError, match=r"\.npz lacks x and y"):
        read_npz(tmp_path / "d.npz")
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(DataError, match="not a readable .npz file"):
        read_npz(tmp_path / "bad.npz")
    with pytest.raises(DataError, match="file not found"):
        load_splits(DataSpec(name="npz", path=str(tmp_path / "none.npz")))


def test_missing_data_folder(tmp_path):
    with pytest.raises(DataError, match="data folder not found"):
        load_splits(DataSpec(name="mnist_idx", path=str(tmp_path / "nope")))


@pytest.mark.parametrize(
    "data, message",
    [
        ({"name": "digits", "path": "/x"}, "path: the built-in data set 'digits' takes no path"),
        ({"name": "npz"}, "path: the npz format needs a path"),
        ({"name": "imagenet"}, "name: must be one of 'digits', 'mnist5k'"),
        ({"val_fraction": 1.5}, "val_fraction: must be in (0, 1); got 1.5"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "val_fraction + test_fraction must leave data"),
    ],
)
def test_data_spec_rejects_bad_config(data, message):
    with pytest.raises(ConfigError) as err:
        from_data(DataSpec, data, source="run.yaml")
    assert message in str(err.value)


def test_idx_header_whose_dimensions_overflow(tmp_path):
    """Four dimensions of 65536 multiply to 2**64, which numpy's int64 wraps to 0 = the bytes the file
    holds: refused as the header it is, not reshaped (a ValueError, exit code 1, before)."""
    path = tmp_path / "huge"
    path.write_bytes(bytes([0, 0, 8, 4]) + struct.pack(">4I", *(65536,) * 4))
    with pytest.raises(
        DataError, match=r"idx header says 65536x65536x65536x65536 = 18446744073709551616 bytes of data, file holds 0"
    ) as err:
        read_idx(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_a_data_set_with_one_class_is_refused(tmp_path):
    np.savez(tmp_path / "one.npz", x=_images(20, 1, 8, 8)[:, 0], y=np.zeros(20, dtype=np.int64))
    with pytest.raises(
        DataError, match=r"one.npz: every sample has label 0; a classifier needs samples of at least 2 classes"
    ):
        load_splits(DataSpec(name="npz", path=str(tmp_path / "one.npz")))
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx(np.zeros((10, 4, 4))))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx(np.full(10, 7)))
    with pytest.raises(DataError, match="every sample has label 7"):
        load_splits(DataSpec(name="mnist_idx", path=str(tmp_path)))


def test_npz_labels_outside_the_classes(tmp_path):
    x = _images(20, 1, 8, 8)[:, 0]
    np.savez(tmp_path / "gap.npz", x=x, y=np.where(np.arange(20) % 2, 0, 9))  # labels 0 and 9 only
    with pytest.raises(
        DataError,
        match=r"gap.npz: labels reach 9 but no sample has label 1, 2, 3, 4, 5, \.\.\.; relabel to 0..1, or set data.classes: 10",  # noqa: E501 (the exact text)
    ):
        read_npz(tmp_path / "gap.npz")
    assert read_npz(tmp_path / "gap.npz", 10).num_classes == 10  # the config says 10 classes: accepted
    np.savez(tmp_path / "over.npz", x=x, y=np.arange(20) % 4)
    with pytest.raises(DataError, match=r"label 3 at index 3 is outside 0..2 \(3 classes\)"):
        load_splits(DataSpec(name="npz", path=str(tmp_path / "over.npz"), classes=3))
    np.savez(tmp_path / "neg.npz", x=x, y=np.arange(20) % 4 - 1)
    with pytest.raises(DataError, match=r"label -1 at index 0 is outside"):
        read_npz(tmp_path / "neg.npz")
    with pytest.raises(ConfigError, match=r"data: classes: only the npz format takes classes \(digits knows its own\)"):
        from_data(DataSpec, {"name": "digits", "classes": 10}, "data")
    with pytest.raises(ConfigError, match=r"classes: a classifier needs at least 2 classes; got 1"):
        from_data(DataSpec, {"name": "npz", "path": "a.npz", "classes": 1}, "data")
