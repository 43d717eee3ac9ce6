"""Checks and conversions of the features and labels that the evaluations take."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from keras_fmicl.utils.backend_ops import compute_dtype
from keras_fmicl.utils.checks import check_integer
from keras_fmicl.utils.checks import check_positive_integer
from keras_fmicl.utils.checks import is_real


def check_non_negative_int(name: str, value: Any) -> int:
    return check_integer(name, value, 0, description="a non-negative integer")


def check_positive_float(name: str, value: Any) -> float:
    if not is_real(value) or not 0 < value < float("inf"):
        raise ValueError(
            f"`{name}` must be a positive finite number. Received: {name}={value!r}"
        )
    return float(value)


def check_non_negative_float(name: str, value: Any) -> float:
    if not is_real(value) or not 0 <= value < float("inf"):
        raise ValueError(
            f"`{name}` must be a non-negative finite number. Received: {name}={value!r}"
        )
    return float(value)


def as_features(x: Any, argument: str) -> Any:
    """Rank-2 floating tensor; half precision and integers go to float32."""
    if isinstance(x, (list, tuple)):
        x = np.asarray(x)
    x = ops.convert_to_tensor(x)
    if len(x.shape) != 2:
        raise ValueError(
            f"`{argument}` must have shape (num_samples, num_features). "
            f"Received: {argument}.shape={tuple(x.shape)}"
        )
    if x.shape[1] == 0:
        raise ValueError(
            f"`{argument}` must hold at least one feature (axis 1). "
            f"Received: {argument}.shape={tuple(x.shape)}"
        )
    dtype = compute_dtype(x)
    if keras.backend.standardize_dtype(x.dtype) != dtype:
        x = ops.cast(x, dtype)
    return x


MAX_ROWS_SHOWN = 10


def row_list(rows: np.ndarray) -> str:
    """`[3, 17]`, or the first ten indices followed by `...`."""
    shown = ", ".join(str(int(row)) for row in rows[:MAX_ROWS_SHOWN])
    return f"[{shown}{', ...' if rows.size > MAX_ROWS_SHOWN else ''}]"


def concrete_value(x: Any) -> np.ndarray | None:
    """The numpy value of `x`, or `None` while `x` is symbolic or traced.

    Inside `jax.jit` or `tf.function` (or for a `KerasTensor`) a tensor has no
    value yet; `convert_to_numpy` then raises a `TypeError` (JAX tracer) or a
    `RuntimeError` (`NotImplementedError` of a TensorFlow graph tensor).
    """
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, keras.KerasTensor):
        return None
    try:
        return np.asarray(ops.convert_to_numpy(x))
    except (TypeError, RuntimeError):
        return None


def check_finite(x: Any, subject: str, hint: str = "") -> None:
    """Rejects rows of `x` (rank 2) holding NaN or +-Inf with a `ValueError`.

    One bad feature would otherwise corrupt a whole evaluation without an
    error: a NaN row is a NaN similarity to every query, an infinite one a
    NaN unit vector, and a NaN kNN vote or probe loss ends as class 0 or
    chance accuracy. Only the `(N,)` row mask leaves the device. A symbolic
    or traced `x` has no value to check: there `l2_normalize` makes a bad row
    NaN, so `alignment`/`uniformity` end as NaN (never a finite number).

    Args:
        x: `(N, F)` numpy array or backend tensor.
        subject: how the error names `x`, e.g. "`train_features`".
        hint: a sentence of advice appended to the message.
    """
    if isinstance(x, np.ndarray):
        row_is_finite = np.all(np.isfinite(x), axis=-1)
    else:
        row_is_finite = concrete_value(ops.all(ops.isfinite(x), axis=-1))
        if row_is_finite is None:
            return
    bad_rows = np.flatnonzero(~np.asarray(row_is_finite, dtype=bool))
    if bad_rows.size:
        raise ValueError(
            f"{subject[:1].upper()}{subject[1:]} must be finite; rows "
            f"{row_list(bad_rows)} ({bad_rows.size} of {row_is_finite.shape[0]}) "
            f"hold NaN or Inf{hint}. Received: {bad_rows.size} non-finite rows in an "
            f"array of shape {tuple(x.shape)}"
        )


def as_labels(y: Any, argument: str, num_samples: int | None = None) -> np.ndarray:
    """Integer class labels as a numpy `(N,)` array; `(N, 1)` is accepted.

    Integer dtypes, and floating labels holding whole numbers (`2.0`), are
    accepted; NaN, +-Inf, fractions, negative labels, and other dtypes (bool,
    strings, objects) raise a `ValueError` naming `argument` and the rows.
    """
    labels = np.asarray(ops.convert_to_numpy(y) if ops.is_tensor(y) else y)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(
            f"`{argument}` must be integer class labels of shape (num_samples,). "
            f"Received: {argument}.shape={labels.shape}"
        )
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        if not np.issubdtype(labels.dtype, np.floating):
            raise ValueError(
                f"`{argument}` must hold integer class labels. "
                f"Received: {argument} of dtype {labels.dtype}"
            )
        non_finite = np.flatnonzero(~np.isfinite(labels))
        if non_finite.size:
            raise ValueError(
                f"`{argument}` must hold integer class labels; rows "
                f"{row_list(non_finite)} ({non_finite.size} of {labels.size}) hold "
                f"NaN or Inf. Received: {argument} of dtype {labels.dtype}"
            )
        fractional = np.flatnonzero(labels != np.round(labels))
        if fractional.size:
            raise ValueError(
                f"`{argument}` must hold integer class labels; rows "
                f"{row_list(fractional)} hold fractions. Received: a label "
                f"{labels[fractional[0]]!r} in {argument}"
            )
        huge = np.flatnonzero(np.abs(labels) >= 2.0**62)
        if huge.size:  # would wrap around in the int64 cast
            raise ValueError(
                f"`{argument}` must hold class labels below 2**62. "
                f"Received: a label {labels[huge[0]]!r} in {argument}"
            )
    labels = labels.astype(np.int64)
    negative = np.flatnonzero(labels < 0)
    if negative.size:
        raise ValueError(
            f"`{argument}` must hold non-negative class labels; rows "
            f"{row_list(negative)} hold negative labels. "
            f"Received: a label {labels[negative[0]]} in {argument}"
        )
    if num_samples is not None and labels.shape[0] != num_samples:
        raise ValueError(
            f"`{argument}` must have one label per sample ({num_samples}). "
            f"Received: {argument}.shape={labels.shape}"
        )
    return labels


def resolve_num_classes(num_classes: int | None, **label_sets: np.ndarray) -> int:
    """`num_classes` checked against every label (or inferred: largest + 1).

    Args:
        num_classes: the user's `num_classes`, or `None`.
        **label_sets: the label arrays, keyed by their argument names.
    """
    largest = max(
        (int(labels.max()) for labels in label_sets.values() if labels.size), default=-1
    )
    if num_classes is None:
        return max(largest + 1, 1)
    num_classes = check_positive_integer("num_classes", num_classes)
    for argument, labels in label_sets.items():
        too_large = np.flatnonzero(labels >= num_classes)
        if too_large.size:
            raise ValueError(
                f"`num_classes` must exceed every label of `{argument}`; rows "
                f"{row_list(too_large)} of {argument} hold labels >= {num_classes}. "
                f"Received: num_classes={num_classes} with a label "
                f"{labels[too_large[0]]} in {argument}"
            )
    return num_classes


def check_not_empty(x: Any, argument: str) -> int:
    """The number of rows of `x`, a `ValueError` naming `argument` if none."""
    count = int(x.shape[0])
    if count == 0:
        raise ValueError(
            f"`{argument}` must hold at least one sample. "
            f"Received: {argument}.shape={tuple(x.shape)}"
        )
    return count


def check_same_width(test: Any, train: Any) -> None:
    """`test_features` and `train_features` must have as many features."""
    if test.shape[1] != train.shape[1]:
        raise ValueError(
            "`test_features` and `train_features` must have the same number of "
            f"features. Received: test_features.shape={tuple(test.shape)}, "
            f"train_features.shape={tuple(train.shape)}"
        )


def compact_labels(*label_sets: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """The distinct labels of all `label_sets` and each set mapped onto `0..C-1`.

    `classes[i]` is the label that index `i` stands for; the order of the
    labels is kept (`np.unique` sorts), so labels already `0..C-1` (all
    present) map to themselves. The classifiers work on the indices: their
    vote and output arrays have `C` columns, not `max(label) + 1`.

    Example:

    >>> classes, (train, test) = compact_labels(np.array([5, 20]), np.array([10, 5]))
    >>> classes.tolist(), train.tolist(), test.tolist()
    ([5, 10, 20], [0, 2], [1, 0])
    """
    classes = np.unique(np.concatenate(label_sets))
    return classes, [np.searchsorted(classes, labels) for labels in label_sets]


def row_block(x: Any, start: int, size: int) -> Any:
    """`x[start : start + size]` as a dynamic slice (one XLA program per size on JAX)."""
    return ops.slice(x, (start,) + (0,) * (len(x.shape) - 1), (size,) + tuple(x.shape[1:]))


def num_rows(x: Any) -> int:
    return int(x.shape[0])


def to_numpy(x: Any) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(x))
