"""Weighted k-nearest-neighbour classification and the `KNNMonitor` callback."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from keras_fmicl.evaluation.arrays import as_features
from keras_fmicl.evaluation.arrays import as_labels
from keras_fmicl.evaluation.arrays import check_finite
from keras_fmicl.evaluation.arrays import check_not_empty
from keras_fmicl.evaluation.arrays import check_positive_float
from keras_fmicl.evaluation.arrays import check_same_width
from keras_fmicl.evaluation.arrays import compact_labels
from keras_fmicl.evaluation.arrays import num_rows
from keras_fmicl.evaluation.arrays import resolve_num_classes
from keras_fmicl.evaluation.arrays import row_block
from keras_fmicl.evaluation.arrays import to_numpy
from keras_fmicl.evaluation.features import check_data
from keras_fmicl.evaluation.features import check_data_labels
from keras_fmicl.evaluation.features import extract_features
from keras_fmicl.losses.similarities import l2_normalize
from keras_fmicl.utils.checks import check_positive_integer

DEFAULT_KNN_K = 200

DEFAULT_KNN_TEMPERATURE = 0.1


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
    features. The votes go to the `C` distinct training labels (mapped onto
    `0..C-1` in their order, then back), so sparse labels such as
    `{0, 1, 10**6}` cost a 3-column vote, not `10**6 + 1` columns.

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
            weights normalised to sum to 1 per test point; column `c` is
            label `c`, zero for labels absent from `train_labels`).

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
    k = check_positive_integer("k", k)
    temperature = check_positive_float("temperature", temperature)
    batch_size = check_positive_integer("batch_size", batch_size)
    train = as_features(train_features, "train_features")
    num_train = check_not_empty(train, "train_features")
    labels = as_labels(train_labels, "train_labels", num_train)
    num_classes = resolve_num_classes(num_classes, train_labels=labels)
    classes, (labels,) = compact_labels(labels)
    test = as_features(test_features, "test_features")
    check_same_width(test, train)
    check_finite(train, "`train_features`")
    check_finite(test, "`test_features`")
    num_test = num_rows(test)
    k = min(k, num_train)

    bank = ops.transpose(l2_normalize(train))  # (F, N)
    test = l2_normalize(test)
    bank_labels = ops.convert_to_tensor(labels.astype(np.int32))
    scores = []
    for start in range(0, num_test, batch_size):
        rows = min(batch_size, num_test - start)
        queries = row_block(test, start, rows)
        similarity = ops.einsum("bf,fn->bn", queries, bank)  # (B, N)
        top_similarity, top_index = ops.top_k(similarity, k)  # sorted, descending
        # exp(s / T) up to a per-row factor exp(-s_max / T): the vote is unchanged
        # and no weight overflows, even for a tiny temperature.
        weights = ops.exp((top_similarity - top_similarity[:, :1]) / temperature)
        neighbour_labels = ops.take(bank_labels, top_index)  # (B, k)
        slots = ops.arange(rows, dtype="int32")[:, None] * classes.size + neighbour_labels
        votes = ops.segment_sum(
            ops.reshape(weights, (-1,)),
            ops.reshape(slots, (-1,)),
            num_segments=rows * classes.size,
        )
        scores.append(to_numpy(ops.reshape(votes, (rows, classes.size))))
    scores = np.concatenate(scores, axis=0) if scores else np.zeros((0, classes.size))
    scores = scores.astype(np.float64)
    predictions = classes[np.argmax(scores, axis=1)].astype(np.int64)
    if return_scores:
        shares = np.zeros((num_test, num_classes))
        shares[:, classes] = scores / np.sum(scores, axis=1, keepdims=True)
        return predictions, shares
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
        ValueError: as `knn_predict` (non-finite features, bad labels, empty
            sets), and for `test_labels` of another length than the test set.

    Example:

    >>> train = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> knn_accuracy(train, [0, 1], train, [0, 1], k=1)
    1.0

    Reference:
        Wu et al. "Unsupervised Feature Learning via Non-Parametric Instance
        Discrimination", CVPR 2018.
    """
    test_features = as_features(test_features, "test_features")
    num_test = check_not_empty(test_features, "test_features")
    test_labels = as_labels(test_labels, "test_labels", num_test)
    if num_classes is not None:
        num_classes = resolve_num_classes(num_classes, test_labels=test_labels)
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
        self.train_data = check_data(train_data, "train_data")
        self.test_data = check_data(test_data, "test_data")
        # Checked once here, not at the end of an epoch of training.
        self._train_labels = check_data_labels(*self.train_data, "train_data")
        self._test_labels = check_data_labels(*self.test_data, "test_data")
        self.every_n_epochs = check_positive_integer("every_n_epochs", every_n_epochs)
        self.k = check_positive_integer("k", k)
        self.temperature = check_positive_float("temperature", temperature)
        if feature_extractor is not None and not callable(feature_extractor):
            raise ValueError(
                "`feature_extractor` must be a Keras model or layer (or None). "
                f"Received: feature_extractor={feature_extractor!r}"
            )
        self.feature_extractor = feature_extractor
        self.batch_size = check_positive_integer("batch_size", batch_size)
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
        train_features, test_features = (
            extract_features(
                extractor, data[0], self.batch_size,
                subject=f"the encoder's features of the `{split}` images",
            )
            for split, data in (("train_data", self.train_data), ("test_data", self.test_data))
        )
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
