"""Similarities: the f-Gaussian similarity (the log density ratio) and the cosine."""

from __future__ import annotations

import warnings
from typing import Any

import keras
from keras import ops

from keras_fmicl.utils.checks import check_positive_number
from keras_fmicl.utils.registry import PACKAGE
from keras_fmicl.utils.registry import ConfigEquality
from keras_fmicl.utils.registry import Registry

# Floor of the squared norm of the prescaled rows in `l2_normalize`. A
# non-zero row, divided by its largest absolute entry, has a squared norm of
# at least 1: the floor only acts on zero rows, whose gradient it keeps
# finite (about 3e3 times the upstream one, finite in float16 too).
_NORM_EPSILON = 1e-7

# float32's smallest normal number, 2**-126 (about 1.18e-38). A row whose
# largest absolute entry is below it counts as a zero row on every backend:
# XLA (TensorFlow, JAX) flushes subnormal floats to zero on CPU, PyTorch
# does not, so without one rule a row of 1e-40 was a zero vector on two
# backends and a unit vector on the third.
_SMALLEST_NORMAL = 2.0**-126

# The paper's vision setting, (2 sigma^2)^-1 = 1; why: docs/fmicl-math.md, section 8.
DEFAULT_SIGMA = 2**-0.5

# f-MICL's best cosine temperature on a validation sweep; why: docs/results.md.
DEFAULT_TEMPERATURE = 1.0


def l2_normalize(x: Any, axis: int = -1) -> Any:
    """`x / ||x||` along `axis`, scale-invariant; zero vectors stay zero.

    Computed as `u / ||u||` with `u = x / stop_gradient(max |x_i|)`, the
    row divided by its largest absolute entry (see `docs/fmicl-math.md`,
    section 7.1, "Zero rows"). The result does not depend
    on that prescale, so it is exact, and `||u||^2` lies in `[1, d]` for
    every finite non-zero row: no underflow of the squared norm for tiny
    rows (`1e-30`), no overflow for huge ones (`1e30`). `x * c` for any
    `c > 0` gives the same result (to rounding), and a gradient `1 / c`
    times that at `x`: nonzero and finite over the whole float range.

    A zero row stays zero (orthogonal to everything): its squared norm is
    floored at `_NORM_EPSILON` and its prescale taken as 1. So is, on every
    backend and in every dtype, a row whose largest absolute entry is below
    `_SMALLEST_NORMAL` (`2**-126`, float32's smallest normal number, about
    1.18e-38): a row of subnormal floats such as `1e-40` is a zero row (its
    output, at most `3.2e3` times its entries, is below `1e-34`), since XLA
    flushes subnormals to zero on CPU and PyTorch does not. The scale
    invariance holds for rows above that threshold. A row holding a
    NaN or an infinity comes out NaN (`inf / inf`): the losses then return
    NaN, on purpose.

    Args:
        x: tensor of embeddings, any float dtype.
        axis: the axis normalised. Defaults to the last one.

    Returns:
        A tensor of the shape and dtype of `x`.

    Example:

    ```python
    l2_normalize(np.array([[3e-30, 4e-30], [0.0, 0.0]], "float32"))
    # [[0.6, 0.8], [0.0, 0.0]]
    ```
    """
    x = ops.convert_to_tensor(x)
    # amax, not max: Keras' torch `max` breaks torch.compile graphs.
    largest = ops.stop_gradient(ops.amax(ops.abs(x), axis=axis, keepdims=True))
    # Compared in float32 (2**-126 is 0 in float16): a subnormal maximum is
    # below the threshold whether the backend flushes it to 0 or not.
    is_normal = ops.cast(largest, "float32") >= _SMALLEST_NORMAL
    largest = ops.where(is_normal, largest, ops.ones_like(largest))
    # x / largest as two products by largest^(-1/2), which is a normal float
    # over the whole range: XLA turns a division into a product by the
    # reciprocal, which is subnormal (flushed to 0) for largest > 8.5e37.
    # A rounding error of the prescale cancels in u / ||u||.
    inverse_root = ops.rsqrt(largest)
    u = (x * inverse_root) * inverse_root
    squared_norm = ops.sum(ops.square(u), axis=axis, keepdims=True)
    # `<`, not `>`: a NaN squared norm stays NaN (the whole row NaN).
    squared_norm = ops.where(squared_norm < _NORM_EPSILON, _NORM_EPSILON, squared_norm)
    return u * ops.rsqrt(squared_norm)


def cosine_matrix(x: Any, y: Any | None = None) -> Any:
    """`(M, K)` matrix of cosine similarities of the rows of `x` and `y`."""
    x = l2_normalize(x)
    y = x if y is None else l2_normalize(y)
    return row_dot(x, y)


