"""The backend-specific operations of the package, in one place."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops


def backend() -> str:
    """The Keras backend of this process: `"tensorflow"`, `"jax"` or `"torch"`."""
    return keras.backend.backend()


def elementwise_ops_fuse() -> bool:
    """Whether chains of elementwise ops are fused into one pass.

    True on TensorFlow and JAX, whose training steps XLA compiles (it fuses
    elementwise chains and schedules their gradients), False on PyTorch,
    where most users run eagerly and every op is a pass over its tensor.
    Forms that save ops pay off on PyTorch; forms that save a
    transcendental function pay off under XLA (e.g. `log1p(exp(x))`, which
    XLA differentiates with one `exp` fewer than its `softplus`, against
    PyTorch's single-kernel `softplus`).
    """
    return backend() != "torch"


def view_dots(queries: Any, keys: Any) -> Any:
    """`(N, V, V)` dot products of each sample's query views with its key views.

    An `(N, V, V, d)` product summed over `d` on PyTorch, whose batched
    matmul of N tiny `(V, d) x (d, V)` products costs more than the whole
    elementwise pass (eager and compiled); XLA lowers the `einsum` well.
    Either way the tensor is O(M V d), never O(M^2 d).

    Args:
        queries: `(N, V, d)`.
        keys: `(N, V, d)`.

    Example:

    ```python
    view_dots(z, z)[i, v, w]   # z[i, v] . z[i, w]
    ```
    """
    if backend() == "torch":
        return ops.sum(queries[:, :, None, :] * keys[:, None, :, :], axis=-1)
    return ops.einsum("nvd,nwd->nvw", queries, keys)


def squared_row_norms(x: Any) -> Any:
    """`sum(x^2, axis=-1)`, as squared norms where that is cheaper.

    On PyTorch a float32 norm neither stores the squares nor differentiates
    them op by op (Keras' torch `norm` computes float64 in float32, so
    float64 keeps the sum of squares); elsewhere the sum of squares, which
    XLA fuses.

    Example:

    ```python
    squared_row_norms(np.array([[3.0, 4.0]], "float32"))   # [25.0]
    ```
    """
    if backend() == "torch" and keras.backend.standardize_dtype(x.dtype) == "float32":
        return ops.square(ops.norm(x, axis=-1))
    return ops.sum(ops.square(x), axis=-1)


def models_run_in_tf_data() -> bool:
    """Whether a `keras.Model` (e.g. a `keras.Sequential`) can run inside `tf.data`.

    Only under the TensorFlow backend: elsewhere its layers would build
    tensors of another framework inside the `tf.data` graph.
    """
    return backend() == "tensorflow"


def compute_dtype(x: Any) -> str:
    """Dtype in which the loss is computed: half precision goes to float32."""
    dtype = keras.backend.standardize_dtype(x.dtype)
    if dtype in ("float16", "bfloat16") or not dtype.startswith("float"):
        return "float32"
    return dtype


def all_finite(x: Any) -> Any:
    """Scalar bool tensor: whether every entry of `x` is finite."""
    return ops.all(ops.isfinite(x))


def nan_unless(condition: Any) -> Any:
    """`0.0` where `condition` holds, else NaN (added to a loss to poison it)."""
    return ops.where(condition, 0.0, float("nan"))


def jit_needs_state_before_tracing() -> bool:
    """Whether a jit-compiled step fails on variables that `fit` builds symbolically.

    True on TensorFlow: the variables a model creates while `fit` builds it
    symbolically are initialised at their first use, inside the traced
    step, and XLA cannot lift that out of a `jit_compile=True` function.
    Building the model eagerly before `fit` avoids it. JAX passes the state
    into its compiled step; PyTorch compiles after the first eager run.
    """
    return backend() == "tensorflow"


def jit_recompiles_stateful_steps() -> bool:
    """Whether `jit_compile=True` recompiles a step that assigns many variables.

    True on PyTorch: `torch.compile` (dynamo) guards on the variables a step
    assigns outside autograd (a key network's EMA, a queue) and recompiles
    until its recompile limit, taking minutes per step. XLA (TensorFlow,
    JAX) compiles such a step once.
    """
    return backend() == "torch"
