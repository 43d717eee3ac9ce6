"""Training methods as objects (issue 11): `keras_fmicl.methods`.

The model-level behaviour of SimCLR, MoCo v2 and MoCo v3 (EMA, queue,
save/load, resume) is tested in test_contrastive_model.py; here: the
methods' own arguments and configs, and that the interface admits a method
without negatives (BYOL-style) and a method whose views come from dropout
on identical inputs (integer token ids, nested inputs), with two test-only
toy methods written against the public interface only.
"""

import keras
import numpy as np
import pytest
from keras import ops

import keras_fmicl
from keras_fmicl import methods
from tests import reference
from tests.helpers import to_numpy

IMAGE = (8, 8, 1)


# ------------------------------------------------------------ the three methods


def _all_methods():
    return [
        methods.SimCLR(),
        methods.MoCoV2(momentum=0.9, queue_size=128),
        methods.MoCoV2(momentum=keras_fmicl.CosineMomentum(0.99, 100), queue_size=64),
        methods.MoCoV3(momentum=0.95, predictor=keras_fmicl.PredictionHead(16, 8)),
        methods.MoCoV3(),
        methods.SimCSE(),
        methods.SupervisedSimCSE(),
    ]


@pytest.mark.parametrize("index", range(7))
def test_config_round_trip(index):
    method = _all_methods()[index]
    config = method.get_config()
    restored = type(method).from_config(config)
    assert restored.get_config() == config
    assert restored.mode == method.mode
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(method))
    assert type(again) is type(method) and again.get_config() == config


