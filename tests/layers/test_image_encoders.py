"""Tests of keras_fmicl.layers.image_encoders: shapes, parameter counts, names, serialisation."""

import keras
import numpy as np
import pytest

from keras_fmicl.layers import image_encoders as encoders
from tests.helpers import to_numpy


def _shapes_only(build):
    """Builds a model without initialising its weights (shapes and counts only).

    Random initialisation compiles one XLA program per kernel shape on JAX
    (seconds each on a small CPU), so tests that only need shapes skip it.
    The autouse fixture's `clear_session` drops the uninitialised variables.
    """
    with keras.StatelessScope(initialize_variables=False):
        return build()


def _trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _non_trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)


def expected_resnet18_counts(width, channels, variant):
    """(trainable, non-trainable) parameters of ResNet-18 counted by hand.

    Convolutions have no bias (k * k * c_in * c_out weights); each BatchNorm
    has gamma and beta (trainable) and a moving mean and variance.
    """
    trainable = non_trainable = 0

    def conv_bn(kernel, c_in, c_out):
        nonlocal trainable, non_trainable
        trainable += kernel * kernel * c_in * c_out + 2 * c_out
        non_trainable += 2 * c_out

    conv_bn(3 if variant == "cifar" else 7, channels, width)
    c_in = width
    for stage in range(4):
        c_out = width * 2**stage
        for block in range(2):
            conv_bn(3, c_in, c_out)
            conv_bn(3, c_out, c_out)
            if c_in != c_out:  # first block of stages 2-4: 1x1 projection shortcut
                conv_bn(1, c_in, c_out)
            c_in = c_out
    return trainable, non_trainable


def test_resnet18_cifar_parameter_count_standard_width():
    model = _shapes_only(lambda: encoders.resnet18((32, 32, 3), variant="cifar", width=64))
    trainable, non_trainable = expected_resnet18_counts(64, 3, "cifar")
    assert _trainable_count(model) == trainable
    assert _non_trainable_count(model) == non_trainable
    # torchvision's resnet18 without its fc layer and with a 3x3 stem: 11.17M
    assert trainable == 11_168_832
    assert model.output_shape == (None, 512)


@pytest.mark.parametrize("variant", ["cifar", "imagenet"])
@pytest.mark.parametrize("width,channels", [(4, 3), (6, 1)])
def test_resnet18_parameter_count_other_widths(variant, width, channels):
    model = _shapes_only(
        lambda: encoders.resnet18((32, 32, channels), variant=variant, width=width)
    )
    trainable, non_trainable = expected_resnet18_counts(width, channels, variant)
    assert _trainable_count(model) == trainable
    assert _non_trainable_count(model) == non_trainable
    assert model.output_shape == (None, 8 * width)


@pytest.mark.parametrize(
    "variant,input_shape,first_map,last_map",
    [
        ("cifar", (32, 32, 3), (32, 32), (4, 4)),  # stride-1 stem, no max-pool
        ("cifar", (28, 28, 1), (28, 28), (4, 4)),  # 28 -> 14 -> 7 -> 4
        ("imagenet", (224, 224, 3), (56, 56), (7, 7)),  # stem 112, max-pool 56
        ("imagenet", (64, 96, 3), (16, 24), (2, 3)),
    ],
)
def test_resnet18_feature_map_sizes(variant, input_shape, first_map, last_map):
    model = _shapes_only(lambda: encoders.resnet18(input_shape, variant=variant, width=4))
    assert tuple(model.get_layer("stage1_block2_out").output.shape[1:3]) == first_map
    assert tuple(model.get_layer("stage4_block2_out").output.shape[1:3]) == last_map


@pytest.mark.parametrize("variant,sizes", [("cifar", (16, 24)), ("imagenet", (32,))])
def test_resnet18_forward_any_spatial_size(variant, sizes):
    model = encoders.resnet18((None, None, 3), variant=variant, width=4)
    for size in sizes:
        images = np.random.default_rng(size).uniform(size=(2, size, size, 3)).astype("float32")
        features = to_numpy(model(images, training=False))
        assert features.shape == (2, 32)
        assert np.all(np.isfinite(features))
        assert np.all(features >= 0.0)  # global average of ReLU outputs
        assert np.any(features > 0.0)


