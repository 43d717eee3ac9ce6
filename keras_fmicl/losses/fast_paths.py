"""Fast exact score paths: the negative term of each divergence computed without (N, N) exponentials where exact."""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any
from typing import Callable

from keras import ops

from keras_fmicl.losses import divergences as losses_divergences
from keras_fmicl.losses import pair_sums
from keras_fmicl.losses import pairs
from keras_fmicl.losses import similarities as losses_similarities
from keras_fmicl.utils import backend_ops as utils_backend_ops
from keras_fmicl.utils.checks import is_real

# Largest argument of `math.exp` below float64 overflow.
_EXP_OVERFLOW = 709.0

# The largest factor by which subtracting the same-sample pairs from a row
# sum may amplify its relative rounding error (8 bits): see `negative_sum`.
MAX_ERROR_AMPLIFICATION = 256.0

PATHS = ("exp_in_matmul", "negative_form", "generic")


@dataclasses.dataclass(frozen=True)
class ScorePlan:
    """How a loss evaluates its scores on a `contrast.ContrastiveBatch`.

    Attributes:
        scale, offset: the batch is built with tensors holding
            `scale * cos + offset` (`contrast.build(scale=..., offset=...)`).
        log_ratio: `l` of a tensor of the batch, exact (the Gaussian's
            clamp at 0 included): for positive scores and InfoNCE.
        path: which negative path (`PATHS`), or `None` (InfoNCE).
        negative_core: elementwise function of the batch's matrices with
            `negative_score(l) = negative_scale * core + negative_offset`,
            or `None` (InfoNCE).
        negative_scale, negative_offset: Python floats, applied once per
            anchor.
        core_bounds: `(low, high)`, the range of the core over the
            similarity's range, or `None` when unknown.
        row_sum: `None`, or a function giving the row sums of the core of a
            matrix more cheaply than `sum(core(matrix))`.
        derivative: `None`, or `derivative(matrix, values)`, the
            elementwise derivative of the core (`values = core(matrix)`):
            the negatives of a symmetric batch are then differentiated with
            one matmul (`symmetric_row_sum`).
    """

    scale: float
    offset: float
    log_ratio: Callable[[Any], Any]
    path: str | None = None
    negative_core: Callable[[Any], Any] | None = None
    negative_scale: float = 1.0
    negative_offset: float = 0.0
    core_bounds: tuple[float, float] | None = None
    row_sum: Callable[[Any], Any] | None = None
    derivative: Callable[[Any, Any], Any] | None = None


def score_plan(
    similarity: losses_similarities.Similarity, divergence: losses_divergences.Divergence | None = None
) -> ScorePlan:
    """The `ScorePlan` of a similarity and, for f-MICL, a divergence.

    Without a divergence (InfoNCE) the batch holds the similarity's scaled
    cosines `s cos` and the plan has no negative core.

    Example:

    ```python
    plan = score_plan(keras_fmicl.Gaussian(0.5), keras_fmicl.Pearson())
    plan.path, plan.scale       # ("exp_in_matmul", 8.0): e^(2 l) in the matmul
    ```
    """
    s = similarity.cosine_scale
    if divergence is None:
        return ScorePlan(s, 0.0, _log_ratio(similarity, s, 0.0))
    form = negative_form(divergence)
    b = similarity.log_ratio_offset
    if form is None:
        return _generic_plan(divergence, similarity)
    if form.core == "exp" and b is not None and abs(form.k) * s <= _float32_cap():
        return _exp_in_matmul_plan(form, similarity)
    return _form_plan(form, similarity)


def negative_form(divergence: losses_divergences.Divergence) -> losses_divergences.NegativeForm | None:
    """The `NegativeForm` a divergence declares for its `negative_score`, or `None`.

    A form inherited from a class above the one that defines
    `negative_score` is stale (a subclass changed the score without
    declaring its form again) and ignored.

    Raises:
        ValueError: `negative_form` is neither `None` nor a `NegativeForm`.
    """
    form = divergence.negative_form
    if form is None:
        return None
    if not isinstance(form, losses_divergences.NegativeForm):
        raise ValueError(
            "`negative_form` of a Divergence must be None or a "
            f"keras_fmicl.divergences.NegativeForm. Received: negative_form={form!r} "
            f"on {type(divergence).__name__}"
        )
    if "negative_form" in vars(divergence):
        return form  # set on the instance: declared by its own class
    mro = type(divergence).__mro__
    form_owner = next(c for c in mro if "negative_form" in vars(c))
    score_owner = next(c for c in mro if "negative_score" in vars(c))
    return form if issubclass(form_owner, score_owner) else None


