"""Datasets as numpy arrays, and multi-view `tf.data` pipelines.

Loaders return `(images, labels)`: `uint8` images of shape `(N, H, W, C)`
and `int64` labels of shape `(N,)`.

| name            | splits                  | images         | source                   |
|-----------------|-------------------------|----------------|--------------------------|
| `cifar10`       | train, test             | (N, 32, 32, 3) | tensorflow-datasets      |
| `cifar100`      | train, test             | (N, 32, 32, 3) | tensorflow-datasets      |
| `stl10`         | train, test, unlabelled | (N, 96, 96, 3) | tensorflow-datasets      |
| `fashion_mnist` | train, test             | (N, 28, 28, 1) | Debian files, else keras |
| `digits`        | train, test             | (N, 8, 8, 1)   | scikit-learn (bundled)   |
| `synthetic_cifar` | train, test           | (N, 32, 32, 3) | generated (offline)      |

`fashion_mnist` reads the gzipped IDX files of the Debian package
`dataset-fashion-mnist` (`/usr/share/datasets/fashion-mnist/`) when present
and otherwise `keras.datasets.fashion_mnist.load_data()` (a download). A
dataset that cannot be had raises `DatasetNotAvailableError` with one
sentence saying how to get it (`MissingDependencyError`, also an
`ImportError`, when a Python package is missing: it names the package and
the `pip install` command); the original error is chained. Without network
the tensorflow-datasets loaders say so within `DOWNLOAD_PROBE_TIMEOUT`
seconds rather than after tfds' minutes of retries.

`multiview_dataset` turns such arrays into a `tf.data.Dataset` of batches
of V augmented views per image, the input of the contrastive losses;
`image_dataset` gives plain batches for evaluation. Both yield TensorFlow
tensors, which `Model.fit` converts under any Keras backend (TensorFlow,
JAX, PyTorch); they need TensorFlow installed.

Example:

```python
images, labels = keras_fmicl.data.load("cifar10", "train")
augmenter = keras.layers.Pipeline([
    keras.layers.RandomFlip("horizontal"),
    keras.layers.RandomTranslation(0.1, 0.1),
])
dataset = keras_fmicl.data.multiview_dataset(
    images, augmenter=augmenter, num_views=2, batch_size=256
)
for batch in dataset.take(1):
    batch["views"].shape  # (256, 2, 32, 32, 3), float32 in [0, 1]
```
"""

from __future__ import annotations

import contextlib
import gzip
import inspect
import os
from collections.abc import Iterable
from typing import Any
from typing import Callable
from typing import NamedTuple

import keras
import numpy as np

from keras_fmicl import backend_ops
from keras_fmicl.validation import check_bool
from keras_fmicl.validation import check_integer
from keras_fmicl.validation import check_positive_integer
from keras_fmicl.validation import is_real

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
"""Where the Debian package `dataset-fashion-mnist` puts its IDX files."""

SPLITS = {
    "cifar10": ("train", "test"),
    "cifar100": ("train", "test"),
    "stl10": ("train", "test", "unlabelled"),
    "fashion_mnist": ("train", "test"),
    "digits": ("train", "test"),
    "synthetic_cifar": ("train", "test"),
}
"""Dataset name -> the splits `load` accepts for it."""

NUM_CLASSES = {
    "cifar10": 10,
    "cifar100": 100,
    "stl10": 10,
    "fashion_mnist": 10,
    "digits": 10,
    "synthetic_cifar": 10,
}
"""Dataset name -> number of classes (labels in `0 .. n - 1`)."""

CLASS_NAMES = {
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                "horse", "ship", "truck"),
    "stl10": ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey",
              "ship", "truck"),
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    "digits": tuple(str(digit) for digit in range(10)),
}
"""Dataset name -> the name of each label, where the dataset has short ones."""

DIGITS_TRAIN_FRACTION = 0.8
DIGITS_SPLIT_SEED = 0
DEFAULT_RESCALE = 1.0 / 255.0

_TFDS_CHUNK = 4096
_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


class DatasetNotAvailableError(RuntimeError):
    """A dataset cannot be loaded here; the message says how to get it."""


# ---------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------


def _check_name(name: Any) -> str:
    key = name.strip().lower().replace("-", "_") if isinstance(name, str) else None
    if key not in SPLITS:
        raise ValueError(
            f"Unknown `name`: expected one of {', '.join(map(repr, SPLITS))}. "
            f"Received: name={name!r}"
        )
    return key


def _check_split(name: str, split: Any) -> str:
    if split not in SPLITS[name]:
        raise ValueError(
            f"Unknown `split` for {name!r}: expected one of "
            f"{', '.join(map(repr, SPLITS[name]))}. Received: split={split!r}"
        )
    return split


_check_positive_int = check_positive_integer


def _check_seed(seed: Any) -> int | None:
    return check_integer("seed", seed, allow_none=True)


def _check_rescale(rescale: Any) -> float:
    if not is_real(rescale) or not 0 < rescale < float("inf"):
        raise ValueError(
            "`rescale` must be a positive number (1/255 maps uint8 pixels to "
            f"[0, 1], 1.0 keeps [0, 255]). Received: rescale={rescale!r}"
        )
    return float(rescale)


def _short(err: BaseException, limit: int = 200) -> str:
    text = str(err).strip().splitlines()
    text = text[0] if text else ""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


# ---------------------------------------------------------------------------
# IDX files (MNIST / Fashion-MNIST format)
# ---------------------------------------------------------------------------


