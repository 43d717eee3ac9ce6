"""Image data sets streamed from disk with tf.data: random-resized-crop views and centre crops."""

from __future__ import annotations

import math
from typing import Any
from typing import Callable
from typing import NamedTuple

import numpy as np

from keras_fmicl.data.batching import check_batching
from keras_fmicl.data.image_folders import ImageFiles
from keras_fmicl.data.image_pipelines import DEFAULT_RESCALE
from keras_fmicl.data.image_pipelines import augment_fn
from keras_fmicl.data.image_pipelines import check_num_parallel_calls
from keras_fmicl.data.image_pipelines import check_rescale
from keras_fmicl.data.image_pipelines import check_value_range
from keras_fmicl.data.sources import load_tfds_dataset
from keras_fmicl.data.sources import tfds_to_numpy
from keras_fmicl.utils.checks import check_positive_integer
from keras_fmicl.utils.checks import check_seed
from keras_fmicl.utils.checks import is_real
from keras_fmicl.utils.imports import import_tensorflow

DEFAULT_SHUFFLE_BUFFER = 10000
"""Decoded images `multiview_stream` shuffles among when the stream has no light records (tfds)."""

EVAL_CROP_FRACTION = 0.875
"""The centre crop's share of the resized shorter side (224 of 256)."""

_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM")


class ImageStream(NamedTuple):
    """An image data set split as a tf.data stream of `(image, label)` pairs.

    Args:
        dataset: unbatched `tf.data.Dataset` of `uint8 (H, W, C)` images
            (sizes may differ; C = 3, or 1 for grey data sets) and `int32`
            labels (-1 for unlabelled images), in a fixed order.
        num_examples: the number of pairs.
        num_classes: labels lie in `0 .. num_classes - 1` (or are -1).
        class_names: the name of each label, or None.
        records: where there are any, light records (file paths and labels,
            or indices) in the order of `dataset`, which
            `multiview_stream` shuffles before decoding them; None otherwise.
        decode: `decode(*record) -> (image, label)`; `dataset` is
            `records.map(decode)`.
    """

    dataset: Any
    num_examples: int
    num_classes: int
    class_names: tuple[str, ...] | None
    records: Any = None
    decode: Callable | None = None


def _decoded(records: Any, decode: Callable, num_examples: int, num_classes: int, class_names: Any) -> ImageStream:
    tf = import_tensorflow()
    dataset = records.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ImageStream(dataset, num_examples, num_classes, class_names, records, decode)


def decode_image_file(path: Any, label: Any) -> tuple:
    """`(uint8 (H, W, 3) image, label)` of an image file (JPEG, PNG, GIF, BMP).

    A file that is not an image at all (empty, HTML, ...) fails with an
    error naming it; damaged data in a real JPEG fails with TensorFlow's
    `Invalid JPEG data` (`find_unreadable_images` lists such files).
    """
    tf = import_tensorflow()
    contents = tf.io.read_file(path)
    is_image = tf.reduce_any(
        tf.stack([tf.equal(tf.strings.substr(contents, 0, len(m)), m) for m in _IMAGE_MAGIC])
    )
    check = tf.debugging.Assert(is_image, ["Not a JPEG, PNG, GIF or BMP image file:", path])
    with tf.control_dependencies([check]):
        contents = tf.identity(contents)
    image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    return image, label


def files_stream(files: ImageFiles) -> ImageStream:
    """The stream of an `ImageFiles`: each file read and decoded as iterated."""
    tf = import_tensorflow()
    records = tf.data.Dataset.from_tensor_slices(
        (tf.constant(files.paths, tf.string), tf.constant(files.labels, tf.int32))
    )
    return _decoded(records, decode_image_file, len(files.paths), len(files.class_names), files.class_names)