def _float32_cap() -> float:
    return losses_divergences.max_exponent("float32")


def _log_ratio(similarity: losses_similarities.Similarity, scale: float, offset: float):
    """`l` of a batch tensor `x = scale * cos + offset` (exact, clamps included)."""
    from_scaled = similarity.log_ratio_from_scaled_cosine
    factor = similarity.cosine_scale / scale
    if factor == 1.0 and offset == 0.0:
        return from_scaled

    def log_ratio(x):
        if offset != 0.0:
            x = x - offset
        return from_scaled(x * factor if factor != 1.0 else x)

    return log_ratio


def _generic_plan(divergence, similarity) -> ScorePlan:
    """`negative_score(l)` of every pair: masked sums and autodiff."""
    log_ratio = similarity.log_ratio_from_scaled_cosine

    def core(x):
        return divergence.negative_score(log_ratio(x))

    return ScorePlan(
        similarity.cosine_scale, 0.0, log_ratio, path="generic", negative_core=core
    )


def _exp_in_matmul_plan(form, similarity) -> ScorePlan:
    """`A exp(k l) + B` with `k s` in the matmul: one `exp` per pair."""
    scale = form.k * similarity.cosine_scale
    return ScorePlan(
        scale,
        0.0,
        _log_ratio(similarity, scale, 0.0),
        path="exp_in_matmul",
        negative_core=ops.exp,
        negative_scale=form.scale * math.exp(form.k * similarity.log_ratio_offset),
        negative_offset=form.offset,
        # exp(k s cos) over cos in [-1, 1]
        core_bounds=(math.exp(-abs(scale)), math.exp(abs(scale))),
        derivative=_exp_derivative,
    )


