"""`ContrastiveLoss`: the Keras loss base of `FMICLLoss` and `InfoNCELoss` (pairs, reduction, metrics)."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_fmicl.losses import fast_paths as losses_fast_paths
from keras_fmicl.losses import pair_sums
from keras_fmicl.losses import pairs as losses_pairs
from keras_fmicl.losses import similarities as losses_similarities
from keras_fmicl.utils.checks import check_bool
from keras_fmicl.utils.checks import check_positive_number
from keras_fmicl.utils.checks import check_sample_weight


def mean_views(anchor_values: Any) -> Any:
    # sum / V rather than `ops.mean`, which JAX's Keras backend computes in
    # float32 even for float64 input.
    return ops.sum(anchor_values, axis=1) / anchor_values.shape[1]


def per_sample_losses(batch: losses_pairs.ContrastiveBatch, anchor_loss: Any) -> Any:
    """`(N,)` per-sample losses; NaN when `build` found invalid input."""
    return mean_views(anchor_loss) + batch.nan_guard


def build_batch(plan: losses_fast_paths.ScorePlan, y_pred: Any, **kwargs) -> losses_pairs.ContrastiveBatch:
    """The pair set of `y_pred`, in the scale and offset of `plan`."""
    return losses_pairs.build(y_pred, scale=plan.scale, offset=plan.offset, **kwargs)


def functional_loss(plan, y_true, y_pred, pairs: tuple, anchor_losses, *args) -> Any:
    """`fmicl` and `info_nce`: `(N,)` per-sample losses of `anchor_losses(batch, plan, *args)`.

    `pairs`: `(keys, queue, queue_mask, in_batch_negatives, global_negatives,
    key_views)`.
    """
    keys, queue, queue_mask, in_batch_negatives, global_negatives, key_views = pairs
    batch = build_batch(
        plan, y_pred, keys=keys, queue=queue, queue_mask=queue_mask, labels=y_true,
        in_batch_negatives=in_batch_negatives, global_negatives=global_negatives,
        key_views=key_views,
    )  # fmt: skip
    anchor_loss, _ = anchor_losses(batch, plan, *args)
    return per_sample_losses(batch, anchor_loss)


class ContrastiveLoss(keras.losses.Loss):
    """Base class of the contrastive losses of `keras_fmicl`.

    A subclass defines `anchor_losses(batch)`, the per-anchor loss and
    mutual-information estimate of a `contrast.ContrastiveBatch` built in
    the scale and offset of its `score_plan()` (`keras_fmicl.fast_paths`).
    This class gives it the Keras `Loss` interface (`loss(y_true, y_pred)`,
    with `y_true=None` allowed) and `contrast()`, the entry point of
    `ContrastiveModel` for queries, keys and queues.
    """

    def __init__(
        self,
        similarity: Any,
        sigma: float | None,
        temperature: float | None,
        global_negatives: bool = True,
        name: str | None = None,
        reduction: str | None = "sum_over_batch_size",
        dtype: Any = None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.global_negatives = check_bool("global_negatives", global_negatives)
        self.sigma = None if sigma is None else check_positive_number("sigma", sigma)
        self.temperature = (
            None if temperature is None else check_positive_number("temperature", temperature)
        )
        # stacklevel: the warning points at the user's FMICLLoss(...) call.
        self.similarity = losses_similarities.get(
            similarity, sigma=sigma, temperature=temperature, stacklevel=4
        )

    def anchor_losses(self, batch: losses_pairs.ContrastiveBatch) -> tuple[Any, Any]:
        raise NotImplementedError

    def score_plan(self) -> losses_fast_paths.ScorePlan:
        """How `anchor_losses` evaluates its scores (`keras_fmicl.fast_paths`).

        `contrast()` builds the pair set in the plan's scale and offset.
        Built once and reused until the similarity (or, for f-MICL, the
        divergence) is replaced.
        """
        key = (self.similarity, getattr(self, "divergence", None))
        cached = getattr(self, "_score_plan_cache", None)
        if cached is None or cached[0][0] is not key[0] or cached[0][1] is not key[1]:
            cached = (key, losses_fast_paths.score_plan(*key))
            self._score_plan_cache = cached
        return cached[1]

    def __call__(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        """The reduced loss; see the class docstring.

        Raises:
            ValueError: `y_pred` is None or not `(N, V, d)`, the labels
                are invalid (see `contrast.check_labels`), or
                `sample_weight` is not a scalar, `(N,)` or `(N, 1)`.
        """
        if y_pred is None:
            raise ValueError(
                "`y_pred` must be an (N, V, d) tensor of embeddings: N samples "
                "seen in V >= 2 views. Received: y_pred=None"
            )
        shape = getattr(y_pred, "shape", None)
        num_samples = None
        if shape is not None and len(shape) > 0 and shape[0] is not None:
            num_samples = int(shape[0])
        check_sample_weight(sample_weight, num_samples)
        # Keras converts `y_true` to the loss's float dtype, which would
        # merge integer labels beyond 2^24 and reject strings with a
        # backend error: the labels bypass it, and `y_true` travels as an
        # empty structure (also the form of `None`, which has no tensor).
        self._labels = y_true
        try:
            return super().__call__((), y_pred, sample_weight)
        finally:
            self._labels = None

    def call(self, y_true: Any, y_pred: Any) -> Any:
        if isinstance(y_true, tuple) and not y_true:
            labels = getattr(self, "_labels", None)
        else:
            labels = y_true
        return self.contrast(
            y_pred, labels=labels, query_argument="y_pred", label_argument="y_true"
        )

    def contrast(
        self,
        queries: Any,
        keys: Any | None = None,
        queue: Any | None = None,
        queue_mask: Any | None = None,
        labels: Any | None = None,
        in_batch_negatives: bool = True,
        return_metrics: bool = False,
        query_argument: str = "queries",
        label_argument: str = "labels",
        key_views: str = "other",
    ) -> Any:
        """Per-sample loss of queries contrasted with keys and a queue.

        Without `keys` this is the loss of `y_pred = queries` (SimCLR). With
        `keys` (momentum-encoder embeddings of the same samples, shape
        `(N, V, d)`), query `(i, v)` has positives the keys `(i, w)`,
        `w != v`, and negatives the keys `(j, w)`, `j != i`, `w != v`
        (MoCo v3), plus every entry of `queue` (set
        `in_batch_negatives=False` to use the queue alone). With
        `key_views="all"` the keys `(N, V_k, d)` embed other views than the
        queries `(N, V_q, d)` (`V_q, V_k >= 1`): query `(i, v)` has
        positives every key `(i, w)` and negatives every key `(j, w)`,
        `j != i` (MoCo v2 and SimCSE: queries of the first view, keys of
        the second).

        Args:
            queries: `(N, V, d)` anchor embeddings.
            keys: `(N, V, d)` keys (`(N, V_k, d)` with `key_views="all"`),
                or `None`.
            queue: `(K, d)` extra negatives, or `None`.
            queue_mask: `(K,)` bool of the filled queue entries, or `None`.
            labels: `(N,)` non-negative integer labels (supervised), or
                `None`.
            in_batch_negatives: whether other samples of the batch are
                negatives.
            return_metrics: also return a dict of batch metrics:
                `alignment`, `uniformity` and `mi_estimate`.
            query_argument, label_argument: the names of the queries and
                labels in error messages.
            key_views: `"other"` (default) or `"all"`, as above.

        Returns:
            `(N,)` per-sample losses (unreduced), and the metrics dict when
            `return_metrics=True`. Every per-sample loss is NaN when the
            queries, keys or queue hold a NaN or an infinity.

        Example:

        ```python
        loss = keras_fmicl.FMICLLoss("js")
        per_sample = loss.contrast(queries, keys=keys, queue=queue,
                                   in_batch_negatives=False)  # MoCo v2
        scalar = keras.ops.mean(per_sample)
        ```
        """
        batch = build_batch(
            self.score_plan(),
            queries,
            keys=keys,
            queue=queue,
            queue_mask=queue_mask,
            labels=labels,
            in_batch_negatives=in_batch_negatives,
            global_negatives=self.global_negatives,
            query_argument=query_argument,
            label_argument=label_argument,
            key_views=key_views,
        )
        anchor_loss, mi_estimate = self.anchor_losses(batch)
        per_sample = per_sample_losses(batch, anchor_loss)
        if not return_metrics:
            return per_sample
        metrics = pair_sums.embedding_metrics(batch)
        metrics["mi_estimate"] = ops.sum(mean_views(ops.stop_gradient(mi_estimate))) / ops.cast(
            ops.shape(mi_estimate)[0], batch.dtype
        )
        return per_sample, metrics

    def get_config(self) -> dict:
        config = super().get_config()
        builtin = losses_similarities.REGISTRY.is_builtin(self.similarity)
        config["similarity"] = (
            self.similarity.name if builtin else losses_similarities.serialize(self.similarity)
        )
        # The parameter of the similarity only: an ignored one would warn
        # again on `from_config`.
        for parameter in ("sigma", "temperature"):
            used = builtin and self.similarity.parameter == parameter
            config[parameter] = getattr(self.similarity, parameter) if used else None
        config["global_negatives"] = self.global_negatives
        return config