def row_dot(x: Any, y: Any) -> Any:
    """`(M, K)` dot products of the rows of `x` `(M, d)` and `y` `(K, d)`."""
    # einsum, not matmul: Keras' torch matmul computes float64 in float32.
    return ops.einsum("md,kd->mk", x, y)


@keras.saving.register_keras_serializable(package=PACKAGE)
class Similarity(ConfigEquality):
    """Base class: maps embeddings to log density ratios.

    Subclasses implement `log_ratio_from_cosine(cosine)`, an elementwise map
    of the cosine similarity of two embeddings to `l`. Calling the object on
    `(M, d)` and `(K, d)` embeddings returns the `(M, K)` matrix of `l`.
    """

    name: str = "similarity"
    # The keyword argument of the constructor that `get(name, sigma=...,
    # temperature=...)` passes on (`"sigma"`, `"temperature"`), or `None`.
    parameter: str | None = None

    @property
    def cosine_scale(self) -> float:
        """Factor the loss applies to the normalised queries before the matmul.

        `log_ratio_from_scaled_cosine` then receives `cosine_scale * cos`.
        """
        return 1.0

    @property
    def log_ratio_offset(self) -> float | None:
        """`b` when `l = cosine_scale * cos + b` (up to a round-off clamp), else `None`.

        An affine similarity lets the loss fold exponential scores into the
        matmul: `exp(k l) = exp(k b) exp(k cosine_scale cos)`.
        """
        return None

    def log_ratio_from_cosine(self, cosine: Any) -> Any:
        raise NotImplementedError

    def log_ratio_from_scaled_cosine(self, scaled_cosine: Any) -> Any:
        """`l` from `cosine_scale * cos` (by default: undo the scale)."""
        if self.cosine_scale == 1.0:
            return self.log_ratio_from_cosine(scaled_cosine)
        return self.log_ratio_from_cosine(scaled_cosine * (1.0 / self.cosine_scale))

    def log_ratio_range(self) -> tuple[float, float]:
        """The smallest and largest log ratio the similarity can give.

        By default `l` at cosines -1 and 1 (a monotonic similarity);
        `(-inf, inf)` (unknown) where they cannot be evaluated, e.g. while
        tracing a TensorFlow graph: the loss then takes its generic paths.
        """
        try:
            ends = [
                float(ops.convert_to_numpy(self.log_ratio_from_cosine(ops.convert_to_tensor(c))))
                for c in (-1.0, 1.0)
            ]
        except (NotImplementedError, TypeError, ValueError):
            return float("-inf"), float("inf")
        return min(ends), max(ends)

    def __call__(self, x: Any, y: Any | None = None) -> Any:
        """Log density-ratio matrix of the rows of `x` against those of `y`.

        Args:
            x: `(M, d)` embeddings.
            y: `(K, d)` embeddings; `x` itself when omitted.

        Returns:
            The `(M, K)` matrix `l(x_m, y_k)`.
        """
        return self.log_ratio_from_cosine(cosine_matrix(x, y))


REGISTRY = Registry("similarity", Similarity)


@REGISTRY.register("f_gaussian", "rbf")
@keras.saving.register_keras_serializable(package=PACKAGE)
class Gaussian(Similarity):
    """The f-Gaussian similarity: `l = -||z^_a - z^_b||^2 / (2 sigma^2)`.

    Computed as `-relu(2 - 2 cos) / (2 sigma^2)` from the cosine of the two
    embeddings (the clamp absorbs round-off). `l` lies in `[-2/sigma^2, 0]`.

    Args:
        sigma: bandwidth `sigma > 0`. Defaults to `2 ** -0.5` (about
            0.707: `(2 sigma^2)^-1 = 1`, `l` in `[-4, 0]`), the paper's
            vision setting (with `alpha=40` in `FMICLLoss`); its text
            setting is `40 ** -0.5` (about 0.158). 0.5 makes the KL
            uniformity term the `t = 2` Gaussian potential of Wang & Isola.

    Example:

    ```python
    similarity = keras_fmicl.Gaussian()          # sigma = 2 ** -0.5
    l = similarity(keras.random.normal((4, 8)))  # (4, 4) log ratios
    ```
    """

    name = "gaussian"
    parameter = "sigma"

    def __init__(self, sigma: float = DEFAULT_SIGMA):
        self.sigma = check_positive_number("sigma", sigma)

    @property
    def cosine_scale(self):
        return 1.0 / self.sigma**2

    @property
    def log_ratio_offset(self):
        return -self.cosine_scale

    def log_ratio_from_cosine(self, cosine):
        return self.log_ratio_from_scaled_cosine(cosine * self.cosine_scale)

    def log_ratio_from_scaled_cosine(self, scaled_cosine):
        # -||z^_a - z^_b||^2 / (2 sigma^2) = (cos - 1) / sigma^2, at most 0.
        shifted = ops.convert_to_tensor(scaled_cosine) - self.cosine_scale
        return ops.clip(shifted, float("-inf"), 0.0)

    def log_ratio_range(self):
        return -2.0 / self.sigma**2, 0.0

    def get_config(self):
        return {"sigma": self.sigma}