def _form_plan(form, similarity) -> ScorePlan:
    """`scale * core(k l) + offset`, the declared form, on the scaled cosines.

    The built-in scores are smooth through `l = 0`, so an affine `l` is not
    clamped (the Gaussian's clamp absorbs round-off of an ulp of cos; it
    would cost `(M, M)` passes forward and backward).
    """
    s = similarity.cosine_scale
    b = similarity.log_ratio_offset
    offset = 0.0
    if b is None:
        log_ratio = similarity.log_ratio_from_scaled_cosine
    elif b == 0.0:
        log_ratio = _identity
    elif not utils_backend_ops.elementwise_ops_fuse():
        # One pass over memory per op: the matmul adds the offset.
        offset = b
        log_ratio = _identity
    else:
        log_ratio = lambda x: x + b  # noqa: E731
    k = form.k
    low, high = sorted(k * end for end in similarity.log_ratio_range())
    exact = high <= _float32_cap()
    kl = log_ratio if k == 1.0 else (lambda x: k * log_ratio(x))
    row_sum = derivative = None
    if form.core == "exp":
        exp = ops.exp if exact else losses_divergences.capped_exp
        core = lambda x: exp(kl(x))  # noqa: E731
        bounds = None if high > _EXP_OVERFLOW else (math.exp(low), math.exp(high))
    elif form.core == "softplus":
        if exact and utils_backend_ops.elementwise_ops_fuse():
            # log(1 + e^x), exact while e^x cannot overflow: XLA fuses it
            # and differentiates it with one exp fewer than its softplus.
            core = lambda x: ops.log1p(ops.exp(kl(x)))  # noqa: E731
        else:
            core = lambda x: ops.softplus(kl(x))  # noqa: E731
        bounds = (_softplus(low), _softplus(high))
        if b is not None and utils_backend_ops.elementwise_ops_fuse():
            # sigmoid(z) = 1 - e^-softplus(z), from the values alone: one
            # (M, M) buffer under XLA, as for `"sigmoid_squared"` below.
            derivative = lambda x, values: -k * ops.expm1(-values)  # noqa: E731
        elif b is not None and k == 1.0:
            derivative = lambda x, values: ops.sigmoid(kl(x))  # noqa: E731
        elif b is not None:
            derivative = lambda x, values: k * ops.sigmoid(kl(x))  # noqa: E731
    else:  # "sigmoid_squared"
        root = lambda x: ops.sigmoid(kl(x))  # noqa: E731
        bounds = (_sigmoid(low) ** 2, _sigmoid(high) ** 2)
        if utils_backend_ops.elementwise_ops_fuse():
            # sigmoid(z)^2 = 1 / (1 + e^-z)^2, one fusion. The derivative
            # below takes the root back as sqrt(values): XLA would simplify
            # sqrt(square(sigmoid(z))) to sigmoid(z), keeping the sigmoid's
            # (M, M) buffer alive beside the squares' (see `derivative`).
            core = lambda x: 1.0 / ops.square(1.0 + ops.exp(-kl(x)))  # noqa: E731
        else:
            core = lambda x: ops.square(root(x))  # noqa: E731
            row_sum = lambda x: utils_backend_ops.squared_row_norms(root(x))  # noqa: E731
        if b is not None:

            def derivative(x, values):
                # d sigmoid(k l)^2 / dl = 2 k sigmoid(k l)^2 (1 - sigmoid(k l)),
                # from the values alone (sigmoid(k l) = sqrt(values)): the
                # matrix is dead once the values are computed, and XLA keeps
                # one (M, M) buffer, overwritten in place by the gradient's
                # weights (`symmetric_row_sum`), as for an exponential core.
                # Taking the root from the matrix keeps the sigmoid's buffer
                # beside the squares': 36 MiB at M = 2048, past glibc's
                # largest mmap threshold (32 MiB), so that every call maps
                # and page-faults fresh memory.
                return values * (2.0 * k - 2.0 * k * ops.sqrt(values))

    return ScorePlan(
        s,
        offset,
        _log_ratio(similarity, s, offset),
        path="negative_form",
        negative_core=core,
        negative_scale=form.scale,
        negative_offset=form.offset,
        core_bounds=bounds,
        row_sum=row_sum,
        derivative=derivative,
    )


def _identity(x: Any) -> Any:
    return x


def _exp_derivative(matrix: Any, values: Any) -> Any:
    return values


def _softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    return math.exp(x) / (1.0 + math.exp(x))


# ---------------------------------------------------------------------------
# Summing the negatives.

def subtraction_is_accurate(batch: pairs.ContrastiveBatch, core_bounds: tuple | None) -> bool:
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
        sums = pair_sums.masked_sum(values, mask)
        # Evaluated here, so that the backward keeps one (M, M) tensor (eager
        # torch frees `values`; XLA schedules it as it likes).
        derivative = score_derivative(x, values)
        # Under XLA the weights below are made to depend on the row sums
        # (`+ 0 * sums`, exact for finite sums): its scheduler then computes
        # them after the sums, in the buffer of `values`, one (M, M) buffer
        # in all (an exponential core's derivative is `values` itself, and
        # `_form_plan`'s squared sigmoid's is a function of `values`).
        # Otherwise it may compute them first, keeping `values` alive beside
        # them: two (M, M) buffers, 33 MiB at M = 2048, past glibc's largest
        # mmap threshold (32 MiB), so that every call maps and page-faults
        # fresh memory. (Not on eager torch, which runs in program order,
        # and where the forward's output held by `grad` would be a
        # reference cycle through the autograd graph.)
        after = sums if utils_backend_ops.elementwise_ops_fuse() else None

        def grad(*args, upstream=None):
            # TensorFlow and JAX pass the upstream gradient positionally,
            # torch as `upstream` after the inputs.
            if upstream is None:
                (upstream,) = args
            if after is not None:
                upstream = upstream + 0.0 * after
            weights = (upstream[:, None] + upstream[None, :]) * derivative
            if mask is not None:
                weights = ops.where(mask, weights, 0.0)
            # einsum, not matmul: Keras' torch matmul computes float64 in float32.
            return ops.einsum("mk,kd->md", weights, w)

        return sums, grad

    sums = row_sums(operand)
    matrices.clear()
    return sums


