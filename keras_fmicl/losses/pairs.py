"""The pair set of a contrastive batch: checks, positives, negatives, keys, queue and masks."""

from __future__ import annotations

import dataclasses
import math
from typing import Any
from typing import Callable
from typing import NamedTuple

import keras
import numpy as np
from keras import ops

from keras_fmicl.losses.similarities import l2_normalize
from keras_fmicl.losses.similarities import row_dot
from keras_fmicl.utils import backend_ops as utils_backend_ops
from keras_fmicl.utils import distributed as utils_distributed
from keras_fmicl.utils.backend_ops import all_finite
from keras_fmicl.utils.backend_ops import compute_dtype
from keras_fmicl.utils.checks import check_bool
from keras_fmicl.utils.checks import check_choice
from keras_fmicl.utils.checks import concrete_values
from keras_fmicl.utils.checks import describe


def _static_shape(x: Any) -> tuple:
    return tuple(None if d is None else int(d) for d in x.shape)


@dataclasses.dataclass(eq=False)
class ContrastiveBatch:
    """The pair set of a batch: cosines and masks of its positive and negative pairs.

    Every cosine tensor (`own_sample`, `batch_matrix`, `queue_matrix`) holds
    `scale * cos + offset`.

    Attributes:
        scale, offset: Python floats, the map of every cosine tensor.
        num_samples: N (a Python int when static, else a scalar tensor).
        num_views: V, the views of the anchors (always static).
        dtype: the compute dtype.
        own_sample: `(N, V, V_k)`: query `(i, v)` against key `(i, w)`, for
            every `w` (the anchor's own view included); `V_k = V` but with
            `key_views="all"`.
        positive_mask: `(V, V_k)` bool, `w != v` (every `w` with
            `key_views="all"`): the positives of `own_sample`.
        positive_count: positives per anchor, `(N, V)` or a scalar.
        negative_count: negatives per anchor, `(N, V)` or a scalar.
        nan_guard: scalar, 0 or NaN: NaN when an input holds a NaN or an
            infinity or traced labels are invalid; the losses add it to
            their per-sample values.
        in_batch_negatives: whether `batch_matrix` holds negatives.
        other_sample_negatives: whether the in-batch negatives of an anchor
            are exactly every candidate of every other sample (no labels,
            no momentum keys): its negative sum may then be the row sum
            minus `own_sample` (`keras_fmicl.fast_paths.negative_sum`).
        num_other_samples: `N_global - 1` as a Python int when static,
            else `None`.
        symmetric_operand: `(M, d)` `w = sqrt(scale) z^` when the queries
            contrast with themselves on one replica (then `batch_matrix =
            w w^T + offset`), else `None`.
        batch_positive_mask: `(M, M)` bool: other samples with the same
            label (supervised only), else `None`.
        queue_matrix: `(M, K)`: every query against every queue entry, or
            `None`.
        queue_mask: `(K,)` bool of the valid queue entries, or `None` (all).
        batch_matrix_fn, batch_negative_mask_fn: zero-argument builders of
            `batch_matrix` and `batch_negative_mask` (`None`: no such
            tensor), called on first use: a loss that subtracts the
            same-sample pairs never builds the `(M, M)` mask.
    """

    scale: float
    offset: float
    num_samples: Any
    num_views: int
    dtype: str
    own_sample: Any
    positive_mask: Any
    positive_count: Any
    negative_count: Any
    nan_guard: Any
    in_batch_negatives: bool = False
    other_sample_negatives: bool = False
    num_other_samples: int | None = None
    symmetric_operand: Any = None
    batch_positive_mask: Any = None
    queue_matrix: Any = None
    queue_mask: Any = None
    batch_matrix_fn: Callable[[], Any] | None = None
    batch_negative_mask_fn: Callable[[], Any] | None = None
    # What the builders returned. (A dict, not `functools.cached_property`,
    # whose lock breaks torch.compile graphs.)
    _built: dict = dataclasses.field(default_factory=dict, init=False, repr=False)

    @property
    def batch_matrix(self) -> Any:
        """`(M, M_global)`: every query against every in-batch key, or `None`."""
        return self._build_once("batch_matrix", self.batch_matrix_fn)

    @property
    def batch_negative_mask(self) -> Any:
        """`(M, M_global)` bool of the in-batch negatives, or `None`."""
        return self._build_once("batch_negative_mask", self.batch_negative_mask_fn)

    def _build_once(self, name: str, builder: Callable[[], Any] | None) -> Any:
        if builder is None:
            return None
        if name not in self._built:
            self._built[name] = builder()
        return self._built[name]

    def reshape_rows(self, x: Any) -> Any:
        """`(M,)` per-anchor values to `(N, V)`."""
        return ops.reshape(x, (-1, self.num_views))

    def to_cosine(self, x: Any) -> Any:
        """The cosines of a tensor of the batch (undoes `scale` and `offset`)."""
        if self.offset != 0.0:
            x = x - self.offset
        return x * (1.0 / self.scale) if self.scale != 1.0 else x


