"""`get`: a method from an instance, a mode name or a config."""

from __future__ import annotations

from typing import Any

import keras

from keras_fmicl.methods.method import Method
from keras_fmicl.methods.momentum import MoCoV2
from keras_fmicl.methods.momentum import MoCoV3
from keras_fmicl.methods.simclr import SimCLR
from keras_fmicl.methods.simcse import SimCSE
from keras_fmicl.methods.simcse import SupervisedSimCSE


def get(identifier: Any) -> Method:
    """A method from a `Method`, a mode name or a serialized config.

    Args:
        identifier: a `Method`; `"simclr"`, `"moco"` (MoCo v2 with its
            defaults), `"mocov3"`, `"simcse"` or `"supervised_simcse"`; or a
            config dict.

    Example:

    ```python
    keras_fmicl.methods.get("simclr")  # SimCLR()
    ```
    """
    if isinstance(identifier, Method):
        return identifier
    if isinstance(identifier, dict):
        method = keras.saving.deserialize_keras_object(identifier)
        if isinstance(method, Method):
            return method
    if isinstance(identifier, str):
        by_mode = {cls.mode: cls for cls in (SimCLR, SimCSE, SupervisedSimCSE, MoCoV2, MoCoV3)}
        key = identifier.strip().lower()
        if key in by_mode:
            return by_mode[key]()
    raise ValueError(
        "`method` must be a keras_fmicl.methods.Method such as "
        "keras_fmicl.methods.SimCLR(), MoCoV2(momentum=..., queue_size=...) or "
        "MoCoV3(momentum=..., predictor=...), or one of 'simclr', 'moco', "
        f"'mocov3', 'simcse', 'supervised_simcse'. Received: method={identifier!r}"
    )
