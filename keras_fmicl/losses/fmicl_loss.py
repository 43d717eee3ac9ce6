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
from keras_fmicl.utils.registry import PACKAGE

# alpha = 40: the paper's vision setting (Lu et al., TMLR 2023, arXiv
# 2402.10150, "Experimental setup" table: alpha = 40 for every vision data
# set, with mu = 1 and (2 sigma^2)^-1 = 1, i.e. `similarities.DEFAULT_SIGMA`).
# Confirmed by the validation sweep of benchmarks/results/quality_alpha
# (Fashion-MNIST, SimCLR mode, KL and JS, 2 seeds: no alpha in 1-160 beats
# 40 by more than its 95 % CI; 20-80 is a plateau, alpha 1 falls below the
# random-init encoder). It was 4.0 before issue 14 (the earlier sweep at
# sigma 1, which stopped at alpha 8).
DEFAULT_ALPHA = 40.0


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
    alpha = check_positive_number("alpha", alpha)
    plan = losses_fast_paths.score_plan(similarity, divergence)
    pairs = (keys, queue, queue_mask, in_batch_negatives, global_negatives, key_views)
    return functional_loss(plan, y_true, y_pred, pairs, _fmicl_anchor_losses, divergence, alpha)


@keras.saving.register_keras_serializable(package=PACKAGE)
class FMICLLoss(ContrastiveLoss):
    """f-MICL: contrastive learning with an f-mutual information bound.

    For anchor `a` with positives `P(a)`, negatives `N(a)` and log density
    ratio `l` given by the similarity:

        loss(a) = - mean_{p in P(a)} f'(e^l(a,p))
                  + alpha * mean_{n in N(a)} f*(f'(e^l(a,n)))

    A sample's loss is the mean over its views; the default reduction is the
    mean over samples. With `alpha = 1` the negated loss is a lower-bound
    estimate of the f-mutual information `I_f` in nats. The definitions are
    those of `docs/fmicl-math.md`, section 4.

    Inputs: `y_pred` of shape `(N, V, d)`, `V >= 2`, `d >= 1`; `y_true`
    `None` or non-negative integer labels of shape `(N,)` or `(N, 1)`
    (integer-valued floats such as `3.0` are accepted); `sample_weight` a
    scalar, `(N,)` or `(N, 1)`. Anything else raises a `ValueError`, but
    invalid labels seen only inside a traced function (`tf.function`,
    `jax.jit`), which make every per-sample loss NaN. A NaN or an infinity
    anywhere in the embeddings (or keys, or queue) makes every per-sample
    loss NaN too, on purpose: every anchor contrasts with every embedding,
    and `keras.callbacks.TerminateOnNaN` then stops the training instead of
    it going on with a meaningless finite number. The embeddings are
    normalised scale-invariantly (`similarities.l2_normalize`): `z * c`
    gives the loss of `z` and `1 / c` times its gradient for any finite
    `c > 0` (`1e-30` to `1e30`); a zero embedding is orthogonal to all.

    Args:
        divergence: `"kl"`, `"js"`, `"pearson"`, `"squared_hellinger"`,
            `"tsallis"`, `"vlc"` (or an alias such as `"chi2"`,
            `"hellinger"`, `"jensen_shannon"`), or a
            `keras_fmicl.Divergence` instance such as
            `keras_fmicl.Tsallis(order=2.0)` or a user-defined subclass.
            Defaults to `"kl"`.
        similarity: `"gaussian"` (the f-Gaussian similarity,
            `l = -||z^_a - z^_b||^2 / (2 sigma^2)`), `"cosine"`
            (`l = cos / temperature`), or a `keras_fmicl.Similarity`
            instance. Defaults to `"gaussian"`.
        sigma: Gaussian bandwidth, `> 0`; defaults to `2 ** -0.5`
            (about 0.707, i.e. `(2 sigma^2)^-1 = 1`, the paper's vision
            setting). Used with `similarity="gaussian"`.
        temperature: cosine temperature, `> 0`; defaults to 1.0 (the
            best of 0.1, 0.2, 0.5 and 1.0 for f-MICL at alpha 40,
            `benchmarks/results/quality_temperature`). Used with
            `similarity="cosine"`.
        alpha: weight of the negative (uniformity) term, `> 0`. Defaults
            to 40.0, the paper's vision setting (its ablation on CIFAR-10:
            KL 77.6 / 83.5 / 84.2 / 82.8 kNN top-1 at alpha 1 / 10 / 40 /
            50), confirmed on a Fashion-MNIST validation split
            (`benchmarks/results/quality_alpha`). The paper's text setting
            is `alpha=409600` with `sigma=40 ** -0.5`. With `alpha = 1`
            the loss is the negated f-MI bound; the `mi_estimate` metric
            is the bound whatever `alpha` is.
        global_negatives: under data parallelism (`tf.distribute`,
            torch.distributed), contrast every anchor with the whole global
            batch, gathered from all replicas (the gradient flows back to
            each replica's embeddings). False keeps each replica's shard.
            JAX's `keras.distribution` always sees the global batch.
            Defaults to True.
        reduction: Keras reduction; `None` returns the `(N,)` vector.
        name: name of the loss.
        dtype: dtype of the computation; defaults to `keras.backend.floatx()`
            (float32 under mixed precision policies).

    Example:

    ```python
    loss = keras_fmicl.FMICLLoss("js", sigma=0.5)
    y_pred = keras.random.normal((8, 2, 16))  # 8 samples, 2 views, d = 16
    value = loss(None, y_pred)                # self-supervised
    value = loss(labels, y_pred)              # supervised f-MICL
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
        super().__init__(
            similarity=similarity,
            sigma=sigma,
            temperature=temperature,
            global_negatives=global_negatives,
            name=name,
            reduction=reduction,
            dtype=dtype,
        )
        self.divergence = losses_divergences.get(divergence)
        self.alpha = check_positive_number("alpha", alpha)
        # stacklevel 2: the warning points at the user's FMICLLoss(...) call.
        losses_fast_paths.warn_if_beyond_exact_range(self.divergence, self.similarity, stacklevel=2)

    def anchor_losses(self, batch):
        return _fmicl_anchor_losses(batch, self.score_plan(), self.divergence, self.alpha)

    def get_config(self):
        config = super().get_config()
        config["divergence"] = losses_divergences.serialize(self.divergence)
        config["alpha"] = self.alpha
        return config