class _Inputs(NamedTuple):
    """The validated inputs of `build`, in the compute dtype."""

    queries: Any
    keys: Any  # None: the queries contrast with themselves
    queue: Any
    queue_mask: Any
    labels: Any
    labels_valid: Any
    dtype: str
    n_static: int | None
    num_views: int  # V of the queries (the anchors)
    dim: int | None
    key_views: str = "other"  # "other": keys of the queries' views; "all": other views
    num_key_views: int | None = None  # V of the keys (that of the queries without keys)


def check_embeddings(x: Any, argument: str, min_views: int = 2) -> Any:
    """Validates an `(N, V, d)` tensor of embeddings and returns it as a tensor.

    `min_views`: the fewest views `V` accepted (2, or 1 for queries or keys
    whose positives are in the other tensor, `key_views="all"`).
    """
    if x is None:
        raise ValueError(
            f"`{argument}` must be an (N, V, d) tensor of embeddings: N samples "
            f"seen in V >= {min_views} views. Received: {argument}=None"
        )
    x = ops.convert_to_tensor(x)
    shape = _static_shape(x)
    if len(shape) != 3:
        raise ValueError(
            f"`{argument}` must have rank 3, shape (N, V, d): N samples seen "
            f"in V >= {min_views} views, each a d-dimensional embedding. Received: "
            f"{argument}.shape={shape}"
        )
    if shape[1] is None:
        raise ValueError(
            f"The number of views (axis 1 of `{argument}`) must be known "
            f"statically. Received: {argument}.shape={shape}"
        )
    if shape[1] < min_views:
        raise ValueError(
            f"`{argument}` must hold V >= 2 views of each sample (axis 1): a "
            f"single view has no positive. Received: {argument}.shape={shape}"
        )
    if shape[0] == 0:
        raise ValueError(
            f"`{argument}` must hold at least one sample (axis 0). "
            f"Received: {argument}.shape={shape}"
        )
    if shape[2] == 0:
        raise ValueError(
            f"`{argument}` must hold embeddings of dimension d >= 1 (axis 2). "
            f"Received: {argument}.shape={shape}"
        )
    return x


# The largest integer a label may hold to be compared as an int32.
_INT32_MAX = 2**31 - 1


