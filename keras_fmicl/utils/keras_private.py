"""The one seam to Keras' private API: every `keras.src` name and private attribute the package uses.

Keras 3 offers no public way to do these few things; each function below
names what it needs, and `tests/utils/test_keras_private.py` checks each one
against the installed Keras (checked on Keras 3.8 to 3.15), so a Keras
release that moves one of them fails there, in one place.
"""

from __future__ import annotations

from typing import Any

import keras


def data_layer_base() -> type:
    """Keras' base for layers that also run inside `tf.data` on any backend."""
    try:
        from keras.src.layers.preprocessing.data_layer import DataLayer
    except ImportError:  # Keras 3 before the rename to `DataLayer`.
        from keras.src.layers.preprocessing.tf_data_layer import TFDataLayer as DataLayer
    return DataLayer


def sublayers(layer: keras.layers.Layer, include_self: bool, recursive: bool) -> list:
    """The layers tracked by `layer` (`Layer._flatten_layers`), in tracking order."""
    return list(layer._flatten_layers(include_self=include_self, recursive=recursive))


def own_trainable_variables(layer: keras.layers.Layer) -> list:
    """The trainable variables `layer` creates itself, not those of its sublayers."""
    return list(layer._trainable_variables)


def own_non_trainable_variables(layer: keras.layers.Layer) -> list:
    """The non-trainable variables `layer` creates itself, not those of its sublayers."""
    return list(layer._non_trainable_variables)


def tensorflow_trainer() -> Any:
    """Keras' TensorFlow trainer module (`keras.src.backend.tensorflow.trainer`)."""
    from keras.src.backend.tensorflow import trainer

    return trainer


def is_collective_multi_worker(strategy: Any) -> bool:
    """Whether Keras treats `strategy` as a multi-worker collective strategy."""
    return bool(tensorflow_trainer()._collective_all_reduce_multi_worker(strategy))


def is_per_replica(value: Any) -> bool:
    """Whether `value` is a per-replica value of a `tf.distribute` strategy."""
    return bool(tensorflow_trainer()._is_per_replica_instance(value))


def seed_generators(layer: keras.layers.Layer) -> list:
    """The `SeedGenerator`s a layer tracks itself (Keras does not checkpoint their states)."""
    return list(getattr(layer, "_seed_generators", []))
