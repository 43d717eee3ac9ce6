"""keras_fmicl.evaluation.features: finite features on every backend, lists."""

import re

import keras
import numpy as np
import pytest

from keras_fmicl import evaluation


def relu_encoder(nan_weights):
    """Dense + ReLU + max pooling: ops through which XLA may turn NaN into 0."""
    inputs = keras.Input((4, 3))
    hidden = keras.layers.Dense(5, activation="relu", name="dense")(inputs)
    outputs = keras.layers.GlobalMaxPooling1D()(hidden)
    model = keras.Model(inputs, outputs)
    if nan_weights:
        kernel = model.get_layer("dense").kernel
        kernel.assign(np.full(kernel.shape, np.nan, "float32"))
    return model


def small_data(count=12, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(count, 4, 3)).astype("float32"), np.arange(count) % 3


def test_nan_weights_are_refused_on_every_backend():
    """JAX gave all-zero features (kNN 0.105, linear 0.115) where TensorFlow
    and PyTorch raised: now every backend raises the same ValueError."""
    images, labels = small_data()
    encoder = relu_encoder(nan_weights=True)
    message = "The encoder's features are not finite: its weights hold NaN or Inf"
    for call in (
        lambda: evaluation.extract_features(encoder, images),
        lambda: evaluation.linear_evaluation(encoder, (images, labels), (images, labels), steps=1),
        lambda: evaluation.KNNMonitor(
            (images, labels), (images, labels), k=3, feature_extractor=encoder
        ).evaluate(),
    ):
        with pytest.raises(ValueError, match=re.escape(message)) as info:
            call()
        assert "may have diverged" in str(info.value) and "dense/kernel" in str(info.value)
    healthy = evaluation.extract_features(relu_encoder(nan_weights=False), images)
    assert healthy.shape == (12, 5) and np.all(np.isfinite(healthy))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_features_say_the_weights_may_have_diverged(value):
    images = np.ones((5, 3), "float32")
    images[2, 1] = value
    message = "The encoder's features must be finite; rows [2] (1 of 5) hold NaN or Inf"
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        evaluation.extract_features(keras.layers.Identity(), images)
    assert "the encoder's weights may have diverged" in str(info.value)
    with pytest.raises(ValueError, match="features must be finite"):
        evaluation.extract_features(lambda x: x, images)  # a plain callable too


def test_extract_features_takes_a_list_of_images():
    images, _ = small_data(count=7)
    encoder = keras.layers.Flatten()
    expected = images.reshape(7, -1)
    inputs = keras.Input((4, 3))
    model = keras.Model(inputs, keras.layers.Flatten()(inputs))
    for extractor in (encoder, model):
        got = evaluation.extract_features(extractor, list(images), batch_size=3)
        np.testing.assert_array_equal(got, expected)
    with pytest.raises(ValueError, match="`images` must be an array"):
        evaluation.extract_features(encoder, [np.ones((4, 3)), np.ones((2, 3))])
    with pytest.raises(ValueError, match="`images` must be an array"):
        evaluation.extract_features(encoder, ["a", "b"])