def check_labels(
    labels: Any, num_samples: int | None, argument: str = "y_true"
) -> tuple[Any, Any]:
    """Validates class labels of shape `(N,)` (or `(N, 1)`).

    Labels are non-negative integers, or floats holding such values (`3.0`).
    NaN, infinite, negative or fractional labels, strings and labels of
    another shape are rejected: with a `ValueError` when the values are
    concrete (host data, eager tensors), and when they are only known
    inside a traced function (`tf.function`, `jax.jit`) through the
    returned flag, which `build` turns into a NaN loss (never a silently
    coerced finite one).

    Args:
        labels: the labels, or `None` (self-supervised).
        num_samples: N, or `None` when not static.
        argument: the argument name used in error messages.

    Returns:
        `(labels, valid)`: the labels as a tensor of shape `(N,)` (compared
        for equality only), and `None`, or a scalar bool tensor that is
        False when traced labels are invalid.
    """
    if labels is None:
        return None, None
    expected = (
        f"`{argument}` must be None (self-supervised) or non-negative integer "
        f"class labels of shape (N,) = ({num_samples},), one per sample of the "
        "embeddings (integer-valued floats such as 3.0 are accepted)"
    )
    values = concrete_values(labels)
    if values is not None:
        kind = values.dtype.kind
        shape = values.shape
    else:
        dtype = keras.backend.standardize_dtype(labels.dtype)
        kind = "b" if dtype == "bool" else "f" if dtype.startswith(("float", "bfloat")) else (
            "u" if dtype.startswith("uint") else "i" if dtype.startswith("int") else "O"
        )
        shape = _static_shape(labels)
    if kind not in "biuf":
        shown = describe(values) if values is not None else f"<tensor of dtype {dtype}>"
        raise ValueError(f"{expected}. Received: {argument}={shown}")
    if len(shape) == 2 and shape[1] == 1:
        shape = shape[:1]
        labels = values.reshape(-1) if values is not None else ops.reshape(labels, (-1,))
        values = None if values is None else values.reshape(-1)
    if len(shape) != 1 or (
        shape[0] is not None and num_samples is not None and shape[0] != num_samples
    ):
        raise ValueError(f"{expected}. Received: {argument}.shape={tuple(shape)}")

    if values is not None:
        if kind == "f":
            bad = ~np.isfinite(values) | (values < 0)
            bad |= np.where(np.isfinite(values), values != np.floor(values), False)
        else:
            bad = values < 0 if kind == "i" else np.zeros(values.shape, bool)
        if np.any(bad):
            index = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{expected}. Received: {argument}={describe(values)}, with "
                f"{int(np.sum(bad))} invalid label(s), the first "
                f"{argument}[{index}]={values[index].item()!r}"
            )
        if not keras.ops.is_tensor(labels):
            # Host data: integers as int32 when they fit (exact on every
            # backend, JAX without x64 included).
            if values.size == 0 or values.max() <= _INT32_MAX:
                labels = values.astype("int32")
            elif kind == "f":
                labels = values.astype("int64")
            else:
                labels = values
        labels = ops.convert_to_tensor(labels)
        if kind == "b":
            labels = ops.cast(labels, "int32")
        return labels, None

    valid = None
    if kind == "f":
        valid = ops.all(
            ops.logical_and(
                ops.logical_and(ops.isfinite(labels), labels >= 0),
                ops.equal(ops.floor(labels), labels),
            )
        )
    elif kind == "i":
        valid = ops.all(labels >= 0)
    elif kind == "b":
        labels = ops.cast(labels, "int32")
    return labels, valid


KEY_VIEWS = ("other", "all")


def validate(
    queries: Any, keys: Any, queue: Any, queue_mask: Any, labels: Any,
    in_batch_negatives: bool, query_argument: str, label_argument: str,
    key_views: str = "other",
) -> _Inputs:  # fmt: skip
    """Step 1 of `build`: checks shapes and labels, casts to the compute dtype.

    The arguments are those of `build`.

    Raises:
        ValueError: bad shapes, concrete bad labels, a `queue_mask` without
            a queue, a batch of one without a queue, no negatives at all, or
            `key_views="all"` without keys.
    """
    key_views = check_choice("key_views", key_views, KEY_VIEWS)
    cross = key_views == "all"
    if cross and keys is None:
        raise ValueError(
            '`key_views="all"` pairs every query with every key of its sample: '
            "it needs `keys` (N, V_k, d), the embeddings of the other views. "
            "Received: keys=None"
        )
    queries = check_embeddings(queries, query_argument, min_views=1 if cross else 2)
    dtype = compute_dtype(queries)
    queries = ops.cast(queries, dtype)
    n_static, num_views, dim = _static_shape(queries)
    num_key_views = num_views
    if keys is not None:
        keys = ops.cast(check_embeddings(keys, "keys", min_views=1 if cross else 2), dtype)
        k_shape = _static_shape(keys)
        expected = (n_static, None if cross else num_views, dim)
        if any(a is not None and b is not None and a != b for a, b in zip(k_shape, expected)):
            raise ValueError(
                (
                    "`keys` must have the number of samples N and the dimension d of the "
                    f"queries, (N, V_k, d) = ({n_static}, V_k, {dim})"
                    if cross
                    else f"`keys` must have the shape of the queries (N, V, d) = {expected}"
                )
                + f". Received: keys.shape={k_shape}"
            )
        num_key_views = k_shape[1]
    if queue is not None:
        queue = ops.cast(ops.convert_to_tensor(queue), dtype)
        q_shape = _static_shape(queue)
        if len(q_shape) != 2 or (q_shape[1] is not None and dim is not None and q_shape[1] != dim):
            raise ValueError(
                f"`queue` must have shape (K, d) with d = {dim}. Received: "
                f"queue.shape={q_shape}"
            )
        if q_shape[0] == 0:
            raise ValueError(
                "`queue` must hold at least one negative (axis 0); pass "
                f"queue=None for none. Received: queue.shape={q_shape}"
            )
    if queue_mask is not None:
        if queue is None:
            raise ValueError(
                "`queue_mask` marks the valid entries of a `queue`, but no "
                "queue was given. Received: queue=None, "
                f"queue_mask.shape={_static_shape(ops.convert_to_tensor(queue_mask))}"
            )
        queue_mask = ops.convert_to_tensor(queue_mask)
        m_shape = _static_shape(queue_mask)
        if len(m_shape) != 1 or (
            m_shape[0] is not None and q_shape[0] is not None and m_shape[0] != q_shape[0]
        ):
            raise ValueError(
                f"`queue_mask` must have shape (K,) = ({q_shape[0]},), one flag "
                "per entry of `queue`. Received: "
                f"queue_mask.shape={m_shape} for queue.shape={q_shape}"
            )
        queue_mask = ops.cast(queue_mask, "bool")
    if n_static == 1 and queue is None:
        raise ValueError(
            f"`{query_argument}` must hold at least 2 samples (axis 0): with a "
            "batch of one there are no negatives. Received: "
            f"{query_argument}.shape={(n_static, num_views, dim)}"
        )
    labels, labels_valid = check_labels(labels, n_static, label_argument)
    if not in_batch_negatives and queue is None:
        raise ValueError(
            "With `in_batch_negatives=False` a `queue` of negatives is "
            "required. Received: queue=None"
        )
    return _Inputs(
        queries, keys, queue, queue_mask, labels, labels_valid, dtype, n_static, num_views, dim,
        key_views, num_key_views,
    )  # fmt: skip


