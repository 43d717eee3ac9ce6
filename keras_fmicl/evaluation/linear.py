"""Linear evaluation: the linear probe, few-label accuracy and the protocol that runs both."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from keras_fmicl.evaluation.arrays import as_features
from keras_fmicl.evaluation.arrays import as_labels
from keras_fmicl.evaluation.arrays import check_finite
from keras_fmicl.evaluation.arrays import check_not_empty
from keras_fmicl.evaluation.arrays import check_same_width
from keras_fmicl.evaluation.arrays import compact_labels
from keras_fmicl.evaluation.arrays import check_non_negative_float
from keras_fmicl.evaluation.arrays import check_non_negative_int
from keras_fmicl.evaluation.arrays import check_positive_float
from keras_fmicl.evaluation.arrays import resolve_num_classes
from keras_fmicl.evaluation.arrays import row_list
from keras_fmicl.evaluation.arrays import to_numpy
from keras_fmicl.evaluation.features import check_data
from keras_fmicl.evaluation.features import check_data_labels
from keras_fmicl.evaluation.features import extract_features
from keras_fmicl.utils.checks import check_positive_integer


def _probe_features(features: Any, argument: str) -> np.ndarray:
    """Non-empty, finite `(N, F)` float32 numpy features for the linear probe."""
    features = to_numpy(as_features(features, argument))
    check_not_empty(features, argument)
    check_finite(features, f"`{argument}`")
    single = features.astype(np.float32)
    overflow = np.flatnonzero(~np.all(np.isfinite(single), axis=-1))
    if overflow.size:
        raise ValueError(
            f"`{argument}` must fit in float32 (the probe's dtype); rows "
            f"{row_list(overflow)} ({overflow.size} of {features.shape[0]}) hold "
            f"values beyond 3.4e38. Received: {argument} of dtype {features.dtype}"
        )
    return single


def _standardize(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = train.mean(axis=0, keepdims=True)
    std = np.maximum(train.std(axis=0, keepdims=True), 1e-6)
    return (train - mean) / std, (test - mean) / std


DEFAULT_PROBE_STEPS = 1000
"""Optimisation steps of the linear probes when neither `steps` nor `epochs`
is given: the same number whatever the size of the training set, so a set
of 150 samples trains as long as one of 60,000 (100 epochs of a small set
in batches of 256 would be 100 steps, too few for Adam at 1e-3)."""


def _probe_schedule(epochs: Any, steps: Any) -> tuple[int | None, int | None]:
    """`(epochs, steps)` checked: at most one given; neither means
    `steps=DEFAULT_PROBE_STEPS`."""
    if epochs is not None and steps is not None:
        raise ValueError(
            "`epochs` and `steps` are two ways of giving the training length: "
            f"pass one of them. Received: epochs={epochs!r}, steps={steps!r}"
        )
    if epochs is not None:
        return check_positive_integer("epochs", epochs), None
    if steps is None:
        return None, DEFAULT_PROBE_STEPS
    return None, check_positive_integer("steps", steps)


class _ShuffledBatches(keras.utils.PyDataset):
    """`steps` batches of `(features, labels)` drawn from an endless stream
    of shuffled passes over the training set (pass `p` is the permutation
    of a numpy generator seeded with `(seed, p)`: random access, no state).
    Every batch holds `min(batch_size, N)` samples: one compiled shape."""

    def __init__(self, features, labels, batch_size: int, steps: int, seed: int):
        super().__init__()
        self.features, self.labels = features, labels
        self.batch_size = min(batch_size, len(labels))
        self.steps, self.seed = steps, seed

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int):
        count = len(self.labels)
        positions = np.arange(index * self.batch_size, (index + 1) * self.batch_size)
        passes = positions // count
        rows = np.empty_like(positions)
        for number in np.unique(passes):
            permutation = np.random.default_rng([self.seed, int(number)]).permutation(count)
            chosen = passes == number
            rows[chosen] = permutation[positions[chosen] % count]
        return self.features[rows], self.labels[rows]


def linear_probe_accuracy(
    train_features: Any,
    train_labels: Any,
    test_features: Any,
    test_labels: Any,
    num_classes: int | None = None,
    epochs: int | None = None,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    weight_decay: float = 0.0,
    standardize: bool = True,
    seed: int | None = None,
    verbose: int = 0,
    steps: int | None = None,
) -> dict[str, float]:
    """Accuracy of a linear softmax classifier trained on fixed features.

    A single `Dense(C)` layer is trained with softmax cross-entropy and
    Adam (decoupled weight decay on the kernel when `weight_decay > 0`,
    never on the bias). `C` is the number of distinct labels of the train
    and test sets: the labels are mapped onto `0..C-1` in their order
    (`np.unique`), so labels `{5, 10, 20}` train the same classifier as
    `{0, 1, 2}`, and labels already `0..C-1` are unchanged. With
    `standardize=True` every feature is first centred and scaled by the
    training-set mean and standard deviation (the test set uses the
    training statistics).

    The training length is `steps` optimisation steps, by default
    `DEFAULT_PROBE_STEPS` (1000) whatever the size of the set: batches of
    `min(batch_size, N)` samples from successive shuffled passes over the
    training set. Giving `epochs` instead trains that many passes (the last
    batch of each may be smaller), as `keras.Model.fit` does.

    Args:
        train_features: `(N, F)` training features.
        train_labels: `(N,)` integer training labels.
        test_features: `(M, F)` test features.
        test_labels: `(M,)` integer test labels.
        num_classes: an upper bound checked against the labels (every
            label must be below it), or `None`.
        epochs: training epochs, or `None` (the default) to train `steps`
            steps. Not with `steps`.
        batch_size: mini-batch size.
        learning_rate: Adam learning rate.
        weight_decay: decoupled weight decay of the kernel, `>= 0`.
        standardize: standardise features with training statistics.
        seed: seed of the classifier's initial weights and of the batch
            order (`None`: random).
        verbose: verbosity of `fit` (0 = silent).
        steps: optimisation steps; `None` for `DEFAULT_PROBE_STEPS` unless
            `epochs` is given.

    Returns:
        `{"train_accuracy": float, "test_accuracy": float}`, top-1.

    Raises:
        ValueError: for features holding NaN or +-Inf (the error names the
            argument and lists the offending rows: one bad row would
            otherwise drive every vote or the whole probe), for labels that
            are not non-negative integers (NaN, Inf, fractions, negatives)
            or not below `num_classes`, for empty sets (or features beyond
            float32), and for both `epochs` and `steps`, all before the
            classifier is built.

    Example:

    >>> x = np.random.normal(size=(64, 8)).astype("float32")
    >>> y = (x[:, 0] > 0).astype("int64")
    >>> linear_probe_accuracy(x, y, x, y)["train_accuracy"] > 0.9
    True
    """
    epochs, steps = _probe_schedule(epochs, steps)
    batch_size = check_positive_integer("batch_size", batch_size)
    learning_rate = check_positive_float("learning_rate", learning_rate)
    weight_decay = check_non_negative_float("weight_decay", weight_decay)
    if seed is not None:
        seed = check_non_negative_int("seed", seed)
    train = _probe_features(train_features, "train_features")
    test = _probe_features(test_features, "test_features")
    check_same_width(test, train)
    train_labels = as_labels(train_labels, "train_labels", train.shape[0])
    test_labels = as_labels(test_labels, "test_labels", test.shape[0])
    resolve_num_classes(num_classes, train_labels=train_labels, test_labels=test_labels)
    classes, (train_labels, test_labels) = compact_labels(train_labels, test_labels)
    if standardize:
        train, test = _standardize(train, test)

    inputs = keras.Input(shape=(train.shape[1],), name="features")
    logits = keras.layers.Dense(
        classes.size,
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
        dtype="float32",
        name="linear_classifier",
    )(inputs)
    classifier = keras.Model(inputs, logits, name="linear_probe")
    optimizer = keras.optimizers.Adam(learning_rate=learning_rate, weight_decay=weight_decay or None)
    if weight_decay:
        optimizer.exclude_from_weight_decay(var_names=["bias"])
    classifier.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    if steps is None:
        classifier.fit(train, train_labels, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=verbose)
    else:
        order_seed = int(np.random.default_rng().integers(2**31)) if seed is None else seed
        batches = _ShuffledBatches(train, train_labels, batch_size, steps, order_seed)
        classifier.fit(batches, epochs=1, shuffle=False, verbose=verbose)

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
    labels = as_labels(labels, "labels")
    fraction = check_positive_float("fraction", fraction)
    if fraction > 1:
        raise ValueError(f"`fraction` must be in (0, 1]. Received: fraction={fraction}")
    seed = check_non_negative_int("seed", seed)
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
    epochs: int | None = None,
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
        epochs: training epochs of each classifier, or `None` (the
            default) for `steps` steps (`DEFAULT_PROBE_STEPS` unless given
            in `probe_kwargs`): a 1 % subset trains as long as the full set.
        seed: seed of the first subset and of the classifiers' weights.
        **probe_kwargs: other `linear_probe_accuracy` arguments (`steps`,
            `batch_size`, `learning_rate`, ...).

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
    draws = check_positive_integer("draws", draws)
    fraction = check_positive_float("fraction", fraction)
    if fraction > 1:
        raise ValueError(f"`fraction` must be in (0, 1]. Received: fraction={fraction}")
    seed = check_non_negative_int("seed", seed)
    _probe_schedule(epochs, probe_kwargs.get("steps"))
    # Every check runs on the full sets before the first draw: a bad row
    # outside the first subset must not pass unnoticed, and the rows named
    # in the errors are rows of the arrays the caller passed.
    train = _probe_features(train_features, "train_features")
    test = _probe_features(test_features, "test_features")
    train_labels = as_labels(train_labels, "train_labels", train.shape[0])
    test_labels = as_labels(test_labels, "test_labels", test.shape[0])
    num_classes = resolve_num_classes(
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


def linear_evaluation(
    encoder: Any,
    train_data: tuple[Any, Any],
    test_data: tuple[Any, Any],
    num_classes: int | None = None,
    epochs: int | None = None,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    weight_decay: float = 0.0,
    standardize: bool = True,
    feature_batch_size: int = 256,
    seed: int | None = None,
    verbose: int = 0,
    steps: int | None = None,
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
        epochs: training epochs of the classifier, or `None` (the default)
            for `steps` steps. Not with `steps`.
        batch_size: mini-batch size of the classifier.
        learning_rate: Adam learning rate.
        weight_decay: decoupled weight decay of the classifier's kernel.
        standardize: standardise features with training statistics.
        feature_batch_size: batch size of the encoder's forward passes.
        seed: seed of the classifier's initial weights.
        verbose: verbosity of `fit` (0 = silent).
        steps: optimisation steps of the classifier; `None` for
            `DEFAULT_PROBE_STEPS` (1000) unless `epochs` is given.

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
    train_images, train_labels = check_data(train_data, "train_data")
    test_images, test_labels = check_data(test_data, "test_data")
    train_labels = check_data_labels(train_images, train_labels, "train_data")
    test_labels = check_data_labels(test_images, test_labels, "test_data")
    num_classes = resolve_num_classes(
        num_classes, **{"train_data[1]": train_labels, "test_data[1]": test_labels}
    )
    _probe_schedule(epochs, steps)
    for name, value, check in (
        ("batch_size", batch_size, check_positive_integer),
        ("feature_batch_size", feature_batch_size, check_positive_integer),
        ("learning_rate", learning_rate, check_positive_float),
        ("weight_decay", weight_decay, check_non_negative_float),
    ):
        check(name, value)
    if seed is not None:
        check_non_negative_int("seed", seed)
    train_features, test_features = (
        extract_features(
            encoder, images, batch_size=feature_batch_size,
            subject=f"the encoder's features of the `{split}` images",
        )
        for split, images in (("train_data", train_images), ("test_data", test_images))
    )
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
        steps=steps,
    )
