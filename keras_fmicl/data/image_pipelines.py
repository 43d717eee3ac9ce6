"""tf.data pipelines of images: several augmented views of each image, or plain batches."""

from __future__ import annotations

import inspect
from typing import Any
from typing import Callable

import keras
import numpy as np

from keras_fmicl.data.batching import check_batching
from keras_fmicl.data.batching import index_batches
from keras_fmicl.utils import backend_ops as utils_backend_ops
from keras_fmicl.utils import keras_private
from keras_fmicl.utils.checks import check_positive_integer
from keras_fmicl.utils.checks import check_seed
from keras_fmicl.utils.checks import is_real
from keras_fmicl.utils.imports import import_tensorflow

DEFAULT_RESCALE = 1.0 / 255.0


def check_rescale(rescale: Any) -> float:
    if not is_real(rescale) or not 0 < rescale < float("inf"):
        raise ValueError(
            "`rescale` must be a positive number (1/255 maps uint8 pixels to "
            f"[0, 1], 1.0 keeps [0, 255]). Received: rescale={rescale!r}"
        )
    return float(rescale)


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


def augment_fn(augmenter: Any) -> Callable[[Any], Any]:
    """`x -> augmenter(x, training=True)`, without `training` if unsupported."""
    if not callable(augmenter):
        raise ValueError(
            "`augmenter` must be a Keras layer or a callable mapping a batch "
            f"of images to a batch of images. Received: augmenter={augmenter!r}"
        )
    if isinstance(augmenter, keras.Model) and not utils_backend_ops.models_run_in_tf_data():
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


def check_value_range(augmenter: Any, rescale: float) -> None:
    """`ValueError` if a layer of `augmenter` expects pixels on another scale.

    For `uint8` images, whose pixels lie in [0, 255] and reach the augmenter
    in [0, 255 rescale]; the layers checked are those with a `value_range`
    attribute (`SimCLRAugmentation`, Keras' colour layers).
    """
    if not isinstance(augmenter, keras.layers.Layer):
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
            layers.extend(keras_private.sublayers(layer, include_self=False, recursive=False))
        elif not np.allclose(np.asarray(value_range, np.float64), expected, rtol=1e-6, atol=0.0):
            owner = "augmenter" if layer is augmenter else f"augmenter layer {layer.name!r}"
            raise ValueError(
                f"The {owner} expects pixels in value_range={tuple(value_range)}, but the "
                f"uint8 images times rescale={rescale:g} lie in [0, {expected[1]:g}]: set its "
                f"value_range to (0, {expected[1]:g}) or `rescale` to match. Received: "
                f"value_range={tuple(value_range)}, rescale={rescale:g}"
            )


def check_num_parallel_calls(tf: Any, num_parallel_calls: Any, seed: int | None) -> int:
    """The parallel calls of an augmentation map: `None` is `tf.data.AUTOTUNE`
    without a seed and 1 with one (parallel calls may interleave a seeded
    augmenter's random-state updates)."""
    if num_parallel_calls is None:
        return tf.data.AUTOTUNE if seed is None else 1
    if num_parallel_calls == tf.data.AUTOTUNE:
        return num_parallel_calls
    return check_positive_integer("num_parallel_calls", num_parallel_calls)


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
    num_views = check_positive_integer("num_views", num_views)
    batch_size, shuffle, drop_remainder, prefetch = check_batching(
        len(images), batch_size, shuffle, drop_remainder, prefetch
    )
    seed = check_seed(seed)
    rescale = check_rescale(rescale)
    augment = None if augmenter is None else augment_fn(augmenter)
    if images.dtype == np.uint8:
        check_value_range(augmenter, rescale)
    tf = import_tensorflow()
    num_parallel_calls = check_num_parallel_calls(tf, num_parallel_calls, seed)

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

    dataset = index_batches(
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
    batch_size, shuffle, drop_remainder, prefetch = check_batching(
        len(images), batch_size, shuffle, drop_remainder, prefetch
    )
    seed = check_seed(seed)
    rescale = check_rescale(rescale)
    tf = import_tensorflow()
    image_table = tf.convert_to_tensor(images)
    label_table = None if labels is None else tf.convert_to_tensor(labels)

    def gather(index):
        batch = tf.cast(tf.gather(image_table, index), tf.float32) * rescale
        if label_table is None:
            return batch
        return batch, tf.gather(label_table, index)

    dataset = index_batches(
        tf, len(images), batch_size, shuffle, shuffle_buffer, seed, drop_remainder
    )
    dataset = dataset.map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if prefetch:
        dataset = dataset.prefetch(tf.data.AUTOTUNE)
    return dataset
