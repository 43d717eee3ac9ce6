"""Argument checks of `keras_fmicl.utils.checks` and `keras_fmicl.utils.registry`."""

import keras
import numpy as np
import pytest

from keras_fmicl.utils import checks as validation
from keras_fmicl.utils.registry import Registry
from tests.helpers import traced


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf"), "0.5", None, True])
def test_check_positive_number_rejects(value):
    with pytest.raises(ValueError, match=r"`alpha` must be a positive number. Received: alpha="):
        validation.check_positive_number("alpha", value)


def test_check_positive_number_accepts():
    assert validation.check_positive_number("alpha", 2) == 2.0
    assert isinstance(validation.check_positive_number("alpha", np.float32(0.5)), float)


def test_check_integer():
    assert validation.check_integer("k", 3, 1) == 3
    for value in (0, 1.0, True, "2"):
        with pytest.raises(ValueError, match=r"`k` must be an integer >= 1. Received: k="):
            validation.check_integer("k", value, 1)


def test_check_bool():
    for value in (True, False, np.bool_(True), np.bool_(False)):
        checked = validation.check_bool("flag", value)
        assert checked is bool(value)
    for value in ("no", "False", 0, 1, None, np.array([True])):
        with pytest.raises(ValueError, match=r"`flag` must be True or False. Received: flag="):
            validation.check_bool("flag", value)


def test_check_choice():
    assert validation.check_choice("form", "b", ("a", "b")) == "b"
    for value in ("c", "B", None, 1):
        with pytest.raises(ValueError, match=rf"`form` must be one of 'a', 'b'. Received: form={value!r}"):
            validation.check_choice("form", value, ("a", "b"))


def test_concrete_values_of_host_data_and_eager_tensors():
    np.testing.assert_array_equal(validation.concrete_values([1, 2]), [1, 2])
    np.testing.assert_array_equal(validation.concrete_values(np.arange(3)), [0, 1, 2])
    assert validation.concrete_values(3).shape == ()
    assert validation.concrete_values(None) is None
    tensor = keras.ops.convert_to_tensor(np.array([0.5, 1.5], "float32"))
    np.testing.assert_array_equal(validation.concrete_values(tensor), [0.5, 1.5])


def test_concrete_values_of_a_traced_tensor_is_none():
    seen = []

    def fn(x):
        seen.append(validation.concrete_values(x))
        return x * 2.0

    traced(fn)(np.ones(3, "float32"))
    if keras.backend.backend() == "torch":  # eager: every tensor is concrete
        np.testing.assert_array_equal(seen[0], [1.0, 1.0, 1.0])
    else:
        assert seen[0] is None


def test_describe_is_short():
    text = validation.describe(np.arange(100))
    assert text.startswith("[0, 1, 2") and "..." in text and "shape=(100,)" in text
    assert "dtype=<U1" in validation.describe(np.array(["a", "b"]))


@pytest.mark.parametrize("weight", [None, 2.0, np.ones(6), np.ones((6, 1)), [1.0] * 6])
def test_check_sample_weight_accepts(weight):
    validation.check_sample_weight(weight, 6)


@pytest.mark.parametrize("shape", [(5,), (6, 2), (6, 1, 1), (1, 6)])
def test_check_sample_weight_rejects(shape):
    with pytest.raises(ValueError, match=rf"`sample_weight` must be .*N = 6.*Received: sample_weight.shape=\({shape[0]},"):
        validation.check_sample_weight(np.ones(shape), 6)


def test_check_sample_weight_with_unknown_batch_size_checks_the_rank():
    validation.check_sample_weight(np.ones(5), None)
    with pytest.raises(ValueError, match="sample_weight.shape"):
        validation.check_sample_weight(np.ones((5, 2)), None)


@pytest.mark.parametrize(
    "kwargs, value, message",
    [
        ({"minimum": 0}, -1, r"`n` must be an integer >= 0. Received: n=-1"),
        ({}, 1.5, r"`n` must be an integer. Received: n=1.5"),
        ({"allow_none": True}, "3", r"`n` must be an integer or None. Received: n='3'"),
        ({"minimum": 1, "description": "a positive integer"}, True, r"`n` must be a positive integer. Received: n=True"),
    ],
)
def test_check_integer_messages(kwargs, value, message):
    with pytest.raises(ValueError, match=message):
        validation.check_integer("n", value, **kwargs)


def test_check_integer_accepts_numpy_integers_and_none_when_allowed():
    assert validation.check_integer("n", np.int64(4), 1) == 4
    assert validation.check_integer("n", None, allow_none=True) is None
    assert validation.check_positive_integer("n", 2) == 2
    with pytest.raises(ValueError, match="`n` must be a positive integer"):
        validation.check_positive_integer("n", 0)
    assert validation.is_integer(np.int32(1)) and not validation.is_integer(False)
    assert validation.is_real(0.5) and not validation.is_real(True)


def test_a_registry_lists_names_and_aliases_once():
    class Base:
        pass

    registry = Registry("thing", Base)

    @registry.register("first", "uno")
    class One(Base):
        name = "one"

    assert registry.names() == ("one",) and registry.aliases() == {"first": "one", "uno": "one"}
    assert isinstance(registry.get(" First "), One) and isinstance(registry.get(One), One)
    instance = One()
    assert registry.get(instance) is instance and registry.is_builtin(instance)
    with pytest.raises(ValueError, match=r"Unknown `thing`: expected one of 'one', 'first', 'uno'.*Received: thing='two'"):
        registry.get("two")
