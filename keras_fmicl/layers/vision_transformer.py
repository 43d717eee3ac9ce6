"""The Vision Transformer of MoCo v3 (ViT-S/16): fixed 2-D sin-cos positions, [CLS] output."""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
from keras import layers
from keras import ops

from keras_fmicl.utils.checks import check_bool
from keras_fmicl.utils.checks import check_image_shape
from keras_fmicl.utils.checks import check_name
from keras_fmicl.utils.checks import check_positive_integer
from keras_fmicl.utils.checks import check_positive_number
from keras_fmicl.utils.registry import PACKAGE

LAYER_NORM_EPSILON = 1e-6

POSITION_TEMPERATURE = 10000.0

CLASS_TOKEN_STDDEV = 1e-6


def _check_sincos_width(width: Any) -> int:
    width = check_positive_integer("width", width)
    if width % 4:
        raise ValueError(
            "`width` must be a multiple of 4 (the sin and cos of two coordinates). "
            f"Received: width={width}"
        )
    return width


def sincos_position_embedding(
    grid_height: int, grid_width: int, width: int, temperature: float = POSITION_TEMPERATURE
) -> np.ndarray:
    """MoCo v3's fixed 2-D sin-cos position embedding, `(grid_height * grid_width, width)`.

    With `D = width / 4` frequencies `omega_d = temperature ** (-d / D)`,
    `d = 0..D-1`, the patch in row `r` and column `c` (token
    `r * grid_width + c`, the order of a row-major flattened patch grid)
    gets

        [sin(r omega), cos(r omega), sin(c omega), cos(c omega)].

    For a square grid this is MoCo v3's `build_2d_sincos_position_embedding`
    (there, the first half is indexed by the row through its `meshgrid`);
    it extends it to rectangular grids. Computed in float64; the [CLS]
    token's entry (zeros) is not included.

    Args:
        grid_height: rows of patches.
        grid_width: columns of patches.
        width: the embedding size, a multiple of 4.
        temperature: the longest wavelength over `2 pi`.

    Returns:
        A float64 numpy array `(grid_height * grid_width, width)`.

    Example:

    ```python
    sincos_position_embedding(14, 14, 384).shape   # (196, 384)
    ```

    Reference: Chen, Xie and He, "An Empirical Study of Training
    Self-Supervised Vision Transformers", ICCV 2021 (facebookresearch/moco-v3,
    `vits.py`).
    """
    grid_height = check_positive_integer("grid_height", grid_height)
    grid_width = check_positive_integer("grid_width", grid_width)
    width = _check_sincos_width(width)
    temperature = check_positive_number("temperature", temperature)
    frequencies = width // 4
    omega = temperature ** -(np.arange(frequencies, dtype="float64") / frequencies)
    rows, columns = np.meshgrid(
        np.arange(grid_height, dtype="float64"), np.arange(grid_width, dtype="float64"), indexing="ij"
    )
    row_angles = rows.reshape(-1, 1) * omega
    column_angles = columns.reshape(-1, 1) * omega
    return np.concatenate(
        [np.sin(row_angles), np.cos(row_angles), np.sin(column_angles), np.cos(column_angles)],
        axis=1,
    )


