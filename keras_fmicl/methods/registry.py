"""`get`: a method from an instance, a mode name or a config."""

from __future__ import annotations

from typing import Any

import keras

from keras_fmicl.methods.method import METHODS
from keras_fmicl.methods.method import Method


def get(identifier: Any) -> Method:
    """A method from a `Method`, a mode name or a serialized config.

    Args:
        identifier: a `Method`; `"simclr"`, `"moco"` (MoCo v2 with its
            defaults; `"mocov2"` too), `"mocov3"`, `"simcse"` or
            `"supervised_simcse"` (any case, dashes for underscores; one
            registry, `METHODS`); or a config dict.

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
        mode = METHODS.canonical(identifier)
        if mode is not None:
            return METHODS.classes()[mode]()
    raise ValueError(
        "`method` must be a keras_fmicl.methods.Method such as "
        "keras_fmicl.methods.SimCLR(), MoCoV2(momentum=..., queue_size=...) or "
        "MoCoV3(momentum=..., predictor=...), or one of 'simclr', 'moco', "
        f"'mocov3', 'simcse', 'supervised_simcse'. Received: method={identifier!r}"
    )
