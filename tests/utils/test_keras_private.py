"""The seam to Keras' private API holds with the installed Keras.

Every private name the package uses goes through `keras_fmicl.utils.keras_private`;
these tests fail, in one place, on a Keras release that moves one of them.
"""

import keras
import numpy as np
import pytest

from keras_fmicl.utils import keras_private


def test_the_data_layer_base_is_a_keras_layer_class():
    base = keras_private.data_layer_base()
    assert isinstance(base, type) and issubclass(base, keras.layers.Layer)


def test_sublayers_and_own_variables():
    inner = keras.layers.Dense(3)
    outer = keras.Sequential([keras.Input((2,)), inner, keras.layers.BatchNormalization()])
    assert inner in keras_private.sublayers(outer, include_self=False, recursive=True)
    assert outer not in keras_private.sublayers(outer, include_self=False, recursive=True)
    assert keras_private.sublayers(outer, include_self=True, recursive=True)[0] is outer
    assert [v.path for v in keras_private.own_trainable_variables(inner)] == [v.path for v in inner.trainable_variables]
    norm = outer.layers[1]
    assert {v.path for v in keras_private.own_non_trainable_variables(norm)} == {
        v.path for v in norm.non_trainable_variables
    }
    assert keras_private.own_trainable_variables(outer) == []  # a container owns none itself


def test_seed_generators_of_a_random_layer():
    dropout = keras.layers.Dropout(0.5, seed=1)
    generators = keras_private.seed_generators(dropout)
    assert len(generators) == 1 and np.asarray(generators[0].state).shape == (2,)
    assert keras_private.seed_generators(keras.layers.Dense(2)) == []


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's trainer")
def test_the_tensorflow_trainer_names_the_multi_worker_patch_uses():
    import tensorflow as tf

    trainer = keras_private.tensorflow_trainer()
    assert callable(trainer.reduce_per_replica)
    assert callable(trainer.TensorFlowTrainer._maybe_symbolic_build)
    assert not keras_private.is_collective_multi_worker(tf.distribute.get_strategy())
    assert not keras_private.is_per_replica(tf.constant(1.0))
