"""Pair sets of `keras_fmicl.losses.pairs`: cosines, masks and counts, against numpy."""

import dataclasses

import keras
import numpy as np
import pytest

from keras_fmicl.losses import pair_sums
from keras_fmicl.losses import pairs
from tests import reference
from tests.helpers import to_numpy
from tests.helpers import traced


def embeddings(n=8, v=2, d=5, seed=0, dtype="float32"):
    return np.random.default_rng(seed).normal(size=(n, v, d)).astype(dtype)


cosines = reference.cosines
negative_mask = reference.negative_mask


@pytest.mark.parametrize("views", [2, 3])
@pytest.mark.parametrize("scale, offset", [(2.0, 0.0), (-1.5, 0.0), (3.0, -3.0)])
def test_every_tensor_of_the_batch_holds_scaled_cosines_with_their_offset(views, scale, offset):
    """One scaling convention: `scale * cos + offset` everywhere, `to_cosine` undoes it."""
    y = embeddings(v=views)
    queue = np.random.default_rng(2).normal(size=(3, 5)).astype("float32")
    batch = pairs.build(y, queue=queue, scale=scale, offset=offset)
    assert (batch.scale, batch.offset) == (scale, offset)
    expected = scale * cosines(y) + offset
    np.testing.assert_allclose(to_numpy(batch.batch_matrix), expected, rtol=1e-5, atol=1e-5)
    # The (N, V, V) block: each anchor's own sample, itself included.
    n = y.shape[0]
    block = expected.reshape(n, views, n, views)[np.arange(n), :, np.arange(n), :]
    np.testing.assert_allclose(to_numpy(batch.own_sample), block, rtol=1e-5, atol=1e-5)
    z = reference.normalise(y.reshape(-1, 5).astype(np.float64))
    queue_cosines = z @ reference.normalise(queue.astype(np.float64)).T
    np.testing.assert_allclose(
        to_numpy(batch.queue_matrix), scale * queue_cosines + offset, rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        to_numpy(batch.to_cosine(batch.batch_matrix)), cosines(y), rtol=1e-4, atol=1e-5
    )


def test_the_pair_set_declares_its_fields():
    fields = {f.name for f in dataclasses.fields(pairs.ContrastiveBatch)}
    batch = pairs.build(embeddings(n=4), labels=[0, 1, 0, 1])
    assert set(vars(batch)) == fields
    assert {"scale", "offset", "own_sample", "positive_mask", "queue_matrix", "nan_guard"} <= fields


@pytest.mark.parametrize(
    "kwargs, counts",
    [
        ({}, (1.0, 14.0)),  # N = 8, V = 2: 7 other samples of 2 views
        ({"keys": True}, (1.0, 7.0)),  # MoCo v3: the other view only
        ({"labels": [0, 1, 0, 1, 2, 2, 3, 3]}, ([[3.0, 3.0]] * 8, [[12.0, 12.0]] * 8)),
        ({"queue": True, "in_batch_negatives": False}, (1.0, 3.0)),
    ],
)
def test_counts_of_positives_and_negatives(kwargs, counts):
    y = embeddings()
    if kwargs.pop("keys", False):
        kwargs["keys"] = embeddings(seed=1)
    if kwargs.pop("queue", False):
        kwargs["queue"] = np.ones((3, 5), "float32")
    batch = pairs.build(y, **kwargs)
    positives = np.broadcast_to(to_numpy(batch.positive_count), (8, 2))
    negatives = np.broadcast_to(to_numpy(batch.negative_count), (8, 2))
    np.testing.assert_array_equal(positives, np.broadcast_to(counts[0], (8, 2)))
    np.testing.assert_array_equal(negatives, np.broadcast_to(counts[1], (8, 2)))


def test_the_matrix_and_the_negative_mask_are_built_only_when_used_and_once():
    built = []
    batch = pairs.build(embeddings(n=4))

    def counting(name, builder):
        return lambda: built.append(name) or builder()

    batch = dataclasses.replace(
        batch,
        batch_matrix_fn=counting("matrix", batch.batch_matrix_fn),
        batch_negative_mask_fn=counting("mask", batch.batch_negative_mask_fn),
    )
    assert not built
    np.testing.assert_array_equal(to_numpy(batch.batch_negative_mask), negative_mask(4, 2))
    np.testing.assert_array_equal(to_numpy(batch.batch_negative_mask), negative_mask(4, 2))
    assert built == ["mask"]


def test_embedding_metrics_do_not_depend_on_the_scale_and_offset():
    y = embeddings(n=6, v=3)
    plain = pair_sums.embedding_metrics(pairs.build(y))
    folded = pair_sums.embedding_metrics(pairs.build(y, scale=-3.0, offset=1.5))
    for name in ("alignment", "uniformity"):
        np.testing.assert_allclose(to_numpy(folded[name]), to_numpy(plain[name]), rtol=1e-5)


