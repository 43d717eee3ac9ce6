"""`SentenceEncoder`: a keras-hub text backbone and pooling, as the encoder of sentence embeddings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
from keras import ops

from keras_fmicl.utils.checks import check_choice
from keras_fmicl.utils.checks import concrete_values
from keras_fmicl.utils.imports import import_keras_hub
from keras_fmicl.utils.registry import PACKAGE

POOLINGS = ("cls", "mean")
"""The `pooling` modes of `SentenceEncoder`."""

TOKEN_IDS = "token_ids"

PADDING_MASK = "padding_mask"

SEGMENT_IDS = "segment_ids"


def _input_names(backbone: Any) -> tuple[str, ...] | None:
    """The names of the backbone's dict inputs, or `None` when undeclared."""
    inputs = getattr(backbone, "_inputs_struct", None)
    if inputs is None:
        try:
            inputs = backbone.input
        except (AttributeError, ValueError):
            return None
    if isinstance(inputs, Mapping):
        return tuple(inputs)
    return None


def _check_backbone(backbone: Any) -> tuple[str, ...]:
    if not isinstance(backbone, keras.layers.Layer):
        raise ValueError(
            "`backbone` must be a keras-hub text backbone (a Keras model such "
            "as keras_hub.models.BertBackbone). Received: "
            f"backbone={backbone!r}"
        )
    names = _input_names(backbone)
    if names is None or TOKEN_IDS not in names:
        raise ValueError(
            "`backbone` must take a dict of inputs with a `token_ids` entry "
            "(and `padding_mask`), as keras-hub text backbones do. Received: "
            f"backbone={backbone.__class__.__name__} with inputs {names!r}"
        )
    return names


def _is_integer_dtype(x: Any) -> bool:
    dtype = keras.backend.standardize_dtype(x.dtype)
    return dtype.startswith("int") or dtype.startswith("uint")


# keras-hub backbone layers that compute a pooled output SentenceEncoder never
# reads (BertBackbone's dense + tanh over [CLS]).
UNUSED_POOLER_LAYERS = ("pooled_dense",)


