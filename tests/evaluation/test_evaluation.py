"""Tests of keras_fmicl.evaluation: kNN, linear probe, alignment/uniformity, KNNMonitor."""

import functools
import glob
import math
import os
import re

import keras
import numpy as np
import pytest

from keras_fmicl import evaluation
from tests.helpers import to_numpy
from tests.helpers import traced
from tests.helpers import value_and_grad


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


# --------------------------------------------------------------------------
# numpy references
# --------------------------------------------------------------------------


def numpy_knn_scores(train, train_labels, test, k, temperature, num_classes):
    """Weighted kNN vote shares, float64, one test point at a time."""
    train = np.asarray(train, np.float64)
    test = np.asarray(test, np.float64)
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    k = min(k, len(train))
    scores = np.zeros((len(test), num_classes))
    for i, query in enumerate(test):
        similarity = train @ query
        nearest = np.argsort(-similarity, kind="stable")[:k]
        for j in nearest:
            scores[i, train_labels[j]] += math.exp(similarity[j] / temperature)
    return scores / scores.sum(axis=1, keepdims=True)


def numpy_alignment(x, y, alpha):
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = y / np.linalg.norm(y, axis=1, keepdims=True)
    return np.mean(np.linalg.norm(x - y, axis=1) ** alpha)


def numpy_uniformity(x, t):
    """log mean over i != j of exp(-t ||x^_i - x^_j||^2), explicit pairs."""
    x = np.asarray(x, np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    values = []
    for i in range(len(x)):
        for j in range(len(x)):
            if i != j:
                values.append(-t * np.sum((x[i] - x[j]) ** 2))
    values = np.array(values)
    top = values.max()
    return top + np.log(np.mean(np.exp(values - top)))


# --------------------------------------------------------------------------
# kNN
# --------------------------------------------------------------------------


def test_knn_hand_checked_vote_and_temperature():
    # Query q = (1, 0.2). Class 0: (1, 0). Class 1: (0, 1) and (1, 1).
    train = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = np.array([0, 1, 1])
    query = np.array([[1.0, 0.2]])
    norm_q = math.sqrt(1.0 + 0.04)
    cos = [1.0 / norm_q, 0.2 / norm_q, 1.2 / (norm_q * math.sqrt(2.0))]
    for temperature in (0.5, 1.0):
        w = [math.exp(c / temperature) for c in cos]
        class0, class1 = w[0], w[1] + w[2]
        expected_label = 0 if class0 > class1 else 1
        predictions, scores = evaluation.knn_predict(
            train, labels, query, k=3, temperature=temperature, return_scores=True
        )
        assert predictions.tolist() == [expected_label]
        np.testing.assert_allclose(
            scores[0], [class0 / (class0 + class1), class1 / (class0 + class1)], rtol=1e-5
        )
    # By hand: T=0.5 -> 7.11 vs 1.48 + 5.28 = 6.76 (class 0);
    #          T=1.0 -> 2.67 vs 1.22 + 2.30 = 3.52 (class 1).
    assert evaluation.knn_predict(train, labels, query, k=3, temperature=0.5).tolist() == [0]
    assert evaluation.knn_predict(train, labels, query, k=3, temperature=1.0).tolist() == [1]
    # With k=2 the far point (0, 1) drops out: 7.11 vs 5.28 -> class 0 at T=1 too
    assert evaluation.knn_predict(train, labels, query, k=2, temperature=1.0).tolist() == [0]


def _random_knn_data(seed):
    """One shape for all random kNN cases (JAX compiles once per shape)."""
    rng = np.random.default_rng(seed)
    train = rng.normal(size=(64, 8)).astype("float32")
    labels = rng.integers(0, 4, size=64)
    test = rng.normal(size=(24, 8)).astype("float32")
    test_labels = rng.integers(0, 4, size=24)
    return train, labels, test, test_labels


def _normalize_rows(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_knn_k1_is_nearest_neighbour():
    train, labels, test, _ = _random_knn_data(0)
    cosine = _normalize_rows(test) @ _normalize_rows(train).T
    expected = labels[np.argmax(cosine, axis=1)]
    predictions = evaluation.knn_predict(train, labels, test, k=1, batch_size=8)
    np.testing.assert_array_equal(predictions, expected)


def test_knn_k_larger_than_train_set_is_clipped():
    train, labels, test, _ = _random_knn_data(1)
    big, big_scores = evaluation.knn_predict(train, labels, test, k=1000, return_scores=True)
    full, full_scores = evaluation.knn_predict(train, labels, test, k=64, return_scores=True)
    np.testing.assert_array_equal(big, full)
    np.testing.assert_allclose(big_scores, full_scores, rtol=1e-6)
    expected = numpy_knn_scores(train, labels, test, 64, 0.1, 4)
    np.testing.assert_allclose(big_scores, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("first_label", [0, 1])
def test_knn_class_tie_goes_to_smallest_label(first_label):
    # The query is equally similar to both training points: a 50/50 vote.
    train = np.array([[1.0, 0.0], [0.0, 1.0]])
    labels = np.array([first_label, 1 - first_label])
    predictions, scores = evaluation.knn_predict(
        train, labels, np.array([[1.0, 1.0]]), k=2, return_scores=True
    )
    assert predictions.tolist() == [0]
    np.testing.assert_allclose(scores, [[0.5, 0.5]], rtol=1e-6)


def test_knn_tiny_temperature_does_not_overflow():
    # exp(s / 1e-3) overflows for s > 0.09 in float32; the vote must not.
    train, labels, test, _ = _random_knn_data(2)
    predictions, scores = evaluation.knn_predict(
        train, labels, test, k=8, temperature=1e-3, return_scores=True
    )
    assert np.all(np.isfinite(scores))
    nearest = evaluation.knn_predict(train, labels, test, k=1, batch_size=8)
    np.testing.assert_array_equal(predictions, nearest)


@pytest.mark.parametrize("k,temperature,batch_size", [(1, 0.1, 1024), (8, 0.07, 8), (30, 0.5, 8)])
def test_knn_matches_numpy_reference(k, temperature, batch_size):
    train, labels, test, test_labels = _random_knn_data(k)
    expected_scores = numpy_knn_scores(train, labels, test, k, temperature, 4)
    predictions, scores = evaluation.knn_predict(
        train, labels, test, k=k, temperature=temperature, batch_size=batch_size, return_scores=True
    )
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-3, atol=1e-5)
    # Predictions agree wherever the reference vote is not a near tie.
    ordered = np.sort(expected_scores, axis=1)
    clear = ordered[:, -1] - ordered[:, -2] > 1e-4
    assert clear.mean() > 0.9
    expected = np.argmax(expected_scores, axis=1)
    np.testing.assert_array_equal(predictions[clear], expected[clear])
    accuracy = evaluation.knn_accuracy(
        train, labels, test, test_labels, k=k, temperature=temperature, batch_size=batch_size
    )
    assert accuracy == pytest.approx(np.mean(predictions == test_labels))


def test_knn_accuracy_on_clusters_and_tensor_inputs():
    rng = np.random.default_rng(3)
    centers = 5.0 * np.eye(4, 8)
    labels = rng.integers(0, 4, size=88)
    features = centers[labels] + rng.normal(size=(88, 8))
    train = keras.ops.convert_to_tensor(features[:64].astype("float32"))
    test = keras.ops.convert_to_tensor(features[64:].astype("float32"))
    train_labels = keras.ops.convert_to_tensor(labels[:64, None].astype("int32"))  # (N, 1)
    accuracy = evaluation.knn_accuracy(train, train_labels, test, labels[64:], k=8)
    assert accuracy > 0.95
    shuffled = rng.permutation(labels[:64])
    chance = evaluation.knn_accuracy(train, shuffled, test, labels[64:], k=8)
    assert chance < accuracy


@pytest.mark.parametrize(
    "kwargs,argument",
    [
        ({"k": 0}, "k"),
        ({"k": 2.5}, "k"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"batch_size": 0}, "batch_size"),
        ({"num_classes": 2}, "num_classes"),
        ({"train_labels": np.array([0, 1, 2])}, "train_labels"),
        ({"train_labels": np.array([0, -1, 2, 1])}, "train_labels"),
        ({"train_labels": np.array([0.5, 1, 2, 1])}, "train_labels"),
        ({"test_labels": np.array([0, 1])}, "test_labels"),
        ({"test_features": np.ones((3, 5))}, "test_features"),
        ({"test_features": np.ones((0, 3)), "test_labels": np.zeros(0)}, "test_features"),
        ({"train_features": np.ones((4, 2, 2))}, "train_features"),
        ({"train_features": np.ones((4, 0)), "test_features": np.ones((3, 0))}, "test_features"),
    ],
)
def test_knn_bad_arguments(kwargs, argument):
    arguments = dict(
        train_features=np.eye(4)[:, :3] + 0.1,
        train_labels=np.array([0, 1, 2, 1]),
        test_features=np.ones((3, 3)),
        test_labels=np.array([0, 1, 2]),
    )
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=f"`{argument}`"):
        evaluation.knn_accuracy(**arguments)


