"""`.keras` files saved by an earlier release keep loading (issue 25's constraint).

The fixtures were written by `tests/fixtures/make_fixtures.py` before the
package moved into folders; Keras finds each class by its registered name
(`keras_fmicl>ClassName`), so moving a class must not break them.
"""

import os

import keras
import numpy as np
import pytest

import keras_fmicl
from tests.fixtures.make_fixtures import HERE
from tests.fixtures.make_fixtures import probe_images

EXPECTED = {
    "simclr": (keras_fmicl.methods.SimCLR, keras_fmicl.FMICLLoss, "tsallis"),
    "moco": (keras_fmicl.methods.MoCoV2, keras_fmicl.InfoNCELoss, None),
    "mocov3": (keras_fmicl.methods.MoCoV3, keras_fmicl.FMICLLoss, "js"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_model_saved_before_the_move_loads_with_every_variable(name):
    method_type, loss_type, divergence = EXPECTED[name]
    model = keras.models.load_model(os.path.join(HERE, f"{name}.keras"))
    assert isinstance(model, keras_fmicl.ContrastiveModel)
    assert type(model.method) is method_type
    assert type(model.loss) is loss_type
    if divergence is not None:
        assert model.loss.divergence.name == divergence
    with np.load(os.path.join(HERE, f"{name}.npz")) as saved:
        expected = dict(saved)
    output = expected.pop("__encoder_output__")
    assert len(model.variables) == len(expected)
    for variable, key in zip(model.variables, sorted(expected)):
        # a path depends on the name scope and the layer names taken before: compare the names
        assert key.rsplit("/", 1)[-1] == variable.path.rsplit("/", 1)[-1], (key, variable.path)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable.value), expected[key], err_msg=key)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model.encoder(probe_images())), output, rtol=1e-5, atol=1e-6
    )


def test_a_saved_sentence_model_loads_with_every_variable():
    """SimCSE on a tiny random BERT (`make_fixtures.py simcse`): encoder, backbone and method come back."""
    pytest.importorskip("keras_hub")
    model = keras.models.load_model(os.path.join(HERE, "simcse.keras"))
    assert isinstance(model.encoder, keras_fmicl.layers.SentenceEncoder)
    assert type(model.method) is keras_fmicl.methods.SimCSE
    assert type(model.loss) is keras_fmicl.FMICLLoss and model.loss.divergence.name == "kl"
    with np.load(os.path.join(HERE, "simcse.npz")) as saved:
        expected = dict(saved)
    output = expected.pop("__encoder_output__")
    probe = {key[2:-2]: expected.pop(key) for key in list(expected) if key.startswith("__")}
    assert len(model.variables) == len(expected)
    for variable, key in zip(model.variables, sorted(expected)):
        assert key.rsplit("/", 1)[-1] == variable.path.rsplit("/", 1)[-1], (key, variable.path)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable.value), expected[key], err_msg=key)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model.encoder(probe)), output, rtol=1e-5, atol=1e-6)
