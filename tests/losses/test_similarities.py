import keras
import numpy as np
import pytest

import keras_fmicl
from keras_fmicl.losses import similarities
from tests import reference
from tests.helpers import to_numpy
from tests.helpers import value_and_grad

CASES = [("gaussian", 0.5), ("gaussian", 1.3), ("cosine", 0.2), ("cosine", 1.0)]


def make(name, parameter):
    if name == "gaussian":
        return keras_fmicl.Gaussian(sigma=parameter)
    return keras_fmicl.Cosine(temperature=parameter)


@pytest.mark.parametrize("name, parameter", CASES)
@pytest.mark.parametrize("dtype, rtol", [("float32", 2e-5), ("float64", 1e-12)])
def test_log_ratio_matrix_matches_the_definition(name, parameter, dtype, rtol, float64):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 5)).astype(dtype)
    y = rng.normal(size=(4, 5)).astype(dtype)
    expected = np.array(
        [[reference.log_ratio(a, b, name, parameter) for b in y] for a in x]
    )
    got = to_numpy(make(name, parameter)(x, y))
    assert got.shape == (7, 4)
    atol = rtol * max(1.0, np.abs(expected).max())
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)
    # with y omitted, the rows are contrasted with themselves
    self_expected = np.array(
        [[reference.log_ratio(a, b, name, parameter) for b in x] for a in x]
    )
    np.testing.assert_allclose(make(name, parameter)(x), self_expected, rtol=rtol, atol=atol)


@pytest.mark.parametrize("name, parameter", CASES)
def test_log_ratio_is_affine_in_the_cosine(name, parameter, float64):
    """`l = cosine_scale * cos + log_ratio_offset` (the Gaussian clamped at 0)."""
    similarity = make(name, parameter)
    a = np.array([1.0, 0.0])
    for angle in np.linspace(0.0, np.pi, 9):
        b = np.array([np.cos(angle), np.sin(angle)])
        expected = reference.log_ratio(a, b, name, parameter)
        affine = similarity.cosine_scale * np.cos(angle) + similarity.log_ratio_offset
        assert affine == pytest.approx(expected, rel=1e-12, abs=1e-12)
    low, high = similarity.log_ratio_range()
    assert (low, high) == pytest.approx(
        sorted(similarity.cosine_scale * c + similarity.log_ratio_offset for c in (-1.0, 1.0))
    )


def test_a_user_similarity_has_no_offset_and_its_range_from_its_ends():
    class Half(keras_fmicl.Similarity):
        def log_ratio_from_cosine(self, cosine):
            return -0.5 * cosine

    assert Half().log_ratio_offset is None
    assert Half().log_ratio_range() == pytest.approx((-0.5, 0.5))


def test_gaussian_range_and_identity():
    x = np.array([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]], "float32")
    l = to_numpy(keras_fmicl.Gaussian(sigma=0.5)(x))
    np.testing.assert_allclose(np.diag(l), 0.0, atol=1e-6)
    # antipodal: ||a - b||^2 = 4 -> l = -4 / (2 * 0.25) = -8; orthogonal: -4
    assert l[0, 2] == pytest.approx(-8.0, rel=1e-6)
    assert l[0, 1] == pytest.approx(-4.0, rel=1e-6)
    assert np.all(l <= 0.0)


@pytest.mark.parametrize("name, parameter", CASES)
def test_zero_vector_gives_finite_values_and_gradients(name, parameter):
    x = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]], "float32")
    similarity = make(name, parameter)
    value, (grad,) = value_and_grad(lambda t: keras.ops.sum(similarity(t)), x)
    assert np.isfinite(value)
    assert np.all(np.isfinite(grad))
    l = to_numpy(similarity(x))
    # a zero vector is treated as orthogonal to everything (cosine 0)
    np.testing.assert_allclose(l[0, 1:], similarity.log_ratio_from_cosine(0.0), rtol=1e-6)


def test_l2_normalize_keeps_zero_rows_zero():
    x = np.array([[0.0, 0.0], [3.0, 4.0]], "float32")
    np.testing.assert_allclose(to_numpy(similarities.l2_normalize(x)), [[0, 0], [0.6, 0.8]], atol=1e-7)


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf"), "0.5", None])
def test_bad_parameters_raise_naming_the_argument(value):
    with pytest.raises(ValueError, match="sigma="):
        keras_fmicl.Gaussian(sigma=value)
    with pytest.raises(ValueError, match="temperature="):
        keras_fmicl.Cosine(temperature=value)


def test_get_resolves_names_with_parameters():
    assert similarities.get("gaussian", sigma=0.3) == keras_fmicl.Gaussian(0.3)
    assert similarities.get("f_gaussian") == keras_fmicl.Gaussian(similarities.DEFAULT_SIGMA)
    assert similarities.get("cosine", temperature=0.1) == keras_fmicl.Cosine(0.1)
    with pytest.raises(ValueError, match="similarity='dot'"):
        similarities.get("dot")


@pytest.mark.parametrize("name, parameter", CASES)
def test_serialization_round_trip(name, parameter):
    similarity = make(name, parameter)
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(similarity)
    )
    assert restored == similarity
    assert similarities.get(similarities.serialize(similarity)) == similarity


