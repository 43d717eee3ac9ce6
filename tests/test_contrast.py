"""Pairs, masks and negative sums of `keras_fmicl.contrast`, against numpy."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_fmicl import contrast
from keras_fmicl.similarities import row_dot
from tests import reference
from tests.utils import to_numpy
from tests.utils import traced
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


def central_differences(fn, x, h=1e-6):
    """Gradient of the scalar numpy function `fn` at `x` by central differences."""
    numerical = np.zeros_like(x)
    for index in np.ndindex(*x.shape):
        step = np.zeros_like(x)
        step[index] = h
        numerical[index] = (fn(x + step) - fn(x - step)) / (2 * h)
    return numerical


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

    numerical = central_differences(reference_objective, y)
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


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# name: (core, derivative(x, values), numpy core)
SYMMETRIC_CORES = {
    "exp": (ops.exp, lambda x, values: values, np.exp),
    "softplus": (
        ops.softplus,
        lambda x, values: ops.sigmoid(x),
        lambda x: np.logaddexp(0.0, x),
    ),
    "sigmoid_squared": (
        lambda x: ops.square(ops.sigmoid(x)),
        lambda x, values: 2.0 * values * (1.0 - ops.sigmoid(x)),
        lambda x: _sigmoid(x) ** 2,
    ),
}


@pytest.mark.parametrize("core_name", list(SYMMETRIC_CORES))
@pytest.mark.parametrize("offset", [0.0, -2.0])
@pytest.mark.parametrize("masked", [False, True])
def test_symmetric_row_sum_value_and_gradient(core_name, offset, masked, float64):
    """One-matmul gradient of row sums of s(w w^T + b) vs finite differences."""
    core, derivative, numpy_core = SYMMETRIC_CORES[core_name]
    rng = np.random.default_rng(5)
    w = rng.normal(size=(8, 3))
    weights = rng.uniform(0.5, 1.5, size=8)
    mask = negative_mask(4, 2) if masked else np.ones((8, 8), bool)

    def reference_objective(x):
        return np.sum(weights * np.sum(np.where(mask, numpy_core(x @ x.T + offset), 0.0), axis=1))

    def objective(x):
        sums = contrast.symmetric_row_sum(
            x, row_dot(x, x) + offset, core, derivative,
            mask=ops.convert_to_tensor(mask) if masked else None,
        )  # fmt: skip
        return ops.sum(sums * ops.convert_to_tensor(weights))

    value, (grad,) = value_and_grad(objective, w)
    np.testing.assert_allclose(value, reference_objective(w), rtol=1e-12)
    numerical = central_differences(reference_objective, w)
    np.testing.assert_allclose(grad, numerical, rtol=1e-7, atol=1e-9)


def test_only_a_self_contrasting_batch_is_symmetric():
    y = embeddings(n=5)
    queue = np.random.default_rng(1).normal(size=(7, 5)).astype("float32")
    symmetric = contrast.build(y, cosine_scale=0.5, batch_cosine_scale=2.0, batch_cosine_offset=-1.0)
    assert symmetric.symmetric_operand is not None
    # built on first use, from the operand: scale * cos + offset
    assert symmetric._batch_cosine is None
    np.testing.assert_allclose(
        to_numpy(symmetric.batch_cosine), 2.0 * cosines(y) - 1.0, rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        to_numpy(symmetric.symmetric_operand) ** 2,
        2.0 * reference.normalise(y.reshape(-1, 5).astype(np.float64)) ** 2,
        rtol=1e-5,
        atol=1e-6,
    )
    for batch in (
        contrast.build(y, keys=y),
        contrast.build(y, batch_cosine_scale=-2.0),  # no real square root
        contrast.build(y, queue=queue, in_batch_negatives=False),
    ):
        assert batch.symmetric_operand is None


@pytest.mark.parametrize("offset", [0.0, -2.0])
def test_negative_sum_with_a_derivative_matches_the_masked_sum_and_its_gradient(offset, float64):
    y = embeddings(n=6, v=3, dtype="float64")
    scale = 1.5
    core, bounds = exp_core(scale)
    bounds = (bounds[0] * np.exp(offset), bounds[1] * np.exp(offset))
    weights = np.random.default_rng(4).uniform(0.5, 1.5, size=(6, 3))
    calls = []
    original = contrast.symmetric_row_sum

    def objective(x):
        batch = contrast.build(x, batch_cosine_scale=scale, batch_cosine_offset=offset)
        total = contrast.negative_sum(
            batch, core, core_bounds=bounds, score_derivative=lambda m, v: ops.exp(m)
        )
        return ops.sum(total * ops.convert_to_tensor(weights))

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    contrast.symmetric_row_sum = counting
    try:
        value, (grad,) = value_and_grad(objective, y)
    finally:
        contrast.symmetric_row_sum = original
    assert calls

    def reference_objective(x):
        sums = np.sum(
            np.where(negative_mask(6, 3), np.exp(scale * cosines(x) + offset), 0.0), axis=1
        )
        return np.sum(weights.ravel() * sums)

    np.testing.assert_allclose(value, reference_objective(y), rtol=1e-12)
    numerical = central_differences(reference_objective, y)
    # finite differences of a sum of ~300: about 1e-8 of absolute error
    np.testing.assert_allclose(grad, numerical, rtol=1e-6, atol=1e-6)


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
        contrast.check_labels(labels, 4, "labels")


def test_check_labels_accepts_integers_integer_floats_and_booleans():
    for labels in ([0, 3, 3, 1], [0.0, 3.0, 3.0, 1.0], np.array([[0], [3], [3], [1]]), np.uint8([0, 3, 3, 1])):
        checked, valid = contrast.check_labels(labels, 4)
        assert valid is None
        np.testing.assert_array_equal(to_numpy(checked), [0, 3, 3, 1])
    checked, _ = contrast.check_labels(np.array([True, False, True, True]), 4)
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
        return contrast.build(x, labels=t).nan_guard

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
    batch = contrast.build(y, keys=keys, queue=queue)
    assert float(to_numpy(batch.nan_guard)) == 0.0
    {"queries": y, "keys": keys, "queue": queue}[part][0, 0, ...] = np.nan
    batch = contrast.build(y, keys=keys, queue=queue)
    assert np.isnan(float(to_numpy(batch.nan_guard)))


@pytest.mark.parametrize("keys, labels", [(False, None), (False, [0, 1, 0, 2, 1]), (True, [0, 1, 0, 2, 1])])
def test_candidate_logsumexp_runs_over_every_positive_and_negative(keys, labels):
    y = embeddings(n=5, v=3, d=4, seed=7)
    k = embeddings(n=5, v=3, d=4, seed=8) if keys else None
    queue = np.random.default_rng(9).normal(size=(4, 4)).astype("float32")
    queue_mask = np.array([1, 0, 1, 1], bool)
    batch = contrast.build(y, keys=k, queue=queue, queue_mask=queue_mask, labels=labels, cosine_scale=2.0)
    got = to_numpy(contrast.candidate_logsumexp(batch, lambda c: c))
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
