"""Imports of the optional dependencies (TensorFlow for tf.data, keras-hub), with a clear error."""

from __future__ import annotations

from typing import Any

from keras_fmicl.utils.errors import MissingDependencyError


# ---------------------------------------------------------------------------
# tf.data pipelines
# ---------------------------------------------------------------------------

def import_tensorflow():
    try:
        import tensorflow as tf
    except ImportError as err:
        raise ImportError(
            "keras_fmicl.data pipelines are built with tf.data and need "
            "TensorFlow (the CPU build is enough, under any Keras backend): "
            "`pip install tensorflow`."
        ) from err
    return tf


def import_keras_hub() -> Any:
    """`keras_hub`, or a `MissingDependencyError` saying how to install it."""
    try:
        import keras_hub
    except ImportError as err:
        raise MissingDependencyError(
            "Sentence embeddings need the Python package `keras-hub`, which is "
            "not installed: `pip install keras-hub` (or "
            '`pip install "keras-fmicl[text]"`; keras-hub needs Python >= 3.11 '
            f"and installs tensorflow-text) ({err})."
        ) from err
    return keras_hub
