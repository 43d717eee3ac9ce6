"""`ContrastiveModel`: any encoder trained contrastively through `fit`.

Three modes, chosen by the arguments:

| mode    | arguments                                   | negatives                         |
|---------|---------------------------------------------|-----------------------------------|
| SimCLR  | `momentum=None`                             | the other samples of the batch    |
| MoCo v2 | `momentum=m`, `queue_size=K`                | a FIFO queue of the K latest keys |
| MoCo v3 | `momentum=m`, `predictor=...`, no queue     | keys of the other samples         |

In the momentum modes a key network, an exponential moving average (EMA) of
the online encoder and projector, `theta_k <- m theta_k + (1 - m) theta_q`
(updated every step before the keys are computed), embeds every view
without gradient; the queries (the online projections, through the
predictor if any) are contrasted with the keys of the other views. The key
network is held as non-trainable copies of the online variables and run
through `stateless_call` of the online layers, so any encoder works and its
batch normalisation uses batch statistics in training, as MoCo's does.

Inputs to `fit`, `evaluate` and `__call__` are either raw images
`(N, H, W, C)`, from which the model draws `num_views` independent views
with its augmenter, or views already drawn by a data pipeline: a tensor
`(N, V, H, W, C)` or a dict `{"views": (N, V, H, W, C)}` (what
`keras_fmicl.data.multiview_dataset` yields). Images are fed as given (no
rescaling). With labels and `num_classes` the model also trains an online
linear probe on the stop-gradient encoder features.

Reference:
    Chen, Kornblith, Norouzi, Hinton. "A Simple Framework for Contrastive
    Learning of Visual Representations", ICML 2020 (SimCLR).
    He, Fan, Wu, Xie, Girshick. "Momentum Contrast for Unsupervised Visual
    Representation Learning", CVPR 2020; Chen, Fan, Girshick, He, "Improved
    Baselines with Momentum Contrastive Learning", 2020 (MoCo v2).
    Chen, Xie, He. "An Empirical Study of Training Self-Supervised Vision
    Transformers", ICCV 2021 (MoCo v3).
    Lu, Zhang, Sun, Guo, Yu. "f-MICL", TMLR 2023.
"""

from __future__ import annotations

import copy
import math
import numbers
import warnings
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_fmicl import distributed
from keras_fmicl.losses import ContrastiveLoss
from keras_fmicl.validation import check_integer

_PACKAGE = "keras_fmicl"
VIEWS_KEY = "views"


def _check_momentum(momentum: Any) -> Any:
    if momentum is None:
        return None
    if callable(momentum):
        # A schedule is checked at step 0 here; inside the training step an
        # out-of-range value becomes NaN (see `current_momentum`).
        value = float(ops.convert_to_numpy(momentum(ops.convert_to_tensor(0, dtype="int32"))))
        if not 0 <= value <= 1:
            raise ValueError(
                "A `momentum` schedule must return a number in [0, 1] at every "
                f"step. Received: momentum={momentum!r}, whose value at step 0 "
                f"is {value!r}"
            )
        return momentum
    if (
        isinstance(momentum, bool)
        or not isinstance(momentum, numbers.Real)
        or not 0 <= momentum < 1
    ):
        raise ValueError(
            "`momentum` must be None (SimCLR), a number in [0, 1) (the EMA "
            "momentum of the key encoder, e.g. 0.99) or a schedule such as "
            f"keras_fmicl.CosineMomentum. Received: momentum={momentum!r}"
        )
    return float(momentum)


def _all_finite(tensors: list) -> Any:
    """Scalar bool: whether every float tensor of the list is finite."""
    tensors = [ops.convert_to_tensor(t) for t in tensors if t is not None]
    checks = [
        ops.all(ops.isfinite(ops.stop_gradient(t)))
        for t in tensors
        if keras.backend.is_float_dtype(keras.backend.standardize_dtype(t.dtype))
    ]
    if not checks:
        return ops.convert_to_tensor(True)
    return ops.all(ops.stack(checks))


def _nan_unless(condition: Any) -> Any:
    """`0.0` where `condition` holds, else NaN (added to a loss to poison it)."""
    return ops.where(condition, 0.0, float("nan"))


def _array_leaves(data: Any) -> list | None:
    """The arrays of in-memory data (arrays, tensors, lists/dicts of them);
    `None` for a dataset, a `PyDataset` or a generator."""
    if data is None:
        return None
    leaves = keras.tree.flatten(data)
    if not leaves or not all(hasattr(leaf, "shape") and hasattr(leaf, "__array__") for leaf in leaves):
        return None
    return leaves


class _WithoutAutocast(keras.layers.Layer):
    """Runs `fn(x)` with mixed precision's autocast switched off.

    Inside the model's call, reading a float32 variable under a mixed policy
    returns its value cast to the compute dtype; on PyTorch, assigning such a
    variable then writes into that temporary copy and is lost. The EMA of the
    key network runs through this layer (`autocast=False`), so it reads the
    float32 master weights and its assignments land.
    """

    def __init__(self, fn, **kwargs):
        super().__init__(autocast=False, dtype="float32", **kwargs)
        self._fn = fn

    def call(self, x):
        return self._fn(x)