# --------------------------------------------------------------------------
# Linear probe
# --------------------------------------------------------------------------


def _clusters(rng, num_samples, num_classes=3, dim=8, separation=6.0):
    labels = rng.integers(0, num_classes, size=num_samples)
    centers = separation * np.eye(num_classes, dim)
    features = centers[labels] + rng.normal(size=(num_samples, dim))
    return features.astype("float32"), labels


def test_linear_probe_separable_features():
    rng = np.random.default_rng(4)
    x_train, y_train = _clusters(rng, 300)
    x_test, y_test = _clusters(rng, 200)
    # Far from the origin and badly scaled: standardisation handles it.
    x_train, x_test = 50.0 * x_train + 300.0, 50.0 * x_test + 300.0
    result = evaluation.linear_probe_accuracy(
        x_train, y_train, x_test, y_test, epochs=6, batch_size=100, learning_rate=0.1, seed=0
    )
    assert set(result) == {"train_accuracy", "test_accuracy"}
    assert result["train_accuracy"] > 0.95
    assert result["test_accuracy"] > 0.95


def test_linear_probe_random_labels_is_near_chance():
    rng = np.random.default_rng(5)
    num_classes = 4
    x_train = rng.normal(size=(400, 16)).astype("float32")
    x_test = rng.normal(size=(800, 16)).astype("float32")
    y_train = rng.integers(0, num_classes, size=400)
    y_test = rng.integers(0, num_classes, size=800)
    result = evaluation.linear_probe_accuracy(
        x_train, y_train, x_test, y_test, epochs=4, batch_size=200, learning_rate=0.05,
        weight_decay=1e-4, seed=0,
    )
    assert abs(result["test_accuracy"] - 1.0 / num_classes) < 0.08


