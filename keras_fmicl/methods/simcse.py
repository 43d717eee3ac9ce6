"""SimCSE (unsupervised and supervised) as in princeton-nlp/SimCSE's `cl_forward`."""

from __future__ import annotations

from typing import Any
from typing import ClassVar

import keras
from keras import ops

from keras_fmicl.methods.method import METHODS
from keras_fmicl.methods.method import contrastive_loss
from keras_fmicl.methods.simclr import SimCLR
from keras_fmicl.methods.views import as_float_images
from keras_fmicl.methods.views import map_shapes
from keras_fmicl.methods.views import repeat_views
from keras_fmicl.methods.views import tail_shape
from keras_fmicl.utils import distributed as utils_distributed
from keras_fmicl.utils.checks import check_bool
from keras_fmicl.utils.registry import PACKAGE


@METHODS.register()
@keras.saving.register_keras_serializable(package=PACKAGE)
class SimCSE(SimCLR):
    """Unsupervised SimCSE: views from dropout on identical inputs.

    Each input (a dict of token ids such as a keras-hub preprocessor gives,
    or any other structure) passes `num_views` times through the online
    encoder and projector in training mode; dropout makes the views differ.
    There is no augmenter. At inference the views are identical.

    The pairs are those of SimCSE's `cl_forward`: the first pass `z1_i` of
    sentence `i` is the only anchor; its candidates are the second passes
    `z2_j` of every sentence of the batch, `z2_i` the positive and `z2_j`,
    `j != i`, the negatives (with InfoNCE, the cross-entropy of the
    `(N, N)` matrix `cos(z1_i, z2_j) / T` with labels `arange(N)`). With
    `V > 2` views the first is the anchor and the `V - 1` others its
    positives (their passes of the other sentences its negatives).
    `symmetric=True` lets every view anchor and adds the other sentences'
    first passes as negatives (SimCLR's pairs, this package's form before
    0.9). For labelled sentence pairs (NLI entailments as positives,
    contradictions as hard negatives) see `SupervisedSimCSE`.

    Args:
        symmetric: False (default): SimCSE's pairs, above; True: SimCLR's.
        **kwargs: `keras.layers.Layer` arguments.

    Example:

    ```python
    backbone, preprocessor = keras_fmicl.text.tiny_backbone(sentences)
    model = keras_fmicl.ContrastiveModel(
        keras_fmicl.SentenceEncoder(backbone, pooling="cls"),
        method=keras_fmicl.methods.SimCSE(),
        projector=keras_fmicl.ProjectionHead(64, 64))
    model.compile(optimizer="adam", loss=keras_fmicl.FMICLLoss("kl"))
    ```

    Reference:
        Gao, Yao, Chen. "SimCSE: Simple Contrastive Learning of Sentence
        Embeddings", EMNLP 2021.
    """

    mode: ClassVar[str] = "simcse"
    LEGACY_DEFAULTS: ClassVar[dict] = {"symmetric": True}

    def __init__(self, symmetric: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.symmetric = check_bool("symmetric", symmetric)

    def _refuse_augmenter(self, model: Any) -> None:
        if model.augmenter is not None:
            raise ValueError(
                f"{type(self).__name__} takes its views from dropout and the "
                "data, and takes no `augmenter`. Received: augmenter="
                f"{getattr(model.augmenter, 'name', model.augmenter)!r}"
            )

    def check_inputs(self, model: Any, inputs: Any) -> None:
        """`ValueError` for an `augmenter` on the model (see `Method.check_inputs`)."""
        self._refuse_augmenter(model)

    def view_shape(self, model: Any, input_shape: Any) -> Any:
        self._refuse_augmenter(model)
        return map_shapes(lambda shape: (None,) + tuple(shape[1:]), input_shape)

    def draw_views(self, model: Any, inputs: Any, training: bool) -> Any:
        return repeat_views(inputs, model.num_views)

    def loss(self, model: Any, outputs: dict) -> tuple[Any, dict]:
        """SimCSE's pairs (first view against the others), or SimCLR's (`symmetric`)."""
        loss = contrastive_loss(model)
        negatives = outputs.get(HARD_NEGATIVES)
        if negatives is not None and loss.global_negatives:
            negatives = utils_distributed.all_gather(negatives)
        queries = outputs["queries"]
        if self.symmetric:
            return loss.contrast(queries, queue=negatives, return_metrics=True)
        return loss.contrast(
            queries[:, :1], keys=queries[:, 1:], queue=negatives, key_views="all",
            return_metrics=True,
        )  # fmt: skip

    def get_config(self) -> dict:
        config = super().get_config()
        config["symmetric"] = self.symmetric
        return config


HARD_NEGATIVES = "hard_negatives"
"""The key of `SupervisedSimCSE`'s `(N, d)` hard-negative embeddings in the
model's outputs."""


def _merge_columns(x: Any) -> Any:
    """`(N, C, ...)` to `(N C, ...)`, sample-major (row `i C + c`)."""
    return as_float_images(ops.reshape(x, (-1,) + tail_shape(x, 2)))


@METHODS.register()
@keras.saving.register_keras_serializable(package=PACKAGE)
class SupervisedSimCSE(SimCSE):
    """Supervised SimCSE: entailment pairs are positives, contradictions hard negatives.

    The data holds the views. Every leaf of the inputs (the dict of token
    ids a keras-hub preprocessor gives, or a tensor) has shape `(N, C, ...)`,
    its columns `(premise, entailment)` (`C = 2`) or `(premise, entailment,
    contradiction)` (`C = 3`); in general `num_views` columns of sentences of
    the same meaning, optionally followed by one column of hard negatives
    (`C = num_views + 1`). `keras_fmicl.text.sentence_tuple_dataset` builds
    such batches from `keras_fmicl.text.load_sentence_tuples("nli.csv")`.
    Every column passes once through the online encoder and projector, in
    training mode (dropout on, as SimCSE). No augmenter.

    The pairs are those of SimCSE's `cl_forward`: the premise `z1_i` is
    the only anchor; its candidates are the entailments `z2_j` of every
    sample (`z2_i` the positive) and the contradictions `z3_j` of every
    sample, its own included (with InfoNCE, the cross-entropy of the
    `(N, 2N)` matrix `[cos(z1, z2), cos(z1, z3)] / T`, labels `arange(N)`).
    The `(N, d)` hard-negative embeddings enter the loss as extra negatives
    of every anchor, through the `queue` argument of
    `ContrastiveLoss.contrast` (with gradient; under data parallelism the
    global batch's). A hard negative is never an anchor nor a positive.
    With `C = num_views` this is `SimCSE`'s loss with the views given by
    the data. `symmetric=True` lets the premise and the entailment both
    anchor, with the other samples' premises as negatives too
    (`docs/fmicl-math.md`, section 4.6).

    Example:

    ```python
    premises, entailments, contradictions = keras_fmicl.text.load_sentence_tuples("nli.csv")
    backbone, preprocessor = keras_fmicl.text.tiny_backbone(premises + entailments)
    dataset = keras_fmicl.text.sentence_tuple_dataset(
        (premises, entailments, contradictions), preprocessor, batch_size=64)
    model = keras_fmicl.ContrastiveModel(
        keras_fmicl.SentenceEncoder(backbone, pooling="cls"),
        method=keras_fmicl.methods.SupervisedSimCSE(),
        projector=keras_fmicl.ProjectionHead(64, 64))
    model.compile(optimizer="adam", loss=keras_fmicl.FMICLLoss("kl"))
    model.fit(dataset)  # batches: {"token_ids": (64, 3, L), "padding_mask": ..., ...}
    ```

    Reference:
        Gao, Yao, Chen. "SimCSE: Simple Contrastive Learning of Sentence
        Embeddings", EMNLP 2021 (section 4, supervised SimCSE).
    """

    mode: ClassVar[str] = "supervised_simcse"

    def _num_columns(self, model: Any, shapes: Any) -> int:
        """`C`, the columns of every `(N, C, ...)` leaf; `ValueError` otherwise."""
        found = []
        map_shapes(lambda shape: found.append(shape), shapes)
        allowed = (model.num_views, model.num_views + 1)
        for shape in found:
            if len(shape) < 3 or shape[1] not in allowed:
                raise ValueError(
                    f"{type(self).__name__} takes every input as (N, C, ...): C = "
                    f"num_views = {model.num_views} columns of sentences of the "
                    "same meaning (premise, entailment), optionally followed by "
                    "one column of hard negatives (contradiction), so C in "
                    f"{allowed}. Received: inputs of shape(s) {found}"
                )
        if len({shape[1] for shape in found}) != 1:
            raise ValueError(
                "Every input of SupervisedSimCSE must have the same number of "
                f"columns (axis 1). Received: inputs of shapes {found}"
            )
        return found[0][1]

    def check_inputs(self, model: Any, inputs: Any) -> None:
        """`ValueError` for an `augmenter`, or inputs not `(N, C, ...)` with
        `C` in `(num_views, num_views + 1)` (see `Method.check_inputs`)."""
        self._refuse_augmenter(model)
        self._num_columns(model, keras.tree.map_structure(lambda x: tuple(x.shape), inputs))

    def view_shape(self, model: Any, input_shape: Any) -> Any:
        self._refuse_augmenter(model)
        self._num_columns(model, input_shape)
        return map_shapes(lambda shape: (None,) + tuple(shape[2:]), input_shape)

    def draw_views(self, model: Any, inputs: Any, training: bool) -> Any:
        self._refuse_augmenter(model)
        self._num_columns(model, keras.tree.map_structure(lambda x: tuple(x.shape), inputs))
        return inputs  # (N, C, ...): `embed` merges the columns

    def embed(self, model: Any, views: Any, training: bool) -> dict:
        columns = self._num_columns(model, keras.tree.map_structure(lambda x: tuple(x.shape), views))
        merged = keras.tree.map_structure(_merge_columns, views)
        features, embeddings = model.online_forward(merged, training=training)
        num_views = model.num_views

        def group(x):
            return ops.reshape(x, (-1, columns, x.shape[-1]))

        features, embeddings = group(features), group(embeddings)
        outputs = {"features": features[:, :num_views], "queries": embeddings[:, :num_views]}
        if columns > num_views:
            outputs[HARD_NEGATIVES] = embeddings[:, num_views]
        return outputs
