"""f-divergences for f-MICL, evaluated from the log density ratio.

An f-divergence is defined by a convex generator `f` with `f(1) = 0`. f-MICL
scores a positive pair with `f'(r)` and a negative pair with `f*(f'(r))`,
where `r = exp(l)` is the density ratio modelled by the similarity and `f*`
is the convex conjugate. By Fenchel-Young `f*(f'(u)) = u f'(u) - f(u)`, so a
divergence only needs `f` and `f'`.

The built-in divergences (contract table, `docs/fmicl-math.md` section 3):

| name                | f(u)                           | positive f'(e^l)                | negative f*(f'(e^l))          |
|---------------------|--------------------------------|---------------------------------|-------------------------------|
| `kl`                | u log u                        | 1 + l                           | e^l                           |
| `js`                | u log u - (u+1) log((u+1)/2)   | log 2 - softplus(-l)            | softplus(l) - log 2           |
| `pearson`           | (u-1)^2                        | 2(e^l - 1)                      | e^(2l) - 1                    |
| `squared_hellinger` | (sqrt(u) - 1)^2                | 1 - e^(-l/2)                    | e^(l/2) - 1                   |
| `tsallis` (order a) | (u^a - u)/(a-1)                | (a e^((a-1)l) - 1)/(a-1)        | e^(a l)                       |
| `vlc`               | (u-1)^2/(u+1)                  | 1 - 4 sigmoid(-l)^2             | tanh(l/2)(1 + 2 sigmoid(l))   |

The right-hand columns are what the loss evaluates: algebraically equal to
`f'` and `u f' - f`, computed from `l` without forming `u`. Exponentials are
taken through `capped_exp`: exact up to half the log of the largest finite
value of the dtype (exponent 44.4 in float32, 354.9 in float64) and continued
linearly beyond, so that values and gradients stay finite for extreme
similarities (a tiny sigma or temperature). `FMICLLoss` warns when its
similarity can reach that regime.

Reference:
    Lu, Zhang, Sun, Guo, Yu. "f-MICL: Understanding and Generalizing
    InfoNCE-based Contrastive Learning", TMLR 2023.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_fmicl.validation import ConfigEquality

_PACKAGE = "keras_fmicl"
# Largest argument of `math.exp` below float64 overflow.
_EXP_OVERFLOW = 709.0


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


def max_exponent(dtype: str = "float32") -> float:
    """The exponent above which `capped_exp` continues linearly."""
    return 0.5 * math.log(float(_finfo_max(keras.backend.standardize_dtype(dtype))))


def _finfo_max(dtype: str) -> float:
    if dtype == "bfloat16":
        return 3.3895313892515355e38
    return float(np.finfo(dtype).max)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Divergence(ConfigEquality):
    """Base class of f-divergences.

    Subclasses define the generator `f(u)` and its derivative `f_prime(u)`
    with `keras.ops`, for a density ratio `u > 0`. That is enough: the
    positive score is `f'(u)` and the negative score is the Fenchel-Young
    identity `f*(f'(u)) = u f'(u) - f(u)`, both at `u = exp(l)`. Subclasses
    may override `positive_score` and `negative_score` with forms that are
    stable in the log ratio `l` (all built-in divergences do).

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
    # Set (on a copy) by the loss when its similarity keeps every exponent
    # within the exact range: `_exp` is then a plain exp (fewer passes).
    exact_exponentials: bool = False
    # Coefficients k of the exponentials exp(k l) the scores evaluate (to
    # tell when a similarity's range can leave the exact regime of
    # `capped_exp`); the generic path evaluates u = exp(l).
    exponents: tuple = (1.0,)
    # Coefficients k of the exponentials a score evaluates with a plain
    # `exp` only when `exact_exponentials` is set (falling back to another
    # exact form otherwise, not to `capped_exp`).
    plain_exponents: tuple = ()
    # `(k, scale, offset)` when the negative score is
    # `scale * exp(k l) + offset` (KL, Pearson, squared Hellinger, Tsallis):
    # the loss then folds `k` and the similarity into the matmul and
    # evaluates a single `exp` per pair. `None` otherwise.
    negative_exponential: tuple | None = None
    # Whether `negative_core_root` gives the core of `negative_score_parts`
    # as a square: row sums of squares are then squared norms, which eager
    # backends take without materialising the squares.
    negative_core_is_square: bool = False

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

    def _exp(self, x: Any) -> Any:
        return ops.exp(x) if self.exact_exponentials else capped_exp(x)

    def negative_score_parts(self, log_ratio: Any) -> tuple[Any, float, float]:
        """`(core, scale, offset)` with `negative_score = scale * core + offset`.

        The loss applies the constants once per anchor, after summing `core`
        over the negatives, instead of once per pair.
        """
        return self.negative_score(log_ratio), 1.0, 0.0

    def negative_core_root(self, log_ratio: Any) -> Any:
        """`r(l) >= 0` with `core = r(l)^2`, when `negative_core_is_square`."""
        raise NotImplementedError(
            f"{type(self).__name__} does not give its negative core as a square."
        )

    def negative_core_derivative(self, log_ratio: Any) -> Any:
        """`d core / d l` of the core of `negative_score_parts` (optional).

        Built-in divergences whose core is not an exponential define it: the
        loss then differentiates the negatives' row sums with one matmul
        (`contrast.symmetric_row_sum`).
        """
        raise NotImplementedError(
            f"{type(self).__name__} does not give the derivative of its negative core."
        )

    def negative_core_bounds(self, low: float, high: float) -> tuple[float, float] | None:
        """Smallest and largest `core` of `negative_score_parts` for `l` in `[low, high]`.

        Python floats (no tensors), or `None` when unknown (then the loss
        sums the negatives under a mask instead of subtracting the
        same-sample pairs from the row sums, see `contrast.negative_sum`).
        """
        if self.negative_exponential is None:
            return None
        k = self.negative_exponential[0]
        ends = sorted((k * low, k * high))
        if ends[1] > _EXP_OVERFLOW:
            return None
        return math.exp(ends[0]), math.exp(ends[1])

    def positive_score(self, log_ratio: Any) -> Any:
        """`f'(e^l)`: the critic of a positive pair with log ratio `l`."""
        return self.f_prime(self._exp(ops.convert_to_tensor(log_ratio)))

    def negative_score(self, log_ratio: Any) -> Any:
        """`f*(f'(e^l)) = e^l f'(e^l) - f(e^l)`: the score of a negative pair."""
        u = self._exp(log_ratio)
        return u * self.f_prime(u) - self.f(u)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class KullbackLeibler(Divergence):
    """Kullback-Leibler: `f(u) = u log u`.

    Positive score `1 + l`, negative score `e^l`. With it, f-MICL is the
    variational (NWJ-style) KL bound; with the Gaussian similarity it is
    alignment plus a Gaussian-potential uniformity.
    """

    name = "kl"
    exponents = (1.0,)
    negative_exponential = (1.0, 1.0, 0.0)

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
        log_ratio = ops.convert_to_tensor(log_ratio)
        return self._exp(log_ratio)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class JensenShannon(Divergence):
    """Jensen-Shannon: `f(u) = u log u - (u + 1) log((u + 1) / 2)`.

    Positive score `log 2 - softplus(-l)`, negative score
    `softplus(l) - log 2`: both bounded in slope, the most forgiving choice.
    """

    name = "js"
    exponents = ()
    plain_exponents = (1.0,)

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

    def negative_score_parts(self, log_ratio):
        log_ratio = ops.convert_to_tensor(log_ratio)
        if self.exact_exponentials and keras.backend.backend() != "torch":
            # log(1 + e^l), exact while e^l cannot overflow: XLA fuses it and
            # differentiates it with one exp fewer than its softplus. (Eager
            # torch pays per op instead: its softplus is a single kernel.)
            return ops.log1p(ops.exp(log_ratio)), 1.0, -math.log(2.0)
        return ops.softplus(log_ratio), 1.0, -math.log(2.0)

    def negative_core_derivative(self, log_ratio):
        return ops.sigmoid(ops.convert_to_tensor(log_ratio))

    def negative_core_bounds(self, low, high):
        return _softplus(low), _softplus(high)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Pearson(Divergence):
    """Pearson chi-squared: `f(u) = (u - 1)^2`.

    Positive score `2(e^l - 1)`, negative score `e^(2l) - 1`.
    """

    name = "pearson"
    exponents = (1.0, 2.0)
    negative_exponential = (2.0, 1.0, -1.0)

    def f(self, u):
        u = ops.convert_to_tensor(u)
        return ops.square(u - 1.0)

    def f_prime(self, u):
        u = ops.convert_to_tensor(u)
        return 2.0 * (u - 1.0)

    def positive_score(self, log_ratio):
        log_ratio = ops.convert_to_tensor(log_ratio)
        return 2.0 * (self._exp(log_ratio) - 1.0)

    def negative_score(self, log_ratio):
        log_ratio = ops.convert_to_tensor(log_ratio)
        return self._exp(2.0 * log_ratio) - 1.0

    def negative_score_parts(self, log_ratio):
        return self._exp(2.0 * ops.convert_to_tensor(log_ratio)), 1.0, -1.0


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SquaredHellinger(Divergence):
    """Squared Hellinger: `f(u) = (sqrt(u) - 1)^2`.

    Positive score `1 - e^(-l/2)`, negative score `e^(l/2) - 1`.
    """

    name = "squared_hellinger"
    exponents = (-0.5, 0.5)
    negative_exponential = (0.5, 1.0, -1.0)

    def f(self, u):
        u = ops.convert_to_tensor(u)
        return ops.square(ops.sqrt(u) - 1.0)

    def f_prime(self, u):
        u = ops.convert_to_tensor(u)
        return 1.0 - ops.rsqrt(u)

    def positive_score(self, log_ratio):
        log_ratio = ops.convert_to_tensor(log_ratio)
        return 1.0 - self._exp(-0.5 * log_ratio)

    def negative_score(self, log_ratio):
        log_ratio = ops.convert_to_tensor(log_ratio)
        return self._exp(0.5 * log_ratio) - 1.0

    def negative_score_parts(self, log_ratio):
        return self._exp(0.5 * ops.convert_to_tensor(log_ratio)), 1.0, -1.0


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Tsallis(Divergence):
    """Tsallis-alpha: `f(u) = (u^a - u) / (a - 1)` for an order `a > 0, a != 1`.

    Positive score `(a e^((a-1) l) - 1) / (a - 1)`, negative score `e^(a l)`.
    The order tends to KL as `a -> 1`; `a = 2` is Pearson up to a constant.

    Args:
        order: the order `a`; a positive number other than 1. Defaults to 1.5.
    """

    name = "tsallis"

    def __init__(self, order: float = 1.5):
        if isinstance(order, bool) or not isinstance(order, numbers.Real):
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
        self.exponents = (self.order - 1.0, self.order)
        self.negative_exponential = (self.order, 1.0, 0.0)

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
        return (a * self._exp((a - 1.0) * log_ratio) - 1.0) / (a - 1.0)

    def negative_score(self, log_ratio):
        log_ratio = ops.convert_to_tensor(log_ratio)
        return self._exp(self.order * log_ratio)

    def get_config(self):
        return {"order": self.order}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class VinczeLeCam(Divergence):
    """Vincze-Le Cam: `f(u) = (u - 1)^2 / (u + 1)`.

    Positive score `1 - 4 sigmoid(-l)^2`, negative score
    `tanh(l/2) (1 + 2 sigmoid(l)) = 4 sigmoid(l)^2 - 1`: both bounded.
    """

    name = "vlc"
    exponents = ()

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

    negative_core_is_square = True

    def negative_score_parts(self, log_ratio):
        return ops.square(self.negative_core_root(log_ratio)), 4.0, -1.0

    def negative_core_root(self, log_ratio):
        return ops.sigmoid(ops.convert_to_tensor(log_ratio))

    def negative_core_derivative(self, log_ratio):
        # d sigmoid(l)^2 / dl = 2 sigmoid(l)^2 (1 - sigmoid(l))
        root = self.negative_core_root(log_ratio)
        return ops.square(root) * (2.0 - 2.0 * root)

    def negative_core_bounds(self, low, high):
        return _sigmoid(low) ** 2, _sigmoid(high) ** 2


