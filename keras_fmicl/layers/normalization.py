"""`GlobalBatchNormalization`: batch normalization over the global batch under data parallelism."""

from __future__ import annotations

import keras
from keras import ops

from keras_fmicl.utils import backend_ops
from keras_fmicl.utils.distributed import cross_replica_sum
from keras_fmicl.utils.distributed import num_replicas
from keras_fmicl.utils.distributed import torch_world


@keras.saving.register_keras_serializable(package="keras_fmicl")
class GlobalBatchNormalization(keras.layers.BatchNormalization):
    """Batch normalisation with the moments of the global batch.

    Under `tf.distribute` it is `BatchNormalization(synchronized=True)`;
    under torch.distributed it sums the batch's first and second moments
    over the processes (differentiably); JAX's `keras.distribution` already
    normalises over the global batch; on one device it is plain batch
    normalisation. Same arguments as `keras.layers.BatchNormalization`.
    """

    def __init__(self, **kwargs):
        kwargs.pop("synchronized", None)
        super().__init__(synchronized=backend_ops.backend() == "tensorflow", **kwargs)

    def _moments(self, inputs, mask):
        if mask is not None or backend_ops.backend() != "torch" or torch_world() is None:
            return super()._moments(inputs, mask)
        axes = self._reduction_axes
        count = 1
        for axis in axes:
            count *= inputs.shape[axis]
        local = ops.stack(
            [ops.sum(inputs, axis=axes), ops.sum(ops.square(inputs), axis=axes)], axis=0
        )
        total = cross_replica_sum(local) / float(count * num_replicas())
        mean = total[0]
        variance = ops.relu(total[1] - ops.square(mean))
        return mean, variance

    def get_config(self):
        config = super().get_config()
        config.pop("synchronized", None)
        return config
