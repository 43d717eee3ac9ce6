"""Schedules of the momentum-encoder methods."""

from __future__ import annotations

import math

import keras
from keras import ops

from keras_fmicl.utils.checks import check_positive_integer
from keras_fmicl.utils.checks import is_real
from keras_fmicl.utils.registry import PACKAGE


@keras.saving.register_keras_serializable(package=PACKAGE)
class CosineMomentum(keras.optimizers.schedules.LearningRateSchedule):
    """Momentum rising from `initial_momentum` to `final_momentum` (cosine).

    Args:
        initial_momentum: momentum at step 0, in `[0, 1)`. E.g. 0.99.
        decay_steps: number of steps over which it rises (usually the total
            number of training steps, `epochs * steps_per_epoch`; `fit` on
            arrays runs `ceil(len(x) / batch_size)` steps per epoch).
        final_momentum: momentum from `decay_steps` on. Defaults to 1.0.

    Example:

    ```python
    steps = epochs * math.ceil(len(x_train) / batch_size)  # the last batch too
    model = keras_fmicl.ContrastiveModel(
        encoder, projector=head,
        method=keras_fmicl.methods.MoCoV2(
            momentum=keras_fmicl.CosineMomentum(0.99, steps), queue_size=4096))
    ```
    """

    def __init__(
        self,
        initial_momentum: float,
        decay_steps: int,
        final_momentum: float = 1.0,
        name: str = "cosine_momentum",
    ):
        for arg, value in (("initial_momentum", initial_momentum), ("final_momentum", final_momentum)):
            if not is_real(value) or not 0 <= value <= 1:
                raise ValueError(
                    f"`{arg}` must be a number in [0, 1]. Received: {arg}={value!r}"
                )
        if initial_momentum == 1:
            raise ValueError(
                "`initial_momentum` must be below 1 (at 1 the key encoder never "
                f"learns). Received: initial_momentum={initial_momentum!r}"
            )
        self.initial_momentum = float(initial_momentum)
        self.decay_steps = check_positive_integer("decay_steps", decay_steps)
        self.final_momentum = float(final_momentum)
        self.name = name

    def __call__(self, step):
        step = ops.cast(step, "float32")
        progress = ops.minimum(step / float(self.decay_steps), 1.0)
        cosine = 0.5 * (ops.cos(math.pi * progress) + 1.0)
        return self.final_momentum - (self.final_momentum - self.initial_momentum) * cosine

    def get_config(self):
        return {
            "initial_momentum": self.initial_momentum,
            "decay_steps": self.decay_steps,
            "final_momentum": self.final_momentum,
            "name": self.name,
        }
