"""Features of a frozen encoder over a data set."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from keras_fmicl.evaluation.arrays import as_labels
from keras_fmicl.evaluation.arrays import check_finite
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


_DIVERGED_HINT = " (the encoder's weights may have diverged)"


def _check_finite_weights(encoder: Any) -> None:
    """Rejects an encoder whose floating-point weights hold NaN or +-Inf.

    Features alone do not reveal such weights on every backend: XLA (JAX)
    may turn a NaN into 0 in some ops (a ReLU, a max pooling), so an
    encoder with NaN weights can give finite, all-zero features there while
    TensorFlow and PyTorch give NaN. The weights are checked on every
    backend, one reduction per variable. Callables without `weights` pass.
    """
    bad = []
    for variable in getattr(encoder, "weights", None) or ():
        dtype = keras.backend.standardize_dtype(variable.dtype)
        if "float" not in dtype:
            continue
        if not bool(to_numpy(keras.ops.all(keras.ops.isfinite(variable)))):
            bad.append(getattr(variable, "path", None) or variable.name)
    if bad:
        shown = ", ".join(f"`{name}`" for name in bad[:10]) + (", ..." if len(bad) > 10 else "")
        raise ValueError(
            "The encoder's features are not finite: its weights hold NaN or Inf"
            f"{_DIVERGED_HINT}. Received: {len(bad)} non-finite weight(s): {shown}"
        )


def _as_images(images: Any) -> Any:
    """`images` as an array: a list or tuple goes through `np.asarray`."""
    if isinstance(images, (list, tuple)):
        try:
            images = np.asarray(images)
        except ValueError:
            images = None
        if images is None or images.dtype.kind not in "biuf":
            raise ValueError(
                "`images` must be an array, a tensor, or a list of equally shaped "
                "arrays (numbers). Received: a list of ragged or non-numeric items"
            )
    return images


def extract_features(
    encoder: Any,
    images: Any,
    batch_size: int = 256,
    verbose: int = 0,
    subject: str = "the encoder's features",
) -> np.ndarray:
    """Features of a frozen encoder, computed in inference mode and in batches.

    A `keras.Model` runs through `predict` (compiled, batched); a
    `keras.Layer` or any other callable is called on slices of `batch_size`
    images (layers with `training=False`). Empty `images` raise a
    `ValueError` before the encoder runs; a list of images is taken as
    `np.asarray(images)`.

    The features must be finite, the same on every backend: an encoder
    whose weights hold NaN or +-Inf is refused before it runs (on JAX, XLA
    may turn a NaN into 0 and give finite, all-zero features), and features
    holding NaN or +-Inf raise a `ValueError` listing the rows: "the
    encoder's features ... must be finite ... (the encoder's weights may
    have diverged)".

    Args:
        encoder: model, layer or callable mapping images to `(N, F)` features.
        images: array, tensor or list of inputs, first axis the samples (at
            least one).
        batch_size: number of images per forward pass.
        verbose: verbosity of `predict` (0 = silent).
        subject: how an error names the features, e.g. "the encoder's
            features of the `train_data` images".

    Returns:
        `(N, F)` numpy array of finite features.

    Raises:
        ValueError: for a bad argument, empty `images`, an output that is
            not `(N, F)`, non-finite weights or non-finite features.

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
    images = _as_images(images)
    count_images(images, "images")
    _check_finite_weights(encoder)
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
    check_finite(features, subject, _DIVERGED_HINT)
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
