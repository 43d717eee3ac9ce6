"""`ContrastiveModel`: encoder + method + projector + augmenter, trained with `fit`."""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import keras
from keras import ops

from keras_fmicl import methods as methods_module
from keras_fmicl.methods.views import VIEWS_KEY
from keras_fmicl.methods.views import holds_views
from keras_fmicl.models import safeguards
from keras_fmicl.models.diagnostics import PositivesDriftMonitor
from keras_fmicl.utils import distributed as utils_distributed
from keras_fmicl.utils import keras_private
from keras_fmicl.utils.backend_ops import jit_needs_state_before_tracing
from keras_fmicl.utils.backend_ops import nan_unless
from keras_fmicl.utils.checks import check_bool
from keras_fmicl.utils.checks import check_images_in_value_range
from keras_fmicl.utils.checks import check_integer
from keras_fmicl.utils.checks import check_sample_weight
from keras_fmicl.utils.registry import PACKAGE

# arguments of the 0.x releases before `method=`: a pointer to the new form
_REMOVED_ARGUMENTS = ("momentum", "queue_size", "predictor")


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


def _callback_items(callbacks: Any) -> list:
    """The callbacks of `fit`'s `callbacks` argument: a list, `None` or a `CallbackList`."""
    if isinstance(callbacks, keras.callbacks.CallbackList):
        return callbacks.callbacks
    return list(callbacks or [])


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


