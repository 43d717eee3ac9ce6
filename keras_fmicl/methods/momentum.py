"""Momentum-encoder methods: `MomentumMethod`, `MoCoV2` (queue) and `MoCoV3` (predictor)."""

from __future__ import annotations

import copy
import numbers
from typing import Any
from typing import ClassVar

import keras
from keras import ops

from keras_fmicl.layers.heads import ProjectionHead
from keras_fmicl.losses.fmicl_loss import FMICLLoss
from keras_fmicl.methods.method import METHODS
from keras_fmicl.methods.method import Method
from keras_fmicl.methods.method import contrastive_loss
from keras_fmicl.methods.views import group_rows
from keras_fmicl.methods.views import select_views
from keras_fmicl.methods.views import standardize_over_batch
from keras_fmicl.utils import distributed as utils_distributed
from keras_fmicl.utils import keras_private
from keras_fmicl.utils.backend_ops import jit_recompiles_stateful_steps
from keras_fmicl.utils.backend_ops import nan_unless
from keras_fmicl.utils.checks import check_bool
from keras_fmicl.utils.checks import check_choice
from keras_fmicl.utils.checks import check_integer
from keras_fmicl.utils.registry import PACKAGE


def _check_momentum(momentum: Any) -> Any:
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
            "`momentum` must be a number in [0, 1) (the EMA momentum of the "
            "key network, e.g. 0.99) or a schedule such as "
            f"keras_fmicl.CosineMomentum. Received: momentum={momentum!r}"
        )
    return float(momentum)


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


class _RandomUnitRows(keras.initializers.Initializer):
    """Rows drawn from a standard normal, then normalised: random unit vectors
    (the initial queue of facebookresearch/moco)."""

    def __call__(self, shape, dtype=None):
        return ops.normalize(keras.initializers.RandomNormal(stddev=1.0)(shape, dtype=dtype), axis=-1)


class _CopyOf(keras.initializers.Initializer):
    """Initializer returning a copy of a variable's current value."""

    def __init__(self, variable: keras.Variable):
        self.variable = variable

    def __call__(self, shape, dtype=None):
        # a copy, not the same buffer (JAX donates each state buffer)
        return ops.copy(ops.cast(self.variable.value, dtype or self.variable.dtype))


