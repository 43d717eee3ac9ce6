"""Evaluation of learned representations: kNN, linear probe, alignment/uniformity.

Self-supervised encoders are judged by how well a simple classifier does on
their frozen features:

* `knn_accuracy` / `knn_predict`: the weighted k-nearest-neighbour vote of
  InstDisc (Wu et al. 2018), as used by lightly and solo-learn: cosine
  similarity of L2-normalised features, the `k` most similar training points
  each vote for their class with weight `exp(sim / temperature)`.
* `linear_evaluation` / `linear_probe_accuracy`: a single softmax layer
  trained on the frozen features (the standard linear protocol).
* `few_label_accuracy` / `class_balanced_subset`: the same probe trained on
  a class-balanced 1 % or 10 % of the labels (semi-supervised protocol).
* `alignment` / `uniformity`: the two embedding-quality measures of Wang &
  Isola (2020).
* `KNNMonitor`: a callback that logs the kNN accuracy during `fit`.

Everything accepts numpy arrays or backend tensors. The heavy math runs in
`keras.ops`, batched over the query rows, so memory stays bounded by
`batch_size x num_train` similarities instead of `num_test x num_train`.

Reference:
    Wu, Xiong, Yu, Lin. "Unsupervised Feature Learning via Non-Parametric
    Instance Discrimination", CVPR 2018 (weighted kNN monitor).
    Wang, Isola. "Understanding Contrastive Representation Learning through
    Alignment and Uniformity on the Hypersphere", ICML 2020.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_fmicl.contrast import compute_dtype
from keras_fmicl.similarities import l2_normalize
from keras_fmicl.validation import check_integer
from keras_fmicl.validation import check_positive_integer
from keras_fmicl.validation import is_real

DEFAULT_KNN_K = 200
DEFAULT_KNN_TEMPERATURE = 0.1


# --------------------------------------------------------------------------
# Argument checks and conversions
# --------------------------------------------------------------------------


_check_positive_int = check_positive_integer


def _check_non_negative_int(name: str, value: Any) -> int:
    return check_integer(name, value, 0, description="a non-negative integer")


def _check_positive_float(name: str, value: Any) -> float:
    if not is_real(value) or not 0 < value < float("inf"):
        raise ValueError(
            f"`{name}` must be a positive finite number. Received: {name}={value!r}"
        )
    return float(value)


def _check_non_negative_float(name: str, value: Any) -> float:
    if not is_real(value) or not 0 <= value < float("inf"):
        raise ValueError(
            f"`{name}` must be a non-negative finite number. Received: {name}={value!r}"
        )
    return float(value)


def _as_features(x: Any, argument: str) -> Any:
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


_MAX_ROWS_SHOWN = 10


def _row_list(rows: np.ndarray) -> str:
    """`[3, 17]`, or the first ten indices followed by `...`."""
    shown = ", ".join(str(int(row)) for row in rows[:_MAX_ROWS_SHOWN])
    return f"[{shown}{', ...' if rows.size > _MAX_ROWS_SHOWN else ''}]"


def _concrete_value(x: Any) -> np.ndarray | None:
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


def _check_finite(x: Any, subject: str) -> None:
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
    """
    if isinstance(x, np.ndarray):
        row_is_finite = np.all(np.isfinite(x), axis=-1)
    else:
        row_is_finite = _concrete_value(ops.all(ops.isfinite(x), axis=-1))
        if row_is_finite is None:
            return
    bad_rows = np.flatnonzero(~np.asarray(row_is_finite, dtype=bool))
    if bad_rows.size:
        raise ValueError(
            f"{subject[:1].upper()}{subject[1:]} must be finite; rows "
            f"{_row_list(bad_rows)} ({bad_rows.size} of {row_is_finite.shape[0]}) "
            f"hold NaN or Inf. Received: {bad_rows.size} non-finite rows in an "
            f"array of shape {tuple(x.shape)}"
        )


def _as_labels(y: Any, argument: str, num_samples: int | None = None) -> np.ndarray:
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
                f"{_row_list(non_finite)} ({non_finite.size} of {labels.size}) hold "
                f"NaN or Inf. Received: {argument} of dtype {labels.dtype}"
            )
        fractional = np.flatnonzero(labels != np.round(labels))
        if fractional.size:
            raise ValueError(
                f"`{argument}` must hold integer class labels; rows "
                f"{_row_list(fractional)} hold fractions. Received: a label "
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
            f"{_row_list(negative)} hold negative labels. "
            f"Received: a label {labels[negative[0]]} in {argument}"
        )
    if num_samples is not None and labels.shape[0] != num_samples:
        raise ValueError(
            f"`{argument}` must have one label per sample ({num_samples}). "
            f"Received: {argument}.shape={labels.shape}"
        )
    return labels


def _resolve_num_classes(num_classes: int | None, **label_sets: np.ndarray) -> int:
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
    num_classes = _check_positive_int("num_classes", num_classes)
    for argument, labels in label_sets.items():
        too_large = np.flatnonzero(labels >= num_classes)
        if too_large.size:
            raise ValueError(
                f"`num_classes` must exceed every label of `{argument}`; rows "
                f"{_row_list(too_large)} of {argument} hold labels >= {num_classes}. "
                f"Received: num_classes={num_classes} with a label "
                f"{labels[too_large[0]]} in {argument}"
            )
    return num_classes


def _row_block(x: Any, start: int, size: int) -> Any:
    """`x[start : start + size]` as a dynamic slice (one XLA program per size on JAX)."""
    return ops.slice(x, (start,) + (0,) * (len(x.shape) - 1), (size,) + tuple(x.shape[1:]))


def _num_rows(x: Any) -> int:
    return int(x.shape[0])


def _to_numpy(x: Any) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(x))


# --------------------------------------------------------------------------
# Weighted kNN
# --------------------------------------------------------------------------


