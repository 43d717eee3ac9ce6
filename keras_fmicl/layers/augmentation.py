"""SimCLR's image augmentation as Keras preprocessing layers (tf.data-safe on every backend)."""

from __future__ import annotations

import math
from typing import Any

import keras

from keras_fmicl.utils import keras_private
from keras_fmicl.utils.checks import check_bool
from keras_fmicl.utils.checks import check_integer
from keras_fmicl.utils.checks import check_positive_integer
from keras_fmicl.utils.checks import is_integer
from keras_fmicl.utils.checks import is_real
from keras_fmicl.utils.registry import PACKAGE

# torchvision's RandomResizedCrop draws up to 10 boxes and keeps the first
# that fits; all 10 are drawn at once here.
_CROP_ATTEMPTS = 10

_INTERPOLATIONS = ("bilinear", "nearest")

# Colour-jitter strength `s` gives brightness, contrast and saturation
# factors `0.8 s` and a hue factor `0.2 s`. `0.8 s` must stay <= 1 (Keras'
# bound for brightness, and a non-negative lower contrast factor).
_MAX_COLOR_JITTER_STRENGTH = 1.25

_DataLayer = keras_private.data_layer_base()


# ---------------------------------------------------------------------------
# Argument validation.

def _check_pair(name: str, value: Any, condition: str, valid) -> tuple:
    message = (
        f"`{name}` must be a pair (min, max) with {condition}. "
        f"Received: {name}={value!r}"
    )
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(message)
    if not all(is_real(v) and math.isfinite(v) for v in value):
        raise ValueError(message)
    low, high = float(value[0]), float(value[1])
    if not (low <= high and valid(low, high)):
        raise ValueError(message)
    return low, high


def _check_scale(name: str, value: Any) -> tuple:
    return _check_pair(
        name, value, "0 < min <= max <= 1", lambda lo, hi: 0 < lo and hi <= 1
    )


def _check_ratio(name: str, value: Any) -> tuple:
    return _check_pair(name, value, "0 < min <= max", lambda lo, hi: 0 < lo)


def _check_image_size(value: Any) -> tuple:
    message = (
        "`image_size` must be a positive integer or a pair (height, width) "
        f"of positive integers. Received: image_size={value!r}"
    )
    if is_integer(value):
        value = (value, value)
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(message)
    if not all(is_integer(v) and v > 0 for v in value):
        raise ValueError(message)
    return int(value[0]), int(value[1])


def _check_probability(name: str, value: Any) -> float:
    if not is_real(value) or not 0 <= value <= 1:
        raise ValueError(
            f"`{name}` must be a probability in [0, 1]. "
            f"Received: {name}={value!r}"
        )
    return float(value)


def _check_seed(value: Any) -> int | None:
    return check_integer("seed", value, allow_none=True)


def _sub_seed(seed: int | None, offset: int) -> int | None:
    """Distinct seeds for the sub-layers, so their random streams differ."""
    return None if seed is None else seed + offset


# ---------------------------------------------------------------------------
# Crop-and-resize as two batched matrix products.