def negative_sum(batch: pairs.ContrastiveBatch, plan: ScorePlan) -> Any:
    """Per-anchor `(N, V)` sum of the negatives' scores, or `None` without negatives.

    `negative_score = plan.negative_scale * core + plan.negative_offset`,
    the constants applied here once per anchor. Without labels or momentum
    keys the negatives of an anchor are every entry of its row but its own
    sample's `V`: when `plan.core_bounds` show the subtraction to be
    accurate (`subtraction_is_accurate`), the core's sum is the full row
    sum minus those `V` entries, evaluated on the `(N, V, V)` block. That
    needs no `(M, M)` mask nor `where` (fewer elementwise passes; on eager
    backends each is a pass over `M^2` values). Otherwise the row is masked.

    With `plan.derivative` on a symmetric batch (`symmetric_operand`) the
    row sums, plain or masked, are differentiated with one matmul
    (`symmetric_row_sum`). `plan.row_sum`, if given, computes the full
    rows' sums in a cheaper way; the subtraction then uses it, with
    autodiff, instead of the symmetric route (eager torch's squared norms:
    cheaper there than the passes of an explicit derivative).
    """
    core = plan.negative_core
    symmetric = batch.symmetric_operand is not None and plan.derivative is not None
    total = None
    if batch.in_batch_negatives:
        if subtraction_is_accurate(batch, plan.core_bounds):
            if plan.row_sum is not None:
                row_total = plan.row_sum(batch.batch_matrix)
            elif symmetric:
                row_total = symmetric_row_sum(
                    batch.symmetric_operand, batch.batch_matrix, core, plan.derivative
                )
            else:
                row_total = ops.sum(core(batch.batch_matrix), axis=-1)
            own_sample = ops.sum(core(batch.own_sample), axis=-1)
            total = batch.reshape_rows(row_total) - own_sample
        elif symmetric:
            # The negative mask of a batch against itself is symmetric too.
            total = batch.reshape_rows(
                symmetric_row_sum(
                    batch.symmetric_operand,
                    batch.batch_matrix,
                    core,
                    plan.derivative,
                    mask=batch.batch_negative_mask,
                )
            )
        else:
            total = batch.reshape_rows(
                pair_sums.masked_sum(core(batch.batch_matrix), batch.batch_negative_mask)
            )
    if batch.queue_matrix is not None:
        queue_total = batch.reshape_rows(
            pair_sums.masked_sum(core(batch.queue_matrix), batch.queue_mask)
        )
        total = queue_total if total is None else total + queue_total
    if total is None:
        return None
    return plan.negative_scale * total + plan.negative_offset * batch.negative_count


# ---------------------------------------------------------------------------
# The exact range of the exponentials.

def largest_exponent(divergence: losses_divergences.Divergence, similarity: losses_similarities.Similarity) -> float:
    """The largest `k l` any score evaluates `exp` at, over the similarity's range.

    `k` runs over the divergence's `exponents`, `l` over the ends of
    `similarity.log_ratio_range()` (and 0).
    """
    low, high = similarity.log_ratio_range()
    exponents = divergence.exponents
    return max([k * low for k in exponents] + [k * high for k in exponents] + [0.0])


def _parameter_bound(similarity: losses_similarities.Similarity, ratio: float) -> str:
    """`" (sigma >= 0.3)"`: the similarity's parameter value that scales `l` by `1 / ratio`, or `""`."""
    parameter = getattr(similarity, "parameter", None)
    value = getattr(similarity, parameter, None) if parameter else None
    if not is_real(value):
        return ""
    # l scales as 1/temperature (cosine) and 1/sigma^2 (Gaussian).
    bound = value * (ratio if parameter == "temperature" else math.sqrt(ratio))
    return f" ({parameter} >= {bound:.3g})"