@keras.saving.register_keras_serializable(package=PACKAGE)
class ClassTokenAndPositionEmbedding(layers.Layer):
    """Prepends a learned [CLS] token to patch embeddings and adds fixed 2-D sin-cos positions.

    Maps patch embeddings `(N, grid_height * grid_width, F)` to tokens
    `(N, 1 + grid_height * grid_width, F)`: `[cls, patches] + positions`,
    where `cls` is a trainable `(F,)` vector (initialised from a normal
    distribution with standard deviation 1e-6, as MoCo v3) and `positions`
    is a non-trainable weight holding zeros for the [CLS] token followed by
    `sincos_position_embedding(grid_height, grid_width, F)`.

    Args:
        grid_size: `(grid_height, grid_width)`, the patch grid.
        temperature: the sin-cos temperature (10000).
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`).

    Example:

    ```python
    layer = ClassTokenAndPositionEmbedding((2, 2))
    layer(np.zeros((8, 4, 32), "float32")).shape   # (8, 5, 32)
    ```

    Reference: facebookresearch/moco-v3 `vits.py` (`VisionTransformerMoCo`).
    """

    def __init__(self, grid_size: Any, temperature: float = POSITION_TEMPERATURE, **kwargs: Any):
        super().__init__(**kwargs)
        if not isinstance(grid_size, (tuple, list)) or len(grid_size) != 2:
            raise ValueError(
                "`grid_size` must be (grid_height, grid_width). "
                f"Received: grid_size={grid_size!r}"
            )
        self.grid_size = tuple(check_positive_integer("grid_size", size) for size in grid_size)
        self.temperature = check_positive_number("temperature", temperature)

    def build(self, input_shape: tuple) -> None:
        num_patches = self.grid_size[0] * self.grid_size[1]
        if len(input_shape) != 3 or input_shape[1] != num_patches or input_shape[2] is None:
            raise ValueError(
                f"{type(self).__name__} expects inputs (N, {num_patches}, F) for the "
                f"patch grid {self.grid_size}. Received: input_shape={tuple(input_shape)}"
            )
        width = int(input_shape[2])
        embedding = np.concatenate(
            [np.zeros((1, width)), sincos_position_embedding(*self.grid_size, width, self.temperature)]
        )[None]
        self.class_token = self.add_weight(
            shape=(1, 1, width),
            initializer=keras.initializers.RandomNormal(stddev=CLASS_TOKEN_STDDEV),
            name="class_token",
        )
        self.position_embedding = self.add_weight(
            shape=embedding.shape,
            initializer=lambda shape, dtype=None: ops.convert_to_tensor(embedding, dtype=dtype),
            trainable=False,
            name="position_embedding",
        )

    def call(self, patches: Any) -> Any:
        class_tokens = ops.broadcast_to(
            ops.cast(self.class_token, patches.dtype), (ops.shape(patches)[0], 1, patches.shape[-1])
        )
        tokens = ops.concatenate([class_tokens, patches], axis=1)
        return tokens + ops.cast(self.position_embedding, patches.dtype)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (input_shape[0], input_shape[1] + 1, input_shape[2])

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"grid_size": list(self.grid_size), "temperature": self.temperature})
        return config


def _uniform(limit: float) -> keras.initializers.Initializer:
    return keras.initializers.RandomUniform(-limit, limit)