def _resampling_matrix(
    backend,
    start: Any,
    length: Any,
    input_size: Any,
    output_size: int,
    interpolation: str,
    antialias: bool,
) -> Any:
    """`(N, output_size, input_size)` weights resampling one image axis.

    Output pixel `a` of image `n` samples the window
    `[start[n], start[n] + length[n])` of the input axis at the (half-pixel)
    centre `c = start + (a + 0.5) * length / output_size - 0.5`. Bilinear
    weights are the hat function `max(0, 1 - |x - c| / support)` over input
    pixels `x`, with `support = max(1, length / output_size)` when
    `antialias` (a triangle filter widened for downscaling, as PIL and
    torchvision do) and 1 otherwise, normalised to sum to 1. The centre is
    clamped to the image, which replicates the border pixel (half-pixel
    resize semantics).
    """
    np_ = backend.numpy
    step = length / output_size  # (N,)
    output_index = np_.arange(output_size, dtype="float32")
    centres = start[:, None] + (output_index[None, :] + 0.5) * step[:, None] - 0.5
    last = backend.cast(input_size, "float32") - 1.0
    input_index = np_.arange(input_size, dtype="float32")
    if interpolation == "nearest":
        nearest = np_.clip(np_.floor(centres + 0.5), 0.0, last)
        return backend.cast(
            np_.equal(input_index[None, None, :], nearest[:, :, None]), "float32"
        )
    centres = np_.clip(centres, 0.0, last)
    support = np_.maximum(step, 1.0) if antialias else np_.ones_like(step)
    distance = np_.abs(input_index[None, None, :] - centres[:, :, None])
    weights = np_.maximum(1.0 - distance / support[:, None, None], 0.0)
    return weights / np_.sum(weights, axis=-1, keepdims=True)


def _resample(backend, images: Any, rows: Any, columns: Any) -> Any:
    """`images` (N, H, W, C) -> (N, h, w, C) through the axis weights."""
    dtype = images.dtype
    rows = backend.cast(rows, dtype)
    columns = backend.cast(columns, dtype)
    images = backend.numpy.einsum("nah,nhwc->nawc", rows, images)
    return backend.numpy.einsum("nbw,nawc->nabc", columns, images)


def _as_float(backend, value: Any) -> Any:
    return float(value) if isinstance(value, int) else backend.cast(value, "float32")


