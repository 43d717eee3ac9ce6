"""Running an example script as a user does: one subprocess per run."""

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import keras

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# TensorFlow/XLA's C++ start-up lines (no env var silences them all), which the
# examples hide.
NATIVE_NOISE = re.compile(r"cuInit|oneDNN|InitializeLog|^[IWEF]\d{4} [\d:.]+ +\d+ \S+:\d+\]", re.M)


def script_path(name: str) -> str:
    """The path of examples/<name>."""
    return os.path.join(ROOT, "examples", name)


def error_lines(stderr: str) -> list:
    """The non-blank lines of stderr: all a user sees (the examples hide
    `NATIVE_NOISE` themselves, so it is not filtered here)."""
    return [line for line in stderr.strip().splitlines() if line.strip()]


def run_script(script: str, *args, timeout: float = 300, env: dict = None):
    """`python <script> --backend=<this process's backend> <args>` from the
    repository root, with the checkout on PYTHONPATH."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, script, f"--backend={keras.backend.backend()}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


def kill_after_first_epoch(script: str, *args, output_dir, timeout: float = 300, env: dict = None) -> dict:
    """Starts `run_script`'s command, SIGKILLs it as soon as the checkpoint
    of its first epoch is written (`<output_dir>/checkpoint/state.json`),
    and returns that checkpoint's state."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
    state_path = os.path.join(output_dir, "checkpoint", "state.json")
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(
            [sys.executable, script, f"--backend={keras.backend.backend()}", *args],
            stdout=output, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
        )
        deadline = time.time() + timeout
        try:
            while not os.path.exists(state_path):
                if process.poll() is not None or time.time() > deadline:
                    output.seek(0)
                    raise AssertionError(f"no checkpoint (exit {process.returncode}):\n"
                                         + output.read().decode(errors="replace")[-3000:])
                time.sleep(0.05)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
    with open(state_path) as f:
        return json.load(f)