@keras.saving.register_keras_serializable(package=PACKAGE)
class MomentumMethod(Method):
    """Base of the methods with a momentum (key) network.

    The key network is an exponential moving average (EMA) of the online
    encoder and projector, `theta_k <- m theta_k + (1 - m) theta_q`,
    updated every training step before the keys are computed; it embeds
    every view without gradient. It is held as non-trainable `float32`
    copies of the online variables (autocast off: under mixed precision the
    EMA runs on the float32 values) and run through `stateless_call` of the
    online layers, so any encoder works and its batch normalisation uses
    batch statistics in training, as MoCo's does.

    With `online_weight = w > 0` the loss is the mixture
    `(1 - w) L(queries, keys) + w L(queries, queries)`: the second term is
    the SimCLR contrast of the online embeddings among themselves, whose
    negative term spreads the online embeddings (the keys, a stop-gradient
    EMA of them, cannot be spread by the key contrast; docs/fmicl-math.md
    section 4.5).

    With f-MICL the queries and the keys are standardised over the batch
    before the loss (`standardize="auto"`): each of the `d` coordinates of
    the `(N, V, d)` queries, and of the keys, separately, gets mean 0 and
    variance 1 over the batch's rows, `z <- (z - mean) / sqrt(var + 1e-5)`
    (a batch norm without scale and offset, as at the end of MoCo v3's
    projector). f-MICL's negative term is not invariant to a direction
    shared by all keys, the way InfoNCE's softmax is: against stop-gradient
    keys the queries would lower it by moving away from the keys all
    together (docs/fmicl-math.md section 4.5). The queue stores the
    standardised keys. InfoNCE keeps the reference method's embeddings.

    Args:
        momentum: the EMA momentum, a number in `[0, 1)` or a schedule of
            the training step such as `keras_fmicl.CosineMomentum(0.99,
            total_steps)`. A schedule must return a value in `[0, 1]` (1
            freezes the key network): it is checked at step 0 here
            (ValueError), and a later value outside makes the loss NaN.
        online_weight: weight `w` in `[0, 1]` of the contrast of the
            online embeddings among themselves. Defaults to 0 (the key
            contrast alone, as in MoCo).
        standardize: `"auto"` (default: with an `FMICLLoss`), `True`
            (always) or `False` (never).
        **kwargs: `keras.layers.Layer` arguments.
    """

    mode: ClassVar[str] = "momentum"
    LEGACY_DEFAULTS: ClassVar[dict] = {"standardize": False}

    def __init__(
        self, momentum: Any = 0.99, online_weight: float = 0.0, standardize: Any = "auto", **kwargs
    ):
        super().__init__(**kwargs)
        if standardize != "auto":
            standardize = check_bool("standardize", standardize)
        self.standardize = standardize
        self.momentum = _check_momentum(momentum)
        if (
            isinstance(online_weight, bool)
            or not isinstance(online_weight, numbers.Real)
            or not 0.0 <= online_weight <= 1.0
        ):
            raise ValueError(
                "`online_weight` must be a number in [0, 1]. "
                f"Received: online_weight={online_weight!r}"
            )
        self.online_weight = float(online_weight)

    # --------------------------------------------------------------- loss

    def loss(self, model: Any, outputs: dict) -> tuple[Any, dict]:
        """The key contrast, mixed with the online contrast (`online_weight`)."""
        self._warn_if_keys_uncentred(model)
        per_sample, metrics = self.key_contrast(model, outputs)
        weight = self.online_weight
        if weight > 0.0:
            online = contrastive_loss(model).contrast(outputs["queries"])
            per_sample = (1.0 - weight) * per_sample + weight * online
        return per_sample, metrics

    def key_contrast(self, model: Any, outputs: dict) -> tuple[Any, dict]:
        """Per-sample loss and metrics of the queries against the keys."""
        return super().loss(model, outputs)

    def standardizes(self, model: Any) -> bool:
        """Whether the queries and keys are standardised over the batch (see the class)."""
        if self.standardize == "auto":
            return isinstance(getattr(model, "loss", None), FMICLLoss)
        return self.standardize

    def _warn_if_keys_uncentred(self, model: Any) -> None:
        """Warns once: f-MICL, `standardize=False`, no online contrast, a
        `ProjectionHead` without output batch norm."""
        projector = getattr(model, "projector", None)
        if (
            isinstance(getattr(model, "loss", None), FMICLLoss)
            and not self.standardizes(model)
            and isinstance(projector, ProjectionHead)
            and not projector.output_batch_norm
            and self.online_weight == 0.0
            and hasattr(model, "warn_once")
        ):
            model.warn_once(
                "uncentred_keys",
                f"f-MICL with momentum keys ({type(self).__name__}), standardize=False and a "
                "projector without an output batch norm: the queries can lower the negative "
                "term by moving away from the keys all together, and the positives drift "
                "apart (docs/fmicl-math.md, section 4.5). Keep standardize='auto', or use "
                "keras_fmicl.ProjectionHead(..., output_batch_norm=True).",
            )

    def check_batch_size(self, model: Any, batch_size: int) -> None:
        if self.online_weight > 0.0 and batch_size < 2:
            raise ValueError(
                "The online contrast (`online_weight` > 0) needs at least 2 samples "
                f"per batch. Received: batch_size={batch_size}"
            )

    def check_jit_compile(self, jit_compile: Any) -> None:
        """`ValueError` for `jit_compile=True` under PyTorch.

        `torch.compile` recompiles the step, which assigns every key-network
        copy, at each call until its recompile limit (minutes per step);
        train eagerly (`jit_compile=False` or `"auto"`).
        """
        if jit_compile is True and jit_recompiles_stateful_steps():
            raise ValueError(
                f"{type(self).__name__} cannot train with jit_compile=True under "
                "PyTorch: torch.compile recompiles the training step, which updates "
                "every key-network copy, at each step until its recompile limit "
                "(minutes per step). Compile with jit_compile=False (or \"auto\"). "
                "Received: jit_compile=True"
            )

    # -------------------------------------------------------- key network

    @staticmethod
    def _online_layers(model: Any) -> list:
        return [layer for layer in (model.encoder, model.projector) if layer is not None]

    @staticmethod
    def _state_of(layer: keras.layers.Layer) -> tuple[list, list]:
        """An online layer's `(weights, other state)`, in an order frozen layers do not change.

        Weights are the variables created trainable, frozen or not now; the
        other state is the rest (batch norm statistics, random seeds). Each
        list keeps `layer.variables` order. `layer.trainable_variables`
        would not do: freezing a layer after build moves its variables to
        the non-trainable list, and a loaded model (built with the saved
        flags) would then restore the key copies into the wrong slots.
        """
        created_trainable = {
            id(v)
            for sublayer in keras_private.sublayers(layer, include_self=True, recursive=True)
            for v in keras_private.own_trainable_variables(sublayer)
        }
        variables = layer.variables
        return (
            [v for v in variables if id(v) in created_trainable],
            [v for v in variables if id(v) not in created_trainable],
        )

    def build(self, model: Any, embedding_shape: tuple) -> None:
        """Non-trainable copies of the online encoder's and projector's state."""
        self.key_variables = []
        # id of an online variable -> index of its key copy: the copies stay
        # matched if a layer is frozen or unfrozen after build.
        self._key_index = {}
        for layer in self._online_layers(model):
            weights, other = self._state_of(layer)
            for kind, variables in (("trainable", weights), ("non_trainable", other)):
                for index, variable in enumerate(variables):
                    # The copy starts as the online variable through its
                    # initializer: an `assign` here would be dropped when
                    # `fit` builds the model inside a stateless (symbolic)
                    # scope, leaving the key network at zero. autocast=False:
                    # the EMA is kept and assigned in the variable dtype
                    # under a mixed precision policy.
                    key = self.add_weight(
                        shape=variable.shape,
                        dtype=variable.dtype,
                        initializer=_CopyOf(variable),
                        trainable=False,
                        autocast=False,
                        name=f"key_{layer.name}_{kind}_{index}",
                    )
                    self._key_index[id(variable)] = len(self.key_variables)
                    self.key_variables.append(key)
        updater = _WithoutAutocast(lambda m: self._ema_update(model, m), name="key_network_update")
        # a plain function attribute: the helper layer stays out of the
        # tracked layers (and of the saved state)
        self._run_ema_update = lambda momentum: updater(momentum)

    def _key_state(self, layer: keras.layers.Layer) -> tuple[list, list]:
        """The key copies of an online layer's (trainable, non-trainable) variables."""
        copies, index = self.key_variables, self._key_index
        return (
            [copies[index[id(v)]] for v in layer.trainable_variables],
            [copies[index[id(v)]] for v in layer.non_trainable_variables],
        )

    def key_pairs(self, model: Any) -> list[tuple[keras.Variable, keras.Variable]]:
        """`(key copy, online variable)` of every online weight, frozen or not.

        The EMA runs over these pairs, as MoCo's runs over all parameters:
        the copy of a layer frozen during training converges to its frozen
        weights instead of keeping the value it had. The other copies
        (batch norm statistics, random seeds) follow the key network's own
        batches.

        Example:

        ```python
        for key, online in model.method.key_pairs(model):
            print(key.path, online.path)
        ```
        """
        copies, index = self.key_variables, self._key_index
        return [
            (copies[index[id(v)]], v)
            for layer in self._online_layers(model)
            for v in self._state_of(layer)[0]
        ]

    def current_momentum(self, model: Any) -> Any:
        """The EMA momentum of this step (a schedule is read at `training_steps`).

        A schedule's value outside `[0, 1]` becomes NaN, so the key network
        and the loss turn NaN instead of training on it (no clipping).
        """
        if callable(self.momentum):
            momentum = ops.cast(self.momentum(model.training_steps.value), "float32")
            return ops.where((momentum >= 0.0) & (momentum <= 1.0), momentum, float("nan"))
        return self.momentum

    def _ema_update(self, model: Any, momentum: Any) -> Any:
        """`theta_k <- m theta_k + (1 - m) theta_q` (run without autocast)."""
        for key, online in self.key_pairs(model):
            online_value = ops.stop_gradient(ops.cast(online.value, key.dtype))
            momentum_value = ops.cast(momentum, key.dtype)
            key.assign(momentum_value * key.value + (1.0 - momentum_value) * online_value)
        return momentum

    def key_forward(self, model: Any, views: Any, training: bool) -> Any:
        """Flat key embeddings `(N V, d)` of flat views (no gradient).

        In training the key network's non-trainable state (batch norm
        statistics) is updated; the online layers' is left alone.
        """
        x = views
        for layer in self._online_layers(model):
            trainable, other = self._key_state(layer)
            x, new_other = layer.stateless_call(
                [v.value for v in trainable], [v.value for v in other], x, training=training
            )
            if training:
                for variable, value in zip(other, new_other):
                    variable.assign(value)
        return ops.stop_gradient(x)

    def query_and_key_views(self, model: Any) -> tuple[tuple[int, int], tuple[int, int]]:
        """`((start, stop), (start, stop))`: the views the online network
        embeds (the queries) and those the key network embeds.

        Every view both ways by default (MoCo v3, symmetric MoCo v2).
        """
        return (0, model.num_views), (0, model.num_views)

    def keys_per_sample(self, model: Any) -> int:
        """How many keys the key network embeds per sample."""
        start, stop = self.query_and_key_views(model)[1]
        return stop - start

    def embed(self, model: Any, views: Any, training: bool) -> dict:
        query_range, key_range = self.query_and_key_views(model)
        num_views = model.num_views
        features, embeddings = model.online_forward(
            select_views(views, num_views, *query_range), training=training
        )
        queries = self.predict_queries(embeddings, training=training)
        if training:
            self._run_ema_update(
                ops.convert_to_tensor(self.current_momentum(model), dtype="float32")
            )
        keys = self.key_forward(
            model, select_views(views, num_views, *key_range), training=bool(training)
        )
        num_queries = query_range[1] - query_range[0]
        num_keys = key_range[1] - key_range[0]
        queries, keys = group_rows(queries, num_queries), group_rows(keys, num_keys)
        if self.standardizes(model):
            # before compile (standardize=True): the global batch, the loss's default
            global_batch = getattr(getattr(model, "loss", None), "global_negatives", True)
            queries = standardize_over_batch(queries, global_batch)
            keys = standardize_over_batch(keys, global_batch)
        return {"features": group_rows(features, num_queries), "queries": queries, "keys": keys}

    def predict_queries(self, embeddings: Any, training: bool) -> Any:
        """The queries from the online embeddings (identity; MoCo v3: predictor)."""
        del training
        return embeddings

    # ------------------------------------------------------------- config

    def get_config(self) -> dict:
        config = super().get_config()
        momentum = self.momentum
        config["momentum"] = (
            keras.saving.serialize_keras_object(momentum) if callable(momentum) else momentum
        )
        config["online_weight"] = self.online_weight
        config["standardize"] = self.standardize
        return config

    @classmethod
    def from_config(cls, config: dict) -> "MomentumMethod":
        # deserialisation consumes nested configs
        config = {**cls.LEGACY_DEFAULTS, **copy.deepcopy(config)}
        for key in ("momentum", "predictor"):
            if isinstance(config.get(key), dict):
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


