"""keras_fmicl.evaluation.linear: the probes' default training length and
their label mapping (small sets, sparse labels)."""

import numpy as np
import pytest

from keras_fmicl import evaluation
from keras_fmicl.evaluation import linear


def separable_split(labels=(0, 1, 2), per_class=50, test_per_class=30, seed=0):
    """Three Gaussian clusters far apart in 16 dimensions (kNN accuracy 1)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(len(labels), 16)) * 3.0
    index = np.repeat(np.arange(len(labels)), per_class)
    test_index = np.repeat(np.arange(len(labels)), test_per_class)
    train = (centers[index] + rng.normal(size=(index.size, 16))).astype("float32")
    test = (centers[test_index] + rng.normal(size=(test_index.size, 16))).astype("float32")
    labels = np.asarray(labels)
    return train, labels[index], test, labels[test_index]


def test_small_separable_set_trains_at_the_defaults():
    """150 samples: 100 epochs in batches of 256 were 100 Adam steps (test
    accuracy 0.37-0.63); the default is DEFAULT_PROBE_STEPS steps."""
    train, train_labels, test, test_labels = separable_split()
    assert evaluation.knn_accuracy(train, train_labels, test, test_labels) == 1.0
    assert linear.DEFAULT_PROBE_STEPS == 1000
    result = evaluation.linear_probe_accuracy(train, train_labels, test, test_labels, seed=0)
    assert result["test_accuracy"] >= 0.9, result
    few = evaluation.few_label_accuracy(
        train, train_labels, test, test_labels, 0.5, draws=1, seed=0
    )
    assert few["labels_per_draw"] == [75] and few["mean"] >= 0.9, few


def test_sparse_labels_give_the_accuracy_of_their_dense_remap():
    """Labels {5, 10, 20} train the classifier of {0, 1, 2} (same seed, same
    batches): the same accuracies to the bit. Few steps, so that a different
    classifier (21 outputs, another Glorot range) would show."""
    train, dense_train, test, dense_test = separable_split(per_class=20, test_per_class=10)
    sparse = np.array([5, 10, 20])
    probe = dict(steps=3, batch_size=16, seed=1)
    dense_result = evaluation.linear_probe_accuracy(train, dense_train, test, dense_test, **probe)
    sparse_result = evaluation.linear_probe_accuracy(
        train, sparse[dense_train], test, sparse[dense_test], **probe
    )
    assert sparse_result == dense_result
    huge = np.array([0, 1, 10**6])
    assert evaluation.few_label_accuracy(
        train, huge[dense_train], test, huge[dense_test], 0.5, draws=1, **probe
    ) == evaluation.few_label_accuracy(train, dense_train, test, dense_test, 0.5, draws=1, **probe)


def test_dense_labels_and_num_classes_are_unchanged():
    """Labels 0..C-1 map to themselves; `num_classes` still bounds them."""
    train, train_labels, test, test_labels = separable_split(per_class=20, test_per_class=10)
    probe = dict(steps=3, batch_size=16, seed=2)
    with_bound = evaluation.linear_probe_accuracy(
        train, train_labels, test, test_labels, num_classes=3, **probe
    )
    assert with_bound == evaluation.linear_probe_accuracy(
        train, train_labels, test, test_labels, **probe
    )
    with pytest.raises(ValueError, match="`num_classes` must exceed every label"):
        evaluation.linear_probe_accuracy(train, train_labels * 5, test, test_labels, num_classes=3)


@pytest.mark.parametrize(
    "function", ["linear_probe_accuracy", "few_label_accuracy", "linear_evaluation"]
)
def test_epochs_and_steps_are_exclusive_and_checked(function):
    train, train_labels, test, test_labels = separable_split(per_class=4, test_per_class=2)
    if function == "linear_evaluation":
        def call(**kwargs):
            return evaluation.linear_evaluation(
                lambda x: x, (train, train_labels), (test, test_labels), **kwargs
            )
    elif function == "few_label_accuracy":
        def call(**kwargs):
            return evaluation.few_label_accuracy(
                train, train_labels, test, test_labels, 0.5, draws=1, **kwargs
            )
    else:
        def call(**kwargs):
            return evaluation.linear_probe_accuracy(train, train_labels, test, test_labels, **kwargs)
    with pytest.raises(ValueError, match="pass one of them. Received: epochs=2, steps=3"):
        call(epochs=2, steps=3)
    with pytest.raises(ValueError, match="`steps` must be a positive integer. Received: steps=0"):
        call(steps=0)
    with pytest.raises(ValueError, match="`epochs` must be a positive integer"):
        call(epochs=0)