@keras.saving.register_keras_serializable(package=PACKAGE)
class SentenceEncoder(keras.Model):
    """A keras-hub text backbone pooled into `(N, F)` sentence features.

    Takes the dict a keras-hub preprocessor returns: `token_ids` (integers,
    `(N, L)`), `padding_mask` (`(N, L)`, true or 1 on real tokens) and,
    where the backbone takes them, `segment_ids` (zeros when absent: one
    segment). Other entries are ignored. `F` is the backbone's hidden size.

    The backbone runs with the `training` flag it is given, so its dropout
    is active in training and off in inference: two training-mode passes of
    the same batch give the two SimCSE views.

    A sentence whose padding mask is all false has no token to average: its
    mean-pooled features are NaN (0 / 0), so a loss on it is NaN (and
    `keras.callbacks.TerminateOnNaN` stops the run) rather than a silent
    finite number. keras-hub preprocessors always keep `[CLS]` and `[SEP]`.

    Token ids must lie in `[0, vocabulary_size)`. Concrete (eager) inputs
    are checked and an id outside raises a `ValueError`. Inside a compiled
    step (`fit`, `predict`, `jax.jit`, `tf.function`) the ids have no value
    to check, and the backends differ: TensorFlow raises its own
    `InvalidArgumentError`, PyTorch an `IndexError`, and JAX gives NaN
    features for an id beyond the vocabulary (so a NaN loss, which
    `keras.callbacks.TerminateOnNaN` stops) and silently clamps a negative
    one. keras-hub tokenizers and preprocessors only produce valid ids; ids
    made otherwise should be checked in the data pipeline.

    Args:
        backbone: a keras-hub text backbone, e.g.
            `keras_hub.models.BertBackbone` or `RobertaBackbone`: a Keras
            model taking a dict with `token_ids` and returning the last
            hidden states `(N, L, F)` (or a dict holding them under
            `"sequence_output"`, as BERT does).
        pooling: `"cls"` (the first token's last hidden state, before any
            pooler: SimCSE's `cls_before_pooler`) or `"mean"` (the average
            over the tokens the padding mask keeps). Defaults to `"cls"`.
            The backbone's own pooler (BERT's `pooled_dense`), which
            neither pooling reads, is set non-trainable.
        **kwargs: `keras.Model` arguments (`name`, ...).

    Example:

    ```python
    backbone, preprocessor = keras_fmicl.text.tiny_backbone(sentences)
    encoder = keras_fmicl.text.SentenceEncoder(backbone, pooling="mean")
    features = encoder(preprocessor(["a sentence", "another one"]))  # (2, 32)
    encoder.save("encoder.keras")
    ```
    """

    def __init__(self, backbone: keras.layers.Layer, pooling: str = "cls", **kwargs: Any):
        super().__init__(**kwargs)
        self._backbone_inputs = _check_backbone(backbone)
        self.pooling = check_choice("pooling", pooling, POOLINGS)
        self.backbone = backbone
        # Neither pooling reads the backbone's pooler (BERT's `pooled_dense`,
        # over [CLS]): frozen, it gets no gradient and no optimizer warning.
        for layer in getattr(backbone, "layers", ()):
            if layer.name in UNUSED_POOLER_LAYERS:
                layer.trainable = False

    @property
    def output_dim(self) -> int | None:
        """`F`, the backbone's hidden size (`None` where it does not say)."""
        return getattr(self.backbone, "hidden_dim", None)

    def build(self, input_shape: Any = None) -> None:
        # The backbone (a functional model) is built when constructed.
        self.built = True

    def _backbone_call_inputs(self, inputs: Any) -> dict:
        if not isinstance(inputs, Mapping) or TOKEN_IDS not in inputs:
            raise ValueError(
                "`inputs` must be a dict with `token_ids` and `padding_mask` "
                "(what a keras-hub preprocessor returns). Received: inputs of "
                f"type {type(inputs).__name__}"
                + (f" with keys {sorted(inputs)}" if isinstance(inputs, Mapping) else "")
            )
        token_ids = inputs[TOKEN_IDS]
        if not hasattr(token_ids, "dtype"):
            token_ids = ops.convert_to_tensor(token_ids)
        if len(token_ids.shape) != 2:
            raise ValueError(
                "`token_ids` must have shape (batch_size, sequence_length). "
                f"Received: token_ids.shape={tuple(token_ids.shape)}"
            )
        if not _is_integer_dtype(token_ids):
            raise ValueError(
                "`token_ids` must be integers (vocabulary indices); a cast to "
                "float would corrupt large ids. Received: token_ids with "
                f"dtype {keras.backend.standardize_dtype(token_ids.dtype)}"
            )
        self._check_token_range(token_ids)
        needs_mask = self.pooling == "mean" or PADDING_MASK in self._backbone_inputs
        if needs_mask and PADDING_MASK not in inputs:
            raise ValueError(
                "`inputs` must hold a `padding_mask` (true on real tokens) "
                f"for this backbone and pooling={self.pooling!r}. Received: "
                f"inputs with keys {sorted(inputs)}"
            )
        call_inputs = {}
        for name in self._backbone_inputs:
            if name == TOKEN_IDS:
                call_inputs[name] = token_ids
            elif name in inputs:
                call_inputs[name] = inputs[name]
            elif name == SEGMENT_IDS:
                call_inputs[name] = ops.zeros_like(token_ids)
            else:
                raise ValueError(
                    f"`inputs` must hold `{name}`, an input of "
                    f"{self.backbone.__class__.__name__}. Received: inputs "
                    f"with keys {sorted(inputs)}"
                )
        return call_inputs

    @property
    def vocabulary_size(self) -> int | None:
        """The backbone's vocabulary size (`None` where it does not say)."""
        size = getattr(self.backbone, "vocabulary_size", None)
        return int(size) if size is not None else None

    def _check_token_range(self, token_ids: Any) -> None:
        """Concrete ids outside `[0, vocabulary_size)` raise a `ValueError`.

        Only the two extremes leave the device. Traced ids (inside a
        compiled `fit`/`predict` step) have no value: see the class
        docstring.
        """
        if any(dim == 0 for dim in token_ids.shape):
            return  # no id (min and max of nothing are undefined)
        extremes = concrete_values(ops.stack([ops.min(token_ids), ops.max(token_ids)]))
        if extremes is None:
            return
        low, high = int(extremes[0]), int(extremes[1])
        size = self.vocabulary_size
        if low < 0 or (size is not None and high >= size):
            bound = f"[0, {size})" if size is not None else "[0, vocabulary_size)"
            raise ValueError(
                f"`token_ids` must be vocabulary indices in {bound} (the backbone's "
                "`vocabulary_size`): an id outside gives features of no token "
                "(NaN on JAX, an error or garbage elsewhere). Received: token_ids "
                f"from {low} to {high}"
            )

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        call_inputs = self._backbone_call_inputs(inputs)
        outputs = self.backbone(call_inputs, training=training)
        if isinstance(outputs, Mapping):
            if "sequence_output" not in outputs:
                raise ValueError(
                    "`backbone` must return the last hidden states (N, L, F), "
                    "or a dict holding them under 'sequence_output'. Received: "
                    f"outputs with keys {sorted(outputs)}"
                )
            outputs = outputs["sequence_output"]
        if len(outputs.shape) != 3:
            raise ValueError(
                "`backbone` must return hidden states of shape (N, L, F). "
                f"Received: shape {tuple(outputs.shape)}"
            )
        if self.pooling == "cls":
            return outputs[:, 0, :]
        mask = ops.cast(inputs[PADDING_MASK], outputs.dtype)
        total = ops.sum(outputs * ops.expand_dims(mask, -1), axis=1)
        count = ops.sum(mask, axis=1, keepdims=True)
        return total / count  # NaN for a sentence without tokens (documented)

    def compute_output_spec(self, inputs: Any, training: bool | None = None) -> Any:
        batch = inputs[TOKEN_IDS].shape[0] if isinstance(inputs, Mapping) else None
        return keras.KerasTensor((batch, self.output_dim), dtype=self.compute_dtype)

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.saving.serialize_keras_object(self.dtype_policy),
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "pooling": self.pooling,
        }

    @classmethod
    def from_config(cls, config: dict) -> "SentenceEncoder":
        config = dict(config)
        if isinstance(config.get("backbone"), dict):
            import_keras_hub()  # registers the keras-hub classes
            config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)
