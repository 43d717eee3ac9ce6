"""What the benchmark scripts share: worker processes, the machine, reports.

`benchmarks/loss_speed.py`, `benchmarks/quality.py` and
`benchmarks/throughput.py` run their measurements in subprocesses (the
Keras backend is fixed per process, so there is one worker per backend, or
one `examples/train_cifar.py` run per config), record the machine and the
versions they ran on, write JSON and print Markdown tables. This module is
those parts, and imports no Keras: the driver picks each worker's backend
before any Keras is imported.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
from typing import Iterable

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO_ROOT, "benchmarks", "results")


def log(message: str) -> None:
    """A progress line on stderr (stdout carries the report)."""
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Subprocesses: one backend (or one run) each.
# ---------------------------------------------------------------------------


def script_env(backend: str | None = None, checkout_first: bool = True) -> dict:
    """The environment of a subprocess running a script of this checkout.

    `KERAS_BACKEND` is `backend` (when given); TensorFlow's C++ logging is
    quiet unless the caller set `TF_CPP_MIN_LOG_LEVEL`. This checkout goes
    on `PYTHONPATH`, before the caller's entries (`checkout_first`: its
    keras_fmicl is the one measured) or after them (the caller's
    `PYTHONPATH` may point at another copy of keras_fmicl to compare).
    """
    env = dict(os.environ)
    if backend is not None:
        env["KERAS_BACKEND"] = backend
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    paths = [REPO_ROOT, env.get("PYTHONPATH")] if checkout_first else [env.get("PYTHONPATH"), REPO_ROOT]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


def add_worker_flags(parser) -> None:
    """The hidden flags of a script's worker mode: `--worker` and
    `--worker-output` (where its JSON goes; stdout without it)."""
    import argparse

    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-output", default=None, help=argparse.SUPPRESS)


def run_worker(
    script: str,
    backend: str,
    arguments: list[str],
    timeout: float | None = None,
    checkout_first: bool = True,
    progress_prefix: str | None = None,
) -> dict:
    """Runs `script` with `arguments` under `backend`; returns the JSON it wrote.

    The worker writes its JSON to the file named by `--worker-output`
    (appended here). Its stderr lines starting with `progress_prefix` are
    passed on to this process's stderr. A worker that fails or runs past
    `timeout` seconds yields `{"error": ...}` (with `stderr_tail`, the end of
    its stderr, when it exited).
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "result.json")
        command = [sys.executable, script, *arguments, "--worker-output", path]
        try:
            proc = subprocess.run(
                command,
                env=script_env(backend, checkout_first),
                cwd=REPO_ROOT,
                timeout=timeout,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        except subprocess.TimeoutExpired:
            return {"error": f"worker timed out after {timeout:.0f} s"}
        if progress_prefix is not None:
            for line in proc.stderr.splitlines():
                if line.startswith(progress_prefix):
                    log(line)
        if proc.returncode != 0 or not os.path.exists(path):
            return {
                "error": f"worker exited with code {proc.returncode}",
                "stderr_tail": proc.stderr[-3000:],
            }
        with open(path) as f:
            return json.load(f)


def stream_worker(
    script: str,
    backend: str,
    arguments: list[str],
    timeout: float,
    progress_prefix: str = "[",
    log_path: str | None = None,
) -> dict:
    """Runs `script` with `arguments` under `backend`, showing its progress live.

    Like `run_worker`, but for long workers on a machine lent for minutes:
    the worker's stderr lines starting with `progress_prefix` are passed on
    as they come, all of its stderr is appended to `log_path` (when given),
    and a worker that fails or runs past `timeout` seconds is killed and
    yields what it had written so far to `--worker-output` (a worker that
    rewrites its JSON after each measurement loses nothing), with `error`
    and `stderr_tail` added; `{"error": ...}` alone when it wrote nothing.
    """
    import collections
    import threading

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "result.json")
        command = [sys.executable, script, *arguments, "--worker-output", path]
        tail: collections.deque = collections.deque(maxlen=60)
        log_file = open(log_path, "a") if log_path else None
        try:
            proc = subprocess.Popen(
                command,
                env=script_env(backend),
                cwd=REPO_ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
            )
            timer = threading.Timer(timeout, proc.kill)
            timer.start()
            try:
                for line in proc.stderr:
                    tail.append(line)
                    if log_file is not None:
                        log_file.write(line)
                        log_file.flush()
                    if line.startswith(progress_prefix):
                        log(line.rstrip())
                returncode = proc.wait()
                timed_out = not timer.is_alive() and returncode != 0
            finally:
                timer.cancel()
        finally:
            if log_file is not None:
                log_file.close()
        result = {}
        if os.path.exists(path):
            with open(path) as f:
                try:
                    result = json.load(f)
                except json.JSONDecodeError:  # killed while writing
                    result = {}
        if returncode != 0:
            result["error"] = (
                f"worker timed out after {timeout:.0f} s"
                if timed_out
                else f"worker exited with code {returncode}"
            )
            result["stderr_tail"] = "".join(tail)[-3000:]
        return result


# ---------------------------------------------------------------------------
# The machine, the versions and the commit.
# ---------------------------------------------------------------------------


def package_version(package: str) -> str | None:
    """The installed version of a distribution, or None."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict:
    """The versions of Keras, keras-fmicl, the frameworks and Python."""
    packages = ("keras", "keras-fmicl", "keras-cv", "numpy", "tensorflow", "jax", "jaxlib", "torch")
    info = {name: package_version(name) for name in packages}
    info["tensorflow"] = info["tensorflow"] or package_version("tensorflow-cpu")
    info["python"] = platform.python_version()
    return info


def cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def total_memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def loadavg() -> list[float] | None:
    """The 1, 5 and 15-minute load averages (None where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def machine_info(**renamed: str) -> dict:
    """The machine: CPUs (count, affinity, model), memory, platform, Python
    and load average.

    With keyword arguments, only the entries they name, under their keys:
    `machine_info(cpus="cpu_count", platform="platform")`.
    """
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    info = {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "cpu_model": cpu_model(),
        "memory_bytes": total_memory_bytes(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg": loadavg(),
    }
    if renamed:
        return {key: info[entry] for key, entry in renamed.items()}
    return info


def git_commit() -> str | None:
    """HEAD of this checkout, with `-dirty` when tracked files changed."""
    try:
        out = subprocess.run(
            ["git", "-C", REPO_ROOT, "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        dirty = subprocess.run(
            ["git", "-C", REPO_ROOT, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


# ---------------------------------------------------------------------------
# Reports: JSON and Markdown tables.
# ---------------------------------------------------------------------------


def write_json(data: dict, path: str | None, indent: int = 2) -> None:
    """Writes `data` to `path` (creating its folder); prints it when `path` is None."""
    text = json.dumps(data, indent=indent)
    if path is None:
        print(text)
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text + "\n")


def table_row(cells: Iterable) -> str:
    """`| a | b |`: one row of a Markdown table."""
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def table_rule(align: str) -> str:
    """The line under a Markdown table's header: one column per letter of
    `align`, `l` (left), `r` (right) or `c` (centred)."""
    marks = {"l": "---", "r": "---:", "c": ":---:"}
    return "|" + "|".join(marks[a] for a in align) + "|"
