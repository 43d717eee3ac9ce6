"""Projection and prediction heads (SimCLR / MoCo v2 / MoCo v3 MLPs)."""

from __future__ import annotations

import keras

from keras_fmicl.layers import normalization
from keras_fmicl.utils.checks import check_bool
from keras_fmicl.utils.checks import check_integer
from keras_fmicl.utils.registry import PACKAGE


@keras.saving.register_keras_serializable(package=PACKAGE)
class ProjectionHead(keras.layers.Layer):
    """The SimCLR / MoCo v3 projection MLP with batch normalisation.

    `num_layers - 1` blocks of `Dense(hidden_dim, use_bias=not batch_norm)
    -> BatchNormalization -> ReLU`, then `Dense(output_dim)`, optionally
    followed by a `BatchNormalization` without scale and offset (MoCo v3's
    projector).

    Args:
        hidden_dim: width of the hidden layers.
        output_dim: dimension of the embedding.
        num_layers: number of Dense layers, `>= 1` (1 is a linear head).
            Defaults to 2 (SimCLR); MoCo v3 uses 3.
        batch_norm: batch normalisation after each hidden Dense layer.
        output_batch_norm: batch normalisation (no scale, no offset) of the
            output, as MoCo v3's projector; `examples/train_cifar.py` uses
            it with MoCo v2 too. Defaults to False.
        synchronized: normalise with the statistics of the global batch
            under data parallelism (`keras_fmicl.distributed.
            GlobalBatchNormalization`: synchronised batch norm under
            `tf.distribute` and torch.distributed; JAX's `keras.distribution`
            sees the global batch anyway). Plain batch norm on one device.
            Defaults to True.

    Example:

    ```python
    head = keras_fmicl.ProjectionHead(hidden_dim=512, output_dim=128)
    embeddings = head(features)  # (N, 128)
    ```
    """

    def __init__(
        self,
        hidden_dim: int,
        output_dim: int,
        num_layers: int = 2,
        batch_norm: bool = True,
        output_batch_norm: bool = False,
        synchronized: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_dim = check_integer("hidden_dim", hidden_dim, 1)
        self.output_dim = check_integer("output_dim", output_dim, 1)
        self.num_layers = check_integer("num_layers", num_layers, 1)
        self.batch_norm = check_bool("batch_norm", batch_norm)
        self.output_batch_norm = check_bool("output_batch_norm", output_batch_norm)
        self.synchronized = check_bool("synchronized", synchronized)
        self.hidden_layers = []
        for index in range(self.num_layers - 1):
            self.hidden_layers.append(
                keras.layers.Dense(
                    self.hidden_dim,
                    use_bias=not self.batch_norm,
                    dtype=self.dtype_policy,
                    name=f"dense_{index}",
                )
            )
            if self.batch_norm:
                self.hidden_layers.append(self._batch_normalization(f"batch_norm_{index}"))
            self.hidden_layers.append(
                keras.layers.ReLU(dtype=self.dtype_policy, name=f"relu_{index}")
            )
        self.output_dense = keras.layers.Dense(
            self.output_dim,
            use_bias=not self.output_batch_norm,
            dtype=self.dtype_policy,
            name="output_dense",
        )
        self.output_norm = (
            self._batch_normalization("output_batch_norm", center=False, scale=False)
            if self.output_batch_norm
            else None
        )

    def _batch_normalization(self, name: str, **kwargs) -> keras.layers.Layer:
        if self.synchronized:
            return normalization.GlobalBatchNormalization(dtype=self.dtype_policy, name=name, **kwargs)
        return keras.layers.BatchNormalization(dtype=self.dtype_policy, name=name, **kwargs)

    def build(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.hidden_layers:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        self.output_dense.build(shape)
        shape = self.output_dense.compute_output_shape(shape)
        if self.output_norm is not None:
            self.output_norm.build(shape)
        self.built = True

    def call(self, inputs, training=None):
        x = inputs
        for layer in self.hidden_layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                x = layer(x, training=training)
            else:
                x = layer(x)
        x = self.output_dense(x)
        if self.output_norm is not None:
            x = self.output_norm(x, training=training)
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "output_dim": self.output_dim,
                "num_layers": self.num_layers,
                "batch_norm": self.batch_norm,
                "output_batch_norm": self.output_batch_norm,
                "synchronized": self.synchronized,
            }
        )
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class PredictionHead(ProjectionHead):
    """The MoCo v3 / BYOL predictor: `Dense -> BatchNorm -> ReLU -> Dense`.

    A `ProjectionHead` with two layers by default and no output
    normalisation, applied to the online projection.

    Args:
        hidden_dim: width of the hidden layer (MoCo v3: 4096; small models:
            a few times the output dimension).
        output_dim: the projection dimension it predicts.
        num_layers: number of Dense layers. Defaults to 2.
        batch_norm: batch normalisation after the hidden layer.
        synchronized: see `ProjectionHead`.

    Example:

    ```python
    model = keras_fmicl.ContrastiveModel(
        encoder,
        method=keras_fmicl.methods.MoCoV3(
            momentum=0.99, predictor=keras_fmicl.PredictionHead(512, 128)),
        projector=keras_fmicl.ProjectionHead(512, 128, num_layers=3, output_batch_norm=True))
    ```
    """

    def __init__(
        self, hidden_dim: int, output_dim: int, num_layers: int = 2, batch_norm: bool = True, **kwargs
    ):
        # MoCo v3's predictor ends in a plain dense layer; False is accepted
        # (a ProjectionHead config), True is not silently dropped
        output_batch_norm = kwargs.pop("output_batch_norm", False)
        if output_batch_norm is not False:
            raise ValueError(
                "`PredictionHead` has no output batch norm (MoCo v3's predictor "
                "ends in a plain dense layer; the projector's may have one). "
                f"Received: output_batch_norm={output_batch_norm!r}"
            )
        # `synchronized` and the base Layer's arguments pass through kwargs
        super().__init__(hidden_dim, output_dim, num_layers, batch_norm, output_batch_norm=False, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.pop("output_batch_norm")
        return config