def test_linear_evaluation_with_frozen_model_and_layer_encoders():
    rng = np.random.default_rng(6)
    features, labels = _clusters(rng, 240, num_classes=3, dim=16)
    images = features.reshape(-1, 4, 4, 1)
    # A Functional model whose frozen Dense layer is a fixed rotation of the pixels.
    rotation, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    inputs = keras.Input((4, 4, 1))
    dense = keras.layers.Dense(16, use_bias=False, name="rotation")
    model = keras.Model(inputs, dense(keras.layers.Flatten()(inputs)))
    dense.set_weights([rotation.astype("float32")])
    before = [w.copy() for w in model.get_weights()]
    for encoder in (model, keras.layers.Flatten()):
        result = evaluation.linear_evaluation(
            encoder,
            train_data=(images[:160], labels[:160]),
            test_data=(images[160:], labels[160:]),
            epochs=6,
            batch_size=80,
            learning_rate=0.1,
            feature_batch_size=50,
            seed=0,
        )
        assert result["test_accuracy"] > 0.95
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_extract_features_batches_layers_and_models_alike():
    rng = np.random.default_rng(7)
    images = rng.normal(size=(23, 3, 3, 2)).astype("float32")
    inputs = keras.Input((3, 3, 2))
    model = keras.Model(inputs, keras.layers.Flatten()(inputs))
    expected = images.reshape(23, -1)
    np.testing.assert_allclose(evaluation.extract_features(model, images, batch_size=5), expected)
    np.testing.assert_allclose(
        evaluation.extract_features(keras.layers.Flatten(), images, batch_size=5), expected
    )
    with pytest.raises(ValueError, match="`encoder`"):
        evaluation.extract_features(keras.layers.Identity(), images)  # rank-4 output


@pytest.mark.parametrize(
    "kwargs,argument",
    [
        ({"epochs": 0}, "epochs"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"batch_size": 0}, "batch_size"),
        ({"test_features": np.ones((5, 3))}, "test_features"),
        ({"train_labels": np.zeros(9)}, "train_labels"),
    ],
)
def test_linear_probe_bad_arguments(kwargs, argument):
    arguments = dict(
        train_features=np.ones((10, 4)),
        train_labels=np.zeros(10),
        test_features=np.ones((5, 4)),
        test_labels=np.zeros(5),
    )
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=f"`{argument}`"):
        evaluation.linear_probe_accuracy(**arguments)


def test_linear_evaluation_bad_data():
    with pytest.raises(ValueError, match="`train_data`"):
        evaluation.linear_evaluation(
            keras.layers.Flatten(), np.ones((4, 2)), (np.ones((4, 2)), [0] * 4)
        )


# --------------------------------------------------------------------------
# Alignment and uniformity
# --------------------------------------------------------------------------

# --------------------------------------------------------------------------
# Few-label probes
# --------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5])
def test_class_balanced_subset_is_balanced_and_deterministic(fraction):
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat(np.arange(10), 300))  # 3000 labels, 300 per class
    indices = evaluation.class_balanced_subset(labels, fraction, seed=3)
    per_class = round(fraction * 300)
    assert np.bincount(labels[indices], minlength=10).tolist() == [per_class] * 10
    assert np.unique(indices).size == indices.size and np.all(np.diff(indices) > 0)
    np.testing.assert_array_equal(indices, evaluation.class_balanced_subset(labels, fraction, seed=3))
    other = evaluation.class_balanced_subset(labels, fraction, seed=4)
    assert not np.array_equal(indices, other)


def test_class_balanced_subset_small_class_and_at_least_one_each():
    labels = np.array([0] * 50 + [1] * 50 + [2] * 2)
    indices = evaluation.class_balanced_subset(labels, 0.3, seed=0)  # 10 per class wanted
    assert np.bincount(labels[indices]).tolist() == [10, 10, 2]
    indices = evaluation.class_balanced_subset(labels, 0.001, seed=0)
    assert np.bincount(labels[indices]).tolist() == [1, 1, 1]


@pytest.mark.parametrize(
    "kwargs, argument",
    [({"fraction": 0.0}, "fraction"), ({"fraction": 1.5}, "fraction"), ({"seed": -1}, "seed"),
     ({"labels": np.array([0.5, 1.0])}, "labels")],
)
def test_class_balanced_subset_bad_arguments(kwargs, argument):
    arguments = {"labels": np.arange(4) % 2, "fraction": 0.5, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=argument):
        evaluation.class_balanced_subset(**arguments)


def test_few_label_accuracy_draws_subsets_and_averages():
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(4, 8)) * 4
    train_labels = np.repeat(np.arange(4), 100)
    test_labels = np.repeat(np.arange(4), 25)
    train = (centers[train_labels] + rng.normal(size=(400, 8))).astype("float32")
    test = (centers[test_labels] + rng.normal(size=(100, 8))).astype("float32")
    result = evaluation.few_label_accuracy(
        train, train_labels, test, test_labels, 0.1, draws=2, epochs=60, learning_rate=0.05
    )
    assert result["labels_per_draw"] == [40, 40]
    assert len(result["accuracies"]) == 2
    assert result["mean"] == pytest.approx(np.mean(result["accuracies"]))
    assert result["mean"] > 0.9  # well-separated clusters: a few labels suffice
    with pytest.raises(ValueError, match="train_labels"):
        evaluation.few_label_accuracy(train, train_labels[:10], test, test_labels, 0.1)



