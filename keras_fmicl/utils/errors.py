"""The errors raised when a data set or an optional dependency is not available."""

from __future__ import annotations


class DatasetNotAvailableError(RuntimeError):
    """A dataset cannot be loaded here; the message says how to get it."""


def shorten(err: BaseException, limit: int = 200) -> str:
    text = str(err).strip().splitlines()
    text = text[0] if text else ""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


# Import names whose pip package has another name.
PIP_NAMES = {"sklearn": "scikit-learn", "PIL": "pillow", "yaml": "pyyaml"}


class MissingDependencyError(DatasetNotAvailableError, ImportError):
    """A dataset needs a Python package that is not installed.

    Both a `DatasetNotAvailableError` and an `ImportError`; the message names
    the package and the `pip install` command.
    """


def missing_dependency(name: str, err: ImportError) -> MissingDependencyError:
    module = (getattr(err, "name", None) or "").split(".")[0]
    if not module:
        module = "tensorflow-datasets"
    package = PIP_NAMES.get(module, module)
    return MissingDependencyError(
        f"Loading {name!r} with tensorflow-datasets needs the Python package "
        f"`{package}`, which is not installed: `pip install {package}` (or "
        f'`pip install "keras-fmicl[tensorflow]"`, which declares it). '
        f"This is not a network problem ({shorten(err)})."
    )
