"""Sums over the pair set: masked positive sums, negative log-sum-exps and the embedding metrics."""

from __future__ import annotations

from typing import Any

from keras import ops

from keras_fmicl.losses.pairs import ContrastiveBatch


def masked_sum(values: Any, mask: Any | None, axis: int = -1) -> Any:
    """Sum of `values` where `mask` is true (everything when `mask` is None)."""
    if mask is not None:
        # A scalar 0, not zeros_like: no (M, M) buffer filled with zeros.
        values = ops.where(mask, values, 0.0)
    return ops.sum(values, axis=axis)


def positive_sum(batch: ContrastiveBatch, score_fn, anchor_stat=None) -> Any:
    """Per-anchor `(N, V)` sum of `score_fn(x[, anchor_stat])` over the positives.

    Args:
        batch: the `ContrastiveBatch`.
        score_fn: `score_fn(x)` or, with `anchor_stat`, `score_fn(x, stat)`,
            elementwise, of the batch's tensors (`scale * cos + offset`).
        anchor_stat: optional `(N, V)` per-anchor value broadcast to the pairs.
    """
    if anchor_stat is None:
        block = score_fn(batch.own_sample)
    else:
        block = score_fn(batch.own_sample, anchor_stat[:, :, None])
    total = masked_sum(block, batch.positive_mask)
    if batch.batch_positive_mask is not None:
        if anchor_stat is None:
            cross = score_fn(batch.batch_matrix)
        else:
            cross = score_fn(batch.batch_matrix, ops.reshape(anchor_stat, (-1, 1)))
        total = total + batch.reshape_rows(masked_sum(cross, batch.batch_positive_mask))
    return total


def _masked_parts(batch: ContrastiveBatch, log_ratio_fn, with_positives: bool) -> list:
    """`(log ratios, flat)` of the candidates, `-inf` off their masks.

    `flat`: whether the row sums are `(M,)` (reshaped to `(N, V)`) rather
    than `(N, V)`. The negatives, and with `with_positives` the positives
    too (the `own_sample` block and the label positives).
    """
    neg_inf = ops.cast(float("-inf"), batch.dtype)
    parts = []
    if with_positives:
        parts.append((log_ratio_fn(batch.own_sample), batch.positive_mask, False))
    matrix_mask = batch.batch_negative_mask if batch.in_batch_negatives else None
    if with_positives and batch.batch_positive_mask is not None:
        positives = batch.batch_positive_mask
        matrix_mask = positives if matrix_mask is None else ops.logical_or(matrix_mask, positives)
    if matrix_mask is not None:
        parts.append((log_ratio_fn(batch.batch_matrix), matrix_mask, True))
    if batch.queue_matrix is not None:
        mask = None if batch.queue_mask is None else batch.queue_mask[None, :]
        parts.append((log_ratio_fn(batch.queue_matrix), mask, True))
    # Exponentiate the masked log ratios (-inf off the mask, exp -> 0): the
    # excluded pairs (an anchor with itself: l = 1/temperature) would
    # otherwise overflow and turn the gradient of `where` into 0 * inf = NaN.
    return [
        (log_ratio if mask is None else ops.where(mask, log_ratio, neg_inf), flat)
        for log_ratio, mask, flat in parts
    ]


def _logsumexp_rows(batch: ContrastiveBatch, masked_parts: list) -> tuple[Any, Any]:
    """`(N, V)` log-sum-exp over the parts of each anchor, and its shift.

    The shift is the row maximum (no gradient); `-inf` where a row is empty.
    """

    def rows(x, flat):
        return batch.reshape_rows(x) if flat else x

    shift = None
    for masked, flat in masked_parts:
        # amax, not max: Keras' torch `max` breaks torch.compile graphs.
        row_max = rows(ops.amax(masked, axis=-1), flat)
        shift = row_max if shift is None else ops.where(row_max > shift, row_max, shift)
    shift = ops.stop_gradient(shift)
    return shift, rows


def negative_logsumexp(batch: ContrastiveBatch, log_ratio_fn) -> tuple[Any, Any]:
    """Per-anchor `(N, V)` log-sum-exp of the log ratios of the negatives.

    `log_ratio_fn` receives the batch's tensors (`scale * cos + offset`).

    Returns:
        `(lse, has_negatives)`; `lse` is 0 (not -inf) where an anchor has no
        negative, so that values and gradients stay finite.
    """
    masked_parts = _masked_parts(batch, log_ratio_fn, with_positives=False)
    shift, rows = _logsumexp_rows(batch, masked_parts)
    has_negatives = ops.isfinite(shift)
    shift = ops.where(has_negatives, shift, ops.zeros_like(shift))
    total = 0.0
    for masked, _ in masked_parts:
        total = total + batch.reshape_rows(
            ops.sum(ops.exp(masked - ops.reshape(shift, (-1, 1))), axis=-1)
        )
    safe_total = ops.where(has_negatives, total, ops.ones_like(total))
    lse = ops.where(has_negatives, ops.log(safe_total) + shift, ops.zeros_like(shift))
    return lse, has_negatives


def candidate_logsumexp(batch: ContrastiveBatch, log_ratio_fn) -> Any:
    """Per-anchor `(N, V)` log-sum-exp of the log ratios of every candidate.

    The candidates of an anchor are its positives and its negatives: in a
    batch contrasted with itself every other embedding of the batch; with
    keys, the keys of the other views; plus the queue. (SupCon's
    denominator, `losses.info_nce(..., supervised_form="supcon")`.)
    `log_ratio_fn` receives the batch's tensors. An anchor always has a
    positive, so the result is finite for finite inputs.
    """
    masked_parts = _masked_parts(batch, log_ratio_fn, with_positives=True)
    shift, rows = _logsumexp_rows(batch, masked_parts)
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
    pos_total = ops.sum(positive_sum(batch, lambda x: 2.0 - 2.0 * batch.to_cosine(sg(x))))
    ones = ops.ones((batch.num_samples, batch.num_views), batch.dtype)
    alignment = pos_total / ops.sum(batch.positive_count * ones)
    lse, has_negatives = negative_logsumexp(batch, lambda x: 4.0 * batch.to_cosine(sg(x)) - 4.0)
    # log of the mean over all negative pairs of the batch
    lse_flat = ops.reshape(lse, (-1,))
    has_flat = ops.reshape(has_negatives, (-1,))
    neg_inf = ops.cast(float("-inf"), batch.dtype)
    total_lse = ops.logsumexp(ops.where(has_flat, lse_flat, neg_inf))
    total_count = ops.sum(batch.negative_count * ones)
    uniformity = ops.where(
        total_count > 0,
        total_lse - ops.log(ops.maximum(total_count, 1.0)),
        ops.zeros_like(total_lse),
    )
    return {"alignment": alignment, "uniformity": uniformity}