def _check_vit_arguments(
    input_shape: Any, patch_size: Any, depth: Any, width: Any, num_heads: Any, mlp_dim: Any
) -> tuple:
    """The checked arguments of `vit_small`, with the patch grid `(rows, columns)`."""
    patch_size = check_positive_integer("patch_size", patch_size)
    input_shape = check_image_shape(input_shape, patch_size, allow_unknown=False)
    if input_shape[0] % patch_size or input_shape[1] % patch_size:
        raise ValueError(
            "`input_shape` must have a height and width divisible by `patch_size` "
            f"({patch_size}). Received: input_shape={input_shape}"
        )
    depth = check_positive_integer("depth", depth)
    width = _check_sincos_width(width)
    num_heads = check_positive_integer("num_heads", num_heads)
    mlp_dim = check_positive_integer("mlp_dim", mlp_dim)
    if width % num_heads:
        raise ValueError(
            f"`num_heads` must divide `width` ({width}). Received: num_heads={num_heads}"
        )
    grid = (input_shape[0] // patch_size, input_shape[1] // patch_size)
    return input_shape, patch_size, depth, width, num_heads, mlp_dim, grid


def vit_small(
    input_shape: tuple = (224, 224, 3),
    patch_size: int = 16,
    frozen_patch_projection: bool = False,
    name: str = "vit_small",
    *,
    depth: int = 12,
    width: int = 384,
    num_heads: int = 12,
    mlp_dim: int = 1536,
) -> keras.Model:
    """ViT-S/16 encoder as in MoCo v3: the [CLS] token after the final LayerNorm.

    The image is cut into `patch_size x patch_size` patches, each linearly
    projected to `width` (a stride-`patch_size` convolution); a learned
    [CLS] token is prepended and the fixed 2-D sin-cos position embedding
    (`sincos_position_embedding`, zeros for [CLS]) added. Then `depth`
    pre-norm Transformer blocks,

        x = x + MultiHeadAttention(LayerNorm(x)),
        x = x + Dense(GELU(Dense(LayerNorm(x)))),

    (`num_heads` heads, MLP hidden size `mlp_dim`, biases everywhere,
    LayerNorm epsilon 1e-6, no dropout), and a final LayerNorm of the [CLS]
    token, the output. The defaults are MoCo v3's ViT-Small: 12 blocks,
    width 384, 12 heads (MoCo v3's `vit_small`; DeiT-S has 6), MLP 1536;
    21,590,016 trainable parameters plus the 75,648 fixed position
    embeddings at 224x224 (timm's `vit_small_patch16_224` less its
    classifier). Initialisation as MoCo v3: Glorot (Xavier) uniform for
    every dense kernel, the query, key, value and output projections each
    as a `width x width` matrix, the patch projection as a
    `(C * patch_size**2) x width` one, zero biases, the [CLS] token normal
    with standard deviation 1e-6.

    Written with Keras layers (`MultiHeadAttention`, `LayerNormalization`)
    rather than keras-hub's `ViTBackbone`, whose position embedding is
    learned (MoCo v3 fixes it to sin-cos) and whose patch projection cannot
    be frozen apart from it; this way the encoder needs no keras-hub.
    Other backbones: see `pooled_encoder`.

    Args:
        input_shape: `(H, W, C)`, all known; H and W multiples of
            `patch_size`.
        patch_size: the side of a square patch.
        frozen_patch_projection: MoCo v3's random patch projection: the
            patch-embedding convolution (kernel and bias) keeps its random
            initial values (not trainable), which stabilises training.
        name: model name.
        depth: the number of Transformer blocks (keyword only).
        width: the token size, a multiple of 4 and of `num_heads`
            (keyword only).
        num_heads: attention heads (keyword only).
        mlp_dim: the MLP's hidden size (keyword only).

    Returns:
        A `keras.Model` mapping `(N, H, W, C)` images to `(N, width)`.

    Raises:
        ValueError: an argument out of range, named in the message.

    Example:

    ```python
    encoder = vit_small((224, 224, 3), frozen_patch_projection=True)
    encoder.output_shape                                           # (None, 384)
    tiny = vit_small((32, 32, 3), 8, depth=1, width=32, num_heads=2, mlp_dim=64)
    ```

    Reference: Chen, Xie and He, "An Empirical Study of Training
    Self-Supervised Vision Transformers", ICCV 2021 (facebookresearch/moco-v3,
    `vits.py`, `--stop-grad-conv1`); Dosovitskiy et al., "An Image is Worth
    16x16 Words", ICLR 2021.
    """
    input_shape, patch_size, depth, width, num_heads, mlp_dim, grid = _check_vit_arguments(
        input_shape, patch_size, depth, width, num_heads, mlp_dim
    )
    frozen_patch_projection = check_bool("frozen_patch_projection", frozen_patch_projection)
    name = check_name(name)

    images = keras.Input(shape=input_shape, name="images")
    patch_inputs = input_shape[2] * patch_size * patch_size
    x = layers.Conv2D(
        width,
        patch_size,
        strides=patch_size,
        padding="valid",
        kernel_initializer=_uniform(math.sqrt(6.0 / (patch_inputs + width))),
        bias_initializer="zeros",
        data_format="channels_last",
        trainable=not frozen_patch_projection,
        name="patch_projection",
    )(images)
    x = layers.Reshape((grid[0] * grid[1], width), name="patches")(x)
    x = ClassTokenAndPositionEmbedding(grid, name="tokens")(x)
    attention_limit = math.sqrt(6.0 / (2 * width))
    for block in range(1, depth + 1):
        prefix = f"block{block}"
        y = layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name=f"{prefix}_norm1")(x)
        y = layers.MultiHeadAttention(
            num_heads,
            width // num_heads,
            kernel_initializer=_uniform(attention_limit),
            bias_initializer="zeros",
            name=f"{prefix}_attention",
        )(y, y)
        x = layers.Add(name=f"{prefix}_add1")([x, y])
        y = layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name=f"{prefix}_norm2")(x)
        y = layers.Dense(mlp_dim, activation="gelu", name=f"{prefix}_mlp1")(y)
        y = layers.Dense(width, name=f"{prefix}_mlp2")(y)
        x = layers.Add(name=f"{prefix}_add2")([x, y])
    # The final LayerNorm acts on each token alone: normalising only [CLS] is the same.
    x = layers.Cropping1D((0, grid[0] * grid[1]), name="class_token")(x)
    x = layers.Flatten(name="class_features")(x)
    features = layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name="norm")(x)
    return keras.Model(images, features, name=name)
