"""The InfoNCE (NT-Xent) loss: `info_nce` (function) and `InfoNCELoss` (Keras loss)."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_fmicl.losses import fast_paths as losses_fast_paths
from keras_fmicl.losses import pair_sums
from keras_fmicl.losses import pairs as losses_pairs
from keras_fmicl.losses import similarities as losses_similarities
from keras_fmicl.losses.contrastive_loss import ContrastiveLoss
from keras_fmicl.losses.contrastive_loss import functional_loss
from keras_fmicl.utils.checks import check_choice
from keras_fmicl.utils.registry import PACKAGE

# InfoNCE's cosine temperature; its provenance: docs/fmicl-math.md, section 8.
DEFAULT_INFONCE_TEMPERATURE = 0.1

# The two forms of supervised InfoNCE (`docs/fmicl-math.md`, section 5.3).
SUPERVISED_FORMS = ("decoupled", "supcon")


def _info_nce_anchor_losses(
    batch: losses_pairs.ContrastiveBatch,
    plan: losses_fast_paths.ScorePlan,
    supervised_form: str = "decoupled",
) -> tuple[Any, Any]:
    """Per-anchor `(N, V)` InfoNCE loss and its bound.

    The bound is `log(C) - loss`, with `C` the number of candidates of each
    softmax: `1 + |N(a)|` (decoupled) or `|P(a)| + |N(a)|` (SupCon).
    """
    log_ratio = plan.log_ratio
    if supervised_form == "supcon":
        lse = pair_sums.candidate_logsumexp(batch, log_ratio)
        positive = pair_sums.positive_sum(batch, log_ratio)
        anchor_loss = lse - positive / batch.positive_count
        bound = ops.log(batch.positive_count + batch.negative_count) - anchor_loss
        return anchor_loss, bound
    lse, has_negatives = pair_sums.negative_logsumexp(batch, log_ratio)
    # -l + log(e^l + sum_n e^l_n) = softplus(lse_n - l)
    terms = pair_sums.positive_sum(
        batch, lambda x, s: ops.softplus(s - log_ratio(x)), anchor_stat=lse
    )
    anchor_loss = ops.where(
        has_negatives, terms / batch.positive_count, ops.zeros_like(terms)
    )
    bound = ops.log(1.0 + batch.negative_count) - anchor_loss
    return anchor_loss, bound


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
    similarity = losses_similarities.get(similarity, sigma=sigma, temperature=temperature, stacklevel=3)
    plan = losses_fast_paths.score_plan(similarity)
    pairs = (keys, queue, queue_mask, in_batch_negatives, global_negatives, key_views)
    return functional_loss(plan, y_true, y_pred, pairs, _info_nce_anchor_losses, supervised_form)


def _is_cosine_name(similarity: Any) -> bool:
    """Whether `similarity` names the cosine similarity (InfoNCE's default)."""
    return losses_similarities.canonical_name(similarity) == "cosine"


@keras.saving.register_keras_serializable(package=PACKAGE)
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
        # ContrastiveLoss's arguments, in its order
        super().__init__(similarity, sigma, temperature, global_negatives, name, reduction, dtype)

    def anchor_losses(self, batch):
        return _info_nce_anchor_losses(batch, self.score_plan(), self.supervised_form)

    def get_config(self):
        config = super().get_config()
        config["supervised_form"] = self.supervised_form
        return config
