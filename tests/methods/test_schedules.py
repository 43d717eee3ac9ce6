import math

import keras
import pytest

import keras_fmicl


@pytest.mark.parametrize("step", [0, 1, 25, 50, 99, 100, 1000])
def test_cosine_momentum_values(step):
    schedule = keras_fmicl.CosineMomentum(0.9, decay_steps=100, final_momentum=0.999)
    progress = min(step, 100) / 100
    expected = 0.999 - (0.999 - 0.9) * (math.cos(math.pi * progress) + 1) / 2
    assert float(schedule(step)) == pytest.approx(expected, rel=1e-6)


def test_cosine_momentum_round_trip():
    schedule = keras_fmicl.CosineMomentum(0.99, decay_steps=500)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert restored.get_config() == schedule.get_config()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"initial_momentum": 1.0, "decay_steps": 10}, "initial_momentum=1.0"),
        ({"initial_momentum": -0.1, "decay_steps": 10}, "initial_momentum=-0.1"),
        ({"initial_momentum": 0.9, "decay_steps": 0}, "decay_steps=0"),
        ({"initial_momentum": 0.9, "decay_steps": 10, "final_momentum": 1.5}, "final_momentum=1.5"),
        ({"initial_momentum": float("nan"), "decay_steps": 10}, "initial_momentum=nan"),
        ({"initial_momentum": True, "decay_steps": 10}, "initial_momentum=True"),
        ({"initial_momentum": "0.9", "decay_steps": 10}, "initial_momentum='0.9'"),
        ({"initial_momentum": 0.9, "decay_steps": 2.5}, "decay_steps=2.5"),
        ({"initial_momentum": 0.9, "decay_steps": 10, "final_momentum": -0.5}, "final_momentum=-0.5"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        keras_fmicl.CosineMomentum(**kwargs)


@pytest.mark.parametrize("step", [0, 5, 10, 10**6])
def test_cosine_momentum_stays_in_the_unit_interval(step):
    # the values a ContrastiveModel accepts from a schedule: [0, 1]
    for initial, final in [(0.0, 1.0), (0.99, 1.0), (0.9, 0.5)]:
        value = float(keras_fmicl.CosineMomentum(initial, decay_steps=10, final_momentum=final)(step))
        assert 0.0 <= value <= 1.0
