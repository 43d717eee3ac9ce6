"""Training diagnostics: the warning and callback for training that visibly fails (positives as far apart as random pairs)."""

from __future__ import annotations

import warnings
from typing import Any

import keras

from keras_fmicl.utils.checks import check_integer
from keras_fmicl.utils.registry import PACKAGE


class PositivesDriftWarning(UserWarning):
    """Training visibly fails: the positives stay as far apart as random pairs (`PositivesDriftMonitor`)."""


def drifting_epochs(alignment: list[float], mi_estimate: list[float]) -> int:
    """Number of latest consecutive epochs with alignment up and mi_estimate down.

    The rule `PositivesDriftMonitor` applied before 0.10, kept as a helper:
    healthy MoCo v3 runs (InfoNCE too) show the pattern late in training, so
    the monitor now reads `failing_epochs` instead
    (`benchmarks/training_signals.py`).

    Args:
        alignment: per-epoch alignment values (oldest first).
        mi_estimate: per-epoch mutual-information estimates, same length.

    Returns:
        How many of the last epochs in a row had `alignment` strictly above
        and `mi_estimate` strictly below the epoch before (0 if the latest
        did not).

    Example:

    >>> drifting_epochs([1.0, 1.2, 1.4, 1.7], [0.5, 0.4, 0.3, 0.1])
    3
    """
    count = 0
    for index in range(min(len(alignment), len(mi_estimate)) - 1, 0, -1):
        if alignment[index] > alignment[index - 1] and mi_estimate[index] < mi_estimate[index - 1]:
            count += 1
        else:
            break
    return count


FAR_FROM_EPOCH = 2
"""First epoch (0-based) at which `failing_epochs` counts positives as far apart as random pairs."""

STALL_FROM_EPOCH = 6
"""First epoch (0-based) at which `failing_epochs` counts a stall."""

STALL_FRACTION = 0.95
"""A stall: the relative alignment still above this fraction of its value after epoch 2 (index 1)."""


def relative_alignment(alignment: float, uniformity: float) -> float:
    """The positives' squared distance over that of random pairs of the batch.

    Formula: `alignment / (-uniformity / 2)`. Uniformity is
    `log mean_n exp(-2 ||z^_a - z^_n||^2)` over the negative pairs, so by
    Jensen's inequality `-uniformity / 2 <= mean_n ||z^_a - z^_n||^2`: the
    denominator is at most the mean squared distance of random pairs. A
    value `>= 1` means the positives are no closer than random pairs (the
    encoder learned nothing that separates them); learning lowers it (in the
    benchmarks' InfoNCE runs from about 1.0 or 0.6 after the first epoch to
    0.85 or 0.3).

    Args:
        alignment: an epoch's `alignment` (mean `||z^_a - z^_p||^2` of positives).
        uniformity: the same epoch's `uniformity` (`< 0`).

    Returns:
        The ratio; `inf` when `uniformity >= 0` (every pair collapsed onto one point).

    Example:

    ```python
    relative_alignment(1.2, -3.0)   # 0.8: positives closer than random pairs
    ```
    """
    scale = -float(uniformity) / 2.0
    return float(alignment) / scale if scale > 0 else float("inf")


def failing_epochs(alignment: list[float], uniformity: list[float]) -> tuple[int, str | None]:
    """Latest consecutive epochs in which training visibly fails, and how.

    Two signals, read from the epoch metrics only (no labels, no kNN), on
    `r = relative_alignment(alignment, uniformity)` of each epoch `e`
    (0-based):

    * `"far"`: `r[e] >= 1` for `e >= FAR_FROM_EPOCH`: the positives are as
      far apart as random pairs (f-MICL with unstandardised momentum keys,
      an `alpha` too large for the negatives);
    * `"stalled"`: `r[e] > STALL_FRACTION * r[1]` for `e >= STALL_FROM_EPOCH`:
      after seven epochs the positives came no closer, relative to random
      pairs, than after the second (cosine f-MICL with a low temperature).

    Args:
        alignment: per-epoch alignment values (oldest first).
        uniformity: per-epoch uniformity values, same length.

    Returns:
        `(count, signal)`: how many of the last epochs in a row showed a
        signal (`"far"` first if both), and which; `(0, None)` if the
        latest epoch showed none.

    Example:

    ```python
    failing_epochs([1.5, 2.1, 2.3, 2.2, 2.0], [-3.0, -3.4, -3.5, -3.5, -3.4])   # (3, "far")
    ```
    """
    ratios = [relative_alignment(a, u) for a, u in zip(alignment, uniformity)]
    for signal in ("far", "stalled"):
        count = 0
        for epoch in range(len(ratios) - 1, -1, -1):
            if signal == "far":
                shows = epoch >= FAR_FROM_EPOCH and ratios[epoch] >= 1.0
            else:
                shows = epoch >= STALL_FROM_EPOCH and ratios[epoch] > STALL_FRACTION * ratios[1]
            if not shows:
                break
            count += 1
        if count:
            return count, signal
    return 0, None


