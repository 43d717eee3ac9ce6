"""The f-MICL loss and the InfoNCE baseline, as Keras losses and functions.

Both take `y_pred` of shape `(N, V, d)`: N samples seen in V >= 2 views.
`y_true` is `None` (self-supervised) or non-negative integer labels of
shape `(N,)` (supervised contrast). Both return one value per sample, the
mean over its V views of the per-anchor loss, reduced like any Keras loss.
The definitions are those of `docs/fmicl-math.md`.

f-MICL (`docs/fmicl-math.md`, section 4), for anchor `a` with positives
`P(a)` and negatives `N(a)`, log density ratio `l` from the similarity and
an f-divergence `f`:

    loss(a) = - mean_{p in P(a)} f'(e^l(a,p))
              + alpha * mean_{n in N(a)} f*(f'(e^l(a,n)))

InfoNCE (`docs/fmicl-math.md`, section 5), with the cosine similarity
`l = cos / tau`, in its "decoupled" form (the default):

    loss(a) = mean_{p in P(a)} [ -l(a,p) + log sum_{b in {p} U N(a)} e^l(a,b) ]

or SupCon's L_out (`supervised_form="supcon"`):

    loss(a) = -mean_{p in P(a)} [ l(a,p) - log sum_{b in P(a) U N(a)} e^l(a,b) ]

An anchor without negatives contributes 0 to f-MICL and decoupled InfoNCE,
never NaN.

Bad input: wrong shapes, `d = 0`, concrete invalid labels (NaN, negative,
fractional, strings) and a wrongly shaped `sample_weight` or `queue_mask`
raise a `ValueError`. A NaN or an infinity anywhere in the embeddings
(queries, keys or queue), or invalid labels seen only inside a traced
function, make every per-sample loss NaN on purpose (so that
`keras.callbacks.TerminateOnNaN` fires), never a silently finite number.
The embeddings are normalised scale-invariantly: any finite non-zero scale
(`1e-30` to `1e30` in float32) gives the same loss (`similarities.l2_normalize`;
float16 gradients overflow below a norm of about `1e-3`, `docs/fmicl-math.md`
section 7.4).

Reference:
    Lu, Zhang, Sun, Guo, Yu. "f-MICL: Understanding and Generalizing
    InfoNCE-based Contrastive Learning", TMLR 2023.
    van den Oord, Li, Vinyals. "Representation Learning with Contrastive
    Predictive Coding", 2018 (InfoNCE); Chen et al. "A Simple Framework for
    Contrastive Learning of Visual Representations", ICML 2020 (NT-Xent).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_fmicl import contrast
from keras_fmicl import divergences
from keras_fmicl import fast_paths
from keras_fmicl import similarities
from keras_fmicl.validation import check_bool
from keras_fmicl.validation import check_choice
from keras_fmicl.validation import check_positive_number
from keras_fmicl.validation import check_sample_weight

_PACKAGE = "keras_fmicl"
# alpha = 40: the paper's vision setting (Lu et al., TMLR 2023, arXiv
# 2402.10150, "Experimental setup" table: alpha = 40 for every vision data
# set, with mu = 1 and (2 sigma^2)^-1 = 1, i.e. `similarities.DEFAULT_SIGMA`).
# Confirmed by the validation sweep of benchmarks/results/quality_alpha
# (Fashion-MNIST, SimCLR mode, KL and JS, 2 seeds: no alpha in 1-160 beats
# 40 by more than its 95 % CI; 20-80 is a plateau, alpha 1 falls below the
# random-init encoder). It was 4.0 before issue 14 (the earlier sweep at
# sigma 1, which stopped at alpha 8).
DEFAULT_ALPHA = 40.0
# InfoNCE's temperature: the best of 0.1, 0.2 and 0.5 in the earlier sweep
# on a Fashion-MNIST validation split (benchmarks/README.md, "The earlier
# benchmark"), confirmed by the temperature suite (2 seeds, kNN 77.78 vs
# 77.00 / 76.94 / 75.97 at 0.2 / 0.5 / 1.0;
# benchmarks/results/quality_temperature).
DEFAULT_INFONCE_TEMPERATURE = 0.1
# The two forms of supervised InfoNCE (`docs/fmicl-math.md`, section 5.3).
SUPERVISED_FORMS = ("decoupled", "supcon")


def _mean_views(anchor_values: Any) -> Any:
    # sum / V rather than `ops.mean`, which JAX's Keras backend computes in
    # float32 even for float64 input.
    return ops.sum(anchor_values, axis=1) / anchor_values.shape[1]


def _per_sample(batch: contrast.ContrastiveBatch, anchor_loss: Any) -> Any:
    """`(N,)` per-sample losses; NaN when `build` found invalid input."""
    return _mean_views(anchor_loss) + batch.nan_guard


def _fmicl_anchor_losses(
    batch: contrast.ContrastiveBatch,
    plan: fast_paths.ScorePlan,
    divergence: divergences.Divergence,
    alpha: float,
) -> tuple[Any, Any]:
    """Per-anchor `(N, V)` f-MICL loss and f-MI estimate (alpha = 1).

    `batch` must come from `contrast.build` with the scale and offset of
    `plan`.
    """
    positive = contrast.positive_sum(
        batch, lambda x: divergence.positive_score(plan.log_ratio(x))
    )
    positive_mean = positive / batch.positive_count
    negative = fast_paths.negative_sum(batch, plan)
    if negative is None:
        negative_mean = ops.zeros_like(positive_mean)
    else:
        count = batch.negative_count
        negative_mean = negative / ops.where(count > 0, count, 1.0)
    anchor_loss = alpha * negative_mean - positive_mean
    return anchor_loss, positive_mean - negative_mean


def _info_nce_anchor_losses(
    batch: contrast.ContrastiveBatch,
    plan: fast_paths.ScorePlan,
    supervised_form: str = "decoupled",
) -> tuple[Any, Any]:
    """Per-anchor `(N, V)` InfoNCE loss and its bound.

    The bound is `log(C) - loss`, with `C` the number of candidates of each
    softmax: `1 + |N(a)|` (decoupled) or `|P(a)| + |N(a)|` (SupCon).
    """
    log_ratio = plan.log_ratio
    if supervised_form == "supcon":
        lse = contrast.candidate_logsumexp(batch, log_ratio)
        positive = contrast.positive_sum(batch, log_ratio)
        anchor_loss = lse - positive / batch.positive_count
        bound = ops.log(batch.positive_count + batch.negative_count) - anchor_loss
        return anchor_loss, bound
    lse, has_negatives = contrast.negative_logsumexp(batch, log_ratio)
    # -l + log(e^l + sum_n e^l_n) = softplus(lse_n - l)
    terms = contrast.positive_sum(
        batch, lambda x, s: ops.softplus(s - log_ratio(x)), anchor_stat=lse
    )
    anchor_loss = ops.where(
        has_negatives, terms / batch.positive_count, ops.zeros_like(terms)
    )
    bound = ops.log(1.0 + batch.negative_count) - anchor_loss
    return anchor_loss, bound


def _build(plan: fast_paths.ScorePlan, y_pred: Any, **kwargs) -> contrast.ContrastiveBatch:
    """The pair set of `y_pred`, in the scale and offset of `plan`."""
    return contrast.build(y_pred, scale=plan.scale, offset=plan.offset, **kwargs)


def _functional(plan, y_true, y_pred, pairs: tuple, anchor_losses, *args) -> Any:
    """`fmicl` and `info_nce`: `(N,)` per-sample losses of `anchor_losses(batch, plan, *args)`.

    `pairs`: `(keys, queue, queue_mask, in_batch_negatives, global_negatives,
    key_views)`.
    """
    keys, queue, queue_mask, in_batch_negatives, global_negatives, key_views = pairs
    batch = _build(
        plan, y_pred, keys=keys, queue=queue, queue_mask=queue_mask, labels=y_true,
        in_batch_negatives=in_batch_negatives, global_negatives=global_negatives,
        key_views=key_views,
    )  # fmt: skip
    anchor_loss, _ = anchor_losses(batch, plan, *args)
    return _per_sample(batch, anchor_loss)


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
    divergence = divergences.get(divergence)
    similarity = similarities.get(similarity, sigma=sigma, temperature=temperature, stacklevel=3)
    alpha = check_positive_number("alpha", alpha)
    plan = fast_paths.score_plan(similarity, divergence)
    pairs = (keys, queue, queue_mask, in_batch_negatives, global_negatives, key_views)
    return _functional(plan, y_true, y_pred, pairs, _fmicl_anchor_losses, divergence, alpha)


def info_nce(
    y_true: Any,
    y_pred: Any,
    temperature: float | None = None,
    similarity: Any = "cosine",
    sigma: float | None = None,
    *,
    keys: Any | None = None,
    queue: Any | None = None,
    queue_mask: Any | None = None,
    in_batch_negatives: bool = True,
    global_negatives: bool = True,
    supervised_form: str = "decoupled",
    key_views: str = "other",
) -> Any:
    """Per-sample InfoNCE / NT-Xent loss (functional form of `InfoNCELoss`).

    Args:
        temperature: cosine temperature, `> 0`; `None` (the default) means
            0.1. Used with `similarity="cosine"`.
        supervised_form: `"decoupled"` (default) or `"supcon"`: the form
            for anchors with several positives (see `InfoNCELoss`).
        Others: as `fmicl`, without the divergence and alpha.

    Returns:
        As `fmicl`: `(N,)` per-sample losses, NaN for every sample when an
        embedding holds a NaN or an infinity.

    Example:

    ```python
    per_sample = keras_fmicl.info_nce(labels, y_pred, supervised_form="supcon")
    ```
    """
    supervised_form = check_choice("supervised_form", supervised_form, SUPERVISED_FORMS)
    if temperature is None and _is_cosine_name(similarity):
        temperature = DEFAULT_INFONCE_TEMPERATURE
    similarity = similarities.get(similarity, sigma=sigma, temperature=temperature, stacklevel=3)
    plan = fast_paths.score_plan(similarity)
    pairs = (keys, queue, queue_mask, in_batch_negatives, global_negatives, key_views)
    return _functional(plan, y_true, y_pred, pairs, _info_nce_anchor_losses, supervised_form)


def _is_cosine_name(similarity: Any) -> bool:
    """Whether `similarity` names the cosine similarity (InfoNCE's default)."""
    return similarities.canonical_name(similarity) == "cosine"


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
        self.similarity = similarities.get(
            similarity, sigma=sigma, temperature=temperature, stacklevel=4
        )

    def anchor_losses(self, batch: contrast.ContrastiveBatch) -> tuple[Any, Any]:
        raise NotImplementedError

    def score_plan(self) -> fast_paths.ScorePlan:
        """How `anchor_losses` evaluates its scores (`keras_fmicl.fast_paths`).

        `contrast()` builds the pair set in the plan's scale and offset.
        Built once and reused until the similarity (or, for f-MICL, the
        divergence) is replaced.
        """
        key = (self.similarity, getattr(self, "divergence", None))
        cached = getattr(self, "_score_plan_cache", None)
        if cached is None or cached[0][0] is not key[0] or cached[0][1] is not key[1]:
            cached = (key, fast_paths.score_plan(*key))
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
        batch = _build(
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
        per_sample = _per_sample(batch, anchor_loss)
        if not return_metrics:
            return per_sample
        metrics = contrast.embedding_metrics(batch)
        metrics["mi_estimate"] = ops.sum(_mean_views(ops.stop_gradient(mi_estimate))) / ops.cast(
            ops.shape(mi_estimate)[0], batch.dtype
        )
        return per_sample, metrics

    def get_config(self) -> dict:
        config = super().get_config()
        builtin = similarities.REGISTRY.is_builtin(self.similarity)
        config["similarity"] = (
            self.similarity.name if builtin else similarities.serialize(self.similarity)
        )
        # The parameter of the similarity only: an ignored one would warn
        # again on `from_config`.
        for parameter in ("sigma", "temperature"):
            used = builtin and self.similarity.parameter == parameter
            config[parameter] = getattr(self.similarity, parameter) if used else None
        config["global_negatives"] = self.global_negatives
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
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
        self.divergence = divergences.get(divergence)
        self.alpha = check_positive_number("alpha", alpha)
        # stacklevel 2: the warning points at the user's FMICLLoss(...) call.
        fast_paths.warn_if_beyond_exact_range(self.divergence, self.similarity, stacklevel=2)

    def anchor_losses(self, batch):
        return _fmicl_anchor_losses(batch, self.score_plan(), self.divergence, self.alpha)

    def get_config(self):
        config = super().get_config()
        config["divergence"] = divergences.serialize(self.divergence)
        config["alpha"] = self.alpha
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class InfoNCELoss(ContrastiveLoss):
    """InfoNCE (NT-Xent): the baseline f-MICL generalises.

    For anchor `a` with positives `P(a)` and negatives `N(a)`
    (`docs/fmicl-math.md`, sections 4 and 5), and `l = cos / temperature`,
    in the default "decoupled" form:

        loss(a) = mean_{p in P(a)} [ -l(a,p) + log sum_{b in {p} U N(a)} e^l(a,b) ]

    Each positive competes only with the negatives, not with the other
    positives. An anchor without negatives contributes 0. For two views the
    per-sample value is half of what `keras_cv.losses.SimCLRLoss(temperature)`
    returns (that one sums both directions).

    With `supervised_form="supcon"`, SupCon's L_out (Khosla et al. 2020):

        loss(a) = -mean_{p in P(a)} [ l(a,p) - log sum_{b in P(a) U N(a)} e^l(a,b) ]

    one softmax over every candidate of the anchor, the positives
    included: in a batch contrasted with itself every other embedding
    `b != a`; with momentum keys (`contrast(queries, keys=...)`) the keys of
    the other views, the same ones the decoupled form contrasts with; and
    every valid queue entry. An anchor with positives only (every candidate
    shares its label) still gets `log sum_p e^l(a,p) - mean_p l(a,p) >= 0`,
    as in SupCon.

    The two forms differ only for anchors with several positives (labels
    shared by several samples, or V >= 3 views): with one positive per
    anchor they coincide. The `mi_estimate` metric is `log(C) - loss`, `C`
    the number of candidates of the softmax (`1 + |N(a)|`, resp.
    `|P(a)| + |N(a)|`).

    Args:
        temperature: `> 0`. `None` (the default) means 0.1 (the best of
            0.1, 0.2 and 0.5 in the earlier sweep of `benchmarks/`). Used
            with `similarity="cosine"`; a `UserWarning` says when it is
            given and ignored.
        similarity: `"cosine"` (default) or `"gaussian"` (then `sigma`).
        sigma: Gaussian bandwidth when `similarity="gaussian"`; a
            `UserWarning` says when it is given and ignored.
        supervised_form: `"decoupled"` (default) or `"supcon"`.
        global_negatives, reduction, name, dtype: as `FMICLLoss`.

    Example:

    ```python
    loss = keras_fmicl.InfoNCELoss(temperature=0.2)
    value = loss(None, keras.random.normal((8, 2, 16)))
    supcon = keras_fmicl.InfoNCELoss(supervised_form="supcon")
    value = supcon(labels, y_pred)
    ```

    Reference:
        van den Oord, Li, Vinyals, 2018; Chen, Kornblith, Norouzi, Hinton,
        "A Simple Framework for Contrastive Learning of Visual
        Representations", ICML 2020; Khosla et al., "Supervised
        Contrastive Learning", NeurIPS 2020 (SupCon).
    """

    def __init__(
        self,
        temperature: float | None = None,
        similarity: Any = "cosine",
        sigma: float | None = None,
        global_negatives: bool = True,
        reduction: str | None = "sum_over_batch_size",
        name: str | None = "info_nce",
        dtype: Any = None,
        supervised_form: str = "decoupled",
    ):
        self.supervised_form = check_choice("supervised_form", supervised_form, SUPERVISED_FORMS)
        if temperature is None and _is_cosine_name(similarity):
            temperature = DEFAULT_INFONCE_TEMPERATURE
        super().__init__(
            similarity=similarity,
            sigma=sigma,
            temperature=temperature,
            global_negatives=global_negatives,
            name=name,
            reduction=reduction,
            dtype=dtype,
        )

    def anchor_losses(self, batch):
        return _info_nce_anchor_losses(batch, self.score_plan(), self.supervised_form)

    def get_config(self):
        config = super().get_config()
        config["supervised_form"] = self.supervised_form
        return config
