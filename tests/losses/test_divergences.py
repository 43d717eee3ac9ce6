import keras
import numpy as np
import pytest
from scipy import optimize

import keras_fmicl
from keras_fmicl.losses import divergences
from tests import reference
from tests.helpers import to_numpy
from tests.helpers import value_and_grad

NAMES = list(divergences.names())
# (name, order) pairs; the Tsallis order is varied on both sides of 1.
DIVERGENCES = [(n, 1.5) for n in NAMES] + [("tsallis", 0.5), ("tsallis", 3.0)]


def make(name, order=1.5):
    if name == "tsallis":
        return keras_fmicl.Tsallis(order=order)
    return divergences.get(name)


@pytest.mark.parametrize("name", NAMES)
def test_get_by_name_returns_the_named_divergence(name):
    divergence = divergences.get(name)
    assert isinstance(divergence, keras_fmicl.Divergence)
    assert divergence.name == name


@pytest.mark.parametrize(
    "alias, name",
    [
        ("chi2", "pearson"),
        ("hellinger", "squared_hellinger"),
        ("jensen_shannon", "js"),
        ("Jensen-Shannon", "js"),
        ("kullback_leibler", "kl"),
        ("KL", "kl"),
        ("vincze_le_cam", "vlc"),
    ],
)
def test_aliases(alias, name):
    assert divergences.get(alias).name == name


@pytest.mark.parametrize("bad", ["kld", "", 3, None, "tsallis2"])
def test_unknown_divergence_raises_naming_the_argument(bad):
    with pytest.raises(ValueError, match=r"divergence=") as info:
        divergences.get(bad)
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("order", [1, 1.0, 0, -0.5, float("nan"), "2", True])
def test_tsallis_rejects_bad_orders(order):
    with pytest.raises(ValueError, match=r"order="):
        keras_fmicl.Tsallis(order=order)


@pytest.mark.parametrize("name, order", DIVERGENCES)
def test_generator_vanishes_at_one_and_scores_meet_there(name, order, float64):
    divergence = make(name, order)
    f, fp = reference.generator(name, order)
    assert f(1.0) == pytest.approx(0.0, abs=1e-15)
    one = np.array([1.0], dtype="float64")
    zero = np.array([0.0], dtype="float64")
    assert to_numpy(divergence.f(one))[0] == pytest.approx(0.0, abs=1e-15)
    assert to_numpy(divergence.positive_score(zero))[0] == pytest.approx(fp(1.0), abs=1e-14)
    assert to_numpy(divergence.negative_score(zero))[0] == pytest.approx(fp(1.0), abs=1e-14)


@pytest.mark.parametrize("name, order", DIVERGENCES)
def test_stable_forms_match_f_and_f_prime(name, order, float64):
    """The log-space forms equal f'(u) and u f'(u) - f(u) of the reference."""
    divergence = make(name, order)
    log_ratio = np.linspace(-12.0, 12.0, 97)
    positive, negative = reference.scores(name, log_ratio, order)
    # The reference's u f'(u) - f(u) cancels terms of size u log u, which
    # costs it about 1e-16 u log u of accuracy: 2e-11 relative at l = 12.
    np.testing.assert_allclose(
        to_numpy(divergence.positive_score(log_ratio)), positive, rtol=1e-10, atol=1e-12
    )
    np.testing.assert_allclose(
        to_numpy(divergence.negative_score(log_ratio)), negative, rtol=1e-10, atol=1e-12
    )
    # float32: the same to float32 round-off
    log_ratio32 = log_ratio.astype("float32")
    np.testing.assert_allclose(
        to_numpy(divergence.positive_score(log_ratio32)), positive, rtol=2e-5, atol=2e-5
    )
    np.testing.assert_allclose(
        to_numpy(divergence.negative_score(log_ratio32)), negative, rtol=2e-5, atol=2e-5
    )


