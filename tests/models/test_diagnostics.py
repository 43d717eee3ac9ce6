"""Tests of keras_fmicl.models.diagnostics: the positives-drift guard."""

import warnings

import keras
import pytest

from keras_fmicl.models import diagnostics


def test_drifting_epochs_counts_the_latest_run_only():
    assert diagnostics.drifting_epochs([1.0, 1.2, 1.4, 1.7], [0.5, 0.4, 0.3, 0.1]) == 3
    # the pattern broke at epoch 2 (mi rose): only the last epoch counts
    assert diagnostics.drifting_epochs([1.0, 1.2, 1.4, 1.7], [0.5, 0.4, 0.45, 0.1]) == 1
    # healthy: alignment falls while mi rises
    assert diagnostics.drifting_epochs([1.5, 1.2, 1.0, 0.9], [0.1, 0.3, 0.5, 0.6]) == 0
    assert diagnostics.drifting_epochs([], []) == 0
    assert diagnostics.drifting_epochs([1.0], [0.2]) == 0


def _feed(monitor, history):
    for epoch, (alignment, mi) in enumerate(history):
        monitor.on_epoch_end(epoch, {"loss": 1.0, "alignment": alignment, "mi_estimate": mi})


# the MoCo failure of issue 14: alignment 1.3 -> 2.1 while the bound falls
DRIFTING = [(1.3, 0.2), (1.5, 0.1), (1.7, -0.2), (1.9, -0.5), (2.1, -0.9), (2.2, -1.0)]
HEALTHY = [(1.3, -0.5), (1.0, -0.2), (0.9, 0.1), (0.95, 0.15), (0.85, 0.3), (0.8, 0.35)]


def test_warns_once_on_a_drifting_history():
    monitor = diagnostics.PositivesDriftMonitor(patience=3)
    monitor.on_train_begin()
    with pytest.warns(diagnostics.PositivesDriftWarning, match=r"alignment rose \(1.300 -> 1.900\)") as record:
        _feed(monitor, DRIFTING)
    assert len(record) == 1  # once, not at every later epoch
    assert "pushed apart" in str(record[0].message) and "alpha" in str(record[0].message)


@pytest.mark.parametrize("history", [HEALTHY, DRIFTING[:3]])
def test_silent_on_a_healthy_or_short_history(history):
    monitor = diagnostics.PositivesDriftMonitor(patience=3)
    monitor.on_train_begin()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _feed(monitor, history)
    assert not monitor.warned


def test_silent_without_the_metrics_and_reset_by_a_new_fit():
    monitor = diagnostics.PositivesDriftMonitor(patience=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for epoch in range(5):
            monitor.on_epoch_end(epoch, {"loss": 1.0})
    with pytest.warns(diagnostics.PositivesDriftWarning):
        _feed(monitor, DRIFTING[:2])
    monitor.on_train_begin()
    assert monitor.alignment == [] and not monitor.warned


@pytest.mark.parametrize("patience", [0, 1.5, True])
def test_bad_patience(patience):
    with pytest.raises(ValueError, match="patience"):
        diagnostics.PositivesDriftMonitor(patience=patience)


def test_config_round_trip():
    monitor = diagnostics.PositivesDriftMonitor(patience=4)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(monitor))
    assert isinstance(clone, diagnostics.PositivesDriftMonitor) and clone.patience == 4
