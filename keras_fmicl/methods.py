"""Training methods of `ContrastiveModel`: SimCLR, MoCo v2, MoCo v3.

A method is the part of contrastive training that differs from one paper
to the next: how the views of a batch are made, whether a momentum (key)
network embeds them, what the negatives are (the batch, a queue, none),
and what happens after the loss (a queue is written). `ContrastiveModel`
owns the rest: the online encoder and projector, the optimizer step, the
metrics, the online probe, the NaN guards, saving and resuming.

| method                               | views              | negatives of query `(i, v)`           |
|--------------------------------------|--------------------|---------------------------------------|
| `SimCLR()`                           | augmenter          | the other samples' embeddings         |
| `MoCoV2(momentum, queue_size)`       | augmenter          | a FIFO queue of previous steps' keys  |
| `MoCoV3(momentum, predictor)`        | augmenter          | keys `(j, w)`, `j != i`, `w != v`     |
| `SimCSE()`                           | dropout, same input | the other samples' embeddings        |
| `SupervisedSimCSE()`                 | given: (premise, entailment[, contradiction]) | the other samples' embeddings, and every contradiction |

```python
model = keras_fmicl.ContrastiveModel(
    encoder, method=keras_fmicl.methods.MoCoV2(momentum=0.99, queue_size=4096),
    projector=keras_fmicl.ProjectionHead(256, 64, output_batch_norm=True), augmenter=augmenter)
```

A method is a `keras.layers.Layer` (so that its state, a key network, a
queue, a predictor, is tracked, trained, saved and restored with the
model) but it is never called as a layer: `ContrastiveModel` calls the
hooks below, each with the model as first argument. A method object
belongs to one model.

The interface (the hooks and when the model calls them; `Method` gives
every hook a default, the SimCLR behaviour, so a new method overrides
only what differs):

| hook | called by the model | default |
|---|---|---|
| `view_shape(model, input_shape) -> shape` | `build`: the shape (structure) of one batch of views, batch `None` | views given, or drawn by the augmenter |
| `build(model, embedding_shape)` | `build`, once, after the online layers are built | no state |
| `draw_views(model, inputs, training) -> views` | `call`: flat views `(N V, ...)`, sample-major (row `i V + v` is view `v` of sample `i`), any nested structure | `(N, V, ...)` given, else `V` augmenter draws |
| `embed(model, views, training) -> dict` | `call`: `(N, V, ...)` outputs `"features"` (probe), `"queries"` (anchors), optionally `"keys"` | online encoder + projector |
| `loss(model, outputs) -> (per_sample, metrics)` | `compute_loss`: `(N,)` losses and `alignment` / `uniformity` / `mi_estimate` (each a scalar or `(scalar, weight)`; a missing one is not updated) | `model.loss.contrast(queries, keys=...)` |
| `after_step(model, outputs) -> term` | `compute_loss`, training steps only, after `loss`: a term added to the loss (`0.0`, or NaN for a problem found only in the traced step) | `0.0` |
| `check_batch_size(model, batch_size)` | `fit` on in-memory data, before training (`ValueError`) | nothing |
| `check_loss(loss) -> loss` | `compile` | a `keras_fmicl.ContrastiveLoss` |

The model side the hooks may use: `model.encoder`, `model.projector`,
`model.augmenter`, `model.num_views`, `model.loss`, `model.training_steps`
(a counter of training steps, incremented after `embed`),
`model.online_forward(views, training) -> (features, embeddings)` (flat
`(N V, ...)` rows) and `model.group_views(x)` (flat rows to `(N, V, d)`).

Views are any structure: images `(N, H, W, C)`, views already drawn
`(N, V, H, W, C)` or `{"views": ...}`, a dict of token ids. Only images
get image handling: the augmenter draws their views, and images of an
integer dtype are cast to `float32` (not rescaled). Everything else
reaches the encoder as it is: integer token ids stay integers.
`repeat_views` gives the views of a method whose views come from dropout
(the same input `V` times through the online network in training mode).

For example, a method whose views differ only through dropout (SimCSE's
unsupervised setting) is:

```python
@keras.saving.register_keras_serializable(package="my_package")
class DropoutViews(keras_fmicl.methods.SimCLR):
    mode = "dropout_views"

    def view_shape(self, model, input_shape):
        return keras_fmicl.methods.map_shapes(lambda s: (None,) + s[1:], input_shape)

    def draw_views(self, model, inputs, training):
        return keras_fmicl.methods.repeat_views(inputs, model.num_views)
```

A method without negatives (BYOL-style) subclasses `MoCoV3` (key network,
EMA, predictor) and overrides `loss` (e.g. a cosine regression of the
predictor output on the stop-gradient key of the other view) and
`check_loss` (to accept `loss=None` in `compile`). `tests/test_methods.py`
trains both on every backend.

Reference:
    Chen, Kornblith, Norouzi, Hinton. "A Simple Framework for Contrastive
    Learning of Visual Representations", ICML 2020 (SimCLR).
    He, Fan, Wu, Xie, Girshick. "Momentum Contrast for Unsupervised Visual
    Representation Learning", CVPR 2020; Chen, Fan, Girshick, He, "Improved
    Baselines with Momentum Contrastive Learning", 2020 (MoCo v2).
    Chen, Xie, He. "An Empirical Study of Training Self-Supervised Vision
    Transformers", ICCV 2021 (MoCo v3).
"""