@keras.saving.register_keras_serializable(package=PACKAGE)
class RandomResizedCrop(_DataLayer):
    """Crops a random box of every image and resizes it (Inception crop).

    For every image of a batch independently, as torchvision's
    `RandomResizedCrop` does: draw an area fraction `s ~ U(scale)` and an
    aspect ratio `r` (width / height) log-uniform in `ratio`; the box has
    width `round(sqrt(s r A))` and height `round(sqrt(s A / r))` for an image
    of area `A`, and a uniformly random integer position. Ten such boxes are
    drawn per image (all at once, no Python loop) and the first that fits
    inside the image is kept; when none fits, the largest centred box whose
    aspect ratio lies in `ratio` is used. The box is then resized to
    `(height, width)`.

    Resizing is separable: each axis is resampled by an `(N, out, in)` weight
    matrix (half-pixel centres, border replicated), so the whole layer is two
    batched matrix products, which are jit/XLA friendly on every backend and
    cost `O(N * height * H * W * C)`: cheap for the small images of
    contrastive pre-training, slower than a gather-based resize on large
    ones.
    With `antialias=True` (torchvision's default) a downscaled axis uses a
    triangle filter widened by the scale factor instead of plain bilinear
    sampling.

    With `training=False` the layer resizes the largest centred box of the
    output's aspect ratio (the whole image when the aspect ratios agree, an
    exact identity when the sizes agree too).

    Outputs are floating point (the layer's compute dtype) in the value range
    of the inputs. The layer also runs inside `tf.data` (`dataset.map`) on
    every Keras backend.

    Args:
        height: Output height, a positive integer.
        width: Output width, a positive integer.
        scale: Range `(min, max)`, `0 < min <= max <= 1`, of the fraction of
            the image area that the box covers.
        ratio: Range `(min, max)`, `0 < min <= max`, of the aspect ratio
            (width / height) of the box, sampled log-uniformly.
        interpolation: `"bilinear"` or `"nearest"`.
        antialias: Whether downscaling uses a widened (area-averaging)
            triangle filter. Ignored for `"nearest"`.
        seed: Integer seed for reproducible crops, or None.
        **kwargs: Base layer arguments (`name`, `dtype`, ...).

    Returns:
        Images of shape `(N, height, width, C)` (or `(height, width, C)` for
        one image).

    Example:

    >>> crop = RandomResizedCrop(24, 24, scale=(0.2, 1.0), seed=1)
    >>> images = np.random.uniform(size=(8, 32, 32, 3))
    >>> crop(images).shape
    (8, 24, 24, 3)

    Reference:
        Szegedy et al. "Going Deeper with Convolutions", CVPR 2015;
        torchvision `transforms.RandomResizedCrop`.
    """

    def __init__(
        self,
        height: int,
        width: int,
        scale: tuple = (0.08, 1.0),
        ratio: tuple = (3.0 / 4.0, 4.0 / 3.0),
        interpolation: str = "bilinear",
        antialias: bool = True,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.height = check_positive_integer("height", height)
        self.width = check_positive_integer("width", width)
        self.scale = _check_scale("scale", scale)
        self.ratio = _check_ratio("ratio", ratio)
        if interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"`interpolation` must be one of {_INTERPOLATIONS}. "
                f"Received: interpolation={interpolation!r}"
            )
        self.interpolation = interpolation
        self.antialias = check_bool("antialias", antialias)
        self.seed = _check_seed(seed)
        self.generator = keras.random.SeedGenerator(self.seed)
        self._convert_input_args = False  # images may be ints; cast in call.
        # No weights depend on the input shape: usable at once, also by
        # `stateless_call` (e.g. under `jax.jit`).
        self.built = True

    def call(self, inputs: Any, training: bool = True) -> Any:
        backend = self.backend
        images = backend.cast(backend.convert_to_tensor(inputs), self.compute_dtype)
        unbatched = len(images.shape) == 3
        if unbatched:
            images = backend.numpy.expand_dims(images, 0)
        elif len(images.shape) != 4:
            raise ValueError(
                "`RandomResizedCrop` expects images of shape (H, W, C) or "
                f"(N, H, W, C). Received: shape={images.shape}"
            )
        batch_size, input_height, input_width, _ = backend.core.shape(images)
        if training:
            top, left, box_height, box_width = self._random_boxes(
                batch_size, input_height, input_width
            )
        else:
            top, left, box_height, box_width = self._centred_boxes(
                batch_size, input_height, input_width
            )
        rows = _resampling_matrix(
            backend, top, box_height, input_height, self.height,
            self.interpolation, self.antialias,
        )
        columns = _resampling_matrix(
            backend, left, box_width, input_width, self.width,
            self.interpolation, self.antialias,
        )
        outputs = _resample(backend, images, rows, columns)
        if unbatched:
            outputs = backend.numpy.squeeze(outputs, axis=0)
        return outputs

    def _random_boxes(self, batch_size, input_height, input_width):
        """`(top, left, height, width)`, each `(N,)` float32 integers."""
        backend = self.backend
        np_ = backend.numpy
        seed = self._get_seed_generator(backend._backend)
        height = _as_float(backend, input_height)
        width = _as_float(backend, input_width)
        # One draw for everything: area fractions and log aspect ratios of
        # the attempts, then the relative position of the box.
        draws = backend.random.uniform(
            (batch_size, 2 * _CROP_ATTEMPTS + 2), dtype="float32", seed=seed
        )
        low_scale, high_scale = self.scale
        area_fraction = low_scale + (high_scale - low_scale) * draws[:, :_CROP_ATTEMPTS]
        low_log_ratio, high_log_ratio = (math.log(r) for r in self.ratio)
        log_ratio = low_log_ratio + (high_log_ratio - low_log_ratio) * (
            draws[:, _CROP_ATTEMPTS : 2 * _CROP_ATTEMPTS]
        )
        position = draws[:, 2 * _CROP_ATTEMPTS :]
        target_area = area_fraction * (height * width)
        aspect = np_.exp(log_ratio)
        box_width = np_.round(np_.sqrt(target_area * aspect))
        box_height = np_.round(np_.sqrt(target_area / aspect))
        fits = np_.logical_and(
            np_.logical_and(box_width >= 1.0, box_width <= width),
            np_.logical_and(box_height >= 1.0, box_height <= height),
        )
        # First attempt that fits (or _CROP_ATTEMPTS when none does).
        attempt = np_.arange(_CROP_ATTEMPTS, dtype="float32")
        first = np_.min(
            np_.where(fits, attempt[None, :], float(_CROP_ATTEMPTS)), axis=1
        )
        chosen = backend.cast(np_.equal(attempt[None, :], first[:, None]), "float32")
        found = first < _CROP_ATTEMPTS

        fallback_height, fallback_width = self._fallback_size(height, width)
        box_width = np_.sum(box_width * chosen, axis=1)
        box_height = np_.sum(box_height * chosen, axis=1)
        box_width = np_.where(found, box_width, fallback_width)
        box_height = np_.where(found, box_height, fallback_height)

        free_height = height - box_height
        free_width = width - box_width
        top = np_.minimum(np_.floor(position[:, 0] * (free_height + 1.0)), free_height)
        left = np_.minimum(np_.floor(position[:, 1] * (free_width + 1.0)), free_width)
        top = np_.where(found, top, np_.floor(free_height / 2.0))
        left = np_.where(found, left, np_.floor(free_width / 2.0))
        return top, left, box_height, box_width

    def _fallback_size(self, height, width):
        """torchvision's box when no draw fits: clamp the image's aspect."""
        np_ = self.backend.numpy
        image_ratio = width / height
        min_ratio, max_ratio = self.ratio
        too_tall = image_ratio < min_ratio
        too_wide = image_ratio > max_ratio
        box_width = np_.where(too_wide, np_.round(height * max_ratio), width)
        box_height = np_.where(too_tall, np_.round(width / min_ratio), height)
        return box_height, box_width

    def _centred_boxes(self, batch_size, input_height, input_width):
        """Largest centred box with the output's aspect ratio."""
        backend = self.backend
        np_ = backend.numpy
        height = _as_float(backend, input_height)
        width = _as_float(backend, input_width)
        output_ratio = self.width / self.height
        box_width = np_.minimum(width, np_.round(height * output_ratio))
        box_height = np_.minimum(height, np_.round(width / output_ratio))
        box_width = box_width * np_.ones((batch_size,), dtype="float32")
        box_height = box_height * np_.ones((batch_size,), dtype="float32")
        top = np_.floor((height - box_height) / 2.0)
        left = np_.floor((width - box_width) / 2.0)
        return top, left, box_height, box_width

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-3], self.height, self.width, input_shape[-1])

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "height": self.height,
                "width": self.width,
                "scale": self.scale,
                "ratio": self.ratio,
                "interpolation": self.interpolation,
                "antialias": self.antialias,
                "seed": self.seed,
            }
        )
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class SimCLRAugmentation(_DataLayer):
    """Random SimCLR view of images: crop, flip, colour jitter, grayscale, blur.

    In order, for every image independently:

    1. `RandomResizedCrop` to `image_size` (area fraction in `crop_scale`,
       aspect ratio in `crop_ratio`).
    2. Horizontal flip with probability 1/2 (`keras.layers.RandomFlip`).
    3. With probability `color_jitter_probability`, colour jitter of strength
       `s = color_jitter_strength` as in SimCLR's TensorFlow code (v1):
       additive brightness `U(-0.8s, 0.8s)` (fraction of the value range),
       contrast factor `U(1 - 0.8s, 1 + 0.8s)`, saturation factor in
       `[1 - 0.8s, 1 + 0.8s]` and hue shift `U(-0.2s, 0.2s)`, applied in
       that fixed order by `keras.layers.RandomBrightness`, `RandomContrast`,
       `RandomSaturation` and `RandomHue` (SimCLR shuffles the order; Keras'
       saturation layer samples `f = m / (1 + m)` uniformly, not the factor
       `m` itself).
    4. Grayscale with probability `grayscale_probability`
       (`keras.layers.RandomGrayscale`; the output keeps 3 channels).
    5. Gaussian blur with probability `blur_probability`, an isotropic sigma
       drawn per image from `U(blur_sigma)` and a kernel of
       `blur_kernel_size` pixels (default: 10% of the image side, odd, as in
       SimCLR). `keras.layers.RandomGaussianBlur` is not used because it
       draws one anisotropic sigma for the whole batch.

    Grayscale images (`C = 1`, e.g. Fashion-MNIST) get brightness and
    contrast jitter only: saturation, hue and grayscale are meaningless for
    one channel and are skipped. Any channel count other than 1 or 3 is an
    error.

    The layer does **not** rescale: inputs are expected in `value_range` and
    the outputs are floats (the layer's compute dtype) clipped to
    `value_range`. The colour operations run on `[0, 1]` internally.

    Every call draws fresh random parameters for every image, so two calls on
    one batch give two independent views. With `training=False` only the
    deterministic centre resize of `RandomResizedCrop` is applied. The layer
    also runs inside `tf.data` (`dataset.map`) on every Keras backend.

    Args:
        image_size: Output size, an integer or a pair `(height, width)`.
        crop_scale: Range of the area fraction of the random crop.
        crop_ratio: Range of the aspect ratio (width / height) of the crop.
        flip: Whether to flip horizontally with probability 1/2.
        color_jitter_strength: SimCLR's colour strength `s` in
            `[0, 1.25]`: 1.0 for ImageNet, 0.5 for CIFAR-10. 0 disables
            colour jitter.
        color_jitter_probability: Probability of jittering an image.
        grayscale_probability: Probability of converting an image to
            grayscale (no effect on 1-channel images).
        blur_probability: Probability of blurring an image (SimCLR: 0.5 on
            ImageNet, 0 on CIFAR).
        blur_sigma: Range `(min, max)`, `0 < min <= max`, of the blur's
            standard deviation in pixels.
        blur_kernel_size: Odd kernel size of the blur, or None for 10% of
            the smaller output side (made odd, at least 3).
        value_range: `(low, high)` range of the input values, kept by the
            outputs.
        seed: Integer seed for reproducible views, or None.
        **kwargs: Base layer arguments (`name`, `dtype`, ...).

    Returns:
        Float images of shape `(N, height, width, C)` (or
        `(height, width, C)` for one image) in `value_range`.

    Example:

    >>> augment = SimCLRAugmentation(image_size=28, seed=0)
    >>> images = np.random.uniform(0, 255, size=(16, 28, 28, 1))
    >>> view_a, view_b = augment(images), augment(images)
    >>> view_a.shape
    (16, 28, 28, 1)

    Reference:
        Chen, Kornblith, Norouzi, Hinton. "A Simple Framework for
        Contrastive Learning of Visual Representations", ICML 2020,
        appendix A.
    """

    def __init__(
        self,
        image_size: int | tuple,
        crop_scale: tuple = (0.08, 1.0),
        crop_ratio: tuple = (3.0 / 4.0, 4.0 / 3.0),
        flip: bool = True,
        color_jitter_strength: float = 0.5,
        color_jitter_probability: float = 0.8,
        grayscale_probability: float = 0.2,
        blur_probability: float = 0.0,
        blur_sigma: tuple = (0.1, 2.0),
        blur_kernel_size: int | None = None,
        value_range: tuple = (0, 255),
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.image_size = _check_image_size(image_size)
        self.crop_scale = _check_scale("crop_scale", crop_scale)
        self.crop_ratio = _check_ratio("crop_ratio", crop_ratio)
        self.flip = check_bool("flip", flip)
        if (
            not is_real(color_jitter_strength)
            or not 0 <= color_jitter_strength <= _MAX_COLOR_JITTER_STRENGTH
        ):
            raise ValueError(
                "`color_jitter_strength` must be a number in "
                f"[0, {_MAX_COLOR_JITTER_STRENGTH}]. "
                f"Received: color_jitter_strength={color_jitter_strength!r}"
            )
        self.color_jitter_strength = float(color_jitter_strength)
        self.color_jitter_probability = _check_probability(
            "color_jitter_probability", color_jitter_probability
        )
        self.grayscale_probability = _check_probability(
            "grayscale_probability", grayscale_probability
        )
        self.blur_probability = _check_probability("blur_probability", blur_probability)
        self.blur_sigma = _check_ratio("blur_sigma", blur_sigma)
        if blur_kernel_size is not None and (
            not is_integer(blur_kernel_size)
            or blur_kernel_size <= 0
            or blur_kernel_size % 2 == 0
        ):
            raise ValueError(
                "`blur_kernel_size` must be a positive odd integer or None. "
                f"Received: blur_kernel_size={blur_kernel_size!r}"
            )
        self.blur_kernel_size = blur_kernel_size
        self.value_range = _check_pair(
            "value_range", value_range, "min < max", lambda lo, hi: lo < hi
        )
        self.seed = _check_seed(seed)
        self.generator = keras.random.SeedGenerator(self.seed)
        self._convert_input_args = False

        self.random_resized_crop = RandomResizedCrop(
            *self.image_size,
            scale=self.crop_scale,
            ratio=self.crop_ratio,
            seed=_sub_seed(self.seed, 1),
            dtype=self.dtype_policy,
        )
        self.random_flip = keras.layers.RandomFlip(
            "horizontal", seed=_sub_seed(self.seed, 2),
            data_format="channels_last", dtype=self.dtype_policy,
        )
        s = self.color_jitter_strength
        unit_range = (0.0, 1.0)
        self.random_brightness = keras.layers.RandomBrightness(
            factor=(-0.8 * s, 0.8 * s), value_range=unit_range,
            seed=_sub_seed(self.seed, 3), dtype=self.dtype_policy,
        )
        # Keras' RandomContrast reads a tuple (a, b) as U(1 - a, 1 + b).
        self.random_contrast = keras.layers.RandomContrast(
            factor=(0.8 * s, 0.8 * s), value_range=unit_range,
            seed=_sub_seed(self.seed, 4), dtype=self.dtype_policy,
        )
        # Keras' RandomSaturation multiplies by f / (1 - f) for f ~ U(factor).
        low, high = 1.0 - 0.8 * s, 1.0 + 0.8 * s
        self.random_saturation = keras.layers.RandomSaturation(
            factor=(low / (1.0 + low), high / (1.0 + high)),
            value_range=unit_range, data_format="channels_last",
            seed=_sub_seed(self.seed, 5), dtype=self.dtype_policy,
        )
        # Keras' RandomHue shifts the hue by +-f / 2 for f ~ U(factor).
        self.random_hue = keras.layers.RandomHue(
            factor=(0.0, 0.4 * s), value_range=unit_range,
            data_format="channels_last",
            seed=_sub_seed(self.seed, 6), dtype=self.dtype_policy,
        )
        self.random_grayscale = keras.layers.RandomGrayscale(
            factor=self.grayscale_probability, data_format="channels_last",
            seed=_sub_seed(self.seed, 7), dtype=self.dtype_policy,
        )
        # No weights depend on the input shape (the sub-layers build on their
        # first call): usable at once, also by `stateless_call`.
        self.built = True

    def build(self, input_shape):
        # The sub-layers build themselves on their first call.
        self.built = True

    def call(self, inputs: Any, training: bool = True) -> Any:
        backend = self.backend
        np_ = backend.numpy
        images = backend.cast(backend.convert_to_tensor(inputs), self.compute_dtype)
        channels = images.shape[-1]
        if len(images.shape) not in (3, 4) or channels not in (1, 3):
            raise ValueError(
                "`SimCLRAugmentation` expects channels-last images of shape "
                "(H, W, C) or (N, H, W, C) with C = 1 or 3. "
                f"Received: shape={tuple(images.shape)}"
            )
        images = self.random_resized_crop(images, training=training)
        if not training:
            return images
        unbatched = len(images.shape) == 3
        if unbatched:
            images = np_.expand_dims(images, 0)
        batch_size = backend.core.shape(images)[0]
        color = channels == 3
        jitter = self.color_jitter_strength > 0 and self.color_jitter_probability > 0
        blur = self.blur_probability > 0
        if jitter or blur:
            # One draw per image: apply jitter?, apply blur?, blur sigma.
            draws = backend.random.uniform(
                (batch_size, 3), dtype="float32",
                seed=self._get_seed_generator(backend._backend),
            )

        if self.flip:
            images = self.random_flip(images, training=True)
        low, high = self.value_range
        images = (images - low) / (high - low)

        if jitter:
            # A copy: Keras' RandomBrightness adds in place (`images +=`),
            # which on torch would also change the un-jittered images.
            jittered = self.random_brightness(np_.copy(images), training=True)
            jittered = self.random_contrast(jittered, training=True)
            if color:
                jittered = self.random_saturation(jittered, training=True)
                jittered = self.random_hue(jittered, training=True)
            images = self._select(
                draws[:, 0] < self.color_jitter_probability, jittered, images
            )
        if color and self.grayscale_probability > 0:
            images = self.random_grayscale(images, training=True)
        if blur:
            low_sigma, high_sigma = self.blur_sigma
            sigma = low_sigma + (high_sigma - low_sigma) * draws[:, 2]
            images = self._select(
                draws[:, 1] < self.blur_probability,
                self._gaussian_blur(images, sigma),
                images,
            )

        images = np_.clip(images, 0.0, 1.0) * (high - low) + low
        images = backend.cast(images, self.compute_dtype)
        if unbatched:
            images = np_.squeeze(images, axis=0)
        return images

    def _select(self, condition, changed, unchanged):
        """Per image: `changed` where `condition` (N,) holds, else `unchanged`."""
        condition = condition[:, None, None, None]
        return self.backend.numpy.where(condition, changed, unchanged)

    def _gaussian_blur(self, images, sigma):
        """Separable Gaussian blur, one sigma (N,) per image.

        The kernel is truncated to `blur_kernel_size` and renormalised where
        it leaves the image (so flat regions stay flat up to the border).
        """
        backend = self.backend
        np_ = backend.numpy
        height, width = self.image_size
        kernel_size = self.blur_kernel_size
        if kernel_size is None:
            kernel_size = max(3, int(0.1 * min(height, width)) // 2 * 2 + 1)
        radius = kernel_size // 2
        two_variances = 2.0 * np_.square(sigma)[:, None, None]

        def weights(size):
            index = np_.arange(size, dtype="float32")
            offset = index[:, None] - index[None, :]  # (size, size)
            inside = backend.cast(np_.abs(offset) <= radius, "float32")
            gauss = np_.exp(-np_.square(offset)[None] / two_variances) * inside[None]
            return gauss / np_.sum(gauss, axis=-1, keepdims=True)

        return _resample(backend, images, weights(height), weights(width))

    def compute_output_shape(self, input_shape):
        return self.random_resized_crop.compute_output_shape(input_shape)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "image_size": self.image_size,
                "crop_scale": self.crop_scale,
                "crop_ratio": self.crop_ratio,
                "flip": self.flip,
                "color_jitter_strength": self.color_jitter_strength,
                "color_jitter_probability": self.color_jitter_probability,
                "grayscale_probability": self.grayscale_probability,
                "blur_probability": self.blur_probability,
                "blur_sigma": self.blur_sigma,
                "blur_kernel_size": self.blur_kernel_size,
                "value_range": self.value_range,
                "seed": self.seed,
            }
        )
        return config
