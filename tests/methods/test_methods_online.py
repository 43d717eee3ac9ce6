"""`online_weight` of the momentum methods: the key contrast mixed with the
online contrast, `(1 - w) L(queries, keys) + w L(queries, queries)`
(docs/fmicl-math.md section 4.4), against the float64 loop reference."""

import types
import warnings

import keras
import numpy as np
import pytest

import keras_fmicl
from keras_fmicl import methods
from tests import reference
from tests.helpers import to_numpy

DIVERGENCES = ["kl", "js", "pearson"]


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0])
def test_moco_v3_mixture_matches_reference(divergence, weight):
    rng = np.random.default_rng(3)
    queries = rng.normal(size=(5, 2, 6)).astype("float32")
    keys = rng.normal(size=(5, 2, 6)).astype("float32")
    loss = keras_fmicl.FMICLLoss(divergence, sigma=0.7, alpha=3.0)
    method = methods.MoCoV3(momentum=0.9, online_weight=weight)
    per_sample, _ = method.loss(types.SimpleNamespace(loss=loss), {"queries": queries, "keys": keys})
    key_part = reference.fmicl_loss(queries, divergence=divergence, parameter=0.7, alpha=3.0, keys=keys)
    online_part = reference.fmicl_loss(queries, divergence=divergence, parameter=0.7, alpha=3.0)
    expected = (1.0 - weight) * key_part + weight * online_part
    np.testing.assert_allclose(to_numpy(per_sample), expected, rtol=2e-5, atol=2e-6)


def test_moco_v2_mixture_trains_and_round_trips():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 2, 6)).astype("float32")
    encoder = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8)])
    method = methods.MoCoV2(momentum=0.9, queue_size=64, online_weight=0.5, symmetric=True)
    model = keras_fmicl.ContrastiveModel(encoder, method=method)
    model.compile(optimizer="sgd", loss=keras_fmicl.FMICLLoss("kl"))
    history = model.fit(x, batch_size=8, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    restored = type(method).from_config(method.get_config())
    assert restored.online_weight == 0.5 and restored.get_config() == method.get_config()
    with pytest.raises(ValueError, match="batch_size=1"):
        method.check_batch_size(model, 1)


@pytest.mark.parametrize("weight", [-0.1, 1.5, True, "0.5", None])
def test_bad_online_weight_raises(weight):
    with pytest.raises(ValueError, match="online_weight="):
        methods.MoCoV3(online_weight=weight)


def _fit_moco(loss, output_batch_norm, online_weight=0.0, standardize=False):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 2, 6)).astype("float32")
    encoder = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8)])
    head = keras_fmicl.ProjectionHead(8, 4, output_batch_norm=output_batch_norm)
    method = methods.MoCoV2(
        momentum=0.9, queue_size=32, online_weight=online_weight, symmetric=True, standardize=standardize
    )
    model = keras_fmicl.ContrastiveModel(encoder, method=method, projector=head)
    model.compile(optimizer="sgd", loss=loss)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, batch_size=8, epochs=1, verbose=0)
    return [str(w.message) for w in caught if "output batch norm" in str(w.message)]


def test_fmicl_with_uncentred_keys_warns_once_and_names_the_remedy():
    messages = _fit_moco(keras_fmicl.FMICLLoss("kl"), output_batch_norm=False)
    assert len(messages) == 1
    assert "standardize='auto'" in messages[0] and "section 4.5" in messages[0]


@pytest.mark.parametrize(
    "loss, output_batch_norm, online_weight, standardize",
    [("fmicl", False, 0.0, "auto"), ("fmicl", True, 0.0, False), ("fmicl", False, 0.5, False),
     ("infonce", False, 0.0, False)],
)
def test_no_uncentred_keys_warning_when_keys_are_centred_or_the_loss_is_infonce(
    loss, output_batch_norm, online_weight, standardize
):
    loss = keras_fmicl.FMICLLoss("kl") if loss == "fmicl" else keras_fmicl.InfoNCELoss()
    assert _fit_moco(loss, output_batch_norm, online_weight, standardize) == []
