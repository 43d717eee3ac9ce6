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

import gzip
import inspect
import os
from typing import Any
from typing import Callable

import keras
import numpy as np

from keras_fmicl import backend_ops
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


def _load_tfds(name: str, split: str, data_dir: str | None) -> tuple:
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
    try:
        dataset = tfds.load(name, split=split, as_supervised=True, data_dir=data_dir)
        return _tfds_to_numpy(dataset)
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
    num_images: int, batch_size: Any, drop_remainder: bool
) -> int:
    batch_size = _check_positive_int("batch_size", batch_size)
    if drop_remainder and batch_size > num_images:
        raise ValueError(
            f"`batch_size` is larger than the {num_images} images and "
            "drop_remainder=True, so the dataset would be empty; lower it or "
            f"pass drop_remainder=False. Received: batch_size={batch_size}"
        )
    return batch_size


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
            [0, 255]. Set the augmenter's `value_range` to match.
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
    batch_size = _check_batching(len(images), batch_size, drop_remainder)
    seed = _check_seed(seed)
    rescale = _check_rescale(rescale)
    augment = None if augmenter is None else _augment_fn(augmenter)
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
    batch_size = _check_batching(len(images), batch_size, drop_remainder)
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
