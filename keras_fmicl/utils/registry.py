"""Name registries of the extension points (divergences, similarities, methods) and config equality."""

from __future__ import annotations

from typing import Any

import keras

PACKAGE = "keras_fmicl"
"""The package of every registered Keras class: names are `keras_fmicl>ClassName`."""


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


def registry_key(name: str) -> str:
    """A name as registries compare it: case-, dash- and space-insensitive."""
    return name.strip().lower().replace("-", "_").replace(" ", "_")


class Registry:
    """Named classes of one kind (divergences, similarities), with aliases.

    Every built-in is registered once, under the canonical `name` of its
    class and its aliases, by decorating the class; `names()`,
    `aliases()`, `canonical()` and `get()` all read that one list.

    Args:
        argument: the argument these objects are passed as (`"divergence"`),
            named in error messages.
        base: the base class every instance must derive from.
        key: the class attribute holding a class's canonical name
            (`"name"`; methods, Keras layers whose `name` is per instance,
            use `"mode"`).

    Example:

    ```python
    REGISTRY = Registry("divergence", Divergence)

    @REGISTRY.register("kullback_leibler")
    class KullbackLeibler(Divergence):
        name = "kl"

    REGISTRY.get("Kullback-Leibler")   # KullbackLeibler()
    REGISTRY.names()                   # ("kl",)
    ```
    """

    def __init__(self, argument: str, base: type, key: str = "name"):
        self.argument = argument
        self.base = base
        self.key = key
        self._classes: dict[str, type] = {}
        self._aliases: dict[str, str] = {}

    def register(self, *aliases: str):
        """Class decorator registering a class under its `key` attribute and `aliases`."""

        def decorate(cls: type) -> type:
            name = getattr(cls, self.key)
            self._classes[name] = cls
            for alias in aliases:
                self._aliases[alias] = name
            return cls

        return decorate

    def names(self) -> tuple[str, ...]:
        """The canonical names, in registration order."""
        return tuple(self._classes)

    def classes(self) -> dict[str, type]:
        """`{canonical name: class}` (a copy)."""
        return dict(self._classes)

    def aliases(self) -> dict[str, str]:
        """`{alias: canonical name}` (a copy)."""
        return dict(self._aliases)

    def canonical(self, identifier: Any) -> str | None:
        """The canonical name a string identifier stands for, or `None`."""
        if not isinstance(identifier, str):
            return None
        key = registry_key(identifier)
        key = self._aliases.get(key, key)
        return key if key in self._classes else None

    def is_builtin(self, obj: Any) -> bool:
        """Whether `obj` is an instance of exactly a registered class."""
        return type(obj) in self._classes.values()

    def get(self, identifier: Any, make=None) -> Any:
        """An instance from a name or alias, a config dict, a class or an instance.

        Args:
            identifier: the name (any case, dashes or spaces for
                underscores), a `keras.saving` config dict, a subclass of
                `base`, or an instance (returned as is).
            make: `make(cls)` builds the instance of a named class;
                defaults to `cls()`.
        """
        base_name = f"keras_fmicl.{self.base.__name__}"
        if isinstance(identifier, self.base):
            return identifier
        if isinstance(identifier, type) and issubclass(identifier, self.base):
            return identifier()
        if isinstance(identifier, dict):
            obj = keras.saving.deserialize_keras_object(identifier)
            if not isinstance(obj, self.base):
                raise ValueError(
                    f"`{self.argument}` config does not describe a keras_fmicl "
                    f"{self.base.__name__}. Received: {self.argument}={identifier!r}"
                )
            return obj
        name = self.canonical(identifier)
        if name is not None:
            cls = self._classes[name]
            return cls() if make is None else make(cls)
        names = sorted(self._classes) + sorted(self._aliases)
        raise ValueError(
            f"Unknown `{self.argument}`: expected one of "
            f"{', '.join(repr(n) for n in names)}, or a {base_name} "
            f"instance. Received: {self.argument}={identifier!r}"
        )