@REGISTRY.register("cos")
@keras.saving.register_keras_serializable(package=PACKAGE)
class Cosine(Similarity):
    """InfoNCE's similarity: `l = cos(z_a, z_b) / temperature`.

    Args:
        temperature: `temperature > 0`. Defaults to 1.0 (f-MICL's best of
            0.1, 0.2, 0.5 and 1.0 in the temperature suite of `benchmarks/`;
            `InfoNCELoss` uses 0.1 unless given a temperature).
    """

    name = "cosine"
    parameter = "temperature"

    def __init__(self, temperature: float = DEFAULT_TEMPERATURE):
        self.temperature = check_positive_number("temperature", temperature)

    @property
    def cosine_scale(self):
        return 1.0 / self.temperature

    @property
    def log_ratio_offset(self):
        return 0.0

    def log_ratio_from_cosine(self, cosine):
        return cosine * (1.0 / self.temperature)

    def log_ratio_from_scaled_cosine(self, scaled_cosine):
        return scaled_cosine

    def log_ratio_range(self):
        return -1.0 / self.temperature, 1.0 / self.temperature

    def get_config(self):
        return {"temperature": self.temperature}


# Views of the registry (canonical name -> class, alias -> canonical name).
BUILTIN_SIMILARITIES = REGISTRY.classes()

ALIASES = REGISTRY.aliases()


def names() -> tuple[str, ...]:
    """The canonical names of the built-in similarities: `("gaussian", "cosine")`."""
    return REGISTRY.names()


def canonical_name(identifier: Any) -> str | None:
    """The canonical name a string names (`"cos"` -> `"cosine"`), else `None`."""
    return REGISTRY.canonical(identifier)


def get(
    identifier: Any,
    sigma: float | None = None,
    temperature: float | None = None,
    stacklevel: int = 2,
) -> Similarity:
    """Returns a `Similarity` from a name, a config dict or an instance.

    A parameter the similarity does not use (`temperature` with
    `"gaussian"`, `sigma` with `"cosine"`, either with a `Similarity`
    instance or config, which carries its own) triggers a `UserWarning`
    naming it; `None` means "not given" and stays silent.

    Args:
        identifier: a name of `names()` or an alias of `ALIASES` (`"f_gaussian"`,
            `"cos"`, ...), a config dict, or a `Similarity` instance
            (returned as is).
        sigma: bandwidth for `"gaussian"`; its default when `None`.
        temperature: temperature for `"cosine"`; its default when `None`.
        stacklevel: of the warning, as for `warnings.warn` (counted from
            the caller of `get`: 2 points at it).

    Example:

    ```python
    similarities.get("gaussian", sigma=0.5)       # Gaussian(sigma=0.5)
    similarities.get("cosine", sigma=0.5)         # warns: sigma is ignored
    ```
    """
    parameters = {"sigma": sigma, "temperature": temperature}

    def make(cls):
        value = parameters.get(cls.parameter)
        return cls() if value is None else cls(**{cls.parameter: value})

    similarity = REGISTRY.get(identifier, make=make)
    _warn_unused_parameters(identifier, similarity, parameters, stacklevel + 1)
    return similarity


def _warn_unused_parameters(identifier, similarity, parameters, stacklevel):
    """Warns about `sigma` / `temperature` given to a similarity that ignores them."""
    is_name = isinstance(identifier, str)
    for name, value in parameters.items():
        if value is None or (is_name and similarity.parameter == name):
            continue
        if is_name:
            reason = f"similarity={identifier!r} does not use it"
        else:
            reason = f"the similarity {similarity!r} carries its own parameters"
        warnings.warn(
            f"`{name}` is ignored: {reason}. Received: {name}={value!r}. "
            f"Pass {name}=None (the default) to silence this warning.",
            UserWarning,
            stacklevel=stacklevel,
        )


def serialize(similarity: Similarity) -> dict:
    return keras.saving.serialize_keras_object(similarity)
