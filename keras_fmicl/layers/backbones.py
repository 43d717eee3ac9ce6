"""Backbones from other libraries (keras-hub, keras.applications) as pooled `(N, F)` encoders."""

from __future__ import annotations

from typing import Any

import keras
from keras import layers

from keras_fmicl.utils.checks import check_choice
from keras_fmicl.utils.checks import check_name

POOLINGS = ("avg", "max", "cls")
"""`pooled_encoder`'s poolings: the mean or maximum over positions or
tokens, or the first token ([CLS])."""


def _single_input_and_output(backbone: Any) -> tuple:
    """The symbolic input and output shape of a single-input, single-output functional model."""
    if not isinstance(backbone, keras.Model):
        raise ValueError(
            "`backbone` must be a keras.Model (a functional model such as a keras-hub "
            f"Backbone). Received: backbone={backbone!r:.120}"
        )
    inputs = getattr(backbone, "inputs", None)
    outputs = getattr(backbone, "outputs", None)
    if not inputs or len(inputs) != 1 or not outputs or len(outputs) != 1:
        raise ValueError(
            "`backbone` must be a functional model with one input and one output "
            "(images to a feature map or a token sequence). Received: "
            f"{getattr(backbone, 'name', backbone)!r} with inputs={inputs} and outputs={outputs}"
        )
    return inputs[0], tuple(outputs[0].shape)


def _pooling_layers(pooling: str, output_shape: tuple, data_format: str) -> list:
    if len(output_shape) == 4:
        if pooling == "cls":
            raise ValueError(
                '`pooling` must be "avg" or "max" for a feature map (N, h, w, F): it has no '
                f"[CLS] token. Received: pooling={pooling!r} for output shape {output_shape}"
            )
        pool = layers.GlobalAveragePooling2D if pooling == "avg" else layers.GlobalMaxPooling2D
        return [pool(data_format=data_format, name=f"{pooling}_pool")]
    if len(output_shape) == 3:
        if pooling != "cls":
            pool = layers.GlobalAveragePooling1D if pooling == "avg" else layers.GlobalMaxPooling1D
            return [pool(name=f"{pooling}_pool")]
        if output_shape[1] is None:
            raise ValueError(
                '`pooling="cls"` needs a known number of tokens. Received: output shape '
                f"{output_shape}"
            )
        return [
            layers.Cropping1D((0, output_shape[1] - 1), name="cls_token"),
            layers.Flatten(name="cls_pool"),
        ]
    raise ValueError(
        "`backbone` must output a feature map (N, h, w, F) or a token sequence (N, T, F); "
        "an (N, F) output is already pooled: pass the backbone itself as the encoder. "
        f"Received: output shape {output_shape}"
    )


def pooled_encoder(backbone: keras.Model, pooling: str = "avg", name: str | None = None) -> keras.Model:
    """A backbone with a feature-map or token output as an `(N, F)` encoder.

    `ContrastiveModel` needs an encoder whose output is one feature vector
    per image. Backbones (keras-hub's `ResNetBackbone`, `ViTBackbone`, ...,
    `keras.applications` models without `pooling`) return a feature map
    `(N, h, w, F)` or a token sequence `(N, T, F)`; this wraps one in a
    functional model that pools it:

    * `"avg"`: the mean over the `h * w` positions or the `T` tokens;
    * `"max"`: the maximum over them;
    * `"cls"`: the first token (a ViT's [CLS] token; sequences only).

    The backbone is a layer of the result: its weights are shared, not
    copied, and a `.keras` file of the result loads where the backbone's
    classes are registered (import keras_hub first for its backbones).
    A feature map follows the backbone's `data_format` (keras-hub's
    backbones have one), else `keras.config.image_data_format()`.

    Args:
        backbone: a functional `keras.Model` with one input and one output
            of rank 3 or 4.
        pooling: `"avg"`, `"max"` or `"cls"`.
        name: model name, default `"<backbone name>_<pooling>"`.

    Returns:
        A `keras.Model` with the backbone's input, output `(N, F)`.

    Raises:
        ValueError: `backbone` is not such a model (or already outputs
            `(N, F)`), or `pooling` does not apply to its output.

    Example:

    ```python
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 128, 256, 512], stackwise_num_blocks=[3, 4, 6, 3],
        stackwise_num_strides=[1, 2, 2, 2], block_type="bottleneck_block",
        image_shape=(96, 96, 3),
    )
    encoder = pooled_encoder(backbone, "avg")      # (N, 96, 96, 3) -> (N, 2048)
    model = keras_fmicl.ContrastiveModel(encoder, projector=keras_fmicl.ProjectionHead(2048, 128))
    ```
    """
    images, output_shape = _single_input_and_output(backbone)
    pooling = check_choice("pooling", pooling, POOLINGS)
    name = check_name(f"{backbone.name}_{pooling}" if name is None else name)
    data_format = getattr(backbone, "data_format", None) or keras.config.image_data_format()
    pooling_layers = _pooling_layers(pooling, output_shape, data_format)
    inputs = keras.Input(shape=tuple(images.shape[1:]), dtype=images.dtype, name="images")
    x = backbone(inputs)
    for layer in pooling_layers:
        x = layer(x)
    return keras.Model(inputs, x, name=name)