from __future__ import annotations

import copy
import numbers
from typing import Any, ClassVar

import keras
from keras import ops

from keras_fmicl import distributed
from keras_fmicl.contrast import compute_dtype
from keras_fmicl.heads import ProjectionHead
from keras_fmicl.losses import ContrastiveLoss, FMICLLoss
from keras_fmicl.validation import check_bool
from keras_fmicl.validation import check_choice
from keras_fmicl.validation import check_integer

_PACKAGE = "keras_fmicl"
VIEWS_KEY = "views"
_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


# ------------------------------------------------------------------ helpers


def _is_shape(value: Any) -> bool:
    """Whether `value` is one shape (a tuple of ints / None), not a structure."""
    return isinstance(value, (tuple, list)) and all(
        d is None or (isinstance(d, numbers.Integral) and not isinstance(d, bool)) for d in value
    )


def map_shapes(fn, shapes: Any) -> Any:
    """`fn` applied to every shape of a (possibly nested) structure of shapes.

    A shape is a tuple of ints and `None`; dicts, lists and tuples of shapes
    are structures (what `ContrastiveModel.build` receives for nested
    inputs).

    Example:

    ```python
    map_shapes(lambda s: (None,) + s[1:], {"token_ids": (8, 16)})  # {"token_ids": (None, 16)}
    ```
    """
    if _is_shape(shapes):
        return fn(tuple(shapes))
    if isinstance(shapes, dict):
        return {key: map_shapes(fn, value) for key, value in shapes.items()}
    if isinstance(shapes, (tuple, list)):
        return type(shapes)(map_shapes(fn, value) for value in shapes)
    raise ValueError(f"Expected a shape or a structure of shapes. Received: {shapes!r}")


def encoder_input_rank(encoder: keras.layers.Layer) -> int | None:
    """The rank of a single-input functional encoder's input, else `None`."""
    inputs = getattr(encoder, "inputs", None)
    if inputs and len(inputs) == 1:
        return len(inputs[0].shape)
    return None


def _holds_views(model: Any, shape: tuple) -> bool:
    """Whether a single tensor of this shape holds views `(N, V, ...)`."""
    rank = encoder_input_rank(model.encoder)
    if rank is not None:
        return len(shape) == rank + 1
    return model.augmenter is None


def _is_float(x: Any) -> bool:
    return keras.backend.standardize_dtype(x.dtype) in _FLOAT_DTYPES