def test_defaults_and_names():
    moco = methods.MoCoV2()
    assert (moco.momentum, moco.queue_size, moco.mode) == (0.99, 65536, "moco")
    v3 = methods.MoCoV3()
    assert (v3.momentum, v3.predictor, v3.mode) == (0.99, None, "mocov3")
    assert methods.SimCLR().mode == "simclr"
    for name, cls in [("simclr", methods.SimCLR), ("moco", methods.MoCoV2), ("MoCoV3", methods.MoCoV3)]:
        assert type(methods.get(name)) is cls
    method = methods.SimCLR()
    assert methods.get(method) is method


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: methods.MoCoV2(momentum=1.0), "momentum=1.0"),
        (lambda: methods.MoCoV2(momentum=-0.1), "momentum=-0.1"),
        (lambda: methods.MoCoV3(momentum=1.5), "momentum=1.5"),
        (lambda: methods.MoCoV3(momentum=True), "momentum=True"),
        (lambda: methods.MoCoV3(momentum="0.9"), "momentum='0.9'"),
        (lambda: methods.MoCoV3(momentum=None), "momentum=None"),
        (lambda: methods.MoCoV2(momentum=lambda step: ops.cast(step, "float32") - 1.0), "value at step 0 is -1.0"),
        (lambda: methods.MoCoV2(queue_size=0), "queue_size=0"),
        (lambda: methods.MoCoV2(queue_size=16.0), "queue_size=16.0"),
        (lambda: methods.MoCoV2(queue_size=True), "queue_size=True"),
        (lambda: methods.MoCoV3(predictor="mlp"), "predictor='mlp'"),
        (lambda: methods.get("byol"), "method='byol'"),
        (lambda: methods.repeat_views(np.zeros((2, 3)), 0), "num_views=0"),
    ],
)
def test_bad_arguments_raise_value_error(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_repeat_views_is_sample_major_and_keeps_dtypes():
    ids = {"token_ids": np.array([[1, 2], [3, 4]], "int32"), "mask": np.array([[1, 0], [1, 1]], "bool")}
    views = methods.repeat_views(ids, 3)
    np.testing.assert_array_equal(to_numpy(views["token_ids"]), [[1, 2]] * 3 + [[3, 4]] * 3)
    assert keras.backend.standardize_dtype(views["token_ids"].dtype) == "int32"
    assert keras.backend.standardize_dtype(views["mask"].dtype) == "bool"


def test_get_reads_the_one_registry_of_methods_by_mode_and_alias():
    assert type(methods.get("simclr")) is methods.SimCLR
    assert type(methods.get(" MoCo ")) is methods.MoCoV2
    assert type(methods.get("MoCo-V2")) is methods.MoCoV2 and type(methods.get("mocov2")) is methods.MoCoV2
    assert type(methods.get("moco_v3")) is methods.MoCoV3
    assert type(methods.get("Supervised-SimCSE")) is methods.SupervisedSimCSE
    method = methods.SimCSE(symmetric=True)
    assert methods.get(method) is method
    assert methods.get(keras.saving.serialize_keras_object(method)).symmetric


# ------------------------------------------- a method without negatives (BYOL)


class _BYOL(methods.MoCoV3):
    """Test-only BYOL-style method: the predictor output of each view
    regresses the stop-gradient key of the other view; no negatives, no
    contrastive loss (compiled with `loss=None`)."""

    mode = "byol"

    def check_loss(self, loss):
        if loss is not None:
            raise ValueError(f"BYOL takes no loss. Received: loss={loss!r}")
        return None

    def loss(self, model, outputs):
        queries = ops.normalize(outputs["queries"], axis=-1)
        keys = ops.normalize(outputs["keys"], axis=-1)
        other = ops.flip(keys, axis=1)  # two views: each predicts the other's key
        per_sample = ops.mean(2.0 - 2.0 * ops.sum(queries * other, axis=-1), axis=1)
        return per_sample, {"alignment": ops.mean(ops.sum((queries - other) ** 2, axis=-1))}


def _views(num_samples, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(size=(num_samples,) + IMAGE)
    views = np.repeat(images[:, None], 2, axis=1) + 0.05 * rng.normal(size=(num_samples, 2) + IMAGE)
    return views.astype("float32")


def _tiny_model(method, **kwargs):
    keras.utils.set_random_seed(0)
    encoder = keras.Sequential([keras.Input(IMAGE), keras.layers.Flatten(), keras.layers.Dense(16)])
    return keras_fmicl.ContrastiveModel(
        encoder, method=method, projector=keras_fmicl.ProjectionHead(16, 8), **kwargs
    )


def _byol_reference(queries, keys):
    q = queries / np.linalg.norm(queries, axis=-1, keepdims=True)
    k = keys / np.linalg.norm(keys, axis=-1, keepdims=True)
    return np.mean(2.0 - 2.0 * np.sum(q * k[:, ::-1], axis=-1))


def test_a_method_without_negatives_trains_on_its_own_loss():
    model = _tiny_model(_BYOL(momentum=0.9, predictor=keras_fmicl.PredictionHead(16, 8)))
    with pytest.raises(ValueError, match="BYOL takes no loss"):
        model.compile(optimizer="adam", loss=keras_fmicl.FMICLLoss())
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=None)
    views = _views(16)
    model.build(views.shape)
    assert model.mode == "byol"
    # the loss the model trains on is the method's, nothing added: the
    # queries and keys of the step, without changing the model's state
    outputs, _ = model.stateless_call(
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        views,
        training=True,
    )
    expected = _byol_reference(to_numpy(outputs["queries"]).astype("float64"), to_numpy(outputs["keys"]))
    logs = model.train_on_batch(views, return_dict=True)
    assert logs["loss"] == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert logs["alignment"] > 0
    predictor = model.method.predictor
    assert any(v is w for v in predictor.trainable_variables for w in model.trainable_variables)
    history = model.fit(_views(32, seed=1), batch_size=16, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


# ----------------------------------- views from dropout on identical inputs


class _DropoutViews(methods.SimCLR):
    """Test-only SimCSE-style method: the same input `num_views` times
    through the online network (dropout makes the views differ)."""

    mode = "dropout_views"

    def view_shape(self, model, input_shape):
        return methods.map_shapes(lambda shape: (None,) + shape[1:], input_shape)

    def draw_views(self, model, inputs, training):
        return methods.repeat_views(inputs, model.num_views)


class _TokenEncoder(keras.layers.Layer):
    """Token ids and padding mask -> masked mean of dropped-out embeddings.

    Records the dtype of the token ids it receives in the step (not in
    symbolic builds, whose dtype Keras does not know from shapes)."""

    def __init__(self, rate=0.3, **kwargs):
        super().__init__(**kwargs)
        self.embedding = keras.layers.Embedding(50, 16)
        self.dropout = keras.layers.Dropout(rate, seed=3)
        self.dense = keras.layers.Dense(16)
        self.token_dtypes = set()

    def build(self, input_shape):
        self.embedding.build(input_shape["token_ids"])
        self.dense.build((None, 16))

    def call(self, inputs, training=None):
        ids, mask = inputs["token_ids"], inputs["padding_mask"]
        if not isinstance(ids, keras.KerasTensor):
            self.token_dtypes.add(keras.backend.standardize_dtype(ids.dtype))
        x = self.dropout(self.embedding(ids), training=training)
        weights = ops.cast(mask, x.dtype)[..., None]
        x = ops.sum(x * weights, axis=1) / ops.maximum(ops.sum(weights, axis=1), 1.0)
        return self.dense(x)

    def compute_output_shape(self, input_shape):
        return (input_shape["token_ids"][0], 16)


def _sentences(num_samples, length=6, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 50, size=(num_samples, length)).astype("int32")
    lengths = rng.integers(2, length + 1, size=num_samples)
    mask = np.arange(length)[None] < lengths[:, None]
    return {"token_ids": np.where(mask, ids, 0).astype("int32"), "padding_mask": mask}


@pytest.mark.parametrize("method", [_DropoutViews, methods.SimCSE], ids=["toy", "simcse"])
def test_dropout_views_of_integer_token_ids_train_on_every_backend(method):
    encoder = _TokenEncoder()
    model = keras_fmicl.ContrastiveModel(
        encoder, method=method(), projector=keras_fmicl.ProjectionHead(16, 8)
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=keras_fmicl.InfoNCELoss(0.2))
    history = model.fit(_sentences(32), batch_size=16, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert len(set(history.history["loss"])) > 1
    assert encoder.token_dtypes == {"int32"}  # never cast to float
    # the views of a sample differ only through dropout
    batch = _sentences(4, seed=1)
    features = to_numpy(model(batch, training=True)["features"])  # (4, 2, 16)
    assert np.abs(features[:, 0] - features[:, 1]).max() > 1e-3
    features = to_numpy(model(batch, training=False)["features"])
    np.testing.assert_array_equal(features[:, 0], features[:, 1])


def test_integer_images_get_image_handling():
    # images (N, H, W, C) of an integer dtype are cast to float32 before the
    # augmenter draws their views (no rescaling)
    keras.utils.set_random_seed(0)
    model = keras_fmicl.ContrastiveModel(
        keras.Sequential([keras.Input(IMAGE), keras.layers.Flatten()]),
        augmenter=keras.layers.RandomFlip("horizontal", seed=0),
    )
    images = np.random.default_rng(0).integers(0, 256, size=(3,) + IMAGE).astype("uint8")
    features = to_numpy(model(images, training=True)["features"])
    assert features.dtype == np.float32
    flipped = np.stack([images, images[:, :, ::-1]]).reshape(2, 3, -1).astype("float32")
    for view in range(2):  # each drawn view is the image or its mirror
        assert all(any(np.array_equal(features[i, view], f[i]) for f in flipped) for i in range(3))


def test_simcse_takes_no_augmenter_and_is_found_by_name():
    assert isinstance(methods.get("simcse"), methods.SimCSE)
    model = keras_fmicl.ContrastiveModel(
        _TokenEncoder(), method=methods.SimCSE(),
        augmenter=keras.layers.RandomFlip("horizontal"),
    )
    with pytest.raises(ValueError, match="augmenter"):
        model(_sentences(4))


# ------------------------------------- supervised SimCSE: hard negatives


def _triples(num_samples, columns=3, length=6, seed=0):
    """`{"token_ids", "padding_mask"}` of shape (N, C, L): C sentences a sample."""
    rows = _sentences(num_samples * columns, length=length, seed=seed)
    return {key: value.reshape((num_samples, columns, length)) for key, value in rows.items()}


def _supervised_simcse_reference(queries, hard_negatives, loss_kind, parameter, alpha=1.0):
    """Per-sample supervised SimCSE loss, float64, by explicit loops.

    Anchor (i, a), a < V: its positives are the other views (i, w); its
    negatives are every view (j, w) of every other sample j != i and the
    hard negative of every sample j, its own included. `loss_kind` is a
    divergence name (f-MICL, f-Gaussian similarity of bandwidth
    `parameter`) or "infonce" (cosine similarity at temperature `parameter`).
    """
    queries = np.asarray(queries, np.float64)
    hard = [] if hard_negatives is None else list(np.asarray(hard_negatives, np.float64))
    n, v, _ = queries.shape
    similarity = "cosine" if loss_kind == "infonce" else "gaussian"
    losses = np.zeros((n, v))
    for i in range(n):
        for a in range(v):
            anchor = queries[i, a]
            positives = [queries[i, w] for w in range(v) if w != a]
            negatives = [queries[j, w] for j in range(n) if j != i for w in range(v)] + hard
            pos_l = [reference.log_ratio(anchor, p, similarity, parameter) for p in positives]
            neg_l = [reference.log_ratio(anchor, m, similarity, parameter) for m in negatives]
            if loss_kind == "infonce":
                terms = []
                for lp in pos_l:
                    logits = np.array([lp] + neg_l)
                    top = logits.max()
                    terms.append(-lp + top + np.log(np.sum(np.exp(logits - top))))
                losses[i, a] = np.mean(terms)
            else:
                f, fp = reference.generator(loss_kind)
                u_pos, u_neg = np.exp(pos_l), np.exp(neg_l)
                losses[i, a] = -np.mean(fp(u_pos)) + alpha * np.mean(u_neg * fp(u_neg) - f(u_neg))
    return losses.mean(axis=1)


def _supervised_model(loss, run_eagerly=False, symmetric=False):
    keras.utils.set_random_seed(0)
    model = keras_fmicl.ContrastiveModel(
        _TokenEncoder(rate=0.3), method=methods.SupervisedSimCSE(symmetric=symmetric),
        projector=keras_fmicl.ProjectionHead(16, 8),
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss, run_eagerly=run_eagerly)
    return model


@pytest.mark.parametrize(
    "loss_kind, make_loss, columns",
    [
        ("kl", lambda: keras_fmicl.FMICLLoss("kl", sigma=0.5, alpha=3.0), 3),
        ("infonce", lambda: keras_fmicl.InfoNCELoss(temperature=0.2), 3),
        ("js", lambda: keras_fmicl.FMICLLoss("js", sigma=0.7, alpha=1.0), 2),
    ],
    ids=["kl_triples", "infonce_triples", "js_pairs"],
)
def test_supervised_simcse_loss_matches_float64_reference(loss_kind, make_loss, columns):
    """The symmetric form (`symmetric=True`); SimCSE's own pairs, the default,
    are checked in tests/methods/test_reference_methods.py."""
    loss = make_loss()
    model = _supervised_model(loss, symmetric=True)
    batch = _triples(6, columns=columns)
    outputs = model(batch, training=False)  # no dropout: the step's embeddings
    queries = to_numpy(outputs["queries"])
    assert queries.shape == (6, 2, 8)
    hard = outputs.get(methods.HARD_NEGATIVES)
    assert (hard is None) == (columns == 2)
    hard = None if hard is None else to_numpy(hard)
    if hard is not None:
        assert hard.shape == (6, 8)
    parameter = loss.similarity.get_config().get("temperature" if loss_kind == "infonce" else "sigma")
    alpha = getattr(loss, "alpha", 1.0)
    expected = _supervised_simcse_reference(queries, hard, loss_kind, parameter, alpha)
    logs = model.test_on_batch(batch, return_dict=True)
    assert logs["loss"] == pytest.approx(float(np.mean(expected)), rel=1e-4, abs=1e-5)
    # the hard negatives are negatives, not positives: with them as a third
    # view of the sample (positives) the loss would differ
    if hard is not None:
        as_views = np.concatenate([queries, hard[:, None]], axis=1)
        wrong = _supervised_simcse_reference(as_views, None, loss_kind, parameter, alpha)
        assert abs(float(np.mean(wrong)) - logs["loss"]) > 1e-3


def test_supervised_simcse_trains_on_token_ids_on_every_backend():
    model = _supervised_model(keras_fmicl.FMICLLoss("kl", sigma=0.5))
    history = model.fit(_triples(32), batch_size=16, epochs=1, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert model.encoder.token_dtypes == {"int32"}
    assert model.mode == "supervised_simcse"
    # the features (for the probe and `predict`) are the positives' only
    features = to_numpy(model(_triples(4, seed=2), training=False)["features"])
    assert features.shape == (4, 2, 16)


def test_supervised_simcse_bad_inputs():
    assert isinstance(methods.get("supervised_simcse"), methods.SupervisedSimCSE)
    model = _supervised_model(keras_fmicl.InfoNCELoss())
    with pytest.raises(ValueError, match=r"C in \(2, 3\)"):
        model(_triples(4, columns=4))
    with pytest.raises(ValueError, match=r"C in \(2, 3\)"):
        model(_sentences(4))  # (N, L): no columns
    uneven = _triples(4)
    uneven["padding_mask"] = uneven["padding_mask"][:, :2]
    with pytest.raises(ValueError, match="same number of columns"):
        model(uneven)
    with pytest.raises(ValueError, match="augmenter"):
        keras_fmicl.ContrastiveModel(
            _TokenEncoder(), method=methods.SupervisedSimCSE(),
            augmenter=keras.layers.RandomFlip("horizontal"),
        )(_triples(4))