def arrays_stream(images: np.ndarray, labels: np.ndarray, num_classes: int, class_names: Any) -> ImageStream:
    """The stream of in-memory arrays (its records are indices)."""
    tf = import_tensorflow()
    image_table = tf.convert_to_tensor(np.asarray(images, np.uint8))
    label_table = tf.convert_to_tensor(np.asarray(labels, np.int32))

    def gather(index):
        return tf.gather(image_table, index), tf.gather(label_table, index)

    records = tf.data.Dataset.range(len(labels))
    return _decoded(records, gather, len(labels), num_classes, class_names)


def tfds_stream(
    name: str,
    split: str,
    data_dir: Any,
    num_classes: int,
    class_names: Any = None,
    unlabelled: bool = False,
    manual_files: tuple[str, ...] = (),
) -> ImageStream:
    """A tensorflow-datasets split read from its files as iterated.

    Labels become `int32`, all -1 when `unlabelled`; `class_names` default
    to the builder's label names.
    """
    tf = import_tensorflow()
    dataset, info = load_tfds_dataset(name, split, data_dir, manual_files)
    count = int(dataset.cardinality())
    if count < 0:
        count = int(info.splits[split].num_examples)
    if class_names is None:
        class_names = tuple(getattr(info.features["label"], "names", None) or ()) or None

    def relabel(image, label):
        label = tf.fill(tf.shape(label), -1) if unlabelled else label
        return image, tf.cast(label, tf.int32)

    dataset = dataset.map(relabel, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ImageStream(dataset, count, num_classes, class_names)


def concatenate_streams(streams: list[ImageStream]) -> ImageStream:
    """One stream of several, in order (the splits of `"train+unlabelled"`)."""
    first = streams[0]
    records = first.records
    dataset = first.dataset
    for stream in streams[1:]:
        if (stream.num_classes, stream.class_names) != (first.num_classes, first.class_names):
            raise ValueError(
                "Streams joined into one must have the same classes. Received: "
                f"{first.num_classes} and {stream.num_classes} classes"
            )
        dataset = dataset.concatenate(stream.dataset)
        same_decode = records is not None and stream.decode is first.decode and stream.records is not None
        records = records.concatenate(stream.records) if same_decode else None
    count = sum(stream.num_examples for stream in streams)
    if records is not None:
        return _decoded(records, first.decode, count, first.num_classes, first.class_names)
    return ImageStream(dataset, count, first.num_classes, first.class_names)


def stream_to_arrays(stream: ImageStream, name: str) -> tuple:
    """`(uint8 (N, H, W, C) images, int64 (N,) labels)` of a stream of equal-sized images."""
    tf = import_tensorflow()
    first = next(iter(stream.dataset.take(1)), None)
    if first is None:
        return tfds_to_numpy(stream.dataset)
    shape = first[0].shape
    fixed = stream.dataset.map(lambda image, label: (tf.ensure_shape(image, shape), label))
    try:
        return tfds_to_numpy(fixed)
    except tf.errors.InvalidArgumentError as err:
        raise ValueError(
            f"The images of {name!r} differ in size (the first is {tuple(shape)}), so they "
            f"cannot be one array: stream them with `image_stream` instead. Received: an "
            f"image of another size ({str(err).splitlines()[0][:120]})"
        ) from None


def find_unreadable_images(files: ImageFiles) -> tuple[str, ...]:
    """The files of `files` that do not decode as images (reads every file once).

    The streams stop at the first such file; this lists them all, to
    delete or replace before training.

    Args:
        files: an `ImageFiles` (from `list_images`).

    Returns:
        The paths that cannot be read or decoded, in order.

    Example:

    >>> find_unreadable_images(list_images("tiny_imagenet", "val", "/data"))
    ()
    """
    if not isinstance(files, ImageFiles):
        raise ValueError(f"`files` must be an ImageFiles (from list_images). Received: files={files!r:.80}")
    tf = import_tensorflow()
    paths = tf.constant(files.paths, tf.string)

    def read(index):
        image, _ = decode_image_file(paths[index], 0)
        return index, tf.shape(image)[0]

    readable = tf.data.Dataset.range(len(files.paths)).map(read, num_parallel_calls=tf.data.AUTOTUNE)
    good = {int(index) for index, _ in readable.ignore_errors().as_numpy_iterator()}
    return tuple(path for index, path in enumerate(files.paths) if index not in good)


# ---------------------------------------------------------------------------
# Views for pre-training
# ---------------------------------------------------------------------------

def _check_stream(stream: Any) -> ImageStream:
    if not isinstance(stream, ImageStream):
        raise ValueError(
            f"`stream` must be an ImageStream (from image_stream). Received: stream={stream!r:.80}"
        )
    return stream


def _check_range(argument: str, value: Any, upper: float | None) -> tuple[float, float]:
    ok = (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(is_real(v) for v in value)
        and 0 < value[0] <= value[1]
        and (upper is None or value[1] <= upper)
    )
    if not ok:
        bound = f" <= {upper:g}" if upper is not None else ""
        raise ValueError(
            f"`{argument}` must be a pair (min, max) with 0 < min <= max{bound}. "
            f"Received: {argument}={value!r}"
        )
    return float(value[0]), float(value[1])


def random_crop_box(tf: Any, seed: Any, height: Any, width: Any, scale: tuple, ratio: tuple) -> tuple:
    """`(top, left, box height, box width)` of a random-resized-crop box (int32).

    torchvision's `RandomResizedCrop.get_params`: ten boxes of area
    `U(scale) H W` and aspect ratio (width / height) log-uniform in `ratio`
    are drawn, the first that fits is placed uniformly at random; when none
    fits, the largest centred box whose aspect ratio lies in `ratio`.
    Stateless: the same `seed` (int64 `(2,)`) gives the same box.
    """
    attempts = 10
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    draws = tf.random.stateless_uniform([4, attempts], seed, dtype=tf.float32)
    area = h * w * (scale[0] + (scale[1] - scale[0]) * draws[0])
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    aspect = tf.exp(log_low + (log_high - log_low) * draws[1])
    box_w = tf.round(tf.sqrt(area * aspect))
    box_h = tf.round(tf.sqrt(area / aspect))
    fits = (box_w > 0) & (box_w <= w) & (box_h > 0) & (box_h <= h)
    pick = tf.argmax(tf.cast(fits, tf.int32))
    top = tf.floor(draws[2][pick] * (h - box_h[pick] + 1))
    left = tf.floor(draws[3][pick] * (w - box_w[pick] + 1))
    chosen = tf.stack([tf.minimum(top, h - box_h[pick]), tf.minimum(left, w - box_w[pick]), box_h[pick], box_w[pick]])
    # fallback: the whole image, narrowed to the nearest allowed aspect ratio
    in_ratio = w / h
    fall_w = tf.where(in_ratio > ratio[1], tf.round(h * ratio[1]), w)
    fall_h = tf.where(in_ratio < ratio[0], tf.round(w / ratio[0]), h)
    fallback = tf.stack([tf.floor((h - fall_h) / 2), tf.floor((w - fall_w) / 2), fall_h, fall_w])
    box = tf.cast(tf.where(tf.reduce_any(fits), chosen, fallback), tf.int32)
    return box[0], box[1], box[2], box[3]


def _resize(tf: Any, image: Any, size: Any) -> Any:
    resized = tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear", antialias=True)
    return tf.clip_by_value(resized, 0.0, 255.0)


def _crop_views(tf: Any, decode: Any, num_views: int, size: int, scale: tuple, ratio: tuple, rescale: float):
    """`(element, random) -> (float32 (V, size, size, C) views, label)`, decoding records with `decode`."""

    def crop_views(element, random):
        if decode is None:
            image, label = element
        else:
            image, label = decode(*element) if isinstance(element, tuple) else decode(element)
        shape = tf.shape(image)
        views = []
        for view in range(num_views):
            view_seed = tf.stack([random, tf.constant(view, tf.int64)])
            top, left, height, width = random_crop_box(tf, view_seed, shape[0], shape[1], scale, ratio)
            box = image[top:top + height, left:left + width]
            views.append(_resize(tf, box, [size, size]) * rescale)
        return tf.stack(views), label

    return crop_views


def multiview_stream(
    stream: ImageStream,
    augmenter: Any = None,
    batch_size: int = 256,
    image_size: int = 224,
    num_views: int = 2,
    shuffle: bool = True,
    seed: int | None = None,
    shuffle_buffer: int | None = None,
    drop_remainder: bool = True,
    scale: tuple = (0.08, 1.0),
    ratio: tuple = (3.0 / 4.0, 4.0 / 3.0),
    rescale: float = DEFAULT_RESCALE,
    labels: bool = False,
    num_parallel_calls: int | None = None,
    prefetch: bool = True,
) -> Any:
    """A `tf.data.Dataset` of batches of V random-resized-crop views per image.

    Per image (before batching), for each of the V views, a box is drawn as
    torchvision's `RandomResizedCrop` does (area fraction `U(scale)`, aspect
    ratio log-uniform in `ratio`, see `random_crop_box`), cut out and
    resized to `image_size x image_size` (bilinear, antialiased), then
    multiplied by `rescale`. Per batch, `augmenter(views[:, v],
    training=True)` runs on each view, as in `multiview_dataset` (colour
    jitter, flips, blur; not another crop). Images of any size, read from
    disk as needed: nothing but the shuffle buffer is held in memory.

    Shuffling: streams with light records (files, arrays) shuffle the
    records before decoding, a full shuffle by default; others (tfds)
    shuffle decoded images in a buffer of `DEFAULT_SHUFFLE_BUFFER`.

    Args:
        stream: an `ImageStream` (from `image_stream`).
        augmenter: a Keras layer or callable on float batches `(B, S, S, C)`;
            the same rules as `multiview_dataset` (a layer's `value_range`
            must be `(0, 255 * rescale)`). `None`: the crops themselves.
        batch_size: B, images (not views) per batch.
        image_size: S, the side of the square views.
        num_views: V >= 1.
        shuffle: reshuffle every epoch.
        seed: seeds the shuffle and the crops (a stateless random stream, so
            the crops do not depend on parallelism): the same seed gives the
            same batches, run after run (for a seeded augmenter, too).
        shuffle_buffer: records (or decoded images) to shuffle among; None
            for the default above.
        drop_remainder: drop the last, smaller batch (default).
        scale: `(min, max)` area fraction of the crop box, in (0, 1]
            (SimCLR and MoCo: (0.08, 1); MoCo v3 on small images: (0.2, 1)).
        ratio: `(min, max)` aspect ratio of the box.
        rescale: factor applied to the crops (1/255: [0, 1]).
        labels: also yield the labels.
        num_parallel_calls: parallel calls of the augmenter; None for
            `tf.data.AUTOTUNE` without a seed and 1 with one.
        prefetch: prefetch batches.

    Returns:
        A `tf.data.Dataset` of `{"views": float32 (B, V, S, S, C)}`, or of
        `({"views": ...}, int32 labels (B,))` with `labels=True`.

    Raises:
        ValueError: a bad argument (named in the message).

    Example:

    >>> stream = image_stream("tiny_imagenet", "train", data_dir="/data")
    >>> views = multiview_stream(stream, batch_size=256, image_size=64)
    >>> next(iter(views))["views"].shape
    TensorShape([256, 2, 64, 64, 3])

    Reference:
        Chen et al. "A Simple Framework for Contrastive Learning of Visual
        Representations", ICML 2020; torchvision `RandomResizedCrop`.
    """
    stream = _check_stream(stream)
    image_size = check_positive_integer("image_size", image_size)
    num_views = check_positive_integer("num_views", num_views)
    batch_size, shuffle, drop_remainder, prefetch = check_batching(
        stream.num_examples, batch_size, shuffle, drop_remainder, prefetch
    )
    seed = check_seed(seed)
    scale = _check_range("scale", scale, 1.0)
    ratio = _check_range("ratio", ratio, None)
    rescale = check_rescale(rescale)
    augment = None if augmenter is None else augment_fn(augmenter)
    check_value_range(augmenter, rescale)
    with_labels = labels
    tf = import_tensorflow()
    num_parallel_calls = check_num_parallel_calls(tf, num_parallel_calls, seed)

    light = stream.records is not None
    elements = stream.records if light else stream.dataset
    if shuffle:
        default = stream.num_examples if light else min(stream.num_examples, DEFAULT_SHUFFLE_BUFFER)
        buffer = check_positive_integer("shuffle_buffer", default if shuffle_buffer is None else shuffle_buffer)
        elements = elements.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    randoms = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)

    def augment_views(views, label):
        if augment is not None:
            views = tf.stack(
                [tf.cast(augment(views[:, view]), tf.float32) for view in range(num_views)], axis=1
            )
        features = {"views": views}
        return (features, label) if with_labels else features

    dataset = tf.data.Dataset.zip((elements, randoms))
    crop_views = _crop_views(tf, stream.decode if light else None, num_views, image_size, scale, ratio, rescale)
    dataset = dataset.map(crop_views, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    dataset = dataset.map(augment_views, num_parallel_calls=num_parallel_calls, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE) if prefetch else dataset


def eval_stream(
    stream: ImageStream,
    image_size: int = 224,
    batch_size: int = 256,
    crop_fraction: float = EVAL_CROP_FRACTION,
    rescale: float = DEFAULT_RESCALE,
    prefetch: bool = True,
) -> Any:
    """A `tf.data.Dataset` of centre-cropped image batches, for evaluation.

    Each image's shorter side is resized to `R = floor(S / crop_fraction)`
    (256 for S = 224), its longer side to `floor(R * long / short)`
    (bilinear, antialiased), and the centre `S x S` box cut out, at
    `top = round((H' - S) / 2)` and `left = round((W' - S) / 2)` (as
    torchvision's `Resize(R)` then `CenterCrop(S)`). In order, every image
    once, the last batch kept: for feature extraction, kNN and linear
    probes.

    Args:
        stream: an `ImageStream` (from `image_stream`).
        image_size: S, the side of the crops.
        batch_size: images per batch.
        crop_fraction: `S / R`, in (0, 1]; 1.0 resizes the shorter side to S.
        rescale: factor applied to the crops (1/255: [0, 1]).
        prefetch: prefetch batches.

    Returns:
        A `tf.data.Dataset` of `(float32 (B, S, S, C) images, int32 (B,) labels)`.

    Example:

    >>> batches = eval_stream(image_stream("imagenet", "val", "/data"), 224, 256)
    >>> features = encoder.predict(batches.map(lambda images, labels: images))
    """
    stream = _check_stream(stream)
    image_size = check_positive_integer("image_size", image_size)
    batch_size = check_positive_integer("batch_size", batch_size)
    if not is_real(crop_fraction) or not 0 < crop_fraction <= 1:
        raise ValueError(
            f"`crop_fraction` must be a number in (0, 1] (0.875 crops 224 of 256). "
            f"Received: crop_fraction={crop_fraction!r}"
        )
    rescale = check_rescale(rescale)
    resize = int(math.floor(image_size / float(crop_fraction)))
    tf = import_tensorflow()

    def center_crop(image, label):
        shape = tf.shape(image)
        short = tf.minimum(shape[0], shape[1])
        size = tf.stack([resize * shape[0] // short, resize * shape[1] // short])
        top = tf.cast(tf.round((size[0] - image_size) / 2), tf.int32)
        left = tf.cast(tf.round((size[1] - image_size) / 2), tf.int32)
        resized = _resize(tf, image, size)
        crop = resized[top:top + image_size, left:left + image_size]
        return tf.ensure_shape(crop, [image_size, image_size, None]) * rescale, label

    dataset = stream.dataset.map(center_crop, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.batch(batch_size)
    return dataset.prefetch(tf.data.AUTOTUNE) if prefetch else dataset
