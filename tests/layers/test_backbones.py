"""Tests of the ResNet-50 and ViT-S/16 encoders and `pooled_encoder` (keras_fmicl.layers).

Parameter counts are computed from each architecture's layer list and checked
against the published totals; the ViT's position embedding against a float64
numpy transcription of MoCo v3's `build_2d_sincos_position_embedding`, and
its forward pass against a float64 numpy one written from the ViT's
definition. Full-size models are only built (without initialising their
weights); training, saving and loading use tiny ones.
"""

import math
import os

import keras
import numpy as np
import pytest

import keras_fmicl
from keras_fmicl.layers import ClassTokenAndPositionEmbedding
from keras_fmicl.layers import pooled_encoder
from keras_fmicl.layers import resnet50
from keras_fmicl.layers import sincos_position_embedding
from keras_fmicl.layers import vit_small
from tests.helpers import backend_independent
from tests.helpers import to_numpy

TINY_VIT = {"depth": 1, "width": 32, "num_heads": 2, "mlp_dim": 64}


def _shapes_only(build):
    """Builds a model without initialising its weights (shapes and counts only)."""
    with keras.StatelessScope(initialize_variables=False):
        return build()


def _count(weights):
    return sum(int(np.prod(w.shape)) for w in weights)


def _images(shape, seed=0):
    return np.random.default_rng(seed).uniform(size=shape).astype("float32")


# ------------------------------------------------------------ ResNet-50


def expected_resnet50_counts(channels):
    """(trainable, non-trainable, conv biases) of keras.applications' ResNet-50 trunk.

    Every convolution has a bias; each BatchNorm has gamma and beta
    (trainable) and a moving mean and variance. Bottleneck blocks
    (1x1 f, 3x3 f, 1x1 4f), a 1x1 projection shortcut in each stage's first
    block.
    """
    trainable = non_trainable = biases = 0

    def conv_bn(kernel, c_in, c_out):
        nonlocal trainable, non_trainable, biases
        trainable += kernel * kernel * c_in * c_out + c_out + 2 * c_out
        non_trainable += 2 * c_out
        biases += c_out

    conv_bn(7, channels, 64)
    c_in = 64
    for filters, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3)):
        for block in range(blocks):
            if block == 0:
                conv_bn(1, c_in, 4 * filters)
            conv_bn(1, c_in, filters)
            conv_bn(3, filters, filters)
            conv_bn(1, filters, 4 * filters)
            c_in = 4 * filters
    return trainable, non_trainable, biases


@backend_independent
def test_resnet50_parameter_count_and_feature_maps():
    model = _shapes_only(resnet50)
    trainable, non_trainable, biases = expected_resnet50_counts(3)
    assert _count(model.trainable_weights) == trainable
    assert _count(model.non_trainable_weights) == non_trainable == 53_120
    # torchvision's resnet50 (25,557,032) less its fc layer (2048 * 1000 + 1000),
    # whose convolutions have no bias
    assert trainable - biases == 25_557_032 - 2_049_000
    assert model.name == "resnet50"
    assert model.output_shape == (None, 2048)
    assert tuple(model.get_layer("conv2_block3_out").output.shape[1:]) == (24, 24, 256)
    assert tuple(model.get_layer("conv5_block3_out").output.shape[1:]) == (3, 3, 2048)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == 53
    assert {(layer.momentum, layer.epsilon) for layer in norms} == {(0.9, 1e-5)}


@backend_independent
def test_resnet50_other_shapes():
    model = _shapes_only(lambda: resnet50((None, None, 1), name="trunk"))
    trainable, non_trainable, _ = expected_resnet50_counts(1)
    assert _count(model.trainable_weights) == trainable
    assert model.name == "trunk" and model.output_shape == (None, 2048)
    assert model.input_shape == (None, None, None, 1)


@pytest.mark.parametrize(
    "kwargs,argument",
    [
        ({"input_shape": (16, 16, 3)}, "input_shape"),  # below the total stride 32
        ({"input_shape": (32, 32)}, "input_shape"),
        ({"input_shape": (32, 32, 0)}, "input_shape"),
        ({"input_shape": "96x96"}, "input_shape"),
        ({"name": ""}, "name"),
        ({"name": None}, "name"),
    ],
)
def test_resnet50_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        resnet50(**kwargs)


# ------------------------------------------------------------ ViT