def read_idx(path: str | os.PathLike, expected_ndim: int | None = None) -> np.ndarray:
    """Reads an IDX file (the MNIST format), gzipped or not.

    An IDX file is a 4-byte magic number `0x00 0x00 <type> <ndim>`, `ndim`
    big-endian `uint32` dimensions, then the values in row-major order.
    Gzip compression is recognised from the file's first bytes.

    Args:
        path: the file.
        expected_ndim: when given, the number of dimensions the file must
            have (3 for MNIST images, 1 for labels).

    Returns:
        The array, in the file's element type (native byte order).

    Raises:
        ValueError: the file is not a well-formed IDX file (bad magic
            number, unknown type code, wrong `ndim`, truncated or oversized
            data, broken gzip stream).

    Example:

    >>> images = read_idx("train-images-idx3-ubyte.gz", expected_ndim=3)
    >>> images.shape, images.dtype
    ((60000, 28, 28), dtype('uint8'))
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as file:
            raw = file.read()
        if raw[:2] == _GZIP_MAGIC:
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
        if isinstance(err, FileNotFoundError):
            raise
        raise ValueError(f"{path} is not a readable IDX file: {_short(err)}") from err

    def invalid(reason: str) -> ValueError:
        return ValueError(f"{path} is not a valid IDX file: {reason}")

    if len(raw) < 4:
        raise invalid(f"{len(raw)} bytes, shorter than the 4-byte magic number")
    magic = raw[:4]
    if magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES:
        raise invalid(
            f"magic number 0x{magic.hex()} is not 0x0000<type><ndim> with type "
            f"in {{{', '.join(f'0x{code:02x}' for code in _IDX_DTYPES)}}}"
        )
    dtype, ndim = _IDX_DTYPES[magic[2]], magic[3]
    if expected_ndim is not None and ndim != expected_ndim:
        raise invalid(
            f"magic number 0x{magic.hex()} says {ndim} dimensions, "
            f"expected {expected_ndim}"
        )
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise invalid(f"truncated header ({len(raw)} bytes for {ndim} dimensions)")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected_size = header_size + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected_size:
        raise invalid(
            f"{len(raw) - header_size} data bytes, expected "
            f"{expected_size - header_size} for shape {shape} of {dtype.name}"
        )
    values = np.frombuffer(raw, dtype, offset=header_size).reshape(shape)
    return values.astype(dtype.newbyteorder("="))


def _find_file(directory: str, stem: str) -> str | None:
    for candidate in (stem + ".gz", stem):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


def _fashion_mnist_from_idx(directory: str, split: str) -> tuple | None:
    """Reads a split from the IDX files in `directory`; None when absent."""
    prefix = "train" if split == "train" else "t10k"
    images_path = _find_file(directory, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_file(directory, f"{prefix}-labels-idx1-ubyte")
    if images_path is None or labels_path is None:
        return None
    images = read_idx(images_path, expected_ndim=3)
    labels = read_idx(labels_path, expected_ndim=1)
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise ValueError(
            f"Fashion-MNIST files in {directory} must hold uint8 values. "
            f"Received: images {images.dtype}, labels {labels.dtype}"
        )
    if len(images) != len(labels):
        raise ValueError(
            f"Fashion-MNIST files in {directory} disagree: {len(images)} images "
            f"in {images_path} but {len(labels)} labels in {labels_path}"
        )
    num_classes = NUM_CLASSES["fashion_mnist"]
    bad = np.flatnonzero(labels >= num_classes)
    if bad.size:
        raise ValueError(
            f"{labels_path} is not a Fashion-MNIST label file: labels must lie in "
            f"0..{num_classes - 1}, but {bad.size} of {len(labels)} do not (the "
            f"first, at index {bad[0]}, is {int(labels[bad[0]])}). Received: a "
            f"corrupted or foreign file"
        )
    return images[..., None], labels.astype(np.int64)


# ---------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------


def fashion_mnist(split: str = "train", data_dir: str | None = None) -> tuple:
    """Fashion-MNIST: 28x28 grey images of 10 kinds of clothing.

    Reads the gzipped IDX files of the Debian package `dataset-fashion-mnist`
    from `data_dir` (default `FASHION_MNIST_DIR`,
    `/usr/share/datasets/fashion-mnist`) when they are there, and otherwise
    calls `keras.datasets.fashion_mnist.load_data()`, which downloads them
    once into `~/.keras/datasets`.

    Args:
        split: `"train"` (60000 images) or `"test"` (10000).
        data_dir: a directory holding `{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`.

    Returns:
        `(images, labels)`: `uint8` `(N, 28, 28, 1)` and `int64` `(N,)` in 0..9.

    Raises:
        DatasetNotAvailableError: neither the files nor the download work.
        ValueError: unknown `split`, or corrupted IDX files.
    """
    split = _check_split("fashion_mnist", split)
    directory = FASHION_MNIST_DIR if data_dir is None else os.fspath(data_dir)
    arrays = _fashion_mnist_from_idx(directory, split)
    if arrays is not None:
        return arrays
    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
    except Exception as err:
        raise DatasetNotAvailableError(
            f"Fashion-MNIST is not available: install the Debian package "
            f"`dataset-fashion-mnist` (IDX files in {FASHION_MNIST_DIR}), pass "
            f"`data_dir` pointing to its IDX files, or let "
            f"keras.datasets.fashion_mnist.load_data() download it once with "
            f"network access ({_short(err)})."
        ) from err
    images, labels = (x_train, y_train) if split == "train" else (x_test, y_test)
    return np.asarray(images, np.uint8)[..., None], np.asarray(labels, np.int64)


def digits(split: str = "train", data_dir: str | None = None) -> tuple:
    """scikit-learn's bundled 8x8 handwritten digits: tiny, offline, fast.

    The 1797 images (values 0..16) are scaled to `uint8` 0..255
    (`round(v * 255 / 16)`), permuted with a fixed seed, and split into the
    first 80% (`"train"`, 1437 images) and the last 20% (`"test"`, 360).

    Args:
        split: `"train"` or `"test"`.
        data_dir: unused (the data ships with scikit-learn); accepted so
            every loader has the same signature.

    Returns:
        `(images, labels)`: `uint8` `(N, 8, 8, 1)` and `int64` `(N,)` in 0..9.

    Raises:
        DatasetNotAvailableError: scikit-learn is not installed.
    """
    del data_dir
    split = _check_split("digits", split)
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise DatasetNotAvailableError(
            "The `digits` dataset ships with scikit-learn: install it with "
            f"`pip install scikit-learn` ({_short(err)})."
        ) from err
    bunch = load_digits()
    images = np.round(np.asarray(bunch.images) * (255.0 / 16.0)).astype(np.uint8)
    labels = np.asarray(bunch.target, np.int64)
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(labels))
    num_train = int(len(labels) * DIGITS_TRAIN_FRACTION)
    index = order[:num_train] if split == "train" else order[num_train:]
    return images[index][..., None], labels[index]


SYNTHETIC_SIZES = {"train": 50000, "test": 10000}


def synthetic_cifar(split: str = "train", data_dir: str | None = None) -> tuple:
    """CIFAR-shaped synthetic images with learnable classes, made offline.

    For machines without the data (a benchmark box with no network): 50,000
    train / 10,000 test `uint8` images of shape `(32, 32, 3)` in 10 classes.
    Class `c` is a sinusoidal grating at orientation `18 c` degrees; each
    image draws its own spatial frequency, phase, colours, contrast and
    pixel noise, so colour carries no label and orientation (which crops
    and flips partly preserve) does. Deterministic per split.

    Args:
        split: `"train"` or `"test"`.
        data_dir: unused.

    Returns:
        `(images, labels)`: `uint8` `(N, 32, 32, 3)` and `int64` `(N,)` in 0..9.
    """
    del data_dir
    split = _check_split("synthetic_cifar", split)
    count = SYNTHETIC_SIZES[split]
    rng = np.random.default_rng({"train": 11, "test": 12}[split])
    labels = rng.integers(0, 10, size=count).astype(np.int64)
    angle = np.deg2rad(18.0 * labels + rng.uniform(-4.0, 4.0, size=count))
    frequency = rng.uniform(0.15, 0.45, size=count)
    phase = rng.uniform(0.0, 2 * np.pi, size=count)
    y, x = np.mgrid[0:32, 0:32].astype(np.float32)
    images = np.empty((count, 32, 32, 3), np.uint8)
    for start in range(0, count, 5000):
        part = slice(start, min(start + 5000, count))
        projection = (
            np.cos(angle[part])[:, None, None] * x + np.sin(angle[part])[:, None, None] * y
        )
        wave = np.sin(frequency[part][:, None, None] * projection + phase[part][:, None, None])
        size = wave.shape[0]
        low = rng.uniform(0, 120, size=(size, 1, 1, 3))
        high = rng.uniform(135, 255, size=(size, 1, 1, 3))
        pixels = low + (high - low) * (0.5 + 0.5 * wave[..., None])
        pixels += rng.normal(0.0, 12.0, size=pixels.shape)
        images[part] = np.clip(pixels, 0, 255).astype(np.uint8)
    return images, labels


def _tfds_to_numpy(dataset: Any) -> tuple:
    """Materialises a supervised, unbatched tfds split as numpy arrays.

    Reads in chunks into preallocated arrays (when the size is known)
    rather than `batch_size=-1`, which batches by the builder's metadata
    and aborts the process when that metadata is missing (tfds 4.9 mock
    data under TF 2.21).
    """
    image_spec = dataset.element_spec[0]
    count = int(dataset.cardinality())
    chunks = dataset.batch(_TFDS_CHUNK).as_numpy_iterator()
    if count >= 0 and image_spec.shape.is_fully_defined():
        images = np.empty((count, *image_spec.shape), np.uint8)
        labels = np.empty((count,), np.int64)
        filled = 0
        for image_chunk, label_chunk in chunks:
            end = filled + len(image_chunk)
            images[filled:end] = image_chunk
            labels[filled:end] = label_chunk
            filled = end
        return images[:filled], labels[:filled]
    pairs = list(chunks)
    if not pairs:
        return (np.zeros((0, *image_spec.shape), np.uint8), np.zeros((0,), np.int64))
    images = np.concatenate([p[0] for p in pairs]).astype(np.uint8, copy=False)
    labels = np.concatenate([p[1] for p in pairs]).astype(np.int64, copy=False)
    return images, labels


DOWNLOAD_PROBE_TIMEOUT = 5.0
"""Seconds the tfds loaders wait for the download host to answer before they
report that there is no network (tensorflow-datasets itself retries for
minutes). `None` skips the check."""

# Import names whose pip package has another name.
_PIP_NAMES = {"sklearn": "scikit-learn", "PIL": "pillow", "yaml": "pyyaml"}


class MissingDependencyError(DatasetNotAvailableError, ImportError):
    """A dataset needs a Python package that is not installed.

    Both a `DatasetNotAvailableError` and an `ImportError`; the message names
    the package and the `pip install` command.
    """


def _missing_dependency(name: str, err: ImportError) -> MissingDependencyError:
    module = (getattr(err, "name", None) or "").split(".")[0]
    if not module:
        module = "tensorflow-datasets"
    package = _PIP_NAMES.get(module, module)
    return MissingDependencyError(
        f"Loading {name!r} with tensorflow-datasets needs the Python package "
        f"`{package}`, which is not installed: `pip install {package}` (or "
        f'`pip install "keras-fmicl[tensorflow]"`, which declares it). '
        f"This is not a network problem ({_short(err)})."
    )


def _check_download_host(name: str, url: str) -> None:
    """Fails fast, in one sentence, when `url`'s host cannot be reached.

    A HEAD request to the host's root through the environment's proxies
    (`HTTPS_PROXY`, `NO_PROXY`, ... as tensorflow-datasets' own `requests`
    download would use them), with `DOWNLOAD_PROBE_TIMEOUT` seconds to
    connect. Any HTTP answer, error statuses included, counts as reachable.
    """
    import http.client
    import urllib.error
    import urllib.parse
    import urllib.request

    if DOWNLOAD_PROBE_TIMEOUT is None:
        return
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return
    request = urllib.request.Request(f"{parts.scheme}://{parts.netloc}/", method="HEAD")
    try:
        urllib.request.urlopen(request, timeout=DOWNLOAD_PROBE_TIMEOUT).close()
    except (urllib.error.HTTPError, http.client.HTTPException):
        return  # something answered: let tensorflow-datasets try
    except OSError as err:  # URLError, refused connection, timeout
        raise DatasetNotAvailableError(
            f"Could not download {name!r}: no answer from {parts.netloc} (waited "
            f"at most {DOWNLOAD_PROBE_TIMEOUT:g} s; no network, or a proxy in "
            f"HTTPS_PROXY that does not work); run once with network access to download and "
            f"prepare it, or pass `data_dir` pointing to a prepared copy "
            f"({_short(err)})."
        ) from err


def _download_urls(builder: Any) -> list:
    """The URLs `builder` downloads from (from its checksums file)."""
    url_infos = type(builder).url_infos
    return sorted(url_infos) if url_infos else []


def _needs_download(builder: Any) -> bool:
    """Whether preparing `builder` would download (nothing prepared, nothing
    already downloaded under `<data_dir>/downloads`)."""
    if os.path.isfile(os.path.join(os.fspath(builder.data_dir), "dataset_info.json")):
        return False
    root = getattr(builder, "data_dir_root", None)
    downloads = None if root is None else os.path.join(os.fspath(root), "downloads")
    return not (downloads and os.path.isdir(downloads) and os.listdir(downloads))


def _prepare_tfds(name: str, split: str, data_dir: str | None) -> tuple:
    """`(tfds, data_dir)` once the builder of `name` is set up and, when it
    must download, its host answers (clear errors otherwise)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise MissingDependencyError(
            f"Loading {name!r} needs tensorflow-datasets: install it with "
            f'`pip install tensorflow-datasets` (or `pip install "keras-fmicl[tensorflow]"`) '
            f"and run once with network access to download the data ({_short(err)})."
        ) from err
    data_dir = None if data_dir is None else os.fspath(data_dir)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        probe = DOWNLOAD_PROBE_TIMEOUT is not None and _needs_download(builder)
        urls = _download_urls(builder) if probe else []
    except ImportError as err:
        raise _missing_dependency(name, err) from err
    except Exception as err:
        raise DatasetNotAvailableError(
            f"Could not set up {name!r} (split {split!r}) with tensorflow-datasets: "
            f"{_short(err)}."
        ) from err
    if urls:
        _check_download_host(name, urls[0])
    return tfds, data_dir


