"""f-divergences: f, the positive term f'(e^l) and the negative term f*(f'(e^l)) in log space."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_fmicl.utils.checks import is_real
from keras_fmicl.utils.registry import PACKAGE
from keras_fmicl.utils.registry import ConfigEquality
from keras_fmicl.utils.registry import Registry


def capped_exp(x: Any) -> Any:
    """`exp(x)`, continued linearly above a cap so that it stays finite.

    Below the cap `c = 0.5 * log(finfo(dtype).max)` (about 44.4 for float32
    and bfloat16, 354.9 for float64, 5.5 for float16) the result is exactly
    `exp(x)`; above it, `exp(c) (1 + x - c)`, the tangent at `c`: values and
    gradients stay finite (sums of many terms too) and the gradient keeps
    pushing in the right direction instead of vanishing.
    """
    x = ops.convert_to_tensor(x)
    dtype = keras.backend.standardize_dtype(x.dtype)
    cap = max_exponent(dtype)
    # `where` and `relu`, not `minimum`: Keras' binary ops compute float64
    # in float32 on some backends; these keep the input dtype everywhere.
    return ops.exp(ops.where(x < cap, x, cap)) * (1.0 + ops.relu(x - cap))


def bounded_exp(x: Any) -> Any:
    """`exp(x)` continued on both sides so that `exp(x)`, `1 / exp(x)` and their gradients stay finite.

    Between `-c / 2` and `c` (`c = max_exponent(dtype)`: 44.4 in float32)
    the result is exactly `exp(x)`; above `c` it is `capped_exp`'s tangent;
    below `-c / 2` it is `exp(-c/2) / (1 + (-c/2 - x))`, positive and
    decreasing, so that `1 / u` grows linearly and `1 / u^2` (the
    derivative of a generator's `f'(u) = -1/u`, reverse KL) stays below
    `exp(c)`: the default scores of a divergence given by `f` and `f'` alone
    keep finite values and gradients.
    """
    x = ops.convert_to_tensor(x)
    floor = -0.5 * max_exponent(keras.backend.standardize_dtype(x.dtype))
    return capped_exp(ops.where(x > floor, x, floor)) / (1.0 + ops.relu(floor - x))


def max_exponent(dtype: str = "float32") -> float:
    """The exponent above which `capped_exp` continues linearly."""
    return 0.5 * math.log(float(_finfo_max(keras.backend.standardize_dtype(dtype))))


def _finfo_max(dtype: str) -> float:
    if dtype == "bfloat16":
        return 3.3895313892515355e38
    return float(np.finfo(dtype).max)


# The elementwise cores a `NegativeForm` may name (their fast forms, bounds
# and derivatives live in `keras_fmicl.fast_paths`).
NEGATIVE_CORES = ("exp", "softplus", "sigmoid_squared")


@dataclasses.dataclass(frozen=True)
class NegativeForm:
    """Declares a negative score of the form `scale * core(k * l) + offset`.

    The one speed hint a `Divergence` may carry (`Divergence.negative_form`).
    The loss (`keras_fmicl.fast_paths`) then evaluates the negatives with
    the fastest form it knows for `core`: an `exp` folded into the matmul
    (`exp(k l)` for an affine similarity), the row sums minus the anchor's
    own sample, a one-matmul gradient. The hint must agree with
    `negative_score` (the tests of the package check the built-in ones).

    Attributes:
        core: `"exp"` (`e^x`), `"softplus"` (`log(1 + e^x)`) or
            `"sigmoid_squared"` (`sigmoid(x)^2`).
        k: the factor of `l` inside the core.
        scale, offset: the affine map applied to the core.

    Example:

    ```python
    NegativeForm("exp", k=2.0, offset=-1.0)   # Pearson: e^(2l) - 1
    ```
    """

    core: str
    k: float = 1.0
    scale: float = 1.0
    offset: float = 0.0

    def __post_init__(self):
        if self.core not in NEGATIVE_CORES:
            raise ValueError(
                f"`core` must be one of {', '.join(map(repr, NEGATIVE_CORES))}. "
                f"Received: core={self.core!r}"
            )
        for field in ("k", "scale", "offset"):
            value = getattr(self, field)
            if not is_real(value) or not math.isfinite(value) or (field == "k" and value == 0):
                raise ValueError(
                    f"`{field}` must be a finite number (`k` non-zero). "
                    f"Received: {field}={value!r}"
                )


@keras.saving.register_keras_serializable(package=PACKAGE)
class Divergence(ConfigEquality):
    """Base class of f-divergences.

    Subclasses define the generator `f(u)` and its derivative `f_prime(u)`
    with `keras.ops`, for a density ratio `u > 0`. That is enough: the
    positive score is `f'(u)` and the negative score is the Fenchel-Young
    identity `f*(f'(u)) = u f'(u) - f(u)`, both at `u = exp(l)`. Subclasses
    may override `positive_score` and `negative_score` with forms that are
    stable in the log ratio `l` (all built-in divergences do).

    Two optional declarations (class attributes or properties):

    * `exponents`: the coefficients `k` of the exponentials `e^(k l)` the
      scores evaluate (default `(1.0,)`, the generic `u = e^l`): the loss
      warns when the similarity's range takes one beyond float32's exact
      range (`docs/fmicl-math.md`, section 7.5);
    * `negative_form`: `None`, or a `NegativeForm` declaring the negative
      score as `scale * core(k l) + offset`: the hint of the fast paths
      (`keras_fmicl.fast_paths`). Any class declaring it gets the same
      paths as the built-in divergences; it is ignored when a subclass
      overrides `negative_score` without declaring it again.

    Example:

    ```python
    from keras import ops

    @keras.saving.register_keras_serializable(package="my_project")
    class ReverseKL(keras_fmicl.Divergence):
        name = "reverse_kl"

        def f(self, u):
            return -ops.log(u)

        def f_prime(self, u):
            return -1.0 / u

    loss = keras_fmicl.FMICLLoss(divergence=ReverseKL())
    ```
    """

    name: str = "divergence"
    exponents: tuple = (1.0,)
    negative_form: NegativeForm | None = None

    def f(self, u: Any) -> Any:
        """The convex generator `f(u)`, with `f(1) = 0`."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement `f(u)` (the generator)."
        )

    def f_prime(self, u: Any) -> Any:
        """The derivative `f'(u)` of the generator."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement `f_prime(u)` "
            "(the derivative of the generator)."
        )

    def positive_score(self, log_ratio: Any) -> Any:
        """`f'(e^l)`: the critic of a positive pair with log ratio `l`."""
        return self.f_prime(bounded_exp(ops.convert_to_tensor(log_ratio)))

    def negative_score(self, log_ratio: Any) -> Any:
        """`f*(f'(e^l)) = e^l f'(e^l) - f(e^l)`: the score of a negative pair."""
        u = bounded_exp(log_ratio)
        return u * self.f_prime(u) - self.f(u)


REGISTRY = Registry("divergence", Divergence)


@REGISTRY.register("kullback_leibler", "kullbackleibler")
@keras.saving.register_keras_serializable(package=PACKAGE)
class KullbackLeibler(Divergence):
    """Kullback-Leibler: `f(u) = u log u`.

    Positive score `1 + l`, negative score `e^l`. With it, f-MICL is the
    variational (NWJ-style) KL bound; with the Gaussian similarity it is
    alignment plus a Gaussian-potential uniformity.
    """

    name = "kl"
    exponents = (1.0,)
    negative_form = NegativeForm("exp", k=1.0)

    def f(self, u):
        u = ops.convert_to_tensor(u)
        return u * ops.log(u)

    def f_prime(self, u):
        u = ops.convert_to_tensor(u)
        return ops.log(u) + 1.0

    def positive_score(self, log_ratio):
        log_ratio = ops.convert_to_tensor(log_ratio)
        return log_ratio + 1.0

    def negative_score(self, log_ratio):
        return capped_exp(ops.convert_to_tensor(log_ratio))


@REGISTRY.register("jensen_shannon", "jensenshannon", "jsd")
@keras.saving.register_keras_serializable(package=PACKAGE)
class JensenShannon(Divergence):
    """Jensen-Shannon: `f(u) = u log u - (u + 1) log((u + 1) / 2)`.

    Positive score `log 2 - softplus(-l)`, negative score
    `softplus(l) - log 2`: both bounded in slope, the most forgiving choice.
    """

    name = "js"
    exponents = ()
    negative_form = NegativeForm("softplus", k=1.0, offset=-math.log(2.0))

    def f(self, u):
        u = ops.convert_to_tensor(u)
        return u * ops.log(u) - (u + 1.0) * ops.log((u + 1.0) / 2.0)

    def f_prime(self, u):
        u = ops.convert_to_tensor(u)
        return ops.log(2.0 * u / (u + 1.0))

    def positive_score(self, log_ratio):
        log_ratio = ops.convert_to_tensor(log_ratio)
        return math.log(2.0) - ops.softplus(-log_ratio)

    def negative_score(self, log_ratio):
        log_ratio = ops.convert_to_tensor(log_ratio)
        return ops.softplus(log_ratio) - math.log(2.0)


@REGISTRY.register("chi2", "chi_squared", "pearson_chi2")
@keras.saving.register_keras_serializable(package=PACKAGE)
class Pearson(Divergence):
    """Pearson chi-squared: `f(u) = (u - 1)^2`.

    Positive score `2(e^l - 1)`, negative score `e^(2l) - 1`.
    """

    name = "pearson"
    exponents = (1.0, 2.0)
    negative_form = NegativeForm("exp", k=2.0, offset=-1.0)

    def f(self, u):
        u = ops.convert_to_tensor(u)
        return ops.square(u - 1.0)

    def f_prime(self, u):
        u = ops.convert_to_tensor(u)
        return 2.0 * (u - 1.0)

    def positive_score(self, log_ratio):
        log_ratio = ops.convert_to_tensor(log_ratio)
        return 2.0 * (capped_exp(log_ratio) - 1.0)

    def negative_score(self, log_ratio):
        log_ratio = ops.convert_to_tensor(log_ratio)
        return capped_exp(2.0 * log_ratio) - 1.0


@REGISTRY.register("hellinger", "squaredhellinger", "sh")
@keras.saving.register_keras_serializable(package=PACKAGE)
class SquaredHellinger(Divergence):
    """Squared Hellinger: `f(u) = (sqrt(u) - 1)^2`.

    Positive score `1 - e^(-l/2)`, negative score `e^(l/2) - 1`.
    """

    name = "squared_hellinger"
    exponents = (-0.5, 0.5)
    negative_form = NegativeForm("exp", k=0.5, offset=-1.0)

    def f(self, u):
        u = ops.convert_to_tensor(u)
        return ops.square(ops.sqrt(u) - 1.0)

    def f_prime(self, u):
        u = ops.convert_to_tensor(u)
        return 1.0 - ops.rsqrt(u)

    def positive_score(self, log_ratio):
        log_ratio = ops.convert_to_tensor(log_ratio)
        return 1.0 - capped_exp(-0.5 * log_ratio)

    def negative_score(self, log_ratio):
        log_ratio = ops.convert_to_tensor(log_ratio)
        return capped_exp(0.5 * log_ratio) - 1.0


@REGISTRY.register("tsallis_alpha")
@keras.saving.register_keras_serializable(package=PACKAGE)
class Tsallis(Divergence):
    """Tsallis-alpha: `f(u) = (u^a - u) / (a - 1)` for an order `a > 0, a != 1`.

    Positive score `(a e^((a-1) l) - 1) / (a - 1)`, negative score `e^(a l)`.
    The order tends to KL as `a -> 1`; `a = 2` is Pearson up to a constant.

    Args:
        order: the order `a`; a positive number other than 1. Defaults to 1.5.
    """

    name = "tsallis"

    def __init__(self, order: float = 1.5):
        if not is_real(order):
            raise ValueError(
                "`order` of the Tsallis divergence must be a number. "
                f"Received: order={order!r}"
            )
        if not 0 < order < float("inf") or order == 1:
            raise ValueError(
                "`order` of the Tsallis divergence must be positive and "
                "different from 1 (order 1 is the KL divergence: use "
                f"divergence='kl'). Received: order={order!r}"
            )
        self.order = float(order)

    @property
    def exponents(self):
        return (self.order - 1.0, self.order)

    @property
    def negative_form(self):
        return NegativeForm("exp", k=self.order)

    def f(self, u):
        u = ops.convert_to_tensor(u)
        a = self.order
        return (ops.power(u, a) - u) / (a - 1.0)

    def f_prime(self, u):
        u = ops.convert_to_tensor(u)
        a = self.order
        return (a * ops.power(u, a - 1.0) - 1.0) / (a - 1.0)

    def positive_score(self, log_ratio):
        log_ratio = ops.convert_to_tensor(log_ratio)
        a = self.order
        return (a * capped_exp((a - 1.0) * log_ratio) - 1.0) / (a - 1.0)

    def negative_score(self, log_ratio):
        log_ratio = ops.convert_to_tensor(log_ratio)
        return capped_exp(self.order * log_ratio)

    def get_config(self):
        return {"order": self.order}


@REGISTRY.register("vincze_le_cam", "vinczelecam", "le_cam")
@keras.saving.register_keras_serializable(package=PACKAGE)
class VinczeLeCam(Divergence):
    """Vincze-Le Cam: `f(u) = (u - 1)^2 / (u + 1)`.

    Positive score `1 - 4 sigmoid(-l)^2`, negative score
    `tanh(l/2) (1 + 2 sigmoid(l)) = 4 sigmoid(l)^2 - 1`: both bounded.
    """

    name = "vlc"
    exponents = ()
    negative_form = NegativeForm("sigmoid_squared", k=1.0, scale=4.0, offset=-1.0)

    def f(self, u):
        u = ops.convert_to_tensor(u)
        return ops.square(u - 1.0) / (u + 1.0)

    def f_prime(self, u):
        u = ops.convert_to_tensor(u)
        return 1.0 - 4.0 / ops.square(u + 1.0)

    def positive_score(self, log_ratio):
        log_ratio = ops.convert_to_tensor(log_ratio)
        return 1.0 - 4.0 * ops.square(ops.sigmoid(-log_ratio))

    def negative_score(self, log_ratio):
        log_ratio = ops.convert_to_tensor(log_ratio)
        # tanh(l/2) (1 + 2 sigmoid(l)) = (2 sigmoid(l) - 1)(2 sigmoid(l) + 1)
        return 4.0 * ops.square(ops.sigmoid(log_ratio)) - 1.0


# Views of the registry (canonical name -> class, alias -> canonical name).
BUILTIN_DIVERGENCES = REGISTRY.classes()

ALIASES = REGISTRY.aliases()


def names() -> tuple[str, ...]:
    """The canonical names of the built-in divergences.

    Example:

    ```python
    keras_fmicl.divergences.names()
    # ('kl', 'js', 'pearson', 'squared_hellinger', 'tsallis', 'vlc')
    ```
    """
    return REGISTRY.names()


def get(identifier: Any) -> Divergence:
    """Returns a `Divergence` from a name, an alias, a config dict or an instance.

    Names: `names()` (`"kl"`, `"js"`, `"pearson"`, `"squared_hellinger"`,
    `"tsallis"`, `"vlc"`), and the aliases in `ALIASES` (`"chi2"`,
    `"hellinger"`, `"jensen_shannon"`, `"kullback_leibler"`, ...). Case,
    dashes and spaces do not matter.

    Example:

    ```python
    keras_fmicl.divergences.get("Jensen-Shannon")   # JensenShannon()
    ```
    """
    return REGISTRY.get(identifier)


def serialize(divergence: Divergence) -> str | dict:
    """Returns the name of a built-in divergence at its defaults, else a config."""
    divergence = get(divergence)
    builtin = BUILTIN_DIVERGENCES.get(divergence.name)
    if builtin is type(divergence) and divergence == builtin():
        return divergence.name
    return keras.saving.serialize_keras_object(divergence)


def deserialize(config: str | dict) -> Divergence:
    """Inverse of `serialize`."""
    return get(config)
