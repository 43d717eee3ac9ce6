"""Smoke test of benchmarks/device_benchmark.py (structure only, no timing asserts).

One `--smoke` run of the driver on JAX (it starts its own worker process,
whatever the backend of this session: backend-independent): the ViT of
depth 1 in both dtype policies (the ResNets take the same code path and
cost more to compile), the losses at N = 16, and the quality part on a
tiny Fashion-MNIST-shaped .npz written here.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import device_benchmark
from tests.helpers import backend_independent

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STATUSES = {"ok", "partial", "skipped", "unavailable", "error"}
SMOKE_BACKEND = "jax"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("device")
    rng = np.random.default_rng(0)
    data = tmp / "fashion_mnist.npz"
    np.savez_compressed(
        data,
        train_x=rng.integers(0, 256, (64, 28, 28, 1), dtype=np.uint8),
        train_y=np.arange(64) % 10,
        test_x=rng.integers(0, 256, (32, 28, 28, 1), dtype=np.uint8),
        test_y=np.arange(32) % 10,
    )
    out = tmp / "out"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("OUT", None)
    proc = subprocess.run(
        [sys.executable, device_benchmark.SCRIPT, "--smoke", f"--backends={SMOKE_BACKEND}",
         "--quality-backend", SMOKE_BACKEND, "--models=vit_s16_224", "--loss-sizes=16",
         "--budget-seconds=1200",  # a busy machine must not turn rows into "skipped"
         f"--data={data}", f"--output-dir={out}"],
        capture_output=True, text=True, timeout=1500, env=env, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "device_benchmark.json").read_text())
    return report, (out / "device_benchmark.md").read_text(), proc.stdout


@backend_independent
def test_smoke_report_schema(smoke):
    report, _, _ = smoke
    assert report["benchmark"] == "device" and report["settings"]["smoke"] is True
    for key in ("date", "commit", "machine", "versions", "availability", "workers", "total_seconds"):
        assert key in report
    for part in ("fit", "loss", "quality"):
        assert report[part], part
        for record in report[part]:
            assert record["status"] in STATUSES, record
            assert record["status"] == "ok" or record.get("reason"), record
    ours = [r for r in report["fit"] if r["backend"] == SMOKE_BACKEND]
    assert {(r["model"], r["dtype"]) for r in ours} == {
        ("vit_s16_224", d) for d in device_benchmark.DTYPES
    }
    for record in ours:
        assert record["status"] == "ok", record
        assert record["images_per_second"] > 0 and record["step_ms"] > 0
        assert record["steps"] == 2 and record["warmup"] == 1
        assert record["encoder_parameters"] > 0
        assert record["encoder_kwargs"]["depth"] == 1 and record["image_shape"] == [32, 32, 3]
    losses = {r["config"]: r for r in report["loss"] if r["backend"] == SMOKE_BACKEND}
    assert set(losses) == set(device_benchmark.LOSS_CONFIGS)
    for config in ("fmicl/js/gaussian", "info_nce", "matmul_floor"):
        assert losses[config]["status"] == "ok" and losses[config]["n"] == 16
        assert losses[config]["median_ms"] > 0
    quality = [r for r in report["quality"] if r["backend"] == SMOKE_BACKEND]
    assert [r["loss"] for r in quality] == list(device_benchmark.QUALITY_LOSSES)
    for record in quality:
        assert record["status"] == "ok", record
        assert record["epochs_done"] == 1 and 0.0 <= record["knn_top1"] <= 1.0
        assert record["train_images"] == 64 and record["test_images"] == 32


@backend_independent
def test_unavailable_backend_is_a_row_not_a_crash(monkeypatch):
    real = device_benchmark.importlib.util.find_spec
    monkeypatch.setattr(
        device_benchmark.importlib.util, "find_spec", lambda name: None if name == "torch" else real(name)
    )
    reasons = device_benchmark.availability(["jax", "torch"])
    assert reasons == {"jax": None, "torch": "torch is not installed"}
    rows = device_benchmark.unavailable_rows(reasons)
    for part in ("fit", "loss", "quality"):
        assert rows[part] == [{"backend": "torch", "status": "unavailable", "reason": "torch is not installed"}]
    table = "\n".join(device_benchmark.fit_table(rows["fit"]))
    assert "| torch | – |" in table and "unavailable (torch is not installed)" in table


@backend_independent
def test_smoke_markdown_tables(smoke):
    report, text, stdout = smoke
    assert text in stdout
    assert "SMOKE" in text
    assert "| backend | model | input | batch | dtype | images/s |" in text
    assert f"| {SMOKE_BACKEND} | vit_s16_224 | 32x32x3 | 4 | mixed_bfloat16 |" in text
    assert "| backend | mode | loss | N | median ms (min) | ÷ SimCLR | ÷ floor | status |" in text
    assert "| backend | loss | epochs (done) |" in text
    assert f"| {SMOKE_BACKEND} | kl | 1 (1) | 64 / 32 |" in text
    assert "87.1 min" in text  # the reference it is compared with


@backend_independent
def test_missing_data_and_budget_give_clear_rows(tmp_path):
    """The quality part without its .npz, and measurements past the deadline,
    are rows that say so (no Keras work: the deadline has passed)."""
    report = device_benchmark.Report(None, {"backend": "jax"})
    options = {"smoke": False, "data": str(tmp_path / "absent.npz"), "quality": device_benchmark.QUALITY,
               "models": [list(device_benchmark.MODELS[0])], "dtypes": ["float32"], "loss_sizes": [4096]}  # fmt: skip
    device_benchmark.quality_part(options, report, deadline=0.0)
    assert [r["status"] for r in report.data["quality"]] == ["skipped", "skipped"]
    assert "--prepare" in report.data["quality"][0]["reason"]
    device_benchmark.fit_part(options, report, deadline=0.0)
    device_benchmark.loss_part(options, report, deadline=0.0)
    assert report.data["fit"] == [{"backend": "jax", "model": "resnet18_32", "dtype": "float32",
                                   "status": "skipped", "reason": "time budget"}]  # fmt: skip
    assert {r["status"] for r in report.data["loss"]} == {"skipped"}
    assert len(report.data["loss"]) == len(device_benchmark.LOSS_CONFIGS)


@backend_independent
def test_missing_encoder_is_unavailable():
    import keras_fmicl

    with pytest.raises(LookupError, match="does not exist"):
        device_benchmark.build_encoder(keras_fmicl, "resnet999", (32, 32, 3), {})
    encoder, used = device_benchmark.build_encoder(
        keras_fmicl, "resnet18", (8, 8, 3), {"width": 4, "not_an_argument": 1}
    )
    assert used == {"width": 4} and encoder.output_shape == (None, 32)


@backend_independent
def test_arguments_and_script():
    args = device_benchmark.parse_args(["--smoke"])
    assert args.loss_sizes == list(device_benchmark.SMOKE_LOSS_SIZES)
    assert device_benchmark.parse_args([]).loss_sizes == [4096, 16384]
    with pytest.raises(SystemExit):
        device_benchmark.parse_args(["--models", "resnet99"])
    script = os.path.join(ROOT, "benchmarks", "device.sh")
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    assert os.access(script, os.X_OK)
