"""Training steps of the methods against float64 numpy transcriptions of their reference code.

Every expected value here is computed from the model's weights alone (read
before the step), never from the method's outputs: the embeddings are the
encoder, projector, predictor and key network written out in numpy (linear
layers), the loss is a transcription of the reference code, and the
gradient of the step is taken by central differences of that float64 loss,
the keys held constant (a stop-gradient, as the references' `no_grad`).

* MoCo v3: facebookresearch/moco-v3, `moco/builder.py`: the momentum update
  of the key network before the keys (`_update_momentum_encoder`),
  `q = predictor(base_encoder(x))`, `k = momentum_encoder(x)` under
  `no_grad`, and `ctr_loss(q1, k2) + ctr_loss(q2, k1)` with
  `ctr_loss = CrossEntropyLoss(q^ k^T / T, arange(N)) * 2T` (one GPU).
  This package's InfoNCE loss is the mean over the two views: the
  reference's over `4 T`.
* Supervised SimCSE: princeton-nlp/SimCSE, `simcse/models.py`,
  `cl_forward`: the pooled sentences `z1, z2, z3` are the columns 0, 1, 2
  of the `(N, 3, L)` batch; logits `[cos(z1_i, z2_j), cos(z1_i, z3_j)] / temp`
  plus `hard_negative_weight` on `(i, N + i)` (0 here, the package's form);
  `CrossEntropyLoss` with labels `arange(N)`. The hard negatives `z3` get
  their gradient.
"""

import keras
import numpy as np
import pytest

import keras_fmicl
from keras_fmicl import methods
from tests.helpers import to_numpy

DIM_IN, DIM = 6, 4


def _normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _cross_entropy(logits, labels):
    """`nn.CrossEntropyLoss` (mean over rows) of float64 logits."""
    top = logits.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return float(np.mean(lse - logits[np.arange(len(labels)), labels]))


def _numeric_gradients(loss, params, step=1e-6):
    """Central differences of the float64 scalar `loss(*params)` w.r.t. every array."""
    grads = []
    for index, param in enumerate(params):
        grad = np.zeros_like(param)
        for position in np.ndindex(param.shape):
            shifted = [p.copy() for p in params]
            shifted[index][position] += step
            plus = loss(*shifted)
            shifted[index][position] -= 2 * step
            grad[position] = (plus - loss(*shifted)) / (2 * step)
        grads.append(grad)
    return grads


def _assert_step(before, after, expected_delta, name):
    """The change of a weight over a step equals the reference's, to float32 precision."""
    delta = to_numpy(after).astype("float64") - before
    scale = np.abs(expected_delta).max()
    assert scale > 1e-4, f"{name}: the reference step does not move it (a test that cannot fail)"
    np.testing.assert_allclose(delta, expected_delta, rtol=0, atol=2e-3 * scale, err_msg=name)


# ------------------------------------------------------------------ MoCo v3


def _moco_v3_ctr_loss(q, k, temperature):
    """moco-v3 `MoCo.ctr_loss` on one GPU: labels `arange(N)`, times `2 T`."""
    logits = _normalize(q) @ _normalize(k).T / temperature
    return _cross_entropy(logits, np.arange(len(q))) * 2 * temperature


def _moco_v3_forward(w, p, w_key, x1, x2, temperature):
    """moco-v3 `MoCo.forward` with `base_encoder = x @ w`, `predictor = z @ p`,
    `momentum_encoder = x @ w_key` (the keys: constants of `w`, `p`)."""
    q1, q2 = (x1 @ w) @ p, (x2 @ w) @ p
    k1, k2 = x1 @ w_key, x2 @ w_key
    return _moco_v3_ctr_loss(q1, k2, temperature) + _moco_v3_ctr_loss(q2, k1, temperature)


def _linear_moco_v3(momentum, temperature, learning_rate):
    keras.utils.set_random_seed(5)
    encoder = keras.Sequential([keras.Input((DIM_IN,)), keras.layers.Dense(DIM, use_bias=False)])
    predictor = keras.layers.Dense(DIM, use_bias=False)
    model = keras_fmicl.ContrastiveModel(
        encoder, method=methods.MoCoV3(momentum=momentum, predictor=predictor), projector=None
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate),
        loss=keras_fmicl.InfoNCELoss(temperature=temperature),
    )
    return model


