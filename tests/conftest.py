"""Shared fixtures. The backend comes from KERAS_BACKEND, fixed per process."""

import contextlib
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _restore_keras_state():
    """Every test starts from float32, the default policy and a fixed seed."""
    policy = keras.config.dtype_policy()
    floatx = keras.config.floatx()
    keras.utils.set_random_seed(1234)
    yield
    keras.config.set_dtype_policy(policy)
    keras.config.set_floatx(floatx)
    keras.backend.clear_session(free_memory=False)


@contextlib.contextmanager
def float64_enabled():
    """Lets the backend compute in float64 (JAX needs x64 switched on)."""
    if keras.backend.backend() == "jax":
        import jax

        with jax.enable_x64(True):
            yield
    else:
        yield


@pytest.fixture
def float64():
    with float64_enabled():
        yield


def pytest_report_header(config):
    return f"keras {keras.__version__}, backend {keras.backend.backend()}"
