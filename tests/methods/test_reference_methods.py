"""The reference methods against numpy transcriptions of their reference code.

Each expected value is computed here, in float64, from the reference's
formulas, on embeddings that the test computes itself (the encoder and
projector called directly, or random arrays), never from the method's
outputs:

* MoCo v2: facebookresearch/moco, `moco/builder.py` (`MoCo.forward`,
  `MoCo._momentum_update_key_encoder`, `MoCo._dequeue_and_enqueue`, the
  queue's initialisation in `MoCo.__init__`) and `main_moco.py`
  (`nn.CrossEntropyLoss` of the logits and label 0; the SGD step).
* SimCSE: princeton-nlp/SimCSE, `simcse/models.py` (`cl_forward`: the
  `(N, N)` matrix `sim(z1, z2)`, the hard negatives `sim(z1, z3)` as extra
  columns, `nn.CrossEntropyLoss` with labels `arange(N)`).
* MoCo v3: facebookresearch/moco-v3, `moco/builder.py`
  (`MoCo.contrastive_loss`: `CrossEntropyLoss(q k^T / T, arange(N)) * 2T`;
  `MoCo.forward`: `ctr(q1, k2) + ctr(q2, k1)`), which is `4T` times this
  package's mean over the two views.

f-MICL with the reference pair sets: the anchor's positive and negatives
are the reference's, each scored as `docs/fmicl-math.md` section 4 defines
(`tests/reference.py`'s generators and similarities).
"""

import keras
import numpy as np
import pytest

import keras_fmicl
from keras_fmicl import methods
from tests import reference
from tests.helpers import to_numpy
from tests.helpers import value_and_grad

DIM_IN, DIM = 6, 4


def _normalize(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _cross_entropy(logits, labels):
    """`nn.CrossEntropyLoss` (mean over rows) of float64 logits."""
    top = logits.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return float(np.mean(lse - logits[np.arange(len(labels)), labels]))


def _softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------ MoCo v2


def _moco_v2_reference_step(state, x_q, x_k, momentum, temperature, learning_rate):
    """One step of facebookresearch/moco with a linear encoder `x @ W`.

    `state`: `(W_q, W_k, queue, pointer)`, the queue `(K, d)` of unit keys
    (the reference holds its transpose). Returns the loss and the new state.
    """
    w_q, w_k, queue, pointer = state
    # _momentum_update_key_encoder, before the keys
    w_k = momentum * w_k + (1.0 - momentum) * w_q
    q_raw = x_q @ w_q
    q = _normalize(q_raw)
    k = _normalize(x_k @ w_k)
    l_pos = np.sum(q * k, axis=1, keepdims=True)
    l_neg = q @ queue.T
    logits = np.concatenate([l_pos, l_neg], axis=1) / temperature
    labels = np.zeros(len(q), int)
    loss = _cross_entropy(logits, labels)
    # the gradient of the mean cross-entropy, back through the normalisation
    d_logits = (_softmax(logits) - np.eye(logits.shape[1])[labels]) / len(q)
    d_q = (d_logits[:, :1] * k + d_logits[:, 1:] @ queue) / temperature
    d_raw = (d_q - q * np.sum(d_q * q, axis=1, keepdims=True)) / np.linalg.norm(
        q_raw, axis=1, keepdims=True
    )
    w_q = w_q - learning_rate * (x_q.T @ d_raw)
    # _dequeue_and_enqueue: queue[:, ptr:ptr + N] = keys.T
    queue = queue.copy()
    queue[pointer : pointer + len(k)] = k
    pointer = (pointer + len(k)) % len(queue)
    return loss, (w_q, w_k, queue, pointer)


def _linear_moco(method, temperature=0.2, learning_rate=0.5, num_views=2):
    keras.utils.set_random_seed(3)
    encoder = keras.Sequential(
        [keras.Input((DIM_IN,)), keras.layers.Dense(DIM, use_bias=False)]
    )
    model = keras_fmicl.ContrastiveModel(
        encoder, method=method, projector=None, num_views=num_views
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate),
        loss=keras_fmicl.InfoNCELoss(temperature=temperature),
    )
    return model


def _views(num_samples, num_views=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(num_samples, num_views, DIM_IN)).astype("float32")