def _check_layer(name: str, value: Any, required: bool = False) -> Any:
    if value is None and not required:
        return None
    if not isinstance(value, keras.layers.Layer):
        raise ValueError(
            f"`{name}` must be a Keras layer or model"
            + ("" if required else " (or None)")
            + f". Received: {name}={value!r}"
        )
    return value


class _CopyOf(keras.initializers.Initializer):
    """Initializer returning a copy of a variable's current value."""

    def __init__(self, variable: keras.Variable):
        self.variable = variable

    def __call__(self, shape, dtype=None):
        # a copy, not the same buffer (JAX donates each state buffer)
        return ops.copy(ops.cast(self.variable.value, dtype or self.variable.dtype))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ContrastiveModel(keras.Model):
    """A contrastive learner around any encoder, trained with `fit`.

    Compile it with a contrastive loss of this package (`FMICLLoss` or
    `InfoNCELoss`) and fit it on unlabeled data:

    ```python
    model = keras_fmicl.ContrastiveModel(
        encoder=keras_fmicl.small_cnn((28, 28, 1)),
        projector=keras_fmicl.ProjectionHead(256, 64),
        augmenter=keras_fmicl.SimCLRAugmentation(28, value_range=(0, 1)),
    )
    model.compile(optimizer="adam", loss=keras_fmicl.FMICLLoss("js"))
    model.fit(images, epochs=100)           # images in [0, 1], no labels
    features = model.predict(images)        # encoder features
    ```

    Training safeguards, the same on every backend:

    * NaN: a NaN or infinite input, weight, key-network copy or queue entry
      makes the reported loss NaN (never a finite number while the weights
      turn NaN), so `keras.callbacks.TerminateOnNaN` stops the training.
    * A batch of a single sample (the remainder of `2k + 1` samples in
      batches of `k`) has no negatives: it is skipped with a warning,
      without any update of the weights, metrics or optimizer.
    * `queue_size` must hold the keys of a batch (`batch_size * num_views`):
      checked before training for in-memory data and for batches of static
      size; a batch of a size unknown when the step is traced (a `tf.data`
      pipeline batched with `drop_remainder=False`, under TensorFlow) that
      is too large makes the loss NaN.
    * Exact resume with `keras.callbacks.BackupAndRestore`: the model's
      variables, the queue and the random states of its augmenter are
      checkpointed, but not the order in which `fit` shuffles in-memory
      arrays (Keras draws it from a global random generator); with
      `shuffle=True` on arrays the resumed run sees other batches, and `fit`
      warns. For an exact resume pass the raw images as arrays with
      `shuffle=False` (the views are drawn by the model's augmenter, whose
      state is checkpointed). A `tf.data` pipeline is not checkpointed
      either: a fresh `keras_fmicl.data.multiview_dataset(..., seed=...)`
      starts again from the shuffle order and views of its first epoch.

    The loss itself is the contract of `docs/fmicl-math.md` (section 4, with
    the momentum-encoder variants); a MoCo v2 step contrasts its queries
    with the queue of the previous steps and enqueues its keys afterwards.

    `fit` reports the loss, `alignment` and `uniformity` of the batch
    embeddings (Wang & Isola 2020), `mi_estimate` (the lower bound on the
    mutual information the loss maximises, in nats), and with labels
    `probe_loss` and `probe_accuracy` of the online linear probe (its loss
    is part of `loss`; its gradient never reaches the encoder).

    Args:
        encoder: a Keras layer or model mapping images `(N, H, W, C)` to
            features `(N, F)`.
        projector: head mapping features to the embeddings the loss sees,
            e.g. `keras_fmicl.ProjectionHead`; `None` uses the features.
        predictor: MoCo v3 prediction head applied to the online
            projection (`keras_fmicl.PredictionHead`); requires `momentum`.
        augmenter: layer drawing one random view of a batch of raw images
            when called with `training=True`, e.g.
            `keras_fmicl.SimCLRAugmentation`. Not needed when the data
            already holds the views.
        num_views: number of views per sample, `>= 2`. Defaults to 2.
        momentum: `None` for SimCLR; else the EMA momentum of the key
            network, a number in `[0, 1)` or a schedule of the training
            step such as `keras_fmicl.CosineMomentum(0.99, total_steps)`.
            A schedule must return a value in `[0, 1]` (1 freezes the key
            network): it is checked at step 0 when the model is created
            (ValueError), and a later value outside makes the loss NaN.
        queue_size: `K >= 0`; with `momentum`, `K > 0` selects MoCo v2: the
            negatives are a FIFO queue of the K most recent keys. 0 (the
            default) uses the keys of the batch (MoCo v3).
        num_classes: number of classes of the online linear probe trained
            on `fit(x, y)`; `None` (default) for no probe. The labels must
            be integers in `[0, num_classes)`: in-memory labels are checked
            by `fit`, `evaluate`, `train_on_batch` and `test_on_batch`
            (ValueError); invalid labels from a dataset make the loss NaN.
        **kwargs: `keras.Model` arguments (`name`, `dtype`, ...).
    """

    def __init__(
        self,
        encoder: keras.layers.Layer,
        projector: keras.layers.Layer | None = None,
        predictor: keras.layers.Layer | None = None,
        augmenter: keras.layers.Layer | None = None,
        num_views: int = 2,
        momentum: Any = None,
        queue_size: int = 0,
        num_classes: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.encoder = _check_layer("encoder", encoder, required=True)
        self.projector = _check_layer("projector", projector)
        self.predictor = _check_layer("predictor", predictor)
        self.augmenter = _check_layer("augmenter", augmenter)
        self.num_views = check_integer("num_views", num_views, 2)
        self.momentum = _check_momentum(momentum)
        self.queue_size = check_integer("queue_size", queue_size, 0)
        self.num_classes = None if num_classes is None else check_integer("num_classes", num_classes, 2)
        if self.predictor is not None and self.momentum is None:
            raise ValueError(
                "A `predictor` is the MoCo v3 prediction head and needs a "
                "momentum (key) encoder to predict: pass e.g. momentum=0.99, or "
                "drop the predictor for SimCLR. Received: predictor="
                f"{self.predictor.name!r} with momentum=None"
            )
        if self.queue_size > 0 and self.momentum is None:
            raise ValueError(
                "A queue holds the keys of a momentum encoder (MoCo v2): pass "
                "e.g. momentum=0.99 with the queue, or queue_size=0 for "
                f"SimCLR. Received: queue_size={self.queue_size} with momentum=None"
            )
        self.probe = (
            keras.layers.Dense(self.num_classes, name="probe")
            if self.num_classes is not None
            else None
        )
        self.alignment_tracker = keras.metrics.Mean(name="alignment")
        self.uniformity_tracker = keras.metrics.Mean(name="uniformity")
        self.mi_estimate_tracker = keras.metrics.Mean(name="mi_estimate")
        if self.num_classes is not None:
            self.probe_loss_tracker = keras.metrics.Mean(name="probe_loss")
            self.probe_accuracy = keras.metrics.SparseCategoricalAccuracy(name="probe_accuracy")
        self._warned = set()
        # set by `fit` when it has checked the batch size of in-memory data
        self._batch_size_checked = False

    # ------------------------------------------------------------------ build

    @property
    def mode(self) -> str:
        """`"simclr"`, `"moco"` (v2, with a queue) or `"mocov3"`."""
        if self.momentum is None:
            return "simclr"
        return "moco" if self.queue_size > 0 else "mocov3"

    def _encoder_input_rank(self) -> int | None:
        inputs = getattr(self.encoder, "inputs", None)
        if inputs:
            return len(inputs[0].shape)
        return None

    def _inputs_are_views(self, shape: tuple) -> bool:
        """Whether a (non-dict) input of this shape holds views `(N, V, ...)`."""
        rank = self._encoder_input_rank()
        if rank is not None:
            return len(shape) == rank + 1
        return self.augmenter is None

    def _view_shape(self, input_shape: Any) -> tuple:
        """Shape `(batch, ...)` of one view, as the encoder receives it."""
        if isinstance(input_shape, dict):
            if VIEWS_KEY not in input_shape:
                raise ValueError(
                    f"Dict inputs must hold the views under {VIEWS_KEY!r}. "
                    f"Received keys: {sorted(input_shape)}"
                )
            shape = tuple(input_shape[VIEWS_KEY])
            return (None,) + shape[2:]
        shape = tuple(input_shape)
        if self._inputs_are_views(shape):
            return (None,) + shape[2:]
        if self.augmenter is None:
            raise ValueError(
                "Raw images need an `augmenter` to draw views from; or pass "
                "views already drawn, shape (N, V, H, W, C) or "
                f"{{{VIEWS_KEY!r}: views}}. Received: inputs of shape {shape} "
                "and augmenter=None"
            )
        if not self.augmenter.built:
            self.augmenter.build(shape)
        spec = self.augmenter.compute_output_spec(keras.KerasTensor(shape))
        return (None,) + tuple(spec.shape[1:])

    def build(self, input_shape):
        view_shape = self._view_shape(input_shape)
        if not self.encoder.built:
            self.encoder.build(view_shape)
        feature_shape = tuple(self.encoder.compute_output_spec(keras.KerasTensor(view_shape)).shape)
        if len(feature_shape) != 2:
            raise ValueError(
                "`encoder` must map a batch of images to rank-2 features "
                "(N, F), e.g. end with global pooling or Flatten. Received: "
                f"encoder output shape {feature_shape} for input shape {view_shape}"
            )
        embedding_shape = feature_shape
        if self.projector is not None:
            if not self.projector.built:
                self.projector.build(feature_shape)
            embedding_shape = tuple(self.projector.compute_output_spec(keras.KerasTensor(feature_shape)).shape)
        if self.predictor is not None and not self.predictor.built:
            self.predictor.build(embedding_shape)
        if self.probe is not None:
            self.probe.build(feature_shape)
        self.training_steps = self.add_weight(
            shape=(), dtype="int32", initializer="zeros", trainable=False, name="training_steps"
        )
        if self.momentum is not None:
            self._build_key_network()
        if self.queue_size > 0:
            dim = embedding_shape[-1]
            self.queue = self.add_weight(
                shape=(self.queue_size, dim),
                dtype="float32",
                initializer="zeros",
                trainable=False,
                name="queue",
            )
            self.queue_pointer = self.add_weight(
                shape=(), dtype="int32", initializer="zeros", trainable=False, name="queue_pointer"
            )
            self.queue_count = self.add_weight(
                shape=(), dtype="int32", initializer="zeros", trainable=False, name="queue_count"
            )
        self.built = True
        # torch.distributed: every process starts from rank 0's weights
        distributed.broadcast_variables(self.variables)

    def _online_layers(self) -> list:
        return [layer for layer in (self.encoder, self.projector) if layer is not None]

    def _build_key_network(self):
        """Non-trainable copies of the online encoder's and projector's state."""
        self.key_variables = []
        # id of an online variable -> index of its key copy: the copies stay
        # matched if a layer is frozen or unfrozen after build.
        self._key_index = {}
        for layer in self._online_layers():
            for kind, variables in (
                ("trainable", layer.trainable_variables),
                ("non_trainable", layer.non_trainable_variables),
            ):
                for index, variable in enumerate(variables):
                    # The copy starts as the online variable through its
                    # initializer: an `assign` here would be dropped when
                    # `fit` builds the model inside a stateless (symbolic)
                    # scope, leaving the key network at zero. autocast=False:
                    # the EMA is kept and assigned in the variable dtype
                    # under a mixed precision policy.
                    copy = self.add_weight(
                        shape=variable.shape,
                        dtype=variable.dtype,
                        initializer=_CopyOf(variable),
                        trainable=False,
                        autocast=False,
                        name=f"key_{layer.name}_{kind}_{index}",
                    )
                    self._key_index[id(variable)] = len(self.key_variables)
                    self.key_variables.append(copy)
        updater = _WithoutAutocast(self._ema_update, name="key_network_update")
        # a plain function attribute: the helper layer stays out of the
        # model's tracked layers (and of its saved state)
        self._run_ema_update = lambda momentum: updater(momentum)

    def _key_state(self, layer_index: int) -> tuple[list, list]:
        """The key copies of an online layer's (trainable, non-trainable) variables."""
        layer = self._online_layers()[layer_index]
        copies = self.key_variables
        trainable = [copies[self._key_index[id(v)]] for v in layer.trainable_variables]
        other = [copies[self._key_index[id(v)]] for v in layer.non_trainable_variables]
        return trainable, other

    # ------------------------------------------------------------------- call

    def current_momentum(self) -> Any:
        """The EMA momentum of this step (a schedule is read at `training_steps`).

        A schedule's value outside `[0, 1]` becomes NaN, so the key network
        and the loss turn NaN instead of training on it (no clipping).
        """
        if callable(self.momentum):
            momentum = ops.cast(self.momentum(self.training_steps.value), "float32")
            return ops.where((momentum >= 0.0) & (momentum <= 1.0), momentum, float("nan"))
        return self.momentum

    def _update_key_network(self):
        self._run_ema_update(ops.convert_to_tensor(self.current_momentum(), dtype="float32"))

    def _ema_update(self, momentum: Any) -> Any:
        """`theta_k <- m theta_k + (1 - m) theta_q` (run without autocast)."""
        for index, layer in enumerate(self._online_layers()):
            keys, _ = self._key_state(index)
            for key, online in zip(keys, layer.trainable_variables):
                online_value = ops.stop_gradient(ops.cast(online.value, key.dtype))
                momentum_value = ops.cast(momentum, key.dtype)
                key.assign(momentum_value * key.value + (1.0 - momentum_value) * online_value)
        return momentum

    def _key_forward(self, images: Any, training: bool) -> Any:
        x = images
        for index, layer in enumerate(self._online_layers()):
            trainable, other = self._key_state(index)
            x, new_other = layer.stateless_call(
                [v.value for v in trainable],
                [v.value for v in other],
                x,
                training=training,
            )
            if training:
                for variable, value in zip(other, new_other):
                    variable.assign(value)
        return ops.stop_gradient(x)

    def _draw_views(self, inputs: Any) -> Any:
        """`(N, V, ...)` views from raw images, views, or a dict of views."""
        if isinstance(inputs, dict):
            return inputs[VIEWS_KEY]
        if self._inputs_are_views(tuple(inputs.shape)):
            return inputs
        if keras.backend.standardize_dtype(inputs.dtype) not in ("float16", "bfloat16", "float32", "float64"):
            inputs = ops.cast(inputs, "float32")
        views = [self.augmenter(inputs, training=True) for _ in range(self.num_views)]
        return ops.stack(views, axis=1)

    def _per_sample(self, x: Any) -> Any:
        """`(N V, d)` rows, sample-major, to `(N, V, d)` (keeping d static)."""
        dim = x.shape[-1]
        return ops.reshape(x, (-1, self.num_views, -1 if dim is None else dim))

    def call(self, inputs, training=False):
        """Embeds `num_views` views of each sample.

        Returns:
            A dict of `(N, V, ...)` tensors: `"features"` (encoder output),
            `"queries"` (the embeddings contrasted: projector, then
            predictor), and with a momentum encoder `"keys"`.
        """
        views = self._draw_views(inputs)
        num_views = views.shape[1]
        if num_views != self.num_views:
            raise ValueError(
                f"The inputs hold {num_views} views per sample but the model "
                f"has num_views={self.num_views}. Received: views of shape "
                f"{tuple(views.shape)}"
            )
        images = ops.reshape(views, (-1,) + tuple(views.shape[2:]))
        if keras.backend.standardize_dtype(images.dtype) not in ("float16", "bfloat16", "float32", "float64"):
            images = ops.cast(images, "float32")
        features = self.encoder(images, training=training)
        if len(features.shape) != 2:
            raise ValueError(
                "`encoder` must output rank-2 features (N, F). Received: "
                f"encoder output shape {tuple(features.shape)}"
            )
        embeddings = features if self.projector is None else self.projector(features, training=training)
        queries = embeddings if self.predictor is None else self.predictor(embeddings, training=training)
        outputs = {
            "features": self._per_sample(features),
            "queries": self._per_sample(queries),
        }
        if self.momentum is not None:
            if training:
                self._update_key_network()
            keys = self._key_forward(images, training=bool(training))
            outputs["keys"] = self._per_sample(keys)
        if training:
            self.training_steps.assign(self.training_steps.value + 1)
        return outputs

    # ------------------------------------------------------------------- loss

    def compile(self, optimizer="adam", loss=None, **kwargs):
        """Configures training; `loss` is a `FMICLLoss` or `InfoNCELoss`.

        Other arguments are those of `keras.Model.compile` (`optimizer`,
        `jit_compile`, `steps_per_execution`, ...); `metrics` and
        `loss_weights` are not taken: the model reports its own metrics.
        """
        if isinstance(loss, dict) and "class_name" in loss:
            loss = keras.losses.deserialize(loss)
        if not isinstance(loss, ContrastiveLoss):
            raise ValueError(
                "`loss` must be a contrastive loss of keras_fmicl: "
                "keras_fmicl.FMICLLoss(...) or keras_fmicl.InfoNCELoss(...). "
                f"Received: loss={loss!r}"
            )
        for argument in ("loss_weights", "metrics", "weighted_metrics"):
            if kwargs.get(argument) is not None:
                raise ValueError(
                    f"ContrastiveModel reports its own metrics (alignment, "
                    f"uniformity, mi_estimate, probe_accuracy) and takes no "
                    f"`{argument}`. Received: {argument}={kwargs[argument]!r}"
                )
            kwargs.pop(argument, None)
        if distributed.is_multi_worker_strategy(getattr(self, "_distribute_strategy", None)):
            distributed.patch_keras_multi_worker_fit()
        super().compile(optimizer=optimizer, loss=None, **kwargs)
        self.loss = loss
        # torch.distributed: average the gradients of the processes
        distributed.synchronize_optimizer(self.optimizer)
        # Saved with the model, so that `load_model` compiles it again.
        self._compile_config.config["loss"] = loss

    def compile_from_config(self, config):
        """Compiles again from `get_compile_config()` (used by `load_model`)."""
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.optimizer is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    def _warn_once(self, key: str, message: str):
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=3)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if not isinstance(self.loss, ContrastiveLoss):
            raise ValueError(
                "Compile the model with a contrastive loss first: "
                "model.compile(optimizer=..., loss=keras_fmicl.FMICLLoss(...))."
            )
        queries = y_pred["queries"]
        keys = y_pred.get("keys")
        queue_kwargs = {}
        if self.queue_size > 0:
            queue_kwargs = {
                "queue": self.queue.value,
                "queue_mask": ops.arange(self.queue_size, dtype="int32") < self.queue_count.value,
                "in_batch_negatives": False,
            }
        per_sample, metrics = self.loss.contrast(
            queries, keys=keys, return_metrics=True, **queue_kwargs
        )
        total = self._weighted_mean(per_sample, sample_weight)
        self.alignment_tracker.update_state(metrics["alignment"])
        # Until the MoCo queue holds keys there are no negatives: no
        # uniformity to measure, and the bound has no negative term.
        has_negatives = 1.0
        if self.queue_size > 0:
            has_negatives = ops.cast(self.queue_count.value > 0, "float32")
        self.uniformity_tracker.update_state(metrics["uniformity"], sample_weight=has_negatives)
        self.mi_estimate_tracker.update_state(metrics["mi_estimate"], sample_weight=has_negatives)
        total = total + self._probe_loss(y, y_pred["features"], sample_weight)
        if training and self.queue_size > 0:
            total = total + self._enqueue(keys)
        for loss in self.losses:
            total = total + ops.cast(ops.sum(loss), total.dtype)
        # NaN never vanishes from the loss: max pooling (eagerly, and more
        # so fused under XLA) may turn NaN activations into finite ones (the
        # loss then stays finite while the gradients, and the weights, are
        # NaN). A NaN or
        # infinite input, weight, key-network copy or queue entry (the EMA
        # of a NaN update, or of an out-of-range momentum) makes the loss
        # NaN, so `keras.callbacks.TerminateOnNaN` stops the training.
        state = [v.value for v in self.weights]
        total = total + ops.cast(_nan_unless(_all_finite(keras.tree.flatten(x) + state)), total.dtype)
        # under tf.distribute the replicas' gradients are summed
        return distributed.scale_loss(total)

    @staticmethod
    def _weighted_mean(per_sample: Any, sample_weight: Any) -> Any:
        if sample_weight is None:
            return ops.mean(per_sample)
        weights = ops.cast(ops.reshape(sample_weight, (-1,)), per_sample.dtype)
        return ops.sum(per_sample * weights) / ops.cast(ops.shape(per_sample)[0], per_sample.dtype)

    def _probe_loss(self, labels: Any, features: Any, sample_weight: Any) -> Any:
        if self.probe is None:
            if labels is not None:
                self._warn_once(
                    "labels_without_probe",
                    "ContrastiveModel received labels but has no probe: the "
                    "labels are ignored. Pass num_classes=... to train an online "
                    "linear probe on them, or call fit(x) without labels.",
                )
            return 0.0
        if labels is None:
            self._warn_once(
                "probe_without_labels",
                f"ContrastiveModel has a probe (num_classes={self.num_classes}) "
                "but the data holds no labels: the probe is not trained and "
                "probe metrics stay 0. Pass fit(x, y) or yield (x, y) batches "
                "to train it, or set num_classes=None.",
            )
            return 0.0
        labels = ops.reshape(labels, (-1,))
        # Invalid labels (outside [0, num_classes), NaN, fractional) cannot be
        # checked in a traced step: they make the loss NaN. Concrete labels
        # are checked by `fit`, `evaluate`, `train_on_batch` and
        # `test_on_batch` with a ValueError. The cross-entropy sees class 0
        # in their place (an out-of-range class crashes it on some backends).
        valid = (labels >= 0) & (labels < self.num_classes)
        if keras.backend.is_float_dtype(keras.backend.standardize_dtype(labels.dtype)):
            valid = valid & (labels == ops.floor(labels))
        labels = ops.where(valid, labels, ops.zeros_like(labels))
        labels = ops.cast(labels, "int32")
        flat = ops.reshape(ops.stop_gradient(features), (-1, features.shape[-1]))
        view_labels = ops.repeat(labels, self.num_views, axis=0)
        logits = ops.cast(self.probe(flat), "float32")
        per_view = keras.losses.sparse_categorical_crossentropy(view_labels, logits, from_logits=True)
        per_sample = ops.mean(ops.reshape(per_view, (-1, self.num_views)), axis=1)
        probe_loss = self._weighted_mean(per_sample, sample_weight) + _nan_unless(ops.all(valid))
        self.probe_loss_tracker.update_state(probe_loss)
        self.probe_accuracy.update_state(view_labels, logits)
        return probe_loss

    def _enqueue(self, keys: Any) -> Any:
        """Writes the keys of this batch (sample-major) over the oldest entries.

        Under data parallelism with global negatives the queue receives the
        keys of the global batch, identically on every replica. The keys are
        written after the loss of the step is computed: a step contrasts its
        queries with the queue of the previous steps.

        Returns:
            A term for the loss: `0.0`, or NaN when a batch of unknown size
            (at tracing) turns out to hold more keys than the queue.
        """
        flat = ops.reshape(ops.stop_gradient(keys), (-1, self.queue.shape[-1]))
        if self.loss.global_negatives:
            flat = distributed.all_gather(flat)
        count = flat.shape[0]
        if count is not None and count > self.queue_size:
            raise ValueError(
                f"`queue_size` ({self.queue_size}) must be at least the number of "
                f"keys of a batch (batch size x num_views = {count}). Received: "
                f"queue_size={self.queue_size}"
            )
        overflow = 0.0
        if count is None:
            if not self._batch_size_checked:
                self._warn_once(
                    "unknown_batch_size",
                    "The batch size is unknown when the training step is traced "
                    "(e.g. a tf.data pipeline batched with drop_remainder=False, "
                    "or a PyDataset or generator under TensorFlow), "
                    f"so `queue_size` ({self.queue_size}) cannot be checked "
                    "against the keys of a batch before training: a batch of "
                    "more than queue_size // num_views = "
                    f"{self.queue_size // self.num_views} samples makes the loss "
                    "NaN. Batch with drop_remainder=True to have it checked "
                    "before training.",
                )
            count = ops.shape(flat)[0]
            overflow = _nan_unless(count <= self.queue_size)
        pointer = self.queue_pointer.value
        positions = (pointer + ops.arange(count, dtype="int32")) % self.queue_size
        self.queue.assign(
            ops.scatter_update(self.queue.value, positions[:, None], ops.cast(flat, self.queue.dtype))
        )
        self.queue_pointer.assign((pointer + count) % self.queue_size)
        self.queue_count.assign(ops.minimum(self.queue_count.value + count, self.queue_size))
        return overflow

    # -------------------------------------------------------------------- fit

    def _check_probe_labels(self, y: Any, argument: str = "y"):
        """ValueError for concrete probe labels outside [0, num_classes)."""
        if self.probe is None or _array_leaves(y) is None:
            return
        try:
            labels = np.asarray(y).reshape(-1)
        except (TypeError, ValueError, RuntimeError):
            return  # e.g. a tensor on an accelerator: checked in the step
        if labels.dtype.kind not in "biuf":
            raise ValueError(
                f"`{argument}` must hold integer class labels in [0, num_classes="
                f"{self.num_classes}) for the online probe. Received: "
                f"{argument} of dtype {labels.dtype}"
            )
        with np.errstate(invalid="ignore"):
            bad = ~((labels >= 0) & (labels < self.num_classes) & (labels == np.floor(labels)))
        if bad.any():
            index = int(np.argmax(bad))
            raise ValueError(
                f"`{argument}` must hold integer class labels in [0, num_classes="
                f"{self.num_classes}) for the online probe. Received: "
                f"{argument}[{index}]={labels[index].item()!r}"
                + (f" ({int(bad.sum())} invalid labels in all)" if bad.sum() > 1 else "")
            )

    def _warn_single_sample_batch(self):
        self._warn_once(
            "single_sample_batch",
            "A batch of a single sample cannot be contrasted (the sample has no "
            "negatives) and is skipped: no update of the weights, the metrics "
            "or the optimizer. This happens when the number of samples is 1 "
            "more than a multiple of batch_size: pick another batch_size, or "
            "drop the remainder of the data.",
        )

    def _check_fit_data(self, x: Any, y: Any, batch_size: Any, validation_split: float,
                        shuffle: Any, callbacks: Any, steps_per_epoch: Any):
        self._check_probe_labels(y)
        leaves = _array_leaves(x)
        if leaves is None:
            return
        if shuffle and any(isinstance(c, keras.callbacks.BackupAndRestore) for c in callbacks or []):
            self._warn_once(
                "backup_and_shuffle",
                "`BackupAndRestore` does not make a resumed fit identical with "
                "shuffle=True on in-memory arrays: Keras draws the order of "
                "the samples from a global random generator that is not "
                "checkpointed. For an exact resume pass the raw images with "
                "shuffle=False: the views drawn by the model's augmenter are "
                "checkpointed (see the ContrastiveModel docstring).",
            )
        num_samples = leaves[0].shape[0]
        if num_samples is None:
            return
        if validation_split:
            num_samples = int(math.floor(num_samples * (1.0 - validation_split)))
        batch_size = batch_size or 32  # Keras' default for arrays
        keys = min(batch_size, num_samples) * self.num_views
        if self.queue_size > 0 and keys > self.queue_size:
            raise ValueError(
                f"`queue_size` ({self.queue_size}) must be at least the number of "
                f"keys of a batch (batch size x num_views = {keys}). Received: "
                f"queue_size={self.queue_size}"
            )
        # the batches hold at most `batch_size` samples: checked above
        self._batch_size_checked = True
        if steps_per_epoch is None and num_samples % batch_size == 1:
            self._warn_single_sample_batch()

    def fit(
        self,
        x=None,
        y=None,
        batch_size=None,
        epochs=1,
        verbose="auto",
        callbacks=None,
        validation_split=0.0,
        validation_data=None,
        shuffle=True,
        class_weight=None,
        sample_weight=None,
        initial_epoch=0,
        steps_per_epoch=None,
        validation_steps=None,
        validation_batch_size=None,
        validation_freq=1,
    ):
        """`keras.Model.fit`, with checks of the data before training.

        Concrete probe labels outside `[0, num_classes)` raise a ValueError
        (in a `tf.data` pipeline they make the loss NaN); a batch of a single
        sample is skipped with a warning; `BackupAndRestore` with
        `shuffle=True` on arrays warns that the resumed run differs.
        """
        self._batch_size_checked = False
        self._check_fit_data(x, y, batch_size, validation_split, shuffle, callbacks, steps_per_epoch)
        if isinstance(validation_data, (list, tuple)) and len(validation_data) >= 2:
            self._check_probe_labels(validation_data[1], "validation_data")
        try:
            return super().fit(
                x=x,
                y=y,
                batch_size=batch_size,
                epochs=epochs,
                verbose=verbose,
                callbacks=callbacks,
                validation_split=validation_split,
                validation_data=validation_data,
                shuffle=shuffle,
                class_weight=class_weight,
                sample_weight=sample_weight,
                initial_epoch=initial_epoch,
                steps_per_epoch=steps_per_epoch,
                validation_steps=validation_steps,
                validation_batch_size=validation_batch_size,
                validation_freq=validation_freq,
            )
        finally:
            self._batch_size_checked = False

    def evaluate(self, x=None, y=None, batch_size=None, *args, **kwargs):
        """`keras.Model.evaluate`, checking concrete probe labels first.

        As in `fit`, a batch of a single sample is skipped with a warning.
        """
        self._check_probe_labels(y)
        leaves = _array_leaves(x)
        if leaves is not None and leaves[0].shape[0] is not None:
            if kwargs.get("steps") is None and leaves[0].shape[0] % (batch_size or 32) == 1:
                self._warn_single_sample_batch()
        return super().evaluate(x, y, batch_size, *args, **kwargs)

    def train_on_batch(self, x, y=None, *args, **kwargs):
        """`keras.Model.train_on_batch`, checking concrete probe labels first."""
        self._check_probe_labels(y)
        return super().train_on_batch(x, y, *args, **kwargs)

    def test_on_batch(self, x, y=None, *args, **kwargs):
        """`keras.Model.test_on_batch`, checking concrete probe labels first."""
        self._check_probe_labels(y)
        return super().test_on_batch(x, y, *args, **kwargs)

    def _skipped_step(self, *args) -> Any:
        """The result of a step that changes nothing: the current metrics.

        Two arguments `(state, data)` are the stateless (JAX) signature,
        which returns `(logs, state)` with the metric variables last.
        """
        if len(args) == 2:
            state = args[0]
            mapping = list(zip(self.metrics_variables, state[-1]))
            with keras.StatelessScope(state_mapping=mapping):
                logs = self.get_metrics_result()
            return logs, state
        return self.get_metrics_result()

    def _step_or_skip(self, step, *args) -> Any:
        """Runs `step`, or skips a batch of a single sample (see `fit`).

        With a static batch size (JAX, PyTorch) the choice is made when the
        step is traced; with a dynamic one (TensorFlow) by `ops.cond`. Under
        data parallelism a replica's batch may hold one sample (the negatives
        come from the global batch): every step runs.
        """
        if distributed.num_replicas() > 1:
            return step(*args)
        x, _, _ = keras.utils.unpack_x_y_sample_weight(args[-1])
        first = keras.tree.flatten(x)[0]
        size = first.shape[0]
        if size is not None:
            if size >= 2:
                return step(*args)
            self._warn_single_sample_batch()
            return self._skipped_step(*args)
        return ops.cond(
            ops.shape(first)[0] >= 2,
            lambda: step(*args),
            lambda: self._skipped_step(*args),
        )

    def train_step(self, *args):
        """The backend's training step; a batch of one sample is skipped."""
        return self._step_or_skip(super().train_step, *args)

    def test_step(self, *args):
        """The backend's evaluation step; a batch of one sample is skipped."""
        return self._step_or_skip(super().test_step, *args)

    # ----------------------------------------------------------------- saving

    def _seed_states(self) -> list:
        """The RNG states of every sublayer (augmenter, dropout, ...), in order."""
        states, seen = [], set()
        for layer in self._flatten_layers(include_self=False, recursive=True):
            for generator in getattr(layer, "_seed_generators", []):
                if id(generator) not in seen:
                    seen.add(id(generator))
                    states.append(generator.state)
        return states

    def save_own_variables(self, store):
        """Saves the model's variables and the RNG states of its sublayers.

        Keras does not checkpoint `SeedGenerator` states; saving them here
        makes `save`/`load_model` and `BackupAndRestore` resume with the
        same random views as an uninterrupted run.
        """
        super().save_own_variables(store)
        for index, state in enumerate(self._seed_states()):
            store[f"seed_state_{index}"] = state

    def load_own_variables(self, store):
        own = self._trainable_variables + self._non_trainable_variables
        keys = set(store.keys())
        seed_keys = {key for key in keys if str(key).startswith("seed_state_")}
        if len(keys) - len(seed_keys) != len(own):
            raise ValueError(
                f"The saved state of {self.name} holds {len(keys) - len(seed_keys)} "
                f"variables but the model has {len(own)}: was it saved from a "
                "model with the same mode, queue and heads?"
            )
        for index, variable in enumerate(own):
            variable.assign(store[f"{index}"])
        for index, state in enumerate(self._seed_states()):
            key = f"seed_state_{index}"
            if key in seed_keys:
                state.assign(store[key])

    # ---------------------------------------------------------------- predict

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None):
        """Encoder features `(N, F)` of raw images (the downstream output)."""
        rank = self._encoder_input_rank()
        if isinstance(x, dict) or (
            rank is not None and hasattr(x, "shape") and len(x.shape) == rank + 1
        ):
            shape = tuple(x[VIEWS_KEY].shape) if isinstance(x, dict) and VIEWS_KEY in x else getattr(x, "shape", None)
            raise ValueError(
                "`predict` returns the encoder features of raw images, shape "
                f"(N, H, W, C); it received views (N, V, H, W, C) or a dict. "
                f"Pass the images, or one view such as views[:, 0]. Received: "
                f"x of shape {shape}"
            )
        encoder = self.encoder
        if not isinstance(encoder, keras.Model):
            encoder = keras.Sequential([encoder])
        return encoder.predict(
            x, batch_size=batch_size, verbose=verbose, steps=steps, callbacks=callbacks
        )

    # ----------------------------------------------------------------- config

    def get_config(self):
        serialize = keras.saving.serialize_keras_object
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": serialize(self.dtype_policy),
            "encoder": serialize(self.encoder),
            "projector": None if self.projector is None else serialize(self.projector),
            "predictor": None if self.predictor is None else serialize(self.predictor),
            "augmenter": None if self.augmenter is None else serialize(self.augmenter),
            "num_views": self.num_views,
            "momentum": serialize(self.momentum) if callable(self.momentum) else self.momentum,
            "queue_size": self.queue_size,
            "num_classes": self.num_classes,
        }

    @classmethod
    def from_config(cls, config):
        config = copy.deepcopy(config)  # deserialisation consumes nested configs
        for key in ("encoder", "projector", "predictor", "augmenter"):
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        if isinstance(config.get("momentum"), dict):
            config["momentum"] = keras.saving.deserialize_keras_object(config["momentum"])
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)