def as_float_images(x: Any) -> Any:
    """Images `(N, H, W, C)` of an integer dtype as `float32` (no rescaling);
    anything else (floats, token ids, other ranks) unchanged."""
    if hasattr(x, "shape") and len(x.shape) == 4 and not _is_float(x):
        return ops.cast(x, "float32")
    return x


def repeat_views(inputs: Any, num_views: int) -> Any:
    """Each sample `num_views` times in a row: `(N, ...) -> (N V, ...)`.

    The views of a method whose views differ only through dropout (SimCSE):
    the same input passed `num_views` times through the online network in
    training mode. Works on any structure (a dict of token ids, ...);
    dtypes are kept.

    Args:
        inputs: a tensor or nested structure of `(N, ...)` tensors.
        num_views: `V >= 1`.

    Returns:
        The same structure of `(N V, ...)` tensors, sample-major (row
        `i V + v` is sample `i`).

    Example:

    ```python
    ids = {"token_ids": np.array([[1, 2], [3, 4]])}
    repeat_views(ids, 2)["token_ids"]  # [[1, 2], [1, 2], [3, 4], [3, 4]]
    ```
    """
    num_views = check_integer("num_views", num_views, 1)
    return keras.tree.map_structure(lambda x: ops.repeat(x, num_views, axis=0), inputs)


def _tail_shape(x: Any, start: int) -> tuple:
    """`x.shape[start:]`, each unknown dimension read from the tensor."""
    dynamic = ops.shape(x)
    return tuple(d if d is not None else dynamic[k + start] for k, d in enumerate(x.shape[start:]))


def select_views(views: Any, num_views: int, start: int, stop: int) -> Any:
    """Views `start .. stop - 1` of flat sample-major views: `(N V, ...) -> (N (stop - start), ...)`.

    Works on any structure (a dict of token ids, ...); the rows stay
    sample-major. All the views are returned as they are.

    Example:

    ```python
    select_views(x, 2, 0, 1)   # view 0 of each sample: x[0::2]
    ```
    """
    if (start, stop) == (0, num_views):
        return views

    def select(x):
        tail = _tail_shape(x, 1)
        grouped = ops.reshape(x, (-1, num_views) + tail)[:, start:stop]
        return ops.reshape(grouped, (-1,) + tail)

    return keras.tree.map_structure(select, views)


STANDARDIZE_EPSILON = 1e-5


def standardize_over_batch(x: Any, global_batch: bool = True) -> Any:
    """`(N, V, d)` embeddings with each coordinate at mean 0, variance 1 over the `N V` rows.

    `(x - mean) / sqrt(var + 1e-5)`, the statistics over the batch's rows
    (every view together), computed in float32 at least: a batch norm
    without scale and offset. With `global_batch`, under data parallelism
    the moments are those of the global batch (summed over the replicas,
    differentiably), so that the result is that of one device.

    Example:

    ```python
    z = standardize_over_batch(keras.random.normal((8, 2, 16)) + 3.0)  # mean 0
    ```
    """
    dtype = x.dtype
    x = ops.cast(x, compute_dtype(x))  # half precision in float32
    count = ops.cast(ops.shape(x)[0] * ops.shape(x)[1], x.dtype)

    def batch_sum(values):  # over the rows, and the replicas with `global_batch`
        total = ops.sum(values, axis=(0, 1))
        return distributed.cross_replica_sum(total) if global_batch else total

    if global_batch:
        count = count * distributed.num_replicas()
    # two passes (mean, then the mean square of the centred values): no
    # cancellation when the mean is large against the spread
    centred = x - batch_sum(x) / count
    variance = batch_sum(ops.square(centred)) / count
    return ops.cast(centred * ops.rsqrt(variance + STANDARDIZE_EPSILON), dtype)


def group_rows(x: Any, count: int) -> Any:
    """`(N C, d)` rows, sample-major, to `(N, C, d)` (keeping d static)."""
    dim = x.shape[-1]
    return ops.reshape(x, (-1, count, -1 if dim is None else dim))


