"""Backend-specific helpers for tests: gradients, conversion to numpy, and
the marker of tests that run under one backend only."""

import keras
import numpy as np
import pytest

# CI runs the whole suite once per backend. A test whose subject does not
# depend on the backend runs once, under TensorFlow: numpy-only data, a
# download or preset that must fail offline (each such run pays for starting
# the frameworks only to stop before using them), or an example's flags and
# outputs whose backend-specific parts (the method's training step, the
# evaluation) are tested under every backend by the unit tests the test's
# docstring names.
backend_independent = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="backend-independent: runs once, under KERAS_BACKEND=tensorflow",
)


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def value_and_grad(fn, *args):
    """Value of `fn(*args)` (a scalar) and its gradients w.r.t. every arg.

    `args` are numpy arrays; the gradient is taken by the backend's own
    autodiff, in the dtype of the arrays.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tensors = [tf.convert_to_tensor(a) for a in args]
        with tf.GradientTape() as tape:
            for t in tensors:
                tape.watch(t)
            value = fn(*tensors)
        grads = tape.gradient(value, tensors)
        # a disconnected input has gradient None: zero, as on the other backends
        grads = [np.zeros_like(a) if g is None else to_numpy(g) for a, g in zip(args, grads)]
        return to_numpy(value), grads
    if backend == "jax":
        import jax

        value, grads = jax.value_and_grad(fn, argnums=tuple(range(len(args))))(
            *[jax.numpy.asarray(a) for a in args]
        )
        return to_numpy(value), [to_numpy(g) for g in grads]
    if backend == "torch":
        import torch

        tensors = [torch.tensor(a, requires_grad=True) for a in args]
        value = fn(*tensors)
        grads = torch.autograd.grad(value, tensors, allow_unused=True)
        grads = [
            np.zeros_like(a) if g is None else g.detach().cpu().numpy()
            for a, g in zip(args, grads)
        ]
        return value.detach().cpu().numpy(), grads
    raise NotImplementedError(backend)


def traced(fn):
    """`fn` compiled the way the backend traces a training step.

    TensorFlow: `tf.function`; JAX: `jax.jit`; PyTorch: `fn` itself (eager).
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn)
    if backend == "jax":
        import jax

        return jax.jit(fn)
    return fn
