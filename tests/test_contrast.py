"""Pairs, masks and negative sums of `keras_fmicl.contrast`, against numpy."""

import numpy as np
import pytest
from keras import ops

from keras_fmicl import contrast
from tests import reference
from tests.utils import to_numpy
from tests.utils import value_and_grad


def embeddings(n=8, v=2, d=5, seed=0, dtype="float32"):
    return np.random.default_rng(seed).normal(size=(n, v, d)).astype(dtype)


def cosines(y):
    """float64 `(M, M)` cosines of the flattened `(N, V, d)` embeddings."""
    z = reference.normalise(np.asarray(y, np.float64).reshape(-1, y.shape[-1]))
    return z @ z.T


def negative_mask(n, v):
    sample = np.repeat(np.arange(n), v)
    return sample[:, None] != sample[None, :]


def exp_core(scale):
    """An exponential score `exp(scale cos)` and its exact bounds over [-1, 1]."""
    return ops.exp, (np.exp(-abs(scale)), np.exp(abs(scale)))


def negative_sums(y, core, core_bounds, scale, offset=0.0, labels=None, keys=None):
    batch = contrast.build(
        y, keys=keys, labels=labels, cosine_scale=0.5, batch_cosine_scale=scale,
        batch_cosine_offset=offset,
    )  # fmt: skip
    return batch, contrast.negative_sum(batch, core, core_bounds=core_bounds)


@pytest.mark.parametrize("views", [2, 3])
@pytest.mark.parametrize("scale, offset", [(2.0, 0.0), (-1.5, 0.0), (3.0, -3.0)])
def test_build_gives_scaled_cosines_with_their_offset(views, scale, offset):
    y = embeddings(v=views)
    batch = contrast.build(y, cosine_scale=0.5, batch_cosine_scale=scale, batch_cosine_offset=offset)
    expected = scale * cosines(y) + offset
    np.testing.assert_allclose(to_numpy(batch.batch_cosine), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        to_numpy(batch.batch_cosine_at(0.5)), 0.5 * cosines(y), rtol=1e-5, atol=1e-5
    )
    # The (N, V, V) block: each anchor's own sample, itself included.
    n = y.shape[0]
    block = expected.reshape(n, views, n, views)[np.arange(n), :, np.arange(n), :]
    np.testing.assert_allclose(to_numpy(batch.same_sample_cosine()), block, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        to_numpy(batch.positive_cosine), 0.5 * block / scale - 0.5 * offset / scale,
        rtol=1e-4, atol=1e-5,
    )  # fmt: skip


@pytest.mark.parametrize("views", [2, 3])
@pytest.mark.parametrize("offset", [0.0, -2.0])
def test_negative_sum_by_subtraction_equals_the_masked_sum(views, offset):
    y = embeddings(n=12, v=views)
    scale = 2.0
    expected = np.sum(np.where(negative_mask(12, views), np.exp(scale * cosines(y) + offset), 0.0), axis=1)
    core, bounds = exp_core(scale)
    bounds = (bounds[0] * np.exp(offset), bounds[1] * np.exp(offset))
    batch, subtracted = negative_sums(y, core, bounds, scale, offset)
    assert contrast.subtraction_is_accurate(batch, bounds)
    _, masked = negative_sums(y, core, None, scale, offset)
    np.testing.assert_allclose(to_numpy(subtracted).ravel(), expected, rtol=2e-6)
    np.testing.assert_allclose(to_numpy(masked).ravel(), expected, rtol=2e-6)


@pytest.mark.parametrize("use_bounds", [False, True])
def test_negative_sum_gradients_agree_between_the_two_paths(use_bounds, float64):
    y = embeddings(n=6, v=2, dtype="float64")
    scale = 1.5
    core, bounds = exp_core(scale)
    weights = np.random.default_rng(3).uniform(0.5, 1.5, size=(6, 2))

    def objective(x):
        _, total = negative_sums(x, core, bounds if use_bounds else None, scale)
        return ops.sum(total * ops.convert_to_tensor(weights))

    _, (grad,) = value_and_grad(objective, y)

    def reference_objective(x):
        sums = np.sum(np.where(negative_mask(6, 2), np.exp(scale * cosines(x)), 0.0), axis=1)
        return np.sum(weights.ravel() * sums)

    numerical = np.zeros_like(y)
    h = 1e-6
    for index in np.ndindex(*y.shape):
        step = np.zeros_like(y)
        step[index] = h
        numerical[index] = (reference_objective(y + step) - reference_objective(y - step)) / (2 * h)
    np.testing.assert_allclose(grad, numerical, rtol=1e-6, atol=1e-8)