def _softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    return math.exp(x) / (1.0 + math.exp(x))


BUILTIN_DIVERGENCES = {
    "kl": KullbackLeibler,
    "js": JensenShannon,
    "pearson": Pearson,
    "squared_hellinger": SquaredHellinger,
    "tsallis": Tsallis,
    "vlc": VinczeLeCam,
}

ALIASES = {
    "kullback_leibler": "kl",
    "kullbackleibler": "kl",
    "jensen_shannon": "js",
    "jensenshannon": "js",
    "jsd": "js",
    "chi2": "pearson",
    "chi_squared": "pearson",
    "pearson_chi2": "pearson",
    "hellinger": "squared_hellinger",
    "squaredhellinger": "squared_hellinger",
    "sh": "squared_hellinger",
    "tsallis_alpha": "tsallis",
    "vincze_le_cam": "vlc",
    "vinczelecam": "vlc",
    "le_cam": "vlc",
}


def get(identifier: Any) -> Divergence:
    """Returns a `Divergence` from a name, an alias, a config dict or an instance.

    Names: `"kl"`, `"js"`, `"pearson"`, `"squared_hellinger"`, `"tsallis"`,
    `"vlc"`, and the aliases in `ALIASES` (`"chi2"`, `"hellinger"`,
    `"jensen_shannon"`, `"kullback_leibler"`, ...). Case, dashes and spaces
    do not matter.
    """
    if isinstance(identifier, Divergence):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, Divergence):
        return identifier()
    if isinstance(identifier, dict):
        obj = keras.saving.deserialize_keras_object(identifier)
        if not isinstance(obj, Divergence):
            raise ValueError(
                "`divergence` config does not describe a keras_fmicl "
                f"Divergence. Received: divergence={identifier!r}"
            )
        return obj
    if isinstance(identifier, str):
        key = identifier.strip().lower().replace("-", "_").replace(" ", "_")
        key = ALIASES.get(key, key)
        if key in BUILTIN_DIVERGENCES:
            return BUILTIN_DIVERGENCES[key]()
    names = sorted(BUILTIN_DIVERGENCES) + sorted(ALIASES)
    raise ValueError(
        "Unknown `divergence`: expected one of "
        f"{', '.join(repr(n) for n in names)}, or a keras_fmicl.Divergence "
        f"instance. Received: divergence={identifier!r}"
    )


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