def test_moco_v2_two_steps_match_the_reference_code():
    momentum, temperature, learning_rate, batch, queue_size = 0.5, 0.2, 0.5, 8, 24
    model = _linear_moco(
        methods.MoCoV2(momentum=momentum, queue_size=queue_size), temperature, learning_rate
    )
    steps = [_views(batch, seed=s) for s in (1, 2)]
    model.build(steps[0].shape)
    method = model.method
    # MoCo's queue starts as random unit vectors, every entry a negative
    initial_queue = to_numpy(method.queue.value).astype("float64")
    np.testing.assert_allclose(np.linalg.norm(initial_queue, axis=1), 1.0, rtol=1e-6)
    assert int(to_numpy(method.queue_count.value)) == queue_size
    kernel = to_numpy(model.encoder.layers[0].kernel.value).astype("float64")
    state = (kernel, kernel.copy(), initial_queue, 0)
    key_kernel = method.key_variables[0]
    for views in steps:
        expected, state = _moco_v2_reference_step(
            state, views[:, 0].astype("float64"), views[:, 1].astype("float64"),
            momentum, temperature, learning_rate,
        )  # fmt: skip
        logs = model.train_on_batch(views, return_dict=True)
        assert logs["loss"] == pytest.approx(expected, rel=1e-4)
        w_q, w_k, queue, pointer = state
        np.testing.assert_allclose(to_numpy(model.encoder.layers[0].kernel.value), w_q, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(to_numpy(key_kernel.value), w_k, rtol=1e-4, atol=1e-6)
        # which keys, in which order: the N keys of view 1, sample-major
        stored = _normalize(to_numpy(method.queue.value))
        np.testing.assert_allclose(stored, queue, rtol=1e-4, atol=1e-6)
        assert int(to_numpy(method.queue_pointer.value)) == pointer
    assert pointer == 2 * batch


def test_moco_v2_symmetric_and_empty_queue_options():
    """`symmetric=True`: both views query and both are enqueued, sample-major;
    `initial_queue="empty"`: no negatives (InfoNCE loss 0) until keys are written."""
    temperature, batch, queue_size = 0.2, 4, 32
    model = _linear_moco(
        methods.MoCoV2(momentum=0.0, queue_size=queue_size, symmetric=True, initial_queue="empty"),
        temperature,
        learning_rate=0.0,
    )
    first, second = _views(batch, seed=1), _views(batch, seed=2)
    model.build(first.shape)
    assert int(to_numpy(model.method.queue_count.value)) == 0
    assert model.train_on_batch(first, return_dict=True)["loss"] == pytest.approx(0.0, abs=1e-7)
    w = to_numpy(model.encoder.layers[0].kernel.value).astype("float64")
    keys_first = _normalize(first.astype("float64") @ w)  # (N, 2, d)
    queue = to_numpy(model.method.queue.value)
    np.testing.assert_allclose(_normalize(queue[: 2 * batch]), keys_first.reshape(-1, DIM), rtol=1e-4, atol=1e-6)
    assert np.all(queue[2 * batch :] == 0.0)
    # second step: each view queries the key of the other view and the 2N keys of step 1
    q = _normalize(second.astype("float64") @ w)
    negatives = keys_first.reshape(-1, DIM)
    losses = []
    for v in range(2):
        logits = np.concatenate(
            [np.sum(q[:, v] * q[:, 1 - v], axis=1, keepdims=True), q[:, v] @ negatives.T], axis=1
        ) / temperature  # fmt: skip
        losses.append(_cross_entropy(logits, np.zeros(batch, int)))
    logs = model.train_on_batch(second, return_dict=True)
    assert logs["loss"] == pytest.approx(np.mean(losses), rel=1e-4)


def test_moco_v2_with_three_views_queries_view_zero_against_the_others():
    temperature, batch = 0.3, 4
    model = _linear_moco(methods.MoCoV2(momentum=0.0, queue_size=16), temperature, 0.0, num_views=3)
    views = _views(batch, num_views=3, seed=4)
    model.build(views.shape)
    queue = _normalize(to_numpy(model.method.queue.value))
    w = to_numpy(model.encoder.layers[0].kernel.value).astype("float64")
    z = _normalize(views.astype("float64") @ w)
    losses = []
    for w_view in (1, 2):  # decoupled InfoNCE: one softmax per positive
        logits = np.concatenate(
            [np.sum(z[:, 0] * z[:, w_view], axis=1, keepdims=True), z[:, 0] @ queue.T], axis=1
        ) / temperature  # fmt: skip
        losses.append(_cross_entropy(logits, np.zeros(batch, int)))
    logs = model.train_on_batch(views, return_dict=True)
    assert logs["loss"] == pytest.approx(np.mean(losses), rel=1e-4)
    # the 2N keys of views 1 and 2 are enqueued, sample-major
    stored = _normalize(to_numpy(model.method.queue.value)[: 2 * batch])
    np.testing.assert_allclose(stored, z[:, 1:].reshape(-1, DIM), rtol=1e-4, atol=1e-6)


def test_moco_v2_refuses_online_weight_without_symmetric():
    with pytest.raises(ValueError, match="symmetric=True"):
        methods.MoCoV2(online_weight=0.5)
    assert methods.MoCoV2(online_weight=0.5, symmetric=True).online_weight == 0.5


def test_moco_v2_configs_of_earlier_releases_keep_the_symmetric_form():
    config = methods.MoCoV2(queue_size=64).get_config()
    assert (config["symmetric"], config["initial_queue"]) == (False, "random")
    old = {k: v for k, v in config.items() if k not in ("symmetric", "initial_queue")}
    restored = methods.MoCoV2.from_config(old)
    assert (restored.symmetric, restored.initial_queue) == (True, "empty")
    assert methods.MoCoV2.from_config(config).symmetric is False


# ------------------------------------------------------------------ SimCSE


def _simcse_reference(z1, z2, z3, loss_kind, parameter, alpha=1.0):
    """`cl_forward`'s loss (InfoNCE), or f-MICL on `cl_forward`'s pairs.

    Anchor `z1_i`; positive `z2_i`; negatives `z2_j`, `j != i`, and every
    `z3_j` (hard negatives, supervised).
    """
    n = len(z1)
    if loss_kind == "infonce":
        logits = _normalize(z1) @ _normalize(z2).T
        if z3 is not None:
            logits = np.concatenate([logits, _normalize(z1) @ _normalize(z3).T], axis=1)
        return _cross_entropy(logits / parameter, np.arange(n))
    f, fp = reference.generator(loss_kind)
    losses = []
    for i in range(n):
        negatives = [z2[j] for j in range(n) if j != i] + ([] if z3 is None else list(z3))
        u_pos = np.exp(reference.log_ratio(z1[i], z2[i], "gaussian", parameter))
        u_neg = np.exp([reference.log_ratio(z1[i], m, "gaussian", parameter) for m in negatives])
        losses.append(-fp(u_pos) + alpha * np.mean(u_neg * fp(u_neg) - f(u_neg)))
    return float(np.mean(losses))


LOSSES = [
    ("infonce", lambda: keras_fmicl.InfoNCELoss(temperature=0.05), 0.05, 1.0),
    ("kl", lambda: keras_fmicl.FMICLLoss("kl", sigma=0.6, alpha=3.0), 0.6, 3.0),
    ("js", lambda: keras_fmicl.FMICLLoss("js"), 2**-0.5, 40.0),
]


class _TokenMean(keras.layers.Layer):
    """Token ids -> mean of their embeddings, then dropout (the views' noise);
    followed by a linear projector in these tests (no ReLU: no zero embedding)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.embedding = keras.layers.Embedding(30, 8)
        self.dropout = keras.layers.Dropout(0.3, seed=2)

    def build(self, input_shape):
        self.embedding.build(input_shape)

    def call(self, ids, training=None):
        return self.dropout(keras.ops.mean(self.embedding(ids), axis=1), training=training)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 8)


def _sentences(shape, seed=0):
    return np.random.default_rng(seed).integers(1, 30, size=shape).astype("int32")


def _simcse_model(method, make_loss):
    keras.utils.set_random_seed(0)
    model = keras_fmicl.ContrastiveModel(
        _TokenMean(), method=method, projector=keras.layers.Dense(4)
    )
    model.compile(optimizer="sgd", loss=make_loss())
    return model


def _embed(model, ids):
    """Projector(encoder(ids)) called directly, without dropout, float64."""
    features = model.encoder(ids, training=False)
    return to_numpy(model.projector(features, training=False)).astype("float64")


@pytest.mark.parametrize("loss_kind, make_loss, parameter, alpha", LOSSES, ids=[x[0] for x in LOSSES])
def test_simcse_matches_cl_forward(loss_kind, make_loss, parameter, alpha, float64):
    model = _simcse_model(methods.SimCSE(), make_loss)
    ids = _sentences((6, 5))
    model.build(ids.shape)
    # through the model (no dropout: the two passes are equal)
    z = _embed(model, ids)
    expected = _simcse_reference(z, z, None, loss_kind, parameter, alpha)
    assert model.test_on_batch(ids, return_dict=True)["loss"] == pytest.approx(expected, rel=1e-4)
    # the pairs, on two different passes: values and gradients in float64
    rng = np.random.default_rng(1)
    z1, z2 = rng.normal(size=(2, 6, 4))

    def loss_of(a, b):
        per_sample, _ = model.method.loss(model, {"queries": keras.ops.stack([a, b], axis=1)})
        return keras.ops.sum(per_sample) / 6.0  # ops.mean is float32 on JAX

    value, grads = value_and_grad(loss_of, z1, z2)
    assert float(value) == pytest.approx(_simcse_reference(z1, z2, None, loss_kind, parameter, alpha), rel=1e-10)
    _check_gradients(grads, (z1, z2), lambda a, b: _simcse_reference(a, b, None, loss_kind, parameter, alpha))


def _check_gradients(grads, args, fn, step=1e-6):
    """Central differences of the float64 reference against the backend's autodiff."""
    for index, (grad, arg) in enumerate(zip(grads, args)):
        numeric = np.zeros_like(arg)
        for position in np.ndindex(arg.shape):
            plus, minus = [a.copy() for a in args], [a.copy() for a in args]
            plus[index][position] += step
            minus[index][position] -= step
            numeric[position] = (fn(*plus) - fn(*minus)) / (2 * step)
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("loss_kind, make_loss, parameter, alpha", LOSSES, ids=[x[0] for x in LOSSES])
def test_supervised_simcse_matches_cl_forward_with_hard_negatives(loss_kind, make_loss, parameter, alpha, float64):
    model = _simcse_model(methods.SupervisedSimCSE(), make_loss)
    ids = _sentences((6, 3, 5), seed=3)  # (premise, entailment, contradiction)
    model.build(ids.shape)
    z1, z2, z3 = (_embed(model, ids[:, c]) for c in range(3))
    expected = _simcse_reference(z1, z2, z3, loss_kind, parameter, alpha)
    assert model.test_on_batch(ids, return_dict=True)["loss"] == pytest.approx(expected, rel=1e-4)
    rng = np.random.default_rng(2)
    a, b, c = rng.normal(size=(3, 6, 4))

    def loss_of(p, e, h):
        outputs = {"queries": keras.ops.stack([p, e], axis=1), methods.HARD_NEGATIVES: h}
        return keras.ops.sum(model.method.loss(model, outputs)[0]) / 6.0

    value, grads = value_and_grad(loss_of, a, b, c)
    reference_fn = lambda p, e, h: _simcse_reference(p, e, h, loss_kind, parameter, alpha)  # noqa: E731
    assert float(value) == pytest.approx(reference_fn(a, b, c), rel=1e-10)
    # the hard negatives get their gradient, as in cl_forward
    assert np.abs(grads[2]).max() > 1e-3
    _check_gradients(grads, (a, b, c), reference_fn)


def test_simcse_symmetric_option_lets_every_view_anchor():
    model = _simcse_model(methods.SimCSE(symmetric=True), lambda: keras_fmicl.InfoNCELoss(0.1))
    ids = _sentences((5, 4), seed=5)
    model.build(ids.shape)
    z = _embed(model, ids)
    both = np.stack([z, z], axis=1)
    expected = reference.info_nce_loss(both, parameter=0.1).mean()
    assert model.test_on_batch(ids, return_dict=True)["loss"] == pytest.approx(expected, rel=1e-4)
    assert methods.SimCSE.from_config({"name": "simcse", "trainable": True}).symmetric is True
    assert methods.SimCSE().get_config()["symmetric"] is False


# ------------------------------------------------------------------ MoCo v3


def test_moco_v3_is_the_reference_loss_over_4t(float64):
    temperature = 0.2
    model = _linear_moco(methods.MoCoV3(momentum=0.9), temperature)
    model.build(_views(4).shape)
    rng = np.random.default_rng(7)
    q1, q2, k1, k2 = rng.normal(size=(4, 5, DIM))

    def contrastive_loss(q, k):  # MoCo v3's, one GPU
        logits = _normalize(q) @ _normalize(k).T / temperature
        return _cross_entropy(logits, np.arange(len(q))) * 2 * temperature

    reference_loss = contrastive_loss(q1, k2) + contrastive_loss(q2, k1)
    outputs = {"queries": np.stack([q1, q2], axis=1), "keys": np.stack([k1, k2], axis=1)}
    per_sample, _ = model.method.loss(model, outputs)
    ours = float(np.mean(to_numpy(per_sample)))
    assert ours * 4 * temperature == pytest.approx(reference_loss, rel=1e-10)


# ------------------------------------ f-MICL with momentum keys: standardised


def _standardize(z):
    """(N, V, d) -> each coordinate at mean 0, variance 1 over the N V rows (float64)."""
    z = np.asarray(z, np.float64)
    flat = z.reshape(-1, z.shape[-1])
    return (z - flat.mean(axis=0)) / np.sqrt(flat.var(axis=0) + 1e-5)


def test_fmicl_with_moco_v2_standardises_queries_and_keys_over_the_batch():
    """MoCo v2's pairs, f-MICL's score, on standardised embeddings
    (docs/fmicl-math.md section 4.5); the queue stores the standardised keys."""
    sigma, alpha, batch, queue_size = 0.7, 5.0, 8, 16
    keras.utils.set_random_seed(3)
    encoder = keras.Sequential([keras.Input((DIM_IN,)), keras.layers.Dense(DIM, use_bias=False)])
    model = keras_fmicl.ContrastiveModel(
        encoder, method=methods.MoCoV2(momentum=0.0, queue_size=queue_size), projector=None
    )
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=keras_fmicl.FMICLLoss("kl", sigma=sigma, alpha=alpha))
    views = _views(batch, seed=6) + 3.0  # far from centred
    model.build(views.shape)
    queue = to_numpy(model.method.queue.value).astype("float64")
    w = to_numpy(encoder.layers[0].kernel.value).astype("float64")
    q = _standardize(views[:, :1].astype("float64") @ w)[:, 0]
    k = _standardize(views[:, 1:].astype("float64") @ w)[:, 0]
    f, fp = reference.generator("kl")
    losses = []
    for i in range(batch):
        u_pos = np.exp(reference.log_ratio(q[i], k[i], "gaussian", sigma))
        u_neg = np.exp([reference.log_ratio(q[i], row, "gaussian", sigma) for row in queue])
        losses.append(-fp(u_pos) + alpha * np.mean(u_neg * fp(u_neg) - f(u_neg)))
    logs = model.train_on_batch(views, return_dict=True)
    assert logs["loss"] == pytest.approx(np.mean(losses), rel=1e-4)
    np.testing.assert_allclose(to_numpy(model.method.queue.value)[:batch], k, rtol=1e-4, atol=1e-5)
    assert model.method.standardizes(model)