@pytest.mark.parametrize("name, order", DIVERGENCES)
def test_f_prime_is_the_derivative_of_f(name, order, float64):
    divergence = make(name, order)
    u = np.linspace(0.05, 5.0, 23)
    h = 1e-6
    numerical = (to_numpy(divergence.f(u + h)) - to_numpy(divergence.f(u - h))) / (2 * h)
    np.testing.assert_allclose(to_numpy(divergence.f_prime(u)), numerical, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("name, order", DIVERGENCES)
def test_negative_score_is_the_numerical_convex_conjugate(name, order, float64):
    """Contract check: f*(f'(u0)) = sup_u (u t - f(u)) at t = f'(u0), to 1e-10."""
    divergence = make(name, order)
    f, fp = reference.generator(name, order)
    for u0 in np.geomspace(0.05, 5.0, 9):
        t = fp(u0)
        result = optimize.minimize_scalar(
            lambda u: -(u * t - f(u)),
            bounds=(1e-9, 60.0),
            method="bounded",
            options={"xatol": 1e-13, "maxiter": 2000},
        )
        supremum = -result.fun
        closed_form = to_numpy(divergence.negative_score(np.array([np.log(u0)])))[0]
        assert closed_form == pytest.approx(supremum, abs=1e-10, rel=1e-10), (u0, t)


@pytest.mark.parametrize("name, order", DIVERGENCES)
def test_generic_path_equals_the_stable_forms(name, order, float64):
    """A divergence defined by f and f' alone goes through Fenchel-Young."""
    builtin = make(name, order)

    class FromGenerator(keras_fmicl.Divergence):
        def f(self, u):
            return builtin.f(u)

        def f_prime(self, u):
            return builtin.f_prime(u)

    generic = FromGenerator()
    log_ratio = np.linspace(-6.0, 6.0, 25)
    np.testing.assert_allclose(
        to_numpy(generic.positive_score(log_ratio)),
        to_numpy(builtin.positive_score(log_ratio)),
        rtol=1e-10,
        atol=1e-10,
    )
    np.testing.assert_allclose(
        to_numpy(generic.negative_score(log_ratio)),
        to_numpy(builtin.negative_score(log_ratio)),
        rtol=1e-9,
        atol=1e-9,
    )


NUMPY_CORES = {
    "exp": np.exp,
    "softplus": lambda x: np.logaddexp(0.0, x),
    "sigmoid_squared": lambda x: (1.0 / (1.0 + np.exp(-x))) ** 2,
}


@pytest.mark.parametrize("name, order", DIVERGENCES)
def test_the_declared_negative_form_is_the_negative_score(name, order):
    """`scale * core(k l) + offset`, the hint of the fast paths, is the score."""
    form = make(name, order).negative_form
    assert isinstance(form, divergences.NegativeForm)
    log_ratio = np.linspace(-8.0, 8.0, 33)
    _, expected = reference.scores(name, log_ratio, order)
    got = form.scale * NUMPY_CORES[form.core](form.k * log_ratio) + form.offset
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


def test_names_lists_the_canonical_names_once():
    assert divergences.names() == tuple(divergences.BUILTIN_DIVERGENCES)
    assert len(set(divergences.names())) == 6
    for alias, name in divergences.ALIASES.items():
        assert name in divergences.names() and divergences.get(alias).name == name
    for name in divergences.names():
        assert divergences.get(name).name == name


def test_divergence_without_generator_says_what_is_missing():
    class Incomplete(keras_fmicl.Divergence):
        pass

    with pytest.raises(NotImplementedError, match="Incomplete must implement"):
        Incomplete().negative_score(np.zeros(3, "float32"))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_capped_exp_is_exact_below_the_cap_and_linear_above(dtype, float64):
    x = np.array([-50.0, 0.0, 10.0, 40.0, 500.0, 1e4], dtype=dtype)
    y = to_numpy(divergences.capped_exp(x))
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y[:4], np.exp(x[:4].astype("float64")), rtol=1e-6)
    cap = 0.5 * np.log(np.finfo(dtype).max)
    assert divergences.max_exponent(dtype) == pytest.approx(cap)
    above = x > cap
    # the tangent of exp at the cap: exp(c) (1 + x - c)
    np.testing.assert_allclose(y[above], np.exp(cap) * (1.0 + x[above] - cap), rtol=1e-5)
    _, (grad,) = value_and_grad(lambda t: keras.ops.sum(divergences.capped_exp(t)), x)
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad[:4], np.exp(x[:4].astype("float64")), rtol=1e-6)
    np.testing.assert_allclose(grad[above], np.exp(cap), rtol=1e-5)  # never zero