def expected_vit_counts(image, patch, channels, depth, width, mlp_dim):
    """(trainable, non-trainable) parameters of a ViT with a [CLS] token and
    fixed (non-trainable) position embeddings."""
    tokens = 1 + (image[0] // patch) * (image[1] // patch)
    patch_projection = patch * patch * channels * width + width
    block = (
        2 * 2 * width  # two LayerNorms
        + 4 * (width * width + width)  # query, key, value, output projections
        + (width * mlp_dim + mlp_dim) + (mlp_dim * width + width)  # MLP
    )
    trainable = patch_projection + width + depth * block + 2 * width  # + [CLS], final LayerNorm
    return trainable, tokens * width


@backend_independent
def test_vit_small_parameter_count():
    model = _shapes_only(vit_small)
    trainable, non_trainable = expected_vit_counts((224, 224), 16, 3, 12, 384, 1536)
    assert _count(model.trainable_weights) == trainable == 21_590_016
    assert _count(model.non_trainable_weights) == non_trainable == 197 * 384
    # timm's vit_small_patch16_224 (22,050,664) less its 1000-class head
    assert trainable + non_trainable == 22_050_664 - (384 * 1000 + 1000)
    assert model.output_shape == (None, 384) and model.name == "vit_small"
    attention = model.get_layer("block1_attention")
    assert attention.num_heads == 12 and attention.key_dim == 32
    assert len([layer for layer in model.layers if isinstance(layer, keras.layers.MultiHeadAttention)]) == 12


@pytest.mark.parametrize(
    "input_shape,patch,config",
    [
        ((32, 32, 3), 8, TINY_VIT),
        ((16, 24, 1), 4, {"depth": 2, "width": 24, "num_heads": 3, "mlp_dim": 40}),
    ],
)
@pytest.mark.parametrize("frozen", [False, True])
def test_vit_parameter_count_of_small_configs_and_frozen_projection(input_shape, patch, config, frozen):
    model = _shapes_only(
        lambda: vit_small(input_shape, patch, frozen_patch_projection=frozen, **config)
    )
    trainable, non_trainable = expected_vit_counts(
        input_shape[:2], patch, input_shape[2], config["depth"], config["width"], config["mlp_dim"]
    )
    projection = patch * patch * input_shape[2] * config["width"] + config["width"]
    if frozen:
        trainable, non_trainable = trainable - projection, non_trainable + projection
    assert _count(model.trainable_weights) == trainable
    assert _count(model.non_trainable_weights) == non_trainable
    assert model.get_layer("patch_projection").trainable is not frozen
    assert model.output_shape == (None, config["width"])


def moco_v3_sincos(h, w, embed_dim, temperature=10000.0):
    """MoCo v3's `build_2d_sincos_position_embedding` (vits.py) in float64 numpy,
    [CLS] row included: `(1 + h * w, embed_dim)`."""
    grid_w = np.arange(w, dtype="float64")
    grid_h = np.arange(h, dtype="float64")
    grid_w, grid_h = np.meshgrid(grid_w, grid_h, indexing="ij")  # torch.meshgrid's default
    pos_dim = embed_dim // 4
    omega = np.arange(pos_dim, dtype="float64") / pos_dim
    omega = 1.0 / (temperature**omega)
    out_w = np.einsum("m,d->md", grid_w.flatten(), omega)
    out_h = np.einsum("m,d->md", grid_h.flatten(), omega)
    pos_emb = np.concatenate([np.sin(out_w), np.cos(out_w), np.sin(out_h), np.cos(out_h)], axis=1)
    return np.concatenate([np.zeros((1, embed_dim)), pos_emb], axis=0)


@pytest.mark.parametrize("grid,width", [(14, 384), (2, 32), (7, 8), (1, 4)])
def test_sincos_position_embedding_is_moco_v3s(grid, width):
    expected = moco_v3_sincos(grid, grid, width)
    np.testing.assert_allclose(sincos_position_embedding(grid, grid, width), expected[1:], rtol=0, atol=1e-12)
    layer = ClassTokenAndPositionEmbedding((grid, grid))
    layer.build((None, grid * grid, width))
    np.testing.assert_allclose(to_numpy(layer.position_embedding.value)[0], expected, rtol=0, atol=1e-6)
    assert not layer.position_embedding.trainable and layer.class_token.trainable


@backend_independent
def test_sincos_position_embedding_of_a_rectangular_grid():
    # token r * columns + c: [sin(r w), cos(r w), sin(c w), cos(c w)], w_d = 10000^(-d/D)
    rows, columns, width = 2, 3, 8
    embedding = sincos_position_embedding(rows, columns, width)
    assert embedding.shape == (6, 8) and embedding.dtype == np.float64
    for r in range(rows):
        for c in range(columns):
            for d in range(2):
                omega = 10000.0 ** (-d / 2)
                expected = [math.sin(r * omega), math.cos(r * omega), math.sin(c * omega), math.cos(c * omega)]
                assert embedding[r * columns + c, d::2].tolist() == pytest.approx(expected, abs=1e-15)


def _layer_norm(x, gamma, beta, epsilon=1e-6):
    mean = x.mean(-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + epsilon) * gamma + beta


def _gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def numpy_vit(model, images, patch, depth):
    """The ViT's [CLS] features in float64 from its definition, with the model's weights."""
    w = {v.path: np.asarray(to_numpy(v.value), "float64") for v in model.weights}
    n, height, width_px, channels = images.shape
    rows, columns = height // patch, width_px // patch
    x = images.astype("float64").reshape(n, rows, patch, columns, patch, channels)
    x = x.transpose(0, 1, 3, 2, 4, 5).reshape(n, rows * columns, patch * patch * channels)
    kernel = w["patch_projection/kernel"]
    x = x @ kernel.reshape(-1, kernel.shape[-1]) + w["patch_projection/bias"]
    cls = np.broadcast_to(w["tokens/class_token"], (n, 1, x.shape[-1]))
    x = np.concatenate([cls, x], axis=1) + w["tokens/position_embedding"]
    for b in range(1, depth + 1):
        p = f"block{b}"
        y = _layer_norm(x, w[f"{p}_norm1/gamma"], w[f"{p}_norm1/beta"])
        q, k, v = (
            np.einsum("ntw,whd->nhtd", y, w[f"{p}_attention/{name}/kernel"])
            + w[f"{p}_attention/{name}/bias"][None, :, None, :]  # (heads, head size)
            for name in ("query", "key", "value")
        )
        scores = _softmax(q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1]))
        heads = scores @ v  # (n, h, t, d)
        x = x + np.einsum("nhtd,hdw->ntw", heads, w[f"{p}_attention/attention_output/kernel"])
        x = x + w[f"{p}_attention/attention_output/bias"]
        y = _layer_norm(x, w[f"{p}_norm2/gamma"], w[f"{p}_norm2/beta"])
        y = _gelu(y @ w[f"{p}_mlp1/kernel"] + w[f"{p}_mlp1/bias"])
        x = x + y @ w[f"{p}_mlp2/kernel"] + w[f"{p}_mlp2/bias"]
    return _layer_norm(x[:, 0], w["norm/gamma"], w["norm/beta"])


