"""TensorFlow Datasets sources: the offline probe, download checks and loading to numpy."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import numpy as np

from keras_fmicl.utils.errors import DatasetNotAvailableError
from keras_fmicl.utils.errors import MissingDependencyError
from keras_fmicl.utils.errors import missing_dependency
from keras_fmicl.utils.errors import shorten

_TFDS_CHUNK = 4096


def tfds_to_numpy(dataset: Any) -> tuple:
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
            f"({shorten(err)})."
        ) from err


def download_urls(builder: Any) -> list:
    """The URLs `builder` downloads from (from its checksums file)."""
    url_infos = type(builder).url_infos
    return sorted(url_infos) if url_infos else []


def needs_download(builder: Any) -> bool:
    """Whether preparing `builder` would download (nothing prepared, nothing
    already downloaded under `<data_dir>/downloads`)."""
    if os.path.isfile(os.path.join(os.fspath(builder.data_dir), "dataset_info.json")):
        return False
    root = getattr(builder, "data_dir_root", None)
    downloads = None if root is None else os.path.join(os.fspath(root), "downloads")
    return not (downloads and os.path.isdir(downloads) and os.listdir(downloads))


def prepare_tfds(
    name: str, split: str, data_dir: str | None, manual_files: tuple[str, ...] = ()
) -> tuple:
    """`(tfds, data_dir)` once the builder of `name` is set up and, when it
    must download, its host answers (clear errors otherwise).

    `manual_files` are the archives a manually downloaded builder
    (`imagenet2012`) needs in its manual folder `<data_dir>/downloads/manual`
    when it is not prepared yet; a `DatasetNotAvailableError` names them
    when they are missing.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise MissingDependencyError(
            f"Loading {name!r} needs tensorflow-datasets: install it with "
            f'`pip install tensorflow-datasets` (or `pip install "keras-fmicl[tensorflow]"`) '
            f"and run once with network access to download the data ({shorten(err)})."
        ) from err
    data_dir = None if data_dir is None else os.fspath(data_dir)
    with tfds_load_errors(name, split, setup=True):
        builder = tfds.builder(name, data_dir=data_dir)
        if manual_files:
            _check_manual_files(name, builder, manual_files)
        probe = DOWNLOAD_PROBE_TIMEOUT is not None and needs_download(builder)
        urls = download_urls(builder) if probe else []
    if urls:
        _check_download_host(name, urls[0])
    return tfds, data_dir


def _check_manual_files(name: str, builder: Any, manual_files: tuple[str, ...]) -> None:
    if os.path.isfile(os.path.join(os.fspath(builder.data_dir), "dataset_info.json")):
        return
    manual = os.path.join(os.fspath(builder.data_dir_root), "downloads", "manual")
    missing = [f for f in manual_files if not os.path.isfile(os.path.join(manual, f))]
    if missing:
        raise DatasetNotAvailableError(
            f"{name!r} is neither prepared in {os.fspath(builder.data_dir)!r} nor "
            f"preparable: tensorflow-datasets needs {', '.join(missing)} (downloaded by hand) "
            f"in {manual!r}."
        )


def load_tfds_dataset(
    name: str, split: str, data_dir: str | None, manual_files: tuple[str, ...] = ()
) -> tuple:
    """`(dataset, info)`: a split as an unbatched tf.data of `(image, label)`
    pairs (read from disk as iterated) and the builder's `DatasetInfo`."""
    tfds, data_dir = prepare_tfds(name, split, data_dir, manual_files)
    with tfds_load_errors(name, split):
        return tfds.load(name, split=split, as_supervised=True, data_dir=data_dir, with_info=True)


def load_tfds(name: str, split: str, data_dir: str | None) -> tuple:
    dataset, _ = load_tfds_dataset(name, split, data_dir)
    with tfds_load_errors(name, split):
        return tfds_to_numpy(dataset)


@contextlib.contextmanager
def tfds_load_errors(name: str, split: str, setup: bool = False):
    """Turns an error of setting up (`setup=True`) or loading a tfds set into one sentence."""
    try:
        yield
    except ImportError as err:
        raise missing_dependency(name, err) from err
    except DatasetNotAvailableError:
        raise
    except Exception as err:
        if setup:
            message = f"Could not set up {name!r} (split {split!r}) with tensorflow-datasets: {shorten(err)}."
        else:
            message = (
                f"Could not load {name!r} (split {split!r}) with tensorflow-datasets: "
                f"run `tfds.load({name!r})` once with network access to download and "
                f"prepare it, or pass `data_dir` pointing to a prepared copy "
                f"({shorten(err)})."
            )
        raise DatasetNotAvailableError(message) from err
