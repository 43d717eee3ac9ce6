"""Image encoders: ResNet-18 (CIFAR and ImageNet stems), ResNet-50 and a small CNN."""

from __future__ import annotations

from typing import Any

import keras
from keras import layers

from keras_fmicl.utils.checks import check_image_shape
from keras_fmicl.utils.checks import check_name
from keras_fmicl.utils.checks import check_positive_integer

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
    input_shape = check_image_shape(input_shape, total_stride)
    name = check_name(f"resnet18_{variant}" if name is None else name)

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
    input_shape = check_image_shape(input_shape, 4)
    name = check_name(name)

    images = keras.Input(shape=input_shape, name="images")
    x = _conv_bn_relu(images, width, 3, 1, "block1")
    x = layers.MaxPooling2D(2, data_format=DATA_FORMAT, name="block1_pool")(x)
    x = _conv_bn_relu(x, 2 * width, 3, 1, "block2")
    x = layers.MaxPooling2D(2, data_format=DATA_FORMAT, name="block2_pool")(x)
    x = _conv_bn_relu(x, feature_dim, 3, 1, "block3")
    features = layers.GlobalAveragePooling2D(data_format=DATA_FORMAT, name="avg_pool")(x)
    return keras.Model(images, features, name=name)


def resnet50(input_shape: tuple = (96, 96, 3), name: str = "resnet50") -> keras.Model:
    """ResNet-50 encoder (Bottleneck blocks, stages [3, 4, 6, 3]) up to global pooling.

    `keras.applications.ResNet50(weights=None, include_top=False,
    pooling="avg")`: a 7x7 stride-2 stem and a 3x3 stride-2 max-pool, then
    four stages of bottleneck blocks (1x1, 3x3, 1x1 convolutions with 64,
    128, 256, 512 and four times as many output channels; strides 1, 2, 2,
    2), total stride 32; the output is the global average of the last
    stage, 2048 features. This is the encoder of the paper's STL-10 and
    TinyImageNet runs. Random initialisation (Keras' Glorot uniform), no
    classification layer and no input rescaling: feed float images,
    normally in `[0, 1]`.

    The BatchNorm layers use PyTorch's momentum and epsilon (Keras momentum
    0.9, epsilon 1e-5), as `resnet18` and torchvision do, instead of
    keras.applications' 0.99 and 1.001e-5: with 0.99 the moving statistics
    that kNN and linear evaluation use lag far behind in short runs.

    keras.applications rather than keras-hub's `ResNetBackbone`: it ships
    with Keras (keras-hub is only this package's optional "text" extra; it
    needs Python >= 3.11 and installs tensorflow-text), it pools itself,
    and its layers are core Keras layers, so a saved encoder loads without
    keras-hub. Two differences from torchvision's ResNet-50 (v1.5), which
    the PyTorch reference code uses: the stride of a downsampling block is
    on its first 1x1 convolution (the original ResNet v1), not on the 3x3
    one, and the convolutions have biases (redundant before BatchNorm:
    26,560 more parameters). The trunk has 23,534,592 trainable parameters
    (torchvision's: 23,508,032) and 53,120 BatchNorm statistics. For the
    v1.5 trunk, wrap keras-hub's `ResNetBackbone` with `pooled_encoder`.

    Args:
        input_shape: `(H, W, C)`; H and W may be `None` (any size), known
            sizes must be at least 32 (the total stride). Any channel count.
        name: model name.

    Returns:
        A `keras.Model` mapping `(N, H, W, C)` images to `(N, 2048)`.

    Raises:
        ValueError: a bad `input_shape` or `name`, or
            `keras.config.image_data_format()` is not `"channels_last"`.

    Example:

    >>> encoder = resnet50((96, 96, 3))
    >>> encoder.output_shape
    (None, 2048)

    Reference: He et al., "Deep Residual Learning for Image Recognition",
    CVPR 2016; `keras.applications.ResNet50`.
    """
    input_shape = check_image_shape(input_shape, 32)
    name = check_name(name)
    if keras.config.image_data_format() != DATA_FORMAT:
        raise ValueError(
            "`resnet50` builds a channels_last model: set "
            '`keras.config.set_image_data_format("channels_last")`. Received: '
            f"keras.config.image_data_format()={keras.config.image_data_format()!r}"
        )
    model = keras.applications.ResNet50(
        include_top=False, weights=None, input_shape=input_shape, pooling="avg", name=name
    )
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = BATCH_NORM_MOMENTUM
            layer.epsilon = BATCH_NORM_EPSILON
    return model
