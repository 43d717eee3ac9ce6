"""Tests of keras_fmicl.models.diagnostics: the guard against training that visibly fails."""

import glob
import json
import math
import os
import warnings

import keras
import pytest

from keras_fmicl.models import diagnostics
from tests.helpers import backend_independent

RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks", "results")


def test_relative_alignment_is_alignment_over_minus_half_uniformity():
    assert diagnostics.relative_alignment(1.2, -3.0) == pytest.approx(0.8)
    assert diagnostics.relative_alignment(2.0, -4.0) == pytest.approx(1.0)
    assert math.isinf(diagnostics.relative_alignment(0.5, 0.0))  # every pair on one point


def test_drifting_epochs_counts_the_latest_run_only():
    assert diagnostics.drifting_epochs([1.0, 1.2, 1.4, 1.7], [0.5, 0.4, 0.3, 0.1]) == 3
    assert diagnostics.drifting_epochs([1.0, 1.2, 1.4, 1.7], [0.5, 0.4, 0.45, 0.1]) == 1
    assert diagnostics.drifting_epochs([1.5, 1.2, 1.0, 0.9], [0.1, 0.3, 0.5, 0.6]) == 0
    assert diagnostics.drifting_epochs([], []) == 0


# ratios r = a / (-u / 2) below, written out: FAR has r = 0.9, 1.2, 1.3, 1.25, 1.1
FAR = [(0.9, -2.0), (2.4, -4.0), (2.6, -4.0), (2.5, -4.0), (2.2, -4.0)]
# r = 0.9, 0.8, then 0.79 from epoch 2 on: above 0.95 * 0.8 = 0.76 from epoch 6
STALLED = [(0.9, -2.0), (0.8, -2.0)] + [(0.79, -2.0)] * 7
# r falls: 1.0, 0.9, 0.8, ..., 0.2
HEALTHY = [(1.0 - 0.1 * e, -2.0) for e in range(9)]


def split(history):
    return [a for a, _ in history], [u for _, u in history]


def test_failing_epochs_far_counts_from_the_third_epoch():
    assert diagnostics.failing_epochs(*split(FAR)) == (3, "far")  # epochs 2, 3, 4 (epoch 1 too early)
    assert diagnostics.failing_epochs(*split(FAR[:2])) == (0, None)
    # broken by one epoch below 1: counts restart
    assert diagnostics.failing_epochs(*split(FAR[:3] + [(1.9, -4.0), (2.2, -4.0)])) == (1, "far")


def test_failing_epochs_stalled_counts_from_the_seventh_epoch():
    assert diagnostics.failing_epochs(*split(STALLED)) == (3, "stalled")  # epochs 6, 7, 8
    assert diagnostics.failing_epochs(*split(STALLED[:6])) == (0, None)
    # 0.75 < 0.76 at the last epoch: progress, no stall
    assert diagnostics.failing_epochs(*split(STALLED[:8] + [(0.75, -2.0)])) == (0, None)
    assert diagnostics.failing_epochs(*split(HEALTHY)) == (0, None)


def _feed(monitor, history):
    for epoch, (alignment, uniformity) in enumerate(history):
        monitor.on_epoch_end(epoch, {"loss": 1.0, "alignment": alignment, "uniformity": uniformity, "mi_estimate": 0.1})


@pytest.mark.parametrize("history, signal", [(FAR, "as far apart as random pairs"), (STALLED, "stalled")])
def test_warns_once_naming_the_signal(history, signal):
    monitor = diagnostics.PositivesDriftMonitor(patience=3)
    monitor.on_train_begin()
    with pytest.warns(diagnostics.PositivesDriftWarning, match=signal) as record:
        _feed(monitor, history + history[-1:])
    assert len(record) == 1  # once, not at every later epoch
    assert "alpha" in str(record[0].message) and "standardize" in str(record[0].message)


@pytest.mark.parametrize("history", [HEALTHY, FAR[:4], STALLED[:8]])
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
            monitor.on_epoch_end(epoch, {"loss": 1.0, "alignment": 3.0})  # no uniformity
    with pytest.warns(diagnostics.PositivesDriftWarning):
        _feed(monitor, FAR[:3])
    monitor.on_train_begin()
    assert monitor.alignment == [] and monitor.uniformity == [] and not monitor.warned


@backend_independent  # reads recorded histories
def test_silent_on_every_recorded_infonce_run_and_warns_on_the_unstandardised_momentum_failures():
    """The histories of benchmarks/results (issue 24 item 5): no InfoNCE run
    warns; the f-MICL momentum runs without standardisation, which end below or
    near a random-init encoder, do."""
    infonce, failures = [], []
    for path in glob.glob(os.path.join(RESULTS, "*", "runs", "*.json")):
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        history = record.get("history") or {}
        if not (history.get("alignment") and history.get("uniformity")):
            continue
        loss = record.get("loss") or (record.get("flags") or {}).get("loss")
        monitor = diagnostics.PositivesDriftMonitor()
        monitor.on_train_begin()
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            _feed(monitor, list(zip(history["alignment"], history["uniformity"])))
        if loss == "infonce":
            infonce.append((path, monitor.warned))
        elif "momentum_grid_unstandardized" in path:
            failures.append((path, monitor.warned))
    assert len(infonce) >= 50 and not [path for path, warned in infonce if warned]
    assert len(failures) == 4 and all(warned for _, warned in failures)


@pytest.mark.parametrize("patience", [0, 1.5, True])
def test_bad_patience(patience):
    with pytest.raises(ValueError, match="patience"):
        diagnostics.PositivesDriftMonitor(patience=patience)


def test_config_round_trip():
    monitor = diagnostics.PositivesDriftMonitor(patience=4)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(monitor))
    assert isinstance(clone, diagnostics.PositivesDriftMonitor) and clone.patience == 4
