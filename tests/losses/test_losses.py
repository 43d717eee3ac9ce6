import dataclasses
import re

import keras
import numpy as np
import pytest
from keras import ops

import keras_fmicl
from keras_fmicl.losses import fast_paths
from tests import reference
from tests.helpers import to_numpy
from tests.helpers import traced
from tests.helpers import value_and_grad

NAMES = list(keras_fmicl.losses.divergences.names())
SIMILARITIES = [("gaussian", 0.6), ("cosine", 0.4)]
LABELS = np.array([0, 1, 0, 2, 1, 0])


def embeddings(n=6, v=2, d=4, seed=0, dtype="float32"):
    return np.random.default_rng(seed).normal(size=(n, v, d)).astype(dtype)


def fmicl_loss(name, similarity, parameter, alpha=1.0, **kwargs):
    kwargs.setdefault("reduction", None)
    key = "sigma" if similarity == "gaussian" else "temperature"
    return keras_fmicl.FMICLLoss(
        name, similarity=similarity, alpha=alpha, **{key: parameter}, **kwargs
    )


def scale_tolerance(expected, rtol):
    return rtol * max(1.0, float(np.abs(expected).max()))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("similarity, parameter", SIMILARITIES)
@pytest.mark.parametrize("views", [2, 3])
@pytest.mark.parametrize("supervised", [False, True])
def test_fmicl_matches_reference_float32(name, similarity, parameter, views, supervised):
    y_pred = embeddings(v=views)
    labels = LABELS if supervised else None
    expected = reference.fmicl_loss(
        y_pred, labels, name, similarity, parameter, alpha=1.3
    )
    loss = fmicl_loss(name, similarity, parameter, alpha=1.3)
    got = to_numpy(loss(labels, y_pred))
    assert got.shape == (6,)
    np.testing.assert_allclose(
        got, expected, rtol=1e-4, atol=scale_tolerance(expected, 1e-5)
    )


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("similarity, parameter", SIMILARITIES)
@pytest.mark.parametrize("views, supervised", [(2, False), (3, True)])
def test_fmicl_matches_reference_float64(name, similarity, parameter, views, supervised, float64):
    y_pred = embeddings(v=views, dtype="float64")
    labels = LABELS if supervised else None
    expected = reference.fmicl_loss(y_pred, labels, name, similarity, parameter, alpha=0.7)
    got = keras_fmicl.fmicl(
        labels,
        y_pred,
        divergence=name,
        similarity=similarity,
        alpha=0.7,
        **{"sigma" if similarity == "gaussian" else "temperature": parameter},
    )
    assert keras.backend.standardize_dtype(got.dtype) == "float64"
    np.testing.assert_allclose(to_numpy(got), expected, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("similarity, parameter", SIMILARITIES)
@pytest.mark.parametrize("views, supervised", [(2, False), (3, True)])
def test_fmicl_gradient_matches_reference_finite_differences(
    name, similarity, parameter, views, supervised, float64
):
    n, d = 4, 3
    y_pred = embeddings(n=n, v=views, d=d, seed=1, dtype="float64")
    labels = np.array([0, 1, 0, 1]) if supervised else None
    weights = np.random.default_rng(2).uniform(0.5, 1.5, size=n)
    key = "sigma" if similarity == "gaussian" else "temperature"

    def objective(y):
        per_sample = keras_fmicl.fmicl(
            labels, y, divergence=name, similarity=similarity, alpha=0.8, **{key: parameter}
        )
        return ops.sum(per_sample * ops.convert_to_tensor(weights))

    _, (grad,) = value_and_grad(objective, y_pred)

    def reference_objective(y):
        return np.sum(
            weights
            * reference.fmicl_loss(y, labels, name, similarity, parameter, alpha=0.8)
        )

    numerical = np.zeros_like(y_pred)
    h = 1e-6
    for index in np.ndindex(*y_pred.shape):
        step = np.zeros_like(y_pred)
        step[index] = h
        numerical[index] = (
            reference_objective(y_pred + step) - reference_objective(y_pred - step)
        ) / (2 * h)
    np.testing.assert_allclose(grad, numerical, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("similarity, parameter", SIMILARITIES + [("gaussian", 1.0), ("cosine", 0.5)])
@pytest.mark.parametrize("subtract", [False, True])
def test_negatives_by_subtraction_and_by_mask_match_reference(
    name, similarity, parameter, subtract, monkeypatch
):
    """Both ways of summing the negatives (fast_paths.negative_sum), forced."""
    monkeypatch.setattr(fast_paths, "MAX_ERROR_AMPLIFICATION", 1e30 if subtract else 0.0)
    taken = []
    original = fast_paths.subtraction_is_accurate
    monkeypatch.setattr(
        fast_paths,
        "subtraction_is_accurate",
        lambda *args: taken.append(original(*args)) or taken[-1],
    )
    y_pred = embeddings(n=16, v=2, d=6, seed=40)
    expected = reference.fmicl_loss(y_pred, None, name, similarity, parameter, alpha=1.1)
    got = to_numpy(fmicl_loss(name, similarity, parameter, alpha=1.1)(None, y_pred))
    assert taken == [subtract]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=scale_tolerance(expected, 1e-5))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("similarity, parameter", SIMILARITIES)
def test_one_matmul_gradient_of_the_negatives_equals_autodiff(name, similarity, parameter, monkeypatch):
    """The symmetric path (`fast_paths.symmetric_row_sum`) against plain autodiff.

    Taken by every built-in divergence without keys, on both negative sums
    (but VLC's subtraction on torch, whose squared-norm row sums keep
    autodiff), never by a user's.
    """
    y_pred = embeddings(n=16, v=2, d=6, seed=41)
    loss = fmicl_loss(name, similarity, parameter, alpha=1.3)
    weights = np.random.default_rng(7).uniform(0.5, 1.5, size=16).astype("float32")
    calls = []
    original = fast_paths.symmetric_row_sum

    def objective(y):
        return ops.sum(loss(None, y) * ops.convert_to_tensor(weights))

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    subtracted = []
    accurate = fast_paths.subtraction_is_accurate
    monkeypatch.setattr(fast_paths, "symmetric_row_sum", counting)
    monkeypatch.setattr(
        fast_paths,
        "subtraction_is_accurate",
        lambda *args: subtracted.append(accurate(*args)) or subtracted[-1],
    )
    value, (grad,) = value_and_grad(objective, y_pred)
    vlc_on_torch = name == "vlc" and keras.backend.backend() == "torch"
    assert bool(calls) == (not (vlc_on_torch and subtracted[0]))

    # The same plan without the derivative: autodiff.
    plan = dataclasses.replace(loss.score_plan(), derivative=None)
    monkeypatch.setattr(loss, "score_plan", lambda: plan)
    calls.clear()
    plain_value, (plain_grad,) = value_and_grad(objective, y_pred)
    assert not calls
    np.testing.assert_allclose(value, plain_value, rtol=1e-5)
    np.testing.assert_allclose(grad, plain_grad, rtol=1e-4, atol=1e-5 * np.abs(plain_grad).max())


# Every divergence with the default similarity; the cosine kernel with KL and
# VLC (the one that once broke), not the full product: each case compiles
# for ~5 s on CI.
COMPILE_CASES = [(name, "gaussian") for name in NAMES] + [("kl", "cosine"), ("vlc", "cosine")]


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="torch.compile")
@pytest.mark.parametrize("name, similarity", COMPILE_CASES)
def test_torch_compile_traces_the_loss_as_one_graph(name, similarity):
    """No graph break (a break made VLC fall back to eager under torch.compile)."""
    import torch

    loss = keras_fmicl.FMICLLoss(name, similarity=similarity)
    y_pred = torch.tensor(embeddings(n=8), requires_grad=True)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(lambda y: loss(None, y))(y_pred)
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0)


