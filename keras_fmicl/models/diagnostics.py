"""Training diagnostics: the warning and callback for positives that drift apart."""

from __future__ import annotations

import warnings
from typing import Any

import keras

from keras_fmicl.utils.checks import check_integer
from keras_fmicl.utils.registry import PACKAGE


class PositivesDriftWarning(UserWarning):
    """Alignment rose while the mutual-information estimate fell."""


def drifting_epochs(alignment: list[float], mi_estimate: list[float]) -> int:
    """Number of latest consecutive epochs with alignment up and mi_estimate down.

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


@keras.saving.register_keras_serializable(package=PACKAGE)
class PositivesDriftMonitor(keras.callbacks.Callback):
    """Warns when the positives drift apart during `fit`.

    After each epoch it reads `alignment` and `mi_estimate` from the logs
    (both reported by `ContrastiveModel`); when alignment has risen and
    the estimate has fallen for `patience` consecutive epochs it issues one
    `PositivesDriftWarning` naming the likely cause. It never stops
    training.

    Args:
        patience: consecutive epochs of the pattern before warning, `>= 1`.
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
        self.mi_estimate: list[float] = []
        self.warned = False

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.alignment, self.mi_estimate, self.warned = [], [], False

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        if "alignment" not in logs or "mi_estimate" not in logs:
            return
        self.alignment.append(float(logs["alignment"]))
        self.mi_estimate.append(float(logs["mi_estimate"]))
        count = drifting_epochs(self.alignment, self.mi_estimate)
        if count >= self.patience and not self.warned:
            self.warned = True
            first = len(self.alignment) - 1 - count
            warnings.warn(self.message(first, count), PositivesDriftWarning, stacklevel=2)

    def message(self, first: int, count: int) -> str:
        loss = getattr(self.model, "loss", None)
        alpha = getattr(loss, "alpha", None)
        mode = getattr(self.model, "mode", None)
        setting = f" (alpha={alpha:g}, mode {mode!r})" if alpha is not None else ""
        return (
            f"For {count} epochs in a row the alignment rose "
            f"({self.alignment[first]:.3f} -> {self.alignment[-1]:.3f}) while mi_estimate fell "
            f"({self.mi_estimate[first]:.3f} -> {self.mi_estimate[-1]:.3f}): the positives are being "
            f"pushed apart. Likely cause: the negative term outweighs the positive one{setting}; "
            "an f-MICL `alpha` too large for these negatives (momentum keys and queues cannot move "
            "away from the queries). Try a smaller alpha or the method's default, or check the "
            "learning rate."
        )

    def get_config(self) -> dict[str, Any]:
        return {"patience": self.patience}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "PositivesDriftMonitor":
        return cls(**config)
