"""What the example scripts share: flag errors, the backend choice, quiet
framework start-up, the output folder and the exit-code protocol.

`examples/train_cifar.py` and `examples/train_sentences.py` import this
module (their own folder is put on `sys.path` first, so it is found however
the script is started). It imports neither Keras nor a framework.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from typing import Callable, Iterator


class FlagError(ValueError):
    """A bad flag value: reported as one sentence."""


def select_backend(backend: str | None, debug: bool) -> str:
    """Sets KERAS_BACKEND from `--backend` (else the environment, else TF).

    Must run before Keras is imported: the backend is fixed per process.
    """
    backend = backend or os.environ.get("KERAS_BACKEND", "tensorflow")
    if "keras" in sys.modules and os.environ.get("KERAS_BACKEND", backend) != backend:
        raise FlagError("--backend must be chosen before Keras is imported.")
    os.environ["KERAS_BACKEND"] = backend
    if not debug:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return backend


# TensorFlow/XLA's native start-up lines: glog-style "I0000 00:00:..." lines,
# absl's notice that they precede InitializeLog, and the oneDNN notice.
NATIVE_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IWEF]\d{4} [\d:.]+ +\d+ \S+:\d+\] .*"
    r"|.*oneDNN custom operations are on.*)$"
)


@contextlib.contextmanager
def quiet_native_logging(debug: bool = False) -> Iterator[None]:
    """Hides the C++ start-up logging of TensorFlow/XLA (unless `debug`).

    Those lines go straight to file descriptor 2 before any Python logging
    is set up, so no environment variable silences all of them: fd 2 is
    captured meanwhile, and everything else written there (Python warnings,
    errors) is passed on.
    """
    if debug:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode("utf-8", "replace").splitlines()
            kept = [line for line in lines if line.strip() and not NATIVE_NOISE.match(line)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")
                sys.stderr.flush()


def make_output_dir(path: str) -> list[str]:
    """Creates `path`; returns the folders this call created (deepest last)."""
    created = []
    head = os.path.abspath(path)
    while head and not os.path.exists(head):
        created.append(head)
        head = os.path.dirname(head)
    os.makedirs(path, exist_ok=True)
    return created[::-1]


def remove_if_empty(created: list[str]) -> None:
    """Removes the folders of `make_output_dir` that are still empty."""
    for folder in reversed(created):
        try:
            os.rmdir(folder)  # only succeeds on an empty folder
        except OSError:
            break


def run_in_output_dir(output_dir: str, body: Callable[[str], object]):
    """`body(output_dir)` in a new folder; a failed run leaves no empty folder."""
    created = make_output_dir(output_dir)
    try:
        return body(output_dir)
    except BaseException:
        remove_if_empty(created)
        raise


def exit_code(script: str, argv: list[str], run: Callable[[], object]) -> int:
    """Runs `run()` as `main` does: 0, or 2 with one sentence on stderr.

    Errors a user can fix (a bad flag, a data set that cannot be loaded, a
    ValueError of the library) are printed as `<script>: error: ...`;
    anything else propagates with its traceback.
    """
    if len(argv) > 1:
        print(f"{script}: error: unexpected arguments {argv[1:]}; flags look like --name=value.",
              file=sys.stderr)
        return 2
    try:
        run()
    except FlagError as error:  # a ValueError too, but caught first: bad flags
        # are reported before Keras is imported, and the branch below imports it
        print(f"{script}: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        from keras_fmicl.data import DatasetNotAvailableError

        if isinstance(error, (DatasetNotAvailableError, ValueError)):
            print(f"{script}: error: {error}", file=sys.stderr)
            return 2
        raise
    return 0