@pytest.mark.parametrize("scale", [1e-37, 1e-30, 1e-6, 1e-3, 1.0, 1e3, 1e30, 3e37])
def test_l2_normalize_is_scale_invariant_over_the_float32_range(scale):
    """u / ||u|| with u = x / max|x|: no underflow below the floor, no overflow.

    (Before: a squared norm under 1e-7 was floored, 1e30 overflowed to inf.)
    """
    x = np.array([[3.0, -4.0, 0.0], [1.0, 2.0, 2.0], [-0.5, 0.0, 0.0]], "float32")
    expected = reference.normalise(x)
    got = to_numpy(similarities.l2_normalize(x * np.float32(scale)))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    if scale > 1e30:
        return  # the gradient, about 1e-38, is subnormal (flushed to 0 by XLA)
    # the gradient is 1/scale times that at scale 1: finite and nonzero
    weights = np.random.default_rng(0).normal(size=x.shape).astype("float32")

    def objective(t):
        return keras.ops.sum(similarities.l2_normalize(t) * keras.ops.convert_to_tensor(weights))

    _, (grad,) = value_and_grad(objective, x)
    _, (scaled_grad,) = value_and_grad(objective, x * np.float32(scale))
    assert np.all(np.isfinite(scaled_grad)) and np.abs(scaled_grad).max() > 0
    np.testing.assert_allclose(scaled_grad * scale, grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_l2_normalize_in_half_precision_keeps_unit_norms(dtype):
    """A float16 row of norm 1e3 (whose squared norm overflows float16) or 1e-3."""
    x = keras.ops.cast(np.array([[600.0, -800.0], [6e-4, 8e-4], [0.0, 0.0]], "float32"), dtype)
    got = to_numpy(keras.ops.cast(similarities.l2_normalize(x), "float32"))
    np.testing.assert_allclose(got, [[0.6, -0.8], [0.6, 0.8], [0.0, 0.0]], rtol=1e-2, atol=1e-3)


def test_l2_normalize_of_a_non_finite_row_is_nan():
    x = np.array([[np.inf, 1.0], [np.nan, 0.0], [1.0, 1.0]], "float32")
    got = to_numpy(similarities.l2_normalize(x))
    assert np.all(np.isnan(got[:2]))
    np.testing.assert_allclose(got[2], [2**-0.5, 2**-0.5], rtol=1e-6)


@pytest.mark.parametrize(
    "identifier, kwargs, ignored",
    [
        ("cosine", {"sigma": 0.5}, "sigma"),
        ("gaussian", {"temperature": 0.5}, "temperature"),
        ("rbf", {"temperature": 0.5}, "temperature"),
        (keras_fmicl.Cosine(0.2), {"temperature": 0.5}, "temperature"),
        (keras_fmicl.Gaussian(0.2), {"sigma": 0.5}, "sigma"),
    ],
)
def test_get_warns_about_an_ignored_parameter(identifier, kwargs, ignored):
    with pytest.warns(UserWarning, match=rf"`{ignored}` is ignored") as record:
        similarities.get(identifier, **kwargs)
    assert record[0].filename == __file__


def test_get_is_silent_when_the_parameters_fit():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        similarities.get("cosine", sigma=None, temperature=0.3)
        similarities.get("gaussian", sigma=0.3, temperature=None)
        similarities.get(keras_fmicl.Gaussian(0.2))
        similarities.get(similarities.serialize(keras_fmicl.Cosine(0.2)))


def test_names_and_aliases_come_from_one_registry():
    assert similarities.names() == ("gaussian", "cosine")
    assert similarities.names() == tuple(similarities.BUILTIN_SIMILARITIES)
    for alias, name in similarities.ALIASES.items():
        assert similarities.canonical_name(alias.upper()) == name
        assert similarities.get(alias).name == name
    assert similarities.canonical_name("gauss") is None and similarities.canonical_name(3) is None
    with pytest.raises(ValueError, match=r"Unknown `similarity`: expected one of 'cosine', 'gaussian'"):
        similarities.get("gauss")


@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_evaluation_normalises_with_the_same_scale_invariant_l2_normalize(scale):
    """One L2 normaliser: tiny and huge rows keep their direction in the metrics too."""
    x = np.random.default_rng(0).normal(size=(6, 4)).astype("float32")
    y = np.random.default_rng(1).normal(size=(6, 4)).astype("float32")
    for metric, args in ((keras_fmicl.alignment, (x, y)), (keras_fmicl.uniformity, (x,))):
        expected = float(metric(*args))
        assert float(metric(*(a * np.float32(scale) for a in args))) == pytest.approx(expected, rel=1e-5)


def test_l2_normalize_treats_subnormal_rows_as_zero_rows_on_every_backend():
    """Rows whose largest entry is below 2**-126 (float32's smallest normal)
    are zero rows: XLA flushes subnormals to zero, PyTorch does not."""
    x = np.array(
        [[1e-40, -2e-40], [1e-39, 0.0], [0.0, 0.0], [3e-38, 4e-38], [3.0, 4.0]], "float32"
    )
    got = to_numpy(similarities.l2_normalize(x))
    np.testing.assert_allclose(got[:3], 0.0, atol=1e-30)
    np.testing.assert_allclose(got[3:], [[0.6, 0.8], [0.6, 0.8]], rtol=1e-6)


def test_losses_of_subnormal_embeddings_equal_those_of_zero_embeddings():
    """The same loss on every backend for 1e-40 embeddings: that of zeros.

    With every embedding a zero vector every cosine is 0, so each of the 2N
    anchors of InfoNCE sees 2N - 1 equal logits: a loss of log(2N - 1).
    """
    num_samples = 4
    directions = np.random.default_rng(0).normal(size=(num_samples, 2, 3))
    tiny = (directions * 1e-40).astype("float32")
    zeros = np.zeros_like(tiny)
    assert np.any(tiny != 0)  # subnormal, not underflowed
    info_nce = to_numpy(keras_fmicl.info_nce(None, tiny))
    np.testing.assert_allclose(info_nce, np.log(2 * num_samples - 1), rtol=1e-6)
    np.testing.assert_allclose(
        to_numpy(keras_fmicl.fmicl(None, tiny)), to_numpy(keras_fmicl.fmicl(None, zeros)),
        rtol=1e-6,
    )