def test_a_user_divergence_keeps_autodiff_for_its_negatives(monkeypatch):
    calls = []
    original = fast_paths.symmetric_row_sum
    monkeypatch.setattr(
        fast_paths, "symmetric_row_sum", lambda *a, **k: calls.append(1) or original(*a, **k)
    )

    class ReverseKL(keras_fmicl.Divergence):
        def f(self, u):
            return -ops.log(u)

        def f_prime(self, u):
            return -1.0 / u

    value_and_grad(lambda y: ops.sum(keras_fmicl.FMICLLoss(ReverseKL())(None, y)), embeddings())
    assert not calls


@pytest.mark.parametrize("views", [2, 3])
@pytest.mark.parametrize("supervised", [False, True])
@pytest.mark.parametrize("similarity, parameter", [("cosine", 0.3), ("gaussian", 0.8)])
def test_info_nce_matches_reference(views, supervised, similarity, parameter):
    y_pred = embeddings(v=views, seed=3)
    labels = LABELS if supervised else None
    expected = reference.info_nce_loss(y_pred, labels, similarity, parameter)
    loss = keras_fmicl.InfoNCELoss(
        temperature=parameter if similarity == "cosine" else None,
        similarity=similarity,
        sigma=parameter if similarity == "gaussian" else None,
        reduction=None,
    )
    got = to_numpy(loss(labels, y_pred))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("views, supervised", [(2, False), (3, True)])
