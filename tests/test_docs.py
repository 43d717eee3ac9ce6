"""The documentation: public docstrings, the API pages, and the guides' code.

* Every public class and function that `keras_fmicl` and its namespaces
  `keras_fmicl.methods`, `.data`, `.evaluation` and `.losses` export (names
  without a leading underscore, defined in the package) has a docstring:
  the API reference of the site (`mkdocs.yml`, `docs/api/`) is generated
  from them, and an object without one would be a blank entry.
* Every such name defined in its namespace is rendered by a `::: identifier`
  line of `docs/api/*.md`, and every identifier there resolves (the strict
  site build checks the same statically: this test needs no mkdocs).
* Every ```python block of the guides in `docs/` runs as printed, the way
  `tests/test_readme.py` runs the README's (fresh namespace, temporary
  directory, `EPOCHS = 1`; `<!-- not-run: reason -->` skips a block that
  needs a download or a GPU).
* Code in the README and the guides reaches the package only through its
  stable public paths (`keras_fmicl.<Name>` and the namespaces below).
"""

import glob
import importlib
import inspect
import os
import re

import pytest

import keras_fmicl
from tests.test_readme import README
from tests.test_readme import ROOT
from tests.test_readme import check_not_run_markers
from tests.test_readme import python_blocks
from tests.test_readme import run_python_block

DOCS = os.path.join(ROOT, "docs")
API_PAGES = sorted(glob.glob(os.path.join(DOCS, "api", "*.md")))
GUIDES = sorted(
    path
    for path in glob.glob(os.path.join(DOCS, "**", "*.md"), recursive=True)
    if os.path.dirname(path) != os.path.join(DOCS, "api")
)
NAMESPACES = (
    "keras_fmicl",
    "keras_fmicl.methods",
    "keras_fmicl.data",
    "keras_fmicl.evaluation",
    "keras_fmicl.losses",
    "keras_fmicl.layers",
    "keras_fmicl.models",
)
# The namespaces that documentation code may reach into (`keras_fmicl.data.load`).
STABLE_NAMESPACES = frozenset(
    {"losses", "layers", "methods", "models", "data", "evaluation", "utils"}
)
IDENTIFIER = re.compile(r"^:::\s+(?P<identifier>[\w.]+)\s*$", re.M)


def _relative(path):
    return os.path.relpath(path, ROOT)


def _is_defined_in_package(obj):
    return (inspect.isclass(obj) or inspect.isfunction(obj)) and (
        getattr(obj, "__module__", None) or ""
    ).split(".")[0] == "keras_fmicl"


def _exported(namespace, own_only=False):
    """{name: object}: the public classes and functions `namespace` exports.

    `own_only` keeps those defined in the namespace itself (its module, or
    the modules of its package), not the helpers it imports from elsewhere.
    """
    module = importlib.import_module(namespace)
    names = {}
    for name in dir(module):
        if name.startswith("_"):
            continue
        obj = getattr(module, name)
        if not _is_defined_in_package(obj):
            continue
        home = obj.__module__
        if own_only and namespace != "keras_fmicl" and not (
            home == namespace or home.startswith(namespace + ".")
        ):
            continue
        names[name] = obj
    return names


def _own_docstring(obj):
    # a class's own docstring, not one inherited from a base class
    doc = vars(obj).get("__doc__") if inspect.isclass(obj) else obj.__doc__
    return (doc or "").strip()


def _resolve(identifier):
    """The object a `::: a.b.C` or `a.b.C.method` identifier names."""
    parts = identifier.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            obj = getattr(obj, attribute)
        return obj
    raise ImportError(identifier)


def _api_identifiers():
    identifiers = []
    for path in API_PAGES:
        with open(path, encoding="utf-8") as f:
            identifiers += [(path, m.group("identifier")) for m in IDENTIFIER.finditer(f.read())]
    return identifiers


# ------------------------------------------------------------ docstrings


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_every_public_name_has_a_docstring(namespace):
    exported = _exported(namespace)
    assert exported, namespace
    missing = sorted(
        f"{namespace}.{name} ({obj.__module__})"
        for name, obj in exported.items()
        if not _own_docstring(obj)
    )
    assert not missing, f"public names without a docstring: {missing}"


def test_the_docstring_check_sees_a_missing_docstring():
    class Documented:
        """A docstring."""

    class Inherits(Documented):
        pass

    def bare():
        pass

    assert _own_docstring(Documented) == "A docstring."
    assert _own_docstring(Inherits) == ""
    assert _own_docstring(bare) == ""


# ------------------------------------------------------------- API pages


def test_every_api_identifier_resolves():
    identifiers = _api_identifiers()
    assert len(identifiers) >= 40
    broken = []
    for path, identifier in identifiers:
        try:
            _resolve(identifier)
        except (ImportError, AttributeError) as err:
            broken.append(f"{_relative(path)}: {identifier} ({err})")
    assert not broken, broken


def test_the_api_pages_render_every_public_name():
    rendered = set()
    for _, identifier in _api_identifiers():
        try:
            rendered.add(id(_resolve(identifier)))
        except (ImportError, AttributeError):
            pass  # reported by test_every_api_identifier_resolves
    missing = sorted(
        f"{namespace}.{name}"
        for namespace in NAMESPACES
        for name, obj in _exported(namespace, own_only=True).items()
        if id(obj) not in rendered
    )
    assert not missing, f"add a `::: identifier` line to docs/api/*.md for: {missing}"


# ---------------------------------------------------------------- guides


GUIDE_BLOCKS = [
    (_relative(path), line, code, reason) for path in GUIDES for line, code, reason in python_blocks(path)
]


def test_the_guides_exist_and_have_python_blocks():
    names = {os.path.basename(path) for path in GUIDES}
    for guide in (
        "index.md",
        "getting-started.md",
        "vision-methods.md",
        "momentum.md",
        "sentence-embeddings.md",
        "extending.md",
        "distributed.md",
        "evaluation.md",
        "results.md",
        "fmicl-math.md",
    ):
        assert guide in names, guide
    assert sum(reason is None for *_, reason in GUIDE_BLOCKS) >= 6
    for path in GUIDES:
        with open(path, encoding="utf-8") as f:
            check_not_run_markers(f.read())


@pytest.mark.parametrize(
    "label, line, code, reason",
    GUIDE_BLOCKS,
    ids=[f"{label.split(os.sep)[-1]}:line_{line}" for label, line, *_ in GUIDE_BLOCKS],
)
def test_guide_python_block_runs(label, line, code, reason, tmp_path, monkeypatch):
    run_python_block(label, line, code, reason, tmp_path, monkeypatch)


@pytest.mark.parametrize("path", [README] + GUIDES, ids=lambda path: _relative(path))
def test_documentation_code_uses_the_stable_public_paths(path):
    """`keras_fmicl.<namespace>.<name>` only through the stable namespaces."""
    wrong = []
    for line, code, reason in python_blocks(path):
        for match in re.finditer(r"\bkeras_fmicl\.([a-z_]\w*)\.", code):
            namespace = match.group(1)
            if namespace not in STABLE_NAMESPACES:
                wrong.append(f"line {line}: keras_fmicl.{namespace}.")
        for match in re.finditer(r"\bkeras_fmicl\.(\w+)\b(?!\.)", code):
            name = match.group(1)  # a top-level name must be one keras_fmicl exports
            assert hasattr(keras_fmicl, name), f"{_relative(path)} line {line}: keras_fmicl.{name}"
    assert not wrong, wrong