def test_only_a_self_contrasting_batch_is_symmetric():
    y = embeddings(n=5)
    queue = np.random.default_rng(1).normal(size=(7, 5)).astype("float32")
    symmetric = pairs.build(y, scale=2.0, offset=-1.0)
    assert symmetric.symmetric_operand is not None
    # built on first use, from the operand: scale * cos + offset
    np.testing.assert_allclose(
        to_numpy(symmetric.batch_matrix), 2.0 * cosines(y) - 1.0, rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        to_numpy(symmetric.symmetric_operand) ** 2,
        2.0 * reference.normalise(y.reshape(-1, 5).astype(np.float64)) ** 2,
        rtol=1e-5,
        atol=1e-6,
    )
    for batch in (
        pairs.build(y, keys=y),
        pairs.build(y, scale=-2.0),  # no real square root
        pairs.build(y, queue=queue, in_batch_negatives=False),
    ):
        assert batch.symmetric_operand is None


# ------------------------------------------------------- labels and guards


@pytest.mark.parametrize(
    "labels, match",
    [
        ([0, 1, np.nan, 1], r"labels\[2\]=.*nan"),
        ([0, 1, 2, -3], r"labels\[3\]=.*-3"),
        ([0.0, 0.5, 1.0, 1.0], r"labels\[1\]=.*0.5"),
        ([0.0, np.inf, 1.0, 1.0], r"labels\[1\]=.*inf"),
        (["x", "y", "x", "y"], r"dtype=<U1"),
        (np.array([b"x", b"y", b"x", b"y"], dtype=object), r"dtype=object"),
        ([0, 1, 1], r"labels.shape=\(3,\)"),
        ([[0, 1], [1, 0]], r"labels.shape=\(2, 2\)"),
        (3, r"labels.shape=\(\)"),
    ],
)
def test_check_labels_rejects_concrete_bad_labels(labels, match):
    with pytest.raises(ValueError, match=match):
        pairs.check_labels(labels, 4, "labels")


def test_check_labels_accepts_integers_integer_floats_and_booleans():
    for labels in ([0, 3, 3, 1], [0.0, 3.0, 3.0, 1.0], np.array([[0], [3], [3], [1]]), np.uint8([0, 3, 3, 1])):
        checked, valid = pairs.check_labels(labels, 4)
        assert valid is None
        np.testing.assert_array_equal(to_numpy(checked), [0, 3, 3, 1])
    checked, _ = pairs.check_labels(np.array([True, False, True, True]), 4)
    np.testing.assert_array_equal(to_numpy(checked), [1, 0, 1, 1])


@pytest.mark.parametrize(
    "labels, expected_valid",
    [
        (np.array([0.0, 1.0, 2.0, 1.0], "float32"), True),
        (np.array([0.0, 1.0, np.nan, 1.0], "float32"), False),
        (np.array([0.0, -1.0, 2.0, 1.0], "float32"), False),
        (np.array([0.0, 1.25, 2.0, 1.0], "float32"), False),
        (np.array([0.0, np.inf, 2.0, 1.0], "float32"), False),
        (np.array([0, 1, 2, 1], "int32"), True),
        (np.array([0, -1, 2, 1], "int32"), False),
    ],
)
def test_traced_labels_set_the_nan_guard(labels, expected_valid):
    y = embeddings(n=4)

    def guard(x, t):
        return pairs.build(x, labels=t).nan_guard

    if keras.backend.backend() == "torch" and not expected_valid:
        # eager PyTorch sees the values: a ValueError instead
        with pytest.raises(ValueError, match="non-negative integer"):
            traced(guard)(y, labels)
        return
    got = float(to_numpy(traced(guard)(y, labels)))
    assert np.isnan(got) != expected_valid


@pytest.mark.parametrize("part", ["queries", "keys", "queue"])
def test_a_non_finite_input_sets_the_nan_guard(part):
    y = embeddings(n=4, d=3)
    keys = embeddings(n=4, d=3, seed=1)
    queue = np.ones((3, 3), "float32")
    batch = pairs.build(y, keys=keys, queue=queue)
    assert float(to_numpy(batch.nan_guard)) == 0.0
    {"queries": y, "keys": keys, "queue": queue}[part][0, 0, ...] = np.nan
    batch = pairs.build(y, keys=keys, queue=queue)
    assert np.isnan(float(to_numpy(batch.nan_guard)))


@pytest.mark.parametrize("keys, labels", [(False, None), (False, [0, 1, 0, 2, 1]), (True, [0, 1, 0, 2, 1])])
def test_candidate_logsumexp_runs_over_every_positive_and_negative(keys, labels):
    y = embeddings(n=5, v=3, d=4, seed=7)
    k = embeddings(n=5, v=3, d=4, seed=8) if keys else None
    queue = np.random.default_rng(9).normal(size=(4, 4)).astype("float32")
    queue_mask = np.array([1, 0, 1, 1], bool)
    batch = pairs.build(y, keys=k, queue=queue, queue_mask=queue_mask, labels=labels, scale=2.0)
    got = to_numpy(pair_sums.candidate_logsumexp(batch, lambda c: c))
    z = reference.normalise(y.reshape(-1, 4).astype(np.float64))
    zk = z if k is None else reference.normalise(k.reshape(-1, 4).astype(np.float64))
    zq = reference.normalise(queue[queue_mask].astype(np.float64))
    expected = np.zeros(15)
    for m in range(15):
        if keys:
            candidates = [c for c in range(15) if c % 3 != m % 3]
        else:
            candidates = [c for c in range(15) if c != m]
        logits = np.concatenate([2.0 * zk[candidates] @ z[m], 2.0 * zq @ z[m]])
        expected[m] = np.log(np.sum(np.exp(logits)))
    np.testing.assert_allclose(got.ravel(), expected, rtol=1e-5)
