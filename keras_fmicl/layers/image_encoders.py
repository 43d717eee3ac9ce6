"""Image encoders: ResNet-18 (CIFAR and ImageNet stems) and a small CNN."""

from __future__ import annotations

from typing import Any

import keras
from keras import layers

from keras_fmicl.utils.checks import check_positive_integer
from keras_fmicl.utils.checks import is_integer

DATA_FORMAT = "channels_last"

BATCH_NORM_MOMENTUM = 0.9  # PyTorch's momentum 0.1

BATCH_NORM_EPSILON = 1e-5

RESNET18_STAGE_BLOCKS = (2, 2, 2, 2)

RESNET18_VARIANTS = ("cifar", "imagenet")


def _conv_initializer() -> keras.initializers.Initializer:
    """He initialisation on fan-out, as torchvision's ResNet (kaiming_normal_)."""
    return keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_out", distribution="untruncated_normal"
    )


def _check_width(value: Any, name: str = "width") -> int:
    return check_positive_integer(name, value)


def _check_input_shape(input_shape: Any, min_size: int) -> tuple:
    """`(H, W, C)` with a known channel count; known H and W at least `min_size`."""
    message = (
        "`input_shape` must be (height, width, channels) with positive integers "
        f"(height and width may be None), height and width >= {min_size}. "
        f"Received: input_shape={input_shape!r}"
    )
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3:
        raise ValueError(message)
    height, width, channels = input_shape
    for size in (height, width):
        if size is None:
            continue
        if not is_integer(size) or size < min_size:
            raise ValueError(message)
    if not is_integer(channels) or channels < 1:
        raise ValueError(message)
    return tuple(None if s is None else int(s) for s in input_shape)


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"`name` must be a non-empty string. Received: name={name!r}")
    return name


def _conv_bn_relu(
    x: Any,
    filters: int,
    kernel_size: int,
    strides: int,
    name: str,
    activation: bool = True,
) -> Any:
    """Conv (no bias) - BatchNorm [- ReLU], with PyTorch-style symmetric padding.

    Stride-1 convolutions use `"same"` padding (symmetric for odd kernels);
    strided ones pad `kernel_size // 2` on every side explicitly, as
    PyTorch's `padding=k // 2` does (Keras' `"same"` would pad only the
    bottom/right for even inputs).
    """
    if strides > 1 and kernel_size > 1:
        x = layers.ZeroPadding2D(kernel_size // 2, data_format=DATA_FORMAT, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"
    x = layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=False,
        kernel_initializer=_conv_initializer(),
        data_format=DATA_FORMAT,
        name=f"{name}_conv",
    )(x)
    x = layers.BatchNormalization(
        axis=-1, momentum=BATCH_NORM_MOMENTUM, epsilon=BATCH_NORM_EPSILON, name=f"{name}_bn"
    )(x)
    if activation:
        x = layers.ReLU(name=f"{name}_relu")(x)
    return x


def _basic_block(x: Any, filters: int, strides: int, name: str) -> Any:
    """ResNet BasicBlock: two 3x3 convs plus identity / 1x1-projection shortcut."""
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = _conv_bn_relu(x, filters, 1, strides, f"{name}_shortcut", activation=False)
    x = _conv_bn_relu(x, filters, 3, strides, f"{name}_1")
    x = _conv_bn_relu(x, filters, 3, 1, f"{name}_2", activation=False)
    x = layers.Add(name=f"{name}_add")([x, shortcut])
    return layers.ReLU(name=f"{name}_out")(x)


