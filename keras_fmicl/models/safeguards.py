"""Training safeguards of `ContrastiveModel`: the loss reduction, sample
weights without labels, the non-finite gradient guard, and the audit of the
steps of an epoch."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from keras_fmicl.utils import distributed as utils_distributed

TRAINING_REDUCTIONS = ("sum_over_batch_size", "mean", "mean_with_sample_weight", "sum")
"""The loss reductions `ContrastiveModel` trains with (Keras' names)."""


def check_training_reduction(loss: Any) -> str:
    """The reduction of `loss` if `ContrastiveModel` can train on it, else `ValueError`.

    A loss without reduction (`reduction=None` or `"none"`) returns one
    value per sample; a training step needs one number.
    """
    reduction = getattr(loss, "reduction", "sum_over_batch_size")
    if reduction not in TRAINING_REDUCTIONS:
        raise ValueError(
            "`loss` must reduce the per-sample losses to one number for "
            "training: reduction one of "
            f"{', '.join(repr(r) for r in TRAINING_REDUCTIONS)} (the per-sample "
            "losses are available from loss.contrast(...) with reduction=None). "
            f"Received: loss={type(loss).__name__}(reduction={reduction!r})"
        )
    return reduction


def reduce_per_sample(per_sample: Any, sample_weight: Any, reduction: str) -> Any:
    """`per_sample` losses `(N,)`, weighted and reduced as a Keras loss does.

    `"sum"`: `sum_i w_i l_i`; `"sum_over_batch_size"` and `"mean"`:
    `sum_i w_i l_i / N`; `"mean_with_sample_weight"`: `sum_i w_i l_i /
    sum_i w_i` (0 when the weights sum to 0). `w_i = 1` without
    `sample_weight` (a scalar or `(N,)` / `(N, 1)`).

    Example:

    ```python
    reduce_per_sample(ops.array([1.0, 3.0]), np.array([1.0, 0.0]), "sum")  # 1.0
    ```
    """
    if sample_weight is None and reduction != "sum":
        return ops.mean(per_sample)
    weights = None
    if sample_weight is not None:
        weights = ops.cast(ops.reshape(sample_weight, (-1,)), per_sample.dtype)
        weights = ops.broadcast_to(weights, ops.shape(per_sample))
        per_sample = per_sample * weights
    total = ops.sum(per_sample)
    if reduction == "sum":
        return total
    if reduction == "mean_with_sample_weight" and weights is not None:
        return ops.divide_no_nan(total, ops.sum(weights))
    return total / ops.cast(ops.shape(per_sample)[0], per_sample.dtype)


def no_labels(num_samples: int) -> np.ndarray:
    """The placeholder `y` of shape `(num_samples, 0)` standing for "no labels".

    Keras' `fit` and `evaluate` drop `sample_weight` when `y` is `None`;
    `ContrastiveModel` passes this empty array as `y` instead, and reads it
    as no labels (`is_no_labels`).
    """
    return np.zeros((num_samples, 0), dtype="float32")


def is_no_labels(y: Any) -> bool:
    """Whether `y` is the placeholder of `no_labels` (rank 2, no columns)."""
    shape = getattr(y, "shape", None)
    return shape is not None and len(shape) == 2 and shape[-1] == 0


def array_leaves(data: Any) -> list | None:
    """The arrays of in-memory data (arrays, tensors, lists/dicts of them);
    `None` for a dataset, a `PyDataset` or a generator."""
    if data is None:
        return None
    leaves = keras.tree.flatten(data)
    if not leaves or not all(hasattr(leaf, "shape") and hasattr(leaf, "__array__") for leaf in leaves):
        return None
    return leaves


def check_probe_labels(y: Any, num_classes: int, argument: str = "y") -> None:
    """`ValueError` for concrete labels `y` outside `[0, num_classes)` or not whole.

    Labels that are not in memory (a dataset, a tensor on an accelerator)
    are left to the training step, where they make the loss NaN.
    """
    if array_leaves(y) is None:
        return
    try:
        labels = np.asarray(y).reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        return  # e.g. a tensor on an accelerator: checked in the step
    if labels.dtype.kind not in "biuf":
        raise ValueError(
            f"`{argument}` must hold integer class labels in [0, num_classes="
            f"{num_classes}) for the online probe. Received: "
            f"{argument} of dtype {labels.dtype}"
        )
    with np.errstate(invalid="ignore"):
        bad = ~((labels >= 0) & (labels < num_classes) & (labels == np.floor(labels)))
    if bad.any():
        index = int(np.argmax(bad))
        raise ValueError(
            f"`{argument}` must hold integer class labels in [0, num_classes="
            f"{num_classes}) for the online probe. Received: "
            f"{argument}[{index}]={labels[index].item()!r}"
            + (f" ({int(bad.sum())} invalid labels in all)" if bad.sum() > 1 else "")
        )


def _is_dataset(x: Any) -> bool:
    """Whether `x` is a `tf.data.Dataset` (without importing TensorFlow)."""
    return hasattr(x, "element_spec") and hasattr(x, "take")


def first_inputs(x: Any, batch_size: int | None) -> Any:
    """The inputs of the first batch of `x`, when they can be read now.

    In-memory arrays (a tensor, or a dict or list of them): their first
    `batch_size` rows (32 by default, Keras'); a `tf.data.Dataset`: the `x`
    of its first element (read through a fresh iterator, so one batch of
    the pipeline is computed); anything else (a generator, a
    `PyDataset`): `None`.
    """
    if x is None:
        return None
    if _is_dataset(x):
        for element in x.take(1):
            return keras.utils.unpack_x_y_sample_weight(element)[0]
        return None
    if array_leaves(x) is None:
        return None
    count = batch_size or 32
    return keras.tree.map_structure(lambda leaf: leaf[:count], x)


def input_shapes(x: Any) -> Any:
    """The input shapes, batch `None`, of in-memory arrays or a `tf.data.Dataset`; else `None`."""
    if _is_dataset(x):
        spec = keras.utils.unpack_x_y_sample_weight(x.element_spec)[0]
        return keras.tree.map_structure(lambda s: (None,) + tuple(s.shape[1:]), spec)
    first = first_inputs(x, 1)
    if first is None:
        return None
    return keras.tree.map_structure(lambda leaf: (None,) + tuple(leaf.shape[1:]), first)


def _all_finite_gradients(grads: list) -> Any:
    checks = [ops.all(ops.isfinite(g)) for g in grads if g is not None]
    if not checks:
        return ops.convert_to_tensor(True)
    return ops.all(ops.stack(checks))


def guard_optimizer(optimizer: keras.optimizers.Optimizer) -> None:
    """Makes `optimizer` skip an update whose gradients are not all finite.

    The weights and the optimizer's state (its `iterations` too) are left
    as they were; the step's loss and metrics are still reported. A
    `LossScaleOptimizer` (mixed precision) does this itself, adjusting its
    scale, and is left alone; so is the optimizer under a `tf.distribute`
    strategy, even of one replica (its update synchronises the replicas,
    which TensorFlow does not allow inside a conditional). Wraps `apply` (TensorFlow, PyTorch) and `stateless_apply`
    (JAX), once.
    """
    if optimizer is None or isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return
    if getattr(optimizer, "_keras_fmicl_guarded", False):
        return
    apply = optimizer.apply
    stateless_apply = optimizer.stateless_apply
    inside_stateless = []

    def guarded_apply(grads, trainable_variables=None):
        grads = list(grads)
        if inside_stateless or utils_distributed.under_tf_strategy() or utils_distributed.num_replicas() > 1:
            return apply(grads, trainable_variables)

        def update():
            apply(grads, trainable_variables)
            return ops.convert_to_tensor(True)

        ops.cond(_all_finite_gradients(grads), update, lambda: ops.convert_to_tensor(False))

    def guarded_stateless_apply(optimizer_variables, grads, trainable_variables):
        grads = list(grads)

        def update():
            inside_stateless.append(True)
            try:
                new_trainable, new_optimizer = stateless_apply(
                    optimizer_variables, grads, trainable_variables
                )
            finally:
                inside_stateless.pop()
            return list(new_trainable), list(new_optimizer)

        return ops.cond(
            _all_finite_gradients(grads),
            update,
            lambda: (list(trainable_variables), list(optimizer_variables)),
        )

    optimizer.apply = guarded_apply
    optimizer.stateless_apply = guarded_stateless_apply
    optimizer._keras_fmicl_guarded = True


def is_guarded(optimizer: Any) -> bool:
    """Whether `guard_optimizer` wrapped `optimizer`."""
    return bool(getattr(optimizer, "_keras_fmicl_guarded", False))


class StepAudit(keras.callbacks.Callback):
    """Checks each epoch of `ContrastiveModel.fit` for steps that trained nothing.

    Compares the model's `training_steps` (steps contrasted) with the
    steps run and the optimizer's `iterations` (updates applied): an epoch
    whose every batch held a single sample raises a `ValueError` (its loss
    would be reported as 0.0); single-sample batches among others, and
    updates skipped for non-finite gradients, warn once (through the
    model's `warn_once`). Runs first among the callbacks.
    """

    def __init__(self):
        super().__init__()
        self._start = (0, 0)
        self._steps = 0

    def _counters(self) -> tuple[int, int]:
        model = self.model
        # a model built by its first step (TensorFlow) starts from 0
        steps = int(ops.convert_to_numpy(model.training_steps.value)) if model.built else 0
        optimizer = getattr(model, "optimizer", None)
        updates = int(ops.convert_to_numpy(optimizer.iterations.value)) if optimizer is not None else 0
        return steps, updates

    def on_epoch_begin(self, epoch, logs=None):
        self._start = self._counters()
        self._steps = 0

    def on_train_batch_end(self, batch, logs=None):
        # with steps_per_execution > 1, `batch` is the last step of the execution
        self._steps = max(self._steps, int(batch) + 1)

    def on_epoch_end(self, epoch, logs=None):
        if self._steps == 0 or not self.model.built:
            return
        steps, updates = self._counters()
        contrasted = steps - self._start[0]
        applied = updates - self._start[1]
        if contrasted == 0:
            raise ValueError(
                "Every batch of this training epoch held a single sample, which "
                "cannot be contrasted (it has no negatives): nothing was trained, "
                "and the epoch has no loss to report. Batch the data with at "
                f"least 2 samples per batch. Received: {self._steps} batches of "
                "one sample"
            )
        if contrasted < self._steps:
            self.model.warn_single_sample_batch()
        if is_guarded(self.model.optimizer) and applied < contrasted:
            self.model.warn_once(
                "non_finite_gradients",
                f"{contrasted - applied} training step(s) of epoch {epoch + 1} had "
                "non-finite (NaN or infinite) gradients: their update was skipped, "
                "leaving the weights and the optimizer unchanged. Lower the learning rate, or use a divergence and "
                "sigma whose gradients stay finite (docs/fmicl-math.md).",
            )
