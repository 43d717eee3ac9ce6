"""The package's layout rules (issue 25): folders by role, imports only downward.

Read from the source with `ast` (no import): every file of `keras_fmicl/`
lives in a folder (except `__init__.py` and `version.py`), a folder imports
only the folders below it, no file imports a private (underscore) name of
another file or an old flat-layout path, no file is over 800 lines and no
function over 120.
"""

import ast
import pathlib

import pytest

from tests.helpers import backend_independent

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "keras_fmicl"
BELOW = {
    "utils": set(),
    "losses": {"utils"},
    "data": {"utils"},
    "layers": {"utils"},
    "evaluation": {"utils", "losses", "data"},
    "methods": {"utils", "losses", "layers"},
    "models": {"utils", "losses", "layers", "methods"},
}
TOP_LEVEL_FILES = {"__init__.py", "version.py"}


def package_files():
    return sorted(PACKAGE.rglob("*.py"))


def imports_of(path):
    """[(line, imported module, imported names)] of a file's package imports."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "keras_fmicl":
            found.append((node.lineno, node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "keras_fmicl":
                    found.append((node.lineno, alias.name, []))
    return found


def target_folder(module, names):
    parts = module.split(".")
    if len(parts) >= 2:
        return parts[1]
    return names[0] if len(names) == 1 else None


@backend_independent
def test_every_file_lives_in_a_folder_of_the_known_roles():
    for path in package_files():
        relative = path.relative_to(PACKAGE)
        if len(relative.parts) == 1:
            assert relative.name in TOP_LEVEL_FILES, relative
        else:
            assert len(relative.parts) == 2 and relative.parts[0] in BELOW, relative


@backend_independent
def test_imports_only_go_down_and_never_use_an_old_path():
    wrong = []
    for path in package_files():
        relative = path.relative_to(PACKAGE)
        if len(relative.parts) == 1:
            continue
        folder = relative.parts[0]
        for line, module, names in imports_of(path):
            target = target_folder(module, names)
            if target not in BELOW:
                wrong.append(f"{relative}:{line} imports {module} {names} (not a folder)")
            elif target != folder and target not in BELOW[folder]:
                wrong.append(f"{relative}:{line}: {folder} imports {target}, which is not below it")
            elif module == f"keras_fmicl.{folder}" and relative.name != "__init__.py" and any(
                not (PACKAGE / folder / f"{name}.py").exists() for name in names
            ):
                # a file of a folder imports from the defining module, never its
                # folder's __init__ (partly initialised while the folder loads)
                wrong.append(f"{relative}:{line} imports {names} from its own folder's __init__")
    assert not wrong, "\n".join(wrong)


@backend_independent
def test_no_private_name_crosses_a_file():
    crossing = []
    for path in package_files():
        for line, module, names in imports_of(path):
            crossing += [f"{path.relative_to(PACKAGE)}:{line} {module}.{name}" for name in names if name.startswith("_") and not name.startswith("__")]
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name) and node.value.id not in {"self", "cls", "super"}
                and node.value.id in _imported_modules(path)
            ):
                crossing.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.value.id}.{node.attr}")
    assert not crossing, "\n".join(crossing)


def _imported_modules(path):
    return {
        name for _, module, names in imports_of(path) for name in names
        if module.count(".") == 1 and module.split(".")[1] in BELOW
    }


@backend_independent
@pytest.mark.parametrize("limit", [800])
def test_no_file_over_800_lines_and_no_function_over_120(limit):
    long_files = [f"{p.relative_to(PACKAGE)} ({n})" for p in package_files() if (n := len(p.read_text().splitlines())) > limit]
    long_functions = [
        f"{path.relative_to(PACKAGE)}:{node.name} ({node.end_lineno - node.lineno + 1})"
        for path in package_files()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 120
    ]
    assert not long_files and not long_functions, (long_files, long_functions)