def _views(num_samples, seed):
    return np.random.default_rng(seed).normal(size=(num_samples, 2, DIM_IN)).astype("float32")


def test_moco_v3_two_steps_match_the_reference_code():
    """Loss, online encoder, predictor and key network over two SGD steps;
    then the outputs: `features`, `queries` (through the predictor) and
    `keys` (the key network, not the online one) of every view, in order."""
    momentum, temperature, learning_rate, batch = 0.75, 0.2, 0.5, 6
    model = _linear_moco_v3(momentum, temperature, learning_rate)
    steps = [_views(batch, seed) for seed in (11, 12)]
    model.build(steps[0].shape)
    kernel = model.encoder.layers[0].kernel
    predictor = model.method.predictor.kernel
    (key_kernel,) = model.method.key_variables
    w = to_numpy(kernel).astype("float64")
    p = to_numpy(predictor).astype("float64")
    w_key = w.copy()  # the momentum encoder starts as a copy
    for views in steps:
        x1, x2 = views[:, 0].astype("float64"), views[:, 1].astype("float64")
        w_key = momentum * w_key + (1.0 - momentum) * w  # before the keys

        def package_loss(w_, p_, w_key=w_key, x1=x1, x2=x2):
            return _moco_v3_forward(w_, p_, w_key, x1, x2, temperature) / (4 * temperature)

        expected = package_loss(w, p)
        grad_w, grad_p = _numeric_gradients(package_loss, [w, p])
        logs = model.train_on_batch(views, return_dict=True)
        assert logs["loss"] == pytest.approx(expected, rel=1e-4)
        _assert_step(w, kernel, -learning_rate * grad_w, "online encoder")
        _assert_step(p, predictor, -learning_rate * grad_p, "predictor")
        np.testing.assert_allclose(to_numpy(key_kernel), w_key, rtol=1e-4, atol=1e-6)
        w, p = w - learning_rate * grad_w, p - learning_rate * grad_p
    assert np.abs(w_key - w).max() > 1e-3  # the key network differs from the online one
    x = _views(5, seed=14)
    outputs = model(x, training=False)
    x = x.astype("float64")
    np.testing.assert_allclose(to_numpy(outputs["features"]), x @ w, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(to_numpy(outputs["queries"]), x @ w @ p, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(to_numpy(outputs["keys"]), x @ w_key, rtol=1e-3, atol=1e-5)


def test_the_key_network_batch_norm_follows_the_key_batches():
    """In training the key network's moving mean moves towards the mean of
    the keys' pre-normalisation activations (every view, key weights), as
    the momentum encoder's batch norm does in the reference."""
    keras.utils.set_random_seed(6)
    encoder = keras.Sequential([
        keras.Input((DIM_IN,)), keras.layers.Dense(DIM, use_bias=False),
        keras.layers.BatchNormalization(momentum=0.5),
    ])  # fmt: skip
    model = keras_fmicl.ContrastiveModel(encoder, method=methods.MoCoV3(momentum=0.5), projector=None)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=keras_fmicl.InfoNCELoss(0.2))
    views = _views(6, seed=15) + 2.0
    model.build(views.shape)
    w_key = to_numpy(encoder.layers[0].kernel).astype("float64")  # the first EMA of equal weights
    model.train_on_batch(views)
    (moving_mean,) = [v for v in model.method.key_variables if v.path.endswith("non_trainable_0")]
    expected = 0.5 * (views.reshape(-1, DIM_IN).astype("float64") @ w_key).mean(axis=0)
    np.testing.assert_allclose(to_numpy(moving_mean), expected, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------- supervised SimCSE

VOCABULARY, WIDTH, EMBEDDING = 24, 5, 4
# Columns 0 and 1 (premise, entailment) use tokens 1..11, column 2 (the
# contradiction) tokens 12..23: those embedding rows get gradient through
# the hard negatives only.
HARD_TOKENS = 12


class _TokenMean(keras.layers.Layer):
    """Token ids `(N, L)` -> the mean of their embeddings (no dropout: the
    training step is deterministic)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.embedding = keras.layers.Embedding(VOCABULARY, WIDTH)

    def build(self, input_shape):
        self.embedding.build(input_shape)

    def call(self, ids, training=None):
        return keras.ops.mean(self.embedding(ids), axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], WIDTH)


def _nli_batch(num_samples, length=5, seed=0):
    rng = np.random.default_rng(seed)
    pairs = rng.integers(1, HARD_TOKENS, size=(num_samples, 2, length))
    hard = rng.integers(HARD_TOKENS, VOCABULARY, size=(num_samples, 1, length))
    return np.concatenate([pairs, hard], axis=1).astype("int32")


def _pooled(table, kernel, bias, ids):
    """The encoder (mean of the token embeddings) and projector, float64."""
    return table[ids].mean(axis=-2) @ kernel + bias


def _cl_forward_loss(z1, z2, z3, temp, hard_negative_weight=0.0):
    """SimCSE `cl_forward`'s loss for (premise, entailment, contradiction)."""
    n = len(z1)
    cos_sim = _normalize(z1) @ _normalize(z2).T / temp
    z1_z3_cos = _normalize(z1) @ _normalize(z3).T / temp
    weights = np.zeros((n, 2 * n))
    weights[np.arange(n), n + np.arange(n)] = hard_negative_weight
    logits = np.concatenate([cos_sim, z1_z3_cos], axis=1) + weights
    return _cross_entropy(logits, np.arange(n))


def _supervised_model(temperature, learning_rate):
    keras.utils.set_random_seed(2)
    model = keras_fmicl.ContrastiveModel(
        _TokenMean(), method=methods.SupervisedSimCSE(), projector=keras.layers.Dense(EMBEDDING)
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate),
        loss=keras_fmicl.InfoNCELoss(temperature=temperature),
    )
    return model


def _supervised_weights(model):
    return (
        to_numpy(model.encoder.embedding.embeddings).astype("float64"),
        to_numpy(model.projector.kernel).astype("float64"),
        to_numpy(model.projector.bias).astype("float64"),
    )


def test_supervised_simcse_step_matches_cl_forward_and_trains_the_hard_negatives():
    temperature, learning_rate = 0.1, 1.0
    model = _supervised_model(temperature, learning_rate)
    ids = _nli_batch(6, seed=4)
    model.build(ids.shape)
    before = _supervised_weights(model)

    def loss(table, kernel, bias):
        z1, z2, z3 = (_pooled(table, kernel, bias, ids[:, c]) for c in range(3))
        return _cl_forward_loss(z1, z2, z3, temperature)

    expected = loss(*before)
    grads = _numeric_gradients(loss, list(before))
    logs = model.train_on_batch(ids, return_dict=True)
    assert logs["loss"] == pytest.approx(expected, rel=1e-4)
    after = (model.encoder.embedding.embeddings, model.projector.kernel, model.projector.bias)
    for name, old, new, grad in zip(("embeddings", "kernel", "bias"), before, after, grads):
        _assert_step(old, new, -learning_rate * grad, name)
    # the contradictions' own tokens move: the hard negatives have a gradient
    _assert_step(
        before[0][HARD_TOKENS:], model.encoder.embedding.embeddings[HARD_TOKENS:],
        -learning_rate * grads[0][HARD_TOKENS:], "embeddings of the contradictions' tokens",
    )  # fmt: skip


def test_supervised_simcse_outputs_take_their_columns():
    """`features` and `queries` are columns 0 and 1, the hard negatives column 2."""
    model = _supervised_model(0.1, 1.0)
    ids = _nli_batch(5, seed=6)
    outputs = model(ids, training=False)
    table, kernel, bias = _supervised_weights(model)
    features = table[ids].mean(axis=-2)  # (N, 3, WIDTH)
    np.testing.assert_allclose(to_numpy(outputs["features"]), features[:, :2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        to_numpy(outputs["queries"]), features[:, :2] @ kernel + bias, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        to_numpy(outputs[methods.HARD_NEGATIVES]), features[:, 2] @ kernel + bias, rtol=1e-5, atol=1e-6
    )