def flatten_views(model: Any, views: Any) -> Any:
    """`(N, V, ...)` views (any structure) to flat `(N V, ...)` rows.

    Raises:
        ValueError: `V` is not `model.num_views`.
    """

    def flatten(x):
        if len(x.shape) < 2 or x.shape[1] != model.num_views:
            raise ValueError(
                f"The inputs hold {x.shape[1] if len(x.shape) > 1 else None} views "
                f"per sample but the model has num_views={model.num_views}. "
                f"Received: views of shape {tuple(x.shape)}"
            )
        return as_float_images(ops.reshape(x, (-1,) + tuple(x.shape[2:])))

    return keras.tree.map_structure(flatten, views)


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


def _nan_unless(condition: Any) -> Any:
    """`0.0` where `condition` holds, else NaN (added to a loss to poison it)."""
    return ops.where(condition, 0.0, float("nan"))


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


# ------------------------------------------------------------------ methods


@keras.saving.register_keras_serializable(package=_PACKAGE)
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
        if _is_shape(input_shape) and _holds_views(model, tuple(input_shape)):
            return (None,) + tuple(input_shape[2:])
        augmenter = self._augmenter(model, input_shape)
        specs = map_shapes(keras.KerasTensor, input_shape)
        if not augmenter.built:
            augmenter.build(input_shape)
        spec = augmenter.compute_output_spec(specs)
        return keras.tree.map_structure(lambda s: (None,) + tuple(s.shape[1:]), spec)

    def _augmenter(self, model: Any, input_shape: Any) -> keras.layers.Layer:
        if model.augmenter is None:
            shape = tuple(input_shape) if _is_shape(input_shape) else input_shape
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
        if hasattr(inputs, "shape") and _holds_views(model, tuple(inputs.shape)):
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
        return _contrastive_loss(model).contrast(
            outputs["queries"], keys=outputs.get("keys"), return_metrics=True
        )

    def after_step(self, model: Any, outputs: dict) -> Any:
        """Runs after the loss of a training step; returns a term for the loss."""
        del model, outputs
        return 0.0

    def check_batch_size(self, model: Any, batch_size: int) -> None:
        """Raises a `ValueError` if batches of `batch_size` samples cannot train."""
        del model, batch_size

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


def _contrastive_loss(model: Any) -> ContrastiveLoss:
    loss = getattr(model, "loss", None)
    if not isinstance(loss, ContrastiveLoss):
        raise ValueError(
            "Compile the model with a contrastive loss first: "
            "model.compile(optimizer=..., loss=keras_fmicl.FMICLLoss(...))."
        )
    return loss


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SimCLR(Method):
    """SimCLR: the views of a batch contrasted with each other.

    Query `(i, v)` has positives the other views of sample `i` and
    negatives every view of the other samples of the batch (the global
    batch under data parallelism). No key network, no state.

    Example:

    ```python
    model = keras_fmicl.ContrastiveModel(
        encoder, method=keras_fmicl.methods.SimCLR(),
        projector=keras_fmicl.ProjectionHead(256, 64), augmenter=augmenter)
    ```

    Reference:
        Chen, Kornblith, Norouzi, Hinton. "A Simple Framework for
        Contrastive Learning of Visual Representations", ICML 2020.
    """

    mode: ClassVar[str] = "simclr"


@keras.saving.register_keras_serializable(package=_PACKAGE)
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

    def view_shape(self, model: Any, input_shape: Any) -> Any:
        self._refuse_augmenter(model)
        return map_shapes(lambda shape: (None,) + tuple(shape[1:]), input_shape)

    def draw_views(self, model: Any, inputs: Any, training: bool) -> Any:
        return repeat_views(inputs, model.num_views)

    def loss(self, model: Any, outputs: dict) -> tuple[Any, dict]:
        """SimCSE's pairs (first view against the others), or SimCLR's (`symmetric`)."""
        loss = _contrastive_loss(model)
        negatives = outputs.get(HARD_NEGATIVES)
        if negatives is not None and loss.global_negatives:
            negatives = distributed.all_gather(negatives)
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
    return as_float_images(ops.reshape(x, (-1,) + _tail_shape(x, 2)))