@pytest.mark.parametrize("alpha", [1.0, 2.0, 3.0])
def test_alignment_matches_numpy_float64(float64, alpha):
    rng = np.random.default_rng(8)
    x = rng.normal(size=(13, 6))
    y = x + 0.3 * rng.normal(size=(13, 6))
    value = evaluation.alignment(x, y, alpha=alpha)
    expected = numpy_alignment(x, y, alpha)
    tolerance = 1e-12 if keras.backend.standardize_dtype(value.dtype) == "float64" else 1e-5
    np.testing.assert_allclose(to_numpy(value), expected, rtol=tolerance)


@pytest.mark.parametrize("batch_size", [4, 1024])
def test_uniformity_matches_numpy_float64(float64, batch_size):
    rng = np.random.default_rng(9)
    x = rng.normal(size=(11, 5))
    for t in (0.5, 2.0, 7.0):
        value = evaluation.uniformity(x, t=t, batch_size=batch_size)
        expected = numpy_uniformity(x, t)
        tolerance = 1e-10 if keras.backend.standardize_dtype(value.dtype) == "float64" else 1e-5
        np.testing.assert_allclose(to_numpy(value), expected, rtol=tolerance)


@pytest.mark.parametrize("alpha", [1.0, 2.0, 3.0])
def test_alignment_known_values(alpha):
    rng = np.random.default_rng(11)
    x = rng.normal(size=(7, 4)).astype("float32")
    assert float(evaluation.alignment(x, 3.0 * x, alpha=alpha)) == pytest.approx(0.0, abs=1e-6)
    assert float(evaluation.alignment(x, -x, alpha=alpha)) == pytest.approx(2.0**alpha, rel=1e-5)


# Four points in R^4 each (one shape: JAX compiles once).
_E1 = [1.0, 0.0, 0.0, 0.0]
_MINUS_E1 = [-1.0, 0.0, 0.0, 0.0]


def test_uniformity_known_values():
    for t in (1.0, 2.0):
        same = np.tile([[0.6, 0.8, 0.0, 0.0]], (4, 1))
        assert float(evaluation.uniformity(same, t=t)) == pytest.approx(0.0, abs=1e-6)
        orthonormal = 2.5 * np.eye(4)  # ||.||^2 = 2 between unit vectors
        assert float(evaluation.uniformity(orthonormal, t=t)) == pytest.approx(-2.0 * t, rel=1e-5)
        # Regular simplex of 4 points (in a 3-d subspace): cos = -1/3, ||.||^2 = 8/3.
        simplex = np.eye(4) - 0.25
        assert float(evaluation.uniformity(simplex, t=t)) == pytest.approx(-t * 8.0 / 3.0, rel=1e-5)
        # Two antipodal pairs: of the 12 ordered pairs, 4 coincide (distance 0)
        # and 8 are antipodal (||.||^2 = 4).
        pairs = np.array([_E1, _MINUS_E1, _E1, _MINUS_E1])
        expected = math.log((4.0 + 8.0 * math.exp(-4.0 * t)) / 12.0)
        assert float(evaluation.uniformity(pairs, t=t)) == pytest.approx(expected, rel=1e-5)


def test_uniformity_is_stable_for_large_t():
    # exp(-1000) underflows even in float64: a naive log(mean(exp)) gives -inf.
    value = float(evaluation.uniformity(np.eye(4, dtype="float32"), t=500.0))
    assert value == pytest.approx(-1000.0, rel=1e-5)
    pairs = np.array([_E1, _MINUS_E1, _E1, _MINUS_E1], dtype="float32")
    # log((4 + 8 e^{-1200}) / 12) = log(1/3)
    value = float(evaluation.uniformity(pairs, t=300.0))
    assert value == pytest.approx(math.log(1.0 / 3.0), rel=1e-5)