def _load_tfds(name: str, split: str, data_dir: str | None) -> tuple:
    tfds, data_dir = _prepare_tfds(name, split, data_dir)
    with _tfds_load_errors(name, split):
        dataset = tfds.load(name, split=split, as_supervised=True, data_dir=data_dir)
        return _tfds_to_numpy(dataset)


@contextlib.contextmanager
def _tfds_load_errors(name: str, split: str):
    """Turns an error of loading a prepared tfds set into one sentence."""
    try:
        yield
    except ImportError as err:
        raise _missing_dependency(name, err) from err
    except Exception as err:
        raise DatasetNotAvailableError(
            f"Could not load {name!r} (split {split!r}) with tensorflow-datasets: "
            f"run `tfds.load({name!r})` once with network access to download and "
            f"prepare it, or pass `data_dir` pointing to a prepared copy "
            f"({_short(err)})."
        ) from err


def cifar10(split: str = "train", data_dir: str | None = None) -> tuple:
    """CIFAR-10 through tensorflow-datasets (downloaded once, ~160 MB).

    Args:
        split: `"train"` (50000 images) or `"test"` (10000).
        data_dir: tensorflow-datasets' data directory (its default,
            `~/tensorflow_datasets`, when None).

    Returns:
        `(images, labels)`: `uint8` `(N, 32, 32, 3)` and `int64` `(N,)` in 0..9.

    Raises:
        MissingDependencyError: tensorflow-datasets, or a package it needs,
            is not installed (also an `ImportError`; the message gives the
            `pip install` command).
        DatasetNotAvailableError: the data can be neither found nor
            downloaded; without network this comes within
            `DOWNLOAD_PROBE_TIMEOUT` seconds.
    """
    return _load_tfds("cifar10", _check_split("cifar10", split), data_dir)