@keras.saving.register_keras_serializable(package=PACKAGE)
class ContrastiveModel(keras.Model):
    """A contrastive learner around any encoder, trained with `fit`.

    Compile it with a contrastive loss of this package (`FMICLLoss` or
    `InfoNCELoss`) and fit it on unlabeled data:

    ```python
    model = keras_fmicl.ContrastiveModel(
        encoder=keras_fmicl.small_cnn((28, 28, 1)),
        method=keras_fmicl.methods.SimCLR(),   # or MoCoV2(...), MoCoV3(...)
        projector=keras_fmicl.ProjectionHead(256, 64),
        augmenter=keras_fmicl.SimCLRAugmentation(28, value_range=(0, 1)),
    )
    model.compile(optimizer="adam", loss=keras_fmicl.FMICLLoss("js"))
    model.fit(images, epochs=100)           # images in [0, 1], no labels
    features = model.predict(images)        # encoder features
    ```

    Training safeguards, the same on every backend and for every method:

    * NaN: a NaN or infinite input, weight, key-network copy or queue entry
      makes the reported loss NaN (never a finite number while the weights
      turn NaN), so `keras.callbacks.TerminateOnNaN` stops the training.
      A step whose gradients are not all finite (even with a finite loss)
      updates nothing: the optimizer skips it (weights and optimizer state
      unchanged; the forward pass's own updates, a key network's EMA and
      queue, batch norm statistics, still happen) and `fit` warns once.
      Under mixed precision Keras' `LossScaleOptimizer` does this itself.
    * A batch of a single sample (the remainder of `2k + 1` samples in
      batches of `k`) has no negatives: it is skipped with a warning,
      without any update of the weights, metrics or optimizer (its loss is
      left out of the reported mean). An epoch, or an evaluation, whose
      every batch holds a single sample raises a `ValueError` (it has no
      loss to report: never 0.0).
    * The loss's `reduction` is honoured: `"sum_over_batch_size"` (the
      default) and `"mean"` train on `sum_i w_i l_i / N`, `"sum"` on
      `sum_i w_i l_i`, `"mean_with_sample_weight"` on `sum_i w_i l_i /
      sum_i w_i`, with `w_i` the `sample_weight` (1 without; also without
      labels, which Keras alone would drop); `reduction=None` is refused.
    * Raw images must lie in the augmenter's `value_range` (which it
      clips to): the first batch is checked before training and
      evaluation (ValueError), as `keras_fmicl.data.multiview_dataset`
      does.
    * The method checks the batch size before training where it can (MoCo
      v2: the queue must hold the keys of a batch; see
      `keras_fmicl.methods.MoCoV2`).
    * Exact resume with `keras.callbacks.BackupAndRestore`: the model's
      variables (with the method's: key network, queue), and the random
      states of its augmenter are checkpointed, but not the order in which
      `fit` shuffles in-memory arrays (Keras draws it from a global random
      generator); with `shuffle=True` on arrays the resumed run sees other
      batches, and `fit` warns. For an exact resume pass the raw images as
      arrays with `shuffle=False` (the views are drawn by the model's
      augmenter, whose state is checkpointed). A `tf.data` pipeline is not
      checkpointed either: a fresh `keras_fmicl.data.multiview_dataset(...,
      seed=...)` starts again from the shuffle order and views of its
      first epoch.
    * Training that visibly fails: `fit` adds a
      `keras_fmicl.PositivesDriftMonitor` (unless one is among the
      callbacks, or `fit(..., drift_warning=False)`), which warns once when
      for 3 epochs in a row the positives are as far apart as random pairs,
      or have come no closer since the second epoch
      (`keras_fmicl.models.failing_epochs`).

    The loss itself is the contract of `docs/fmicl-math.md` (section 4, with
    the momentum-encoder variants).

    `fit` reports the loss, `alignment` and `uniformity` of the batch
    embeddings (Wang & Isola 2020), `mi_estimate` (the lower bound on the
    mutual information the loss maximises, in nats), and with labels
    `probe_loss` and `probe_accuracy` of the online linear probe (its loss
    is part of `loss`; its gradient never reaches the encoder).

    Args:
        encoder: a Keras layer or model mapping a batch of views (images
            `(N, H, W, C)`, token ids, ...) to features `(N, F)`.
        method: the training method, a `keras_fmicl.methods.Method`:
            `SimCLR()` (the default), `MoCoV2(momentum=..., queue_size=...)`
            or `MoCoV3(momentum=..., predictor=...)`; or the name
            `"simclr"`, `"moco"`, `"mocov3"` for one with its defaults. A
            method object belongs to one model.
        projector: head mapping features to the embeddings the loss sees,
            e.g. `keras_fmicl.ProjectionHead`; `None` uses the features.
        augmenter: layer drawing one random view of a batch of raw images
            when called with `training=True`, e.g.
            `keras_fmicl.SimCLRAugmentation`. Not needed when the data
            already holds the views, or for a method drawing its views
            otherwise.
        num_views: number of views per sample, `>= 2`. Defaults to 2.
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
        method: methods_module.Method | str | None = None,
        projector: keras.layers.Layer | None = None,
        augmenter: keras.layers.Layer | None = None,
        num_views: int = 2,
        num_classes: int | None = None,
        **kwargs,
    ):
        for argument in _REMOVED_ARGUMENTS:
            if argument in kwargs:
                raise ValueError(
                    f"`{argument}` is no longer an argument of ContrastiveModel: "
                    "the training method is an object, e.g. method="
                    "keras_fmicl.methods.MoCoV2(momentum=0.99, queue_size=4096) or "
                    "keras_fmicl.methods.MoCoV3(momentum=0.99, predictor=...). "
                    f"Received: {argument}={kwargs[argument]!r}"
                )
        super().__init__(**kwargs)
        self.encoder = _check_layer("encoder", encoder, required=True)
        method = methods_module.SimCLR() if method is None else methods_module.get(method)
        method.attach(self)
        self.method = method
        self.projector = _check_layer("projector", projector)
        self.augmenter = _check_layer("augmenter", augmenter)
        self.num_views = check_integer("num_views", num_views, 2)
        self.num_classes = None if num_classes is None else check_integer("num_classes", num_classes, 2)
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
        self.batch_size_checked = False

    # ------------------------------------------------------------------ build

    @property
    def mode(self) -> str:
        """The method's short name: `"simclr"`, `"moco"` (v2) or `"mocov3"`."""
        return self.method.mode

    def build(self, input_shape):
        view_shape = self.method.view_shape(self, input_shape)
        if not self.encoder.built:
            self.encoder.build(view_shape)
        view_spec = self._view_spec(view_shape)
        feature_shape = tuple(self.encoder.compute_output_spec(view_spec).shape)
        if len(feature_shape) != 2:
            raise ValueError(
                "`encoder` must map a batch of views to rank-2 features "
                "(N, F), e.g. end with global pooling or Flatten. Received: "
                f"encoder output shape {feature_shape} for input shape {view_shape}"
            )
        embedding_shape = feature_shape
        if self.projector is not None:
            if not self.projector.built:
                self.projector.build(feature_shape)
            embedding_shape = tuple(self.projector.compute_output_spec(keras.KerasTensor(feature_shape)).shape)
        if self.probe is not None:
            self.probe.build(feature_shape)
        self.training_steps = self.add_weight(
            shape=(), dtype="int32", initializer="zeros", trainable=False, name="training_steps"
        )
        self.method.build(self, embedding_shape)
        self.built = True
        # torch.distributed: every process starts from rank 0's weights
        utils_distributed.broadcast_variables(self.variables)

    def _view_spec(self, view_shape: Any) -> Any:
        """Symbolic views of `view_shape`, in the dtypes of a functional
        encoder's inputs (token ids stay integers), else float32."""
        specs = methods_module.map_shapes(keras.KerasTensor, view_shape)
        try:
            declared = self.encoder.input
            keras.tree.assert_same_structure(declared, specs)
        except (AttributeError, ValueError, TypeError, RuntimeError):
            return specs
        return keras.tree.map_structure(
            lambda spec, like: keras.KerasTensor(spec.shape, dtype=like.dtype), specs, declared
        )

    # ------------------------------------------------------------------- call

    def online_forward(self, views: Any, training: bool = False) -> tuple[Any, Any]:
        """Features `(N V, F)` and embeddings `(N V, d)` of flat views.

        The online encoder, then the projector (if any). Used by the
        methods (`keras_fmicl.methods`).

        Raises:
            ValueError: the encoder's output is not of rank 2.
        """
        features = self.encoder(views, training=training)
        if len(features.shape) != 2:
            raise ValueError(
                "`encoder` must output rank-2 features (N, F). Received: "
                f"encoder output shape {tuple(features.shape)}"
            )
        embeddings = features if self.projector is None else self.projector(features, training=training)
        return features, embeddings

    def group_views(self, x: Any) -> Any:
        """`(N V, d)` rows, sample-major, to `(N, V, d)` (keeping d static)."""
        return methods_module.group_rows(x, self.num_views)

    def call(self, inputs, training=False):
        """Embeds `num_views` views of each sample.

        Returns:
            A dict of `(N, V, ...)` tensors: `"features"` (encoder output),
            `"queries"` (the embeddings contrasted: projector, then the
            method's predictor if any), and with a key network `"keys"`.
        """
        views = self.method.draw_views(self, inputs, training=training)
        outputs = self.method.embed(self, views, training=training)
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
        loss = self.method.check_loss(loss)
        safeguards.check_training_reduction(loss)
        self.method.check_jit_compile(kwargs.get("jit_compile", "auto"))
        for argument in ("loss_weights", "metrics", "weighted_metrics"):
            if kwargs.get(argument) is not None:
                raise ValueError(
                    f"ContrastiveModel reports its own metrics (alignment, "
                    f"uniformity, mi_estimate, probe_accuracy) and takes no "
                    f"`{argument}`. Received: {argument}={kwargs[argument]!r}"
                )
            kwargs.pop(argument, None)
        if utils_distributed.is_multi_worker_strategy(getattr(self, "_distribute_strategy", None)):
            utils_distributed.patch_keras_multi_worker_fit()
        super().compile(optimizer=optimizer, loss=None, **kwargs)
        self.loss = loss
        # an update with non-finite gradients is skipped (see the class)
        safeguards.guard_optimizer(self.optimizer)
        # torch.distributed: average the gradients of the processes (wraps
        # the guard: the processes check the same averaged gradients)
        utils_distributed.synchronize_optimizer(self.optimizer)
        # Saved with the model, so that `load_model` compiles it again.
        self._compile_config.config["loss"] = loss

    def compile_from_config(self, config):
        """Compiles again from `get_compile_config()` (used by `load_model`)."""
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.optimizer is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    def warn_once(self, key: str, message: str):
        """Warns `message` the first time `key` is seen by this model (methods use it too)."""
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=3)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if safeguards.is_no_labels(y):
            y = None  # the stand-in that keeps `sample_weight` (see `fit`)
        per_sample, metrics = self.method.loss(self, y_pred)
        total = self._reduce(per_sample, sample_weight)
        for name, tracker in (
            ("alignment", self.alignment_tracker),
            ("uniformity", self.uniformity_tracker),
            ("mi_estimate", self.mi_estimate_tracker),
        ):
            if name in metrics:
                value, weight = metrics[name], None
                if isinstance(value, tuple):
                    value, weight = value
                tracker.update_state(value, sample_weight=weight)
        total = total + self._probe_loss(y, y_pred["features"], sample_weight)
        if training:
            total = total + self.method.after_step(self, y_pred)
        for loss in self.losses:
            total = total + ops.cast(ops.sum(loss), total.dtype)
        # NaN never vanishes from the loss: max pooling (eagerly, and more
        # so fused under XLA) may turn NaN activations into finite ones (the
        # loss then stays finite while the gradients, and the weights, are
        # NaN). A NaN or infinite input, weight, key-network copy or queue
        # entry (the EMA of a NaN update, or of an out-of-range momentum)
        # makes the loss NaN, so `keras.callbacks.TerminateOnNaN` stops the
        # training.
        state = [v.value for v in self.weights]
        total = total + ops.cast(nan_unless(_all_finite(keras.tree.flatten(x) + state)), total.dtype)
        # under tf.distribute the replicas' gradients are summed
        return utils_distributed.scale_loss(total)

    def _reduce(self, per_sample: Any, sample_weight: Any) -> Any:
        """Per-sample losses reduced as the compiled loss's `reduction` says."""
        reduction = getattr(self.loss, "reduction", "sum_over_batch_size")
        return safeguards.reduce_per_sample(per_sample, sample_weight, reduction)

    def _probe_loss(self, labels: Any, features: Any, sample_weight: Any) -> Any:
        if self.probe is None:
            if labels is not None:
                self.warn_once(
                    "labels_without_probe",
                    "ContrastiveModel received labels but has no probe: the "
                    "labels are ignored. Pass num_classes=... to train an online "
                    "linear probe on them, or call fit(x) without labels.",
                )
            return 0.0
        if labels is None:
            self.warn_once(
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
        # the views the online network embedded (one for MoCo v2's queries)
        num_views = features.shape[1]
        flat = ops.reshape(ops.stop_gradient(features), (-1, features.shape[-1]))
        view_labels = ops.repeat(labels, num_views, axis=0)
        logits = ops.cast(self.probe(flat), "float32")
        per_view = keras.losses.sparse_categorical_crossentropy(view_labels, logits, from_logits=True)
        per_sample = ops.mean(ops.reshape(per_view, (-1, num_views)), axis=1)
        probe_loss = self._reduce(per_sample, sample_weight) + nan_unless(ops.all(valid))
        self.probe_loss_tracker.update_state(probe_loss)
        self.probe_accuracy.update_state(view_labels, logits)
        return probe_loss

    # -------------------------------------------------------------------- fit

    def _check_probe_labels(self, y: Any, argument: str = "y"):
        """ValueError for concrete probe labels outside [0, num_classes)."""
        if self.probe is not None:
            safeguards.check_probe_labels(y, self.num_classes, argument)

    def warn_single_sample_batch(self):
        """Warns once that batches of a single sample are skipped."""
        self.warn_once(
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
        leaves = safeguards.array_leaves(x)
        if leaves is None:
            return
        if shuffle and any(isinstance(c, keras.callbacks.BackupAndRestore) for c in _callback_items(callbacks)):
            self.warn_once(
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
        # a batch of one sample is skipped (no negatives): with one sample
        # per batch the whole fit would train nothing
        if num_samples < 2:
            raise ValueError(
                "Contrastive training needs at least 2 training samples (a single "
                "sample has no negatives). Received: x with "
                f"{num_samples} training sample{'' if num_samples == 1 else 's'}"
                + (f" after validation_split={validation_split}" if validation_split else "")
            )
        if batch_size < 2:
            raise ValueError(
                "`batch_size` must be at least 2: a batch of one sample has no "
                "negatives and would be skipped, so nothing would train. "
                f"Received: batch_size={batch_size}"
            )
        self.method.check_batch_size(self, min(batch_size, num_samples))
        # the batches hold at most `batch_size` samples: checked above
        self.batch_size_checked = True
        if steps_per_epoch is None and num_samples % batch_size == 1:
            self.warn_single_sample_batch()

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
        *,
        drift_warning: bool = True,
    ):
        """`keras.Model.fit`, with checks of the data before training.

        Concrete probe labels outside `[0, num_classes)` raise a ValueError
        (in a `tf.data` pipeline they make the loss NaN); a batch of a single
        sample is skipped with a warning; `BackupAndRestore` with
        `shuffle=True` on arrays warns that the resumed run differs; the
        method checks the batch size (MoCo v2: against its queue).

        Args:
            drift_warning: add a `keras_fmicl.PositivesDriftMonitor()` to the
                callbacks (unless they hold one already: pass your own to
                set its `patience`), which warns once
                (`keras_fmicl.models.PositivesDriftWarning`) when training
                visibly fails for 3 epochs in a row
                (`keras_fmicl.models.failing_epochs`). `False`: no monitor
                added. Defaults to True.
            others: as `keras.Model.fit`.

        Example:

        ```python
        model.fit(images, epochs=50)                       # with the failure warning
        model.fit(images, epochs=50, drift_warning=False)  # without
        model.fit(images, epochs=50, callbacks=[keras_fmicl.PositivesDriftMonitor(patience=5)])
        ```
        """
        if check_bool("drift_warning", drift_warning):
            callbacks = self._with_drift_monitor(callbacks)
        callbacks = self._with_step_audit(callbacks)
        self.batch_size_checked = False
        self._check_fit_data(x, y, batch_size, validation_split, shuffle, callbacks, steps_per_epoch)
        y = self._labels_keeping_weights(x, y, sample_weight)
        self._prepare_inputs(x, batch_size)
        if isinstance(validation_data, (list, tuple)) and len(validation_data) >= 2:
            self._check_probe_labels(validation_data[1], "validation_data")
            if len(validation_data) == 3:
                val_x, val_y, val_weight = validation_data
                val_y = self._labels_keeping_weights(val_x, val_y, val_weight)
                validation_data = (val_x, val_y, val_weight)
            self._prepare_inputs(validation_data[0], validation_batch_size or batch_size, "validation_data")
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
            self.batch_size_checked = False

    def _with_drift_monitor(self, callbacks: Any) -> Any:
        """`callbacks` plus a `PositivesDriftMonitor`, unless it holds one."""
        if any(isinstance(c, PositivesDriftMonitor) for c in _callback_items(callbacks)):
            return callbacks
        monitor = PositivesDriftMonitor()
        if isinstance(callbacks, keras.callbacks.CallbackList):
            # fit uses a CallbackList as given: the monitor joins it
            monitor.set_model(self)
            callbacks.callbacks.append(monitor)
            return callbacks
        return list(callbacks or []) + [monitor]

    def _with_step_audit(self, callbacks: Any) -> Any:
        """`callbacks` with a `safeguards.StepAudit` first (it may raise
        before another callback reads the epoch's logs)."""
        if any(isinstance(c, safeguards.StepAudit) for c in _callback_items(callbacks)):
            return callbacks
        audit = safeguards.StepAudit()
        if isinstance(callbacks, keras.callbacks.CallbackList):
            audit.set_model(self)
            callbacks.callbacks.insert(0, audit)
            return callbacks
        return [audit] + list(callbacks or [])

    def _labels_keeping_weights(self, x: Any, y: Any, sample_weight: Any) -> Any:
        """`y`, or with `sample_weight` and no labels the stand-in for "no
        labels" that Keras does not drop (it drops `sample_weight` when `y`
        is None). Checks the weights' shape."""
        leaves = safeguards.array_leaves(x)
        if sample_weight is None or leaves is None:
            return y
        num_samples = leaves[0].shape[0]
        check_sample_weight(sample_weight, None if num_samples is None else int(num_samples))
        if y is not None or num_samples is None:
            return y
        return safeguards.no_labels(int(num_samples))

    def _prepare_inputs(self, x: Any, batch_size: Any, argument: str = "x") -> None:
        """Before training or evaluating on `x`: the raw images of its first
        batch must lie in the augmenter's `value_range`; under TensorFlow
        with `jit_compile=True` an unbuilt model is built eagerly (XLA cannot
        initialise variables inside the compiled step)."""
        if self.augmenter is not None:
            images = safeguards.first_inputs(x, batch_size)
            if hasattr(images, "shape") and not holds_views(self, tuple(images.shape)):
                check_images_in_value_range(self.augmenter, images, argument)
        if not self.built and self.compiled and self.jit_compile and jit_needs_state_before_tracing():
            shapes = safeguards.input_shapes(x)
            if shapes is not None:
                self.build(shapes)
                if self.optimizer is not None and not self.optimizer.built:
                    self.optimizer.build(self.trainable_variables)

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None,
                 steps=None, callbacks=None, return_dict=False, **kwargs):
        """`keras.Model.evaluate`, checking the data first (as `fit`).

        A batch of a single sample is skipped with a warning; when every
        batch holds a single sample there is no loss to report, and a
        `ValueError` is raised (never a loss of 0.0). `sample_weight`
        without `y` weights the per-sample losses (Keras would drop it).
        """
        self._check_probe_labels(y)
        y = self._labels_keeping_weights(x, y, sample_weight)
        self._prepare_inputs(x, batch_size)
        leaves = safeguards.array_leaves(x)
        if leaves is not None and leaves[0].shape[0] is not None:
            if steps is None and leaves[0].shape[0] % (batch_size or 32) == 1:
                self.warn_single_sample_batch()
        logs = super().evaluate(
            x, y, batch_size, verbose=verbose, sample_weight=sample_weight, steps=steps,
            callbacks=callbacks, return_dict=return_dict, **kwargs,
        )  # fmt: skip
        if int(ops.convert_to_numpy(self.alignment_tracker.count)) == 0:
            raise ValueError(
                "Every batch of the evaluation data held a single sample, which "
                "cannot be contrasted (it has no negatives): there is no loss "
                "to report. Evaluate on batches of at least 2 samples."
            )
        return logs

    def train_on_batch(self, x, y=None, *args, **kwargs):
        """`keras.Model.train_on_batch`, checking the data first (as `fit`)."""
        self._check_probe_labels(y)
        self._prepare_inputs(x, None)
        return super().train_on_batch(x, y, *args, **kwargs)

    def test_on_batch(self, x, y=None, *args, **kwargs):
        """`keras.Model.test_on_batch`, checking the data first (as `fit`)."""
        self._check_probe_labels(y)
        self._prepare_inputs(x, None)
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
        if utils_distributed.num_replicas() > 1:
            return step(*args)
        x, _, _ = keras.utils.unpack_x_y_sample_weight(args[-1])
        # a ValueError about the inputs is raised here, not inside `ops.cond`
        self.method.check_inputs(self, x)
        first = keras.tree.flatten(x)[0]
        size = first.shape[0]
        if size is not None:
            if size >= 2:
                return step(*args)
            self.warn_single_sample_batch()
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
        for layer in keras_private.sublayers(self, include_self=False, recursive=True):
            for generator in keras_private.seed_generators(layer):
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
        own = keras_private.own_trainable_variables(self) + keras_private.own_non_trainable_variables(self)
        keys = set(store.keys())
        seed_keys = {key for key in keys if str(key).startswith("seed_state_")}
        if len(keys) - len(seed_keys) != len(own):
            raise ValueError(
                f"The saved state of {self.name} holds {len(keys) - len(seed_keys)} "
                f"variables but the model has {len(own)}: was it saved from a "
                "model with the same method and heads?"
            )
        for index, variable in enumerate(own):
            variable.assign(store[f"{index}"])
        for index, state in enumerate(self._seed_states()):
            key = f"seed_state_{index}"
            if key in seed_keys:
                state.assign(store[key])

    # ---------------------------------------------------------------- predict

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None):
        """Encoder features `(N, F)` of raw inputs (the downstream output).

        Raises:
            ValueError: `x` holds views, `(N, V, H, W, C)` or `{"views": ...}`.
        """
        rank = methods_module.encoder_input_rank(self.encoder)
        views = isinstance(x, dict) and VIEWS_KEY in x
        if views or (rank is not None and hasattr(x, "shape") and len(x.shape) == rank + 1):
            shape = tuple(x[VIEWS_KEY].shape) if views else tuple(x.shape)
            raise ValueError(
                "`predict` returns the encoder features of raw inputs, e.g. "
                "images (N, H, W, C); it received views (N, V, H, W, C) or a "
                "dict of views. Pass the images, or one view such as "
                f"views[:, 0]. Received: x of shape {shape}"
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
            "method": serialize(self.method),
            "projector": None if self.projector is None else serialize(self.projector),
            "augmenter": None if self.augmenter is None else serialize(self.augmenter),
            "num_views": self.num_views,
            "num_classes": self.num_classes,
        }

    @classmethod
    def from_config(cls, config):
        config = copy.deepcopy(config)  # deserialisation consumes nested configs
        for key in ("encoder", "method", "projector", "augmenter"):
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)