def test_uniformity_gradient_matches_finite_differences(float64):
    rng = np.random.default_rng(12)
    x = rng.normal(size=(5, 3))
    value, (grad,) = value_and_grad(lambda z: evaluation.uniformity(z, batch_size=3), x)
    assert np.all(np.isfinite(grad))
    if keras.backend.standardize_dtype(keras.ops.convert_to_tensor(x).dtype) != "float64":
        pytest.skip("float64 unavailable")
    eps = 1e-6
    numeric = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[index] = eps
        forward, backward = numpy_uniformity(x + step, 2.0), numpy_uniformity(x - step, 2.0)
        numeric[index] = (forward - backward) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "call,argument",
    [
        (lambda: evaluation.alignment(np.ones((3, 2)), np.ones((4, 2))), "x"),
        (lambda: evaluation.alignment(np.ones((3, 2)), np.ones((3, 2)), alpha=0.0), "alpha"),
        (lambda: evaluation.uniformity(np.ones((1, 2))), "x"),
        (lambda: evaluation.uniformity(np.ones((3, 2)), t=-1.0), "t"),
        (lambda: evaluation.uniformity(np.ones((3, 2)), batch_size=0), "batch_size"),
        (lambda: evaluation.uniformity(np.ones((3,))), "x"),
        (lambda: evaluation.uniformity(np.ones((3, 0))), "x"),
        (lambda: evaluation.alignment(np.ones((3, 0)), np.ones((3, 0))), "x"),
    ],
)
def test_alignment_uniformity_bad_arguments(call, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        call()


# --------------------------------------------------------------------------
# KNNMonitor
# --------------------------------------------------------------------------


class _EncoderWithHead(keras.Model):
    """Encoder: a Functional model, frozen identity on 4-d inputs (run by
    `predict` inside `fit`). Head: zeros (useless features)."""

    def __init__(self):
        super().__init__(name="encoder_with_head")
        inputs = keras.Input((4,))
        identity = keras.layers.Dense(
            4, use_bias=False, kernel_initializer="identity", trainable=False
        )
        self.encoder = keras.Model(inputs, identity(inputs), name="encoder")
        self.head = keras.layers.Dense(2, kernel_initializer="zeros", name="head")

    def call(self, x):
        return self.head(self.encoder(x))


def _monitor_data(rng):
    labels = np.tile([0, 1], 30)
    features = (5.0 * np.eye(4)[labels] + rng.normal(size=(60, 4))).astype("float32")
    return (features[:40], labels[:40]), (features[40:], labels[40:])


def _fit(model, callbacks, epochs, rng):
    x = rng.normal(size=(32, 4)).astype("float32")
    y = np.zeros((32, 2), "float32")
    model.compile(optimizer="sgd", loss="mse")
    return model.fit(x, y, batch_size=16, epochs=epochs, callbacks=callbacks, verbose=0)


def test_knn_monitor_history_on_the_right_epochs():
    rng = np.random.default_rng(13)
    train_data, test_data = _monitor_data(rng)
    monitor = evaluation.KNNMonitor(train_data, test_data, every_n_epochs=2, k=10)
    history = _fit(_EncoderWithHead(), [monitor], epochs=5, rng=rng)
    # every 2nd epoch (indices 1, 3) and the last one (4)
    assert sorted(monitor.results) == [1, 3, 4]
    assert history.history["knn_accuracy"] == [monitor.results[e] for e in (1, 3, 4)]
    # the default extractor is model.encoder (the identity): clusters -> 1.0;
    # the model's own output is all zeros, whose vote is a 50/50 tie.
    assert monitor.results[4] == 1.0
    on_model = evaluation.KNNMonitor(train_data, test_data, feature_extractor=None, k=10)
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, kernel_initializer="zeros")])
    _fit(plain, [on_model], epochs=1, rng=rng)
    assert on_model.results == {0: 0.5}


class _TrainableEncoder(keras.Model):
    def __init__(self):
        super().__init__(name="trainable_encoder")
        inputs = keras.Input((4,))
        projection = keras.layers.Dense(4, use_bias=False, kernel_initializer="zeros")
        self.encoder = keras.Model(inputs, projection(inputs), name="encoder")

    def call(self, x):
        return self.encoder(x)


def test_knn_monitor_sees_the_current_weights():
    # Zero kernel: all features 0, a 50/50 vote (accuracy 0.5). One epoch of
    # regression onto the inputs makes the kernel ~ c x^T x, and the clusters
    # separate. A monitor reading stale weights (e.g. JAX state not synced)
    # would still report 0.5.
    rng = np.random.default_rng(16)
    train_data, test_data = _monitor_data(rng)
    model = _TrainableEncoder()
    monitor = evaluation.KNNMonitor(train_data, test_data, k=10)
    x = train_data[0]
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    model.fit(x, x, batch_size=20, epochs=1, callbacks=[monitor], verbose=0)
    assert monitor.results[0] > 0.9
    untrained = _TrainableEncoder().encoder
    fresh = evaluation.KNNMonitor(train_data, test_data, k=10, feature_extractor=untrained)
    assert fresh.evaluate() == 0.5


def test_knn_monitor_explicit_extractor_and_name():
    rng = np.random.default_rng(14)
    train_data, test_data = _monitor_data(rng)
    model = _EncoderWithHead()
    monitor = evaluation.KNNMonitor(
        train_data, test_data, feature_extractor=keras.layers.Identity(), k=5, name="val_knn"
    )
    history = _fit(model, [monitor], epochs=2, rng=rng)
    assert history.history["val_knn"] == [1.0, 1.0]
    assert "knn_accuracy" not in history.history


