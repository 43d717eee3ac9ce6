"""Views of a batch: shapes, repeating, selecting and grouping the views; standardisation over the batch."""

from __future__ import annotations

import numbers
from typing import Any

import keras
from keras import ops

from keras_fmicl.utils import distributed as utils_distributed
from keras_fmicl.utils.backend_ops import compute_dtype
from keras_fmicl.utils.checks import check_integer

VIEWS_KEY = "views"

_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


# ------------------------------------------------------------------ helpers

def is_shape(value: Any) -> bool:
    """Whether `value` is one shape (a tuple of ints / None), not a structure."""
    return isinstance(value, (tuple, list)) and all(
        d is None or (isinstance(d, numbers.Integral) and not isinstance(d, bool)) for d in value
    )


def map_shapes(fn, shapes: Any) -> Any:
    """`fn` applied to every shape of a (possibly nested) structure of shapes.

    A shape is a tuple of ints and `None`; dicts, lists and tuples of shapes
    are structures (what `ContrastiveModel.build` receives for nested
    inputs).

    Example:

    ```python
    map_shapes(lambda s: (None,) + s[1:], {"token_ids": (8, 16)})  # {"token_ids": (None, 16)}
    ```
    """
    if is_shape(shapes):
        return fn(tuple(shapes))
    if isinstance(shapes, dict):
        return {key: map_shapes(fn, value) for key, value in shapes.items()}
    if isinstance(shapes, (tuple, list)):
        return type(shapes)(map_shapes(fn, value) for value in shapes)
    raise ValueError(f"Expected a shape or a structure of shapes. Received: {shapes!r}")


def encoder_input_rank(encoder: keras.layers.Layer) -> int | None:
    """The rank of a single-input functional encoder's input, else `None`."""
    inputs = getattr(encoder, "inputs", None)
    if inputs and len(inputs) == 1:
        return len(inputs[0].shape)
    return None


def holds_views(model: Any, shape: tuple) -> bool:
    """Whether a single tensor of this shape holds views `(N, V, ...)`."""
    rank = encoder_input_rank(model.encoder)
    if rank is not None:
        return len(shape) == rank + 1
    return model.augmenter is None


def is_float(x: Any) -> bool:
    return keras.backend.standardize_dtype(x.dtype) in _FLOAT_DTYPES


def as_float_images(x: Any) -> Any:
    """Images `(N, H, W, C)` of an integer dtype as `float32` (no rescaling);
    anything else (floats, token ids, other ranks) unchanged."""
    if hasattr(x, "shape") and len(x.shape) == 4 and not is_float(x):
        return ops.cast(x, "float32")
    return x


def repeat_views(inputs: Any, num_views: int) -> Any:
    """Each sample `num_views` times in a row: `(N, ...) -> (N V, ...)`.

    The views of a method whose views differ only through dropout (SimCSE):
    the same input passed `num_views` times through the online network in
    training mode. Works on any structure (a dict of token ids, ...);
    dtypes are kept.

    Args:
        inputs: a tensor or nested structure of `(N, ...)` tensors.
        num_views: `V >= 1`.

    Returns:
        The same structure of `(N V, ...)` tensors, sample-major (row
        `i V + v` is sample `i`).

    Example:

    ```python
    ids = {"token_ids": np.array([[1, 2], [3, 4]])}
    repeat_views(ids, 2)["token_ids"]  # [[1, 2], [1, 2], [3, 4], [3, 4]]
    ```
    """
    num_views = check_integer("num_views", num_views, 1)
    return keras.tree.map_structure(lambda x: ops.repeat(x, num_views, axis=0), inputs)


def tail_shape(x: Any, start: int) -> tuple:
    """`x.shape[start:]`, each unknown dimension read from the tensor."""
    dynamic = ops.shape(x)
    return tuple(d if d is not None else dynamic[k + start] for k, d in enumerate(x.shape[start:]))


def select_views(views: Any, num_views: int, start: int, stop: int) -> Any:
    """Views `start .. stop - 1` of flat sample-major views: `(N V, ...) -> (N (stop - start), ...)`.

    Works on any structure (a dict of token ids, ...); the rows stay
    sample-major. All the views are returned as they are.

    Example:

    ```python
    select_views(x, 2, 0, 1)   # view 0 of each sample: x[0::2]
    ```
    """
    if (start, stop) == (0, num_views):
        return views

    def select(x):
        tail = tail_shape(x, 1)
        grouped = ops.reshape(x, (-1, num_views) + tail)[:, start:stop]
        return ops.reshape(grouped, (-1,) + tail)

    return keras.tree.map_structure(select, views)


STANDARDIZE_EPSILON = 1e-5


def standardize_over_batch(x: Any, global_batch: bool = True) -> Any:
    """`(N, V, d)` embeddings with each coordinate at mean 0, variance 1 over the `N V` rows.

    `(x - mean) / sqrt(var + 1e-5)`, the statistics over the batch's rows
    (every view together), computed in float32 at least: a batch norm
    without scale and offset. With `global_batch`, under data parallelism
    the moments are those of the global batch (summed over the replicas,
    differentiably), so that the result is that of one device.

    Example:

    ```python
    z = standardize_over_batch(keras.random.normal((8, 2, 16)) + 3.0)  # mean 0
    ```
    """
    dtype = x.dtype
    x = ops.cast(x, compute_dtype(x))  # half precision in float32
    count = ops.cast(ops.shape(x)[0] * ops.shape(x)[1], x.dtype)

    def batch_sum(values):  # over the rows, and the replicas with `global_batch`
        total = ops.sum(values, axis=(0, 1))
        return utils_distributed.cross_replica_sum(total) if global_batch else total

    if global_batch:
        count = count * utils_distributed.num_replicas()
    # two passes (mean, then the mean square of the centred values): no
    # cancellation when the mean is large against the spread
    centred = x - batch_sum(x) / count
    variance = batch_sum(ops.square(centred)) / count
    return ops.cast(centred * ops.rsqrt(variance + STANDARDIZE_EPSILON), dtype)


def group_rows(x: Any, count: int) -> Any:
    """`(N C, d)` rows, sample-major, to `(N, C, d)` (keeping d static)."""
    dim = x.shape[-1]
    return ops.reshape(x, (-1, count, -1 if dim is None else dim))


def flatten_views(model: Any, views: Any) -> Any:
    """`(N, V, ...)` views (any structure) to flat `(N V, ...)` rows.

    Raises:
        ValueError: `V` is not `model.num_views`.
    """

    def flatten(x):
        if len(x.shape) < 2 or x.shape[1] != model.num_views:
            raise ValueError(
                f"The inputs hold {x.shape[1] if len(x.shape) > 1 else None} views "
                f"per sample but the model has num_views={model.num_views}. "
                f"Received: views of shape {tuple(x.shape)}"
            )
        return as_float_images(ops.reshape(x, (-1,) + tuple(x.shape[2:])))

    return keras.tree.map_structure(flatten, views)