def test_subtraction_is_accurate_follows_the_error_bound():
    y = embeddings(n=5)
    batch = contrast.build(y)
    limit = contrast.MAX_ERROR_AMPLIFICATION * 4  # N - 1 = 4 other samples
    assert contrast.subtraction_is_accurate(batch, (1.0, limit))
    assert not contrast.subtraction_is_accurate(batch, (1.0, limit * 1.01))
    assert not contrast.subtraction_is_accurate(batch, None)
    assert not contrast.subtraction_is_accurate(batch, (0.0, 1.0))
    assert not contrast.subtraction_is_accurate(batch, (-1.0, 1.0))
    assert not contrast.subtraction_is_accurate(batch, (1.0, float("inf")))
    # Labels and momentum keys have other negatives than "every other sample".
    assert not contrast.subtraction_is_accurate(
        contrast.build(y, labels=np.array([0, 1, 0, 1, 2])), (1.0, 2.0)
    )
    assert not contrast.subtraction_is_accurate(contrast.build(y, keys=y), (1.0, 2.0))
    # One sample and a queue: no in-batch negatives to subtract from.
    queue = np.random.default_rng(1).normal(size=(7, 5)).astype("float32")
    single = contrast.build(y[:1], queue=queue)
    assert not contrast.subtraction_is_accurate(single, (1.0, 2.0))


def test_subtraction_at_the_bound_loses_at_most_the_documented_digits():
    """The worst case: an anchor whose negatives all sit at the lowest score.

    Sample 0 is at e_1 in both views, the others near -e_1; with
    `exp(k cos)` the anchor's own two entries are `e^k` and every negative
    about `e^-k`, with `k` set so that the score range is at the limit the
    rule accepts. The relative error of the subtraction stays within its
    bound `(1 + MAX_ERROR_AMPLIFICATION)` times a float32 row sum's.
    """
    n, d = 16, 4
    rng = np.random.default_rng(0)
    y = np.zeros((n, 2, d), np.float32)
    y[0, :, 0] = 1.0
    y[1:, :, 0] = -1.0
    y[1:, :, 1:] = 1e-3 * rng.normal(size=(n - 1, 2, d - 1))
    k = np.log(contrast.MAX_ERROR_AMPLIFICATION * (n - 1)) / 2.0
    bounds = (np.exp(-k), np.exp(k))
    batch, total = negative_sums(y, ops.exp, bounds, k)
    assert contrast.subtraction_is_accurate(batch, bounds)
    expected = np.sum(np.where(negative_mask(n, 2), np.exp(k * cosines(y)), 0.0), axis=1)
    error = np.abs(to_numpy(total).ravel() - expected) / expected
    eps = np.finfo(np.float32).eps
    assert error[0] <= (1.0 + contrast.MAX_ERROR_AMPLIFICATION) * 8 * eps
    # The other anchors are not in the worst case: float32 accuracy.
    assert error[2:].max() <= 16 * eps


def test_negative_mask_is_built_only_when_used():
    y = embeddings(n=4)
    batch = contrast.build(y)
    assert callable(batch._batch_negative_mask)
    np.testing.assert_array_equal(to_numpy(batch.batch_negative_mask), negative_mask(4, 2))
    assert not callable(batch._batch_negative_mask)


def test_embedding_metrics_do_not_depend_on_the_matrix_scale_and_offset():
    y = embeddings(n=6, v=3)
    plain = contrast.embedding_metrics(contrast.build(y, cosine_scale=2.0))
    folded = contrast.embedding_metrics(
        contrast.build(y, cosine_scale=2.0, batch_cosine_scale=-3.0, batch_cosine_offset=1.5)
    )
    for name in ("alignment", "uniformity"):
        np.testing.assert_allclose(to_numpy(folded[name]), to_numpy(plain[name]), rtol=1e-5)