@METHODS.register("mocov2", "moco_v2")
@keras.saving.register_keras_serializable(package=PACKAGE)
class MoCoV2(MomentumMethod):
    """MoCo v2: a momentum (key) network and a FIFO queue of negatives.

    As facebookresearch/moco's `MoCo.forward`: the online network embeds
    view 0 of each sample (the query `q_i`), the key network view 1 (the
    key `k_i`); the positive of `q_i` is `k_i`, its negatives the
    `queue_size` keys of the queue and nothing else (with InfoNCE, the
    cross-entropy of `[q.k_i, q.queue] / T` with label 0). After each
    training step the `N` keys of the batch (the global batch under data
    parallelism) overwrite the oldest entries of the queue, which starts
    as `queue_size` random unit vectors (`initial_queue="random"`, as the
    reference) or empty (`"empty"`: masked until written; the `uniformity`
    and `mi_estimate` metrics skip the steps without negatives). With
    `V > 2` views, view 0 is the query and views `1 .. V-1` its keys
    (every one a positive, all enqueued, sample-major).

    `symmetric=True` is the symmetrised form: every view is a query (the
    online network embeds them all), query `(i, v)` has positives the keys
    `(i, w)`, `w != v`, and the keys of every view are enqueued (for the
    same `queue_size`, the queue covers half as many past batches).

    With f-MICL the queries and keys are standardised over the batch
    (`standardize`, see `MomentumMethod`; docs/fmicl-math.md section 4.5).

    `queue_size` must hold the keys of a batch (`batch_size` times the key
    views, `num_views - 1`, or `num_views` with `symmetric=True`):
    checked before training for in-memory data and for batches of static
    size; a batch of a size unknown when the step is traced (a `tf.data`
    pipeline batched with `drop_remainder=False`, under TensorFlow) that is
    too large makes the loss NaN.

    Args:
        momentum: EMA momentum of the key network, in `[0, 1)`, or a
            schedule (see `MomentumMethod`). Defaults to 0.99.
        queue_size: number of keys in the queue, `K >= 1`. Defaults to
            65536 (MoCo's); small data sets need a few batches' worth.
        symmetric: False (default): MoCo v2's one direction, above; True:
            every view anchors and is enqueued.
        initial_queue: `"random"` (default: random unit vectors, MoCo's)
            or `"empty"`.
        **kwargs: `online_weight` (see `MomentumMethod`; needs
            `symmetric=True`) and `keras.layers.Layer` arguments.

    Example:

    ```python
    method = keras_fmicl.methods.MoCoV2(momentum=0.99, queue_size=4096)
    head = keras_fmicl.ProjectionHead(256, 64, output_batch_norm=True)
    model = keras_fmicl.ContrastiveModel(encoder, method=method,
                                         projector=head, augmenter=augmenter)
    ```

    Reference:
        He, Fan, Wu, Xie, Girshick. "Momentum Contrast for Unsupervised
        Visual Representation Learning", CVPR 2020; Chen, Fan, Girshick,
        He. "Improved Baselines with Momentum Contrastive Learning", 2020.
    """

    mode: ClassVar[str] = "moco"
    LEGACY_DEFAULTS: ClassVar[dict] = {
        **MomentumMethod.LEGACY_DEFAULTS, "symmetric": True, "initial_queue": "empty",
    }

    def __init__(
        self,
        momentum: Any = 0.99,
        queue_size: int = 65536,
        symmetric: bool = False,
        initial_queue: str = "random",
        **kwargs,
    ):
        super().__init__(momentum=momentum, **kwargs)
        self.queue_size = check_integer("queue_size", queue_size, 1)
        self.symmetric = check_bool("symmetric", symmetric)
        self.initial_queue = check_choice("initial_queue", initial_queue, ("random", "empty"))
        self._load_error = None
        if not self.symmetric and self.online_weight > 0.0:
            raise ValueError(
                "`online_weight` > 0 contrasts the queries of every view among "
                "themselves: it needs `symmetric=True` (MoCo v2's one direction "
                f"embeds one view online). Received: online_weight={self.online_weight}, "
                "symmetric=False"
            )

    def query_and_key_views(self, model: Any) -> tuple[tuple[int, int], tuple[int, int]]:
        if self.symmetric:
            return super().query_and_key_views(model)
        return (0, 1), (1, model.num_views)

    def build(self, model: Any, embedding_shape: tuple) -> None:
        super().build(model, embedding_shape)
        random = self.initial_queue == "random"
        self.queue = self.add_weight(
            shape=(self.queue_size, embedding_shape[-1]),
            dtype="float32",
            initializer=_RandomUnitRows() if random else "zeros",
            trainable=False,
            name="queue",
        )
        self.queue_pointer = self.add_weight(
            shape=(), dtype="int32", initializer="zeros", trainable=False, name="queue_pointer"
        )
        self.queue_count = self.add_weight(
            shape=(),
            dtype="int32",
            initializer=keras.initializers.Constant(self.queue_size if random else 0),
            trainable=False,
            name="queue_count",
        )

    def load_own_variables(self, store: Any) -> None:
        """Loads the key network and the queue; `ValueError` naming
        `queue_size` when the saved queue has another size."""
        index = str(len(self.key_variables))  # the queue follows the key copies
        keys = list(store.keys()) if store is not None else []
        if not keys and self._load_error is not None:
            # Keras tries the method's other (empty) path after a failure:
            # keep the message of the first
            raise self._load_error
        self._load_error = None
        if index in keys:
            saved = tuple(store[index].shape)
            if saved != tuple(self.queue.shape):
                self._load_error = ValueError(
                    f"The saved {type(self).__name__} has a queue of shape {saved}, "
                    f"this one of shape {tuple(self.queue.shape)} (queue_size, embedding "
                    "size): build the model with the queue_size (and projector) it was "
                    f"saved with, queue_size={saved[0] if saved else None}. Received: "
                    f"queue_size={self.queue_size}"
                )
                raise self._load_error
        super().load_own_variables(store)

    def key_contrast(self, model: Any, outputs: dict) -> tuple[Any, dict]:
        per_sample, metrics = contrastive_loss(model).contrast(
            outputs["queries"],
            keys=outputs["keys"],
            queue=self.queue.value,
            queue_mask=ops.arange(self.queue_size, dtype="int32") < self.queue_count.value,
            in_batch_negatives=False,
            return_metrics=True,
            key_views="other" if self.symmetric else "all",
        )
        # Until the queue holds keys there are no negatives: no uniformity
        # to measure, and the bound has no negative term.
        has_negatives = ops.cast(self.queue_count.value > 0, "float32")
        metrics = dict(metrics)
        for name in ("uniformity", "mi_estimate"):
            metrics[name] = (metrics[name], has_negatives)
        return per_sample, metrics

    def after_step(self, model: Any, outputs: dict) -> Any:
        """Writes the keys of this batch (sample-major) over the oldest entries.

        Under data parallelism with global negatives the queue receives the
        keys of the global batch, identically on every replica. The keys are
        written after the loss of the step: a step contrasts its queries
        with the queue of the previous steps.

        Returns:
            `0.0`, or NaN when a batch of unknown size (at tracing) turns
            out to hold more keys than the queue.
        """
        keys = outputs["keys"]
        flat = ops.reshape(ops.stop_gradient(keys), (-1, self.queue.shape[-1]))
        if contrastive_loss(model).global_negatives:
            flat = utils_distributed.all_gather(flat)
        count = flat.shape[0]
        if count is not None:
            self._check_keys(count)
        overflow = 0.0
        if count is None:
            if not getattr(model, "batch_size_checked", False):
                model.warn_once(
                    "unknown_batch_size",
                    "The batch size is unknown when the training step is traced "
                    "(e.g. a tf.data pipeline batched with drop_remainder=False, "
                    "or a PyDataset or generator under TensorFlow), "
                    f"so `queue_size` ({self.queue_size}) cannot be checked "
                    "against the keys of a batch before training: a batch of "
                    "more than queue_size // keys per sample = "
                    f"{self.queue_size // self.keys_per_sample(model)} samples makes the loss "
                    "NaN. Batch with drop_remainder=True to have it checked "
                    "before training.",
                )
            count = ops.shape(flat)[0]
            overflow = nan_unless(count <= self.queue_size)
        pointer = self.queue_pointer.value
        positions = (pointer + ops.arange(count, dtype="int32")) % self.queue_size
        self.queue.assign(
            ops.scatter_update(self.queue.value, positions[:, None], ops.cast(flat, self.queue.dtype))
        )
        self.queue_pointer.assign((pointer + count) % self.queue_size)
        self.queue_count.assign(ops.minimum(self.queue_count.value + count, self.queue_size))
        return overflow

    def _check_keys(self, count: int) -> None:
        if count > self.queue_size:
            raise ValueError(
                f"`queue_size` ({self.queue_size}) must be at least the number of "
                f"keys of a batch (batch size x keys per sample = {count}). Received: "
                f"queue_size={self.queue_size}"
            )

    def check_batch_size(self, model: Any, batch_size: int) -> None:
        super().check_batch_size(model, batch_size)
        self._check_keys(batch_size * self.keys_per_sample(model))

    def get_config(self) -> dict:
        config = super().get_config()
        config["queue_size"] = self.queue_size
        config["symmetric"] = self.symmetric
        config["initial_queue"] = self.initial_queue
        return config


