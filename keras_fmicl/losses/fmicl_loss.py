"""The f-MICL loss: `fmicl` (function) and `FMICLLoss` (Keras loss)."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_fmicl.losses import divergences as losses_divergences
from keras_fmicl.losses import fast_paths as losses_fast_paths
from keras_fmicl.losses import pair_sums
from keras_fmicl.losses import pairs as losses_pairs
from keras_fmicl.losses import similarities as losses_similarities
from keras_fmicl.losses.contrastive_loss import ContrastiveLoss
from keras_fmicl.losses.contrastive_loss import functional_loss
from keras_fmicl.utils.checks import check_positive_number
from keras_fmicl.utils.checks import float32_max
from keras_fmicl.utils.registry import PACKAGE

# The paper's vision setting; its provenance: docs/fmicl-math.md, section 8.
DEFAULT_ALPHA = 40.0


def check_alpha(alpha: Any) -> float:
    """`alpha` as a float if it is positive and finite in float32, else `ValueError`."""
    alpha = check_positive_number("alpha", alpha)
    if alpha > float32_max():
        raise ValueError(
            "`alpha` must be finite in float32, in which the loss is computed "
            f"(at most {float32_max():.4g}). Received: alpha={alpha!r}"
        )
    return alpha


def _fmicl_anchor_losses(
    batch: losses_pairs.ContrastiveBatch,
    plan: losses_fast_paths.ScorePlan,
    divergence: losses_divergences.Divergence,
    alpha: float,
) -> tuple[Any, Any]:
    """Per-anchor `(N, V)` f-MICL loss and f-MI estimate (alpha = 1).

    `batch` must come from `contrast.build` with the scale and offset of
    `plan`.
    """
    positive = pair_sums.positive_sum(
        batch, lambda x: divergence.positive_score(plan.log_ratio(x))
    )
    positive_mean = positive / batch.positive_count
    negative = losses_fast_paths.negative_sum(batch, plan)
    if negative is None:
        negative_mean = ops.zeros_like(positive_mean)
    else:
        count = batch.negative_count
        negative_mean = negative / ops.where(count > 0, count, 1.0)
    anchor_loss = alpha * negative_mean - positive_mean
    return anchor_loss, positive_mean - negative_mean


def fmicl(
    y_true: Any,
    y_pred: Any,
    divergence: Any = "kl",
    similarity: Any = "gaussian",
    sigma: float | None = None,
    temperature: float | None = None,
    alpha: float = DEFAULT_ALPHA,
    *,
    keys: Any | None = None,
    queue: Any | None = None,
    queue_mask: Any | None = None,
    in_batch_negatives: bool = True,
    global_negatives: bool = True,
    key_views: str = "other",
) -> Any:
    """Per-sample f-MICL loss (functional form of `FMICLLoss`).

    Args:
        y_true: `None`, or non-negative integer labels of shape `(N,)`
            (supervised).
        y_pred: `(N, V, d)` embeddings, or the queries when `keys` is given.
        divergence: name or `keras_fmicl.Divergence` (see `FMICLLoss`).
        similarity: `"gaussian"`, `"cosine"` or a `keras_fmicl.Similarity`.
        sigma: Gaussian bandwidth (used with `similarity="gaussian"`; a
            `UserWarning` says when it is given and ignored).
        temperature: cosine temperature (used with `similarity="cosine"`;
            a `UserWarning` says when it is given and ignored).
        alpha: weight of the negative (uniformity) term, `> 0`.
        keys: optional `(N, V, d)` momentum-encoder keys: the queries are
            then contrasted with the keys of the other views.
        queue: optional `(K, d)` extra negatives (MoCo queue).
        queue_mask: optional `(K,)` bool of the valid queue entries.
        in_batch_negatives: whether the other samples of the batch are
            negatives (set False for MoCo v2, where only the queue is).
        global_negatives: under data parallelism (`tf.distribute`,
            torch.distributed), contrast with the keys of the global batch
            gathered from every replica. Defaults to True.
        key_views: `"other"` (default): the keys embed the views of the
            queries; `"all"`: the keys `(N, V_k, d)` embed other views, and
            every key of a sample is a positive of its queries (see
            `ContrastiveLoss.contrast`).

    Returns:
        A `(N,)` tensor: each sample's loss, averaged over its views; NaN
        for every sample when an embedding holds a NaN or an infinity.

    Example:

    ```python
    y_pred = keras.random.normal((8, 2, 16))
    per_sample = keras_fmicl.fmicl(None, y_pred, "js", sigma=0.5)   # (8,)
    ```
    """
    divergence = losses_divergences.get(divergence)
    similarity = losses_similarities.get(similarity, sigma=sigma, temperature=temperature, stacklevel=3)
    alpha = check_alpha(alpha)
    plan = losses_fast_paths.score_plan(similarity, divergence)
    pairs = (keys, queue, queue_mask, in_batch_negatives, global_negatives, key_views)
    return functional_loss(plan, y_true, y_pred, pairs, _fmicl_anchor_losses, divergence, alpha)


@keras.saving.register_keras_serializable(package=PACKAGE)
class FMICLLoss(ContrastiveLoss):
    """f-MICL: contrastive learning with an f-mutual information bound.

    Formula, for anchor `a` with positives `P(a)`, negatives `N(a)` and the
    log density ratio `l` of the similarity:

    ```
    loss(a) = - mean_{p in P(a)} f'(e^l(a,p)) + alpha * mean_{n in N(a)} f*(f'(e^l(a,n)))
    ```

    A sample's loss is the mean over its views, reduced over samples as the
    `reduction` says. With `alpha = 1` the negated loss is a lower bound of
    the f-mutual information `I_f` in nats (`docs/fmicl-math.md`, section 4;
    the defaults and where they come from: section 8).

    Contract: `y_pred` is `(N, V, d)` with `V >= 2`; `y_true` is `None` or
    `(N,)` / `(N, 1)` non-negative integer labels (supervised f-MICL). A NaN
    or an infinity anywhere in the embeddings makes every per-sample loss
    NaN (section 7.2); embeddings are normalised scale-invariantly and a
    zero embedding is orthogonal to all (section 7.1).

    Args:
        divergence: a name (`"kl"`, `"js"`, `"pearson"`,
            `"squared_hellinger"`, `"tsallis"`, `"vlc"` or an alias) or a
            `keras_fmicl.Divergence`. Defaults to `"kl"`.
        similarity: `"gaussian"` (`l = -||z^_a - z^_b||^2 / (2 sigma^2)`),
            `"cosine"` (`l = cos / temperature`) or a
            `keras_fmicl.Similarity`. Defaults to `"gaussian"`.
        sigma: Gaussian bandwidth, `> 0`; defaults to `2 ** -0.5`, the
            paper's vision setting.
        temperature: cosine temperature, `> 0`; defaults to 1.0 (f-MICL's best
            of a validation sweep, section 8).
        alpha: weight of the negative (uniformity) term, `> 0` and finite
            in float32. Defaults to 40.0, the paper's vision setting (text:
            `alpha=409600`, `sigma=40 ** -0.5`).
        global_negatives: under data parallelism, contrast with the whole
            global batch gathered from all replicas (section 6). Defaults
            to True.
        reduction: Keras reduction; `None` gives the `(N,)` losses.
        name: name of the loss.
        dtype: compute dtype; defaults to `keras.backend.floatx()`.

    Raises:
        ValueError: for an unknown divergence or similarity, a parameter out
            of range, or inputs of the wrong shape or labels.

    Example:

    ```python
    loss = keras_fmicl.FMICLLoss("js", sigma=0.5)
    y_pred = keras.random.normal((8, 2, 16))  # 8 samples, 2 views, d = 16
    value = loss(None, y_pred)                # self-supervised
    ```

    Reference:
        Lu, Zhang, Sun, Guo, Yu. "f-MICL: Understanding and Generalizing
        InfoNCE-based Contrastive Learning", TMLR 2023.
    """

    def __init__(
        self,
        divergence: Any = "kl",
        similarity: Any = "gaussian",
        sigma: float | None = None,
        temperature: float | None = None,
        alpha: float = DEFAULT_ALPHA,
        global_negatives: bool = True,
        reduction: str | None = "sum_over_batch_size",
        name: str | None = "fmicl",
        dtype: Any = None,
    ):
        # ContrastiveLoss's arguments, in its order
        super().__init__(similarity, sigma, temperature, global_negatives, name, reduction, dtype)
        self.divergence = losses_divergences.get(divergence)
        self.alpha = check_alpha(alpha)
        # stacklevel 2: the warnings point at the user's FMICLLoss(...) call.
        losses_fast_paths.warn_if_beyond_exact_range(self.divergence, self.similarity, stacklevel=2)
        losses_fast_paths.warn_if_scores_saturate(self.divergence, self.similarity, stacklevel=2)

    def anchor_losses(self, batch):
        return _fmicl_anchor_losses(batch, self.score_plan(), self.divergence, self.alpha)

    def get_config(self):
        config = super().get_config()
        config["divergence"] = losses_divergences.serialize(self.divergence)
        config["alpha"] = self.alpha
        return config