def _nan_guard(inputs: _Inputs) -> Any:
    """0, or NaN when an input holds a NaN or an infinity or traced labels
    are invalid: one pass over the `(M, d)` inputs."""
    valid = all_finite(inputs.queries)
    for x in (inputs.keys, inputs.queue):
        if x is not None:
            valid = ops.logical_and(valid, all_finite(x))
    if inputs.labels_valid is not None:
        valid = ops.logical_and(valid, inputs.labels_valid)
    return ops.cast(ops.where(valid, 0.0, float("nan")), inputs.dtype)


def build(
    queries: Any,
    keys: Any | None = None,
    queue: Any | None = None,
    queue_mask: Any | None = None,
    labels: Any | None = None,
    in_batch_negatives: bool = True,
    global_negatives: bool = True,
    query_argument: str = "y_pred",
    label_argument: str = "y_true",
    scale: float = 1.0,
    offset: float = 0.0,
    key_views: str = "other",
) -> ContrastiveBatch:
    """Builds the `ContrastiveBatch` of queries against keys (and a queue).

    Args:
        queries: `(N, V, d)` anchor embeddings.
        keys: `(N, V, d)` key embeddings (momentum encoder), or `None` to
            contrast the queries with themselves (SimCLR). With
            `key_views="all"`, `(N, V_k, d)`.
        queue: `(K, d)` extra negatives (MoCo v2 queue), or `None`.
        queue_mask: `(K,)` bool marking the filled queue entries, or `None`
            (requires `queue`).
        labels: `(N,)` integer labels for supervised contrast, or `None`.
        in_batch_negatives: whether the other samples of the batch are
            negatives (False: MoCo v2, only the queue).
        global_negatives: under data parallelism, contrast with the keys of
            the global batch (all replicas), not only the replica's shard.
        query_argument, label_argument: the argument names of the queries
            and labels used in error messages.
        scale, offset: every cosine tensor of the result holds
            `scale * cos + offset`: the normalised queries are multiplied
            by `scale` (one `(M, d)` product instead of an `(M, M)` one) and
            the offset enters the matmuls as a column of `offset` appended
            to the queries, of ones to the keys (no `(M, M)` addition).
        key_views: `"other"`: the keys embed the queries' views, and query
            `(i, v)` pairs with the keys `(i, w)`, `w != v` (positives) and
            `(j, w)`, `j != i`, `w != v` (negatives); `"all"`: the keys
            embed other views than the queries (MoCo v2's and SimCSE's one
            direction: queries of view 0, keys of view 1), and query
            `(i, v)` pairs with every key `(i, w)` (positives) and every
            key `(j, w)`, `j != i` (negatives). `V = 1` is then allowed.

    Bad shapes and concrete bad labels raise a `ValueError`. Values that
    make the loss meaningless and that only the computation sees, a NaN or
    an infinity anywhere in the queries, keys or queue (masked queue entries
    included), or invalid labels inside a traced function, set
    `nan_guard` to NaN: the losses add it to every per-sample value, so
    that the loss is NaN (and `keras.callbacks.TerminateOnNaN` fires),
    never a silently finite number.

    Example:

    ```python
    batch = contrast.build(y_pred, scale=2.0)   # tensors hold 2 cos
    ```
    """
    in_batch_negatives = check_bool("in_batch_negatives", in_batch_negatives)
    global_negatives = check_bool("global_negatives", global_negatives)
    inputs = validate(
        queries, keys, queue, queue_mask, labels, in_batch_negatives, query_argument,
        label_argument, key_views,
    )  # fmt: skip
    num_views = inputs.num_views
    num_samples = inputs.n_static if inputs.n_static is not None else ops.shape(inputs.queries)[0]
    unit_queries = l2_normalize(inputs.queries)
    self_contrast = inputs.keys is None
    unit_keys = unit_queries if self_contrast else l2_normalize(inputs.keys)
    queries = unit_queries * scale if scale != 1.0 else unit_queries
    own_sample = utils_backend_ops.view_dots(queries, unit_keys)
    if offset != 0.0:
        own_sample = own_sample + offset
    if inputs.key_views == "all":
        positive_mask = ops.ones((num_views, inputs.num_key_views), dtype="bool")
        positive_count = float(inputs.num_key_views)
    else:
        # A tensor, not a numpy constant: numpy arrays inside the loss break
        # torch.compile graphs (Keras' torch convert_to_tensor reads ndarray.dtype).
        view_index = ops.arange(num_views, dtype="int32")
        positive_mask = ops.not_equal(view_index[:, None], view_index[None, :])
        positive_count = float(num_views - 1)
    fields = dict(
        scale=scale,
        offset=offset,
        num_samples=num_samples,
        num_views=num_views,
        dtype=inputs.dtype,
        own_sample=own_sample,
        positive_mask=positive_mask,
        positive_count=positive_count,
        negative_count=0.0,
        nan_guard=_nan_guard(inputs),
    )
    flat_queries = ops.reshape(queries, (-1, ops.shape(queries)[-1]))
    if in_batch_negatives or inputs.labels is not None:
        candidates = _gather(
            inputs, unit_queries, unit_keys, flat_queries, scale, offset, global_negatives
        )
        fields.update(_masks(inputs, candidates, num_samples, in_batch_negatives))
    if inputs.queue is not None:
        queue_matrix, queue_count = _queue(inputs, flat_queries, offset)
        fields["queue_matrix"] = queue_matrix
        fields["queue_mask"] = inputs.queue_mask
        fields["negative_count"] = fields["negative_count"] + queue_count
    return ContrastiveBatch(**fields)


