"""Which embeddings contrast with which: the positives and negatives of a batch.

A batch holds N samples seen in V >= 2 views, an `(N, V, d)` tensor. The
M = N V embeddings are anchors (contract section 4). For anchor `a = (i, v)`:

* positives: the other views `(i, w)`, `w != v`; with labels also every view
  of every sample `j != i` with `y_j == y_i`;
* negatives: every view of every other sample `j != i` (with labels: only
  those with `y_j != y_i`).

With a momentum encoder the anchors are the queries and the candidates are
keys: the positives of query `(i, v)` are the keys `(i, w)`, `w != v`; the
in-batch negatives are the keys `(j, w)` of the other samples for `w != v`
(MoCo v3: for two views, query 1 against the keys of view 2); a queue of `K`
earlier keys adds `K` negatives (MoCo v2).

`ContrastiveBatch` holds the cosine similarities of these pairs, computed
from matmuls of normalised embeddings (never an `(M, M, d)` tensor), with
boolean masks applied by `where`, so that each loss evaluates its own scores
on them. The positives of a sample come from an `(N, V, V)` block (`view_dots`), so
that the self-supervised case never evaluates positive scores on the full
`(M, M)` matrix. Without labels or keys, the negatives of an anchor are its
whole row but its own sample's `V` entries: `negative_sum` then subtracts
those from the row sum (evaluated on the `(N, V, V)` block) instead of
masking the row, when the scores' range makes that accurate
(`subtraction_is_accurate`): no `(M, M)` mask is built at all. When the
queries contrast with themselves, the `(M, M)` matrix is `w w^T` for one
operand `w`, and `symmetric_row_sum` differentiates the negatives' row
sums with one `(M, M) x (M, d)` matmul instead of the two of autodiff.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_fmicl import distributed
from keras_fmicl.similarities import l2_normalize
from keras_fmicl.similarities import row_dot
from keras_fmicl.validation import concrete_values
from keras_fmicl.validation import describe


def compute_dtype(x: Any) -> str:
    """Dtype in which the loss is computed: half precision goes to float32."""
    dtype = keras.backend.standardize_dtype(x.dtype)
    if dtype in ("float16", "bfloat16") or not dtype.startswith("float"):
        return "float32"
    return dtype


def _static_shape(x: Any) -> tuple:
    return tuple(None if d is None else int(d) for d in x.shape)


class ContrastiveBatch:
    """Cosines and masks of the positive and negative pairs of a batch.

    Attributes:
        num_samples: N (a Python int when static, else a scalar tensor).
        num_views: V (always static).
        cosine_scale: the factor the `positive_cosine` block carries: the
            similarity's `cosine_scale` (1/temperature, 1/sigma^2), folded
            into the queries before the matmuls.
        batch_cosine_scale, batch_cosine_offset: `batch_cosine` and
            `queue_cosine` hold `batch_cosine_scale * cos +
            batch_cosine_offset` (the loss may fold the exponent of its
            negative scores or the similarity's offset into the matmul).
        positive_cosine: `(N, V, V)`: (scaled) cosine of query `(i, v)` and
            key `(i, w)`.
        positive_mask: `(V, V)` bool, `w != v`.
        batch_cosine: `(M, M)`: cosine of every query and every key, or
            `None` when the batch holds no negatives nor label positives.
        symmetric_operand: `(M, d)` `w = sqrt(batch_cosine_scale) z^` when
            the queries contrast with themselves on one replica (then
            `batch_cosine = w w^T + batch_cosine_offset`, built on first
            use), else `None`.
        batch_positive_mask: `(M, M)` bool: other samples with the same
            label (supervised only), else `None`.
        batch_negative_mask: `(M, M)` bool, or `None` without in-batch
            negatives; built on first use.
        in_batch_negatives: whether `batch_cosine` holds negatives.
        other_sample_negatives: whether the in-batch negatives of an anchor
            are exactly every candidate of every other sample (no labels,
            no momentum keys): its negative sum is then the row sum minus
            its own sample's `V` entries (`negative_sum`).
        num_other_samples: `N_global - 1` as a Python int when static,
            else `None`.
        queue_cosine: `(M, K)`: cosine of every query and every queue entry,
            or `None`.
        queue_mask: `(K,)` bool of the valid queue entries, or `None` (all).
        positive_count: positives per anchor, `(N, V)` or a scalar.
        negative_count: negatives per anchor, `(N, V)` or a scalar.
        nan_guard: scalar, 0 or NaN: NaN when an input holds a NaN or an
            infinity or traced labels are invalid (`build`); the losses add
            it to their per-sample values.
    """

    def __init__(
        self,
        batch_negative_mask: Any = None,
        batch_cosine: Any = None,
        symmetric_operand: Any = None,
        **fields,
    ):
        self.__dict__.update(fields)
        # A tensor, or a zero-argument callable building it on first use:
        # the f-MICL loss does not need the (M, M) mask at all when it
        # subtracts the same-sample pairs instead (one pass fewer, eager).
        self._batch_negative_mask = batch_negative_mask
        self.symmetric_operand = symmetric_operand
        self._batch_cosine = batch_cosine

    @property
    def batch_negative_mask(self) -> Any:
        if callable(self._batch_negative_mask):
            self._batch_negative_mask = self._batch_negative_mask()
        return self._batch_negative_mask

    @property
    def batch_cosine(self) -> Any:
        if self._batch_cosine is None and self.symmetric_operand is not None:
            # w w^T + offset, the offset inside the matmul (an extra column,
            # no (M, M) addition): still symmetric.
            w = self.symmetric_operand
            self._batch_cosine = row_dot(*_with_offset_column(w, w, self.batch_cosine_offset))
        return self._batch_cosine

    def reshape_rows(self, x: Any) -> Any:
        """`(M,)` per-anchor values to `(N, V)`."""
        return ops.reshape(x, (-1, self.num_views))

    def batch_cosine_at(self, scale: float) -> Any:
        """`batch_cosine` as `scale * cos` (without its own scale and offset)."""
        return _affine(
            self.batch_cosine, (self.batch_cosine_scale, self.batch_cosine_offset), (scale, 0.0)
        )

    def same_sample_cosine(self) -> Any:
        """`(N, V, V)`: the entries of `batch_cosine` of each anchor's own sample.

        Query `(i, v)` against key `(i, w)` for every `w` (itself included),
        with `batch_cosine`'s scale and offset, from the `(N, V, V)` block
        (no gather).
        """
        return _affine(
            self.positive_cosine,
            (self.cosine_scale, 0.0),
            (self.batch_cosine_scale, self.batch_cosine_offset),
        )


def _affine(x: Any, source: tuple, target: tuple) -> Any:
    """`x = a cos + b` with `(a, b) = source`, mapped to `a' cos + b'` of `target`."""
    (scale, offset), (new_scale, new_offset) = source, target
    if offset != 0.0:
        x = x - offset
    if scale != new_scale:
        x = x * (new_scale / scale)
    if new_offset != 0.0:
        x = x + new_offset
    return x


def check_embeddings(x: Any, argument: str) -> Any:
    """Validates an `(N, V, d)` tensor of embeddings and returns it as a tensor."""
    if x is None:
        raise ValueError(
            f"`{argument}` must be an (N, V, d) tensor of embeddings: N samples "
            f"seen in V >= 2 views. Received: {argument}=None"
        )
    x = ops.convert_to_tensor(x)
    shape = _static_shape(x)
    if len(shape) != 3:
        raise ValueError(
            f"`{argument}` must have rank 3, shape (N, V, d): N samples seen "
            f"in V >= 2 views, each a d-dimensional embedding. Received: "
            f"{argument}.shape={shape}"
        )
    if shape[1] is None:
        raise ValueError(
            f"The number of views (axis 1 of `{argument}`) must be known "
            f"statically. Received: {argument}.shape={shape}"
        )
    if shape[1] < 2:
        raise ValueError(
            f"`{argument}` must hold V >= 2 views of each sample (axis 1): a "
            f"single view has no positive. Received: {argument}.shape={shape}"
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


def _all_finite(x: Any) -> Any:
    """Scalar bool tensor: whether every entry of `x` is finite."""
    return ops.all(ops.isfinite(x))


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
    cosine_scale: float = 1.0,
    batch_cosine_scale: float | None = None,
    batch_cosine_offset: float = 0.0,
) -> ContrastiveBatch:
    """Builds the `ContrastiveBatch` of queries against keys (and a queue).

    Args:
        queries: `(N, V, d)` anchor embeddings.
        keys: `(N, V, d)` key embeddings (momentum encoder), or `None` to
            contrast the queries with themselves (SimCLR).
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
        cosine_scale: factor applied to the normalised queries, so that every
            cosine of the batch comes out multiplied by it (one `(M, d)`
            product instead of an `(M, M)` one).
        batch_cosine_scale: the factor of the `(M, M)` and `(M, K)`
            matrices, if other than `cosine_scale`.
        batch_cosine_offset: a constant added to those matrices inside the
            matmul (a column of `batch_cosine_offset` appended to the
            queries, of ones to the keys): no `(M, M)` addition.

    Bad shapes and concrete bad labels raise a `ValueError`. Values that
    make the loss meaningless and that only the computation sees, a NaN or
    an infinity anywhere in the queries, keys or queue (masked queue entries
    included), or invalid labels inside a traced function, set
    `nan_guard` to NaN: the losses add it to every per-sample value, so
    that the loss is NaN (and `keras.callbacks.TerminateOnNaN` fires),
    never a silently finite number.
    """
    queries = check_embeddings(queries, query_argument)
    dtype = compute_dtype(queries)
    queries = ops.cast(queries, dtype)
    n_static, num_views, dim = _static_shape(queries)
    self_contrast = keys is None
    if not self_contrast:
        keys = ops.cast(check_embeddings(keys, "keys"), dtype)
        k_shape = _static_shape(keys)
        if any(a is not None and b is not None and a != b for a, b in zip(k_shape, (n_static, num_views, dim))):
            raise ValueError(
                "`keys` must have the shape of the queries (N, V, d) = "
                f"{(n_static, num_views, dim)}. Received: keys.shape={k_shape}"
            )
    if queue is not None:
        queue = ops.cast(ops.convert_to_tensor(queue), dtype)
        q_shape = _static_shape(queue)
        if len(q_shape) != 2 or (q_shape[1] is not None and dim is not None and q_shape[1] != dim):
            raise ValueError(
                f"`queue` must have shape (K, d) with d = {dim}. Received: "
                f"queue.shape={q_shape}"
            )
    has_queue = queue is not None
    if queue_mask is not None:
        if not has_queue:
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
    if n_static == 1 and not has_queue:
        raise ValueError(
            f"`{query_argument}` must hold at least 2 samples (axis 0): with a "
            "batch of one there are no negatives. Received: "
            f"{query_argument}.shape={(n_static, num_views, dim)}"
        )
    labels, labels_valid = check_labels(labels, n_static, label_argument)
    # NaN when an input holds a NaN or an infinity, or traced labels are
    # invalid (see the docstring): one pass over the (M, d) inputs.
    all_valid = _all_finite(queries)
    if not self_contrast:
        all_valid = ops.logical_and(all_valid, _all_finite(keys))
    if has_queue:
        all_valid = ops.logical_and(all_valid, _all_finite(queue))
    if labels_valid is not None:
        all_valid = ops.logical_and(all_valid, labels_valid)
    nan_guard = ops.cast(ops.where(all_valid, 0.0, float("nan")), dtype)
    if not in_batch_negatives and not has_queue:
        raise ValueError(
            "With `in_batch_negatives=False` a `queue` of negatives is "
            "required. Received: queue=None"
        )

    num_samples = n_static if n_static is not None else ops.shape(queries)[0]
    num_anchors = num_samples * num_views

    queries = l2_normalize(queries)
    keys = queries if self_contrast else l2_normalize(keys)
    if batch_cosine_scale is None:
        batch_cosine_scale = cosine_scale
    unit_queries = queries
    if cosine_scale != 1.0:
        # Every "cosine" below is cosine_scale * cos: one (M, d) product
        # here instead of an (M, M) one after each matmul.
        queries = unit_queries * cosine_scale
    matrix_queries = queries
    if batch_cosine_scale != cosine_scale:
        matrix_queries = unit_queries * batch_cosine_scale

    positive_cosine = view_dots(queries, keys)
    # A tensor, not a numpy constant: numpy arrays inside the loss break
    # torch.compile graphs (Keras' torch convert_to_tensor reads ndarray.dtype).
    view_index = ops.arange(num_views, dtype="int32")
    positive_mask = ops.not_equal(view_index[:, None], view_index[None, :])
    positive_count = float(num_views - 1)
    batch_cosine = batch_positive_mask = batch_negative_mask = symmetric_operand = None
    negative_count = 0.0
    other_sample_negatives = False
    num_other_samples = None

    if in_batch_negatives or labels is not None:
        flat_queries = ops.reshape(matrix_queries, (-1, ops.shape(queries)[-1]))
        flat_keys = ops.reshape(keys, (-1, ops.shape(keys)[-1]))
        # Under data parallelism the candidates are the keys of the global
        # batch: replica r holds samples r N .. (r + 1) N - 1.
        replicas = distributed.num_replicas() if global_negatives else 1
        offset = 0
        candidate_labels = labels
        if replicas > 1:
            flat_keys = distributed.all_gather(flat_keys)
            offset = distributed.replica_index() * num_samples
            if labels is not None:
                candidate_labels = distributed.all_gather(labels)
        elif self_contrast and batch_cosine_scale > 0:
            # One operand on both sides, w = sqrt(scale) z^, and a symmetric
            # matrix w w^T: `symmetric_row_sum` differentiates its row sums
            # with one matmul, and the compilers differentiate w w^T itself
            # with one matmul fewer ((G + G^T) w).
            symmetric_operand = ops.reshape(
                unit_queries * math.sqrt(batch_cosine_scale), (-1, ops.shape(queries)[-1])
            )
        if symmetric_operand is None:
            batch_cosine = row_dot(
                *_with_offset_column(flat_queries, flat_keys, batch_cosine_offset)
            )
        if n_static is not None:
            num_other_samples = n_static * replicas - 1
        anchor_index = ops.arange(num_anchors, dtype="int32")
        candidate_index = ops.arange(num_anchors * replicas, dtype="int32")

        def other_sample():
            anchor_sample = anchor_index // num_views + offset
            candidate_sample = candidate_index // num_views
            return ops.not_equal(anchor_sample[:, None], candidate_sample[None, :])

        def other_view():
            return ops.not_equal(
                (anchor_index % num_views)[:, None], (candidate_index % num_views)[None, :]
            )

        if labels is None:
            other_sample_negatives = self_contrast and in_batch_negatives
            if self_contrast:
                negatives = other_sample
            else:
                negatives = lambda: ops.logical_and(other_sample(), other_view())  # noqa: E731
            per_other_sample = num_views if self_contrast else num_views - 1
            negative_count = ops.cast(
                (num_samples * replicas - 1) * per_other_sample, dtype
            )
        else:
            anchor_labels = ops.repeat(labels, num_views, axis=0)
            candidate_labels = ops.repeat(candidate_labels, num_views, axis=0)
            same_label = ops.equal(anchor_labels[:, None], candidate_labels[None, :])
            negatives = ops.logical_not(same_label)
            positives = ops.logical_and(same_label, other_sample())
            if not self_contrast:
                view_mask = other_view()
                negatives = ops.logical_and(negatives, view_mask)
                positives = ops.logical_and(positives, view_mask)
            batch_positive_mask = positives
            positive_count = positive_count + ops.reshape(
                ops.sum(ops.cast(positives, dtype), axis=1), (-1, num_views)
            )
            negative_count = ops.reshape(
                ops.sum(ops.cast(negatives, dtype), axis=1), (-1, num_views)
            )
        if in_batch_negatives:
            batch_negative_mask = negatives
        else:
            negative_count = 0.0

    queue_cosine = None
    if has_queue:
        flat_queries = ops.reshape(matrix_queries, (-1, ops.shape(queries)[-1]))
        queue_cosine = row_dot(
            *_with_offset_column(flat_queries, l2_normalize(queue), batch_cosine_offset)
        )
        if queue_mask is not None:
            queue_mask = ops.cast(queue_mask, "bool")
            negative_count = negative_count + ops.sum(ops.cast(queue_mask, dtype))
        else:
            negative_count = negative_count + ops.cast(ops.shape(queue)[0], dtype)

    return ContrastiveBatch(
        cosine_scale=cosine_scale,
        batch_cosine_scale=batch_cosine_scale,
        batch_cosine_offset=batch_cosine_offset,
        in_batch_negatives=batch_negative_mask is not None,
        other_sample_negatives=other_sample_negatives,
        num_other_samples=num_other_samples,
        num_samples=num_samples,
        num_views=num_views,
        dtype=dtype,
        positive_cosine=positive_cosine,
        positive_mask=positive_mask,
        positive_count=positive_count,
        batch_cosine=batch_cosine,
        symmetric_operand=symmetric_operand,
        batch_positive_mask=batch_positive_mask,
        batch_negative_mask=batch_negative_mask,
        queue_cosine=queue_cosine,
        queue_mask=queue_mask,
        negative_count=negative_count,
        nan_guard=nan_guard,
    )


def view_dots(queries: Any, keys: Any) -> Any:
    """`(N, V, V)` dot products of each sample's query views with its key views.

    An `(N, V, V, d)` product summed over `d` on PyTorch, whose batched
    matmul of N tiny `(V, d) x (d, V)` products costs more than the whole
    elementwise pass (eager and compiled); XLA lowers the `einsum` well.
    Either way the tensor is O(M V d), never O(M^2 d).
    """
    if keras.backend.backend() == "torch":
        return ops.sum(queries[:, :, None, :] * keys[:, None, :, :], axis=-1)
    return ops.einsum("nvd,nwd->nvw", queries, keys)


def _with_offset_column(queries: Any, keys: Any, offset: float) -> tuple[Any, Any]:
    """`(queries, keys)` with a column of `offset`, resp. ones: dot + offset."""
    if offset == 0.0:
        return queries, keys
    queries = ops.concatenate([queries, ops.ones_like(queries[:, :1]) * offset], axis=1)
    keys = ops.concatenate([keys, ops.ones_like(keys[:, :1])], axis=1)
    return queries, keys


def masked_sum(values: Any, mask: Any | None, axis: int = -1) -> Any:
    """Sum of `values` where `mask` is true (everything when `mask` is None)."""
    if mask is not None:
        # A scalar 0, not zeros_like: no (M, M) buffer filled with zeros.
        values = ops.where(mask, values, 0.0)
    return ops.sum(values, axis=axis)


def positive_sum(batch: ContrastiveBatch, score_fn, anchor_stat=None) -> Any:
    """Per-anchor `(N, V)` sum of `score_fn(cosine[, anchor_stat])` over positives.

    Args:
        batch: the `ContrastiveBatch`.
        score_fn: `score_fn(cosine)` or, with `anchor_stat`,
            `score_fn(cosine, stat)` elementwise.
        anchor_stat: optional `(N, V)` per-anchor value broadcast to the pairs.
    """
    if anchor_stat is None:
        block = score_fn(batch.positive_cosine)
    else:
        block = score_fn(batch.positive_cosine, anchor_stat[:, :, None])
    total = masked_sum(block, batch.positive_mask)
    if batch.batch_positive_mask is not None:
        cosine = batch.batch_cosine_at(batch.cosine_scale)
        if anchor_stat is None:
            cross = score_fn(cosine)
        else:
            cross = score_fn(cosine, ops.reshape(anchor_stat, (-1, 1)))
        total = total + batch.reshape_rows(masked_sum(cross, batch.batch_positive_mask))
    return total


# The largest factor by which subtracting the same-sample pairs from a row
# sum may amplify its relative rounding error (8 bits): see `negative_sum`.
MAX_ERROR_AMPLIFICATION = 256.0


def subtraction_is_accurate(batch: ContrastiveBatch, core_bounds: tuple | None) -> bool:
    """Whether `negative_sum` may subtract the same-sample pairs from row sums.

    The row sum of an anchor holds its `V (N - 1)` negatives and the `V`
    pairs of its own sample. With scores in `[low, high]`, `low > 0`, the
    rounding error of the row sum, relative to the negatives' sum, is at
    most `1 + (high / low) / (N - 1)` times that of the masked sum. It is
    used when that factor is at most `1 + MAX_ERROR_AMPLIFICATION` (`N - 1`
    taken as 1 when N is not static).
    """
    if not batch.other_sample_negatives or core_bounds is None:
        return False
    low, high = core_bounds
    if not 0.0 < low <= high < float("inf"):
        return False
    others = 1 if batch.num_other_samples is None else batch.num_other_samples
    return others > 0 and high / low <= MAX_ERROR_AMPLIFICATION * others


def symmetric_row_sum(
    operand: Any,
    matrix: Any,
    score_fn,
    score_derivative,
    mask: Any = None,
) -> Any:
    """Row sums of `score_fn(w w^T + c)`, differentiated with one matmul.

    For `S = w w^T + c` (symmetric, `c` a constant) and row sums
    `r_m = sum_k s(S_mk)`, the gradient of `sum_m g_m r_m` with respect to
    `w_j` is `sum_k (g_j + g_k) s'(S_jk) w_k`: one `(M, M) x (M, d)`
    product, where differentiating through the matmul takes two (`G w` and
    `G^T w`).

    Args:
        operand: `(M, d)` `w`.
        matrix: `w w^T + c` (its own gradient is not used: everything flows
            to `operand`).
        score_fn: elementwise `s`.
        score_derivative: `score_derivative(x, values)`: `s'(x)` elementwise,
            given `values = s(x)`.
        mask: optional symmetric `(M, M)` bool: sum only where it is true.

    Returns:
        `(M,)` row sums.
    """
    # The matrix reaches the function through a list emptied after the
    # call, not as an input nor a closed-over variable: its gradient is not
    # used, and Keras' torch custom gradient keeps the inputs and the
    # function (its closure) until the backward pass.
    matrices = [ops.stop_gradient(matrix)]

    @ops.custom_gradient
    def row_sums(w):
        x = matrices[0]
        values = score_fn(x)
        sums = masked_sum(values, mask)
        # Evaluated here, so that the backward keeps one (M, M) tensor (eager
        # torch frees `values`; XLA schedules it as it likes).
        derivative = score_derivative(x, values)

        def grad(*args, upstream=None):
            # TensorFlow and JAX pass the upstream gradient positionally,
            # torch as `upstream` after the inputs.
            if upstream is None:
                (upstream,) = args
            weights = (upstream[:, None] + upstream[None, :]) * derivative
            if mask is not None:
                weights = ops.where(mask, weights, 0.0)
            # einsum, not matmul: Keras' torch matmul computes float64 in float32.
            return ops.einsum("mk,kd->md", weights, w)

        return sums, grad

    sums = row_sums(operand)
    matrices.clear()
    return sums


def negative_sum(
    batch: ContrastiveBatch,
    score_fn,
    core_bounds: tuple | None = None,
    row_sum=None,
    score_derivative=None,
) -> Any:
    """Per-anchor `(N, V)` sum of `score_fn(cosine)` over the negatives.

    `score_fn` receives cosines at `batch.batch_cosine_scale`. Without
    labels or momentum keys the negatives of an anchor are every entry of
    its row but its own sample's `V`: when `core_bounds` (the smallest and
    largest positive value `score_fn` can take) show the subtraction to be
    accurate (`subtraction_is_accurate`), the sum is the full row sum minus
    those `V` entries, evaluated on the `(N, V, V)` block. That needs no
    `(M, M)` mask nor `where` (fewer elementwise passes; on eager backends
    each is a pass over `M^2` values). Otherwise the row is masked.

    `score_derivative(matrix, values)`, if given, is the elementwise
    derivative of `score_fn` (`values = score_fn(matrix)`): on a symmetric
    batch (`symmetric_operand`) the row sums, plain or masked, are then
    differentiated with one matmul (`symmetric_row_sum`).
    `row_sum`, if given, computes `sum(score_fn(matrix), axis=-1)` of the
    full rows in a cheaper way; the subtraction then uses it, with
    autodiff, instead of the symmetric route (eager torch's squared norms:
    cheaper there than the passes of an explicit derivative).
    """
    total = None
    if batch.in_batch_negatives:
        if subtraction_is_accurate(batch, core_bounds):
            if (
                batch.symmetric_operand is not None
                and score_derivative is not None
                and row_sum is None
            ):
                row_total = symmetric_row_sum(
                    batch.symmetric_operand, batch.batch_cosine, score_fn, score_derivative
                )
            elif row_sum is None:
                row_total = ops.sum(score_fn(batch.batch_cosine), axis=-1)
            else:
                row_total = row_sum(batch.batch_cosine)
            row_total = batch.reshape_rows(row_total)
            own_sample = ops.sum(score_fn(batch.same_sample_cosine()), axis=-1)
            total = row_total - own_sample
        elif batch.symmetric_operand is not None and score_derivative is not None:
            # The negative mask of a batch against itself is symmetric too.
            total = batch.reshape_rows(
                symmetric_row_sum(
                    batch.symmetric_operand,
                    batch.batch_cosine,
                    score_fn,
                    score_derivative,
                    mask=batch.batch_negative_mask,
                )
            )
        else:
            total = batch.reshape_rows(
                masked_sum(score_fn(batch.batch_cosine), batch.batch_negative_mask)
            )
    if batch.queue_cosine is not None:
        queue_total = batch.reshape_rows(
            masked_sum(score_fn(batch.queue_cosine), batch.queue_mask)
        )
        total = queue_total if total is None else total + queue_total
    return total


def negative_logsumexp(batch: ContrastiveBatch, log_ratio_fn) -> tuple[Any, Any]:
    """Per-anchor `(N, V)` log-sum-exp of the log ratios of the negatives.

    `log_ratio_fn` receives cosines at `batch.batch_cosine_scale`.

    Returns:
        `(lse, has_negatives)`; `lse` is 0 (not -inf) where an anchor has no
        negative, so that values and gradients stay finite.
    """
    parts = []
    if batch.in_batch_negatives:
        parts.append((log_ratio_fn(batch.batch_cosine), batch.batch_negative_mask))
    if batch.queue_cosine is not None:
        mask = None if batch.queue_mask is None else batch.queue_mask[None, :]
        parts.append((log_ratio_fn(batch.queue_cosine), mask))
    neg_inf = ops.cast(float("-inf"), batch.dtype)
    # Exponentiate the masked log ratios (-inf off the mask, exp -> 0): the
    # excluded pairs (an anchor with itself: l = 1/temperature) would
    # otherwise overflow and turn the gradient of `where` into 0 * inf = NaN.
    masked_parts = [
        log_ratio if mask is None else ops.where(mask, log_ratio, neg_inf)
        for log_ratio, mask in parts
    ]
    shift = None
    for masked in masked_parts:
        # amax, not max: Keras' torch `max` breaks torch.compile graphs.
        row_max = ops.amax(masked, axis=-1)
        shift = row_max if shift is None else ops.where(row_max > shift, row_max, shift)
    shift = ops.stop_gradient(shift)
    has_negatives = ops.isfinite(shift)
    shift = ops.where(has_negatives, shift, ops.zeros_like(shift))
    total = 0.0
    for masked in masked_parts:
        total = total + ops.sum(ops.exp(masked - shift[:, None]), axis=-1)
    safe_total = ops.where(has_negatives, total, ops.ones_like(total))
    lse = ops.where(has_negatives, ops.log(safe_total) + shift, ops.zeros_like(shift))
    return batch.reshape_rows(lse), batch.reshape_rows(has_negatives)


def candidate_logsumexp(batch: ContrastiveBatch, log_ratio_fn) -> Any:
    """Per-anchor `(N, V)` log-sum-exp of the log ratios of every candidate.

    The candidates of an anchor are its positives and its negatives: in a
    batch contrasted with itself every other embedding of the batch; with
    keys, the keys of the other views; plus the queue. (SupCon's
    denominator, `losses.info_nce(..., supervised_form="supcon")`.)
    `log_ratio_fn` receives cosines at `batch.cosine_scale`. An anchor
    always has a positive, so the result is finite for finite inputs.
    """
    neg_inf = ops.cast(float("-inf"), batch.dtype)
    # (log ratios, mask, whether the row sums need reshaping to (N, V))
    parts = [(log_ratio_fn(batch.positive_cosine), batch.positive_mask, False)]
    matrix_mask = None
    if batch.in_batch_negatives:
        matrix_mask = batch.batch_negative_mask
    if batch.batch_positive_mask is not None:
        positives = batch.batch_positive_mask
        matrix_mask = positives if matrix_mask is None else ops.logical_or(matrix_mask, positives)
    if matrix_mask is not None:
        parts.append((log_ratio_fn(batch.batch_cosine_at(batch.cosine_scale)), matrix_mask, True))
    if batch.queue_cosine is not None:
        queue_cosine = _affine(
            batch.queue_cosine,
            (batch.batch_cosine_scale, batch.batch_cosine_offset),
            (batch.cosine_scale, 0.0),
        )
        mask = None if batch.queue_mask is None else batch.queue_mask[None, :]
        parts.append((log_ratio_fn(queue_cosine), mask, True))
    # As `negative_logsumexp`: -inf off the mask before the exponential.
    masked_parts = [
        (log_ratio if mask is None else ops.where(mask, log_ratio, neg_inf), flat)
        for log_ratio, mask, flat in parts
    ]

    def rows(x, flat):
        return batch.reshape_rows(x) if flat else x

    shift = None
    for masked, flat in masked_parts:
        row_max = rows(ops.amax(masked, axis=-1), flat)
        shift = row_max if shift is None else ops.where(row_max > shift, row_max, shift)
    shift = ops.stop_gradient(shift)
    flat_shift = ops.reshape(shift, (-1, 1))
    total = 0.0
    for masked, flat in masked_parts:
        shifted = masked - (flat_shift if flat else shift[:, :, None])
        total = total + rows(ops.sum(ops.exp(shifted), axis=-1), flat)
    return ops.log(total) + shift


def embedding_metrics(batch: ContrastiveBatch) -> dict:
    """Alignment and uniformity of the batch (Wang & Isola 2020), no gradient.

    * alignment: mean over positive pairs of `||z^_a - z^_p||^2 = 2 - 2 cos`;
    * uniformity: `log` of the mean over negative pairs of
      `exp(-2 ||z^_a - z^_n||^2) = exp(4 cos - 4)`.
    """
    sg = ops.stop_gradient
    unscale = 1.0 / batch.cosine_scale
    distance = lambda c: 2.0 - 2.0 * unscale * sg(c)  # noqa: E731
    matrix_unscale = 1.0 / batch.batch_cosine_scale
    matrix_offset = batch.batch_cosine_offset
    pos_total = ops.sum(positive_sum(batch, distance))
    pos_count = ops.sum(batch.positive_count * ops.ones((batch.num_samples, batch.num_views), batch.dtype))
    alignment = pos_total / pos_count
    lse, has_negatives = negative_logsumexp(
        batch, lambda c: 4.0 * matrix_unscale * (sg(c) - matrix_offset) - 4.0
    )
    neg_count = batch.negative_count * ops.ones((batch.num_samples, batch.num_views), batch.dtype)
    # log of the mean over all negative pairs of the batch
    lse_flat = ops.reshape(lse, (-1,))
    has_flat = ops.reshape(has_negatives, (-1,))
    neg_inf = ops.cast(float("-inf"), batch.dtype)
    total_lse = ops.logsumexp(ops.where(has_flat, lse_flat, neg_inf))
    total_count = ops.sum(neg_count)
    uniformity = ops.where(
        total_count > 0,
        total_lse - ops.log(ops.maximum(total_count, 1.0)),
        ops.zeros_like(total_lse),
    )
    return {"alignment": alignment, "uniformity": uniformity}
