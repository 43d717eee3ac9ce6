"""Argument checks shared by the package: a clear `ValueError` naming the
argument and the value received, never a NaN or a backend stack trace."""

from __future__ import annotations

import numbers
from typing import Any


def check_positive_number(name: str, value: Any) -> float:
    """`value` as a float if it is a finite number `> 0`, else `ValueError`."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not 0 < value < float("inf")
    ):
        raise ValueError(
            f"`{name}` must be a positive number. Received: {name}={value!r}"
        )
    return float(value)


def check_integer(name: str, value: Any, minimum: int) -> int:
    """`value` as an int if it is an integer `>= minimum`, else `ValueError`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(
            f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}"
        )
    return int(value)


class ConfigEquality:
    """`get_config`-based config round trip, repr, equality and hash for the
    package's plain-Python objects (divergences, similarities)."""

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(self.get_config().items()))))