def _read_scalars(log_dir, tag):
    tf = pytest.importorskip("tensorflow")
    pytest.importorskip("tensorboard")
    values = {}
    for path in glob.glob(os.path.join(log_dir, "**", "events.out.tfevents.*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == tag:
                    values[event.step] = float(tf.make_ndarray(value.tensor))
    return values


def test_knn_monitor_written_by_tensorboard_after_it(tmp_path):
    # keras.callbacks.TensorBoard needs tensorflow and tensorboard, on every backend
    pytest.importorskip("tensorflow")
    pytest.importorskip("tensorboard")
    rng = np.random.default_rng(15)
    train_data, test_data = _monitor_data(rng)
    monitor = evaluation.KNNMonitor(train_data, test_data, every_n_epochs=2, k=10)
    after = str(tmp_path / "after")
    before = str(tmp_path / "before")
    callbacks = [
        keras.callbacks.TensorBoard(before),  # before the monitor: never sees the key
        monitor,
        keras.callbacks.TensorBoard(after),
    ]
    _fit(_EncoderWithHead(), callbacks, epochs=3, rng=rng)
    written = _read_scalars(after, "epoch_knn_accuracy")
    assert written == pytest.approx({1: monitor.results[1], 2: monitor.results[2]})
    assert sorted(written) == [1, 2]
    assert _read_scalars(before, "epoch_knn_accuracy") == {}
    assert _read_scalars(after, "epoch_loss")  # the usual scalars are there too


@pytest.mark.parametrize(
    "kwargs,argument",
    [
        ({"every_n_epochs": 0}, "every_n_epochs"),
        ({"k": -1}, "k"),
        ({"temperature": 0}, "temperature"),
        ({"train_data": np.ones((3, 2))}, "train_data"),
        ({"feature_extractor": 3}, "feature_extractor"),
        ({"name": ""}, "name"),
    ],
)
def test_knn_monitor_bad_arguments(kwargs, argument):
    arguments = dict(train_data=(np.ones((3, 2)), [0, 1, 0]), test_data=(np.ones((2, 2)), [0, 1]))
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=f"`{argument}`"):
        evaluation.KNNMonitor(**arguments)


def _leaky_data():
    """2-d features whose nearest training point always has the wrong class.

    Test point i sits at angle i * 45 degrees with label i % 2; the training
    point at i * 45 + 3 degrees carries label 1 - i % 2. A kNN with k=1
    therefore scores 0.0 -- but 1.0 if the test points (with their labels)
    leaked into the memory bank, since each would then match itself.
    """
    angles = np.deg2rad(45.0 * np.arange(8))
    test = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype("float32")
    train = np.stack([np.cos(angles + 0.05), np.sin(angles + 0.05)], axis=1).astype("float32")
    test_labels = np.arange(8) % 2
    return (train, 1 - test_labels), (test, test_labels)


@pytest.mark.parametrize("k", [1, 3])
def test_knn_monitor_memory_bank_is_the_training_set_only(k):
    train_data, test_data = _leaky_data()
    extractor = keras.layers.Identity()
    monitor = evaluation.KNNMonitor(train_data, test_data, k=k, feature_extractor=extractor)
    logs = {}
    monitor.on_epoch_end(0, logs)  # the path `fit` takes (see the tests above)
    independent = evaluation.knn_accuracy(
        evaluation.extract_features(extractor, train_data[0]), train_data[1],
        evaluation.extract_features(extractor, test_data[0]), test_data[1],
        k=k, temperature=evaluation.DEFAULT_KNN_TEMPERATURE,
    )
    assert monitor.results == {0: independent}
    assert logs == {"knn_accuracy": independent}
    assert monitor.evaluate() == independent
    if k == 1:
        assert independent == 0.0  # a leak would give 1.0


# --------------------------------------------------------------------------
# Robustness: non-finite features, bad labels, empty sets
# --------------------------------------------------------------------------

_NON_FINITE = [float("nan"), float("inf"), float("-inf")]
_BAD_ROWS = [1, 4]  # rows of the training set (12 rows) or of the test set (6 rows)


def _small_split(seed=0):
    """12 training and 6 test rows of two well-separated classes, 3 features."""
    rng = np.random.default_rng(seed)
    train_labels = np.arange(12) % 2
    test_labels = np.arange(6) % 2
    centers = np.array([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    train = (centers[train_labels] + rng.normal(size=(12, 3))).astype("float32")
    test = (centers[test_labels] + rng.normal(size=(6, 3))).astype("float32")
    return train, train_labels, test, test_labels


def _with_bad_rows(x, value, rows=_BAD_ROWS):
    x = np.array(x, dtype="float32")
    x[rows, 1] = value
    return x


def _feature_calls():
    """(name, argument, call(train, train_labels, test, test_labels))."""
    return [
        ("knn_predict", "train_features",
         lambda a, b, c, d: evaluation.knn_predict(a, b, c, k=3)),
        ("knn_predict", "test_features",
         lambda a, b, c, d: evaluation.knn_predict(a, b, c, k=3)),
        ("knn_accuracy", "train_features",
         lambda a, b, c, d: evaluation.knn_accuracy(a, b, c, d, k=3)),
        ("knn_accuracy", "test_features",
         lambda a, b, c, d: evaluation.knn_accuracy(a, b, c, d, k=3)),
        ("linear_probe_accuracy", "train_features",
         lambda a, b, c, d: evaluation.linear_probe_accuracy(a, b, c, d, epochs=1)),
        ("linear_probe_accuracy", "test_features",
         lambda a, b, c, d: evaluation.linear_probe_accuracy(a, b, c, d, epochs=1)),
        # 1 label per class: the draws would miss rows 1 and 4 of the training set
        ("few_label_accuracy", "train_features",
         lambda a, b, c, d: evaluation.few_label_accuracy(a, b, c, d, 0.1, draws=1, epochs=1)),
        ("few_label_accuracy", "test_features",
         lambda a, b, c, d: evaluation.few_label_accuracy(a, b, c, d, 0.1, draws=1, epochs=1)),
        ("alignment", "x", lambda a, b, c, d: evaluation.alignment(a, np.ones((12, 3)))),
        ("alignment", "y", lambda a, b, c, d: evaluation.alignment(np.ones((12, 3)), a)),
        ("uniformity", "x", lambda a, b, c, d: evaluation.uniformity(a)),
    ]


@pytest.mark.parametrize("as_tensor", [False, True], ids=["numpy", "tensor"])
@pytest.mark.parametrize("value", _NON_FINITE, ids=["nan", "+inf", "-inf"])
@pytest.mark.parametrize(
    "function,argument,call", _feature_calls(), ids=[f"{f}-{a}" for f, a, _ in _feature_calls()]
)
def test_non_finite_features_are_rejected(function, argument, call, value, as_tensor):
    train, train_labels, test, test_labels = _small_split()
    # alignment's y and uniformity's x stand in the training-set slot
    is_test = argument == "test_features"
    num_rows = 6 if is_test else 12
    if is_test:
        test = _with_bad_rows(test, value)
    else:
        train = _with_bad_rows(train, value)
    if as_tensor:
        train, test = keras.ops.convert_to_tensor(train), keras.ops.convert_to_tensor(test)
    message = f"`{argument}` must be finite; rows [1, 4] (2 of {num_rows}) hold NaN or Inf"
    with pytest.raises(ValueError, match=re.escape(message)):
        call(train, train_labels, test, test_labels)


def test_non_finite_rows_are_listed_up_to_ten():
    train, train_labels, test, _ = _small_split()
    train = _with_bad_rows(train, float("nan"), rows=list(range(11)))
    message = "rows [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, ...] (11 of 12) hold NaN or Inf"
    with pytest.raises(ValueError, match=re.escape(message)):
        evaluation.knn_predict(train, train_labels, test)


@pytest.mark.parametrize("value", _NON_FINITE, ids=["nan", "+inf", "-inf"])
@pytest.mark.parametrize("split", ["train_data", "test_data"])
def test_linear_evaluation_and_monitor_reject_non_finite_encoder_features(split, value):
    train, train_labels, test, test_labels = _small_split()
    if split == "train_data":
        train = _with_bad_rows(train, value)
    else:
        test = _with_bad_rows(test, value)
    encoder = keras.layers.Identity()  # the features are the inputs
    message = f"features of the `{split}` images must be finite; rows [1, 4]"
    with pytest.raises(ValueError, match=re.escape(message)):
        evaluation.linear_evaluation(encoder, (train, train_labels), (test, test_labels), epochs=1)
    monitor = evaluation.KNNMonitor(
        (train, train_labels), (test, test_labels), k=3, feature_extractor=encoder
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        monitor.evaluate()


@functools.cache
def _traced_measures():
    """Traced once per process (and shape): one compilation for all values."""
    return (
        traced(lambda x: evaluation.uniformity(x, batch_size=5)),
        traced(lambda x, y: evaluation.alignment(x, y)),
    )


@pytest.mark.parametrize("value", _NON_FINITE, ids=["nan", "+inf", "-inf"])
def test_traced_alignment_and_uniformity_end_as_nan(value):
    # Inside jax.jit / tf.function no value can be checked: the result must be
    # NaN (so that TerminateOnNaN fires), never a finite number. PyTorch runs
    # eagerly, where the check raises.
    train, _, _, _ = _small_split()
    bad = _with_bad_rows(train, value)
    uniformity, alignment = _traced_measures()
    calls = [(uniformity, (bad,)), (alignment, (bad, train)), (alignment, (train, bad))]
    for function, args in calls:
        try:
            result = to_numpy(function(*args))
        except ValueError as error:
            assert keras.backend.backend() == "torch", error
            assert "must be finite; rows [1, 4]" in str(error)
        else:
            assert np.isnan(result)


def test_huge_finite_features_keep_their_direction():
    # ||x||^2 overflows float32 beyond ~1.8e19: the rows must not collapse to
    # zero. (Shapes and arguments of the tests above: JAX compiles nothing new.)
    train, labels, test, _ = _random_knn_data(0)
    scaled = np.float32(1e20) * train
    assert np.all(np.isfinite(scaled))
    np.testing.assert_array_equal(
        evaluation.knn_predict(scaled, labels, np.float32(1e20) * test, k=1, batch_size=8),
        evaluation.knn_predict(train, labels, test, k=1, batch_size=8),
    )
    x = np.random.default_rng(11).normal(size=(7, 4)).astype("float32")
    assert float(evaluation.alignment(x, np.float32(-1e20) * x)) == pytest.approx(4.0, rel=1e-5)
    simplex = np.float32(1e30) * (np.eye(4) - 0.25)
    assert float(evaluation.uniformity(simplex, t=2.0)) == pytest.approx(-16.0 / 3.0, rel=1e-5)


_BAD_LABELS = {
    "too_large": (5, "`num_classes` must exceed every label"),
    "negative": (-1, "negative labels"),
    "nan": (float("nan"), "hold NaN or Inf"),
    "inf": (float("inf"), "hold NaN or Inf"),
    "fraction": (0.5, "hold fractions"),
}


def _label_calls():
    """(name, argument, takes num_classes, call(train, y_train, test, y_test))."""
    probe = dict(epochs=1, num_classes=3)
    return [
        ("knn_predict", "train_labels", True,
         lambda a, b, c, d: evaluation.knn_predict(a, b, c, k=3, num_classes=3)),
        ("knn_accuracy", "train_labels", True,
         lambda a, b, c, d: evaluation.knn_accuracy(a, b, c, d, k=3, num_classes=3)),
        ("knn_accuracy", "test_labels", True,
         lambda a, b, c, d: evaluation.knn_accuracy(a, b, c, d, k=3, num_classes=3)),
        ("linear_probe_accuracy", "train_labels", True,
         lambda a, b, c, d: evaluation.linear_probe_accuracy(a, b, c, d, **probe)),
        ("linear_probe_accuracy", "test_labels", True,
         lambda a, b, c, d: evaluation.linear_probe_accuracy(a, b, c, d, **probe)),
        ("few_label_accuracy", "train_labels", True,
         lambda a, b, c, d: evaluation.few_label_accuracy(a, b, c, d, 0.1, draws=1, **probe)),
        ("few_label_accuracy", "test_labels", True,
         lambda a, b, c, d: evaluation.few_label_accuracy(a, b, c, d, 0.1, draws=1, **probe)),
        ("class_balanced_subset", "labels", False,
         lambda a, b, c, d: evaluation.class_balanced_subset(b, 0.5)),
        ("linear_evaluation", "train_data", True,
         lambda a, b, c, d: evaluation.linear_evaluation(_never_called, (a, b), (c, d), **probe)),
        ("linear_evaluation", "test_data", True,
         lambda a, b, c, d: evaluation.linear_evaluation(_never_called, (a, b), (c, d), **probe)),
        ("KNNMonitor", "train_data", False,
         lambda a, b, c, d: evaluation.KNNMonitor((a, b), (c, d))),
        ("KNNMonitor", "test_data", False,
         lambda a, b, c, d: evaluation.KNNMonitor((a, b), (c, d))),
    ]


def _never_called(images):
    raise AssertionError("the encoder ran on data that fails the checks")


@pytest.mark.parametrize("kind", list(_BAD_LABELS))
@pytest.mark.parametrize(
    "function,argument,takes_num_classes,call",
    _label_calls(),
    ids=[f"{f}-{a}" for f, a, _, _ in _label_calls()],
)
def test_bad_labels_are_rejected(function, argument, takes_num_classes, call, kind):
    if kind == "too_large" and not takes_num_classes:
        pytest.skip(f"{function} has no `num_classes`: any non-negative label is a class")
    train, train_labels, test, test_labels = _small_split()
    bad_value, message = _BAD_LABELS[kind]
    is_test = argument in ("test_labels", "test_data")
    labels = (test_labels if is_test else train_labels).astype("float64")
    labels[[1, 4]] = bad_value
    if kind in ("too_large", "negative"):
        labels = labels.astype("int64")
    if is_test:
        test_labels = labels
    else:
        train_labels = labels
    with pytest.raises(ValueError) as error:
        call(train, train_labels, test, test_labels)
    text = str(error.value)
    assert message in text and "rows [1, 4]" in text, text
    assert f"`{argument}" in text, text  # `train_data` or `train_data[1]`


@pytest.mark.parametrize("empty", ["train", "test"])
def test_empty_split_fails_before_the_encoder_runs_and_leaves_it_usable(empty):
    rng = np.random.default_rng(18)
    images = rng.normal(size=(8, 2, 2, 1)).astype("float32")
    labels = np.arange(8) % 2
    inputs = keras.Input((2, 2, 1))
    encoder = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))
    train_data, test_data = (images, labels), (images, labels)
    if empty == "train":
        train_data = (images[:0], labels[:0])
    else:
        test_data = (images[:0], labels[:0])
    for failing in (encoder, keras.layers.Flatten(), _never_called):
        with pytest.raises(ValueError, match=f"`{empty}_data` must hold at least one sample"):
            evaluation.linear_evaluation(failing, train_data, test_data, epochs=1)
        with pytest.raises(ValueError, match="`images` must hold at least one sample"):
            evaluation.extract_features(failing, images[:0])
    with pytest.raises(ValueError, match=f"`{empty}_data` must hold at least one sample"):
        evaluation.KNNMonitor(train_data, test_data)
    # The same encoder still works (JAX: an empty `predict` used to break it).
    features = evaluation.extract_features(encoder, images, batch_size=3)
    assert features.shape[0] == 8 and np.all(np.isfinite(features))
    result = evaluation.linear_evaluation(
        encoder, (images, labels), (images, labels), epochs=1, seed=0
    )
    assert 0.0 <= result["test_accuracy"] <= 1.0


@pytest.mark.parametrize("empty", ["train_features", "test_features"])
@pytest.mark.parametrize("function", ["linear_probe_accuracy", "few_label_accuracy"])
def test_probe_on_an_empty_split_fails_before_building_a_model(empty, function, monkeypatch):
    train, train_labels, test, test_labels = _small_split()
    arguments = dict(
        train_features=train, train_labels=train_labels,
        test_features=test, test_labels=test_labels,
    )
    arguments[empty] = arguments[empty][:0]
    arguments[empty.replace("features", "labels")] = np.zeros(0, "int64")
    if function == "few_label_accuracy":
        arguments["fraction"] = 0.5

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built for an empty split")

    monkeypatch.setattr(keras, "Input", no_model)
    with pytest.raises(ValueError, match=f"`{empty}` must hold at least one sample"):
        getattr(evaluation, function)(**arguments)