def knn_predict(
    train_features: Any,
    train_labels: Any,
    test_features: Any,
    k: int = DEFAULT_KNN_K,
    temperature: float = DEFAULT_KNN_TEMPERATURE,
    num_classes: int | None = None,
    batch_size: int = 1024,
    return_scores: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Weighted kNN prediction on cosine similarity (InstDisc protocol).

    For each test point, the `k` training points of highest cosine
    similarity `s` (`k` is clipped to the training-set size) vote for their
    class with weight `exp(s / temperature)`; the class with the largest
    total weight wins. Ties between classes go to the smallest class index.
    Ties in similarity at the k-th place are broken by the backend's
    `top_k`, which may differ between backends.

    The test set is processed `batch_size` rows at a time: memory peaks at a
    `(batch_size, num_train)` similarity matrix plus the normalised training
    features.

    Args:
        train_features: `(N, F)` training (memory bank) features.
        train_labels: `(N,)` integer labels of the training features.
        test_features: `(M, F)` query features.
        k: number of neighbours, a positive integer.
        temperature: positive temperature of the vote weights.
        num_classes: number of classes; inferred from `train_labels` if
            `None`.
        batch_size: number of test rows handled at once.
        return_scores: also return the `(M, num_classes)` vote shares (class
            weights normalised to sum to 1 per test point).

    Returns:
        `(M,)` int64 numpy array of predicted labels, and with
        `return_scores=True` also the `(M, num_classes)` numpy vote shares.

    Raises:
        ValueError: for features holding NaN or +-Inf (the error names the
            argument and lists the offending rows: one bad row would
            otherwise drive every vote or the whole probe), for labels that
            are not non-negative integers (NaN, Inf, fractions, negatives)
            or not below `num_classes`, and for empty sets.

    Example:

    >>> train = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> knn_predict(train, [0, 1], np.array([[0.9, 0.1]]), k=1)
    array([0])
    """
    k = _check_positive_int("k", k)
    temperature = _check_positive_float("temperature", temperature)
    batch_size = _check_positive_int("batch_size", batch_size)
    train = _as_features(train_features, "train_features")
    num_train = _num_rows(train)
    if num_train == 0:
        raise ValueError(
            "`train_features` must hold at least one sample. "
            f"Received: train_features.shape={tuple(train.shape)}"
        )
    labels = _as_labels(train_labels, "train_labels", num_train)
    num_classes = _resolve_num_classes(num_classes, train_labels=labels)
    test = _as_features(test_features, "test_features")
    if test.shape[1] != train.shape[1]:
        raise ValueError(
            "`test_features` and `train_features` must have the same number of "
            f"features. Received: test_features.shape={tuple(test.shape)}, "
            f"train_features.shape={tuple(train.shape)}"
        )
    _check_finite(train, "`train_features`")
    _check_finite(test, "`test_features`")
    num_test = _num_rows(test)
    k = min(k, num_train)

    bank = ops.transpose(l2_normalize(train))  # (F, N)
    test = l2_normalize(test)
    bank_labels = ops.convert_to_tensor(labels.astype(np.int32))
    scores = []
    for start in range(0, num_test, batch_size):
        rows = min(batch_size, num_test - start)
        queries = _row_block(test, start, rows)
        similarity = ops.einsum("bf,fn->bn", queries, bank)  # (B, N)
        top_similarity, top_index = ops.top_k(similarity, k)  # sorted, descending
        # exp(s / T) up to a per-row factor exp(-s_max / T): the vote is unchanged
        # and no weight overflows, even for a tiny temperature.
        weights = ops.exp((top_similarity - top_similarity[:, :1]) / temperature)
        neighbour_labels = ops.take(bank_labels, top_index)  # (B, k)
        slots = ops.arange(rows, dtype="int32")[:, None] * num_classes + neighbour_labels
        votes = ops.segment_sum(
            ops.reshape(weights, (-1,)),
            ops.reshape(slots, (-1,)),
            num_segments=rows * num_classes,
        )
        scores.append(_to_numpy(ops.reshape(votes, (rows, num_classes))))
    if scores:
        scores = np.concatenate(scores, axis=0).astype(np.float64)
    else:
        scores = np.zeros((0, num_classes))
    predictions = np.argmax(scores, axis=1).astype(np.int64)
    if return_scores:
        return predictions, scores / np.sum(scores, axis=1, keepdims=True)
    return predictions


def knn_accuracy(
    train_features: Any,
    train_labels: Any,
    test_features: Any,
    test_labels: Any,
    k: int = DEFAULT_KNN_K,
    temperature: float = DEFAULT_KNN_TEMPERATURE,
    num_classes: int | None = None,
    batch_size: int = 1024,
) -> float:
    """Top-1 accuracy of the weighted kNN classifier (see `knn_predict`).

    Args:
        train_features: `(N, F)` training features.
        train_labels: `(N,)` integer training labels.
        test_features: `(M, F)` test features, `M >= 1`.
        test_labels: `(M,)` integer test labels.
        k: number of neighbours (clipped to `N`).
        temperature: positive temperature of the vote weights.
        num_classes: number of classes; inferred from the labels if `None`.
        batch_size: number of test rows handled at once.

    Returns:
        The fraction of test points whose predicted label is right, a float.

    Raises:
        ValueError: for features holding NaN or +-Inf (the error names the
            argument and lists the offending rows: one bad row would
            otherwise drive every vote or the whole probe), for labels that
            are not non-negative integers (NaN, Inf, fractions, negatives)
            or not below `num_classes`, and for empty sets.

    Example:

    >>> train = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> knn_accuracy(train, [0, 1], train, [0, 1], k=1)
    1.0

    Reference:
        Wu et al. "Unsupervised Feature Learning via Non-Parametric Instance
        Discrimination", CVPR 2018.
    """
    test_features = _as_features(test_features, "test_features")
    num_test = _num_rows(test_features)
    if num_test == 0:
        raise ValueError(
            "`test_features` must hold at least one sample. "
            f"Received: test_features.shape={tuple(test_features.shape)}"
        )
    test_labels = _as_labels(test_labels, "test_labels", num_test)
    if num_classes is not None:
        num_classes = _resolve_num_classes(num_classes, test_labels=test_labels)
    predictions = knn_predict(
        train_features,
        train_labels,
        test_features,
        k=k,
        temperature=temperature,
        num_classes=num_classes,
        batch_size=batch_size,
    )
    return float(np.mean(predictions == test_labels))


# --------------------------------------------------------------------------
# Frozen features and the linear probe
# --------------------------------------------------------------------------


def _num_images(images: Any, argument: str, expression: str | None = None) -> int | None:
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
    batch_size = _check_positive_int("batch_size", batch_size)
    if not callable(encoder):
        raise ValueError(
            "`encoder` must be a Keras model, layer or callable mapping images to "
            f"features. Received: encoder={encoder!r}"
        )
    _num_images(images, "images")
    if isinstance(encoder, keras.Model):
        features = encoder.predict(images, batch_size=batch_size, verbose=verbose)
    else:
        outputs = []
        for start in range(0, int(images.shape[0]), batch_size):
            batch = images[start : start + batch_size]
            if isinstance(encoder, keras.Layer):
                outputs.append(_to_numpy(encoder(batch, training=False)))
            else:
                outputs.append(_to_numpy(encoder(batch)))
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


def _probe_features(features: Any, argument: str) -> np.ndarray:
    """Non-empty, finite `(N, F)` float32 numpy features for the linear probe."""
    features = _to_numpy(_as_features(features, argument))
    if features.shape[0] == 0:
        raise ValueError(
            f"`{argument}` must hold at least one sample. "
            f"Received: {argument}.shape={features.shape}"
        )
    _check_finite(features, f"`{argument}`")
    single = features.astype(np.float32)
    overflow = np.flatnonzero(~np.all(np.isfinite(single), axis=-1))
    if overflow.size:
        raise ValueError(
            f"`{argument}` must fit in float32 (the probe's dtype); rows "
            f"{_row_list(overflow)} ({overflow.size} of {features.shape[0]}) hold "
            f"values beyond 3.4e38. Received: {argument} of dtype {features.dtype}"
        )
    return single


def _standardize(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = train.mean(axis=0, keepdims=True)
    std = np.maximum(train.std(axis=0, keepdims=True), 1e-6)
    return (train - mean) / std, (test - mean) / std


def linear_probe_accuracy(
    train_features: Any,
    train_labels: Any,
    test_features: Any,
    test_labels: Any,
    num_classes: int | None = None,
    epochs: int = 100,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    weight_decay: float = 0.0,
    standardize: bool = True,
    seed: int | None = None,
    verbose: int = 0,
) -> dict[str, float]:
    """Accuracy of a linear softmax classifier trained on fixed features.

    A single `Dense(num_classes)` layer is trained with softmax
    cross-entropy and Adam (decoupled weight decay on the kernel when
    `weight_decay > 0`, never on the bias). With `standardize=True` every
    feature is first centred and scaled by the training-set mean and
    standard deviation (the test set uses the training statistics).

    Args:
        train_features: `(N, F)` training features.
        train_labels: `(N,)` integer training labels.
        test_features: `(M, F)` test features.
        test_labels: `(M,)` integer test labels.
        num_classes: number of classes; inferred from the labels if `None`.
        epochs: training epochs.
        batch_size: mini-batch size.
        learning_rate: Adam learning rate.
        weight_decay: decoupled weight decay of the kernel, `>= 0`.
        standardize: standardise features with training statistics.
        seed: seed of the classifier's initial weights (`None`: random).
        verbose: verbosity of `fit` (0 = silent).

    Returns:
        `{"train_accuracy": float, "test_accuracy": float}`, top-1.

    Raises:
        ValueError: for features holding NaN or +-Inf (the error names the
            argument and lists the offending rows: one bad row would
            otherwise drive every vote or the whole probe), for labels that
            are not non-negative integers (NaN, Inf, fractions, negatives)
            or not below `num_classes`, and for empty sets (or
            features beyond float32), all before the classifier is built.

    Example:

    >>> x = np.random.normal(size=(64, 8)).astype("float32")
    >>> y = (x[:, 0] > 0).astype("int64")
    >>> linear_probe_accuracy(x, y, x, y, epochs=20)["train_accuracy"] > 0.9
    True
    """
    epochs = _check_positive_int("epochs", epochs)
    batch_size = _check_positive_int("batch_size", batch_size)
    learning_rate = _check_positive_float("learning_rate", learning_rate)
    weight_decay = _check_non_negative_float("weight_decay", weight_decay)
    if seed is not None:
        seed = _check_non_negative_int("seed", seed)
    train = _probe_features(train_features, "train_features")
    test = _probe_features(test_features, "test_features")
    if train.shape[1] != test.shape[1]:
        raise ValueError(
            "`test_features` and `train_features` must have the same number of "
            f"features. Received: test_features.shape={test.shape}, "
            f"train_features.shape={train.shape}"
        )
    train_labels = _as_labels(train_labels, "train_labels", train.shape[0])
    test_labels = _as_labels(test_labels, "test_labels", test.shape[0])
    num_classes = _resolve_num_classes(
        num_classes, train_labels=train_labels, test_labels=test_labels
    )
    if standardize:
        train, test = _standardize(train, test)

    inputs = keras.Input(shape=(train.shape[1],), name="features")
    logits = keras.layers.Dense(
        num_classes,
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
        dtype="float32",
        name="linear_classifier",
    )(inputs)
    classifier = keras.Model(inputs, logits, name="linear_probe")
    optimizer = keras.optimizers.Adam(
        learning_rate=learning_rate, weight_decay=weight_decay or None
    )
    if weight_decay:
        optimizer.exclude_from_weight_decay(var_names=["bias"])
    classifier.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    classifier.fit(
        train, train_labels, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=verbose
    )

    def accuracy(features: np.ndarray, labels: np.ndarray) -> float:
        scores = classifier.predict(features, batch_size=max(batch_size, 1024), verbose=0)
        return float(np.mean(np.argmax(scores, axis=1) == labels))

    return {
        "train_accuracy": accuracy(train, train_labels),
        "test_accuracy": accuracy(test, test_labels),
    }


def class_balanced_subset(labels: Any, fraction: float, seed: int = 0) -> np.ndarray:
    """Indices of a class-balanced subset holding `fraction` of the samples.

    Every class contributes `max(1, round(fraction * N / C))` samples (all
    of them if it has fewer), drawn without replacement by a numpy
    generator seeded with `seed`: the same labels, fraction and seed give
    the same indices on every machine and backend. This is the "few-label"
    protocol of semi-supervised evaluation (a linear probe trained on 1 %
    or 10 % of the labels, e.g. SimCLR's Table 7).

    Args:
        labels: `(N,)` integer class labels.
        fraction: share of the samples to keep, in `(0, 1]`.
        seed: seed of the draw (one subset per seed).

    Returns:
        A sorted `int64` array of indices into `labels`.

    Example:

    >>> labels = np.repeat(np.arange(10), 100)
    >>> indices = class_balanced_subset(labels, 0.1, seed=0)
    >>> np.bincount(labels[indices]).tolist()
    [10, 10, 10, 10, 10, 10, 10, 10, 10, 10]
    """
    labels = _as_labels(labels, "labels")
    fraction = _check_positive_float("fraction", fraction)
    if fraction > 1:
        raise ValueError(f"`fraction` must be in (0, 1]. Received: fraction={fraction}")
    seed = _check_non_negative_int("seed", seed)
    if labels.size == 0:
        raise ValueError("`labels` must hold at least one sample. Received: 0 labels")
    classes = np.unique(labels)
    per_class = max(1, int(round(fraction * labels.size / classes.size)))
    generator = np.random.default_rng(seed)
    chosen = []
    for label in classes:
        members = np.flatnonzero(labels == label)
        take = min(per_class, members.size)
        chosen.append(generator.choice(members, size=take, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def few_label_accuracy(
    train_features: Any,
    train_labels: Any,
    test_features: Any,
    test_labels: Any,
    fraction: float,
    draws: int = 3,
    num_classes: int | None = None,
    epochs: int = 100,
    seed: int = 0,
    **probe_kwargs,
) -> dict[str, Any]:
    """Linear-probe accuracy with only a class-balanced fraction of the labels.

    For each of `draws` subsets (`class_balanced_subset` with seeds `seed`,
    `seed + 1`, ...) a linear classifier is trained on the subset's
    features (`linear_probe_accuracy`, with the subset's own
    standardisation) and scored on all test features. Random-init or weak
    features fall much further behind here than with all labels.

    Args:
        train_features: `(N, F)` training features.
        train_labels: `(N,)` integer training labels.
        test_features: `(M, F)` test features.
        test_labels: `(M,)` integer test labels.
        fraction: share of the training labels used, in `(0, 1]`.
        draws: number of subsets, `>= 1`.
        num_classes: number of classes; inferred from the labels if `None`.
        epochs: training epochs of each classifier.
        seed: seed of the first subset and of the classifiers' weights.
        **probe_kwargs: other `linear_probe_accuracy` arguments.

    Returns:
        `{"fraction", "labels_per_draw", "accuracies" (one per draw),
        "mean"}`, accuracies as fractions.

    Raises:
        ValueError: as `linear_probe_accuracy`, checked on the full training
            and test sets before the first draw (a NaN row outside every
            subset is rejected too; the rows named are rows of the arrays
            passed).

    Example:

    >>> result = few_label_accuracy(train_x, train_y, test_x, test_y, 0.01)
    >>> result["mean"]
    """
    draws = _check_positive_int("draws", draws)
    fraction = _check_positive_float("fraction", fraction)
    if fraction > 1:
        raise ValueError(f"`fraction` must be in (0, 1]. Received: fraction={fraction}")
    seed = _check_non_negative_int("seed", seed)
    # Every check runs on the full sets before the first draw: a bad row
    # outside the first subset must not pass unnoticed, and the rows named
    # in the errors are rows of the arrays the caller passed.
    train = _probe_features(train_features, "train_features")
    test = _probe_features(test_features, "test_features")
    train_labels = _as_labels(train_labels, "train_labels", train.shape[0])
    test_labels = _as_labels(test_labels, "test_labels", test.shape[0])
    num_classes = _resolve_num_classes(
        num_classes, train_labels=train_labels, test_labels=test_labels
    )
    accuracies, sizes = [], []
    for draw in range(draws):
        indices = class_balanced_subset(train_labels, fraction, seed=seed + draw)
        result = linear_probe_accuracy(
            train[indices], train_labels[indices], test, test_labels,
            num_classes=num_classes, epochs=epochs, seed=seed + draw, **probe_kwargs,
        )
        accuracies.append(result["test_accuracy"])
        sizes.append(int(indices.size))
    return {
        "fraction": float(fraction),
        "labels_per_draw": sizes,
        "accuracies": accuracies,
        "mean": float(np.mean(accuracies)),
    }


def _check_data(data: Any, argument: str) -> tuple[Any, Any]:
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError(
            f"`{argument}` must be a pair (images, labels). "
            f"Received: {argument} of type {type(data).__name__}"
        )
    return data[0], data[1]


def _check_data_labels(images: Any, labels: Any, argument: str) -> np.ndarray:
    """Labels of a `(images, labels)` pair: valid, one per image, at least one."""
    num_images = _num_images(images, argument, f"{argument}[0]")
    labels = _as_labels(labels, f"{argument}[1]", num_images)
    if labels.size == 0:
        raise ValueError(
            f"`{argument}` must hold at least one sample. Received: 0 labels in {argument}[1]"
        )
    return labels


def linear_evaluation(
    encoder: Any,
    train_data: tuple[Any, Any],
    test_data: tuple[Any, Any],
    num_classes: int | None = None,
    epochs: int = 100,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    weight_decay: float = 0.0,
    standardize: bool = True,
    feature_batch_size: int = 256,
    seed: int | None = None,
    verbose: int = 0,
) -> dict[str, float]:
    """Linear evaluation of a frozen encoder.

    The encoder runs once over the train and test images in inference mode
    (`extract_features`, no augmentation, weights untouched); a linear
    softmax classifier is then trained on the fixed features
    (`linear_probe_accuracy`).

    Args:
        encoder: Keras model/layer (or callable) mapping images to `(N, F)`.
        train_data: `(images, labels)` of the training split.
        test_data: `(images, labels)` of the test split.
        num_classes: number of classes; inferred from the labels if `None`.
        epochs: training epochs of the classifier.
        batch_size: mini-batch size of the classifier.
        learning_rate: Adam learning rate.
        weight_decay: decoupled weight decay of the classifier's kernel.
        standardize: standardise features with training statistics.
        feature_batch_size: batch size of the encoder's forward passes.
        seed: seed of the classifier's initial weights.
        verbose: verbosity of `fit` (0 = silent).

    Returns:
        `{"train_accuracy": float, "test_accuracy": float}`, top-1.

    Raises:
        ValueError: for an empty split, bad labels (see
            `linear_probe_accuracy`) or bad arguments -- all checked before
            the encoder runs, so a failing call leaves the encoder usable --
            and for encoder features holding NaN or +-Inf (the rows, i.e.
            the images, are listed).

    Example:

    >>> encoder = keras_fmicl.encoders.small_cnn()
    >>> result = linear_evaluation(encoder, (x_train, y_train), (x_test, y_test))
    >>> result["test_accuracy"]
    """
    # Everything that can be checked without the encoder is checked first:
    # no forward pass (and, on JAX, no `predict` on an empty input, which
    # breaks the model for later calls) happens on data that would fail.
    train_images, train_labels = _check_data(train_data, "train_data")
    test_images, test_labels = _check_data(test_data, "test_data")
    train_labels = _check_data_labels(train_images, train_labels, "train_data")
    test_labels = _check_data_labels(test_images, test_labels, "test_data")
    num_classes = _resolve_num_classes(
        num_classes, **{"train_data[1]": train_labels, "test_data[1]": test_labels}
    )
    for name, value, check in (
        ("epochs", epochs, _check_positive_int),
        ("batch_size", batch_size, _check_positive_int),
        ("feature_batch_size", feature_batch_size, _check_positive_int),
        ("learning_rate", learning_rate, _check_positive_float),
        ("weight_decay", weight_decay, _check_non_negative_float),
    ):
        check(name, value)
    if seed is not None:
        _check_non_negative_int("seed", seed)
    train_features = extract_features(encoder, train_images, batch_size=feature_batch_size)
    _check_finite(train_features, "the encoder's features of the `train_data` images")
    test_features = extract_features(encoder, test_images, batch_size=feature_batch_size)
    _check_finite(test_features, "the encoder's features of the `test_data` images")
    return linear_probe_accuracy(
        train_features,
        train_labels,
        test_features,
        test_labels,
        num_classes=num_classes,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        standardize=standardize,
        seed=seed,
        verbose=verbose,
    )


# --------------------------------------------------------------------------
# Alignment and uniformity
# --------------------------------------------------------------------------


def alignment(x: Any, y: Any, alpha: float = 2.0) -> Any:
    """Alignment of paired embeddings: `mean_i ||x^_i - y^_i||_2^alpha`.

    Rows are L2-normalised first (`x^ = x / ||x||`; a zero row stays zero).
    Lower is better: 0 when every pair coincides, `2^alpha` when every pair
    is antipodal.

    Args:
        x: `(N, d)` embeddings.
        y: `(N, d)` embeddings paired row by row with `x` (positive pairs).
        alpha: positive exponent of the distance.

    Returns:
        Scalar tensor (differentiable; `float(...)` gives a Python float).

    Raises:
        ValueError: for concrete inputs holding NaN or +-Inf (rows listed).
            Inside `jax.jit` or `tf.function` there is no value to check;
            there a non-finite row makes the result NaN, never a finite
            number.

    Example:

    >>> x = np.eye(3)
    >>> float(alignment(x, -x))
    4.0

    Reference:
        Wang, Isola. "Understanding Contrastive Representation Learning
        through Alignment and Uniformity on the Hypersphere", ICML 2020.
    """
    alpha = _check_positive_float("alpha", alpha)
    x = _as_features(x, "x")
    y = _as_features(y, "y")
    if tuple(x.shape) != tuple(y.shape):
        raise ValueError(
            "`x` and `y` must have the same shape (paired rows). "
            f"Received: x.shape={tuple(x.shape)}, y.shape={tuple(y.shape)}"
        )
    if _num_rows(x) == 0:
        raise ValueError("`x` must hold at least one sample. Received: 0 samples")
    _check_finite(x, "`x`")
    _check_finite(y, "`y`")
    if x.dtype != y.dtype:
        y = ops.cast(y, x.dtype)
    squared = ops.sum(ops.square(l2_normalize(x) - l2_normalize(y)), axis=-1)
    distance = squared if alpha == 2.0 else ops.power(ops.relu(squared), alpha / 2.0)
    # sum / N rather than ops.mean, which accumulates float64 in float32 on JAX/torch
    return ops.sum(distance) / _num_rows(x)


def uniformity(x: Any, t: float = 2.0, batch_size: int = 1024) -> Any:
    """Uniformity: `log mean_{i != j} exp(-t ||x^_i - x^_j||_2^2)`.

    Rows are L2-normalised first. Lower is better; 0 when all embeddings
    coincide. The mean runs over the `N (N - 1)` ordered pairs of distinct
    rows (the same value as over the unordered pairs of `torch.pdist`). It is
    computed as a log-sum-exp, `batch_size` rows at a time: memory peaks at
    a `(batch_size, N)` matrix, never an `(N, N, d)` tensor.

    Args:
        x: `(N, d)` embeddings, `N >= 2`.
        t: positive scale of the Gaussian potential.
        batch_size: rows handled at once.

    Returns:
        Scalar tensor (differentiable; `float(...)` gives a Python float).

    Raises:
        ValueError: for concrete inputs holding NaN or +-Inf (rows listed).
            Inside `jax.jit` or `tf.function` there is no value to check;
            there a non-finite row makes the result NaN, never a finite
            number.

    Example:

    >>> float(uniformity(np.eye(4), t=2.0))  # orthonormal: ||.||^2 = 2
    -4.0

    Reference:
        Wang, Isola. "Understanding Contrastive Representation Learning
        through Alignment and Uniformity on the Hypersphere", ICML 2020.
    """
    t = _check_positive_float("t", t)
    batch_size = _check_positive_int("batch_size", batch_size)
    x = _as_features(x, "x")
    num_samples = _num_rows(x)
    if num_samples < 2:
        raise ValueError(
            "`x` must hold at least two samples (uniformity is a mean over "
            f"distinct pairs). Received: x.shape={tuple(x.shape)}"
        )
    _check_finite(x, "`x`")
    unit = l2_normalize(x)
    squared_norms = ops.sum(ops.square(unit), axis=-1)  # 1, or 0 for a zero row
    columns = ops.arange(num_samples, dtype="int32")
    block_lse = []
    for start in range(0, num_samples, batch_size):
        size = min(batch_size, num_samples - start)
        rows = _row_block(unit, start, size)
        squared_distance = (
            _row_block(squared_norms, start, size)[:, None]
            + squared_norms[None, :]
            - 2.0 * ops.einsum("bd,nd->bn", rows, unit)
        )
        log_kernel = -t * ops.relu(squared_distance)
        diagonal = (ops.arange(size, dtype="int32") + start)[:, None] == columns[None, :]
        log_kernel = ops.where(diagonal, float("-inf"), log_kernel)
        block_lse.append(ops.logsumexp(log_kernel))
    total = ops.logsumexp(ops.stack(block_lse))
    return total - math.log(num_samples * (num_samples - 1))


# --------------------------------------------------------------------------
# Callback
# --------------------------------------------------------------------------


class KNNMonitor(keras.callbacks.Callback):
    """Logs the weighted kNN accuracy of the encoder's features during `fit`.

    At the end of every `every_n_epochs`-th epoch, and of the last epoch, the
    features of `train_data` and `test_data` are computed with the feature
    extractor (inference mode) and the kNN accuracy (`knn_accuracy`) is
    written into the epoch `logs` under `name`. Every callback that runs
    after this one sees it: the `History` returned by `fit` (Keras appends
    it after the user's callbacks) and, when placed AFTER this callback in
    the `callbacks` list, `keras.callbacks.TensorBoard` (scalar
    `epoch_<name>`, in the train writer unless `name` starts with `val_`),
    `CSVLogger`, `ModelCheckpoint(monitor=name)`, `EarlyStopping`, ...

    ```python
    model.fit(x, epochs=100, callbacks=[
        KNNMonitor((x_train, y_train), (x_test, y_test), every_n_epochs=5),
        keras.callbacks.TensorBoard("logs"),  # after the monitor
    ])
    ```

    On epochs where it is not computed the key is absent from the logs, so
    `history.history[name]` holds one value per evaluated epoch only; the
    callback's `results` dict maps each evaluated epoch index to its
    accuracy. `CSVLogger` fixes its columns at the first epoch, so it
    records the key only with `every_n_epochs=1`; `EarlyStopping` and
    `ModelCheckpoint` monitoring `name` warn and skip the epochs without it.

    Args:
        train_data: `(images, labels)` of the kNN memory bank.
        test_data: `(images, labels)` to classify.
        every_n_epochs: evaluation period in epochs.
        k: number of neighbours.
        temperature: temperature of the vote weights.
        feature_extractor: model or layer mapping images to `(N, F)`
            features. Default: `self.model.encoder` if the trained model has
            an `encoder` attribute, else the trained model itself.
        batch_size: batch size of the feature extraction.
        name: key of the accuracy in the logs.

    The memory bank is `train_data` only: the test points are classified,
    never added to it. The labels and sizes of both pairs are checked when
    the callback is created; features holding NaN or +-Inf raise a
    `ValueError` naming the split and the rows when the accuracy is
    computed.
    """

    def __init__(
        self,
        train_data: tuple[Any, Any],
        test_data: tuple[Any, Any],
        every_n_epochs: int = 1,
        k: int = DEFAULT_KNN_K,
        temperature: float = DEFAULT_KNN_TEMPERATURE,
        feature_extractor: Any | None = None,
        batch_size: int = 256,
        name: str = "knn_accuracy",
    ):
        super().__init__()
        self.train_data = _check_data(train_data, "train_data")
        self.test_data = _check_data(test_data, "test_data")
        # Checked once here, not at the end of an epoch of training.
        self._train_labels = _check_data_labels(*self.train_data, "train_data")
        self._test_labels = _check_data_labels(*self.test_data, "test_data")
        self.every_n_epochs = _check_positive_int("every_n_epochs", every_n_epochs)
        self.k = _check_positive_int("k", k)
        self.temperature = _check_positive_float("temperature", temperature)
        if feature_extractor is not None and not callable(feature_extractor):
            raise ValueError(
                "`feature_extractor` must be a Keras model or layer (or None). "
                f"Received: feature_extractor={feature_extractor!r}"
            )
        self.feature_extractor = feature_extractor
        self.batch_size = _check_positive_int("batch_size", batch_size)
        if not isinstance(name, str) or not name:
            raise ValueError(f"`name` must be a non-empty string. Received: name={name!r}")
        self.name = name
        self.results: dict[int, float] = {}

    def _extractor(self) -> Any:
        if self.feature_extractor is not None:
            return self.feature_extractor
        encoder = getattr(self.model, "encoder", None)
        return encoder if encoder is not None else self.model

    def _is_due(self, epoch: int) -> bool:
        last_epoch = (self.params or {}).get("epochs")
        is_last = last_epoch is not None and epoch + 1 == last_epoch
        return (epoch + 1) % self.every_n_epochs == 0 or is_last

    def evaluate(self) -> float:
        """kNN accuracy of the current features (usable outside `fit`)."""
        extractor = self._extractor()
        train_features = extract_features(extractor, self.train_data[0], self.batch_size)
        _check_finite(train_features, "the features of the `train_data` images")
        test_features = extract_features(extractor, self.test_data[0], self.batch_size)
        _check_finite(test_features, "the features of the `test_data` images")
        return knn_accuracy(
            train_features,
            self._train_labels,
            test_features,
            self._test_labels,
            k=self.k,
            temperature=self.temperature,
        )

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if not self._is_due(epoch):
            return
        accuracy = self.evaluate()
        self.results[epoch] = accuracy
        if logs is not None:
            logs[self.name] = accuracy


# --------------------------------------------------------------------------
# Semantic textual similarity (STS): Spearman correlation of cosine scores
# --------------------------------------------------------------------------

STS_AVERAGE = "average"
"""The key of `evaluate_sts`'s average over the tasks (SimCSE's "Avg.")."""


def _host_array(x: Any, argument: str) -> np.ndarray:
    """`x` as a float64 numpy array (tensors are fetched from the device)."""
    array = np.asarray(ops.convert_to_numpy(x) if ops.is_tensor(x) else x)
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise ValueError(
            f"`{argument}` must hold numbers. Received: {argument} of dtype {array.dtype}"
        )
    return array.astype(np.float64)


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of `x`, tied values sharing the average of their ranks
    (scipy.stats.rankdata's "average" method)."""
    order = np.argsort(x, kind="mergesort")
    ordered = x[order]
    starts_group = np.concatenate([[True], ordered[1:] != ordered[:-1]])
    starts = np.flatnonzero(starts_group)
    ends = np.concatenate([starts[1:], [x.size]])
    group_rank = (starts + ends + 1) / 2.0  # mean of starts+1 .. ends
    ranks = np.empty(x.size, np.float64)
    ranks[order] = group_rank[np.cumsum(starts_group) - 1]
    return ranks


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean()
    y = y - y.mean()
    denominator = math.sqrt(float(np.dot(x, x)) * float(np.dot(y, y)))
    if denominator == 0.0:
        return float("nan")
    return float(np.clip(np.dot(x, y) / denominator, -1.0, 1.0))


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity in float64, scale-invariant like
    `similarities.l2_normalize`: only an all-zero row counts as the zero
    vector (similarity 0)."""

    def unit(x: np.ndarray) -> np.ndarray:
        scale = np.max(np.abs(x), axis=1, keepdims=True)
        scaled = x / np.where(scale > 0, scale, 1.0)
        norm = np.sqrt(np.sum(scaled * scaled, axis=1, keepdims=True))
        is_zero = scale == 0
        return np.where(is_zero, 0.0, scaled / np.where(is_zero, 1.0, norm))

    return np.sum(unit(a) * unit(b), axis=1)


def sts_correlation(embeddings_a: Any, embeddings_b: Any, gold_scores: Any) -> float:
    """Spearman correlation x 100 of cosine similarities with gold scores.

    The STS measure of SentEval and SimCSE: the cosine similarity of each
    pair's embeddings, ranked against the gold scores. Ties get the average
    of their ranks (as `scipy.stats.spearmanr`); computed in float64 on the
    host, without scipy. When all similarities are equal (a collapsed
    encoder) the correlation is undefined and the result is NaN, as scipy
    gives.

    Args:
        embeddings_a: `(N, F)` embeddings of the first sentences (numpy or
            backend tensor).
        embeddings_b: `(N, F)` embeddings of the second sentences.
        gold_scores: `(N,)` gold similarity scores, not all equal.

    Returns:
        A Python float in [-100, 100].

    Raises:
        ValueError: shapes that differ or are not `(N, F)` / `(N,)`, fewer
            than 2 pairs, non-finite values, or constant gold scores.

    Example:

    >>> a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    >>> b = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    >>> sts_correlation(a, b, [5.0, 3.0, 0.0])
    100.0
    """
    a = _host_array(embeddings_a, "embeddings_a")
    b = _host_array(embeddings_b, "embeddings_b")
    gold = _host_array(gold_scores, "gold_scores")
    for argument, array in (("embeddings_a", a), ("embeddings_b", b)):
        if array.ndim != 2 or array.shape[1] == 0:
            raise ValueError(
                f"`{argument}` must have shape (num_pairs, num_features). "
                f"Received: {argument}.shape={array.shape}"
            )
    if a.shape != b.shape:
        raise ValueError(
            "`embeddings_a` and `embeddings_b` must have the same shape, one row "
            f"per pair. Received: embeddings_a.shape={a.shape}, "
            f"embeddings_b.shape={b.shape}"
        )
    if gold.ndim == 2 and gold.shape[1] == 1:
        gold = gold[:, 0]
    if gold.shape != (a.shape[0],):
        raise ValueError(
            f"`gold_scores` must have shape (num_pairs,) = ({a.shape[0]},), one "
            f"score per pair. Received: gold_scores.shape={gold.shape}"
        )
    if a.shape[0] < 2:
        raise ValueError(
            "A rank correlation needs at least 2 pairs. Received: "
            f"{a.shape[0]} pair(s)"
        )
    _check_finite(a, "`embeddings_a`")
    _check_finite(b, "`embeddings_b`")
    bad = np.flatnonzero(~np.isfinite(gold))
    if bad.size:
        raise ValueError(
            f"`gold_scores` must be finite; rows {_row_list(bad)} hold NaN or "
            f"Inf. Received: {bad.size} non-finite scores of {gold.size}"
        )
    if np.all(gold == gold[0]):
        raise ValueError(
            "`gold_scores` must not all be equal (a rank correlation with a "
            f"constant is undefined). Received: {gold.size} scores all {gold[0]!r}"
        )
    similarities = _cosine_rows(a, b)
    return 100.0 * _pearson(_average_ranks(similarities), _average_ranks(gold))


def _sts_task_pairs(name: Any, pairs: Any) -> tuple[list, list, np.ndarray]:
    if not isinstance(name, str):
        raise ValueError(f"`tasks` must be keyed by task names. Received: key {name!r}")
    try:
        sentences_a, sentences_b, scores = tuple(pairs)[:3]
    except (TypeError, ValueError):
        raise ValueError(
            f"`tasks[{name!r}]` must be (sentences_a, sentences_b, gold_scores), "
            "e.g. keras_fmicl.data.load_sts(...). Received: "
            f"{type(pairs).__name__}"
        ) from None
    sentences_a, sentences_b = list(sentences_a), list(sentences_b)
    scores = np.asarray(scores)
    if not len(sentences_a) == len(sentences_b) == len(scores):
        raise ValueError(
            f"`tasks[{name!r}]` must hold as many second sentences and scores as "
            f"first sentences. Received: {len(sentences_a)}, {len(sentences_b)} "
            f"and {len(scores)}"
        )
    return sentences_a, sentences_b, scores


class _EncoderWithHead(keras.Model):
    """`head(encoder(x))` in one model (inference mode), for `evaluate_sts`."""

    def __init__(self, encoder: Any, head: keras.layers.Layer, **kwargs):
        # a name TensorFlow takes as a root scope (not the class name's "_...")
        kwargs.setdefault("name", "encoder_with_head")
        super().__init__(**kwargs)
        self.encoder = encoder
        self.head = head

    def call(self, inputs, training=False):
        if isinstance(self.encoder, keras.layers.Layer):
            features = self.encoder(inputs, training=training)
        else:
            features = self.encoder(inputs)
        return self.head(features, training=training)


def _embed_sentences(
    encoder: Any, sentences: list, preprocessor: Any, batch_size: int, verbose: int, task: str
) -> np.ndarray:
    """(len(sentences), F) features, in full batches of `batch_size`.

    The list is padded with empty sentences to a multiple of `batch_size`
    (their rows are dropped), so every task of `evaluate_sts` feeds the
    encoder one batch shape: one compilation on JAX/XLA, not one per task.
    Inference is row-independent, so the padding changes no feature.
    """
    from keras_fmicl import data

    count = len(sentences)
    padded = list(sentences) + [""] * (-count % batch_size)
    dataset = data.sentence_dataset(
        padded, preprocessor, batch_size=batch_size, shuffle=False, drop_remainder=False
    )
    if isinstance(encoder, keras.Model):
        features = encoder.predict(dataset, verbose=verbose)
    else:
        outputs = []
        for batch in dataset:
            batch = keras.tree.map_structure(lambda t: ops.convert_to_tensor(np.asarray(t)), batch)
            if isinstance(encoder, keras.Layer):
                outputs.append(_to_numpy(encoder(batch, training=False)))
            else:
                outputs.append(_to_numpy(encoder(batch)))
        features = np.concatenate(outputs, axis=0)
    if isinstance(features, (dict, list, tuple)) or np.ndim(features) != 2:
        raise ValueError(
            "`encoder` must map a batch of tokenized sentences to (N, F) "
            f"features. Received: an output of type {type(features).__name__}"
            + (f" and shape {np.shape(features)}" if not isinstance(features, dict) else "")
        )
    if features.shape[0] != len(padded):
        raise ValueError(
            f"`encoder` must return one row per sentence: {len(padded)} for "
            f"task {task!r} (its {count} sentences in batches of {batch_size}). "
            f"Received: {features.shape[0]} rows"
        )
    return np.asarray(features)[:count]


def evaluate_sts(
    encoder: Any,
    tasks: Any,
    preprocessor: Any,
    batch_size: int = 128,
    verbose: int = 0,
    head: Any = None,
) -> dict:
    """STS scores of a sentence encoder: per task, and their average.

    For each task, both sentences of every pair are embedded (inference
    mode, in full batches of `batch_size`: the last one is padded with empty
    sentences, so every task shares one compiled shape) and scored with `sts_correlation`:
    the Spearman correlation x 100 of the cosine similarities with the
    gold scores, over all the task's pairs at once. For STS12-16 this is
    SentEval's "all" setting (the subsets concatenated), which SimCSE and
    f-MICL report; for STS-B and SICK-R the test split is the task. The
    average is the plain mean over the tasks (SimCSE's "Avg.").

    Args:
        encoder: a `keras.Model` (e.g. `keras_fmicl.text.SentenceEncoder`,
            run through `predict`), layer or callable mapping the
            preprocessor's dict to `(N, F)` features; for a trained
            `ContrastiveModel` pass its encoder, and its projector as
            `head` where the convention keeps it.
        tasks: dict task name -> `(sentences_a, sentences_b, gold_scores)`,
            e.g. `keras_fmicl.data.load_sts_tasks("SentEval/data")`.
        preprocessor: what turns a batch of strings into the encoder's
            input dict (a keras-hub preprocessor; see
            `keras_fmicl.data.sentence_dataset`).
        batch_size: sentences per forward pass.
        verbose: verbosity of `predict`.
        head: `None` (default), or a Keras layer applied to the encoder's
            features in inference mode before the cosines. SimCSE's
            conventions (`simcse/models.py`, `sentemb_forward`): the
            unsupervised model is evaluated without its MLP
            (`cls_before_pooler`: `head=None`), the supervised one with it
            (`cls`: `head=model.projector`).

    Returns:
        dict task name -> score, in the order of `tasks`, then
        `"average"` -> their mean (`STS_AVERAGE`).

    Example:

    ```python
    tasks = keras_fmicl.data.load_sts_tasks("SentEval/data")
    results = evaluate_sts(encoder, tasks, preprocessor)
    print(sts_table(results))
    ```
    """
    if not callable(encoder):
        raise ValueError(
            "`encoder` must be a Keras model, layer or callable mapping tokenized "
            f"sentences to features. Received: encoder={encoder!r:.80}"
        )
    batch_size = _check_positive_int("batch_size", batch_size)
    if head is not None:
        if not isinstance(head, keras.layers.Layer):
            raise ValueError(
                "`head` must be a Keras layer applied to the encoder's features "
                f"(e.g. a ContrastiveModel's projector) or None. Received: head={head!r:.80}"
            )
        encoder = _EncoderWithHead(encoder, head)
    if not isinstance(tasks, dict) or not tasks:
        raise ValueError(
            "`tasks` must be a non-empty dict of task name -> (sentences_a, "
            "sentences_b, gold_scores), e.g. keras_fmicl.data.load_sts_tasks(...). "
            f"Received: tasks={tasks!r:.80}"
        )
    if STS_AVERAGE in tasks:
        raise ValueError(
            f"`tasks` must not use the name {STS_AVERAGE!r}, the key of the "
            f"average. Received: tasks with keys {list(tasks)}"
        )
    results = {}
    for name, pairs in tasks.items():
        sentences_a, sentences_b, scores = _sts_task_pairs(name, pairs)
        if len(scores) < 2:
            raise ValueError(
                f"`tasks[{name!r}]` must hold at least 2 pairs. Received: {len(scores)}"
            )
        features = _embed_sentences(
            encoder, sentences_a + sentences_b, preprocessor, batch_size, verbose, name
        )
        count = len(sentences_a)
        try:
            results[name] = sts_correlation(features[:count], features[count:], scores)
        except ValueError as err:
            raise ValueError(f"STS task {name!r}: {err}") from None
    results[STS_AVERAGE] = float(np.mean(list(results.values())))
    return results


def sts_table(results: dict, digits: int = 2) -> str:
    """`evaluate_sts` results as a two-row Markdown table.

    Example:

    >>> print(sts_table({"STS12": 68.4, "STSBenchmark": 76.85, "average": 72.625}))
    | STS12 | STSBenchmark | average |
    |---|---|---|
    | 68.40 | 76.85 | 72.62 |
    """
    if not isinstance(results, dict) or not results:
        raise ValueError(f"`results` must be a non-empty dict. Received: results={results!r:.80}")
    _check_non_negative_int("digits", digits)
    names = [str(name) for name in results]
    values = [f"{float(value):.{digits}f}" for value in results.values()]
    return "\n".join(
        [
            "| " + " | ".join(names) + " |",
            "|" + "---|" * len(names),
            "| " + " | ".join(values) + " |",
        ]
    )
