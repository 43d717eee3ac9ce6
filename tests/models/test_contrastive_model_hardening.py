"""ContrastiveModel's safeguards of issue 27: sample weights without labels,
the loss reduction, the augmenter's value range, batches of one sample,
non-finite gradients, and the methods' misuse (shared objects, jit, sizes)."""

import warnings

import keras
import numpy as np
import pytest
from keras import ops

import keras_fmicl
from tests.helpers import to_numpy

N = 16


def encoder():
    return keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(16)])


def views(n=N, seed=0):
    return np.random.default_rng(seed).random((n, 2, 4, 4, 1)).astype("float32")


def make(method=None, loss=None, optimizer=None, seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    model = keras_fmicl.ContrastiveModel(
        encoder(), method=method, projector=keras_fmicl.ProjectionHead(16, 8), **kwargs
    )
    model.compile(
        optimizer=optimizer or keras.optimizers.SGD(0.1),
        loss=loss or keras_fmicl.FMICLLoss("kl", sigma=0.5),
    )
    return model


def per_sample_losses(model, x, loss):
    """Independent per-sample losses of the model's queries (reduction=None), float64."""
    queries = model(x, training=False)["queries"]
    return to_numpy(loss(None, queries)).astype("float64")


def evaluated_loss(model, x, **kwargs):
    return model.evaluate(x, batch_size=N, verbose=0, return_dict=True, **kwargs)["loss"]


def weights_of(model):
    return [to_numpy(v.value).copy() for v in model.trainable_variables]


def caught_warnings(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn()
    return result, [str(w.message) for w in caught]


# ------------------------------------------------------------- 1. sample_weight


def test_sample_weight_without_labels_weights_the_loss():
    x = views()
    model = make()
    w = np.random.default_rng(1).random(N).astype("float32")
    reported = evaluated_loss(model, x, sample_weight=w)
    per_sample = per_sample_losses(model, x, keras_fmicl.FMICLLoss("kl", sigma=0.5, reduction=None))
    np.testing.assert_allclose(reported, np.sum(w * per_sample) / N, rtol=1e-5)
    assert evaluated_loss(model, x, sample_weight=np.zeros(N)) == 0.0
    np.testing.assert_allclose(
        model.test_on_batch(x, sample_weight=w, return_dict=True)["loss"], reported, rtol=1e-6
    )
    # zero weights: nothing to train on, the weights stay
    before = weights_of(model)
    model.fit(x, sample_weight=np.zeros(N, "float32"), batch_size=8, epochs=1, verbose=0)
    for a, b in zip(before, weights_of(model)):
        np.testing.assert_array_equal(a, b)


def test_sample_weight_of_the_wrong_length_is_refused():
    model = make()
    with pytest.raises(ValueError, match=r"`sample_weight` must be.*Received: sample_weight.shape=\(3,\)"):
        model.fit(views(), sample_weight=np.ones(3), epochs=1, verbose=0)


# ---------------------------------------------------------------- 2. reduction


@pytest.mark.parametrize("loss_class", ["FMICLLoss", "InfoNCELoss"])
@pytest.mark.parametrize("reduction", ["sum", "sum_over_batch_size", "mean_with_sample_weight"])
def test_the_loss_reduction_is_honoured(loss_class, reduction):
    def loss(reduction):
        if loss_class == "FMICLLoss":
            return keras_fmicl.FMICLLoss("kl", sigma=0.5, reduction=reduction)
        return keras_fmicl.InfoNCELoss(temperature=0.5, reduction=reduction)

    x = views()
    w = np.random.default_rng(2).random(N).astype("float32")
    model = make(loss=loss(reduction))
    per_sample = per_sample_losses(model, x, loss(None))
    weighted = np.sum(w * per_sample)
    expected = {
        "sum": weighted, "sum_over_batch_size": weighted / N, "mean_with_sample_weight": weighted / w.sum(),
    }[reduction]  # fmt: skip
    reported = evaluated_loss(model, x, sample_weight=w)
    np.testing.assert_allclose(reported, expected, rtol=1e-5)


def test_a_sum_reduction_trains_on_the_sum():
    """One SGD step on the sum moves the weights N times as far as on the mean."""
    x = views()
    moved = {}
    for reduction in ("sum", "sum_over_batch_size"):
        model = make(loss=keras_fmicl.FMICLLoss("kl", sigma=0.5, reduction=reduction), optimizer=keras.optimizers.SGD(1e-3))
        model.build(x.shape)
        before = weights_of(model)
        model.train_on_batch(x)
        moved[reduction] = [b - a for a, b in zip(before, weights_of(model))]
    for total, mean in zip(moved["sum"], moved["sum_over_batch_size"]):
        np.testing.assert_allclose(total, N * mean, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("reduction", [None, "none"])
def test_a_loss_without_reduction_is_refused(reduction):
    model = keras_fmicl.ContrastiveModel(encoder(), projector=keras_fmicl.ProjectionHead(16, 8))
    with pytest.raises(ValueError, match=r"`loss` must reduce.*Received: loss=FMICLLoss\(reduction="):
        model.compile(loss=keras_fmicl.FMICLLoss("kl", reduction=reduction))


# ---------------------------------------------------------------- 3. value range


def augmenting_model():
    return make(augmenter=keras_fmicl.SimCLRAugmentation(4, value_range=(0, 1), seed=0))


@pytest.mark.parametrize("scale", ["uint8", "float255"])
def test_images_outside_the_augmenter_value_range_are_refused(scale):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (N, 4, 4, 1)).astype("uint8")
    if scale == "float255":
        images = images.astype("float32")
    model = augmenting_model()
    match = r"value_range=\(0, 1\).*Received: x in \[\d+, \d+\], value_range=\(0, 1\)"
    with pytest.raises(ValueError, match=match):
        model.fit(images, batch_size=8, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=match):
        model.evaluate(images, batch_size=8, verbose=0)
    with pytest.raises(ValueError, match=match):
        model.train_on_batch(images[:8])
    import tensorflow as tf

    with pytest.raises(ValueError, match=match):
        model.fit(tf.data.Dataset.from_tensor_slices(images).batch(8), epochs=1, verbose=0)
    # rescaled images train
    model.fit(images.astype("float32") / 255.0, batch_size=8, epochs=1, verbose=0)


# ------------------------------------------------------------ 4. one-sample batches


def test_an_evaluation_of_single_sample_batches_is_refused_not_zero():
    model = make()
    with pytest.raises(ValueError, match="Every batch of the evaluation data held a single sample"):
        model.evaluate(views(1), verbose=0)
    with pytest.raises(ValueError, match="Every batch of the evaluation data held a single sample"):
        model.fit(views(), batch_size=8, epochs=1, verbose=0, validation_data=(views(1, seed=4),))


def test_a_dataset_epoch_of_single_sample_batches_is_refused():
    import tensorflow as tf

    model = make()
    dataset = tf.data.Dataset.from_tensor_slices(views(3)).batch(1)
    with pytest.raises(ValueError, match="Every batch of this training epoch held a single sample"):
        model.fit(dataset, epochs=1, verbose=0)


def test_a_dataset_batch_of_one_sample_is_left_out_of_the_loss_with_a_warning():
    """Under TensorFlow a tf.data batch size is unknown when the step is traced."""
    import tensorflow as tf

    x = views(17)

    def fit(num_samples):
        model = make()
        dataset = tf.data.Dataset.from_tensor_slices(x[:num_samples]).batch(8)
        return caught_warnings(lambda: model.fit(dataset, epochs=1, verbose=0).history["loss"][0])

    loss, messages = fit(17)
    assert sum("single sample" in m for m in messages) == 1
    reference, messages = fit(16)
    assert not any("single sample" in m for m in messages)
    assert loss != 0.0
    np.testing.assert_allclose(loss, reference, rtol=1e-5)


# -------------------------------------------------------- 9. non-finite gradients


class NaNGradient(keras.layers.Layer):
    """The identity plus `sqrt(0 |x|)`, whose gradient is NaN (`inf * 0`)."""

    def call(self, x):
        return x + ops.sqrt(ops.abs(x) * 0.0)


def test_a_step_with_non_finite_gradients_leaves_the_weights_and_warns():
    keras.utils.set_random_seed(0)
    bad_encoder = keras.Sequential(
        [keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(16), NaNGradient()]
    )
    model = keras_fmicl.ContrastiveModel(bad_encoder, projector=keras_fmicl.ProjectionHead(16, 8))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=keras_fmicl.FMICLLoss("kl", sigma=0.5))
    x = views()
    model.build(x.shape)
    before = weights_of(model)
    history, messages = caught_warnings(lambda: model.fit(x, batch_size=8, epochs=1, verbose=0))
    assert np.isfinite(history.history["loss"][0])
    for a, b in zip(before, weights_of(model)):
        np.testing.assert_array_equal(a, b)
    assert int(to_numpy(model.optimizer.iterations.value)) == 0
    assert sum("non-finite (NaN or infinite) gradients" in m for m in messages) == 1


def test_finite_gradients_still_train():
    model = make()
    x = views()
    model.build(x.shape)
    before = weights_of(model)
    _, messages = caught_warnings(lambda: model.fit(x, batch_size=8, epochs=1, verbose=0))
    assert int(to_numpy(model.optimizer.iterations.value)) == 2
    assert any(np.any(a != b) for a, b in zip(before, weights_of(model)))
    assert not any("non-finite" in m for m in messages)


# ------------------------------------------------------------------ 10. methods


def test_a_method_object_serves_one_model():
    method = keras_fmicl.methods.MoCoV2(queue_size=64)
    first = keras_fmicl.ContrastiveModel(encoder(), method=method)
    with pytest.raises(ValueError, match=r"already belongs to '.*': pass a new one.*Received: method='moco'"):
        keras_fmicl.ContrastiveModel(encoder(), method=method)
    del first


def test_a_predictor_of_another_size_than_the_projector_is_refused_at_build():
    method = keras_fmicl.methods.MoCoV3(predictor=keras_fmicl.PredictionHead(16, 4))
    model = make(method=method)
    with pytest.raises(ValueError, match=r"projector output size 8, predictor output size 4"):
        model.fit(views(), batch_size=8, epochs=1, verbose=0)


def test_loading_weights_of_another_queue_size_names_it(tmp_path):
    x = views()
    path = str(tmp_path / "moco.weights.h5")
    saved = make(method=keras_fmicl.methods.MoCoV2(queue_size=64))
    saved.build(x.shape)
    saved.save_weights(path)
    other = make(method=keras_fmicl.methods.MoCoV2(queue_size=32))
    other.build(x.shape)
    with pytest.raises(ValueError, match=r"queue_size=64\. Received: queue_size=32"):
        other.load_weights(path)


def test_moco_with_jit_compile():
    """TensorFlow and JAX: an unbuilt MoCo v2 trains under XLA; PyTorch: refused."""
    model = keras_fmicl.ContrastiveModel(
        encoder(), method=keras_fmicl.methods.MoCoV2(queue_size=64), projector=keras_fmicl.ProjectionHead(16, 8)
    )
    compile_it = lambda: model.compile(loss=keras_fmicl.FMICLLoss("kl", sigma=0.5), jit_compile=True)  # noqa: E731
    if keras.backend.backend() == "torch":
        with pytest.raises(ValueError, match=r"MoCoV2 cannot train with jit_compile=True under PyTorch"):
            compile_it()
        return
    compile_it()
    history = model.fit(views(), batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_supervised_simcse_input_errors_are_raised_before_tracing():
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = keras_fmicl.ContrastiveModel(
        keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)]),
        method=keras_fmicl.methods.SupervisedSimCSE(),
    )
    model.compile(optimizer="sgd", loss=keras_fmicl.FMICLLoss("kl", sigma=0.5))
    rng = np.random.default_rng(5)
    model.fit(rng.random((8, 3, 4)).astype("float32"), batch_size=4, epochs=1, verbose=0)
    wrong = tf.data.Dataset.from_tensor_slices(rng.random((8, 5, 4)).astype("float32")).batch(4)
    with pytest.raises(ValueError, match=r"^SupervisedSimCSE takes every input as \(N, C, \.\.\.\)") as raised:
        model.fit(wrong, epochs=1, verbose=0)
    assert "Cond" not in str(raised.value)
