import keras
import numpy as np
import pytest

import keras_fmicl
from tests.helpers import to_numpy


@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("batch_norm", [True, False])
def test_projection_head_structure(num_layers, batch_norm):
    head = keras_fmicl.ProjectionHead(16, 8, num_layers=num_layers, batch_norm=batch_norm)
    y = head(np.random.default_rng(0).normal(size=(5, 12)).astype("float32"), training=True)
    assert tuple(y.shape) == (5, 8)
    dense = [l for l in head.hidden_layers if isinstance(l, keras.layers.Dense)]
    norms = [l for l in head.hidden_layers if isinstance(l, keras.layers.BatchNormalization)]
    assert len(dense) == num_layers - 1
    assert len(norms) == (num_layers - 1 if batch_norm else 0)
    assert all(d.use_bias == (not batch_norm) for d in dense)


def test_output_batch_norm_standardises_the_embedding():
    head = keras_fmicl.ProjectionHead(16, 8, num_layers=3, output_batch_norm=True)
    x = np.random.default_rng(1).normal(size=(64, 12)).astype("float32")
    y = to_numpy(head(x, training=True))
    np.testing.assert_allclose(y.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(y.std(axis=0), 1.0, atol=1e-2)
    assert not head.output_dense.use_bias


def test_prediction_head_is_a_two_layer_mlp():
    head = keras_fmicl.PredictionHead(32, 8)
    assert head.num_layers == 2 and head.output_norm is None
    assert tuple(head(np.ones((3, 8), "float32")).shape) == (3, 8)


@pytest.mark.parametrize("cls", [keras_fmicl.ProjectionHead, keras_fmicl.PredictionHead])
def test_config_and_save_round_trip(cls, tmp_path):
    head = cls(16, 8, num_layers=3)
    restored = cls.from_config(head.get_config())
    assert restored.get_config() == head.get_config()
    model = keras.Sequential([keras.Input((6,)), head])
    x = np.random.default_rng(2).normal(size=(4, 6)).astype("float32")
    path = str(tmp_path / "head.keras")
    model.save(path)
    np.testing.assert_allclose(to_numpy(keras.models.load_model(path)(x)), to_numpy(model(x)), rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"hidden_dim": 0, "output_dim": 8}, "hidden_dim=0"),
        ({"hidden_dim": 8, "output_dim": -1}, "output_dim=-1"),
        ({"hidden_dim": 8, "output_dim": 8, "num_layers": 0}, "num_layers=0"),
        ({"hidden_dim": 8.5, "output_dim": 8}, "hidden_dim=8.5"),
        ({"hidden_dim": 8, "output_dim": 8, "batch_norm": "no"}, "`batch_norm` must be True or False"),
        ({"hidden_dim": 8, "output_dim": 8, "output_batch_norm": 1}, "`output_batch_norm` must be True"),
        ({"hidden_dim": 8, "output_dim": 8, "synchronized": None}, "`synchronized` must be True or False"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        keras_fmicl.ProjectionHead(**kwargs)


def test_prediction_head_has_no_output_batch_norm():
    assert not keras_fmicl.PredictionHead(8, 4, output_batch_norm=False).output_batch_norm
    with pytest.raises(ValueError, match=r"`PredictionHead` has no output batch norm.*output_batch_norm=True"):
        keras_fmicl.PredictionHead(8, 4, output_batch_norm=True)
