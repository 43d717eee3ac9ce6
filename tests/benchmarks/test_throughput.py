"""Smoke test of benchmarks/throughput.py at tiny size (no timing asserts)."""

import json
import os
import subprocess
import sys

import keras

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_quick_run_writes_the_report(tmp_path):
    output = tmp_path / "throughput.json"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "throughput.py"), "--quick",
         f"--backends={keras.backend.backend()}", f"--output={output}"],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    (entry,) = report["results"]
    assert entry["backend"] == keras.backend.backend()
    for name in ["fit", "loop"] + (["keras_io"] if entry["backend"] == "tensorflow" else []):
        assert entry[name]["seconds"] > 0 and entry[name]["images_per_second"] > 0
    assert entry["fit_over_loop"] > 0
    assert entry["method"] == "simclr"  # fit trains keras_fmicl.methods.SimCLR(), as the loops
    assert "| backend | fit (img/s)" in result.stdout


def test_gpu_script_parses():
    """benchmarks/gpu.sh is run on lent GPU machines; here: syntax only
    (SIZE=tiny bash benchmarks/gpu.sh runs it on a CPU in ~3 minutes)."""
    script = os.path.join(ROOT, "benchmarks", "gpu.sh")
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    assert os.access(script, os.X_OK)
