"""Shared fixtures. The backend comes from KERAS_BACKEND, fixed per process."""

import contextlib
import os
from typing import Any
from typing import NamedTuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The tests' shapes are tiny: under JAX they wait on XLA compiling each op and
# step far more than on running it, and XLA's CPU optimisation passes are most
# of that compile time (about half of the JAX suite's time on 2 cores). They
# change how fast compiled code runs, not what it computes. Subprocesses the
# tests start inherit the setting; a user's own XLA_FLAGS wins.
if os.environ.get("KERAS_BACKEND") == "jax":
    os.environ.setdefault(
        "XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    )
# pytest-xdist workers share the machine's cores: PyTorch's OpenMP pool
# (and MKL's) gets each worker's share (cores // workers threads), or the
# pools of the workers together oversubscribe the cores and spin-wait on each
# other (on 2 cores with 2 workers, the PyTorch suite's 1000-step linear
# probe test took 72 s instead of 17 s, the whole suite 383 s instead of
# 282 s). Thread counts change how fast the tests run, not what they check.
# Subprocesses the tests start inherit them; a user's own settings win.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    if hasattr(os, "sched_getaffinity"):
        _cores = len(os.sched_getaffinity(0))
    else:
        _cores = os.cpu_count() or 1
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_name, str(max(1, _cores // _WORKERS)))

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


# The corpus of the shared tiny BERT: the first five sentences are
# tests/layers/test_sentence_encoder.py's CORPUS (an accented word, punctuation, mixed case).
TINY_TEXT_CORPUS = (
    "The cat sat on the mat.",
    "A dog runs in the park!",
    "Dogs and cats are pets",
    "the quick brown fox jumps over the lazy dog",
    "Un café, s'il vous plaît",
    "A man is playing a guitar.",
    "A woman is slicing an onion.",
    "Two children play football in the rain.",
    "The sun rises over the quiet lake",
    "She reads a long book about old ships.",
    "Birds sing in the tall green trees",
    "He cooks pasta with fresh tomatoes.",
    "The train leaves the station at noon.",
    "A girl paints a small red house",
    "They walk along the river at night.",
    "My brother fixes an old bicycle.",
)


class TinyText(NamedTuple):
    """The session's tiny BERT (`tiny_text_backbone`)."""

    backbone: Any
    preprocessor: Any
    corpus: tuple
    sequence_length: int
    hidden_dim: int


@pytest.fixture(scope="session")
def tiny_text_backbone():
    """A tiny random-init keras-hub BERT and its preprocessor, built once.

    2 layers, hidden size 32, a WordPiece vocabulary of at most 100 entries
    from `TINY_TEXT_CORPUS`, sequences of 12 tokens, dropout 0.1. Building
    a BERT takes seconds (over 10 on JAX), so every test shares this one.
    Tests may train it: never rely on its initial weights, and compute any
    expected value from the backbone as it is. Skipped without keras-hub.
    """
    pytest.importorskip("keras_hub")
    from keras_fmicl.layers import text_backbone

    keras.utils.set_random_seed(0)
    sequence_length, hidden_dim = 12, 32
    backbone, preprocessor = text_backbone.tiny_backbone(
        list(TINY_TEXT_CORPUS), vocabulary_size=100, sequence_length=sequence_length,
        num_layers=2, num_heads=2, hidden_dim=hidden_dim, dropout=0.1,
    )
    return TinyText(backbone, preprocessor, TINY_TEXT_CORPUS, sequence_length, hidden_dim)


def pytest_report_header(config):
    return f"keras {keras.__version__}, backend {keras.backend.backend()}"