def resnet18(
    input_shape: tuple = (32, 32, 3),
    variant: str = "cifar",
    width: int = 64,
    name: str | None = None,
) -> keras.Model:
    """ResNet-18 encoder (BasicBlock, stages [2, 2, 2, 2]) up to global pooling.

    * `variant="cifar"`: 3x3 stride-1 stem, no max-pool (SimCLR / solo-learn
      setting for 32x32 images); total stride 8.
    * `variant="imagenet"`: 7x7 stride-2 stem and 3x3 stride-2 max-pool;
      total stride 32.

    Stages have `width, 2 width, 4 width, 8 width` channels (strides 1, 2, 2,
    2), BatchNorm (PyTorch momentum and epsilon), ReLU and He (fan-out)
    initialisation; the output is the global average of the last stage,
    `8 * width` features (512 for the standard `width=64`, 11.17M parameters
    for the CIFAR variant). No classification layer, no input rescaling:
    feed float images, normally in `[0, 1]` (see the module docstring).

    Args:
        input_shape: `(H, W, C)`; H and W may be `None` (any size), known
            sizes must be at least the total stride (8 cifar, 32 imagenet).
        variant: `"cifar"` or `"imagenet"`.
        width: channels of the first stage (64 in the standard model).
        name: model name, default `"resnet18_<variant>"`.

    Returns:
        A `keras.Model` mapping `(N, H, W, C)` images to `(N, 8 * width)`.

    Example:

    >>> encoder = resnet18((32, 32, 3), variant="cifar")
    >>> encoder.output_shape
    (None, 512)
    """
    if variant not in RESNET18_VARIANTS:
        raise ValueError(
            f"`variant` must be one of {RESNET18_VARIANTS}. Received: variant={variant!r}"
        )
    width = _check_width(width)
    total_stride = 8 if variant == "cifar" else 32
    input_shape = _check_input_shape(input_shape, total_stride)
    name = _check_name(f"resnet18_{variant}" if name is None else name)

    images = keras.Input(shape=input_shape, name="images")
    if variant == "cifar":
        x = _conv_bn_relu(images, width, 3, 1, "stem")
    else:
        x = _conv_bn_relu(images, width, 7, 2, "stem")
        # Zero padding is -inf padding here: the inputs are ReLU outputs (>= 0).
        x = layers.ZeroPadding2D(1, data_format=DATA_FORMAT, name="stem_pool_pad")(x)
        x = layers.MaxPooling2D(3, strides=2, data_format=DATA_FORMAT, name="stem_pool")(x)
    for stage, num_blocks in enumerate(RESNET18_STAGE_BLOCKS, start=1):
        filters = width * 2 ** (stage - 1)
        for block in range(1, num_blocks + 1):
            strides = 2 if stage > 1 and block == 1 else 1
            x = _basic_block(x, filters, strides, f"stage{stage}_block{block}")
    features = layers.GlobalAveragePooling2D(data_format=DATA_FORMAT, name="avg_pool")(x)
    return keras.Model(images, features, name=name)


def small_cnn(
    input_shape: tuple = (28, 28, 1),
    width: int = 32,
    feature_dim: int | None = None,
    name: str = "small_cnn",
) -> keras.Model:
    """A small, fast convolutional encoder for CPU demos (Fashion-MNIST, digits).

    Three 3x3 conv-BatchNorm-ReLU blocks with `width`, `2 width` and
    `feature_dim` channels, 2x2 max-pooling after the first two, then global
    average pooling. About 0.1M parameters at the defaults. No input
    rescaling: feed float images, normally in `[0, 1]`.

    Args:
        input_shape: `(H, W, C)`; H and W may be `None`, known sizes must be
            at least 4 (two 2x2 poolings).
        width: channels of the first block.
        feature_dim: channels of the last block, i.e. the output size;
            default `4 * width`.
        name: model name.

    Returns:
        A `keras.Model` mapping `(N, H, W, C)` images to `(N, feature_dim)`.

    Example:

    >>> encoder = small_cnn((28, 28, 1), width=32)
    >>> encoder.output_shape
    (None, 128)
    """
    width = _check_width(width)
    feature_dim = 4 * width if feature_dim is None else _check_width(feature_dim, "feature_dim")
    input_shape = _check_input_shape(input_shape, 4)
    name = _check_name(name)

    images = keras.Input(shape=input_shape, name="images")
    x = _conv_bn_relu(images, width, 3, 1, "block1")
    x = layers.MaxPooling2D(2, data_format=DATA_FORMAT, name="block1_pool")(x)
    x = _conv_bn_relu(x, 2 * width, 3, 1, "block2")
    x = layers.MaxPooling2D(2, data_format=DATA_FORMAT, name="block2_pool")(x)
    x = _conv_bn_relu(x, feature_dim, 3, 1, "block3")
    features = layers.GlobalAveragePooling2D(data_format=DATA_FORMAT, name="avg_pool")(x)
    return keras.Model(images, features, name=name)
