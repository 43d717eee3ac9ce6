"""Image data sets by name: Fashion-MNIST, digits, CIFAR-10/100, STL-10, synthetic CIFAR, (Tiny) ImageNet."""

from __future__ import annotations

import os
from typing import Any
from typing import Callable
from typing import NamedTuple

import keras
import numpy as np

from keras_fmicl.data.files import check_path
from keras_fmicl.data.files import find_file
from keras_fmicl.data.files import read_idx
from keras_fmicl.data.image_folders import IMAGENET_LAYOUT
from keras_fmicl.data.image_folders import ImageFiles
from keras_fmicl.data.image_folders import has_imagenet_folders
from keras_fmicl.data.image_folders import imagenet_files
from keras_fmicl.data.image_folders import tiny_imagenet_files
from keras_fmicl.data.image_streams import ImageStream
from keras_fmicl.data.image_streams import arrays_stream
from keras_fmicl.data.image_streams import concatenate_streams
from keras_fmicl.data.image_streams import files_stream
from keras_fmicl.data.image_streams import stream_to_arrays
from keras_fmicl.data.image_streams import tfds_stream
from keras_fmicl.data.sources import load_tfds
from keras_fmicl.utils.errors import DatasetNotAvailableError
from keras_fmicl.utils.errors import shorten
from keras_fmicl.utils.registry import registry_key

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
"""Where the Debian package `dataset-fashion-mnist` puts its IDX files."""

DIGITS_TRAIN_FRACTION = 0.8

DIGITS_SPLIT_SEED = 0


# ---------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------

def _check_name(name: Any) -> str:
    key = registry_key(name) if isinstance(name, str) else None
    if key not in DATASETS:
        raise ValueError(
            f"Unknown `name`: expected one of {', '.join(map(repr, DATASETS))}. "
            f"Received: name={name!r}"
        )
    return key


def _check_split(name: str, split: Any) -> str:
    if split not in DATASETS[name].splits:
        raise ValueError(
            f"Unknown `split` for {name!r}: expected one of "
            f"{', '.join(map(repr, DATASETS[name].splits))}. Received: split={split!r}"
        )
    return split


def _check_splits(name: str, split: Any) -> list[str]:
    """The splits of `"a+b"`, each checked and none twice."""
    parts = split.split("+") if isinstance(split, str) else [split]
    if len(set(parts)) != len(parts):
        raise ValueError(f"`split` names a split twice. Received: split={split!r}")
    return [_check_split(name, part) for part in parts]


def _fashion_mnist_from_idx(directory: str, split: str) -> tuple | None:
    """Reads a split from the IDX files in `directory`; None when absent."""
    prefix = "train" if split == "train" else "t10k"
    images_path = find_file(directory, f"{prefix}-images-idx3-ubyte")
    labels_path = find_file(directory, f"{prefix}-labels-idx1-ubyte")
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
    num_classes = 10  # Fashion-MNIST's classes
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
            f"network access ({shorten(err)})."
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
            f"`pip install scikit-learn` ({shorten(err)})."
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
    return load_tfds("cifar10", _check_split("cifar10", split), data_dir)


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
    return load_tfds("cifar100", _check_split("cifar100", split), data_dir)


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
    return load_tfds("stl10", _check_split("stl10", split), data_dir)


def tiny_imagenet(split: str = "train", data_dir: str | None = None) -> tuple:
    """Tiny ImageNet (200 classes, 64x64) decoded from its folders into arrays.

    Reads the official archive's layout (see `list_images`); about 1.2 GB
    in memory for `"train"`. `image_stream` reads it from disk instead.

    Args:
        split: `"train"` (100000 images, 500 a class) or `"val"` (10000,
            the split papers report as "test").
        data_dir: the folder `tiny-imagenet-200` or its parent.

    Returns:
        `(images, labels)`: `uint8` `(N, 64, 64, 3)` and `int64` `(N,)`.

    Raises:
        DatasetNotAvailableError: no `tiny-imagenet-200/wnids.txt`.
        ValueError: incomplete folders, or images of different sizes.
    """
    split = _check_split("tiny_imagenet", split)
    return stream_to_arrays(files_stream(tiny_imagenet_files(split, data_dir)), "tiny_imagenet")


IMAGENET_ARCHIVES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
"""The archives tensorflow-datasets' `imagenet2012` prepares ImageNet from."""


def _imagenet_stream(split: str, data_dir: Any) -> ImageStream:
    data_dir = None if data_dir is None else check_path(data_dir, "data_dir")
    if has_imagenet_folders(data_dir):
        return files_stream(imagenet_files(split, data_dir))
    tfds_split = {"train": "train", "val": "validation"}[split]
    try:
        return tfds_stream("imagenet2012", tfds_split, data_dir, 1000, manual_files=IMAGENET_ARCHIVES)
    except DatasetNotAvailableError as err:
        raise type(err)(
            f"`data_dir` has neither ImageNet class folders ({IMAGENET_LAYOUT}) nor "
            f"tensorflow-datasets' imagenet2012 ({str(err).rstrip('.')}). "
            f"Received: data_dir={data_dir!r}"
        ) from err


