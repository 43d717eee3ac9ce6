"""Argument checks shared by the package: one clear `ValueError` naming the argument."""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any

import keras
import numpy as np

from keras_fmicl.utils import keras_private


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


def float32_max() -> float:
    """The largest finite float32, `3.4028235e38`."""
    return float(np.finfo("float32").max)


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


def check_seed(seed: Any) -> int | None:
    return check_integer("seed", seed, allow_none=True)


def check_sentences(sentences: Any, argument: str = "sentences") -> list[str]:
    """`sentences` as a non-empty list of strings, else a ValueError naming `argument`."""
    if isinstance(sentences, (str, bytes)) or not isinstance(sentences, Iterable):
        raise ValueError(
            f"`{argument}` must be a list of strings (e.g. from load_sentences). "
            f"Received: {argument}={sentences!r:.80}"
        )
    sentences = list(sentences)
    if not sentences:
        raise ValueError(f"`{argument}` must hold at least one sentence. Received: []")
    for index, sentence in enumerate(sentences):
        if not isinstance(sentence, str):
            raise ValueError(
                f"`{argument}` must hold strings only. Received: "
                f"{argument}[{index}]={sentence!r:.80}"
            )
    return sentences


def check_name(name: Any, argument: str = "name") -> str:
    """`name` if it is a non-empty string, else `ValueError` naming `argument`."""
    if not isinstance(name, str) or not name:
        raise ValueError(
            f"`{argument}` must be a non-empty string. Received: {argument}={name!r}"
        )
    return name


def check_image_shape(input_shape: Any, min_size: int = 1, allow_unknown: bool = True) -> tuple:
    """`input_shape` as a tuple `(H, W, C)` of an encoder's images, else `ValueError`.

    The channel count `C` must be a positive integer; the height and width
    must be integers `>= min_size`, or `None` (any size) when
    `allow_unknown`.

    Example:

    ```python
    check_image_shape((None, None, 3), 8)                   # (None, None, 3)
    check_image_shape([96, 96, 3], 32)                      # (96, 96, 3)
    check_image_shape((None, 32, 3), allow_unknown=False)   # ValueError
    ```
    """
    sizes = "(height and width may be None)" if allow_unknown else "(height and width known)"
    message = (
        f"`input_shape` must be (height, width, channels) with positive integers {sizes}, "
        f"height and width >= {min_size}. Received: input_shape={input_shape!r}"
    )
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3:
        raise ValueError(message)
    height, width, channels = input_shape
    for size in (height, width):
        if size is None and allow_unknown:
            continue
        if not is_integer(size) or size < min_size:
            raise ValueError(message)
    if not is_integer(channels) or channels < 1:
        raise ValueError(message)
    return tuple(None if s is None else int(s) for s in input_shape)


def _value_range_layers(augmenter: Any) -> list:
    """`(layer, (low, high))` of the layers of `augmenter` with a `value_range`
    (a layer with one handles its own sublayers)."""
    found, layers = [], [augmenter]
    while layers:
        layer = layers.pop()
        value_range = getattr(layer, "value_range", None)
        if (
            isinstance(value_range, (tuple, list))
            and len(value_range) == 2
            and all(is_real(v) for v in value_range)
        ):
            found.append((layer, (float(value_range[0]), float(value_range[1]))))
        elif isinstance(layer, keras.layers.Layer):
            layers.extend(keras_private.sublayers(layer, include_self=False, recursive=False))
    return found


def check_images_in_value_range(augmenter: Any, images: Any, argument: str = "x") -> None:
    """`ValueError` if `images` lie outside the `value_range` of a layer of `augmenter`.

    The layers checked are those with a `value_range` attribute
    (`SimCLRAugmentation`, Keras' colour layers); they clip their output to
    it. `uint8` images need `value_range=(0, 255)` (they are cast to
    float without rescaling); other images must lie within the range (a
    tolerance of 1e-3 of its width). Only concrete values are checked
    (`concrete_values`); non-finite pixels are left to the NaN guard.

    Args:
        augmenter: a Keras layer, or `None` (nothing to check).
        images: a batch of images, e.g. the first batch of the data.
        argument: the argument's name, for the message.

    Example:

    ```python
    augmenter = keras_fmicl.SimCLRAugmentation(28, value_range=(0, 1))
    check_images_in_value_range(augmenter, np.full((2, 28, 28, 1), 255, "uint8"))  # ValueError
    ```
    """
    if augmenter is None:
        return
    values = concrete_values(images)
    if values is None or values.size == 0 or values.dtype.kind not in "biuf":
        return
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    if finite.size == 0:
        return
    low, high = float(finite.min()), float(finite.max())
    for layer, (range_low, range_high) in _value_range_layers(augmenter):
        owner = "augmenter" if layer is augmenter else f"augmenter layer {layer.name!r}"
        tolerance = 1e-3 * (range_high - range_low)
        if values.dtype == np.uint8:
            bad = not np.allclose((range_low, range_high), (0.0, 255.0), rtol=1e-6, atol=0.0)
        else:
            bad = low < range_low - tolerance or high > range_high + tolerance
        if bad:
            raise ValueError(
                f"The {owner} expects pixels in value_range=({range_low:g}, {range_high:g}) "
                f"and clips to it, but the images `{argument}` ({values.dtype}) lie in "
                f"[{low:g}, {high:g}]"
                + (" (uint8 images are not rescaled)" if values.dtype == np.uint8 else "")
                + ": rescale the images (e.g. x / 255 for value_range=(0, 1)) or set "
                "the augmenter's value_range to their scale. Received: "
                f"{argument} in [{low:g}, {high:g}], value_range=({range_low:g}, {range_high:g})"
            )
