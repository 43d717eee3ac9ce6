"""keras_fmicl.evaluation.knn: labels that are not 0..C-1."""

import math

import keras
import numpy as np

from keras_fmicl import evaluation


def reference_knn_labels(train, train_labels, test, k, temperature):
    """Weighted kNN in float64 over the label values themselves (a dict of
    votes, no class index): the winner, ties to the smallest label."""
    train = np.asarray(train, np.float64)
    test = np.asarray(test, np.float64)
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    predictions = []
    for query in test:
        similarity = train @ query
        votes = {}
        for j in np.argsort(-similarity, kind="stable")[:k]:
            label = int(train_labels[j])
            votes[label] = votes.get(label, 0.0) + math.exp(similarity[j] / temperature)
        best = max(votes.values())
        predictions.append(min(label for label, vote in votes.items() if vote == best))
    return np.array(predictions)


def clusters(labels, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(len(labels), 8))
    index = rng.integers(0, len(labels), size=60)
    train = centers[index] + 0.8 * rng.normal(size=(60, 8))
    test = centers[index[:25]] + 0.8 * rng.normal(size=(25, 8))
    return train.astype("float32"), index, test.astype("float32"), index[:25]


def test_sparse_labels_vote_like_their_dense_remap_and_the_reference():
    train, index, test, test_index = clusters([0, 1, 2, 3])
    sparse = np.array([5, 10, 20, 7])
    dense_predictions, dense_scores = evaluation.knn_predict(
        train, index, test, k=7, temperature=0.5, return_scores=True
    )
    predictions, scores = evaluation.knn_predict(
        train, sparse[index], test, k=7, temperature=0.5, return_scores=True
    )
    np.testing.assert_array_equal(predictions, sparse[dense_predictions])
    np.testing.assert_array_equal(
        predictions, reference_knn_labels(train, sparse[index], test, 7, 0.5)
    )
    # labels already 0..C-1: the reference over the values gives the same
    np.testing.assert_array_equal(
        dense_predictions, reference_knn_labels(train, index, test, 7, 0.5)
    )
    # vote shares: column c is label c, zero for labels that are absent
    assert scores.shape == (25, 21)
    np.testing.assert_allclose(scores[:, sparse], dense_scores, rtol=1e-6)
    np.testing.assert_array_equal(np.delete(scores, sparse, axis=1), 0.0)
    accuracy = evaluation.knn_accuracy(train, sparse[index], test, sparse[test_index], k=7)
    assert accuracy == evaluation.knn_accuracy(train, index, test, test_index, k=7)


def test_a_huge_label_does_not_size_the_vote(monkeypatch):
    """Labels {0, 1, 10**6}: 3 vote columns per test row, not 10**6 + 1
    (which cost 1.9 GB for 100 test rows)."""
    train, index, test, test_index = clusters([0, 1, 2], seed=1)
    test = np.concatenate([test] * 4)  # 100 test rows
    labels = np.array([0, 1, 10**6])
    segments = []
    segment_sum = keras.ops.segment_sum

    def recording_segment_sum(data, segment_ids, num_segments=None, **kwargs):
        segments.append(num_segments)
        return segment_sum(data, segment_ids, num_segments=num_segments, **kwargs)

    monkeypatch.setattr(keras.ops, "segment_sum", recording_segment_sum)
    accuracy = evaluation.knn_accuracy(
        train, labels[index], test, labels[np.tile(test_index, 4)], k=5
    )
    assert segments == [100 * 3]
    assert accuracy == evaluation.knn_accuracy(train, index, test, np.tile(test_index, 4), k=5)
