"""The README's code runs as printed (issue 13 item 13).

Every ```python block of README.md runs on its own, in a fresh namespace,
under the current backend, in a temporary working directory. The training
blocks set `EPOCHS = <n>` on a line of their own; the test runs them with
`EPOCHS = 1`. A block that needs a download (or a GPU) is preceded by an
HTML comment `<!-- not-run: reason -->` and is skipped with that reason:
those blocks, and only those, show up as skipped (`pytest -ra` lists them).

`markdown_blocks`, `check_not_run_markers` and `run_python_block` are
shared with `tests/test_docs.py`, which runs the blocks of the guides in
`docs/` the same way.
"""

import os
import re

import keras
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(?P<reason>.+?)\s*-->$")
EPOCHS = re.compile(r"^EPOCHS = \d+", re.M)


def markdown_blocks(path=README):
    """[(language, first code line number, code, not-run reason or None)]."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    blocks, index = [], 0
    while index < len(lines):
        match = re.match(r"^```(\w*)\s*$", lines[index])
        if not match:
            index += 1
            continue
        start = index + 1
        end = start
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        before = [line.strip() for line in lines[:index] if line.strip()]
        marker = NOT_RUN.match(before[-1]) if before else None
        blocks.append(
            (match.group(1), start + 1, "\n".join(lines[start:end]), marker and marker.group("reason"))
        )
        index = end + 1
    return blocks


readme_blocks = markdown_blocks  # the name this file used before the guides shared it


def python_blocks(path):
    """The ```python blocks of `path`: [(line, code, not-run reason or None)]."""
    return [block[1:] for block in markdown_blocks(path) if block[0] == "python"]


def check_not_run_markers(text):
    """A not-run marker must be well formed and sit right before a python block."""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("<!--") and "not-run" in line:
            assert NOT_RUN.match(line.strip()), line
            assert lines[index + 1].startswith("```python"), line


def run_python_block(label, line, code, reason, tmp_path, monkeypatch):
    """Runs one block as printed (with `EPOCHS = 1`), or skips a not-run one."""
    if reason:
        pytest.skip(f"{label} line {line}: not-run ({reason})")
    monkeypatch.chdir(tmp_path)  # blocks may write files (TensorBoard logs, ...)
    code = EPOCHS.sub("EPOCHS = 1", code)
    namespace = {"__name__": "__readme__"}
    exec(compile(code, f"{label}, block at line {line}", "exec"), namespace)
    keras.backend.clear_session()


PYTHON_BLOCKS = python_blocks(README)


def test_the_readme_has_python_blocks_and_its_two_commands():
    # the tour: the loss alone, ContrastiveModel with a method, sentence embeddings
    assert len(PYTHON_BLOCKS) >= 3
    assert sum(reason is None for _, _, reason in PYTHON_BLOCKS) >= 2
    with open(README, encoding="utf-8") as f:
        text = f.read()
    for marker in ("<!-- main-command -->", "<!-- test-command -->"):
        after = text.split(marker, 1)[1].lstrip("\n")
        assert after.startswith("```sh\n"), marker  # the two commands stay sh blocks
    check_not_run_markers(text)


@pytest.mark.parametrize(
    "line, code, reason",
    PYTHON_BLOCKS,
    ids=[f"line_{block[0]}" for block in PYTHON_BLOCKS],
)
def test_readme_python_block_runs(line, code, reason, tmp_path, monkeypatch):
    run_python_block("README.md", line, code, reason, tmp_path, monkeypatch)


def test_the_block_parser_sees_markers(tmp_path):
    """The parser itself: marked blocks carry their reason, others None."""
    path = tmp_path / "README.md"
    path.write_text(
        "text\n\n```python\nx = 1\n```\n\n<!-- not-run: needs a GPU -->\n```python\ny = 2\n```\n"
        "```sh\nls\n```\n",
        encoding="utf-8",
    )
    assert markdown_blocks(str(path)) == [
        ("python", 4, "x = 1", None),
        ("python", 9, "y = 2", "needs a GPU"),
        ("sh", 12, "ls", None),
    ]
    assert python_blocks(str(path)) == [(4, "x = 1", None), (9, "y = 2", "needs a GPU")]