@keras.saving.register_keras_serializable(package=_PACKAGE)
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

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # columns of the batch being embedded, set by `draw_views` (static)
        self._columns = None

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

    def view_shape(self, model: Any, input_shape: Any) -> Any:
        self._refuse_augmenter(model)
        self._num_columns(model, input_shape)
        return map_shapes(lambda shape: (None,) + tuple(shape[2:]), input_shape)

    def draw_views(self, model: Any, inputs: Any, training: bool) -> Any:
        self._refuse_augmenter(model)
        shapes = keras.tree.map_structure(lambda x: tuple(x.shape), inputs)
        self._columns = self._num_columns(model, shapes)
        return keras.tree.map_structure(_merge_columns, inputs)

    def embed(self, model: Any, views: Any, training: bool) -> dict:
        features, embeddings = model.online_forward(views, training=training)
        columns = self._columns or model.num_views
        num_views = model.num_views

        def group(x):
            return ops.reshape(x, (-1, columns, x.shape[-1]))

        features, embeddings = group(features), group(embeddings)
        outputs = {"features": features[:, :num_views], "queries": embeddings[:, :num_views]}
        if columns > num_views:
            outputs[HARD_NEGATIVES] = embeddings[:, num_views]
        return outputs


@keras.saving.register_keras_serializable(package=_PACKAGE)
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
            online = _contrastive_loss(model).contrast(outputs["queries"])
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
            and hasattr(model, "_warn_once")
        ):
            model._warn_once(
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
            for sublayer in layer._flatten_layers(include_self=True, recursive=True)
            for v in sublayer._trainable_variables
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


@keras.saving.register_keras_serializable(package=_PACKAGE)
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

    def key_contrast(self, model: Any, outputs: dict) -> tuple[Any, dict]:
        per_sample, metrics = _contrastive_loss(model).contrast(
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
        if _contrastive_loss(model).global_negatives:
            flat = distributed.all_gather(flat)
        count = flat.shape[0]
        if count is not None:
            self._check_keys(count)
        overflow = 0.0
        if count is None:
            if not getattr(model, "_batch_size_checked", False):
                model._warn_once(
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
            overflow = _nan_unless(count <= self.queue_size)
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


@keras.saving.register_keras_serializable(package=_PACKAGE)
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
        if self.predictor is not None and not self.predictor.built:
            self.predictor.build(embedding_shape)
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


def get(identifier: Any) -> Method:
    """A method from a `Method`, a mode name or a serialized config.

    Args:
        identifier: a `Method`; `"simclr"`, `"moco"` (MoCo v2 with its
            defaults), `"mocov3"`, `"simcse"` or `"supervised_simcse"`; or a
            config dict.

    Example:

    ```python
    keras_fmicl.methods.get("simclr")  # SimCLR()
    ```
    """
    if isinstance(identifier, Method):
        return identifier
    if isinstance(identifier, dict):
        method = keras.saving.deserialize_keras_object(identifier)
        if isinstance(method, Method):
            return method
    if isinstance(identifier, str):
        by_mode = {cls.mode: cls for cls in (SimCLR, SimCSE, SupervisedSimCSE, MoCoV2, MoCoV3)}
        key = identifier.strip().lower()
        if key in by_mode:
            return by_mode[key]()
    raise ValueError(
        "`method` must be a keras_fmicl.methods.Method such as "
        "keras_fmicl.methods.SimCLR(), MoCoV2(momentum=..., queue_size=...) or "
        "MoCoV3(momentum=..., predictor=...), or one of 'simclr', 'moco', "
        f"'mocov3', 'simcse', 'supervised_simcse'. Received: method={identifier!r}"
    )
