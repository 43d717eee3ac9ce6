"""The speed paths of `keras_fmicl.losses.fast_paths`: plans, negative sums, hints."""

import re

import keras
import numpy as np
import pytest
from keras import ops

import keras_fmicl
from keras_fmicl.losses import pair_sums
from keras_fmicl.losses import pairs
from keras_fmicl.losses import divergences
from keras_fmicl.losses import fast_paths
from keras_fmicl.losses.similarities import row_dot
from tests import reference
from tests.helpers import to_numpy
from tests.helpers import value_and_grad

NAMES = list(divergences.names())


def embeddings(n=8, v=2, d=5, seed=0, dtype="float32"):
    return np.random.default_rng(seed).normal(size=(n, v, d)).astype(dtype)


cosines = reference.cosines
negative_mask = reference.negative_mask


def central_differences(fn, x, h=1e-6):
    """Gradient of the scalar numpy function `fn` at `x` by central differences."""
    numerical = np.zeros_like(x)
    for index in np.ndindex(*x.shape):
        step = np.zeros_like(x)
        step[index] = h
        numerical[index] = (fn(x + step) - fn(x - step)) / (2 * h)
    return numerical


def plan_of(core, core_bounds, scale, offset=0.0, derivative=None):
    """A hand-made plan: the core of `scale * cos + offset`, summed as is."""
    return fast_paths.ScorePlan(
        scale, offset, lambda x: x, path="negative_form", negative_core=core,
        core_bounds=core_bounds, derivative=derivative,
    )  # fmt: skip


def exp_core(scale):
    """An exponential score `exp(scale cos)` and its exact bounds over [-1, 1]."""
    return ops.exp, (np.exp(-abs(scale)), np.exp(abs(scale)))


def negative_sums(y, core, core_bounds, scale, offset=0.0, labels=None, keys=None):
    batch = pairs.build(y, keys=keys, labels=labels, scale=scale, offset=offset)
    return batch, fast_paths.negative_sum(batch, plan_of(core, core_bounds, scale, offset))


