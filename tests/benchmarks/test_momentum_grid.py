"""benchmarks/momentum_grid.py: its optimizers and its flags (no training)."""

import math

import keras
import pytest

from benchmarks import momentum_grid
from tests.helpers import backend_independent


def learning_rate_at(optimizer, step):
    """The rate the optimizer applies at `step` (its schedule read at that iteration)."""
    optimizer.iterations.assign(step)
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


@pytest.mark.parametrize("sgd_rate", [momentum_grid.SGD_RATE, 0.18])
def test_sgd_cosine_peaks_at_the_rate_per_256_samples_and_decays_to_zero(sgd_rate):
    steps, batch_size = 100, 128
    optimizer = momentum_grid.build_optimizer(keras, "sgd_cosine", steps, batch_size, sgd_rate)
    assert isinstance(optimizer, keras.optimizers.SGD) and optimizer.momentum == 0.9
    peak = sgd_rate * batch_size / 256
    assert learning_rate_at(optimizer, 0) == pytest.approx(peak, rel=1e-6)
    # half-way along the cosine: half the peak; at the end: 0
    assert learning_rate_at(optimizer, steps // 2) == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi / 2)),
                                                                    rel=1e-5)
    assert learning_rate_at(optimizer, steps) == pytest.approx(0.0, abs=1e-9)


def test_the_default_sgd_rate_is_the_grids():
    default = momentum_grid.build_optimizer(keras, "sgd_cosine", 10, 256)
    assert learning_rate_at(default, 0) == pytest.approx(0.06, rel=1e-6)


@backend_independent
@pytest.mark.parametrize("value", ["0", "-0.1", "nan", "inf"])
def test_a_rate_that_is_not_positive_and_finite_is_refused(value, capsys, tmp_path):
    with pytest.raises(SystemExit) as raised:
        momentum_grid.main(["--report", f"--sgd_rate={value}", f"--output_dir={tmp_path}"])
    assert raised.value.code == 2
    assert "--sgd_rate must be a positive number" in capsys.readouterr().err


@backend_independent
def test_another_rate_needs_its_own_output_dir(capsys, tmp_path):
    with pytest.raises(SystemExit) as raised:
        momentum_grid.main(["--report", "--sgd_rate=0.18"])
    assert raised.value.code == 2
    assert "give it an --output_dir of its own" in capsys.readouterr().err
    # with a folder of its own it runs (here: the report of no runs)
    assert momentum_grid.main(["--report", "--sgd_rate=0.18", f"--output_dir={tmp_path}"]) == 0
    assert (tmp_path / "grid.md").exists() and (tmp_path / "summary.json").exists()
