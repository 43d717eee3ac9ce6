"""Features of a frozen encoder over a data set."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from keras_fmicl.evaluation.arrays import as_labels
from keras_fmicl.evaluation.arrays import to_numpy
from keras_fmicl.utils.checks import check_positive_integer


# --------------------------------------------------------------------------
# Frozen features and the linear probe
# --------------------------------------------------------------------------

def count_images(images: Any, argument: str, expression: str | None = None) -> int | None:
    """Number of samples of an array or tensor (`None` when it has no shape).

    Raises a `ValueError` for zero samples: `predict` on an empty input
    fails inside Keras and, on the JAX backend, leaves the model unable to
    run again, so nothing may reach the encoder before this check.

    Args:
        images: the inputs of the encoder.
        argument: the argument named by the error.
        expression: how the error writes `images` (default: `argument`).
    """
    expression = expression or argument
    shape = getattr(images, "shape", None)
    if shape is None or len(shape) == 0 or shape[0] is None:
        return None
    if int(shape[0]) == 0:
        raise ValueError(
            f"`{argument}` must hold at least one sample. "
            f"Received: {expression}.shape={tuple(shape)}"
        )
    return int(shape[0])


def extract_features(
    encoder: Any, images: Any, batch_size: int = 256, verbose: int = 0
) -> np.ndarray:
    """Features of a frozen encoder, computed in inference mode and in batches.

    A `keras.Model` runs through `predict` (compiled, batched); a
    `keras.Layer` or any other callable is called on slices of `batch_size`
    images (layers with `training=False`). Empty `images` raise a
    `ValueError` before the encoder runs. The features are returned as
    computed, NaN or Inf included (the evaluation functions reject those).

    Args:
        encoder: model, layer or callable mapping images to `(N, F)` features.
        images: array or tensor of inputs, first axis the samples (at least
            one).
        batch_size: number of images per forward pass.
        verbose: verbosity of `predict` (0 = silent).

    Returns:
        `(N, F)` numpy array of features.

    Example:

    >>> images = np.random.normal(size=(10, 4, 4, 1)).astype("float32")
    >>> extract_features(keras.layers.Flatten(), images, batch_size=4).shape
    (10, 16)
    """
    batch_size = check_positive_integer("batch_size", batch_size)
    if not callable(encoder):
        raise ValueError(
            "`encoder` must be a Keras model, layer or callable mapping images to "
            f"features. Received: encoder={encoder!r}"
        )
    count_images(images, "images")
    if isinstance(encoder, keras.Model):
        features = encoder.predict(images, batch_size=batch_size, verbose=verbose)
    else:
        outputs = []
        for start in range(0, int(images.shape[0]), batch_size):
            batch = images[start : start + batch_size]
            if isinstance(encoder, keras.Layer):
                outputs.append(to_numpy(encoder(batch, training=False)))
            else:
                outputs.append(to_numpy(encoder(batch)))
        features = np.concatenate(outputs, axis=0) if outputs else np.zeros((0, 0))
    if isinstance(features, (dict, list, tuple)):
        raise ValueError(
            "`encoder` must return a single (N, F) feature tensor. Received an "
            f"output of type {type(features).__name__}"
        )
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(
            "`encoder` must map images to (N, F) features. "
            f"Received: features of shape {features.shape}"
        )
    return features


def check_data(data: Any, argument: str) -> tuple[Any, Any]:
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError(
            f"`{argument}` must be a pair (images, labels). "
            f"Received: {argument} of type {type(data).__name__}"
        )
    return data[0], data[1]


def check_data_labels(images: Any, labels: Any, argument: str) -> np.ndarray:
    """Labels of a `(images, labels)` pair: valid, one per image, at least one."""
    num_images = count_images(images, argument, f"{argument}[0]")
    labels = as_labels(labels, f"{argument}[1]", num_images)
    if labels.size == 0:
        raise ValueError(
            f"`{argument}` must hold at least one sample. Received: 0 labels in {argument}[1]"
        )
    return labels