@METHODS.register("moco_v3")
@keras.saving.register_keras_serializable(package=PACKAGE)
class MoCoV3(MomentumMethod):
    """MoCo v3: a momentum (key) network, a predictor, in-batch keys.

    The queries are the online projections through the `predictor`; query
    `(i, v)` has positives the keys `(i, w)`, `w != v`, and negatives the
    keys `(j, w)`, `j != i`, `w != v`, of the batch (for two views MoCo
    v3's symmetrised loss). MoCo v3's projector ends in a batch norm
    without scale and offset: `keras_fmicl.ProjectionHead(...,
    num_layers=3, output_batch_norm=True)`.

    Args:
        momentum: EMA momentum of the key network, in `[0, 1)`, or a
            schedule such as `keras_fmicl.CosineMomentum(0.99, total_steps)`
            (MoCo v3's). Defaults to 0.99.
        predictor: prediction head applied to the online projection,
            e.g. `keras_fmicl.PredictionHead(hidden_dim, projection_dim)`;
            `None` contrasts the projections themselves. Trained with the
            model and saved with it.
        **kwargs: `online_weight` (see `MomentumMethod`) and
            `keras.layers.Layer` arguments.

    Example:

    ```python
    method = keras_fmicl.methods.MoCoV3(
        momentum=keras_fmicl.CosineMomentum(0.99, total_steps),
        predictor=keras_fmicl.PredictionHead(256, 64))
    model = keras_fmicl.ContrastiveModel(
        encoder, method=method, augmenter=augmenter,
        projector=keras_fmicl.ProjectionHead(256, 64, num_layers=3, output_batch_norm=True))
    ```

    Reference:
        Chen, Xie, He. "An Empirical Study of Training Self-Supervised
        Vision Transformers", ICCV 2021.
    """

    mode: ClassVar[str] = "mocov3"

    def __init__(self, momentum: Any = 0.99, predictor: keras.layers.Layer | None = None, **kwargs):
        super().__init__(momentum=momentum, **kwargs)
        if predictor is not None and not isinstance(predictor, keras.layers.Layer):
            raise ValueError(
                "`predictor` must be a Keras layer (e.g. keras_fmicl.PredictionHead) "
                f"or None. Received: predictor={predictor!r}"
            )
        self.predictor = predictor

    def build(self, model: Any, embedding_shape: tuple) -> None:
        if self.predictor is not None:
            if not self.predictor.built:
                self.predictor.build(embedding_shape)
            shape = tuple(
                self.predictor.compute_output_spec(keras.KerasTensor(embedding_shape)).shape
            )
            if shape[1:] != tuple(embedding_shape)[1:]:
                raise ValueError(
                    "The `predictor` must map the projector's embeddings to queries of "
                    "the same size, which are contrasted with the keys (embeddings of "
                    f"the key network): projector output size {embedding_shape[-1]}, "
                    f"predictor output size {shape[-1]}. Give the predictor "
                    f"{embedding_shape[-1]} outputs, e.g. keras_fmicl.PredictionHead("
                    f"hidden_dim, {embedding_shape[-1]}). Received: predictor output "
                    f"shape {shape} for embeddings of shape {tuple(embedding_shape)}"
                )
        super().build(model, embedding_shape)

    def predict_queries(self, embeddings: Any, training: bool) -> Any:
        if self.predictor is None:
            return embeddings
        return self.predictor(embeddings, training=training)

    def get_config(self) -> dict:
        config = super().get_config()
        config["predictor"] = (
            None if self.predictor is None else keras.saving.serialize_keras_object(self.predictor)
        )
        return config