def test_small_cnn_shapes_and_parameter_count():
    model = _shapes_only(lambda: encoders.small_cnn((28, 28, 1), width=8))
    assert model.output_shape == (None, 32)
    # three conv-BN blocks: 1 -> 8 -> 16 -> 32 channels, two 2x2 poolings
    expected = sum(9 * c_in * c_out + 2 * c_out for c_in, c_out in [(1, 8), (8, 16), (16, 32)])
    assert _trainable_count(model) == expected
    assert tuple(model.get_layer("block3_relu").output.shape[1:]) == (7, 7, 32)
    assert _shapes_only(encoders.small_cnn).output_shape == (None, 128)
    custom = _shapes_only(lambda: encoders.small_cnn((8, 8, 3), width=4, feature_dim=10))
    assert custom.output_shape == (None, 10)


def test_small_cnn_forward():
    model = encoders.small_cnn((None, None, 1), width=4, feature_dim=10)
    for size in (12, 28):
        images = np.random.default_rng(size).uniform(size=(3, size, size, 1)).astype("float32")
        features = to_numpy(model(images, training=False))
        assert features.shape == (3, 10)
        assert np.all(np.isfinite(features))


@pytest.mark.parametrize(
    "build",
    [
        lambda: encoders.resnet18((16, 16, 3), variant="cifar", width=4),
        lambda: encoders.small_cnn((12, 12, 1), width=4),
    ],
    ids=["resnet18", "small_cnn"],
)
def test_save_load_round_trip(tmp_path, build):
    model = build()
    shape = (4,) + tuple(model.input_shape[1:])
    images = np.random.default_rng(2).uniform(size=shape).astype("float32")
    # Move every weight, BatchNorm statistics included, off its initial value.
    rng = np.random.default_rng(3)
    model.set_weights(
        [w + rng.uniform(0.1, 0.5, size=w.shape).astype(w.dtype) for w in model.get_weights()]
    )
    path = str(tmp_path / "encoder.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert restored.name == model.name
    assert [w.path for w in restored.weights] == [w.path for w in model.weights]
    np.testing.assert_allclose(
        to_numpy(restored(images, training=False)),
        to_numpy(model(images, training=False)),
        rtol=1e-6,
        atol=1e-6,
    )


def test_names_are_deterministic():
    first = _shapes_only(lambda: encoders.resnet18((16, 16, 3), width=4))
    second = _shapes_only(lambda: encoders.resnet18((16, 16, 3), width=4))
    assert first.name == second.name == "resnet18_cifar"
    assert [layer.name for layer in first.layers] == [layer.name for layer in second.layers]
    assert [w.path for w in first.weights] == [w.path for w in second.weights]
    imagenet = _shapes_only(lambda: encoders.resnet18((32, 32, 3), variant="imagenet"))
    assert imagenet.name == "resnet18_imagenet"
    named = _shapes_only(lambda: encoders.resnet18((16, 16, 3), name="backbone"))
    assert named.name == "backbone"
    a = _shapes_only(lambda: encoders.small_cnn(width=4))
    b = _shapes_only(lambda: encoders.small_cnn(width=4))
    assert [w.path for w in a.weights] == [w.path for w in b.weights]


@pytest.mark.parametrize(
    "kwargs,argument",
    [
        ({"variant": "resnet"}, "variant"),
        ({"width": 0}, "width"),
        ({"width": 2.5}, "width"),
        ({"width": True}, "width"),
        ({"input_shape": (4, 4, 3)}, "input_shape"),  # below the total stride 8
        ({"input_shape": (32, 32)}, "input_shape"),
        ({"input_shape": (32, 32, None)}, "input_shape"),
        ({"input_shape": (16, 16, 3), "variant": "imagenet"}, "input_shape"),  # stride 32
        ({"name": ""}, "name"),
    ],
)
def test_resnet18_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        encoders.resnet18(**kwargs)


@pytest.mark.parametrize(
    "kwargs,argument",
    [
        ({"width": -1}, "width"),
        ({"feature_dim": 0}, "feature_dim"),
        ({"input_shape": (3, 3, 1)}, "input_shape"),
        ({"input_shape": "28x28"}, "input_shape"),
        ({"name": None}, "name"),
    ],
)
def test_small_cnn_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        encoders.small_cnn(**kwargs)