def test_standardize_option_and_configs():
    model = _linear_moco(methods.MoCoV2(queue_size=16, standardize=False))
    model.compile(optimizer="sgd", loss=keras_fmicl.FMICLLoss())
    views = _views(4, seed=8) + 2.0
    model.build(views.shape)
    raw = to_numpy(model(views, training=True)["queries"])
    w = to_numpy(model.encoder.layers[0].kernel.value)
    np.testing.assert_allclose(raw, views[:, :1] @ w, rtol=1e-5, atol=1e-6)  # not standardised
    assert not model.method.standardizes(model)
    for method in (methods.MoCoV2(), methods.MoCoV3()):
        assert method.get_config()["standardize"] == "auto"
        config = {k: v for k, v in method.get_config().items() if k != "standardize"}
        assert type(method).from_config(config).standardize is False  # saved before 0.9
    with pytest.raises(ValueError, match="standardize"):
        methods.MoCoV3(standardize="yes")


def test_standardize_true_embeds_before_compile():
    keras.utils.set_random_seed(3)
    encoder = keras.Sequential([keras.Input((DIM_IN,)), keras.layers.Dense(DIM, use_bias=False)])
    model = keras_fmicl.ContrastiveModel(
        encoder, method=methods.MoCoV3(standardize=True), projector=None
    )
    views = _views(6, seed=9) + 1.0
    queries = to_numpy(model(views, training=True)["queries"]).astype("float64")
    w = to_numpy(encoder.layers[0].kernel.value).astype("float64")
    np.testing.assert_allclose(queries, _standardize(views.astype("float64") @ w), rtol=1e-4, atol=1e-4)
