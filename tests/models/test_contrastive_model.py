import os
import warnings

import keras
import numpy as np
import pytest
from keras import ops

import keras_fmicl
from tests.helpers import to_numpy
from tests.helpers import value_and_grad

IMAGE = (8, 8, 1)


@pytest.fixture(scope="module")
def digits():
    images, labels = keras_fmicl.data.load("digits", "train")
    return images[:256].astype("float32") / 255.0, labels[:256]


def make_model(
    mode="simclr", num_classes=10, seed=0, momentum=0.9, queue_size=128, augmenter=True, tiny=False,
    **moco_options,
):  # fmt: skip
    """A small model; `tiny`: a one-layer dense encoder (fast to compile);
    `moco_options`: `MoCoV2`'s `symmetric` and `initial_queue`."""
    keras.utils.set_random_seed(seed)
    if tiny:
        encoder = keras.Sequential([keras.Input(IMAGE), keras.layers.Flatten(), keras.layers.Dense(16)])
    else:
        encoder = keras_fmicl.small_cnn(IMAGE, width=8)
    method = {
        "simclr": lambda: keras_fmicl.methods.SimCLR(),
        "moco": lambda: keras_fmicl.methods.MoCoV2(
            momentum=momentum, queue_size=queue_size, **moco_options
        ),
        "mocov3": lambda: keras_fmicl.methods.MoCoV3(
            momentum=momentum, predictor=keras_fmicl.PredictionHead(32, 16)
        ),
    }[mode]()
    return keras_fmicl.ContrastiveModel(
        encoder=encoder,
        method=method,
        projector=keras_fmicl.ProjectionHead(32, 16),
        augmenter=keras_fmicl.SimCLRAugmentation(
            8, crop_scale=(0.4, 1.0), flip=False, value_range=(0, 1), seed=seed
        )
        if augmenter
        else None,
        num_classes=num_classes,
    )


def compile_model(model, loss=None, learning_rate=3e-3, optimizer=None):
    model.compile(
        optimizer=optimizer or keras.optimizers.Adam(learning_rate),
        loss=loss or keras_fmicl.FMICLLoss("kl", sigma=0.5),
    )
    return model


def views_of(images, num_views=2, seed=0):
    """Views drawn outside the model: independent noisy copies."""
    rng = np.random.default_rng(seed)
    stacked = np.repeat(images[:, None], num_views, axis=1)
    return (stacked + 0.05 * rng.normal(size=stacked.shape)).astype("float32")


@pytest.mark.parametrize("mode", ["simclr", "moco", "mocov3"])
def test_each_mode_trains_with_falling_loss_and_reports_metrics(mode, digits):
    images, labels = digits
    model = compile_model(make_model(mode))
    assert model.mode == mode
    history = model.fit(images, labels, batch_size=32, epochs=4, verbose=0, shuffle=False)
    logs = history.history
    for key in ["loss", "alignment", "uniformity", "mi_estimate", "probe_loss", "probe_accuracy"]:
        assert key in logs, key
        assert np.all(np.isfinite(logs[key])), (key, logs[key])
    assert logs["loss"][-1] < logs["loss"][0]
    contrastive = np.array(logs["loss"]) - np.array(logs["probe_loss"])
    assert contrastive[-1] < contrastive[0]
    evaluated = model.evaluate(images, labels, batch_size=32, verbose=0, return_dict=True)
    assert set(evaluated) >= {"loss", "alignment", "uniformity", "mi_estimate", "probe_accuracy"}
    assert np.isfinite(evaluated["loss"])
    features = model.predict(images[:10], verbose=0)
    assert features.shape == (10, 32)
    np.testing.assert_allclose(
        features, to_numpy(model.encoder(images[:10], training=False)), rtol=1e-5, atol=1e-5
    )