def _tfds_stream(name: str) -> Callable[..., ImageStream]:
    def stream(split: str, data_dir: Any) -> ImageStream:
        dataset = DATASETS[name]
        unlabelled = split == "unlabelled"
        return tfds_stream(name, split, data_dir, dataset.num_classes, dataset.class_names, unlabelled)

    return stream


class Dataset(NamedTuple):
    """One image data set: its loader, splits, classes, and how it streams.

    Args:
        loader: `loader(split=..., data_dir=...) -> (images, labels)`, the
            arrays of `load`; None for data sets too large for memory.
        splits: the splits `load` and `image_stream` accept.
        num_classes: labels lie in `0 .. num_classes - 1` (folder data sets:
            the official number; a folder may hold a subset).
        class_names: the name of each label, where the data set has fixed,
            short ones.
        files: folder data sets: `files(split, data_dir) -> ImageFiles`.
        stream: `stream(split, data_dir) -> ImageStream` where the data set
            streams otherwise than from `files` or the loader's arrays.
    """

    loader: Callable[..., tuple] | None
    splits: tuple[str, ...]
    num_classes: int
    class_names: tuple[str, ...] | None = None
    files: Callable[..., ImageFiles] | None = None
    stream: Callable[..., ImageStream] | None = None


DATASETS: dict[str, Dataset] = {
    "cifar10": Dataset(cifar10, ("train", "test"), 10, (
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        stream=_tfds_stream("cifar10")),
    "cifar100": Dataset(cifar100, ("train", "test"), 100, stream=_tfds_stream("cifar100")),
    "stl10": Dataset(stl10, ("train", "test", "unlabelled"), 10, (
        "airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"),
        stream=_tfds_stream("stl10")),
    "fashion_mnist": Dataset(fashion_mnist, ("train", "test"), 10, (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
        "Ankle boot")),
    "digits": Dataset(digits, ("train", "test"), 10, tuple(str(digit) for digit in range(10))),
    "synthetic_cifar": Dataset(synthetic_cifar, ("train", "test"), 10),
    "tiny_imagenet": Dataset(tiny_imagenet, ("train", "val"), 200, files=tiny_imagenet_files),
    "imagenet": Dataset(None, ("train", "val"), 1000, files=imagenet_files, stream=_imagenet_stream),
}
"""The registry of the image data sets, one entry each (a new data set: one entry here)."""

SPLITS = {name: dataset.splits for name, dataset in DATASETS.items()}
"""Dataset name -> the splits `load` accepts for it (read from `DATASETS`)."""

NUM_CLASSES = {name: dataset.num_classes for name, dataset in DATASETS.items()}
"""Dataset name -> number of classes (labels in `0 .. n - 1`; read from `DATASETS`)."""

CLASS_NAMES = {name: dataset.class_names for name, dataset in DATASETS.items() if dataset.class_names}
"""Dataset name -> the name of each label, where the dataset has short ones (read from `DATASETS`)."""


def load(name: str, split: str = "train", data_dir: str | None = None) -> tuple:
    """Loads a dataset split as numpy arrays.

    Args:
        name: one of `DATASETS` but `"imagenet"` (which only streams):
            `"cifar10"`, `"cifar100"`, `"stl10"`, `"fashion_mnist"`,
            `"digits"`, `"synthetic_cifar"`, `"tiny_imagenet"` (case, `-`,
            `_` and spaces do not matter).
        split: one of `DATASETS[name].splits`.
        data_dir: where the data lives: tensorflow-datasets' data directory
            for cifar10/cifar100/stl10, the IDX directory for fashion_mnist,
            the unpacked archive for tiny_imagenet; unused for digits.

    Returns:
        `(images, labels)`: `uint8` `(N, H, W, C)` and `int64` `(N,)`.

    Raises:
        ValueError: unknown `name` or `split`, or a data set that only streams.
        DatasetNotAvailableError: the data cannot be had here; the message
            says how to get it.

    Example:

    >>> images, labels = load("digits", "test")
    >>> images.shape, images.dtype, labels.dtype
    ((360, 8, 8, 1), dtype('uint8'), dtype('int64'))
    """
    name = _check_name(name)
    split = _check_split(name, split)
    if DATASETS[name].loader is None:
        raise ValueError(
            f"{name!r} is too large to load into memory as one array: stream it with "
            f"`image_stream({name!r}, {split!r}, data_dir)`. Received: name={name!r}"
        )
    return DATASETS[name].loader(split=split, data_dir=data_dir)


def list_images(name: str, split: str = "train", data_dir: str | None = None) -> ImageFiles:
    """The image files and labels of a folder data set split.

    Layouts (`data_dir` below):

    - `"tiny_imagenet"`: the official archive unpacked,
      `tiny-imagenet-200/{wnids.txt, words.txt, train/<wnid>/images/*.JPEG,
      val/images/*.JPEG, val/val_annotations.txt}`; `data_dir` is
      `tiny-imagenet-200` or its parent. Class `i` is line `i` of
      `wnids.txt`, named by its `words.txt` entry (else the wnid); `val`
      images are labelled by `val_annotations.txt`.
    - `"imagenet"`: `train/<class>/*.JPEG` and `val/<class>/*.JPEG`, classes
      the sorted folder names (the same in both splits).

    Args:
        name: `"tiny_imagenet"` or `"imagenet"` (the data sets of `DATASETS`
            with `files`).
        split: `"train"` or `"val"`, or both joined by `+`.
        data_dir: the folder described above.

    Returns:
        `ImageFiles(paths, labels, class_names)`: `paths` in a fixed order
        (class by class, sorted names; `val` of Tiny ImageNet in annotation
        order), `labels` `int32 (N,)`.

    Raises:
        ValueError: unknown `name` or `split`, a data set without folders,
            or malformed folders (an empty class folder, a missing
            `val_annotations.txt`, ...), named in one sentence.
        DatasetNotAvailableError: `data_dir` lacks the data set's marker
            (`wnids.txt`, the split's folder).

    Example:

    >>> files = list_images("tiny_imagenet", "val", "/data/tiny-imagenet-200")
    >>> len(files.paths), files.labels.dtype, len(files.class_names)
    (10000, dtype('int32'), 200)
    """
    name = _check_name(name)
    parts = _check_splits(name, split)
    if DATASETS[name].files is None:
        folders = [key for key, dataset in DATASETS.items() if dataset.files is not None]
        raise ValueError(
            f"`list_images` lists the files of the folder data sets "
            f"({', '.join(map(repr, folders))}); {name!r} is not one: use "
            f"`image_stream`. Received: name={name!r}"
        )
    listed = [DATASETS[name].files(part, data_dir) for part in parts]
    return ImageFiles(
        tuple(path for files in listed for path in files.paths),
        np.concatenate([files.labels for files in listed]),
        listed[0].class_names,
    )


def image_stream(name: str, split: str = "train", data_dir: str | None = None) -> ImageStream:
    """A data set split as a tf.data stream of `(uint8 image, int32 label)`.

    Nothing is loaded into memory up front: folder data sets read and
    decode each file as it is iterated (`tf.io.decode_image`, 3 channels;
    a file that is not an image stops the stream with an error naming it,
    see `find_unreadable_images`), tensorflow-datasets ones read their
    prepared files (STL-10's `"unlabelled"`: label -1); the small array
    data sets (digits, Fashion-MNIST, synthetic CIFAR) stream from memory.
    `"imagenet"` reads class folders when `data_dir` has `train/` or
    `val/`, and otherwise tensorflow-datasets' `imagenet2012` in `data_dir`
    (prepared, or with `ILSVRC2012_img_{train,val}.tar` in
    `data_dir/downloads/manual`; its `val` is tfds' `validation`).

    Args:
        name: one of `DATASETS`.
        split: one of `DATASETS[name].splits`, or several joined by `+`
            (`"train+unlabelled"`: STL-10's pre-training set), streamed one
            after the other.
        data_dir: as for `load` and `list_images`.

    Returns:
        `ImageStream(dataset, num_examples, num_classes, class_names, ...)`:
        `dataset` yields `(uint8 (H, W, C), int32 ())` pairs in a fixed
        order, images of any size; C = 3 but for the grey `fashion_mnist`
        and `digits` (1). Feed it to `multiview_stream` or `eval_stream`.

    Raises:
        ValueError: unknown `name` or `split`, or malformed folders.
        DatasetNotAvailableError: the data cannot be had here; the message
            says what is missing.

    Example:

    >>> stream = image_stream("stl10", "train+unlabelled")
    >>> stream.num_examples, stream.num_classes
    (105000, 10)
    """
    name = _check_name(name)
    parts = _check_splits(name, split)
    dataset = DATASETS[name]
    streams = []
    for part in parts:
        if dataset.stream is not None:
            streams.append(dataset.stream(part, data_dir))
        elif dataset.files is not None:
            streams.append(files_stream(dataset.files(part, data_dir)))
        else:
            images, labels = dataset.loader(split=part, data_dir=data_dir)
            streams.append(arrays_stream(images, labels, dataset.num_classes, dataset.class_names))
    return streams[0] if len(streams) == 1 else concatenate_streams(streams)