def test_vit_forward_matches_a_float64_reference():
    config = {"depth": 2, "width": 16, "num_heads": 2, "mlp_dim": 24}
    model = vit_small((16, 24, 3), 8, **config)
    rng = np.random.default_rng(5)
    # every weight off its initial value (zero biases, unit LayerNorm scales)
    model.set_weights([wt + rng.normal(scale=0.3, size=wt.shape).astype(wt.dtype) for wt in model.get_weights()])
    images = _images((3, 16, 24, 3), seed=6)
    expected = numpy_vit(model, images, 8, config["depth"])
    np.testing.assert_allclose(to_numpy(model(images, training=False)), expected, rtol=1e-4, atol=1e-4)


def test_vit_initialisation_is_moco_v3s():
    width, patch, channels = 32, 8, 3
    model = vit_small((32, 32, channels), patch, depth=1, width=width, num_heads=2, mlp_dim=64)
    values = {v.path: to_numpy(v.value) for v in model.weights}
    projection_limit = math.sqrt(6.0 / (patch * patch * channels + width))
    attention_limit = math.sqrt(6.0 / (2 * width))
    kernel = values["patch_projection/kernel"]
    assert np.abs(kernel).max() <= projection_limit and np.abs(kernel).max() > 0.8 * projection_limit
    for name in ("query", "key", "value", "attention_output"):
        kernel = values[f"block1_attention/{name}/kernel"]
        assert np.abs(kernel).max() <= attention_limit and np.abs(kernel).max() > 0.8 * attention_limit
        assert not values[f"block1_attention/{name}/bias"].any()
    assert 0 < np.abs(values["tokens/class_token"]).max() < 1e-5
    assert not values["patch_projection/bias"].any()