def cifar100(split: str = "train", data_dir: str | None = None) -> tuple:
    """CIFAR-100 (fine labels) through tensorflow-datasets.

    Args:
        split: `"train"` (50000 images) or `"test"` (10000).
        data_dir: tensorflow-datasets' data directory (its default when None).

    Returns:
        `(images, labels)`: `uint8` `(N, 32, 32, 3)` and `int64` `(N,)` in 0..99.

    Raises:
        DatasetNotAvailableError: as for `cifar10`.
    """
    return _load_tfds("cifar100", _check_split("cifar100", split), data_dir)


def stl10(split: str = "train", data_dir: str | None = None) -> tuple:
    """STL-10 through tensorflow-datasets (downloaded once, ~2.5 GB).

    Args:
        split: `"train"` (5000 labelled images), `"test"` (8000) or
            `"unlabelled"` (100000 images, all labelled -1; about 2.8 GB as
            uint8 in memory).
        data_dir: tensorflow-datasets' data directory (its default when None).

    Returns:
        `(images, labels)`: `uint8` `(N, 96, 96, 3)` and `int64` `(N,)` in
        0..9 (-1 for `"unlabelled"`).

    Raises:
        DatasetNotAvailableError: as for `cifar10`.
    """
    return _load_tfds("stl10", _check_split("stl10", split), data_dir)


_LOADERS: dict[str, Callable[..., tuple]] = {
    "cifar10": cifar10,
    "cifar100": cifar100,
    "stl10": stl10,
    "fashion_mnist": fashion_mnist,
    "digits": digits,
    "synthetic_cifar": synthetic_cifar,
}


def load(name: str, split: str = "train", data_dir: str | None = None) -> tuple:
    """Loads a dataset split as numpy arrays.

    Args:
        name: one of `SPLITS`: `"cifar10"`, `"cifar100"`, `"stl10"`,
            `"fashion_mnist"`, `"digits"` (case and `-`/`_` do not matter).
        split: one of `SPLITS[name]`.
        data_dir: where the data lives: tensorflow-datasets' data directory
            for cifar10/cifar100/stl10, the IDX directory for fashion_mnist;
            unused for digits.

    Returns:
        `(images, labels)`: `uint8` `(N, H, W, C)` and `int64` `(N,)`.

    Raises:
        ValueError: unknown `name` or `split`.
        DatasetNotAvailableError: the data cannot be had here; the message
            says how to get it.

    Example:

    >>> images, labels = load("digits", "test")
    >>> images.shape, images.dtype, labels.dtype
    ((360, 8, 8, 1), dtype('uint8'), dtype('int64'))
    """
    name = _check_name(name)
    split = _check_split(name, split)
    return _LOADERS[name](split=split, data_dir=data_dir)


# ---------------------------------------------------------------------------
# tf.data pipelines
# ---------------------------------------------------------------------------


def _import_tensorflow():
    try:
        import tensorflow as tf
    except ImportError as err:
        raise ImportError(
            "keras_fmicl.data pipelines are built with tf.data and need "
            "TensorFlow (the CPU build is enough, under any Keras backend): "
            "`pip install tensorflow`."
        ) from err
    return tf


def _check_images(images: Any) -> np.ndarray:
    array = np.asarray(images)
    if array.ndim != 4 or array.shape[0] == 0:
        raise ValueError(
            "`images` must be a non-empty array of shape (N, H, W, C) (add a "
            "channel axis to grey images with images[..., None]). Received: "
            f"images with shape {array.shape}"
        )
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise ValueError(
            f"`images` must hold numbers. Received: images with dtype {array.dtype}"
        )
    return array


def _check_labels(labels: Any, num_images: int) -> np.ndarray | None:
    if labels is None:
        return None
    array = np.asarray(labels)
    if array.ndim != 1 or len(array) != num_images:
        raise ValueError(
            f"`labels` must have shape (N,) with N = {num_images}, one label "
            f"per image. Received: labels with shape {array.shape}"
        )
    if np.issubdtype(array.dtype, np.integer):
        array = array.astype(np.int64)
    return array


def _check_batching(
    count: int, batch_size: Any, shuffle: Any, drop_remainder: Any, prefetch: Any, noun: str = "images"
) -> tuple[int, bool, bool, bool]:
    """`(batch_size, shuffle, drop_remainder, prefetch)` of a dataset of `count` `noun`, checked."""
    batch_size = _check_positive_int("batch_size", batch_size)
    shuffle = check_bool("shuffle", shuffle)
    drop_remainder = check_bool("drop_remainder", drop_remainder)
    prefetch = check_bool("prefetch", prefetch)
    if drop_remainder and batch_size > count:
        raise ValueError(
            f"`batch_size` is larger than the {count} {noun} and "
            "drop_remainder=True, so the dataset would be empty; lower it or "
            f"pass drop_remainder=False. Received: batch_size={batch_size}"
        )
    return batch_size, shuffle, drop_remainder, prefetch


def _augment_fn(augmenter: Any) -> Callable[[Any], Any]:
    """`x -> augmenter(x, training=True)`, without `training` if unsupported."""
    if not callable(augmenter):
        raise ValueError(
            "`augmenter` must be a Keras layer or a callable mapping a batch "
            f"of images to a batch of images. Received: augmenter={augmenter!r}"
        )
    if isinstance(augmenter, keras.Model) and not backend_ops.models_run_in_tf_data():
        raise ValueError(
            "`augmenter` runs inside tf.data, where a keras.Model or "
            f"keras.Sequential cannot run under the {keras.backend.backend()!r} "
            "backend; compose preprocessing layers with keras.layers.Pipeline "
            f"instead. Received: augmenter={augmenter!r}"
        )
    if isinstance(augmenter, keras.layers.Layer):
        return lambda x: augmenter(x, training=True)
    try:
        parameters = inspect.signature(augmenter).parameters.values()
    except (TypeError, ValueError):
        return lambda x: augmenter(x)
    if any(
        p.name == "training" or p.kind is inspect.Parameter.VAR_KEYWORD
        for p in parameters
    ):
        return lambda x: augmenter(x, training=True)
    return lambda x: augmenter(x)


def _check_value_range(augmenter: Any, images: np.ndarray, rescale: float) -> None:
    """`ValueError` if a layer of `augmenter` expects pixels on another scale.

    Only for `uint8` images, whose pixels lie in [0, 255] and reach the
    augmenter in [0, 255 rescale]; the layers checked are those with a
    `value_range` attribute (`SimCLRAugmentation`, Keras' colour layers).
    """
    if images.dtype != np.uint8 or not isinstance(augmenter, keras.layers.Layer):
        return
    expected = (0.0, 255.0 * rescale)
    layers = [augmenter]
    while layers:
        layer = layers.pop()
        value_range = getattr(layer, "value_range", None)
        if not (
            isinstance(value_range, (tuple, list))
            and len(value_range) == 2
            and all(is_real(v) for v in value_range)
        ):
            # a layer with a value range handles its own sublayers
            layers.extend(layer._flatten_layers(include_self=False, recursive=False))
        elif not np.allclose(np.asarray(value_range, np.float64), expected, rtol=1e-6, atol=0.0):
            owner = "augmenter" if layer is augmenter else f"augmenter layer {layer.name!r}"
            raise ValueError(
                f"The {owner} expects pixels in value_range={tuple(value_range)}, but the "
                f"uint8 images times rescale={rescale:g} lie in [0, {expected[1]:g}]: set its "
                f"value_range to (0, {expected[1]:g}) or `rescale` to match. Received: "
                f"value_range={tuple(value_range)}, rescale={rescale:g}"
            )