@pytest.mark.parametrize("name, order", DIVERGENCES)
def test_scores_and_gradients_finite_for_extreme_log_ratios(name, order):
    divergence = make(name, order)
    log_ratio = np.array([-400.0, -200.0, -40.0, 0.0, 20.0, 40.0, 100.0], "float32")

    def total(l):
        return keras.ops.sum(divergence.positive_score(l)) + keras.ops.sum(
            divergence.negative_score(l)
        )

    value, (grad,) = value_and_grad(total, log_ratio)
    assert np.isfinite(value)
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("name, order", DIVERGENCES)
def test_serialization_round_trip(name, order):
    divergence = make(name, order)
    config = keras.saving.serialize_keras_object(divergence)
    restored = keras.saving.deserialize_keras_object(config)
    assert restored == divergence
    assert type(restored).from_config(divergence.get_config()) == divergence
    assert divergences.deserialize(divergences.serialize(divergence)) == divergence


def test_serialize_uses_names_for_builtins_at_their_defaults():
    assert divergences.serialize(divergences.get("chi2")) == "pearson"
    assert divergences.serialize(keras_fmicl.Tsallis()) == "tsallis"
    config = divergences.serialize(keras_fmicl.Tsallis(order=2.5))
    assert isinstance(config, dict)
    assert divergences.get(config).order == 2.5


def test_get_accepts_instances_classes_and_configs():
    tsallis = keras_fmicl.Tsallis(order=0.7)
    assert divergences.get(tsallis) is tsallis
    assert isinstance(divergences.get(keras_fmicl.JensenShannon), keras_fmicl.JensenShannon)
    assert divergences.get(keras.saving.serialize_keras_object(tsallis)) == tsallis


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_bounded_exp_is_exact_inside_and_keeps_its_reciprocal_finite(dtype, float64):
    x = np.array([-1e4, -300.0, -30.0, -10.0, 0.0, 10.0, 40.0, 500.0], dtype=dtype)
    cap = 0.5 * np.log(np.finfo(dtype).max)
    floor = -cap / 2
    y = to_numpy(divergences.bounded_exp(x)).astype("float64")
    inside = (x >= floor) & (x <= cap)
    np.testing.assert_allclose(y[inside], np.exp(x[inside].astype("float64")), rtol=1e-6)
    below = x < floor
    # exp(floor) / (1 + floor - x): positive, so 1/u = exp(-floor) (1 + floor - x)
    np.testing.assert_allclose(y[below], np.exp(floor) / (1.0 + floor - x[below]), rtol=1e-5)
    above = x > cap
    np.testing.assert_allclose(y[above], np.exp(cap) * (1.0 + x[above] - cap), rtol=1e-5)
    # 1/u and its gradient (the derivative of f'(u) = -1/u through u) stay finite
    _, (grad,) = value_and_grad(lambda t: keras.ops.sum(1.0 / divergences.bounded_exp(t)), x)
    assert np.all(np.isfinite(grad)) and np.all(grad[below] != 0)


class GeneratorOnlyReverseKL(keras_fmicl.Divergence):
    """Reverse KL given by f and f' alone: f(u) = -log u, f'(u) = -1/u."""

    name = "generator_only_reverse_kl"

    def f(self, u):
        return -keras.ops.log(u)

    def f_prime(self, u):
        return -1.0 / u


def test_a_divergence_given_by_f_and_f_prime_keeps_finite_gradients_far_apart():
    """Issue 27 item 9: reverse KL at sigma 0.2 had a finite loss and a NaN gradient."""
    divergence = GeneratorOnlyReverseKL()
    log_ratio = np.array([-1e5, -400.0, -100.0, -30.0, -5.0, 0.0, 5.0], "float32")

    def total(l):
        return keras.ops.sum(divergence.positive_score(l)) + keras.ops.sum(divergence.negative_score(l))

    value, (grad,) = value_and_grad(total, log_ratio)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    # inside the exact range the scores are reverse KL's: f'(e^l) = -e^-l, f*(f'(e^l)) = l - 1
    exact = log_ratio >= -0.25 * np.log(np.finfo("float32").max)
    np.testing.assert_allclose(
        to_numpy(divergence.positive_score(log_ratio))[exact], -np.exp(-log_ratio[exact].astype("float64")), rtol=1e-5
    )
    np.testing.assert_allclose(
        to_numpy(divergence.negative_score(log_ratio))[exact], log_ratio[exact] - 1.0, rtol=1e-5, atol=1e-5
    )
    rng = np.random.default_rng(0)
    y_pred = rng.normal(size=(16, 2, 8)).astype("float32")
    loss = keras_fmicl.FMICLLoss(divergence, sigma=0.2)
    value, (grad,) = value_and_grad(lambda y: loss(None, y), y_pred)
    assert np.isfinite(value) and np.all(np.isfinite(grad)) and np.any(grad != 0)
