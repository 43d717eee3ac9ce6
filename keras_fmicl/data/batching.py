"""Batching checks and index batches shared by the image and sentence pipelines."""

from __future__ import annotations

from typing import Any

from keras_fmicl.utils.checks import check_bool
from keras_fmicl.utils.checks import check_positive_integer


def check_batching(
    count: int, batch_size: Any, shuffle: Any, drop_remainder: Any, prefetch: Any, noun: str = "images"
) -> tuple[int, bool, bool, bool]:
    """`(batch_size, shuffle, drop_remainder, prefetch)` of a dataset of `count` `noun`, checked."""
    batch_size = check_positive_integer("batch_size", batch_size)
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


def index_batches(
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
        buffer = check_positive_integer("shuffle_buffer", buffer)
        indices = indices.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    return indices.batch(batch_size, drop_remainder=drop_remainder)
