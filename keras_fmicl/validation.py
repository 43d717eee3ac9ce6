"""Argument checks shared by the package: a clear `ValueError` naming the
argument and the value received, never a NaN or a backend stack trace."""

from __future__ import annotations

import numbers
from typing import Any

import keras
import numpy as np


def is_real(value: Any) -> bool:
    """Whether `value` is a real number (a Python or numpy one), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_integer(value: Any) -> bool:
    """Whether `value` is a whole number (a Python or numpy int), not a bool.

    Example:

    ```python
    is_integer(3), is_integer(np.int64(3))   # True, True
    is_integer(True), is_integer(3.0)        # False, False
    ```
    """
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_bool(name: str, value: Any) -> bool:
    """`value` if it is `True` or `False` (numpy's too), else `ValueError`.

    A flag is not read through `bool()`: `bool("no")` is `True`.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"`{name}` must be True or False. Received: {name}={value!r}")
    return bool(value)


def check_positive_number(name: str, value: Any) -> float:
    """`value` as a float if it is a finite number `> 0`, else `ValueError`."""
    if not is_real(value) or not 0 < value < float("inf"):
        raise ValueError(
            f"`{name}` must be a positive number. Received: {name}={value!r}"
        )
    return float(value)


def check_integer(
    name: str,
    value: Any,
    minimum: int | None = None,
    *,
    allow_none: bool = False,
    description: str | None = None,
) -> int | None:
    """`value` as an int if it is a whole number `>= minimum`, else `ValueError`.

    Args:
        name: the argument's name, for the message.
        value: the value to check; a bool is not an integer.
        minimum: the smallest value allowed, or `None` (any integer).
        allow_none: whether `None` passes (and is returned).
        description: what the message says `value` must be; defaults to
            "an integer >= {minimum}" (or "an integer"), with " or None"
            when `allow_none`.

    Example:

    ```python
    check_integer("num_views", 2, 2)                      # 2
    check_integer("seed", None, allow_none=True)          # None
    check_integer("k", 0, 1, description="a positive integer")  # ValueError
    ```
    """
    if value is None and allow_none:
        return None
    if not is_integer(value) or (minimum is not None and value < minimum):
        if description is None:
            description = "an integer" if minimum is None else f"an integer >= {minimum}"
            if allow_none:
                description += " or None"
        raise ValueError(f"`{name}` must be {description}. Received: {name}={value!r}")
    return int(value)


def check_positive_integer(name: str, value: Any) -> int:
    """`value` as an int if it is a whole number `>= 1`, else `ValueError`."""
    return check_integer(name, value, 1, description="a positive integer")


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


def registry_key(name: str) -> str:
    """A name as registries compare it: case-, dash- and space-insensitive."""
    return name.strip().lower().replace("-", "_").replace(" ", "_")


class Registry:
    """Named classes of one kind (divergences, similarities), with aliases.

    Every built-in is registered once, under the canonical `name` of its
    class and its aliases, by decorating the class; `names()`,
    `aliases()`, `canonical()` and `get()` all read that one list.

    Args:
        argument: the argument these objects are passed as (`"divergence"`),
            named in error messages.
        base: the base class every instance must derive from.

    Example:

    ```python
    REGISTRY = Registry("divergence", Divergence)

    @REGISTRY.register("kullback_leibler")
    class KullbackLeibler(Divergence):
        name = "kl"

    REGISTRY.get("Kullback-Leibler")   # KullbackLeibler()
    REGISTRY.names()                   # ("kl",)
    ```
    """

    def __init__(self, argument: str, base: type):
        self.argument = argument
        self.base = base
        self._classes: dict[str, type] = {}
        self._aliases: dict[str, str] = {}

    def register(self, *aliases: str):
        """Class decorator registering a class under its `name` and `aliases`."""

        def decorate(cls: type) -> type:
            self._classes[cls.name] = cls
            for alias in aliases:
                self._aliases[alias] = cls.name
            return cls

        return decorate

    def names(self) -> tuple[str, ...]:
        """The canonical names, in registration order."""
        return tuple(self._classes)

    def classes(self) -> dict[str, type]:
        """`{canonical name: class}` (a copy)."""
        return dict(self._classes)

    def aliases(self) -> dict[str, str]:
        """`{alias: canonical name}` (a copy)."""
        return dict(self._aliases)

    def canonical(self, identifier: Any) -> str | None:
        """The canonical name a string identifier stands for, or `None`."""
        if not isinstance(identifier, str):
            return None
        key = registry_key(identifier)
        key = self._aliases.get(key, key)
        return key if key in self._classes else None

    def is_builtin(self, obj: Any) -> bool:
        """Whether `obj` is an instance of exactly a registered class."""
        return type(obj) in self._classes.values()

    def get(self, identifier: Any, make=None) -> Any:
        """An instance from a name or alias, a config dict, a class or an instance.

        Args:
            identifier: the name (any case, dashes or spaces for
                underscores), a `keras.saving` config dict, a subclass of
                `base`, or an instance (returned as is).
            make: `make(cls)` builds the instance of a named class;
                defaults to `cls()`.
        """
        base_name = f"keras_fmicl.{self.base.__name__}"
        if isinstance(identifier, self.base):
            return identifier
        if isinstance(identifier, type) and issubclass(identifier, self.base):
            return identifier()
        if isinstance(identifier, dict):
            obj = keras.saving.deserialize_keras_object(identifier)
            if not isinstance(obj, self.base):
                raise ValueError(
                    f"`{self.argument}` config does not describe a keras_fmicl "
                    f"{self.base.__name__}. Received: {self.argument}={identifier!r}"
                )
            return obj
        name = self.canonical(identifier)
        if name is not None:
            cls = self._classes[name]
            return cls() if make is None else make(cls)
        names = sorted(self._classes) + sorted(self._aliases)
        raise ValueError(
            f"Unknown `{self.argument}`: expected one of "
            f"{', '.join(repr(n) for n in names)}, or a {base_name} "
            f"instance. Received: {self.argument}={identifier!r}"
        )