def _index_batches(
    tf: Any,
    num_images: int,
    batch_size: int,
    shuffle: bool,
    shuffle_buffer: Any,
    seed: int | None,
    drop_remainder: bool,
) -> Any:
    """Batches of image indices, shuffled afresh every epoch."""
    indices = tf.data.Dataset.range(num_images)
    if shuffle:
        buffer = num_images if shuffle_buffer is None else shuffle_buffer
        buffer = _check_positive_int("shuffle_buffer", buffer)
        indices = indices.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    return indices.batch(batch_size, drop_remainder=drop_remainder)


def multiview_dataset(
    images: Any,
    labels: Any = None,
    augmenter: Any = None,
    num_views: int = 2,
    batch_size: int = 256,
    shuffle: bool = True,
    shuffle_buffer: int | None = None,
    seed: int | None = None,
    drop_remainder: bool = True,
    rescale: float = DEFAULT_RESCALE,
    num_parallel_calls: int | None = None,
    prefetch: bool = True,
) -> Any:
    """A `tf.data.Dataset` of batches of V augmented views per image.

    Every epoch the images are shuffled and batched; then, per batch, the
    images are cast to `float32` and multiplied by `rescale`, and
    `augmenter(batch, training=True)` is called `num_views` times. Each call
    is one vectorised call on the whole batch, so it draws fresh random
    parameters for every image (as far as the augmenter does so per image:
    `keras.layers.RandomCrop`, for one, draws one offset per batch). The
    views are stacked on axis 1.

    The images stay in memory as one tensor; shuffling permutes indices
    (a full shuffle by default, cheap whatever the image size) and each
    batch gathers its images, so labels always travel with their images.

    Args:
        images: array `(N, H, W, C)`, usually `uint8`.
        labels: optional array `(N,)`; integer labels become `int64`.
        augmenter: a Keras layer or callable mapping a float batch
            `(B, H, W, C)` to `(B, H', W', C')`, called with
            `training=True` when it accepts that argument. It runs inside
            tf.data: under the JAX and PyTorch backends use Keras
            preprocessing layers, alone or composed with
            `keras.layers.Pipeline` (a `keras.Sequential` fails there).
            Its randomness is its own: seed it at construction. `None`
            repeats the (rescaled) image `num_views` times.
        num_views: V >= 1, the number of views per image (2 for the usual
            pair of positives).
        batch_size: B, images (not views) per batch.
        shuffle: reshuffle the images every epoch.
        shuffle_buffer: shuffle buffer size, in images; `None` for N (a full
            shuffle).
        seed: seed of the shuffle. With a seed the augmenter also runs
            sequentially (see `num_parallel_calls`), so a seeded augmenter
            gives the same views run after run.
        drop_remainder: drop the last, smaller batch (default), so every
            batch has exactly B images and static shapes.
        rescale: factor applied to the `float32` images before augmentation;
            the default 1/255 maps `uint8` pixels to [0, 1], 1.0 keeps
            [0, 255]. With `uint8` images a layer of the augmenter whose
            `value_range` differs from `(0, 255 * rescale)` is a `ValueError`.
        num_parallel_calls: parallel calls of the augmentation map; `None`
            for `tf.data.AUTOTUNE` without a seed and 1 with one (parallel
            calls may interleave the augmenter's random-state updates).
        prefetch: prefetch batches (`tf.data.AUTOTUNE`).

    Returns:
        A `tf.data.Dataset` of `{"views": float32 (B, V, H', W', C')}`, or
        of `({"views": ...}, labels (B,))` when `labels` is given; a model
        whose input is named `"views"` takes it directly in `fit`.

    Example:

    >>> augmenter = keras.layers.RandomFlip("horizontal", seed=1)
    >>> dataset = multiview_dataset(images, augmenter=augmenter, batch_size=128)
    >>> next(iter(dataset))["views"].shape
    TensorShape([128, 2, 32, 32, 3])
    """
    images = _check_images(images)
    labels = _check_labels(labels, len(images))
    num_views = _check_positive_int("num_views", num_views)
    batch_size, shuffle, drop_remainder, prefetch = _check_batching(
        len(images), batch_size, shuffle, drop_remainder, prefetch
    )
    seed = _check_seed(seed)
    rescale = _check_rescale(rescale)
    augment = None if augmenter is None else _augment_fn(augmenter)
    _check_value_range(augmenter, images, rescale)
    tf = _import_tensorflow()
    if num_parallel_calls is None:
        num_parallel_calls = tf.data.AUTOTUNE if seed is None else 1
    elif num_parallel_calls != tf.data.AUTOTUNE:
        num_parallel_calls = _check_positive_int("num_parallel_calls", num_parallel_calls)

    image_table = tf.convert_to_tensor(images)
    label_table = None if labels is None else tf.convert_to_tensor(labels)

    def to_views(index):
        batch = tf.cast(tf.gather(image_table, index), tf.float32) * rescale
        if augment is None:
            views = tf.stack([batch] * num_views, axis=1)
        else:
            views = tf.stack(
                [tf.convert_to_tensor(augment(batch)) for _ in range(num_views)],
                axis=1,
            )
        features = {"views": tf.cast(views, tf.float32)}
        if label_table is None:
            return features
        return features, tf.gather(label_table, index)

    dataset = _index_batches(
        tf, len(images), batch_size, shuffle, shuffle_buffer, seed, drop_remainder
    )
    dataset = dataset.map(
        to_views, num_parallel_calls=num_parallel_calls, deterministic=True
    )
    if prefetch:
        dataset = dataset.prefetch(tf.data.AUTOTUNE)
    return dataset


def image_dataset(
    images: Any,
    labels: Any = None,
    batch_size: int = 256,
    shuffle: bool = False,
    shuffle_buffer: int | None = None,
    seed: int | None = None,
    drop_remainder: bool = False,
    rescale: float = DEFAULT_RESCALE,
    prefetch: bool = True,
) -> Any:
    """A `tf.data.Dataset` of plain image batches, for evaluation.

    The images are cast to `float32` and multiplied by `rescale`, like the
    views of `multiview_dataset` but without augmentation; by default in
    order, keeping the last smaller batch, so `model.predict` sees every
    image once.

    Args:
        images: array `(N, H, W, C)`.
        labels: optional array `(N,)`; integer labels become `int64`.
        batch_size: images per batch.
        shuffle: reshuffle every epoch (for training a linear probe).
        shuffle_buffer: shuffle buffer size; `None` for N.
        seed: seed of the shuffle.
        drop_remainder: drop the last, smaller batch.
        rescale: factor applied to the `float32` images (1/255: [0, 1]).
        prefetch: prefetch batches (`tf.data.AUTOTUNE`).

    Returns:
        A `tf.data.Dataset` of `float32 (B, H, W, C)` batches, or of
        `(images, labels)` pairs when `labels` is given.

    Example:

    >>> embeddings = encoder.predict(image_dataset(test_images))
    """
    images = _check_images(images)
    labels = _check_labels(labels, len(images))
    batch_size, shuffle, drop_remainder, prefetch = _check_batching(
        len(images), batch_size, shuffle, drop_remainder, prefetch
    )
    seed = _check_seed(seed)
    rescale = _check_rescale(rescale)
    tf = _import_tensorflow()
    image_table = tf.convert_to_tensor(images)
    label_table = None if labels is None else tf.convert_to_tensor(labels)

    def gather(index):
        batch = tf.cast(tf.gather(image_table, index), tf.float32) * rescale
        if label_table is None:
            return batch
        return batch, tf.gather(label_table, index)

    dataset = _index_batches(
        tf, len(images), batch_size, shuffle, shuffle_buffer, seed, drop_remainder
    )
    dataset = dataset.map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if prefetch:
        dataset = dataset.prefetch(tf.data.AUTOTUNE)
    return dataset


