"""Alignment and uniformity of embeddings (Wang & Isola 2020)."""

from __future__ import annotations

import math
from typing import Any

from keras import ops

from keras_fmicl.evaluation.arrays import as_features
from keras_fmicl.evaluation.arrays import check_finite
from keras_fmicl.evaluation.arrays import check_positive_float
from keras_fmicl.evaluation.arrays import num_rows
from keras_fmicl.evaluation.arrays import row_block
from keras_fmicl.losses.similarities import l2_normalize
from keras_fmicl.utils.checks import check_positive_integer


# --------------------------------------------------------------------------
# Alignment and uniformity
# --------------------------------------------------------------------------

def alignment(x: Any, y: Any, alpha: float = 2.0) -> Any:
    """Alignment of paired embeddings: `mean_i ||x^_i - y^_i||_2^alpha`.

    Rows are L2-normalised first (`x^ = x / ||x||`; a zero row stays zero).
    Lower is better: 0 when every pair coincides, `2^alpha` when every pair
    is antipodal.

    Args:
        x: `(N, d)` embeddings.
        y: `(N, d)` embeddings paired row by row with `x` (positive pairs).
        alpha: positive exponent of the distance.

    Returns:
        Scalar tensor (differentiable; `float(...)` gives a Python float).

    Raises:
        ValueError: for concrete inputs holding NaN or +-Inf (rows listed).
            Inside `jax.jit` or `tf.function` there is no value to check;
            there a non-finite row makes the result NaN, never a finite
            number.

    Example:

    >>> x = np.eye(3)
    >>> float(alignment(x, -x))
    4.0

    Reference:
        Wang, Isola. "Understanding Contrastive Representation Learning
        through Alignment and Uniformity on the Hypersphere", ICML 2020.
    """
    alpha = check_positive_float("alpha", alpha)
    x = as_features(x, "x")
    y = as_features(y, "y")
    if tuple(x.shape) != tuple(y.shape):
        raise ValueError(
            "`x` and `y` must have the same shape (paired rows). "
            f"Received: x.shape={tuple(x.shape)}, y.shape={tuple(y.shape)}"
        )
    if num_rows(x) == 0:
        raise ValueError("`x` must hold at least one sample. Received: 0 samples")
    check_finite(x, "`x`")
    check_finite(y, "`y`")
    if x.dtype != y.dtype:
        y = ops.cast(y, x.dtype)
    squared = ops.sum(ops.square(l2_normalize(x) - l2_normalize(y)), axis=-1)
    distance = squared if alpha == 2.0 else ops.power(ops.relu(squared), alpha / 2.0)
    # sum / N rather than ops.mean, which accumulates float64 in float32 on JAX/torch
    return ops.sum(distance) / num_rows(x)


def uniformity(x: Any, t: float = 2.0, batch_size: int = 1024) -> Any:
    """Uniformity: `log mean_{i != j} exp(-t ||x^_i - x^_j||_2^2)`.

    Rows are L2-normalised first. Lower is better; 0 when all embeddings
    coincide. The mean runs over the `N (N - 1)` ordered pairs of distinct
    rows (the same value as over the unordered pairs of `torch.pdist`). It is
    computed as a log-sum-exp, `batch_size` rows at a time: memory peaks at
    a `(batch_size, N)` matrix, never an `(N, N, d)` tensor.

    Args:
        x: `(N, d)` embeddings, `N >= 2`.
        t: positive scale of the Gaussian potential.
        batch_size: rows handled at once.

    Returns:
        Scalar tensor (differentiable; `float(...)` gives a Python float).

    Raises:
        ValueError: as `alignment`, for non-finite concrete inputs.

    Example:

    >>> float(uniformity(np.eye(4), t=2.0))  # orthonormal: ||.||^2 = 2
    -4.0

    Reference:
        Wang, Isola. "Understanding Contrastive Representation Learning
        through Alignment and Uniformity on the Hypersphere", ICML 2020.
    """
    t = check_positive_float("t", t)
    batch_size = check_positive_integer("batch_size", batch_size)
    x = as_features(x, "x")
    num_samples = num_rows(x)
    if num_samples < 2:
        raise ValueError(
            "`x` must hold at least two samples (uniformity is a mean over "
            f"distinct pairs). Received: x.shape={tuple(x.shape)}"
        )
    check_finite(x, "`x`")
    unit = l2_normalize(x)
    squared_norms = ops.sum(ops.square(unit), axis=-1)  # 1, or 0 for a zero row
    columns = ops.arange(num_samples, dtype="int32")
    block_lse = []
    for start in range(0, num_samples, batch_size):
        size = min(batch_size, num_samples - start)
        rows = row_block(unit, start, size)
        squared_distance = (
            row_block(squared_norms, start, size)[:, None]
            + squared_norms[None, :]
            - 2.0 * ops.einsum("bd,nd->bn", rows, unit)
        )
        log_kernel = -t * ops.relu(squared_distance)
        diagonal = (ops.arange(size, dtype="int32") + start)[:, None] == columns[None, :]
        log_kernel = ops.where(diagonal, float("-inf"), log_kernel)
        block_lse.append(ops.logsumexp(log_kernel))
    total = ops.logsumexp(ops.stack(block_lse))
    return total - math.log(num_samples * (num_samples - 1))