@keras.saving.register_keras_serializable(package=PACKAGE)
class PositivesDriftMonitor(keras.callbacks.Callback):
    """Warns when training visibly fails: the positives stay as far apart as random pairs.

    After each epoch it reads `alignment` and `uniformity` from the logs
    (both reported by `ContrastiveModel`, `mi_estimate` too) and applies
    `failing_epochs`: when for `patience` consecutive epochs the positives
    are as far apart as random pairs of the batch (`"far"`), or have come no
    closer since the second epoch (`"stalled"`), it issues one
    `PositivesDriftWarning` naming the signal and the likely causes. It
    never stops training.

    The two signals and their thresholds were checked on every history of
    the benchmarks (`benchmarks/training_signals.py`): silent on all the
    InfoNCE runs, they fire on f-MICL runs that end below or near a
    random-init encoder (`benchmarks/README.md`, "training_signals.py").

    Args:
        patience: consecutive epochs of a signal before warning, `>= 1`.
            Defaults to 3.

    Example:

    ```python
    model.fit(images, epochs=50, callbacks=[keras_fmicl.PositivesDriftMonitor(patience=3)])
    ```
    """

    def __init__(self, patience: int = 3):
        super().__init__()
        self.patience = check_integer("patience", patience, 1)
        self.alignment: list[float] = []
        self.uniformity: list[float] = []
        self.mi_estimate: list[float] = []
        self.warned = False

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.alignment, self.uniformity, self.mi_estimate, self.warned = [], [], [], False

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        if "alignment" not in logs or "uniformity" not in logs:
            return
        self.alignment.append(float(logs["alignment"]))
        self.uniformity.append(float(logs["uniformity"]))
        self.mi_estimate.append(float(logs.get("mi_estimate", float("nan"))))
        count, signal = failing_epochs(self.alignment, self.uniformity)
        if count >= self.patience and not self.warned:
            self.warned = True
            warnings.warn(self.message(signal, count), PositivesDriftWarning, stacklevel=2)

    def message(self, signal: str, count: int) -> str:
        loss = getattr(self.model, "loss", None)
        alpha = getattr(loss, "alpha", None)
        mode = getattr(self.model, "mode", None)
        setting = f" (alpha={alpha:g}, mode {mode!r})" if alpha is not None else ""
        ratios = [relative_alignment(a, u) for a, u in zip(self.alignment, self.uniformity)]
        if signal == "far":
            what = (
                f"for {count} epochs in a row the positives have been as far apart as random pairs "
                f"of the batch (alignment {self.alignment[-1]:.3f} >= -uniformity/2 = "
                f"{-self.uniformity[-1] / 2:.3f}): the encoder is not learning what makes two views "
                "alike"
            )
        else:
            what = (
                f"for {count} epochs in a row the positives have come no closer, relative to random "
                f"pairs, than after the second epoch (alignment / (-uniformity/2): {ratios[1]:.3f} -> "
                f"{ratios[-1]:.3f}): training has stalled"
            )
        return (
            f"Training visibly fails{setting}: {what}. Likely causes: an f-MICL `alpha` too large "
            "for these negatives; momentum keys without standardisation (keep MoCoV2/MoCoV3's "
            "standardize='auto'); a cosine similarity with a low temperature; the learning rate. "
            "Try the defaults of the loss and the method, or a smaller alpha."
        )

    def get_config(self) -> dict[str, Any]:
        return {"patience": self.patience}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "PositivesDriftMonitor":
        return cls(**config)
