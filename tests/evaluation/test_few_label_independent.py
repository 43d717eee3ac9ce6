"""Evaluation on data whose right answer is known without the code under test.

Few-label accuracy and the linear probe: the features are one-dimensional
and the test points lie far outside the training points, so any linear
classifier that separates its training points gets a test accuracy fixed
by the data alone: 1 when the class-0 point it was trained on lies above
the class-1 point, 0 otherwise. Each draw's expected accuracy then
follows from the subset that `class_balanced_subset` (the documented draw
of `few_label_accuracy`: seeds `seed`, `seed + 1`, ...) gives that draw,
with no probe trained here.
`extract_features` of a dropout layer: the inputs themselves.
"""

import keras
import numpy as np
import pytest

from keras_fmicl import evaluation

# Class 0 far from the origin on both sides, class 1 near it: with one
# sample of each class, class 0 lies above class 1 exactly when its sample
# is positive.
TRAIN = np.array([3.0, 4.0, -3.0, -4.0, 0.5, -0.5, 1.0, -1.0], "float32")[:, None]
TRAIN_LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1])
TEST = np.array([[100.0], [-100.0]], "float32")
TEST_LABELS = np.array([0, 1])
FRACTION = 0.25  # one sample of each class per draw
# Eight large Adam steps (one a epoch: the sets fit in a batch) move each
# weight by about 4, more than the initial weights can hold against the
# data: a separating probe whatever its start.
PROBE = {"epochs": 8, "learning_rate": 0.5}


def _expected_accuracy(indices):
    x, y = TRAIN[indices, 0], TRAIN_LABELS[indices]
    assert sorted(y.tolist()) == [0, 1]
    return 1.0 if x[y == 0][0] > x[y == 1][0] else 0.0


def test_each_few_label_draw_is_a_probe_on_its_own_subset():
    draws, seed = 2, 0
    result = evaluation.few_label_accuracy(
        TRAIN, TRAIN_LABELS, TEST, TEST_LABELS, FRACTION, draws=draws, seed=seed, **PROBE
    )
    subsets = [evaluation.class_balanced_subset(TRAIN_LABELS, FRACTION, seed=seed + d) for d in range(draws)]
    expected = [_expected_accuracy(indices) for indices in subsets]
    # the draws must differ for the test to tell them apart
    assert len(set(expected)) > 1, expected
    assert result["accuracies"] == expected
    assert result["labels_per_draw"] == [2] * draws
    assert result["mean"] == pytest.approx(np.mean(expected))
    assert result["fraction"] == FRACTION


def test_the_probe_standardises_both_sets_with_the_training_statistics():
    """Classes 0.1 apart at an offset of 1000: only standardised can a few
    steps separate them. The test points are of one class only: centred on
    their own mean they would straddle the boundary; with the training mean
    and spread they all lie on their class's side."""
    rng = np.random.default_rng(0)
    train_labels = np.repeat([0, 1], 20)
    train = (1000.0 + 0.1 * train_labels + rng.normal(scale=0.005, size=40)).astype("float32")[:, None]
    test = (1000.1 + rng.normal(scale=0.02, size=(30, 1))).astype("float32")
    result = evaluation.linear_probe_accuracy(
        train, train_labels, test, np.ones(30, "int64"), num_classes=2, seed=0, **PROBE
    )
    assert result["train_accuracy"] == 1.0
    assert result["test_accuracy"] >= 0.9


def test_extract_features_runs_a_layer_in_inference_mode():
    """A dropout layer is the identity in inference: the features are the inputs."""
    x = np.random.default_rng(1).normal(size=(7, 5)).astype("float32")
    features = evaluation.extract_features(keras.layers.Dropout(0.5, seed=1), x, batch_size=3)
    np.testing.assert_array_equal(features, x)