def warn_if_beyond_exact_range(
    divergence: losses_divergences.Divergence, similarity: losses_similarities.Similarity, stacklevel: int = 2
) -> None:
    """Warns when the scores can need exponents beyond float32's exact range.

    Past `divergences.max_exponent("float32")` (44.4) `capped_exp`
    continues linearly: values and gradients stay finite, but no longer the
    exact divergence, and they can be large enough (up to about `e^44`
    times the exponent) that an optimizer's statistics overflow (Adam's
    squared gradients pass float32's maximum beyond `1.8e19`) and the
    weights turn NaN. `stacklevel` counts from the caller of this function.
    """
    largest = largest_exponent(divergence, similarity)
    cap = _float32_cap()
    if largest > cap:
        warnings.warn(
            f"With {similarity!r} the {divergence.name} scores can reach "
            f"exp({largest:.0f}), beyond float32's exact range exp({cap:.1f}): "
            "past it they are continued linearly, finite but no longer the "
            "exact divergence, and large enough (about 1e19 and more) that "
            "training can diverge on the first steps (the optimizer's "
            "squared gradients overflow). A larger sigma or temperature"
            f"{_parameter_bound(similarity, largest / cap)} avoids this.",
            stacklevel=stacklevel + 1,
        )


# log of float32's smallest subnormal, 2**-149: exp underflows to 0 below it.
_FLOAT32_LOG_SMALLEST = -149 * math.log(2.0)

# The cosine of the pairs at which `warn_if_scores_saturate` looks: about 26
# degrees apart, closer than augmented views of one image at initialisation.
SATURATION_COSINE = 0.9


def scores_saturate(
    divergence: losses_divergences.Divergence, similarity: losses_similarities.Similarity
) -> bool:
    """Whether an exponential of the scores underflows at cosine `SATURATION_COSINE`.

    True when `k l < log(float32's smallest subnormal)` (-103.3) for a
    positive `k` of `divergence.exponents` or of its `negative_form`
    (`softplus(k l)` and `sigmoid(k l)^2` decay as `e^(k l)` and
    `e^(2 k l)`), `l` the log ratio of pairs at
    cosine 0.9: `e^(k l)` is then exactly 0, so its term gives every pair at
    least that far apart exactly zero gradient (for KL and JS the negatives' push
    apart, for Pearson, Tsallis and Vincze-Le Cam all of it). False where
    `l` cannot be evaluated (a similarity without `log_ratio_from_cosine`,
    or while tracing).
    """
    offset = similarity.log_ratio_offset
    if offset is not None:  # affine: l = cosine_scale * cos + offset, no tensor needed
        log_ratio = similarity.cosine_scale * SATURATION_COSINE + offset
    else:
        try:
            with warnings.catch_warnings():  # torch's tensor -> numpy DeprecationWarning under numpy 2
                warnings.simplefilter("ignore", DeprecationWarning)
                log_ratio = float(
                    ops.convert_to_numpy(similarity.log_ratio_from_cosine(ops.convert_to_tensor(SATURATION_COSINE)))
                )
        except (NotImplementedError, TypeError, ValueError):
            return False
    rates = list(divergence.exponents)
    form = negative_form(divergence)
    if form is not None:
        # softplus(k l) ~ e^(k l) and sigmoid(k l)^2 ~ e^(2 k l) as l -> -inf
        rates.append(form.k * (2.0 if form.core == "sigmoid_squared" else 1.0))
    return any(k > 0 and k * log_ratio < _FLOAT32_LOG_SMALLEST for k in rates)


def warn_if_scores_saturate(
    divergence: losses_divergences.Divergence, similarity: losses_similarities.Similarity, stacklevel: int = 2
) -> None:
    """Warns when `scores_saturate`: pairs 26 degrees apart get no gradient.

    `stacklevel` counts from the caller of this function.
    """
    if scores_saturate(divergence, similarity):
        warnings.warn(
            f"With {similarity!r} an exponential of the {divergence.name} scores "
            f"underflows to 0 in float32 for pairs at cosine {SATURATION_COSINE} "
            "(about 26 degrees apart): its term gives such pairs, and every "
            "pair farther apart, exactly zero gradient (for Pearson, Tsallis "
            "and Vincze-Le Cam a flat loss; for KL and JS no push apart of "
            "the negatives). A larger sigma or temperature avoids this.",
            stacklevel=stacklevel + 1,
        )