@pytest.mark.parametrize("views", [2, 3])
@pytest.mark.parametrize("offset", [0.0, -2.0])
def test_negative_sum_by_subtraction_equals_the_masked_sum(views, offset):
    y = embeddings(n=12, v=views)
    scale = 2.0
    expected = np.sum(np.where(negative_mask(12, views), np.exp(scale * cosines(y) + offset), 0.0), axis=1)
    core, bounds = exp_core(scale)
    bounds = (bounds[0] * np.exp(offset), bounds[1] * np.exp(offset))
    batch, subtracted = negative_sums(y, core, bounds, scale, offset)
    assert fast_paths.subtraction_is_accurate(batch, bounds)
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
    batch = pairs.build(y)
    limit = fast_paths.MAX_ERROR_AMPLIFICATION * 4  # N - 1 = 4 other samples
    assert fast_paths.subtraction_is_accurate(batch, (1.0, limit))
    assert not fast_paths.subtraction_is_accurate(batch, (1.0, limit * 1.01))
    assert not fast_paths.subtraction_is_accurate(batch, None)
    assert not fast_paths.subtraction_is_accurate(batch, (0.0, 1.0))
    assert not fast_paths.subtraction_is_accurate(batch, (-1.0, 1.0))
    assert not fast_paths.subtraction_is_accurate(batch, (1.0, float("inf")))
    # Labels and momentum keys have other negatives than "every other sample".
    assert not fast_paths.subtraction_is_accurate(
        pairs.build(y, labels=np.array([0, 1, 0, 1, 2])), (1.0, 2.0)
    )
    assert not fast_paths.subtraction_is_accurate(pairs.build(y, keys=y), (1.0, 2.0))
    # One sample and a queue: no in-batch negatives to subtract from.
    queue = np.random.default_rng(1).normal(size=(7, 5)).astype("float32")
    single = pairs.build(y[:1], queue=queue)
    assert not fast_paths.subtraction_is_accurate(single, (1.0, 2.0))


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
    k = np.log(fast_paths.MAX_ERROR_AMPLIFICATION * (n - 1)) / 2.0
    bounds = (np.exp(-k), np.exp(k))
    batch, total = negative_sums(y, ops.exp, bounds, k)
    assert fast_paths.subtraction_is_accurate(batch, bounds)
    expected = np.sum(np.where(negative_mask(n, 2), np.exp(k * cosines(y)), 0.0), axis=1)
    error = np.abs(to_numpy(total).ravel() - expected) / expected
    eps = np.finfo(np.float32).eps
    assert error[0] <= (1.0 + fast_paths.MAX_ERROR_AMPLIFICATION) * 8 * eps
    # The other anchors are not in the worst case: float32 accuracy.
    assert error[2:].max() <= 16 * eps


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
        sums = fast_paths.symmetric_row_sum(
            x, row_dot(x, x) + offset, core, derivative,
            mask=ops.convert_to_tensor(mask) if masked else None,
        )  # fmt: skip
        return ops.sum(sums * ops.convert_to_tensor(weights))

    value, (grad,) = value_and_grad(objective, w)
    np.testing.assert_allclose(value, reference_objective(w), rtol=1e-12)
    numerical = central_differences(reference_objective, w)
    np.testing.assert_allclose(grad, numerical, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("offset", [0.0, -2.0])
def test_negative_sum_with_a_derivative_matches_the_masked_sum_and_its_gradient(offset, float64):
    y = embeddings(n=6, v=3, dtype="float64")
    scale = 1.5
    core, bounds = exp_core(scale)
    bounds = (bounds[0] * np.exp(offset), bounds[1] * np.exp(offset))
    weights = np.random.default_rng(4).uniform(0.5, 1.5, size=(6, 3))
    calls = []
    original = fast_paths.symmetric_row_sum
    plan = plan_of(core, bounds, scale, offset, derivative=lambda m, v: ops.exp(m))

    def objective(x):
        batch = pairs.build(x, scale=scale, offset=offset)
        total = fast_paths.negative_sum(batch, plan)
        return ops.sum(total * ops.convert_to_tensor(weights))

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    fast_paths.symmetric_row_sum = counting
    try:
        value, (grad,) = value_and_grad(objective, y)
    finally:
        fast_paths.symmetric_row_sum = original
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


# ------------------------------------------------------------------ the plans

PLAN_SIMILARITIES = [("gaussian", 0.3), ("gaussian", 1.0), ("cosine", 0.2), ("cosine", 0.5)]


def make_similarity(similarity, parameter):
    if similarity == "gaussian":
        return keras_fmicl.Gaussian(parameter)
    return keras_fmicl.Cosine(parameter)


def log_ratios(similarity, parameter, cos):
    return cos / parameter if similarity == "cosine" else (cos - 1.0) / parameter**2


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("similarity, parameter", PLAN_SIMILARITIES)
def test_the_plan_gives_the_reference_negative_scores(name, similarity, parameter):
    """`negative_scale * core(x) + negative_offset` is the negative score at every cos.

    `x = scale cos + offset` is what the pair set holds; `log_ratio(x)` is
    `l`; `core_bounds` are the core's range over the similarity's range;
    `row_sum` (when the plan has one) sums the core over rows.
    """
    plan = fast_paths.score_plan(make_similarity(similarity, parameter), divergences.get(name))
    assert plan.path in ("exp_in_matmul", "negative_form")
    cos = np.linspace(-1.0, 1.0, 201)
    x = ops.convert_to_tensor((plan.scale * cos + plan.offset).astype("float32").reshape(3, 67))
    core = to_numpy(plan.negative_core(x)).ravel()
    l = log_ratios(similarity, parameter, cos)
    _, expected = reference.scores(name, l)
    np.testing.assert_allclose(
        plan.negative_scale * core + plan.negative_offset, expected, rtol=2e-5, atol=2e-5
    )
    np.testing.assert_allclose(to_numpy(plan.log_ratio(x)).ravel(), np.minimum(l, 0.0) if similarity == "gaussian" else l, rtol=1e-5, atol=1e-5)
    assert plan.core_bounds is not None
    np.testing.assert_allclose(plan.core_bounds, (core.min(), core.max()), rtol=1e-5)
    if plan.row_sum is not None:
        np.testing.assert_allclose(
            to_numpy(plan.row_sum(x)), core.reshape(3, 67).sum(axis=1), rtol=1e-5
        )


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("similarity, parameter", [("gaussian", 0.3), ("cosine", 0.5)])
def test_the_plans_derivative_is_the_derivative_of_its_core(name, similarity, parameter, float64):
    plan = fast_paths.score_plan(make_similarity(similarity, parameter), divergences.get(name))
    assert plan.derivative is not None
    cos = np.linspace(-1.0, 1.0, 201)
    matrix = (plan.scale * cos + plan.offset).reshape(3, 67)
    h = 1e-6

    def core(x):
        return to_numpy(plan.negative_core(ops.convert_to_tensor(x)))

    numerical = (core(matrix + h) - core(matrix - h)) / (2 * h)
    tensor = ops.convert_to_tensor(matrix)
    derivative = to_numpy(plan.derivative(tensor, plan.negative_core(tensor)))
    np.testing.assert_allclose(derivative, numerical, rtol=1e-6, atol=1e-9 * np.abs(numerical).max())


@pytest.mark.parametrize("name", ["js", "vlc"])
@pytest.mark.parametrize("similarity", [keras_fmicl.Gaussian(0.5), keras_fmicl.Cosine(0.5)])
def test_the_derivative_of_a_declared_form_needs_only_the_values_under_xla(name, similarity):
    """Under XLA (`elementwise_ops_fuse`) the derivative is a function of the values.

    The matrix is then dead once the values are computed: XLA keeps one
    `(M, M)` buffer (see `test_one_square_buffer_under_xla`). On eager
    PyTorch JS keeps its one-op `sigmoid` of the matrix.
    """
    plan = fast_paths.score_plan(similarity, divergences.get(name))
    cos = np.linspace(-1.0, 1.0, 12).reshape(3, 4)
    matrix = ops.convert_to_tensor((plan.scale * cos + plan.offset).astype("float32"))
    values = plan.negative_core(matrix)
    derivative = to_numpy(plan.derivative(matrix, values))
    from_values = to_numpy(plan.derivative(ops.full_like(matrix, float("nan")), values))
    if keras_fmicl.utils.backend_ops.elementwise_ops_fuse() or name == "vlc":
        np.testing.assert_array_equal(from_values, derivative)
    else:
        assert np.isnan(from_values).all()


def _peak_square_buffers(hlo_text, m):
    """The most `(m, m)` arrays live at once in the scheduled ENTRY computation.

    An instruction's output may take the buffer of an operand it is the last
    user of (XLA's in-place elementwise fusions); a `(m, m)` array is live
    from its instruction to its last user.
    """
    entry = hlo_text[hlo_text.index("\nENTRY") :]
    rows = []
    for line in entry[entry.index("{") + 1 : entry.index("\n}")].splitlines():
        found = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = \S+?\[([\d,]*)\]\S* [\w\-]+\((.*)", line)
        if found:
            name, dims, rest = found.groups()
            operands = re.findall(r"%([\w.\-]+)", rest.split("), ")[0])
            rows.append((name, dims == f"{m},{m}", operands))
    last_use = {name: i for i, (name, _, _) in enumerate(rows)}
    for i, (_, _, operands) in enumerate(rows):
        for operand in operands:
            if operand in last_use:
                last_use[operand] = max(last_use[operand], i)
    squares = [(i, last_use[name]) for i, (name, square, _) in enumerate(rows) if square]
    live = [
        sum(1 for start, end in squares if start == i or start < i < end) for i in range(len(rows))
    ]
    return max(live, default=0)


def _optimized_hlo(fn, x):
    """The optimized, scheduled HLO of `fn(x)` compiled by XLA (TensorFlow or JAX)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True).experimental_get_compiler_ir(tf.constant(x))(
            stage="optimized_hlo"
        )
    import jax

    return jax.jit(fn).lower(x).compile().as_text()


@pytest.mark.skipif(
    not keras_fmicl.utils.backend_ops.elementwise_ops_fuse(), reason="XLA-compiled backends only"
)
@pytest.mark.parametrize(
    "name, similarity",
    [("kl", "gaussian"), ("js", "gaussian"), ("vlc", "gaussian"), ("vlc", "cosine")],
)
def test_one_square_buffer_under_xla(name, similarity):
    """The compiled forward and backward keep one `(M, M)` array live at a time.

    The matmul's output is overwritten by the scores, then (after their row
    sums) by the gradient's weights. A second `(M, M)` array (VLC's sigmoid
    kept beside its squares, JS's matrix beside its softplus, or the weights
    scheduled before the row sums) doubles the temporary memory: 33-36 MiB
    at M = 2048, past glibc's largest mmap threshold (32 MiB), so that a
    call may map and page-fault fresh memory (VLC on TensorFlow at N = 1024
    took 1.55x as long in a paired benchmark).
    """
    loss = keras_fmicl.FMICLLoss(divergence=name, similarity=similarity)
    y = embeddings(n=64, v=2, d=8, seed=1)

    def value_and_gradient(x):
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            with tf.GradientTape() as tape:
                tape.watch(x)
                value = loss(None, x)
            return value, tape.gradient(value, x)
        import jax

        return jax.value_and_grad(lambda x: loss(None, x))(x)

    text = _optimized_hlo(value_and_gradient, y)
    assert _peak_square_buffers(text, 128) == 1


def test_exponential_forms_are_folded_into_the_matmul():
    """KL, Pearson, squared Hellinger and Tsallis: one exp per pair."""
    for name, k in [("kl", 1.0), ("pearson", 2.0), ("squared_hellinger", 0.5), ("tsallis", 1.5)]:
        for similarity in (keras_fmicl.Gaussian(0.5), keras_fmicl.Cosine(0.2)):
            plan = fast_paths.score_plan(similarity, divergences.get(name))
            assert plan.path == "exp_in_matmul" and plan.negative_core is ops.exp
            assert plan.scale == k * similarity.cosine_scale
    # Beyond float32's exact exponent range the declared (capped) form remains.
    plan = fast_paths.score_plan(keras_fmicl.Cosine(0.02), divergences.get("pearson"))
    assert plan.path == "negative_form" and plan.scale == 50.0


def test_info_nce_plan_is_the_scaled_cosine():
    plan = fast_paths.score_plan(keras_fmicl.Cosine(0.25))
    assert (plan.scale, plan.offset, plan.path, plan.negative_core) == (4.0, 0.0, None, None)
    np.testing.assert_allclose(to_numpy(plan.log_ratio(ops.convert_to_tensor([2.0]))), [2.0])


# ------------------------------------------------------------- user hints


class HintedKL(keras_fmicl.Divergence):
    """A user's KL, written from scratch, declaring KL's hint."""

    negative_form = divergences.NegativeForm("exp", k=1.0)

    def f(self, u):
        return u * ops.log(u)

    def f_prime(self, u):
        return ops.log(u) + 1.0

    def positive_score(self, log_ratio):
        return ops.convert_to_tensor(log_ratio) + 1.0

    def negative_score(self, log_ratio):
        return ops.exp(ops.convert_to_tensor(log_ratio))


class PlainKL(HintedKL):
    """The same scores without the hint: the generic path."""

    negative_form = None


class OverridingKL(keras_fmicl.KullbackLeibler):
    """Changes the negative score but not the (inherited) hint: stale."""

    def negative_score(self, log_ratio):
        return 2.0 * ops.exp(ops.convert_to_tensor(log_ratio))


@pytest.mark.parametrize("similarity", [keras_fmicl.Gaussian(0.7), keras_fmicl.Cosine(0.4)])
def test_a_user_divergence_declaring_a_hint_takes_the_same_fast_path(similarity):
    builtin = fast_paths.score_plan(similarity, keras_fmicl.KullbackLeibler())
    hinted = fast_paths.score_plan(similarity, HintedKL())
    plain = fast_paths.score_plan(similarity, PlainKL())
    assert hinted.path == builtin.path == "exp_in_matmul"
    assert (hinted.scale, hinted.negative_scale, hinted.core_bounds) == (
        builtin.scale, builtin.negative_scale, builtin.core_bounds,
    )  # fmt: skip
    assert plain.path == "generic" and plain.derivative is None and plain.core_bounds is None
    y = embeddings(n=6, v=2, d=4, seed=3)
    weights = np.random.default_rng(4).uniform(0.5, 1.5, size=6).astype("float32")
    results = {}
    for divergence in (keras_fmicl.KullbackLeibler(), HintedKL(), PlainKL()):
        loss = keras_fmicl.FMICLLoss(divergence, similarity=similarity, reduction=None)
        results[type(divergence).__name__] = value_and_grad(
            lambda x, loss=loss: ops.sum(loss(None, x) * ops.convert_to_tensor(weights)), y
        )
    (value, (grad,)), (hinted_value, (hinted_grad,)) = results["KullbackLeibler"], results["HintedKL"]
    np.testing.assert_array_equal(hinted_value, value)
    np.testing.assert_array_equal(hinted_grad, grad)
    plain_value, (plain_grad,) = results["PlainKL"]
    np.testing.assert_allclose(plain_value, value, rtol=1e-5)
    np.testing.assert_allclose(plain_grad, grad, rtol=1e-4, atol=1e-5 * np.abs(grad).max())


def test_an_inherited_hint_is_ignored_when_the_score_is_overridden():
    assert fast_paths.negative_form(OverridingKL()) is None
    assert fast_paths.score_plan(keras_fmicl.Gaussian(), OverridingKL()).path == "generic"
    # Declared on the instance, or again on the subclass: taken.
    declared = OverridingKL()
    declared.negative_form = divergences.NegativeForm("exp", scale=2.0)
    assert fast_paths.score_plan(keras_fmicl.Gaussian(), declared).path == "exp_in_matmul"
    y = embeddings(n=5, seed=6)
    values = [
        to_numpy(keras_fmicl.fmicl(None, y, divergence=d, sigma=0.7))
        for d in (OverridingKL(), declared)
    ]
    np.testing.assert_allclose(values[0], values[1], rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"core": "log"}, "core="), ({"core": "exp", "k": float("nan")}, "k="), ({"core": "exp", "k": 0.0}, "k=")],
)
def test_a_bad_negative_form_raises_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        divergences.NegativeForm(**kwargs)


@keras.saving.register_keras_serializable(package="keras_fmicl_tests")
class HalfCosine(keras_fmicl.Similarity):
    """Not affine as far as the loss knows (`log_ratio_offset` is None)."""

    name = "half_cosine"

    def log_ratio_from_cosine(self, cosine):
        return 0.5 * cosine


@pytest.mark.parametrize("name", ["js", "vlc"])
def test_no_one_matmul_gradient_for_a_similarity_that_is_not_affine(name):
    """The core's derivative in `l` is not its derivative in the matrix then.

    (Before the fast paths moved here, JS and VLC took the one-matmul
    gradient with the derivative in `l`, missing the factor 0.5.)
    """
    plan = fast_paths.score_plan(HalfCosine(), divergences.get(name))
    assert plan.derivative is None
    y = embeddings(n=6, v=2, d=4, seed=8)

    class Generic(keras_fmicl.Divergence):
        negative_score = staticmethod(divergences.get(name).negative_score)
        positive_score = staticmethod(divergences.get(name).positive_score)

    grads = [
        value_and_grad(lambda x, d=d: ops.sum(keras_fmicl.fmicl(None, x, d, HalfCosine())), y)[1][0]
        for d in (name, Generic())
    ]
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_the_range_warning_counts_every_exponent():
    assert fast_paths.largest_exponent(divergences.get("pearson"), keras_fmicl.Cosine(0.02)) == 100.0
    assert fast_paths.largest_exponent(divergences.get("js"), keras_fmicl.Cosine(0.001)) == 0.0
    with pytest.warns(UserWarning, match=r"exp\(100\)"):
        fast_paths.warn_if_beyond_exact_range(divergences.get("pearson"), keras_fmicl.Cosine(0.02))


@pytest.mark.parametrize(
    "divergence, sigma, saturates",
    [
        # l at cosine 0.9 is (0.9 - 1) / sigma^2; e^(k l) underflows below l k = -103.3
        ("pearson", 1e-3, True),
        ("tsallis", 1e-3, True),
        ("vincze_le_cam", 1e-3, True),  # sigmoid(l)^2 ~ e^(2 l)
        ("kl", 1e-3, True),  # the negatives' e^l
        ("js", 1e-3, True),  # softplus(l) ~ e^l
        ("pearson", 0.03, True),  # 2 * -111 < -103.3
        ("pearson", 0.05, False),  # 2 * -40
        ("kl", 0.03, True),  # -111
        ("kl", 0.032, False),  # -97.7
        ("js", None, False),
        ("squared_hellinger", 1e-3, True),  # the negatives' e^(l/2)
    ],
)
def test_warns_once_when_exponentials_underflow_for_close_pairs(divergence, sigma, saturates):
    """Issue 27 item 9: Pearson/Tsallis/VLC at sigma 1e-3 had a flat loss and no warning."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        keras_fmicl.FMICLLoss(divergence, sigma=sigma)
    underflow = [w for w in caught if "underflows to 0" in str(w.message)]
    assert len(underflow) == (1 if saturates else 0), [str(w.message) for w in caught]
    if saturates:
        assert underflow[0].filename == __file__  # points at the user's call


def test_the_exact_range_warning_names_a_temperature_that_avoids_it():
    """Pearson + cosine at T 0.01 reaches e^200: the warning says training can diverge and gives T >= 0.045."""
    with pytest.warns(UserWarning, match=r"diverge.*temperature >= 0\.045"):
        keras_fmicl.FMICLLoss("pearson", similarity="cosine", temperature=0.01)
    with pytest.warns(UserWarning, match=r"sigma >= "):
        keras_fmicl.FMICLLoss("squared_hellinger", sigma=0.05)


@pytest.mark.parametrize("alpha", [1e39, float("inf"), float("nan"), 0.0, -1.0])
def test_alpha_beyond_float32_or_not_positive_is_refused(alpha):
    """Issue 27 item 9: alpha = 1e39 gave a loss of +inf (alpha is inf in float32)."""
    with pytest.raises(ValueError, match="`alpha` must"):
        keras_fmicl.FMICLLoss("js", alpha=alpha)
    with pytest.raises(ValueError, match="`alpha` must"):
        keras_fmicl.fmicl(None, np.zeros((4, 2, 3), "float32"), "js", alpha=alpha)
