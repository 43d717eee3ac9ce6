"""Deprecated module paths: the modules of the flat layout, forwarded to where their names live now."""

from __future__ import annotations

import sys
import types
import warnings


class DeprecatedModule(types.ModuleType):
    """A module path that moved: reading a name forwards to its new module.

    Reading `old.name` warns once per name (`DeprecationWarning`, naming the
    new path) and returns the object of the new module; setting or deleting
    an attribute forwards too, so `monkeypatch.setattr(old, name, value)`
    patches the module that reads it.

    Args:
        name: the old dotted module name, e.g. `"keras_fmicl.contrast"`.
        modules: the new modules, searched in order for each name.
    """

    def __init__(self, name: str, modules: list[types.ModuleType]):
        super().__init__(name)
        object.__setattr__(self, "_modules", tuple(modules))
        object.__setattr__(self, "_warned", set())
        object.__setattr__(self, "__doc__", f"Deprecated: moved to {self._targets()}.")

    def _targets(self) -> str:
        return ", ".join(module.__name__ for module in self._modules)

    def _owner(self, attribute: str) -> types.ModuleType | None:
        for module in self._modules:
            if hasattr(module, attribute):
                return module
        return None

    def __getattr__(self, attribute: str):
        owner = self._owner(attribute)
        if owner is None or attribute.startswith("__"):
            raise AttributeError(f"module {self.__name__!r} (moved to {self._targets()}) has no attribute {attribute!r}")
        if attribute not in self._warned:
            self._warned.add(attribute)
            warnings.warn(
                f"`{self.__name__}.{attribute}` moved to `{owner.__name__}.{attribute}`; "
                f"the old path goes away in the next release.",
                DeprecationWarning,
                stacklevel=2,
            )
        return getattr(owner, attribute)

    def __setattr__(self, attribute: str, value) -> None:
        owner = self._owner(attribute)
        if owner is None:
            raise AttributeError(f"module {self.__name__!r} (moved to {self._targets()}) has no attribute {attribute!r}")
        setattr(owner, attribute, value)

    def __delattr__(self, attribute: str) -> None:
        owner = self._owner(attribute)
        if owner is None:
            raise AttributeError(attribute)
        delattr(owner, attribute)

    def __dir__(self) -> list[str]:
        return sorted({name for module in self._modules for name in dir(module) if not name.startswith("_")})


def alias_module(package: types.ModuleType, old_name: str, modules: list[types.ModuleType]) -> DeprecatedModule:
    """Installs `package.<old_name>` (and `sys.modules`) as a `DeprecatedModule`.

    Example:

    ```python
    alias_module(keras_fmicl, "contrast", [keras_fmicl.losses.pairs, keras_fmicl.losses.pair_sums])
    ```
    """
    full_name = f"{package.__name__}.{old_name}"
    alias = DeprecatedModule(full_name, modules)
    sys.modules[full_name] = alias
    setattr(package, old_name, alias)
    return alias