class _Candidates(NamedTuple):
    """The in-batch candidates of the anchors (`_gather`)."""

    replicas: int
    sample_offset: Any  # sample index of this replica's first anchor
    labels: Any  # the candidates' labels, or None
    symmetric_operand: Any
    batch_matrix_fn: Callable[[], Any]


def _gather(
    inputs: _Inputs,
    unit_queries: Any,
    unit_keys: Any,
    flat_queries: Any,
    scale: float,
    offset: float,
    global_negatives: bool,
) -> _Candidates:
    """Step 2 of `build`: the in-batch candidates and the `(M, M_global)` matrix.

    Under data parallelism the candidates are the keys of the global batch,
    gathered from every replica: replica r holds samples r N .. (r + 1) N - 1.
    On one replica, a batch contrasted with itself has one operand on both
    sides, `w = sqrt(scale) z^`, and a symmetric matrix `w w^T`: the fast
    paths differentiate its row sums with one matmul
    (`fast_paths.symmetric_row_sum`), and the compilers differentiate
    `w w^T` itself with one matmul fewer (`(G + G^T) w`).
    """
    dim = ops.shape(unit_queries)[-1]
    flat_keys = ops.reshape(unit_keys, (-1, dim))
    replicas = utils_distributed.num_replicas() if global_negatives else 1
    sample_offset = 0
    labels = inputs.labels
    symmetric_operand = None
    if replicas > 1:
        flat_keys = utils_distributed.all_gather(flat_keys)
        sample_offset = utils_distributed.replica_index() * (
            inputs.n_static if inputs.n_static is not None else ops.shape(inputs.queries)[0]
        )
        if labels is not None:
            labels = utils_distributed.all_gather(labels)
    elif inputs.keys is None and scale > 0:
        symmetric_operand = ops.reshape(unit_queries * math.sqrt(scale), (-1, dim))
    if symmetric_operand is not None:
        operands = (symmetric_operand, symmetric_operand)
    else:
        operands = (flat_queries, flat_keys)

    def batch_matrix():
        # The offset inside the matmul (an extra column, no (M, M)
        # addition): w w^T + offset stays symmetric.
        return row_dot(*_with_offset_column(*operands, offset))

    return _Candidates(replicas, sample_offset, labels, symmetric_operand, batch_matrix)