@pytest.mark.parametrize(
    "args,kwargs,argument",
    [
        ((), {"input_shape": (30, 32, 3), "patch_size": 8}, "input_shape"),  # not divisible
        ((), {"input_shape": (None, 32, 3), "patch_size": 8}, "input_shape"),  # unknown size
        ((), {"input_shape": (4, 4, 3), "patch_size": 8}, "input_shape"),  # below one patch
        ((), {"input_shape": (32, 32), "patch_size": 8}, "input_shape"),
        ((), {"patch_size": 0}, "patch_size"),
        ((), {"patch_size": 16.0}, "patch_size"),
        ((), {"depth": 0}, "depth"),
        ((), {"width": 30, "num_heads": 2}, "width"),  # not a multiple of 4
        ((), {"width": 32, "num_heads": 3}, "num_heads"),  # does not divide width
        ((), {"mlp_dim": -1}, "mlp_dim"),
        ((), {"frozen_patch_projection": "yes"}, "frozen_patch_projection"),
        ((), {"name": ""}, "name"),
    ],
)
def test_vit_bad_arguments(args, kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        vit_small(*args, **kwargs)


@pytest.mark.parametrize(
    "call,argument",
    [
        (lambda: sincos_position_embedding(2, 2, 6), "width"),
        (lambda: sincos_position_embedding(0, 2, 8), "grid_height"),
        (lambda: sincos_position_embedding(2, 2, 8, temperature=0.0), "temperature"),
        (lambda: ClassTokenAndPositionEmbedding(4), "grid_size"),
        (lambda: ClassTokenAndPositionEmbedding((2, 0)), "grid_size"),
    ],
)
def test_position_embedding_bad_arguments(call, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        call()


def test_class_token_layer_refuses_a_wrong_number_of_patches_and_round_trips_its_config():
    layer = ClassTokenAndPositionEmbedding((2, 3), temperature=100.0, name="tokens")
    with pytest.raises(ValueError, match="expects inputs"):
        layer.build((None, 5, 8))
    clone = ClassTokenAndPositionEmbedding.from_config(layer.get_config())
    assert clone.grid_size == (2, 3) and clone.temperature == 100.0 and clone.name == "tokens"
    tokens = to_numpy(clone(np.zeros((2, 6, 8), "float32")))
    assert tokens.shape == (2, 7, 8)
    np.testing.assert_allclose(tokens[:, 1:], np.broadcast_to(sincos_position_embedding(2, 3, 8, 100.0), (2, 6, 8)), atol=1e-6)


# ------------------------------------------------------------ pooled_encoder


def _feature_map_model():
    images = keras.Input((6, 6, 2))
    return keras.Model(images, keras.layers.Conv2D(5, 3, name="conv")(images), name="maps")


def _vector_model():
    features = keras.Input((4,))
    return keras.Model(features, keras.layers.Dense(2)(features))


def _token_model():
    tokens = keras.Input((4, 3))
    return keras.Model(tokens, keras.layers.Dense(5, name="dense")(tokens), name="tokens")


@pytest.mark.parametrize(
    "build,pooling,reduce",
    [
        (_feature_map_model, "avg", lambda y: y.mean((1, 2))),
        (_feature_map_model, "max", lambda y: y.max((1, 2))),
        (_token_model, "avg", lambda y: y.mean(1)),
        (_token_model, "max", lambda y: y.max(1)),
        (_token_model, "cls", lambda y: y[:, 0]),
    ],
)
def test_pooled_encoder_pools_the_backbone_output(build, pooling, reduce):
    backbone = build()
    encoder = pooled_encoder(backbone, pooling)
    assert encoder.name == f"{backbone.name}_{pooling}"
    assert encoder.output_shape == (None, 5)
    x = _images((3,) + tuple(backbone.input_shape[1:]))
    np.testing.assert_allclose(
        to_numpy(encoder(x)), reduce(to_numpy(backbone(x))), rtol=1e-6, atol=1e-6
    )
    assert encoder.layers[1] is backbone  # shared, not copied


@pytest.mark.parametrize(
    "build,kwargs,match",
    [
        (lambda: keras.layers.Dense(3), {}, "`backbone` must be a keras.Model"),
        (lambda: keras.Sequential([keras.layers.Dense(3)]), {}, "one input and one output"),
        (_vector_model, {}, "already pooled"),
        (_feature_map_model, {"pooling": "cls"}, '`pooling` must be "avg" or "max"'),
        (_token_model, {"pooling": "mean"}, "`pooling`"),
        (_token_model, {"name": ""}, "`name`"),
    ],
)
def test_pooled_encoder_bad_arguments(build, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pooled_encoder(build(), **kwargs)


def test_pooled_encoder_refuses_a_multi_output_backbone():
    images = keras.Input((4, 4, 1))
    maps = keras.layers.Conv2D(2, 1)(images)
    with pytest.raises(ValueError, match="one input and one output"):
        pooled_encoder(keras.Model(images, [maps, maps]))


# ------------------------------------------------------------ training and saving


def _hub_resnet():
    keras_hub = pytest.importorskip("keras_hub")
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[8], input_conv_kernel_sizes=[3], stackwise_num_filters=[64],
        stackwise_num_blocks=[1], stackwise_num_strides=[1], block_type="bottleneck_block",
        image_shape=(32, 32, 3),
    )  # fmt: skip
    return pooled_encoder(backbone, "avg")


def _hub_vit():
    keras_hub = pytest.importorskip("keras_hub")
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(32, 32, 3), patch_size=8, num_layers=1, num_heads=2, hidden_dim=32, mlp_dim=64
    )
    return pooled_encoder(backbone, "cls")


TINY_ENCODERS = {
    "vit_frozen_patch_projection": lambda: vit_small(
        (32, 32, 3), 8, frozen_patch_projection=True, **TINY_VIT
    ),
    "keras_hub_resnet": _hub_resnet,
    "keras_hub_vit": _hub_vit,
}


def train_save_and_load(encoder, tmp_path, run_eagerly=False):
    """One training step of `encoder` in a ContrastiveModel, then a `.keras`
    round trip: the trained model and the restored one, with the weights
    before and after the step ({path: value})."""
    model = keras_fmicl.ContrastiveModel(encoder, projector=keras_fmicl.ProjectionHead(16, 8))
    model.compile(
        optimizer=keras.optimizers.SGD(0.1), loss=keras_fmicl.FMICLLoss("js"), run_eagerly=run_eagerly
    )
    views = _images((4, 2, 32, 32, 3), seed=1)
    before = {w.path: to_numpy(w.value).copy() for w in encoder.weights}
    loss = model.train_on_batch(views, return_dict=True)["loss"]
    assert np.isfinite(loss)
    after = {w.path: to_numpy(w.value) for w in encoder.weights}
    trainable = {w.path for w in encoder.trainable_weights}
    changed = {path for path in before if not np.array_equal(before[path], after[path])}
    assert trainable <= changed  # every trainable weight took a step

    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    images = _images((3, 32, 32, 3), seed=2)
    np.testing.assert_allclose(
        to_numpy(restored.encoder(images, training=False)),
        to_numpy(model.encoder(images, training=False)),
        rtol=1e-6,
        atol=1e-6,
    )
    assert [w.path for w in restored.encoder.trainable_weights] == [
        w.path for w in encoder.trainable_weights
    ]
    return restored, changed


@pytest.mark.parametrize("encoder_name", sorted(TINY_ENCODERS))
def test_tiny_encoder_trains_in_a_contrastive_model_and_round_trips(encoder_name, tmp_path):
    encoder = TINY_ENCODERS[encoder_name]()
    _, changed = train_save_and_load(encoder, tmp_path)
    if encoder_name == "vit_frozen_patch_projection":
        fixed = {"patch_projection/kernel", "patch_projection/bias", "tokens/position_embedding"}
        trainable = {w.path for w in encoder.trainable_weights}
        assert fixed <= {w.path for w in encoder.weights} and not fixed & (trainable | changed)


@backend_independent
def test_resnet50_trains_in_a_contrastive_model_and_round_trips(tmp_path):
    """The full ResNet-50 (23.5M parameters, so once and eagerly: its traced
    step takes minutes to compile on a small CPU). Its layers are core Keras
    layers; the traced training step of such encoders runs under every
    backend in tests/models/test_contrastive_model.py (small_cnn) and above
    (the ViT, keras-hub backbones)."""
    restored, _ = train_save_and_load(resnet50((32, 32, 3)), tmp_path, run_eagerly=True)
    norms = [l for l in restored.encoder.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert {(layer.momentum, layer.epsilon) for layer in norms} == {(0.9, 1e-5)}
