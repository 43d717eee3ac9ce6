"""Cross-replica collectives and the data-parallel set-up on TensorFlow, JAX and PyTorch."""

from __future__ import annotations

from typing import Any
from typing import Callable

import keras

from keras_fmicl.utils import backend_ops
from keras_fmicl.utils import keras_private


# ---------------------------------------------------------------- TensorFlow

def _tf_replica_context():
    import tensorflow as tf

    if not tf.distribute.has_strategy():
        return None
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync <= 1:
        return None
    return context


def under_tf_strategy() -> bool:
    """Whether a `tf.distribute` strategy is in scope (TensorFlow backend), whatever its replica count."""
    if backend_ops.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return tf.distribute.has_strategy()


# -------------------------------------------------------------------- torch

def torch_world():
    """`(rank, world_size)` of an initialised torch.distributed group, else None."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    world_size = dist.get_world_size()
    if world_size <= 1:
        return None
    return dist.get_rank(), world_size


_TORCH_FUNCTIONS = {}


def _torch_functions():
    """Autograd-aware collectives, built on first use (torch imported lazily)."""
    if _TORCH_FUNCTIONS:
        return _TORCH_FUNCTIONS
    import torch
    import torch.distributed as dist

    class AllGather(torch.autograd.Function):
        """Concatenates every rank's tensor along axis 0.

        Backward: the upstream gradients of all ranks are summed and each
        rank receives the rows of its own slice.
        """

        @staticmethod
        def forward(ctx, tensor):
            rank, world_size = dist.get_rank(), dist.get_world_size()
            tensor = tensor.contiguous()
            parts = [torch.empty_like(tensor) for _ in range(world_size)]
            dist.all_gather(parts, tensor)
            ctx.rank, ctx.rows = rank, tensor.shape[0]
            return torch.cat(parts, dim=0)

        @staticmethod
        def backward(ctx, grad):
            grad = grad.contiguous().clone()
            dist.all_reduce(grad, op=dist.ReduceOp.SUM)
            return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]

    class AllReduceSum(torch.autograd.Function):
        """Sum over ranks; the gradient of a sum is the sum of the gradients."""

        @staticmethod
        def forward(ctx, tensor):
            tensor = tensor.contiguous().clone()
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            return tensor

        @staticmethod
        def backward(ctx, grad):
            grad = grad.contiguous().clone()
            dist.all_reduce(grad, op=dist.ReduceOp.SUM)
            return grad

    _TORCH_FUNCTIONS.update(all_gather=AllGather.apply, all_reduce_sum=AllReduceSum.apply)
    return _TORCH_FUNCTIONS


# ------------------------------------------------------------------ public

def num_replicas() -> int:
    """Number of replicas whose local batches make up the global batch.

    1 on a single device and under JAX's `keras.distribution` (whose step
    already sees the global batch).
    """
    backend = backend_ops.backend()
    if backend == "tensorflow":
        context = _tf_replica_context()
        return 1 if context is None else int(context.num_replicas_in_sync)
    if backend == "torch":
        world = torch_world()
        return 1 if world is None else world[1]
    return 1


def replica_index() -> Any:
    """Index of this replica in the global batch (0 on a single device)."""
    backend = backend_ops.backend()
    if backend == "tensorflow":
        context = _tf_replica_context()
        return 0 if context is None else context.replica_id_in_sync_group
    if backend == "torch":
        world = torch_world()
        return 0 if world is None else world[0]
    return 0


def all_gather(x: Any) -> Any:
    """Concatenates the replicas' `x` along axis 0, in replica order.

    The gradient of the result reaches each replica's own rows, summed over
    every replica that used them: the loss of the global batch is the sum of
    the replicas' losses, so each embedding gets the gradient of all the
    anchors it was a negative of. The identity on a single device.
    """
    return _across_replicas(x, lambda context: context.all_gather(x, axis=0), "all_gather")


def cross_replica_sum(x: Any) -> Any:
    """Sum of `x` over the replicas (differentiable); the identity alone."""

    def tf_sum(context):
        import tensorflow as tf

        return context.all_reduce(tf.distribute.ReduceOp.SUM, x)

    return _across_replicas(x, tf_sum, "all_reduce_sum")


def _across_replicas(x: Any, tf_op: Callable[[Any], Any], torch_function: str) -> Any:
    """`tf_op(replica context)` or the named torch collective of `x`; `x` on one device or JAX."""
    backend = backend_ops.backend()
    if backend == "tensorflow":
        context = _tf_replica_context()
        return x if context is None else tf_op(context)
    if backend == "torch" and torch_world() is not None:
        return _torch_functions()[torch_function](x)
    return x


def scale_loss(loss: Any) -> Any:
    """The loss a replica returns so that the summed gradients are the global ones.

    Under `tf.distribute` the replicas' gradients are summed, so each returns
    its local mean divided by the number of replicas (Keras' own convention,
    undone for the loss it reports). Elsewhere the loss is unchanged: JAX
    sees the global batch, and under torch.distributed `average_gradients`
    averages.
    """
    if backend_ops.backend() == "tensorflow":
        replicas = num_replicas()
        if replicas > 1:
            return loss * (1.0 / replicas)
    return loss


def average_gradients(gradients: list) -> list:
    """Averages gradients over torch.distributed ranks (in place, one collective)."""
    if backend_ops.backend() != "torch" or torch_world() is None:
        return gradients
    import torch
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors
    from torch._utils import _unflatten_dense_tensors

    present = [g for g in gradients if g is not None]
    if not present:
        return gradients
    flat = _flatten_dense_tensors(present)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    with torch.no_grad():
        for gradient, synced in zip(present, _unflatten_dense_tensors(flat, present)):
            gradient.copy_(synced)
    return gradients


def synchronize_optimizer(optimizer: keras.optimizers.Optimizer) -> None:
    """Makes `optimizer` average its gradients over torch.distributed ranks.

    Keras' torch trainer computes each process's gradients and calls
    `optimizer.apply`; this wraps that call (once) so that every process
    applies the mean gradient and the weights stay identical. A no-op on
    other backends and outside torch.distributed.
    """
    if backend_ops.backend() != "torch" or torch_world() is None:
        return
    if getattr(optimizer, "_keras_fmicl_synchronized", False):
        return
    apply = optimizer.apply

    def apply_averaged(grads, trainable_variables=None):
        grads = average_gradients(list(grads))
        return apply(grads, trainable_variables)

    optimizer.apply = apply_averaged
    optimizer._keras_fmicl_synchronized = True


def broadcast_variables(variables: list, root: int = 0) -> None:
    """Copies `variables` from rank `root` to every torch.distributed rank."""
    if backend_ops.backend() != "torch" or torch_world() is None:
        return
    import torch
    import torch.distributed as dist

    with torch.no_grad():
        for variable in variables:
            value = variable.value.detach().clone().contiguous()
            dist.broadcast(value, src=root)
            variable.assign(value)


# ------------------------------------------- Keras 3 multi-worker workaround

_MULTI_WORKER_PATCHED = False


def is_multi_worker_strategy(strategy: Any) -> bool:
    """Whether `strategy` is a multi-worker collective `tf.distribute` strategy."""
    if backend_ops.backend() != "tensorflow" or strategy is None:
        return False
    return keras_private.is_collective_multi_worker(strategy)


def patch_keras_multi_worker_fit() -> None:
    """Lets Keras 3 `fit` run under `MultiWorkerMirroredStrategy`.

    Keras 3 (up to at least 3.15) fails there in two places
    (tensorflow/tensorflow#72388): it reduces the per-replica metric
    scalars with `strategy.reduce("MEAN", v, axis=0)`, invalid for scalars,
    and it builds the model from a per-replica batch through an eager
    `strategy.reduce` that collective strategies reject. This patch (applied
    once, by `ContrastiveModel.compile` under such a strategy) reduces
    scalars with `axis=None` and builds from the first replica's batch; it
    changes nothing for other strategies.
    """
    global _MULTI_WORKER_PATCHED
    if _MULTI_WORKER_PATCHED or backend_ops.backend() != "tensorflow":
        return
    import tensorflow as tf
    tf_trainer = keras_private.tensorflow_trainer()

    original_reduce = tf_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and keras_private.is_collective_multi_worker(strategy):

            def reduce(value):
                if not keras_private.is_per_replica(value):
                    return value
                rank = value.values[0].shape.rank
                return strategy.reduce("MEAN", value, axis=0 if rank else None)

            return keras.tree.map_structure(reduce, values)
        return original_reduce(values, strategy, reduction)

    original_build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if iterator is None or not keras_private.is_collective_multi_worker(strategy):
            return original_build(self, iterator, data_batch)
        if self.built and (self.optimizer is None or self.optimizer.built):
            return None
        for _, _, batches in iterator:
            batch = next(batches)
            data_batch = tf.nest.map_structure(
                lambda v: strategy.experimental_local_results(v)[0]
                if isinstance(v, tf.distribute.DistributedValues)
                else v,
                batch,
            )
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)
        return None

    tf_trainer.reduce_per_replica = reduce_per_replica
    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    _MULTI_WORKER_PATCHED = True