# ---------------------------------------------------------------------------
# Sentences: a corpus file, tokenized tf.data batches, STS sentence pairs
# ---------------------------------------------------------------------------

STS_TASKS = (
    "STS12",
    "STS13",
    "STS14",
    "STS15",
    "STS16",
    "STSBenchmark",
    "SICKRelatedness",
)
"""The seven STS tasks SimCSE (and f-MICL) report, in their table order."""

STS_SUBSETS = {
    "STS12": ("MSRpar", "MSRvid", "SMTeuroparl", "surprise.OnWN", "surprise.SMTnews"),
    # SentEval's STS13 has no "SMT" subset (its licence).
    "STS13": ("FNWN", "headlines", "OnWN"),
    "STS14": ("deft-forum", "deft-news", "headlines", "images", "OnWN", "tweet-news"),
    "STS15": ("answers-forums", "answers-students", "belief", "headlines", "images"),
    "STS16": ("answer-answer", "headlines", "plagiarism", "postediting", "question-question"),
}
"""STS12-16 task -> its subsets, files `STS.input.<subset>.txt` (two
tab-separated sentences a line) and `STS.gs.<subset>.txt` (one gold score a
line; an empty line drops the pair) in `downstream/STS/<task>-en-test/`."""

STS_SPLITS = {
    "STSBenchmark": {"train": "sts-train.csv", "dev": "sts-dev.csv", "test": "sts-test.csv"},
    "SICKRelatedness": {
        "train": "SICK_train.txt",
        "dev": "SICK_trial.txt",
        "test": "SICK_test_annotated.txt",
    },
}
"""STS-B and SICK-R split -> SentEval file (in `downstream/STS/STSBenchmark/`
and `downstream/SICK/`); STS12-16 have a `"test"` split only."""

_STS_DIRS = {
    **{task: ("STS", f"{task}-en-test") for task in STS_SUBSETS},
    "STSBenchmark": ("STS", "STSBenchmark"),
    "SICKRelatedness": ("SICK",),
}
_STS_ALIASES = {
    "stsb": "STSBenchmark",
    "sts_b": "STSBenchmark",
    "stsbenchmark": "STSBenchmark",
    "sickr": "SICKRelatedness",
    "sick_r": "SICKRelatedness",
    "sickrelatedness": "SICKRelatedness",
    **{task.lower(): task for task in STS_SUBSETS},
}
_SENTEVAL_HINT = (
    "get SentEval's data with SimCSE's `SentEval/data/downstream/download_dataset.sh` "
    "and pass `data_dir` pointing to `SentEval/data`"
)
GLUE_STSB_SPLITS = ("train", "validation")


class STSPairs(NamedTuple):
    """Sentence pairs with gold similarity scores (an STS task or split).

    Attributes:
        sentences_a: list of N first sentences.
        sentences_b: list of N second sentences.
        scores: float64 `(N,)` gold scores (0-5 for STS, 1-5 for SICK-R).
        subsets: `(N,)` array naming each pair's subset (STS12-16), or its
            split for STS-B and SICK-R.
    """

    sentences_a: list
    sentences_b: list
    scores: np.ndarray
    subsets: np.ndarray


def _check_path(path: Any, argument: str = "path") -> str:
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise ValueError(
            f"`{argument}` must be a path (str or os.PathLike). Received: "
            f"{argument}={path!r:.80}"
        )
    return os.fspath(path)


def _text_lines(path: str, argument: str = "path") -> list[str]:
    """The lines of the UTF-8 text file `path`, without line ends.

    A missing file, a directory, a binary file (a NUL byte) or bytes that
    are not UTF-8 raise a `ValueError` naming the file and the line.
    """
    if not os.path.isfile(path):
        what = "a directory" if os.path.isdir(path) else "no such file"
        raise ValueError(
            f"`{argument}` must be an existing UTF-8 text file. Received: "
            f"{argument}={path!r} ({what})"
        )
    with open(path, "rb") as handle:
        raw = handle.read()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    lines = raw.splitlines()
    for number, line in enumerate(lines, start=1):
        if b"\x00" in line:
            raise ValueError(
                f"`{argument}` must be a UTF-8 text file; {path!r} holds a NUL "
                f"byte on line {number}: it looks binary. Received: {argument}={path!r}"
            )
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(
                f"`{argument}` must be a UTF-8 text file; line {number} of "
                f"{path!r} is not valid UTF-8 ({err.reason} at byte {err.start}). "
                f"Received: {argument}={path!r}"
            ) from None
    return raw.decode("utf-8").splitlines()


def load_sentences(path: str | os.PathLike) -> list[str]:
    """The sentences of a corpus file, one a line (SimCSE's wiki1m format).

    Lines are stripped of surrounding white space; empty lines are skipped.

    Args:
        path: a UTF-8 text file, e.g. `wiki1m_for_simcse.txt` (10^6 English
            Wikipedia sentences).

    Returns:
        The list of sentences, in file order.

    Raises:
        ValueError: the file is missing, a directory, binary, not UTF-8 (the
            message gives the line), or holds no sentence.

    Example:

    >>> sentences = load_sentences("wiki1m_for_simcse.txt")
    >>> len(sentences)
    1000000
    """
    path = _check_path(path)
    sentences = [line.strip() for line in _text_lines(path)]
    sentences = [sentence for sentence in sentences if sentence]
    if not sentences:
        raise ValueError(
            f"`path` must hold at least one sentence (one a line). Received: "
            f"path={path!r} with no non-empty line"
        )
    return sentences


def _is_keras_hub_tokenizer(layer: Any) -> bool:
    try:
        import keras_hub
    except ImportError:
        return False
    return isinstance(layer, keras_hub.tokenizers.Tokenizer)


def _token_id(tokenizer: Any, names: tuple[str, ...], default: int | None) -> int | None:
    for name in names:
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return default


def _packing_preprocessor(tokenizer: Any, sequence_length: Any) -> Callable[[Any], dict]:
    """A tokenizer plus `[CLS] ... [SEP]` packing, as keras-hub's single
    sentence preprocessors do: `{"token_ids", "padding_mask", "segment_ids"}`."""
    import keras_hub

    if sequence_length is None:
        raise ValueError(
            "`sequence_length` is needed when `preprocessor` is a bare keras-hub "
            "tokenizer (pass it, or a preprocessor such as "
            "keras_hub.models.BertTextClassifierPreprocessor). Received: sequence_length=None"
        )
    sequence_length = check_integer("sequence_length", sequence_length, 2)
    packer = keras_hub.layers.StartEndPacker(
        sequence_length,
        start_value=_token_id(tokenizer, ("cls_token_id", "start_token_id"), None),
        end_value=_token_id(tokenizer, ("sep_token_id", "end_token_id"), None),
        pad_value=_token_id(tokenizer, ("pad_token_id",), 0),
        return_padding_mask=True,
    )

    tf = _import_tensorflow()

    def preprocess(batch: Any) -> dict:
        token_ids, padding_mask = packer(tokenizer(batch))
        return {
            "token_ids": token_ids,
            "padding_mask": padding_mask,
            "segment_ids": tf.zeros_like(token_ids),
        }

    return preprocess


