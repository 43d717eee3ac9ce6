"""`Method`: the base of every contrastive method (which views, which embeddings, which pairs)."""

from __future__ import annotations

import weakref
from typing import Any
from typing import ClassVar

import keras
from keras import ops

from keras_fmicl.losses.contrastive_loss import ContrastiveLoss
from keras_fmicl.methods.views import VIEWS_KEY
from keras_fmicl.methods.views import as_float_images
from keras_fmicl.methods.views import flatten_views
from keras_fmicl.methods.views import holds_views
from keras_fmicl.methods.views import is_shape
from keras_fmicl.methods.views import map_shapes
from keras_fmicl.utils.registry import PACKAGE
from keras_fmicl.utils.registry import Registry


# ------------------------------------------------------------------ methods

@keras.saving.register_keras_serializable(package=PACKAGE)
class Method(keras.layers.Layer):
    """Base class of the training methods: the interface and SimCLR's behaviour.

    See the module docstring for the hooks `ContrastiveModel` calls. A
    subclass sets `mode` (a short name, reported as `model.mode`) and
    overrides the hooks that differ from SimCLR.

    Args:
        **kwargs: `keras.layers.Layer` arguments (`name`, ...).
    """

    mode: ClassVar[str] = "method"
    # Arguments added in 0.9, and the value that a config saved before them
    # stands for: the form the method trained with.
    LEGACY_DEFAULTS: ClassVar[dict] = {}

    def __init__(self, **kwargs):
        kwargs.setdefault("name", self.mode)
        super().__init__(**kwargs)
        self._owner = None

    def attach(self, model: Any) -> None:
        """Records `model` as the one model of this method; `ValueError` if
        another model holds it already.

        A method holds state of its model (a key network's copies of the
        model's weights, a queue), so one object cannot serve two models.
        Pass a new method to each model, e.g. `MoCoV2.from_config(
        method.get_config())`.
        """
        owner = None if self._owner is None else self._owner()
        if (owner is not None and owner is not model) or (owner is None and self.built):
            raise ValueError(
                f"A method object belongs to one model, and this {type(self).__name__} "
                f"already belongs to {getattr(owner, 'name', 'another model')!r}: pass a new "
                f"one to each model, e.g. {type(self).__name__}.from_config(method.get_config()). "
                f"Received: method={self.name!r}"
            )
        # a weak reference: the model is not one of the method's sublayers
        object.__setattr__(self, "_owner", weakref.ref(model))

    @classmethod
    def from_config(cls, config: dict) -> "Method":
        return cls(**{**cls.LEGACY_DEFAULTS, **config})

    # -------------------------------------------------------------- views

    def view_shape(self, model: Any, input_shape: Any) -> Any:
        """The shape (structure) of one batch of flat views, batch `None`.

        Args:
            model: the `ContrastiveModel`.
            input_shape: the shape (structure) of the model's inputs.

        Returns:
            What the encoder receives, e.g. `(None, H, W, C)`.
        """
        if isinstance(input_shape, dict) and VIEWS_KEY in input_shape:
            return map_shapes(lambda s: (None,) + s[2:], input_shape[VIEWS_KEY])
        if is_shape(input_shape) and holds_views(model, tuple(input_shape)):
            return (None,) + tuple(input_shape[2:])
        augmenter = self._augmenter(model, input_shape)
        specs = map_shapes(keras.KerasTensor, input_shape)
        if not augmenter.built:
            augmenter.build(input_shape)
        spec = augmenter.compute_output_spec(specs)
        return keras.tree.map_structure(lambda s: (None,) + tuple(s.shape[1:]), spec)

    def _augmenter(self, model: Any, input_shape: Any) -> keras.layers.Layer:
        if model.augmenter is None:
            shape = tuple(input_shape) if is_shape(input_shape) else input_shape
            raise ValueError(
                "Raw inputs need an `augmenter` to draw views from; or pass "
                "views already drawn: a tensor (N, V, H, W, C), or a dict "
                f"holding them under {VIEWS_KEY!r}. Received: inputs of "
                f"shape {shape} and augmenter=None"
            )
        return model.augmenter

    def draw_views(self, model: Any, inputs: Any, training: bool) -> Any:
        """Flat views `(N V, ...)`, sample-major, of a batch of inputs.

        Views already drawn (`(N, V, ...)`, or a dict `{"views": ...}`) are
        flattened; raw inputs get `num_views` independent draws of the
        model's augmenter (always in training mode: a view is random).

        Args:
            model: the `ContrastiveModel`.
            inputs: the batch `x` given to the model.
            training: whether this is a training step.
        """
        if isinstance(inputs, dict) and VIEWS_KEY in inputs:
            return flatten_views(model, inputs[VIEWS_KEY])
        if hasattr(inputs, "shape") and holds_views(model, tuple(inputs.shape)):
            return flatten_views(model, inputs)
        augmenter = self._augmenter(model, keras.tree.map_structure(lambda x: tuple(x.shape), inputs))
        inputs = keras.tree.map_structure(as_float_images, inputs)
        draws = [augmenter(inputs, training=True) for _ in range(model.num_views)]
        views = keras.tree.map_structure(lambda *leaves: ops.stack(leaves, axis=1), *draws)
        return flatten_views(model, views)

    # -------------------------------------------------------------- state

    def build(self, model: Any, embedding_shape: tuple) -> None:
        """Creates the method's state; the online layers are built.

        Args:
            model: the `ContrastiveModel`.
            embedding_shape: `(None, d)`, the shape of the online embeddings.
        """
        del model, embedding_shape

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "_build_shapes_dict":
            # Keras records the arguments of `build` (the model among them)
            # for `get_build_config`; a method is built by its model, not
            # from a config, and keeps no reference to the model (which
            # would become one of its sublayers).
            value = None
        super().__setattr__(name, value)

    def get_build_config(self) -> None:
        # built by `ContrastiveModel.build`, not from a config
        return None

    def build_from_config(self, config: Any) -> None:
        del config

    # ------------------------------------------------------------ forward

    def embed(self, model: Any, views: Any, training: bool) -> dict:
        """The model's outputs for flat views: `(N, V, ...)` tensors.

        Returns:
            `{"features": encoder output, "queries": the embeddings the
            loss contrasts}`, and `"keys"` for a method with a key network.
        """
        features, embeddings = model.online_forward(views, training=training)
        return {"features": model.group_views(features), "queries": model.group_views(embeddings)}

    def loss(self, model: Any, outputs: dict) -> tuple[Any, dict]:
        """Per-sample losses `(N,)` and the batch metrics.

        Args:
            model: the compiled `ContrastiveModel` (`model.loss`).
            outputs: what `embed` returned.

        Returns:
            `(per_sample, metrics)`: metrics maps `"alignment"`,
            `"uniformity"`, `"mi_estimate"` to a scalar or a
            `(scalar, weight)` pair (weight 0 leaves the step out).
        """
        return contrastive_loss(model).contrast(
            outputs["queries"], keys=outputs.get("keys"), return_metrics=True
        )

    def after_step(self, model: Any, outputs: dict) -> Any:
        """Runs after the loss of a training step; returns a term for the loss."""
        del model, outputs
        return 0.0

    def check_batch_size(self, model: Any, batch_size: int) -> None:
        """Raises a `ValueError` if batches of `batch_size` samples cannot train."""
        del model, batch_size

    def check_inputs(self, model: Any, inputs: Any) -> None:
        """Raises a `ValueError` if a batch of `inputs` cannot be used.

        Called with the (possibly symbolic) batch before the training or
        evaluation step branches on its size, so the error is not wrapped
        in the backend's conditional. Only shapes and structure are read.
        """
        del model, inputs

    def check_jit_compile(self, jit_compile: Any) -> None:
        """Raises a `ValueError` if the method cannot train with `compile(jit_compile=...)`."""
        del jit_compile

    def check_loss(self, loss: Any) -> Any:
        """The loss `compile` receives, checked; `ValueError` if unsuitable."""
        if isinstance(loss, dict) and "class_name" in loss:
            loss = keras.losses.deserialize(loss)
        if not isinstance(loss, ContrastiveLoss):
            raise ValueError(
                "`loss` must be a contrastive loss of keras_fmicl: "
                "keras_fmicl.FMICLLoss(...) or keras_fmicl.InfoNCELoss(...). "
                f"Received: loss={loss!r}"
            )
        return loss


def contrastive_loss(model: Any) -> ContrastiveLoss:
    loss = getattr(model, "loss", None)
    if not isinstance(loss, ContrastiveLoss):
        raise ValueError(
            "Compile the model with a contrastive loss first: "
            "model.compile(optimizer=..., loss=keras_fmicl.FMICLLoss(...))."
        )
    return loss


METHODS = Registry("method", Method, key="mode")
"""The built-in methods by mode (`"simclr"`, `"moco"`, `"mocov3"`, `"simcse"`,
`"supervised_simcse"`), each registered by its class's file."""
