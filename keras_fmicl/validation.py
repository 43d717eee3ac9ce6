"""Argument checks shared by the package: a clear `ValueError` naming the
argument and the value received, never a NaN or a backend stack trace."""

from __future__ import annotations

import numbers
from typing import Any

import keras
import numpy as np


def check_positive_number(name: str, value: Any) -> float:
    """`value` as a float if it is a finite number `> 0`, else `ValueError`."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not 0 < value < float("inf")
    ):
        raise ValueError(
            f"`{name}` must be a positive number. Received: {name}={value!r}"
        )
    return float(value)


def check_integer(name: str, value: Any, minimum: int) -> int:
    """`value` as an int if it is an integer `>= minimum`, else `ValueError`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(
            f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}"
        )
    return int(value)


class ConfigEquality:
    """`get_config`-based config round trip, repr, equality and hash for the
    package's plain-Python objects (divergences, similarities)."""

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(self.get_config().items()))))


def check_choice(name: str, value: Any, choices: tuple) -> str:
    """`value` if it is one of the strings `choices`, else `ValueError`.

    Example:

    ```python
    check_choice("supervised_form", "supcon", ("decoupled", "supcon"))
    ```
    """
    if not isinstance(value, str) or value not in choices:
        raise ValueError(
            f"`{name}` must be one of {', '.join(repr(c) for c in choices)}. "
            f"Received: {name}={value!r}"
        )
    return value


def concrete_values(x: Any) -> np.ndarray | None:
    """The values of `x` as a numpy array when they are known now, else `None`.

    Host data (numpy arrays, lists, Python numbers) and eager tensors are
    concrete; a symbolic tensor (inside `tf.function` or `jax.jit`) is not.
    Checks of values go through this: concrete bad values raise a
    `ValueError` at once, while traced ones must be caught in the graph.
    (On PyTorch every tensor is concrete; under `torch.compile` reading
    one splits the graph there.)

    Example:

    ```python
    concrete_values([1, 2])                           # array([1, 2])
    jax.jit(lambda t: concrete_values(t) is None)(x)  # True
    ```
    """
    if x is None:
        return None
    if isinstance(x, (np.ndarray, np.generic, list, tuple, numbers.Number, str, bytes)):
        return np.asarray(x)
    try:
        return np.asarray(keras.ops.convert_to_numpy(x))
    except Exception:  # a symbolic tensor: TF raises NotImplementedError, JAX TypeError
        return None


def describe(values: Any, limit: int = 8) -> str:
    """A short repr of an array-like for error messages (at most `limit` entries)."""
    array = np.asarray(values)
    flat = array.ravel()
    text = np.array2string(flat[:limit], separator=", ", threshold=limit)
    if flat.size > limit:
        text = text[:-1] + ", ...]"
    return f"{text} (shape={array.shape}, dtype={array.dtype})"


def check_sample_weight(sample_weight: Any, num_samples: int | None) -> None:
    """Checks that `sample_weight` is a scalar or of shape `(N,)` / `(N, 1)`.

    `num_samples` is N, or `None` when unknown (then only the rank is
    checked).

    Example:

    ```python
    check_sample_weight(np.ones(8), 8)          # fine
    check_sample_weight(np.ones((8, 2)), 8)     # ValueError
    ```
    """
    if sample_weight is None:
        return
    shape = getattr(sample_weight, "shape", None)
    if shape is None:
        shape = np.shape(sample_weight)
    shape = tuple(None if d is None else int(d) for d in shape)
    if len(shape) == 0:
        return
    length_ok = shape[0] is None or num_samples is None or shape[0] == num_samples
    if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1) or not length_ok:
        raise ValueError(
            "`sample_weight` must be None, a scalar, or one weight per "
            f"sample: shape (N,) or (N, 1) with N = {num_samples}. "
            f"Received: sample_weight.shape={shape}"
        )