def _check_preprocessor(preprocessor: Any, sequence_length: Any) -> Callable[[Any], Any]:
    if _is_keras_hub_tokenizer(preprocessor):
        return _packing_preprocessor(preprocessor, sequence_length)
    if not callable(preprocessor):
        raise ValueError(
            "`preprocessor` must be a keras-hub preprocessor (e.g. "
            "keras_hub.models.BertTextClassifierPreprocessor), a keras-hub "
            "tokenizer, or a callable mapping a batch of strings to the "
            f"backbone's input dict. Received: preprocessor={preprocessor!r:.80}"
        )
    if sequence_length is not None:
        raise ValueError(
            "`sequence_length` applies to a bare tokenizer only; set it on the "
            f"preprocessor instead. Received: sequence_length={sequence_length!r}"
        )
    return preprocessor


def _check_sentences(sentences: Any, argument: str = "sentences") -> list[str]:
    """`sentences` as a non-empty list of strings, else a ValueError naming `argument`."""
    if isinstance(sentences, (str, bytes)) or not isinstance(sentences, Iterable):
        raise ValueError(
            f"`{argument}` must be a list of strings (e.g. from load_sentences). "
            f"Received: {argument}={sentences!r:.80}"
        )
    sentences = list(sentences)
    if not sentences:
        raise ValueError(f"`{argument}` must hold at least one sentence. Received: []")
    for index, sentence in enumerate(sentences):
        if not isinstance(sentence, str):
            raise ValueError(
                f"`{argument}` must hold strings only. Received: "
                f"{argument}[{index}]={sentence!r:.80}"
            )
    return sentences


def sentence_dataset(
    sentences: Any,
    preprocessor: Any,
    batch_size: int = 64,
    shuffle: bool = True,
    shuffle_buffer: int | None = None,
    seed: int | None = None,
    drop_remainder: bool = True,
    sequence_length: int | None = None,
    prefetch: bool = True,
) -> Any:
    """A `tf.data.Dataset` of tokenized sentence batches.

    Every epoch the sentences are shuffled (a permutation of indices, as
    `multiview_dataset` does) and batched; each batch of strings then goes
    through `preprocessor` inside tf.data, giving the dict a keras-hub
    backbone (or `keras_fmicl.text.SentenceEncoder`) takes: integer
    `token_ids (B, L)`, `padding_mask (B, L)` and, for BERT, `segment_ids`.
    The views of SimCSE come from the model's dropout, so a batch holds each
    sentence once.

    Args:
        sentences: list of N strings (e.g. `load_sentences(path)`).
        preprocessor: a keras-hub preprocessor such as
            `keras_hub.models.BertTextClassifierPreprocessor(tokenizer,
            sequence_length=32)`, any callable mapping a batch of strings to
            such a dict with TensorFlow ops, or a bare keras-hub tokenizer
            (then give `sequence_length`: its ids are packed as
            `[CLS] ... [SEP]` plus padding).
        batch_size: B, sentences per batch (SimCSE: 64).
        shuffle: reshuffle the sentences every epoch.
        shuffle_buffer: shuffle buffer size; `None` for N (a full shuffle).
        seed: seed of the shuffle.
        drop_remainder: drop the last, smaller batch (for training); pass
            `False` (and `shuffle=False`) to embed every sentence in order.
        sequence_length: L, only with a bare tokenizer.
        prefetch: prefetch batches (`tf.data.AUTOTUNE`).

    Returns:
        A `tf.data.Dataset` of dicts of `(B, L)` tensors.

    Example:

    >>> dataset = sentence_dataset(load_sentences("wiki1m_for_simcse.txt"), preprocessor)
    >>> batch = next(iter(dataset))
    >>> batch["token_ids"].shape, batch["token_ids"].dtype
    (TensorShape([64, 32]), tf.int32)
    """
    sentences = _check_sentences(sentences)
    return _tokenized_batches(
        [sentences], lambda tokenized: tokenized[0], "sentences", preprocessor, batch_size,
        shuffle, shuffle_buffer, seed, drop_remainder, sequence_length, prefetch,
    )