def test_info_nce_gradient_matches_reference_finite_differences(views, supervised, float64):
    n, d = 4, 3
    y_pred = embeddings(n=n, v=views, d=d, seed=4, dtype="float64")
    labels = np.array([0, 1, 1, 0]) if supervised else None

    def objective(y):
        return ops.sum(keras_fmicl.info_nce(labels, y, temperature=0.3))

    _, (grad,) = value_and_grad(objective, y_pred)
    numerical = np.zeros_like(y_pred)
    h = 1e-6
    for index in np.ndindex(*y_pred.shape):
        step = np.zeros_like(y_pred)
        step[index] = h
        numerical[index] = (
            np.sum(reference.info_nce_loss(y_pred + step, labels, "cosine", 0.3))
            - np.sum(reference.info_nce_loss(y_pred - step, labels, "cosine", 0.3))
        ) / (2 * h)
    np.testing.assert_allclose(grad, numerical, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_queries_against_keys_and_queue_match_reference(name):
    """MoCo v3 (in-batch keys of the other views) and MoCo v2 (queue only)."""
    queries = embeddings(n=5, v=2, seed=5)
    keys = embeddings(n=5, v=2, seed=6)
    queue = np.random.default_rng(7).normal(size=(9, 4)).astype("float32")
    queue_mask = np.array([1, 1, 1, 0, 1, 1, 0, 1, 1], bool)
    loss = fmicl_loss(name, "gaussian", 0.7)
    v3 = to_numpy(loss.contrast(queries, keys=keys))
    np.testing.assert_allclose(
        v3, reference.fmicl_loss(queries, None, name, "gaussian", 0.7, keys=keys), rtol=1e-4, atol=1e-5
    )
    v2 = to_numpy(
        loss.contrast(queries, keys=keys, queue=queue, queue_mask=queue_mask, in_batch_negatives=False)
    )
    expected_v2 = reference.fmicl_loss(
        queries, None, name, "gaussian", 0.7, keys=keys, queue=queue,
        queue_mask=queue_mask, in_batch_negatives=False,
    )
    np.testing.assert_allclose(v2, expected_v2, rtol=1e-4, atol=1e-5)
    both = to_numpy(loss.contrast(queries, keys=keys, queue=queue))
    expected_both = reference.fmicl_loss(
        queries, None, name, "gaussian", 0.7, keys=keys, queue=queue
    )
    np.testing.assert_allclose(both, expected_both, rtol=1e-4, atol=1e-5)
    # the functional form takes the same arguments
    functional = keras_fmicl.fmicl(
        None, queries, name, "gaussian", sigma=0.7, alpha=1.0, keys=keys, queue=queue,
        queue_mask=queue_mask, in_batch_negatives=False,
    )
    np.testing.assert_allclose(to_numpy(functional), expected_v2, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["kl", "js", "vlc"])
def test_keys_with_three_views_and_labels_match_reference(name):
    queries = embeddings(n=6, v=3, seed=30)
    keys = embeddings(n=6, v=3, seed=31)
    loss = fmicl_loss(name, "cosine", 0.5)
    np.testing.assert_allclose(
        to_numpy(loss.contrast(queries, keys=keys, labels=LABELS)),
        reference.fmicl_loss(queries, LABELS, name, "cosine", 0.5, keys=keys),
        rtol=1e-4,
        atol=1e-5,
    )
    nce = keras_fmicl.InfoNCELoss(temperature=0.3, reduction=None)
    np.testing.assert_allclose(
        to_numpy(nce.contrast(queries, keys=keys, labels=LABELS)),
        reference.info_nce_loss(queries, LABELS, "cosine", 0.3, keys=keys),
        rtol=1e-4,
        atol=1e-5,
    )


def test_info_nce_queries_against_keys_and_queue_match_reference():
    queries = embeddings(n=5, v=2, seed=8)
    keys = embeddings(n=5, v=2, seed=9)
    queue = np.random.default_rng(10).normal(size=(7, 4)).astype("float32")
    queue_mask = np.array([1, 0, 1, 1, 0, 1, 1], bool)
    loss = keras_fmicl.InfoNCELoss(temperature=0.25, reduction=None)
    np.testing.assert_allclose(
        to_numpy(loss.contrast(queries, keys=keys, queue=queue, queue_mask=queue_mask, in_batch_negatives=False)),
        reference.info_nce_loss(
            queries, None, "cosine", 0.25, keys=keys, queue=queue, queue_mask=queue_mask,
            in_batch_negatives=False,
        ),
        rtol=1e-4,
        atol=1e-5,
    )
    np.testing.assert_allclose(
        to_numpy(loss.contrast(queries, keys=keys)),
        reference.info_nce_loss(queries, None, "cosine", 0.25, keys=keys),
        rtol=1e-4,
        atol=1e-5,
    )
    np.testing.assert_allclose(
        to_numpy(loss.contrast(queries, keys=keys, queue=queue, in_batch_negatives=False)),
        reference.info_nce_loss(
            queries, None, "cosine", 0.25, keys=keys, queue=queue, in_batch_negatives=False
        ),
        rtol=1e-4,
        atol=1e-5,
    )


def test_kl_gaussian_is_alignment_plus_gaussian_potential():
    """Contract section 5: loss = mean d_p^2/(2 s^2) - 1 + alpha mean e^{-d_n^2/(2 s^2)}."""
    y_pred = embeddings(n=5, v=3, seed=11)
    sigma, alpha = 0.45, 1.7
    z = reference.normalise(y_pred)
    n, v, _ = z.shape
    expected = np.zeros(n)
    for i in range(n):
        for a in range(v):
            pos = [np.sum((z[i, a] - z[i, w]) ** 2) for w in range(v) if w != a]
            neg = [np.sum((z[i, a] - z[j, w]) ** 2) for j in range(n) if j != i for w in range(v)]
            expected[i] += (
                np.mean(pos) / (2 * sigma**2) - 1 + alpha * np.mean(np.exp(-np.array(neg) / (2 * sigma**2)))
            ) / v
    got = keras_fmicl.FMICLLoss("kl", sigma=sigma, alpha=alpha, reduction=None)(None, y_pred)
    np.testing.assert_allclose(to_numpy(got), expected, rtol=1e-5, atol=1e-6)


def test_info_nce_is_half_of_keras_cv_simclr_loss():
    keras_cv = pytest.importorskip("keras_cv")
    y_pred = embeddings(n=8, v=2, d=16, seed=12)
    for temperature in [0.1, 0.5]:
        ours = keras_fmicl.InfoNCELoss(temperature=temperature, reduction=None)(None, y_pred)
        theirs = keras_cv.losses.SimCLRLoss(temperature=temperature, reduction=None)(
            y_pred[:, 0], y_pred[:, 1]
        )
        np.testing.assert_allclose(to_numpy(ours), to_numpy(theirs) / 2.0, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("supervised", [False, True])
def test_metrics_match_reference(name, supervised):
    y_pred = embeddings(v=3, seed=13)
    labels = LABELS if supervised else None
    loss = fmicl_loss(name, "gaussian", 0.6)
    per_sample, metrics = loss.contrast(y_pred, labels=labels, return_metrics=True)
    alignment, uniformity = reference.alignment_uniformity(y_pred, labels)
    _, estimate = reference.fmicl_loss(
        y_pred, labels, name, "gaussian", 0.6, alpha=1.0, return_estimate=True
    )
    assert float(metrics["alignment"]) == pytest.approx(alignment, rel=1e-5)
    assert float(metrics["uniformity"]) == pytest.approx(uniformity, rel=1e-5, abs=1e-6)
    assert float(metrics["mi_estimate"]) == pytest.approx(estimate, rel=1e-4, abs=1e-5)
    # with alpha = 1 the estimate is the negated loss
    assert float(metrics["mi_estimate"]) == pytest.approx(-float(ops.mean(per_sample)), rel=1e-5, abs=1e-6)


def test_info_nce_mi_estimate_is_the_bound():
    y_pred = embeddings(n=6, v=2, seed=14)
    per_sample, metrics = keras_fmicl.InfoNCELoss(reduction=None).contrast(
        y_pred, return_metrics=True
    )
    # 2 (N - 1) = 10 negatives per anchor
    expected = np.log(11.0) - np.mean(to_numpy(per_sample))
    assert float(metrics["mi_estimate"]) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_anchor_without_negatives_contributes_zero_negative_term(name):
    """Every sample shares the label: N(a) is empty, contributing 0, not NaN."""
    y_pred = embeddings(n=4, v=2, d=3, seed=15)
    labels = np.zeros(4, "int32")
    loss = fmicl_loss(name, "gaussian", 0.6)
    got = to_numpy(loss(labels, y_pred))
    expected = reference.fmicl_loss(y_pred, labels, name, "gaussian", 0.6)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    _, (grad,) = value_and_grad(lambda y: ops.sum(loss(labels, y)), y_pred)
    assert np.all(np.isfinite(grad))
    nce = keras_fmicl.InfoNCELoss(reduction=None)
    np.testing.assert_allclose(to_numpy(nce(labels, y_pred)), 0.0, atol=1e-7)
    _, (grad,) = value_and_grad(lambda y: ops.sum(nce(labels, y)), y_pred)
    assert np.all(np.isfinite(grad))


def test_reductions_and_sample_weight():
    y_pred = embeddings(seed=16)
    per_sample = to_numpy(keras_fmicl.FMICLLoss("js", reduction=None)(None, y_pred))
    assert per_sample.shape == (6,)
    mean = float(keras_fmicl.FMICLLoss("js")(None, y_pred))
    assert mean == pytest.approx(per_sample.mean(), rel=1e-6)
    total = float(keras_fmicl.FMICLLoss("js", reduction="sum")(None, y_pred))
    assert total == pytest.approx(per_sample.sum(), rel=1e-6)
    weights = np.array([1.0, 0.0, 2.0, 1.0, 0.5, 0.0], "float32")
    weighted = float(keras_fmicl.FMICLLoss("js")(None, y_pred, sample_weight=weights))
    assert weighted == pytest.approx(np.sum(per_sample * weights) / 6, rel=1e-5)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("similarity", ["gaussian", "cosine"])
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_finite_under_mixed_precision(name, similarity, policy):
    """A model computing in half precision: finite loss and weight gradients."""
    keras.config.set_dtype_policy(policy)
    n, v, d = 8, 2, 16
    model = keras.Sequential(
        [keras.Input((v, 12)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(d)]
    )
    half = "float16" if policy == "mixed_float16" else "bfloat16"
    assert model.layers[-1].compute_dtype == half
    x = np.random.default_rng(17).normal(size=(n, v, 12)).astype("float32")
    x[0, 1] = x[0, 0]  # an identical pair
    x[1, 1] = 0.0  # and a zero input row
    loss = keras_fmicl.FMICLLoss(name, similarity=similarity)
    weights = model.trainable_weights

    def objective(*values):
        outputs, _ = model.stateless_call(list(values), [], x)
        assert keras.backend.standardize_dtype(outputs.dtype) == half
        return loss(None, outputs)

    value, grads = value_and_grad(objective, *[to_numpy(w) for w in weights])
    assert np.isfinite(value)
    for grad in grads:
        assert np.all(np.isfinite(grad))


def _extreme_cases():
    rng = np.random.default_rng(18)
    base = rng.normal(size=(4, 2, 5)).astype("float32")
    identical = np.repeat(base[:1, :1], 4, axis=0).repeat(2, axis=1)
    antipodal = base.copy()
    antipodal[:, 1] = -antipodal[:, 0]
    zero = base.copy()
    zero[2, 0] = 0.0
    return {
        "random": base,
        "identical": identical,
        "antipodal": antipodal,
        "zero_vector": zero,
    }


@pytest.mark.filterwarnings("ignore:With .* scores can reach")
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", ["random", "identical", "antipodal", "zero_vector"])
@pytest.mark.parametrize(
    "similarity, parameter",
    [("gaussian", 0.1), ("gaussian", 0.05), ("cosine", 0.05), ("cosine", 0.01), ("gaussian", 0.5)],
)
def test_finite_for_extreme_inputs(name, case, similarity, parameter):
    y_pred = _extreme_cases()[case]
    loss = fmicl_loss(name, similarity, parameter, reduction="sum_over_batch_size")
    value, (grad,) = value_and_grad(lambda y: loss(None, y), y_pred)
    assert np.isfinite(value), (name, case)
    assert np.all(np.isfinite(grad)), (name, case)


@pytest.mark.parametrize("case", ["random", "identical", "antipodal", "zero_vector"])
@pytest.mark.parametrize(
    "similarity, parameter",
    [("cosine", 0.05), ("cosine", 0.01), ("cosine", 0.002), ("gaussian", 0.1), ("gaussian", 0.05)],
)
@pytest.mark.parametrize("supervised", [False, True])
def test_info_nce_finite_for_extreme_inputs(case, similarity, parameter, supervised):
    y_pred = _extreme_cases()[case]
    labels = np.array([0, 1, 0, 0]) if supervised else None
    nce = keras_fmicl.InfoNCELoss(
        temperature=parameter if similarity == "cosine" else None,
        similarity=similarity,
        sigma=parameter if similarity == "gaussian" else None,
    )
    value, (grad,) = value_and_grad(lambda y: nce(labels, y), y_pred)
    assert np.isfinite(value) and np.all(np.isfinite(grad)), (case, similarity, parameter)


SCALE_LOSSES = {
    "fmicl_gaussian_kl": lambda: keras_fmicl.FMICLLoss("kl", sigma=0.7, reduction=None),
    "fmicl_cosine_js": lambda: keras_fmicl.FMICLLoss(
        "js", similarity="cosine", temperature=0.3, reduction=None
    ),
    "fmicl_vlc": lambda: keras_fmicl.FMICLLoss("vlc", reduction=None),
    "info_nce": lambda: keras_fmicl.InfoNCELoss(reduction=None),
    "supcon": lambda: keras_fmicl.InfoNCELoss(supervised_form="supcon", reduction=None),
}


@pytest.mark.parametrize(
    "loss_name, supervised",
    [
        ("fmicl_gaussian_kl", False),
        ("fmicl_cosine_js", True),
        ("fmicl_vlc", False),
        ("info_nce", False),
        ("supcon", True),
    ],
)
def test_losses_are_invariant_to_the_scale_of_the_embeddings(loss_name, supervised):
    """Scale-invariant normalisation: same loss, gradient scaled by 1/scale.

    (Before: 1e-6 fell under the squared-norm floor, 1e30 overflowed with a
    zero gradient.)
    """
    y_pred = embeddings(n=4, v=3, d=5, seed=32)
    labels = np.array([0, 1, 0, 1]) if supervised else None
    loss = SCALE_LOSSES[loss_name]()
    weights = ops.convert_to_tensor(np.array([1.0, 0.5, 2.0, 1.5], "float32"))

    def objective(y):
        return ops.sum(loss(labels, y) * weights)

    value, (grad,) = value_and_grad(objective, y_pred)
    per_sample = to_numpy(loss(labels, y_pred))
    for scale in (1e-30, 1e-6, 1e30):
        scaled = y_pred * np.float32(scale)
        scaled_value, (scaled_grad,) = value_and_grad(objective, scaled)
        np.testing.assert_allclose(scaled_value, value, rtol=1e-5, atol=1e-6, err_msg=str(scale))
        np.testing.assert_allclose(
            to_numpy(loss(labels, scaled)), per_sample, rtol=1e-5, atol=1e-6, err_msg=str(scale)
        )
        assert np.all(np.isfinite(scaled_grad)) and np.abs(scaled_grad).max() > 0, scale
        np.testing.assert_allclose(
            scaled_grad * scale, grad, rtol=1e-4, atol=1e-5 * np.abs(grad).max(), err_msg=str(scale)
        )


@pytest.mark.parametrize(
    "loss_name, policy, half, scale",
    [
        ("fmicl_gaussian_kl", "mixed_float16", "float16", 1e-3),
        ("supcon", "mixed_float16", "float16", 1e3),
        ("fmicl_cosine_js", "mixed_bfloat16", "bfloat16", 1e-30),
        ("fmicl_gaussian_kl", "mixed_bfloat16", "bfloat16", 1e30),
    ],
)
def test_extreme_scales_in_half_precision_give_finite_values_and_gradients(
    loss_name, policy, half, scale
):
    """Half-precision embeddings at extreme scales: finite, and the float32 loss.

    The loss computes in float32 from the half-precision values (whose
    squares would overflow or underflow in float16 at these scales).
    """
    keras.config.set_dtype_policy(policy)
    y_pred = embeddings(n=4, v=2, d=6, seed=33)
    loss = SCALE_LOSSES[loss_name]()

    def objective(y):
        return ops.sum(loss(None, ops.cast(y * scale, half)))

    value, (grad,) = value_and_grad(objective, y_pred)
    assert np.isfinite(value)
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0
    rounded = to_numpy(ops.cast(ops.cast(y_pred * scale, half), "float32"))
    expected = to_numpy(loss(None, rounded))
    np.testing.assert_allclose(to_numpy(loss(None, ops.cast(y_pred * scale, half))), expected, rtol=1e-5, atol=1e-6)


def test_warns_when_scores_leave_the_exact_float32_range():
    with pytest.warns(UserWarning, match=r"pearson scores can reach exp\(100\)"):
        keras_fmicl.FMICLLoss("pearson", similarity="cosine", temperature=0.02)
    with pytest.warns(UserWarning, match=r"squared_hellinger scores can reach exp\(100\)"):
        keras_fmicl.FMICLLoss("hellinger", sigma=0.1)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        keras_fmicl.FMICLLoss("pearson", similarity="cosine", temperature=0.05)
        keras_fmicl.FMICLLoss("js", similarity="cosine", temperature=0.001)


@pytest.mark.parametrize(
    "loss",
    [
        keras_fmicl.FMICLLoss("js", sigma=0.3, alpha=2.0),
        keras_fmicl.FMICLLoss(keras_fmicl.Tsallis(order=2.5), similarity="cosine", temperature=0.1),
        keras_fmicl.FMICLLoss("chi2", reduction=None, name="chi"),
        keras_fmicl.InfoNCELoss(temperature=0.07),
        keras_fmicl.InfoNCELoss(similarity="gaussian", sigma=0.4, reduction="sum"),
    ],
    ids=["js", "tsallis", "pearson", "infonce", "infonce_gaussian"],
)
def test_config_round_trips(loss):
    y_pred = embeddings(seed=19)
    expected = to_numpy(loss(None, y_pred))
    restored = type(loss).from_config(loss.get_config())
    np.testing.assert_allclose(to_numpy(restored(None, y_pred)), expected, rtol=1e-6)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is type(loss)
    assert restored.get_config() == loss.get_config()
    np.testing.assert_allclose(to_numpy(restored(None, y_pred)), expected, rtol=1e-6)


@keras.saving.register_keras_serializable(package="keras_fmicl_tests")
class ReverseKL(keras_fmicl.Divergence):
    name = "reverse_kl"

    def f(self, u):
        return -ops.log(u)

    def f_prime(self, u):
        return -1.0 / u


def test_custom_divergence_through_the_loss():
    y_pred = embeddings(n=5, v=2, seed=20)
    loss = keras_fmicl.FMICLLoss(ReverseKL(), sigma=0.7, alpha=1.3, reduction=None)
    z = reference.normalise(y_pred)
    expected = np.zeros(5)
    for i in range(5):
        for a in range(2):
            lp = -np.sum((z[i, a] - z[i, 1 - a]) ** 2) / (2 * 0.49)
            ln = [-np.sum((z[i, a] - z[j, w]) ** 2) / (2 * 0.49) for j in range(5) if j != i for w in range(2)]
            # f'(u) = -1/u; f*(f'(u)) = u f'(u) - f(u) = -1 + log u
            expected[i] += (-(-np.exp(-lp)) + 1.3 * np.mean(-1.0 + np.array(ln))) / 2
    np.testing.assert_allclose(to_numpy(loss(None, y_pred)), expected, rtol=1e-5, atol=1e-6)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored.divergence, ReverseKL)


@keras.saving.register_keras_serializable(package="keras_fmicl_tests")
class HalfCosine(keras_fmicl.Similarity):
    name = "half_cosine"

    def log_ratio_from_cosine(self, cosine):
        return 0.5 * cosine


@pytest.mark.parametrize("name", NAMES)
def test_custom_similarity_inside_a_traced_function(name):
    """A user's similarity: its range is unknown while tracing, not an error."""
    y_pred = embeddings(seed=21)
    z = reference.normalise(y_pred).reshape(-1, y_pred.shape[-1])
    cosine = z @ z.T
    sample = np.repeat(np.arange(6), 2)
    _, negative = reference.scores(name, 0.5 * cosine)
    positive, _ = reference.scores(name, 0.5 * cosine)
    other = sample[:, None] != sample[None, :]
    own = ~other & ~np.eye(12, dtype=bool)
    expected = (
        -np.sum(np.where(own, positive, 0.0), axis=1)
        + 0.9 * np.sum(np.where(other, negative, 0.0), axis=1) / 10
    ).reshape(6, 2).mean(axis=1)

    def per_sample(y):
        return keras_fmicl.fmicl(None, y, divergence=name, similarity=HalfCosine(), alpha=0.9)

    np.testing.assert_allclose(to_numpy(per_sample(y_pred)), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_numpy(traced(per_sample)(y_pred)), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("with_labels", [False, True])
def test_inside_compile_and_fit_of_a_plain_model(with_labels):
    n, v, d = 16, 2, 8
    rng = np.random.default_rng(21)
    labels = np.arange(64) % 4
    # two noisy views of each sample; samples of a class share a centre
    centres = rng.normal(size=(4, 10))
    base = centres[labels] + 0.7 * rng.normal(size=(64, 10))
    x = (base[:, None, :] + 0.3 * rng.normal(size=(64, v, 10))).astype("float32")
    model = keras.Sequential([keras.Input((v, 10)), keras.layers.Dense(d)])
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss=keras_fmicl.FMICLLoss("js"))
    y = labels if with_labels else None
    history = model.fit(x, y, batch_size=n, epochs=5, verbose=0, shuffle=False)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0]
    evaluated = model.evaluate(x, y, batch_size=n, verbose=0)
    assert np.isfinite(evaluated)


def test_dynamic_batch_size_in_a_traced_function():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("only TensorFlow traces with an unknown batch size")
    import tensorflow as tf

    loss = keras_fmicl.FMICLLoss("vlc")
    fn = tf.function(
        lambda y: loss(None, y), input_signature=[tf.TensorSpec([None, 2, 4], tf.float32)]
    )
    y_pred = embeddings(seed=22)
    assert float(fn(y_pred)) == pytest.approx(float(loss(None, y_pred)), rel=1e-6)


# ----------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"divergence": "kld"}, "divergence='kld'"),
        ({"similarity": "dot"}, "similarity='dot'"),
        ({"sigma": 0.0}, "sigma=0.0"),
        ({"sigma": -1}, "sigma=-1"),
        ({"temperature": 0}, "temperature=0"),
        ({"similarity": "cosine", "temperature": -0.1}, "temperature=-0.1"),
        ({"alpha": 0.0}, "alpha=0.0"),
        ({"alpha": -2}, "alpha=-2"),
        ({"global_negatives": "no"}, "`global_negatives` must be True or False.*global_negatives='no'"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        keras_fmicl.FMICLLoss(**kwargs)


@pytest.mark.parametrize("order", [1, 0, -1])
def test_bad_tsallis_order_raises(order):
    with pytest.raises(ValueError, match=f"order={order}"):
        keras_fmicl.FMICLLoss(keras_fmicl.Tsallis(order=order))


@pytest.mark.parametrize("loss_class", [keras_fmicl.FMICLLoss, keras_fmicl.InfoNCELoss])
@pytest.mark.parametrize(
    "y_true, shape, match",
    [
        (None, (6, 4), r"rank 3.*y_pred.shape=\(6, 4\)"),
        (None, (6, 2, 3, 4), r"rank 3.*y_pred.shape=\(6, 2, 3, 4\)"),
        (None, (6, 1, 4), r"V >= 2 views.*y_pred.shape=\(6, 1, 4\)"),
        (None, (1, 2, 4), r"at least 2 samples.*y_pred.shape=\(1, 2, 4\)"),
        (None, (0, 2, 4), r"at least one sample.*y_pred.shape=\(0, 2, 4\)"),
        (None, (6, 2, 0), r"d >= 1.*y_pred.shape=\(6, 2, 0\)"),
        (np.zeros(5), (6, 2, 4), r"y_true.shape=\(5,\)"),
        (np.zeros((6, 3)), (6, 2, 4), r"y_true.shape=\(6, 3\)"),
    ],
)
def test_bad_shapes_raise_value_error(loss_class, y_true, shape, match):
    y_pred = np.ones(shape, "float32")
    with pytest.raises(ValueError, match=match):
        loss_class()(y_true, y_pred)


def test_bad_keys_and_queue_raise_value_error():
    loss = keras_fmicl.FMICLLoss()
    queries = embeddings(n=4, v=2)
    with pytest.raises(ValueError, match=r"keys.shape=\(4, 2, 5\)"):
        loss.contrast(queries, keys=np.ones((4, 2, 5), "float32"))
    with pytest.raises(ValueError, match=r"queue.shape=\(7, 3\)"):
        loss.contrast(queries, queue=np.ones((7, 3), "float32"))
    with pytest.raises(ValueError, match="queue=None"):
        loss.contrast(queries, in_batch_negatives=False)
    with pytest.raises(ValueError, match="`in_batch_negatives` must be True or False"):
        loss.contrast(queries, queue=np.ones((7, 4), "float32"), in_batch_negatives="False")
    with pytest.raises(ValueError, match="`global_negatives` must be True or False"):
        keras_fmicl.fmicl(None, queries, global_negatives="yes")
    for contrastive_loss in (loss, keras_fmicl.InfoNCELoss()):
        with pytest.raises(ValueError, match=r"at least one negative.*queue.shape=\(0, 4\)"):
            contrastive_loss.contrast(queries, keys=queries, queue=np.ones((0, 4), "float32"),
                                      in_batch_negatives=False)


def test_labels_of_shape_n_by_one_are_accepted():
    y_pred = embeddings(seed=23)
    loss = keras_fmicl.FMICLLoss("js", reduction=None)
    np.testing.assert_allclose(
        to_numpy(loss(LABELS[:, None], y_pred)), to_numpy(loss(LABELS, y_pred)), rtol=1e-6
    )


def test_defaults_are_the_swept_values_and_apply_everywhere():
    """The documented defaults (docs/fmicl-math.md), in the class and the functional form."""
    y_pred = embeddings(n=6, v=2, seed=40)
    loss = keras_fmicl.FMICLLoss(reduction=None)
    assert (loss.similarity, loss.alpha) == (keras_fmicl.Gaussian(2**-0.5), 40.0)
    assert keras_fmicl.FMICLLoss(similarity="cosine").similarity == keras_fmicl.Cosine(1.0)
    assert keras_fmicl.InfoNCELoss().similarity == keras_fmicl.Cosine(0.1)
    expected = reference.fmicl_loss(y_pred, None, "kl", "gaussian", 2**-0.5, alpha=40.0)
    np.testing.assert_allclose(to_numpy(loss(None, y_pred)), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(to_numpy(keras_fmicl.fmicl(None, y_pred)), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        to_numpy(keras_fmicl.info_nce(None, y_pred)),
        reference.info_nce_loss(y_pred, None, "cosine", 0.1),
        rtol=1e-4, atol=1e-5,
    )


def test_replacing_the_divergence_or_similarity_after_construction_takes_effect():
    """The loss reuses its negative-score plan only while both are unchanged."""
    y_pred = embeddings(seed=23)
    loss = keras_fmicl.FMICLLoss("kl", reduction=None)
    loss(None, y_pred)
    loss.divergence = keras_fmicl.losses.divergences.get("js")
    loss.similarity = keras_fmicl.Cosine(0.3)
    expected = keras_fmicl.FMICLLoss("js", similarity="cosine", temperature=0.3, reduction=None)
    np.testing.assert_allclose(
        to_numpy(loss(None, y_pred)), to_numpy(expected(None, y_pred)), rtol=1e-6
    )


# ------------------------------------------------------------ invalid labels

LOSS_CLASSES = [keras_fmicl.FMICLLoss, keras_fmicl.InfoNCELoss]
BAD_LABELS = {
    "nan": (np.array([0.0, 1.0, np.nan, 2.0, 1.0, 0.0]), r"y_true\[2\]=.*nan"),
    "all_nan": (np.full(6, np.nan), r"6 invalid label"),
    "inf": (np.array([0.0, 1.0, 2.0, np.inf, 1.0, 0.0]), r"y_true\[3\]=.*inf"),
    "negative": (np.array([0, 1, -1, 2, 1, 0]), r"y_true\[2\]=.*-1"),
    "all_negative": (np.full(6, -1), r"non-negative integer"),
    "fraction": (np.array([0.0, 1.5, 0.0, 2.0, 1.0, 0.0]), r"y_true\[1\]=.*1.5"),
    "strings": (np.array(["a", "b", "a", "c", "b", "a"]), r"y_true=\['a', 'b'"),
    "string_list": (["a", "b", "a", "c", "b", "a"], r"dtype=<U1"),
}


@pytest.mark.parametrize("loss_class", LOSS_CLASSES)
@pytest.mark.parametrize("case", list(BAD_LABELS))
def test_invalid_concrete_labels_raise_value_error(loss_class, case):
    """Before: coerced (NaN / -1 to one class, 1.5 rounded): a finite loss."""
    labels, match = BAD_LABELS[case]
    y_pred = embeddings()
    with pytest.raises(ValueError, match=match):
        loss_class()(labels, y_pred)
    with pytest.raises(ValueError, match=r"`labels` must be .*non-negative integer"):
        loss_class().contrast(y_pred, labels=labels)
    functional = keras_fmicl.fmicl if loss_class is keras_fmicl.FMICLLoss else keras_fmicl.info_nce
    with pytest.raises(ValueError, match=r"`y_true` must be .*non-negative integer"):
        functional(labels, y_pred)
    if np.asarray(labels).dtype.kind in "if":
        # an eager tensor is concrete too
        with pytest.raises(ValueError, match=match):
            loss_class()(ops.convert_to_tensor(labels), y_pred)


@pytest.mark.parametrize(
    "loss_class, case",
    [
        (keras_fmicl.FMICLLoss, "nan"),
        (keras_fmicl.FMICLLoss, "negative"),
        (keras_fmicl.FMICLLoss, "fraction"),
        (keras_fmicl.InfoNCELoss, "all_nan"),
        (keras_fmicl.InfoNCELoss, "inf"),
        (keras_fmicl.InfoNCELoss, "all_negative"),
    ],
)
def test_invalid_labels_in_a_traced_function_give_a_nan_loss(loss_class, case):
    """Only seen inside tf.function / jax.jit: NaN, never a coerced finite loss.

    (Eager PyTorch sees every value: a ValueError there.)
    """
    labels, _ = BAD_LABELS[case]
    labels = labels.astype("float32" if labels.dtype.kind == "f" else "int32")
    y_pred = embeddings()
    loss = loss_class(reduction=None)
    fn = traced(lambda y, t: loss(t, y))
    if keras.backend.backend() == "torch":
        with pytest.raises(ValueError, match="non-negative integer"):
            fn(y_pred, labels)
        return
    got = to_numpy(fn(y_pred, labels))
    assert got.shape == (6,) and np.all(np.isnan(got))
    # valid labels through the same traced function: the reference
    valid = to_numpy(fn(y_pred, LABELS.astype(labels.dtype)))
    np.testing.assert_allclose(valid, to_numpy(loss(LABELS, y_pred)), rtol=1e-5, atol=1e-6)


def test_invalid_labels_in_fit_give_a_nan_loss_and_terminate_on_nan():
    x = np.random.default_rng(3).normal(size=(8, 2, 5)).astype("float32")
    labels = np.array([0, 1, 0, -1, 1, 0, 2, 2])
    model = keras.Sequential([keras.Input((2, 5)), keras.layers.Dense(4)])
    model.compile(optimizer="sgd", loss=keras_fmicl.FMICLLoss("js"))
    if keras.backend.backend() == "torch":  # eager: the values are seen
        with pytest.raises(ValueError, match=r"y_true\[3\]"):
            model.fit(x, labels, batch_size=8, epochs=1, verbose=0, shuffle=False)
        return
    history = model.fit(
        x, labels, batch_size=8, epochs=2, verbose=0, callbacks=[keras.callbacks.TerminateOnNaN()]
    )
    assert len(history.history["loss"]) == 1 and np.isnan(history.history["loss"][0])


@pytest.mark.parametrize("loss_class", LOSS_CLASSES)
def test_integer_valued_float_labels_are_accepted(loss_class):
    y_pred = embeddings()
    loss = loss_class(reduction=None)
    expected = to_numpy(loss(LABELS, y_pred))
    np.testing.assert_allclose(to_numpy(loss(LABELS.astype("float32"), y_pred)), expected, rtol=1e-6)
    np.testing.assert_allclose(
        to_numpy(traced(lambda y, t: loss(t, y))(y_pred, LABELS.astype("float32"))),
        expected, rtol=1e-5, atol=1e-6,
    )  # fmt: skip


def test_large_integer_labels_are_not_merged():
    """Labels beyond 2^24 are not rounded to float32 (which merged 2^24 and 2^24 + 1)."""
    y_pred = embeddings()
    loss = keras_fmicl.FMICLLoss("js", reduction=None)
    big = (2**24 + np.array([0, 1, 2, 3, 4, 5])).astype("int64")
    np.testing.assert_allclose(
        to_numpy(loss(big, y_pred)), to_numpy(loss(np.arange(6), y_pred)), rtol=1e-6
    )
    np.testing.assert_allclose(
        to_numpy(loss(big.astype("float64"), y_pred)), to_numpy(loss(np.arange(6), y_pred)), rtol=1e-6
    )


# -------------------------------------------------- non-finite embeddings

NONFINITE_LOSSES = {
    "kl_gaussian": lambda: keras_fmicl.FMICLLoss("kl", reduction=None),
    "js_cosine": lambda: keras_fmicl.FMICLLoss("js", similarity="cosine", reduction=None),
    "pearson": lambda: keras_fmicl.FMICLLoss("pearson", reduction=None),
    "vlc": lambda: keras_fmicl.FMICLLoss("vlc", reduction=None),
    "info_nce": lambda: keras_fmicl.InfoNCELoss(reduction=None),
    "supcon": lambda: keras_fmicl.InfoNCELoss(supervised_form="supcon", reduction=None),
}


@pytest.mark.parametrize(
    "loss_name, value, supervised",
    [
        ("kl_gaussian", np.nan, False),
        ("kl_gaussian", -np.inf, True),
        ("js_cosine", np.inf, True),
        ("pearson", np.nan, False),
        ("vlc", -np.inf, False),
        ("info_nce", np.nan, True),
        ("info_nce", np.inf, False),
        ("supcon", np.nan, True),
    ],
)
def test_a_non_finite_embedding_makes_every_per_sample_loss_nan(loss_name, value, supervised):
    """Deliberately NaN (TerminateOnNaN fires), eager and traced."""
    y_pred = embeddings()
    y_pred[4, 1, 2] = value
    labels = LABELS if supervised else None
    loss = NONFINITE_LOSSES[loss_name]()
    got = to_numpy(loss(labels, y_pred))
    assert got.shape == (6,) and np.all(np.isnan(got)), got
    traced_got = to_numpy(traced(lambda y: loss(labels, y))(y_pred))
    assert np.all(np.isnan(traced_got)), traced_got


@pytest.mark.parametrize(
    "loss_name, where, value",
    [
        ("kl_gaussian", "keys", np.nan),
        ("vlc", "queue", np.inf),
        ("info_nce", "masked_queue_entry", np.nan),
        ("supcon", "keys", -np.inf),
    ],
)
def test_a_non_finite_key_or_queue_entry_makes_the_loss_nan(loss_name, where, value):
    queries = embeddings(n=5, v=2, seed=5)
    keys = embeddings(n=5, v=2, seed=6)
    queue = np.random.default_rng(7).normal(size=(6, 4)).astype("float32")
    queue_mask = np.array([1, 1, 0, 1, 1, 1], bool)
    if where == "keys":
        keys[2, 0, 1] = value
    else:
        queue[2 if where == "masked_queue_entry" else 1, 3] = value
    loss = NONFINITE_LOSSES[loss_name]()
    got = to_numpy(loss.contrast(queries, keys=keys, queue=queue, queue_mask=queue_mask))
    assert np.all(np.isnan(got)), got


# --------------------------------------------------------- more bad input


@pytest.mark.parametrize("loss_class", LOSS_CLASSES)
def test_zero_embedding_dimension_raises_value_error(loss_class):
    y_pred = np.ones((6, 2, 0), "float32")
    match = r"d >= 1.*y_pred.shape=\(6, 2, 0\)"
    with pytest.raises(ValueError, match=match):
        loss_class()(None, y_pred)
    functional = keras_fmicl.fmicl if loss_class is keras_fmicl.FMICLLoss else keras_fmicl.info_nce
    with pytest.raises(ValueError, match=match):
        functional(None, y_pred)
    with pytest.raises(ValueError, match=r"keys.shape=\(6, 2, 0\)"):
        loss_class().contrast(embeddings(), keys=y_pred)


@pytest.mark.parametrize("loss_class", LOSS_CLASSES)
def test_missing_y_pred_raises_value_error(loss_class):
    with pytest.raises(ValueError, match="y_pred=None"):
        loss_class()(None, None)
    with pytest.raises(ValueError, match="y_pred=None"):
        loss_class()(LABELS, None)
    functional = keras_fmicl.fmicl if loss_class is keras_fmicl.FMICLLoss else keras_fmicl.info_nce
    with pytest.raises(ValueError, match="y_pred=None"):
        functional(None, None)
    with pytest.raises(ValueError, match="queries=None"):
        loss_class().contrast(None)


@pytest.mark.parametrize("loss_class", LOSS_CLASSES)
@pytest.mark.parametrize("shape", [(5,), (7,), (6, 2), (6, 1, 1), (2, 3)])
def test_sample_weight_of_the_wrong_shape_raises_value_error(loss_class, shape):
    with pytest.raises(ValueError, match=rf"sample_weight.shape={re.escape(str(shape))}"):
        loss_class()(None, embeddings(), sample_weight=np.ones(shape, "float32"))


@pytest.mark.parametrize("loss_class", LOSS_CLASSES)
def test_sample_weight_of_shape_n_or_n_by_one_or_scalar_is_accepted(loss_class):
    y_pred = embeddings(seed=24)
    per_sample = to_numpy(loss_class(reduction=None)(None, y_pred))
    weights = np.array([1.0, 0.0, 2.0, 1.0, 0.5, 0.0], "float32")
    expected = np.sum(per_sample * weights) / 6
    for w in (weights, weights[:, None], list(weights)):
        assert float(loss_class()(None, y_pred, sample_weight=w)) == pytest.approx(expected, rel=1e-5)
    assert float(loss_class()(None, y_pred, sample_weight=2.0)) == pytest.approx(
        2.0 * per_sample.mean(), rel=1e-5
    )


def test_queue_mask_of_the_wrong_length_raises_value_error():
    loss = keras_fmicl.FMICLLoss()
    queries = embeddings(n=4, v=2)
    queue = np.ones((7, 4), "float32")
    with pytest.raises(ValueError, match=r"queue_mask.shape=\(5,\) for queue.shape=\(7, 4\)"):
        loss.contrast(queries, queue=queue, queue_mask=np.ones(5, bool))
    with pytest.raises(ValueError, match=r"queue_mask.shape=\(7, 1\)"):
        loss.contrast(queries, queue=queue, queue_mask=np.ones((7, 1), bool))
    with pytest.raises(ValueError, match=r"queue=None, queue_mask.shape=\(7,\)"):
        loss.contrast(queries, queue_mask=np.ones(7, bool))
    with pytest.raises(ValueError, match=r"queue_mask.shape=\(5,\)"):
        keras_fmicl.info_nce(None, queries, queue=queue, queue_mask=np.ones(5, bool))


# ------------------------------------------------ ignored similarity parameters


@pytest.mark.parametrize(
    "make, ignored",
    [
        (lambda: keras_fmicl.FMICLLoss(similarity="cosine", sigma=0.5), "sigma"),
        (lambda: keras_fmicl.FMICLLoss(temperature=0.3), "temperature"),
        (lambda: keras_fmicl.FMICLLoss("js", similarity="gaussian", temperature=0.3), "temperature"),
        (lambda: keras_fmicl.FMICLLoss(similarity=keras_fmicl.Gaussian(0.5), sigma=0.7), "sigma"),
        (lambda: keras_fmicl.InfoNCELoss(sigma=0.3), "sigma"),
        (lambda: keras_fmicl.InfoNCELoss(similarity="gaussian", temperature=0.2), "temperature"),
        (lambda: keras_fmicl.fmicl(None, embeddings(), similarity="cosine", sigma=1.0), "sigma"),
        (lambda: keras_fmicl.fmicl(None, embeddings(), temperature=0.5), "temperature"),
        (lambda: keras_fmicl.info_nce(None, embeddings(), sigma=1.0), "sigma"),
        (
            lambda: keras_fmicl.info_nce(None, embeddings(), similarity="gaussian", temperature=0.1),
            "temperature",
        ),
    ],
)
def test_an_ignored_similarity_parameter_warns(make, ignored):
    with pytest.warns(UserWarning, match=rf"`{ignored}` is ignored.*Received: {ignored}=") as record:
        make()
    # the warning points at the caller's line (this file)
    assert any(w.filename == __file__ for w in record), [w.filename for w in record]


def test_default_and_consistent_construction_warns_nothing():
    import warnings

    y_pred = embeddings()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        made = [
            keras_fmicl.FMICLLoss(),
            keras_fmicl.FMICLLoss(similarity="cosine"),
            keras_fmicl.FMICLLoss(similarity="cosine", sigma=None, temperature=0.3),
            keras_fmicl.FMICLLoss(sigma=0.5, temperature=None),
            keras_fmicl.InfoNCELoss(),
            keras_fmicl.InfoNCELoss(similarity="gaussian", sigma=0.4),
            keras_fmicl.InfoNCELoss(similarity=keras_fmicl.Cosine(0.2)),
            keras_fmicl.InfoNCELoss(supervised_form="supcon"),
        ]
        for loss in made:
            type(loss).from_config(loss.get_config())
            keras.losses.deserialize(keras.losses.serialize(loss))
        keras_fmicl.fmicl(None, y_pred)
        keras_fmicl.fmicl(None, y_pred, similarity="cosine", temperature=0.4)
        keras_fmicl.info_nce(None, y_pred)
        keras_fmicl.info_nce(None, y_pred, similarity="gaussian", sigma=0.5)


# ------------------------------------------------- supervised InfoNCE forms

FORM_LABELS = np.array([0, 1, 0, 2, 1, 0])  # several positives per anchor


def info_nce_reference(form, *args, **kwargs):
    function = reference.supcon_loss if form == "supcon" else reference.info_nce_loss
    return function(*args, **kwargs)


@pytest.mark.parametrize("form", ["decoupled", "supcon"])
@pytest.mark.parametrize("views", [2, 3])
@pytest.mark.parametrize("supervised", [False, True])
@pytest.mark.parametrize("similarity, parameter", [("cosine", 0.3), ("gaussian", 0.8)])
def test_info_nce_forms_match_their_references(form, views, supervised, similarity, parameter):
    y_pred = embeddings(v=views, seed=34)
    labels = FORM_LABELS if supervised else None
    expected = info_nce_reference(form, y_pred, labels, similarity, parameter)
    key = "temperature" if similarity == "cosine" else "sigma"
    loss = keras_fmicl.InfoNCELoss(
        similarity=similarity, supervised_form=form, reduction=None, **{key: parameter}
    )
    np.testing.assert_allclose(to_numpy(loss(labels, y_pred)), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("form", ["decoupled", "supcon"])
def test_info_nce_forms_match_their_references_float64(form, float64):
    y_pred = embeddings(v=3, seed=35, dtype="float64")
    expected = info_nce_reference(form, y_pred, FORM_LABELS, "cosine", 0.3)
    got = keras_fmicl.info_nce(FORM_LABELS, y_pred, temperature=0.3, supervised_form=form)
    assert keras.backend.standardize_dtype(got.dtype) == "float64"
    np.testing.assert_allclose(to_numpy(got), expected, rtol=1e-9, atol=1e-11)


def test_the_two_forms_differ_with_several_positives():
    y_pred = embeddings(v=3, seed=36)
    decoupled = reference.info_nce_loss(y_pred, FORM_LABELS, "cosine", 0.3)
    supcon = reference.supcon_loss(y_pred, FORM_LABELS, "cosine", 0.3)
    assert np.abs(decoupled - supcon).min() > 1e-2


@pytest.mark.parametrize("labels", [None, np.arange(6)[::-1].copy()])
def test_the_two_forms_coincide_with_one_positive_per_anchor(labels):
    y_pred = embeddings(v=2, seed=37)
    decoupled = keras_fmicl.InfoNCELoss(temperature=0.3, reduction=None)
    supcon = keras_fmicl.InfoNCELoss(temperature=0.3, supervised_form="supcon", reduction=None)
    np.testing.assert_allclose(
        to_numpy(supcon(labels, y_pred)), to_numpy(decoupled(labels, y_pred)), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        reference.supcon_loss(y_pred, labels, "cosine", 0.3),
        reference.info_nce_loss(y_pred, labels, "cosine", 0.3),
        rtol=1e-12,
    )


def test_supcon_gradient_matches_reference_finite_differences(float64):
    n, v, d = 3, 2, 3  # sample 0: three positives (its other view, both of sample 2)
    y_pred = embeddings(n=n, v=v, d=d, seed=38, dtype="float64")
    labels = np.array([0, 1, 0])

    def objective(y):
        return ops.sum(keras_fmicl.info_nce(labels, y, temperature=0.3, supervised_form="supcon"))

    _, (grad,) = value_and_grad(objective, y_pred)
    numerical = np.zeros_like(y_pred)
    h = 1e-6
    for index in np.ndindex(*y_pred.shape):
        step = np.zeros_like(y_pred)
        step[index] = h
        numerical[index] = (
            np.sum(reference.supcon_loss(y_pred + step, labels, "cosine", 0.3))
            - np.sum(reference.supcon_loss(y_pred - step, labels, "cosine", 0.3))
        ) / (2 * h)
    np.testing.assert_allclose(grad, numerical, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("form", ["decoupled", "supcon"])
@pytest.mark.parametrize("supervised", [False, True])
def test_info_nce_forms_with_keys_and_queue_match_their_references(form, supervised):
    """Key mode: the candidates are the keys of the other views, plus the queue."""
    queries = embeddings(n=6, v=3, seed=39)
    keys = embeddings(n=6, v=3, seed=40)
    queue = np.random.default_rng(41).normal(size=(5, 4)).astype("float32")
    queue_mask = np.array([1, 0, 1, 1, 1], bool)
    labels = FORM_LABELS if supervised else None
    loss = keras_fmicl.InfoNCELoss(temperature=0.4, supervised_form=form, reduction=None)
    for kwargs in (
        {"keys": keys},
        {"keys": keys, "queue": queue, "queue_mask": queue_mask},
        {"keys": keys, "queue": queue, "queue_mask": queue_mask, "in_batch_negatives": False},
        {"queue": queue},
    ):
        expected = info_nce_reference(form, queries, labels, "cosine", 0.4, **kwargs)
        got = to_numpy(loss.contrast(queries, labels=labels, **kwargs))
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5, err_msg=str(list(kwargs)))


def test_supcon_without_negatives_is_finite_and_matches_reference():
    """Every sample shares the label: the softmax runs over the positives."""
    y_pred = embeddings(n=4, v=2, d=3, seed=15)
    labels = np.zeros(4, "int32")
    loss = keras_fmicl.InfoNCELoss(supervised_form="supcon", reduction=None)
    np.testing.assert_allclose(
        to_numpy(loss(labels, y_pred)),
        reference.supcon_loss(y_pred, labels, "cosine", 0.1),
        rtol=1e-4,
        atol=1e-5,
    )
    _, (grad,) = value_and_grad(lambda y: ops.sum(loss(labels, y)), y_pred)
    assert np.all(np.isfinite(grad))


def test_supcon_mi_estimate_is_log_candidates_minus_loss():
    y_pred = embeddings(n=6, v=2, seed=42)
    loss = keras_fmicl.InfoNCELoss(supervised_form="supcon", reduction=None)
    per_sample, metrics = loss.contrast(y_pred, labels=FORM_LABELS, return_metrics=True)
    # every anchor's candidates: the 11 other embeddings
    expected = np.log(11.0) - np.mean(to_numpy(per_sample))
    assert float(metrics["mi_estimate"]) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("form", ["supCon", "khosla", None, 1])
def test_bad_supervised_form_raises_value_error(form):
    with pytest.raises(ValueError, match=rf"`supervised_form` must be one of .*supervised_form={form!r}"):
        keras_fmicl.InfoNCELoss(supervised_form=form)
    with pytest.raises(ValueError, match=rf"supervised_form={form!r}"):
        keras_fmicl.info_nce(None, embeddings(), supervised_form=form)


def test_supervised_form_is_serialised():
    y_pred = embeddings(seed=43)
    loss = keras_fmicl.InfoNCELoss(temperature=0.2, supervised_form="supcon", reduction=None)
    assert loss.get_config()["supervised_form"] == "supcon"
    assert keras_fmicl.InfoNCELoss().get_config()["supervised_form"] == "decoupled"
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert restored.supervised_form == "supcon"
    np.testing.assert_allclose(
        to_numpy(restored(FORM_LABELS, y_pred)), to_numpy(loss(FORM_LABELS, y_pred)), rtol=1e-6
    )