def test_fit_on_views_from_tf_data_and_arrays(digits):
    images, labels = digits
    dataset = keras_fmicl.data.multiview_dataset(
        (images * 255).astype("uint8"),
        labels,
        augmenter=keras.layers.RandomFlip("horizontal", seed=1),
        batch_size=32,
        seed=2,
    )
    # the input formats are under test, not the encoder: the dense one
    model = compile_model(make_model("simclr", augmenter=False, tiny=True))
    history = model.fit(dataset, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert "probe_accuracy" in history.history
    # pre-drawn views as a plain (N, V, H, W, C) array, no labels, no probe
    model = compile_model(make_model("mocov3", num_classes=None, augmenter=False, tiny=True))
    history = model.fit(views_of(images), epochs=2, batch_size=32, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert "probe_accuracy" not in history.history


def test_fit_on_a_py_dataset_of_raw_images(digits):
    images, _ = digits

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return len(images) // 32

        def __getitem__(self, index):
            return images[index * 32 : (index + 1) * 32]

    model = compile_model(make_model("moco", num_classes=None, tiny=True))
    history = model.fit(Batches(), epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


def _key_and_online(model):
    pairs = model.method.key_pairs(model)
    return [to_numpy(k.value).copy() for k, _ in pairs], [to_numpy(o.value).copy() for _, o in pairs]


def _online_layers(model):
    return [layer for layer in (model.encoder, model.projector) if layer is not None]


@pytest.mark.parametrize("schedule", [False, True])
def test_key_weights_are_the_ema_of_the_online_weights(schedule, digits):
    images, _ = digits
    momentum = keras_fmicl.CosineMomentum(0.8, decay_steps=10) if schedule else 0.8
    # pre-drawn views: the augmenter plays no part in the EMA
    model = compile_model(make_model("moco", num_classes=None, momentum=momentum, augmenter=False))
    views = views_of(images[:96])
    model.build(views[:32].shape)
    keys, online = _key_and_online(model)
    for key, value in zip(keys, online):
        np.testing.assert_array_equal(key, value)  # the key network starts as a copy
    for step in range(3):
        keys, online = _key_and_online(model)
        model.train_on_batch(views[32 * step : 32 * (step + 1)])
        m = float(momentum(step)) if schedule else 0.8
        new_keys, new_online = _key_and_online(model)
        assert any(not np.allclose(a, b) for a, b in zip(online, new_online))
        for old_key, old_online, new_key in zip(keys, online, new_keys):
            np.testing.assert_allclose(new_key, m * old_key + (1 - m) * old_online, rtol=1e-5, atol=1e-6)
    assert int(to_numpy(model.training_steps.value)) == 3


def test_queue_holds_the_most_recent_keys_in_order(digits):
    images, _ = digits
    batch, queue_size, steps = 8, 20, 4  # 8 keys a step (view 1): the ring wraps
    model = compile_model(make_model("moco", num_classes=None, momentum=0.0, queue_size=queue_size, augmenter=False))
    views = views_of(images[: batch * steps])
    model.build(views[:batch].shape)
    written = []
    for step in range(steps):
        chunk = views[batch * step : batch * (step + 1)]
        # momentum 0: the keys are the online network (training mode, on
        # the batch of views 1) before the step
        x = chunk[:, 1]
        for layer in _online_layers(model):
            x, _ = layer.stateless_call(
                [v.value for v in layer.trainable_variables],
                [v.value for v in layer.non_trainable_variables],
                x,
                training=True,
            )
        written.append(to_numpy(x).astype("float64"))
        model.train_on_batch(chunk)
    # with f-MICL the queue holds the keys standardised over their batch
    written = [(x - x.mean(axis=0)) / np.sqrt(x.var(axis=0) + 1e-5) for x in written]
    written = np.concatenate(written)  # (32, 16), in sample order
    pointer = int(to_numpy(model.method.queue_pointer.value))
    assert pointer == (batch * steps) % queue_size
    assert int(to_numpy(model.method.queue_count.value)) == queue_size
    ordered = np.roll(to_numpy(model.method.queue.value), -pointer, axis=0)
    np.testing.assert_allclose(ordered, written[-queue_size:], rtol=1e-4, atol=1e-5)


def test_queue_is_masked_until_filled_and_metrics_skip_the_steps_without_negatives(digits):
    images, _ = digits
    model = compile_model(
        make_model("moco", num_classes=None, queue_size=64, augmenter=False, tiny=True, initial_queue="empty")
    )
    model.build((16, 2) + IMAGE)
    assert int(to_numpy(model.method.queue_count.value)) == 0
    model.train_on_batch(views_of(images[:16]))
    assert int(to_numpy(model.method.queue_count.value)) == 16
    assert int(to_numpy(model.method.queue_pointer.value)) == 16
    assert np.all(to_numpy(model.method.queue.value)[16:] == 0.0)
    # the queue was empty at that step: no negatives, no uniformity
    assert float(to_numpy(model.uniformity_tracker.count)) == 0.0
    assert float(to_numpy(model.alignment_tracker.count)) == 1.0


def test_probe_gradient_never_reaches_the_encoder(digits):
    images, labels = digits
    model = compile_model(make_model("simclr", tiny=True, augmenter=False))
    views = views_of(images[:16])
    model.build(views.shape)
    encoder = model.encoder
    variables = encoder.trainable_variables
    flat = views.reshape((-1,) + IMAGE)

    def probe_only(*values):
        features, _ = encoder.stateless_call(
            list(values), [v.value for v in encoder.non_trainable_variables], flat, training=True
        )
        features = ops.reshape(features, (16, 2, -1))
        return model._probe_loss(labels[:16], features, None)

    value, grads = value_and_grad(probe_only, *[to_numpy(v.value) for v in variables])
    assert value > 0
    for grad in grads:
        np.testing.assert_array_equal(grad, 0.0)
    # while a training step does train the probe itself
    before = to_numpy(model.probe.kernel.value).copy()
    model.train_on_batch(views, labels[:16])
    assert not np.allclose(before, to_numpy(model.probe.kernel.value))


@pytest.mark.parametrize("mode", ["simclr", "moco", "mocov3"])
def test_save_and_load_restore_every_variable(mode, digits, tmp_path):
    # every method: its state (key network, queue and pointer, predictor) too
    images, labels = digits
    model = compile_model(make_model(mode, tiny=True))
    model.fit(images[:128], labels[:128], batch_size=32, epochs=1, verbose=0, shuffle=False)
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored, keras_fmicl.ContrastiveModel)
    assert isinstance(restored.loss, keras_fmicl.FMICLLoss)
    assert restored.mode == mode
    assert type(restored.method) is type(model.method)
    assert len(restored.variables) == len(model.variables)
    if mode != "simclr":  # the key network and the queue are part of the state
        assert model.method.key_variables
        assert all(any(v is k for v in model.variables) for k in model.method.key_variables)
    if mode == "moco":
        assert int(to_numpy(model.method.queue_count.value)) == 128
    for a, b in zip(model.variables, restored.variables):
        np.testing.assert_array_equal(to_numpy(a.value), to_numpy(b.value), err_msg=a.path)
    assert len(restored.optimizer.variables) == len(model.optimizer.variables)
    for a, b in zip(model.optimizer.variables, restored.optimizer.variables):
        np.testing.assert_array_equal(to_numpy(a.value), to_numpy(b.value), err_msg=a.path)
    np.testing.assert_allclose(
        model.predict(images[:20], verbose=0), restored.predict(images[:20], verbose=0), rtol=1e-6
    )
    # the next training step is the same (same views: the augmenter's seed
    # state is a saved variable)
    first = model.train_on_batch(images[128:160], labels[128:160], return_dict=True)
    second = restored.train_on_batch(images[128:160], labels[128:160], return_dict=True)
    for key in first:
        assert first[key] == pytest.approx(second[key], rel=1e-5, abs=1e-6), key
    for a, b in zip(model.variables, restored.variables):
        np.testing.assert_allclose(to_numpy(a.value), to_numpy(b.value), rtol=1e-5, atol=1e-6, err_msg=a.path)


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("interrupted")


def test_backup_and_restore_resumes_with_identical_losses(digits, tmp_path):
    images, labels = digits
    data = (images[:128], labels[:128])

    def fresh():
        model = compile_model(make_model("moco", seed=3, tiny=True))
        model.build(data[0][:32].shape)
        return model

    reference = fresh().fit(*data, batch_size=32, epochs=4, verbose=0, shuffle=False).history

    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(RuntimeError, match="interrupted"):
        fresh().fit(*data, batch_size=32, epochs=4, verbose=0, shuffle=False, callbacks=[backup, _Interrupt()])
    resumed = fresh().fit(*data, batch_size=32, epochs=4, verbose=0, shuffle=False, callbacks=[backup]).history
    assert len(resumed["loss"]) == 2  # epochs 3 and 4
    for key in ["loss", "alignment", "uniformity", "probe_accuracy"]:
        np.testing.assert_allclose(resumed[key], reference[key][2:], rtol=1e-4, atol=1e-6, err_msg=key)


def test_labels_without_probe_and_probe_without_labels_warn_and_train(digits):
    images, labels = digits
    views = views_of(images[:64])  # pre-drawn: the augmenter plays no part
    model = compile_model(make_model("simclr", num_classes=None, tiny=True, augmenter=False))
    with pytest.warns(UserWarning, match="no probe"):
        history = model.fit(views, labels[:64], batch_size=32, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    model = compile_model(make_model("simclr", num_classes=10, tiny=True, augmenter=False))
    with pytest.warns(UserWarning, match="holds no labels"):
        history = model.fit(views, batch_size=32, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_info_nce_and_every_divergence_compile(digits):
    images, _ = digits
    views = views_of(images[:64])  # pre-drawn: the augmenter plays no part
    for loss in [keras_fmicl.InfoNCELoss(0.2), keras_fmicl.FMICLLoss("vlc", similarity="cosine")]:
        model = compile_model(make_model("mocov3", num_classes=None, tiny=True, augmenter=False), loss=loss)
        history = model.fit(views, batch_size=32, epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][0])


def test_fit_under_mixed_precision(digits):
    images, _ = digits
    keras.config.set_dtype_policy("mixed_bfloat16")
    model = compile_model(make_model("moco", num_classes=None))
    history = model.fit(images[:64], batch_size=32, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


def test_tensorboard_and_csv_logger_record_the_metrics(digits, tmp_path):
    pytest.importorskip("tensorboard")
    images, _ = digits
    # the callbacks are under test: the dense encoder on pre-drawn views
    model = compile_model(make_model("simclr", num_classes=None, augmenter=False, tiny=True))
    csv_path = tmp_path / "log.csv"
    model.fit(
        views_of(images[:64]),
        batch_size=32,
        epochs=1,
        verbose=0,
        callbacks=[
            keras.callbacks.TensorBoard(str(tmp_path / "tb")),
            keras.callbacks.CSVLogger(str(csv_path)),
        ],
    )
    header = csv_path.read_text().splitlines()[0].split(",")
    assert {"loss", "alignment", "uniformity", "mi_estimate"} <= set(header)
    assert any(name.startswith("events") for _, _, files in os.walk(tmp_path / "tb") for name in files)


def test_config_round_trip():
    model = make_model("mocov3", momentum=keras_fmicl.CosineMomentum(0.99, 100))
    config = model.get_config()
    restored = keras_fmicl.ContrastiveModel.from_config(config)
    assert restored.get_config() == config
    assert isinstance(restored.method, keras_fmicl.methods.MoCoV3)
    assert restored.mode == "mocov3"
    assert isinstance(restored.method.momentum, keras_fmicl.CosineMomentum)
    assert isinstance(restored.method.predictor, keras_fmicl.PredictionHead)


# ----------------------------------------------------------------- bad input


def _encoder():
    return keras_fmicl.small_cnn(IMAGE, width=8)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_views": 1}, "num_views=1"),
        ({"num_views": 2.0}, "num_views=2.0"),
        ({"num_views": True}, "num_views=True"),
        ({"num_classes": 1}, "num_classes=1"),
        ({"method": "byol"}, "method='byol'"),
        ({"method": keras_fmicl.SimCLRAugmentation(8)}, "method=<SimCLRAugmentation"),
        # the arguments of the releases before `method=`
        ({"momentum": 0.9}, r"`momentum` is no longer an argument.*MoCoV2\(momentum="),
        ({"queue_size": 16}, "queue_size=16"),
        ({"predictor": keras_fmicl.PredictionHead(8, 8)}, "`predictor` is no longer"),
        ({"projector": "mlp"}, "projector='mlp'"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        keras_fmicl.ContrastiveModel(_encoder(), **kwargs)


def test_encoder_output_must_be_rank_two():
    encoder = keras.Sequential([keras.Input(IMAGE), keras.layers.Conv2D(4, 3)])
    model = keras_fmicl.ContrastiveModel(encoder, augmenter=keras.layers.RandomFlip())
    with pytest.raises(ValueError, match=r"rank-2 features.*\(None, 6, 6, 4\)"):
        model.build((4,) + IMAGE)


@pytest.mark.parametrize("loss", ["mse", keras.losses.MeanSquaredError(), None])
def test_loss_must_be_a_contrastive_loss_of_the_package(loss):
    model = keras_fmicl.ContrastiveModel(_encoder(), augmenter=keras.layers.RandomFlip())
    with pytest.raises(ValueError, match="contrastive loss of keras_fmicl"):
        model.compile(optimizer="adam", loss=loss)


def test_raw_images_need_an_augmenter():
    model = keras_fmicl.ContrastiveModel(_encoder())
    with pytest.raises(ValueError, match="need an `augmenter`"):
        model.build((4,) + IMAGE)
    with pytest.raises(ValueError, match="under 'views'"):
        model.build({"images": (4, 2) + IMAGE})


def test_queue_smaller_than_a_batch_of_keys_raises(digits):
    images, _ = digits
    model = compile_model(make_model("moco", num_classes=None, queue_size=8, augmenter=False))
    with pytest.raises(ValueError, match="queue_size"):
        model.train_on_batch(views_of(images[:16]))


def test_key_forward_leaves_the_online_batch_norm_statistics_alone(digits):
    images, _ = digits
    model = compile_model(make_model("moco", num_classes=None, augmenter=False))
    views = views_of(images[:16])
    model.build(views.shape)
    encoder = model.encoder
    flat = views[:, 0]  # the online network embeds the queries' view
    _, expected = encoder.stateless_call(
        [v.value for v in encoder.trainable_variables],
        [v.value for v in encoder.non_trainable_variables],
        flat,
        training=True,
    )
    model(views, training=True)
    for variable, value in zip(encoder.non_trainable_variables, expected):
        np.testing.assert_allclose(to_numpy(variable.value), to_numpy(value), rtol=1e-5, atol=1e-6)


def _key_copies(model):
    """`(online variable name, its key copy's value)` of every online variable, in order."""
    method = model.method
    return [
        (v.name, to_numpy(method.key_variables[method._key_index[id(v)]].value).copy())
        for layer in _online_layers(model)
        for v in layer.variables
    ]


def test_freezing_a_layer_after_build_keeps_the_key_network_matched(digits, tmp_path):
    images, _ = digits
    views = views_of(images[:64])  # pre-drawn: the augmenter plays no part
    keras.utils.set_random_seed(0)
    encoder = keras.Sequential([
        keras.Input(IMAGE), keras.layers.Flatten(), keras.layers.Dense(16),
        keras.layers.BatchNormalization(), keras.layers.Dense(16),
    ])
    model = compile_model(keras_fmicl.ContrastiveModel(
        encoder, method=keras_fmicl.methods.MoCoV2(momentum=0.9, queue_size=128),
        projector=keras_fmicl.ProjectionHead(32, 16),
    ))
    model.fit(views, batch_size=32, epochs=1, verbose=0)
    # the encoder's first dense layer: its kernel now comes after the batch
    # norm's weights in `trainable_variables` order (the encoder's config
    # keeps the flag, so a loaded model is built with the layer frozen)
    frozen = encoder.layers[1]
    frozen.trainable = False
    compile_model(model)
    key = model.method.key_variables[model.method._key_index[id(frozen.kernel)]]
    before = to_numpy(key.value) - to_numpy(frozen.kernel.value)
    history = model.fit(views, batch_size=32, epochs=1, verbose=0)  # 2 steps, momentum 0.9
    assert np.isfinite(history.history["loss"][0])
    # the EMA still runs over the frozen weights (as MoCo's over all parameters)
    after = to_numpy(key.value) - to_numpy(frozen.kernel.value)
    assert np.abs(before).max() > 1e-4
    np.testing.assert_allclose(after, 0.81 * before, rtol=1e-4, atol=1e-7)
    # a loaded model (built with the layer frozen) restores every copy in its place
    path = str(tmp_path / "frozen.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert not loaded.encoder.layers[1].trainable
    expected, restored = _key_copies(model), _key_copies(loaded)
    assert [name for name, _ in restored] == [name for name, _ in expected]
    for (name, value), (_, restored_value) in zip(expected, restored):
        np.testing.assert_array_equal(restored_value, value, err_msg=name)


def test_compile_rejects_metrics_and_predict_rejects_views(digits):
    images, _ = digits
    model = make_model("simclr", num_classes=None)
    with pytest.raises(ValueError, match=r"metrics=\['accuracy'\]"):
        model.compile(optimizer="adam", loss=keras_fmicl.FMICLLoss(), metrics=["accuracy"])
    compile_model(model)
    with pytest.raises(ValueError, match=r"received views.*\(4, 2, 8, 8, 1\)"):
        model.predict(views_of(images[:4]), verbose=0)
    with pytest.raises(ValueError, match="received views"):
        model.predict({"views": views_of(images[:4])}, verbose=0)


# ------------------------------------------------------------ hardening (#13)


class _OnlineWeightsPerEpoch(keras.callbacks.Callback):
    """Records the online weights at the start of every epoch (one step each)."""

    def __init__(self):
        super().__init__()
        self.online = []

    def on_epoch_begin(self, epoch, logs=None):
        layers = _online_layers(self.model)
        self.online.append([to_numpy(v.value).copy() for layer in layers for v in layer.trainable_variables])


@pytest.mark.parametrize(
    "policy, mode",
    [("float32", "moco"), ("mixed_float16", "mocov3"), ("mixed_bfloat16", "moco")],
)
def test_fit_builds_and_trains_the_key_network_under_every_policy(policy, mode, digits):
    # Regression: with the model built by `fit` (inside a stateless scope) the
    # key copies started at zero; under mixed precision on PyTorch the EMA
    # assignments were lost (assigned to an autocast copy): nothing trained.
    images, _ = digits
    keras.config.set_dtype_policy(policy)
    m = 0.5
    model = compile_model(make_model(mode, num_classes=None, momentum=m, queue_size=64, augmenter=False, tiny=True))
    # the online layers exist before `fit` (which builds the model itself)
    model.projector.build(model.encoder.output_shape)
    assert not model.built
    recorder = _OnlineWeightsPerEpoch()
    history = model.fit(views_of(images[:16]), batch_size=16, epochs=3, verbose=0, callbacks=[recorder])
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses))
    assert len(set(losses)) > 1, losses
    expected = [w.astype("float64") for w in recorder.online[0]]  # the copy made at build
    for online in recorder.online:  # theta_k <- m theta_k + (1 - m) theta_q, every step
        expected = [m * k + (1 - m) * q for k, q in zip(expected, online)]
    keys, _ = _key_and_online(model)
    for key, value in zip(keys, expected):
        assert key.dtype == np.float32
        np.testing.assert_allclose(key, value, rtol=1e-5, atol=1e-6)
    assert all(np.abs(key).max() > 0 for key in keys[:1])


def test_a_nan_pixel_makes_the_loss_nan_and_terminate_on_nan_stops(digits):
    # Regression: under jit the NaN was lost in the encoder (max pooling):
    # the loss stayed finite while the weights turned NaN.
    images, _ = digits
    views = views_of(images[:32])
    views[3, 1, 4, 4, 0] = np.nan
    model = compile_model(make_model("moco", num_classes=None, augmenter=False))
    history = model.fit(
        views, batch_size=16, epochs=3, verbose=0, shuffle=False,
        callbacks=[keras.callbacks.TerminateOnNaN()],
    )
    assert len(history.history["loss"]) == 1
    assert np.isnan(history.history["loss"][0])
    # one step ran; its update is skipped where the NaN reaches the gradients
    assert int(to_numpy(model.optimizer.iterations.value)) in (0, 1)
    assert all(np.all(np.isfinite(to_numpy(v.value))) for v in model.trainable_variables)


def test_a_momentum_schedule_out_of_range_is_rejected_or_makes_the_loss_nan(digits):
    images, _ = digits
    with pytest.raises(ValueError, match="value at step 0 is 1.5"):
        keras_fmicl.methods.MoCoV2(momentum=lambda step: ops.cast(step, "float32") + 1.5)
    # valid at step 0, out of range from step 1: NaN at the second step
    model = compile_model(
        make_model(
            "mocov3", num_classes=None, augmenter=False, tiny=True,
            momentum=lambda step: ops.where(step > 0, 1.5, 0.9),
        )
    )
    history = model.fit(
        views_of(images[:48]), batch_size=16, epochs=1, verbose=0, shuffle=False,
        callbacks=[keras.callbacks.TerminateOnNaN()],
    )
    assert np.isnan(history.history["loss"][0])
    # the NaN step's update is skipped (non-finite gradients): one update
    assert int(to_numpy(model.optimizer.iterations.value)) == 1


@pytest.mark.parametrize("label", [10, -1, np.nan, 2.5])
def test_invalid_probe_labels_raise_before_training(label, digits):
    images, labels = digits
    bad = labels[:32].astype("float32")
    bad[5] = label
    model = compile_model(make_model("simclr"))
    match = rf"`y` must hold integer class labels.*y\[5\]={label!r}"
    with pytest.raises(ValueError, match=match):
        model.fit(images[:32], bad, batch_size=16, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=match):
        model.train_on_batch(images[:32], bad)
    with pytest.raises(ValueError, match=match):
        model.evaluate(images[:32], bad, verbose=0)
    with pytest.raises(ValueError, match=r"`validation_data` must hold integer"):
        model.fit(images[:32], labels[:32], validation_data=(images[:32], bad), verbose=0)
    if not np.isnan(label) and label == int(label):
        with pytest.raises(ValueError, match=rf"y\[5\]={int(label)}"):
            model.fit(images[:32], bad.astype("int64"), batch_size=16, verbose=0)
    assert not model.built


def test_invalid_probe_labels_in_a_dataset_make_the_loss_nan(digits):
    # Labels seen only inside the traced step: NaN loss (out-of-range labels
    # used to crash the cross-entropy on TensorFlow and PyTorch, and to train
    # silently on JAX).
    tf = pytest.importorskip("tensorflow")
    images, labels = digits
    views = views_of(images[:32])

    def dataset(label):
        bad = labels[:32].astype("float32")
        bad[5] = label
        return tf.data.Dataset.from_tensor_slices((views, bad)).batch(16, drop_remainder=True)

    model = compile_model(make_model("simclr", augmenter=False, tiny=True))
    history = model.fit(dataset(10), epochs=2, verbose=0, callbacks=[keras.callbacks.TerminateOnNaN()])
    assert len(history.history["loss"]) == 1
    assert np.isnan(history.history["loss"][0])
    assert int(to_numpy(model.optimizer.iterations.value)) == 1
    for label in [-1, 2.5, np.nan]:
        assert np.isnan(model.evaluate(dataset(label), verbose=0, return_dict=True)["loss"]), label
    assert np.isfinite(model.evaluate(dataset(3), verbose=0, return_dict=True)["probe_loss"])


def test_queue_smaller_than_the_batch_of_in_memory_data_raises_before_training(digits):
    images, _ = digits
    model = compile_model(make_model("moco", num_classes=None, queue_size=16, symmetric=True))
    with pytest.raises(ValueError, match=r"`queue_size` \(16\).*= 32"):
        model.fit(images[:32], batch_size=16, epochs=1, verbose=0)
    model = compile_model(make_model("moco", num_classes=None, queue_size=12))
    with pytest.raises(ValueError, match=r"`queue_size` \(12\).*= 16"):
        model.fit(images[:32], batch_size=16, epochs=1, verbose=0)
    assert not model.built


def test_queue_smaller_than_a_batch_of_unknown_size_stops_at_the_first_step(digits):
    tf = pytest.importorskip("tensorflow")
    images, _ = digits
    # 33 samples batched by 16 without drop_remainder: unknown batch size
    dataset = tf.data.Dataset.from_tensor_slices(views_of(images[:33])).batch(16)
    assert dataset.element_spec.shape[0] is None
    model = compile_model(make_model("moco", num_classes=None, queue_size=8, augmenter=False, tiny=True))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            history = model.fit(dataset, epochs=1, verbose=0, callbacks=[keras.callbacks.TerminateOnNaN()])
        except ValueError as error:  # static shapes in the step (JAX, PyTorch)
            assert "`queue_size` (8)" in str(error)
            return
    # dynamic batch size in the traced step (TensorFlow): a warning when the
    # step is traced, a NaN loss at the first step
    assert any("cannot be checked" in str(w.message) for w in caught)
    assert np.isnan(history.history["loss"][0])
    assert int(to_numpy(model.optimizer.iterations.value)) == 1


def test_backup_and_restore_with_shuffled_arrays_warns_once(digits, tmp_path):
    images, _ = digits
    views = views_of(images[:32])

    def warnings_of(model, **kwargs):
        backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # epochs=0: the data checks run, no training step is compiled
            model.fit(views, batch_size=16, epochs=0, verbose=0, callbacks=[backup], **kwargs)
        return [str(w.message) for w in caught if "BackupAndRestore" in str(w.message)]

    def built_model():
        model = compile_model(make_model("simclr", num_classes=None, augmenter=False, tiny=True))
        model.build(views.shape)  # BackupAndRestore needs a built model
        return model

    model = built_model()
    first = warnings_of(model)  # shuffle=True, Keras' default
    assert len(first) == 1 and "shuffle=False" in first[0]
    assert not warnings_of(model)  # once per model
    assert not warnings_of(built_model(), shuffle=False)


def test_a_final_batch_of_one_sample_is_skipped_with_one_warning(digits):
    images, labels = digits
    views, k = views_of(images[:17]), 8

    def fit(num_samples):
        # The symmetric form: under TensorFlow the one-direction form's step,
        # traced for 17 samples (a batch of one among them), rounds the last
        # bit of some weights differently from the step traced for 16 (same
        # values to 1e-7), which this bit-exact comparison would flag.
        model = compile_model(make_model("moco", seed=5, augmenter=False, tiny=True, symmetric=True))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(views[:num_samples], labels[:num_samples], batch_size=k, epochs=2, verbose=0, shuffle=False)
        return model, [w for w in caught if "single sample" in str(w.message)]

    skipped, warned = fit(2 * k + 1)
    assert len(warned) == 1
    reference, warned = fit(2 * k)
    assert not warned
    assert int(to_numpy(skipped.optimizer.iterations.value)) == 4
    for a, b in zip(skipped.variables, reference.variables):
        np.testing.assert_array_equal(to_numpy(a.value), to_numpy(b.value), err_msg=a.path)
    for a, b in zip(skipped.metrics_variables, reference.metrics_variables):
        np.testing.assert_array_equal(to_numpy(a.value), to_numpy(b.value), err_msg=a.path)
    evaluated = skipped.evaluate(views, labels[:17], batch_size=k, verbose=0, return_dict=True)
    assert np.isfinite(evaluated["loss"])


@pytest.mark.parametrize("mode", ["simclr", "moco", "mocov3"])
def test_fit_that_would_train_nothing_is_refused(digits, mode):
    images, _ = digits
    views = views_of(images[:8])
    model = compile_model(make_model(mode, num_classes=None, augmenter=False, tiny=True))
    # every batch would hold one sample, and a batch of one sample is skipped
    with pytest.raises(ValueError, match=r"`batch_size` must be at least 2.*Received: batch_size=1$"):
        model.fit(views, batch_size=1, epochs=0, verbose=0)
    with pytest.raises(ValueError, match=r"at least 2 training samples.*Received: x with 1 training sample$"):
        model.fit(views[:1], batch_size=8, epochs=0, verbose=0)
    with pytest.raises(ValueError, match=r"Received: x with 1 training sample after validation_split=0.5$"):
        model.fit(views[:3], batch_size=8, epochs=0, verbose=0, validation_split=0.5)
    model.fit(views[:2], batch_size=8, epochs=0, verbose=0)  # two samples: one batch of two


def test_the_model_draws_different_views_per_sample_and_per_view(digits):
    images, _ = digits
    keras.utils.set_random_seed(0)
    model = keras_fmicl.ContrastiveModel(
        encoder=keras.Sequential([keras.Input(IMAGE), keras.layers.Flatten()]),  # features = views
        augmenter=keras.layers.GaussianNoise(0.1, seed=0),
        num_views=3,
    )
    same = np.repeat(images[7:8], 4, axis=0)  # one image, four times
    views = to_numpy(model(same, training=True)["features"]).reshape(12, -1)
    distances = np.abs(views[:, None] - views[None]).max(axis=-1)
    off_diagonal = distances[~np.eye(12, dtype=bool)]
    assert off_diagonal.min() > 1e-3, "two drawn views are identical"


def test_a_moco_step_contrasts_with_the_queue_of_the_previous_steps(digits):
    """The symmetric form (MoCo v2's own: tests/methods/test_reference_methods.py)."""
    from tests import reference

    images, _ = digits
    model = compile_model(
        make_model(
            "moco", num_classes=None, momentum=0.5, queue_size=64, augmenter=False, tiny=True,
            symmetric=True, initial_queue="empty",
        ),  # fmt: skip
        loss=keras_fmicl.FMICLLoss("kl", sigma=0.5, alpha=1.0),
    )
    views = views_of(images[:16])
    first, second = views[:8], views[8:]
    model.build(first.shape)
    model.train_on_batch(first)
    queue = to_numpy(model.method.queue.value).copy()
    mask = np.arange(64) < int(to_numpy(model.method.queue_count.value))
    assert mask.sum() == 16
    # the queries and keys of step 2, without changing the model's state
    outputs, _ = model.stateless_call(
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        second,
        training=True,
    )
    queries, keys = to_numpy(outputs["queries"]), to_numpy(outputs["keys"])
    loss = model.train_on_batch(second, return_dict=True)["loss"]
    options = dict(in_batch_negatives=False, divergence="kl", similarity="gaussian", parameter=0.5, alpha=1.0)
    expected = reference.fmicl_loss(queries, keys=keys, queue=queue, queue_mask=mask, **options).mean()
    assert loss == pytest.approx(expected, rel=1e-4, abs=1e-5)
    # a queue that already held the step's own keys gives another loss
    own = reference.fmicl_loss(
        queries, keys=keys, queue=to_numpy(model.method.queue.value), queue_mask=np.arange(64) < 32, **options
    ).mean()
    assert abs(own - expected) > 1e-3


# ------------------------------------------------------ methods and drift (#11, #14)


def test_a_method_object_belongs_to_one_model():
    method = keras_fmicl.methods.MoCoV2(momentum=0.9, queue_size=64)
    model = keras_fmicl.ContrastiveModel(
        keras.Sequential([keras.Input(IMAGE), keras.layers.Flatten()]), method=method
    )
    model.build((4, 2) + IMAGE)
    assert model.method is method and model.mode == "moco"
    with pytest.raises(ValueError, match="belongs to one model"):
        keras_fmicl.ContrastiveModel(_encoder(), method=method)
    # a name gives a fresh method with its defaults
    assert isinstance(keras_fmicl.ContrastiveModel(_encoder(), method="mocov3").method, keras_fmicl.methods.MoCoV3)


class _RisingAlignment(keras.callbacks.Callback):
    """Rewrites the epoch logs: positives as far apart as random pairs (alignment >= -uniformity / 2)."""

    def on_epoch_end(self, epoch, logs=None):
        logs["alignment"] = 1.0 + epoch
        logs["uniformity"] = -1.0


def test_fit_adds_one_positives_drift_monitor(digits):
    images, _ = digits
    views = views_of(images[:16])
    model = compile_model(make_model("simclr", num_classes=None, augmenter=False, tiny=True))

    def drift_warnings(**kwargs):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(views, batch_size=16, epochs=5, verbose=0, **kwargs)
        return [w for w in caught if issubclass(w.category, keras_fmicl.models.PositivesDriftWarning)]

    # 3 epochs in a row of the signal (epochs 2-4): the monitor fit adds warns once
    assert len(drift_warnings(callbacks=[_RisingAlignment()])) == 1
    assert not drift_warnings(callbacks=[_RisingAlignment()], drift_warning=False)
    # the user's own monitor replaces the default one: one warning, its patience
    own = keras_fmicl.PositivesDriftMonitor(patience=2)
    assert len(drift_warnings(callbacks=[_RisingAlignment(), own])) == 1
    assert own.warned
    # a CallbackList is used as given: the monitor joins it
    callback_list = keras.callbacks.CallbackList([_RisingAlignment()], model=model)
    assert len(drift_warnings(callbacks=callback_list)) == 1
    assert len(drift_warnings(callbacks=keras.callbacks.CallbackList([_RisingAlignment()], model=model),
                              drift_warning=False)) == 0
    with pytest.raises(ValueError, match="drift_warning='no'"):
        model.fit(views, batch_size=16, epochs=1, verbose=0, drift_warning="no")