def _tokenized_batches(
    columns: list,
    combine: Any,
    noun: str,
    preprocessor: Any,
    batch_size: int,
    shuffle: bool,
    shuffle_buffer: int | None,
    seed: int | None,
    drop_remainder: bool,
    sequence_length: int | None,
    prefetch: bool,
) -> Any:
    """Batches of the samples of `columns` (checked lists of N strings),
    each column tokenized by `preprocessor` and the results joined by
    `combine` (`sentence_dataset`, `text.sentence_tuple_dataset`)."""
    preprocess = _check_preprocessor(preprocessor, sequence_length)
    count = len(columns[0])
    batch_size, shuffle, drop_remainder, prefetch = _check_batching(
        count, batch_size, shuffle, drop_remainder, prefetch, noun
    )
    seed = None if seed is None else check_integer("seed", seed, 0)
    tf = _import_tensorflow()
    tables = [tf.constant(column, dtype=tf.string) for column in columns]

    def tokenize(index):
        return combine([preprocess(tf.gather(table, index)) for table in tables])

    dataset = _index_batches(tf, count, batch_size, shuffle, shuffle_buffer, seed, drop_remainder)
    dataset = dataset.map(tokenize, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if prefetch:
        dataset = dataset.prefetch(tf.data.AUTOTUNE)
    return dataset


def _sts_task(task: Any) -> str:
    key = task.strip().lower().replace("-", "_") if isinstance(task, str) else None
    if key not in _STS_ALIASES:
        raise ValueError(
            f"Unknown `task`: expected one of {', '.join(map(repr, STS_TASKS))} "
            f"(or 'STS-B', 'SICK-R'). Received: task={task!r}"
        )
    return _STS_ALIASES[key]


def _senteval_dir(data_dir: Any, task: str) -> str:
    """The folder of `task` under `data_dir` (SentEval's `data`, its
    `downstream`, or the task folder itself)."""
    data_dir = _check_path(data_dir, "data_dir")
    parts = _STS_DIRS[task]
    candidates = [
        os.path.join(data_dir, "downstream", *parts),
        os.path.join(data_dir, *parts),
        os.path.join(data_dir, parts[-1]),
        data_dir,
    ]
    for candidate in candidates[:3]:
        if os.path.isdir(candidate):
            return candidate
    if os.path.basename(os.path.normpath(data_dir)) == parts[-1] and os.path.isdir(data_dir):
        return data_dir
    raise DatasetNotAvailableError(
        f"No {task} files under data_dir={data_dir!r}: looked for "
        f"{os.path.join('downstream', *parts)!r} there; {_SENTEVAL_HINT} "
        "(no network is needed once the files are there)."
    )


def _sts_file(directory: str, name: str, task: str) -> str:
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
        raise DatasetNotAvailableError(
            f"{task} is incomplete: {path!r} is missing; {_SENTEVAL_HINT}."
        )
    return path


def _score(text: str, path: str, number: int) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not np.isfinite(value):
        raise ValueError(
            f"Line {number} of {path!r} must hold a finite gold score. "
            f"Received: {text!r:.80}"
        )
    return value


def _normalise(sentence: str) -> str:
    """White space collapsed, as SentEval's `split()` / `' '.join` does."""
    return " ".join(sentence.split())


def _fields(line: str, path: str, number: int, count: int) -> list[str]:
    fields = line.split("\t")
    if len(fields) < count:
        raise ValueError(
            f"Line {number} of {path!r} must have at least {count} tab-separated "
            f"fields. Received: {line!r:.120}"
        )
    return fields


def _load_sts_subset(directory: str, task: str, subset: str) -> tuple:
    input_path = _sts_file(directory, f"STS.input.{subset}.txt", task)
    gold_path = _sts_file(directory, f"STS.gs.{subset}.txt", task)
    pairs = _text_lines(input_path, "data_dir")
    gold = _text_lines(gold_path, "data_dir")
    if len(pairs) != len(gold):
        raise ValueError(
            f"{task}: {input_path!r} and {gold_path!r} must have one line per "
            f"pair. Received: {len(pairs)} and {len(gold)} lines"
        )
    a, b, scores = [], [], []
    for number, (pair, score) in enumerate(zip(pairs, gold), start=1):
        if not score.strip():
            continue  # no gold score: SentEval drops the pair
        fields = _fields(pair, input_path, number, 2)
        a.append(_normalise(fields[0]))
        b.append(_normalise(fields[1]))
        scores.append(_score(score.strip(), gold_path, number))
    return a, b, scores


def _load_sts_table(path: str, columns: tuple[int, int, int], header: bool) -> tuple:
    lines = _text_lines(path, "data_dir")
    a, b, scores = [], [], []
    first, second, score = columns
    for number, line in enumerate(lines, start=1):
        if (header and number == 1) or not line.strip():
            continue
        fields = _fields(line, path, number, max(columns) + 1)
        a.append(_normalise(fields[first]))
        b.append(_normalise(fields[second]))
        scores.append(_score(fields[score].strip(), path, number))
    return a, b, scores


def load_sts(task: str, data_dir: str | os.PathLike, split: str = "test") -> STSPairs:
    """The sentence pairs and gold scores of an STS task, from SentEval files.

    Reads the layout of SentEval's data folder (as SimCSE distributes it):

    | task              | files under `data_dir/downstream/`                        |
    |-------------------|-----------------------------------------------------------|
    | `STS12`..`STS16`  | `STS/STS1x-en-test/STS.input.<subset>.txt`, `STS.gs.<subset>.txt` |
    | `STSBenchmark`    | `STS/STSBenchmark/sts-{train,dev,test}.csv` (tab-separated: score in column 5, sentences in 6 and 7) |
    | `SICKRelatedness` | `SICK/SICK_{train,trial,test_annotated}.txt` (a header line; sentences in columns 2 and 3, score in 4) |

    `data_dir` may also be the `downstream` folder or the task's own folder.
    As SentEval does, STS12-16 concatenate their subsets in the order of
    `STS_SUBSETS` and drop pairs whose gold line is empty, and sentences
    have their white space collapsed. STS-B's `"dev"` is SICK's "trial".

    Args:
        task: one of `STS_TASKS` (`"STS-B"`, `"SICK-R"` and lowercase names
            are accepted).
        data_dir: SentEval's `data` folder (no network is used).
        split: `"test"` (the reported split); `"train"` or `"dev"` for
            STS-B and SICK-R.

    Returns:
        `STSPairs(sentences_a, sentences_b, scores, subsets)`.

    Raises:
        DatasetNotAvailableError: the task's folder or a file is missing (the
            message says how to get them).
        ValueError: a bad argument, or a malformed file (the message names
            the file and the line).

    Example:

    >>> pairs = load_sts("STS12", "SentEval/data")
    >>> len(pairs.scores), pairs.subsets[0]
    (3108, 'MSRpar')
    """
    task = _sts_task(task)
    splits = STS_SPLITS.get(task, {"test": None})
    if split not in splits:
        raise ValueError(
            f"Unknown `split` for {task}: expected one of "
            f"{', '.join(map(repr, splits))}. Received: split={split!r}"
        )
    directory = _senteval_dir(data_dir, task)
    a, b, scores, subsets = [], [], [], []
    if task in STS_SUBSETS:
        for subset in STS_SUBSETS[task]:
            subset_a, subset_b, subset_scores = _load_sts_subset(directory, task, subset)
            a += subset_a
            b += subset_b
            scores += subset_scores
            subsets += [subset] * len(subset_scores)
    else:
        path = _sts_file(directory, splits[split], task)
        if task == "STSBenchmark":
            a, b, scores = _load_sts_table(path, (5, 6, 4), header=False)
        else:
            a, b, scores = _load_sts_table(path, (1, 2, 3), header=True)
        subsets = [split] * len(scores)
    if not scores:
        raise ValueError(
            f"{task} ({split}) under {directory!r} must hold at least one scored "
            "pair. Received: none"
        )
    return STSPairs(a, b, np.asarray(scores, np.float64), np.asarray(subsets))


def load_sts_tasks(
    data_dir: str | os.PathLike, tasks: Any = STS_TASKS, split: str = "test"
) -> dict:
    """`{task: load_sts(task, data_dir, split)}` for several tasks (all seven
    by default), in the order given: the `tasks` of `evaluate_sts`.

    Example:

    >>> tasks = load_sts_tasks("SentEval/data")
    >>> list(tasks)
    ['STS12', 'STS13', 'STS14', 'STS15', 'STS16', 'STSBenchmark', 'SICKRelatedness']
    """
    if isinstance(tasks, str):
        tasks = (tasks,)
    names = [_sts_task(task) for task in tasks]
    if not names:
        raise ValueError("`tasks` must name at least one STS task. Received: tasks=()")
    return {name: load_sts(name, data_dir, split) for name in names}


def load_glue_stsb(split: str = "validation", data_dir: str | None = None) -> STSPairs:
    """STS-B from tensorflow-datasets (`glue/stsb`, downloaded once, ~1 MB).

    GLUE hides the labels of its test split (they read -1), so only
    `"train"` (5749 pairs) and `"validation"` (1500) are offered; the
    scored STS-B test set is SentEval's `sts-test.csv` (`load_sts`).

    Args:
        split: `"train"` or `"validation"`.
        data_dir: tensorflow-datasets data folder; `None` for its default.

    Returns:
        `STSPairs` with scores in [0, 5] and `subsets` all equal to `split`.

    Raises:
        MissingDependencyError: tensorflow-datasets is not installed.
        DatasetNotAvailableError: it cannot be downloaded or read.

    Example:

    >>> pairs = load_glue_stsb("validation")
    >>> len(pairs.sentences_a)
    1500
    """
    if split not in GLUE_STSB_SPLITS:
        hint = (
            " (GLUE's STS-B test labels are hidden; load_sts('STSBenchmark', "
            "data_dir) reads SentEval's scored test set)"
            if split == "test"
            else ""
        )
        raise ValueError(
            f"Unknown `split` for glue/stsb: expected one of "
            f"{', '.join(map(repr, GLUE_STSB_SPLITS))}{hint}. Received: split={split!r}"
        )
    name = "glue/stsb"
    tfds, data_dir = _prepare_tfds(name, split, data_dir)
    with _tfds_load_errors(name, split):
        dataset = tfds.load(name, split=split, data_dir=data_dir)
        a, b, scores = [], [], []
        for example in dataset.as_numpy_iterator():
            a.append(_normalise(example["sentence1"].decode("utf-8")))
            b.append(_normalise(example["sentence2"].decode("utf-8")))
            scores.append(float(example["label"]))
    return STSPairs(a, b, np.asarray(scores, np.float64), np.asarray([split] * len(scores)))