def _masks(
    inputs: _Inputs, candidates: _Candidates, num_samples: Any, in_batch_negatives: bool
) -> dict:
    """Step 3 of `build`: which entries of the matrix are positives and negatives.

    Returns the `ContrastiveBatch` fields of the in-batch pairs: the matrix,
    its masks (the negative one built on first use), the counts.
    """
    num_views = inputs.num_views
    key_views = inputs.num_key_views
    self_contrast = inputs.keys is None
    # "all": every key of another sample is a negative, whatever its view
    cross = inputs.key_views == "all"
    replicas = candidates.replicas
    anchor_index = ops.arange(num_samples * num_views, dtype="int32")
    candidate_index = ops.arange(num_samples * key_views * replicas, dtype="int32")

    def other_sample():
        anchor_sample = anchor_index // num_views + candidates.sample_offset
        candidate_sample = candidate_index // key_views
        return ops.not_equal(anchor_sample[:, None], candidate_sample[None, :])

    def other_view():
        return ops.not_equal(
            (anchor_index % num_views)[:, None], (candidate_index % key_views)[None, :]
        )

    fields = dict(
        symmetric_operand=candidates.symmetric_operand,
        batch_matrix_fn=candidates.batch_matrix_fn,
        num_other_samples=(
            None if inputs.n_static is None else inputs.n_static * replicas - 1
        ),
    )
    dtype = inputs.dtype
    if inputs.labels is None:
        fields["other_sample_negatives"] = self_contrast and in_batch_negatives
        if self_contrast or cross:
            negatives = other_sample
        else:
            negatives = lambda: ops.logical_and(other_sample(), other_view())  # noqa: E731
        per_other_sample = key_views if self_contrast or cross else key_views - 1
        negative_count = ops.cast((num_samples * replicas - 1) * per_other_sample, dtype)
    else:
        anchor_labels = ops.repeat(inputs.labels, num_views, axis=0)
        candidate_labels = ops.repeat(candidates.labels, key_views, axis=0)
        same_label = ops.equal(anchor_labels[:, None], candidate_labels[None, :])
        negative_mask = ops.logical_not(same_label)
        positives = ops.logical_and(same_label, other_sample())
        if not (self_contrast or cross):
            view_mask = other_view()
            negative_mask = ops.logical_and(negative_mask, view_mask)
            positives = ops.logical_and(positives, view_mask)
        negatives = lambda: negative_mask  # noqa: E731
        fields["batch_positive_mask"] = positives
        fields["positive_count"] = float(key_views if cross else num_views - 1) + ops.reshape(
            ops.sum(ops.cast(positives, dtype), axis=1), (-1, num_views)
        )
        negative_count = ops.reshape(
            ops.sum(ops.cast(negative_mask, dtype), axis=1), (-1, num_views)
        )
    if in_batch_negatives:
        fields["in_batch_negatives"] = True
        fields["batch_negative_mask_fn"] = negatives
        fields["negative_count"] = negative_count
    return fields


def _queue(inputs: _Inputs, flat_queries: Any, offset: float) -> tuple[Any, Any]:
    """Step 4 of `build`: the `(M, K)` matrix of the queue and its count of negatives."""
    queue_matrix = row_dot(
        *_with_offset_column(flat_queries, l2_normalize(inputs.queue), offset)
    )
    if inputs.queue_mask is not None:
        count = ops.sum(ops.cast(inputs.queue_mask, inputs.dtype))
    else:
        count = ops.cast(ops.shape(inputs.queue)[0], inputs.dtype)
    return queue_matrix, count


def _with_offset_column(queries: Any, keys: Any, offset: float) -> tuple[Any, Any]:
    """`(queries, keys)` with a column of `offset`, resp. ones: dot + offset."""
    if offset == 0.0:
        return queries, keys
    queries = ops.concatenate([queries, ops.ones_like(queries[:, :1]) * offset], axis=1)
    keys = ops.concatenate([keys, ops.ones_like(keys[:, :1])], axis=1)
    return queries, keys
