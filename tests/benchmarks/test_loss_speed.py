"""Smoke test of benchmarks/loss_speed.py on the current backend (no timing asserts)."""

import json
import os
import subprocess
import sys

import keras
import pytest

from benchmarks import loss_speed

BACKEND = keras.backend.backend()


def _run_script(arguments, tmp_path, timeout=120):
    output = tmp_path / "result.json"
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, loss_speed.SCRIPT, *arguments, "--worker-output", str(output)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(output) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def worker_report(tmp_path_factory):
    """One quick worker run: N in {8, 16}, KL with both similarities, no torch.compile."""
    tmp_path = tmp_path_factory.mktemp("loss_speed")
    return _run_script(
        ["--worker", "--quick", "--divergences", "kl", "--torch-compile", "off"],
        tmp_path,
    )


def test_worker_report_structure(worker_report):
    assert worker_report["backend"] == BACKEND
    assert worker_report["modes"] == [loss_speed.MODES[BACKEND][0]]
    assert worker_report["versions"]["keras"] == keras.__version__
    configs = loss_speed.loss_configs(("kl",), loss_speed.SIMILARITIES)
    assert len(configs) == 3 + 2
    results = worker_report["results"]
    expected = {(c, n) for c in configs for n in loss_speed.QUICK_SIZES}
    assert {(r["config"], r["n"]) for r in results} == expected
    assert len(results) == len(expected)
    for record in results:
        assert record["backend"] == BACKEND
        assert record["m"] == 2 * record["n"]
        if record["config"] == loss_speed.SIMCLR and "skipped" in record:
            continue  # keras-cv not installed
        assert "error" not in record, record
        assert record["repeats"] == len(record["times_ms"]) >= 2
        assert record["min_ms"] <= record["median_ms"]
        assert all(t > 0 for t in record["times_ms"])


def test_worker_values_are_the_losses(worker_report):
    """The timed functions are the losses: SimCLR (both directions) = 2 InfoNCE."""
    values = {(r["config"], r["n"]): r.get("value") for r in worker_report["results"]}
    for n in loss_speed.QUICK_SIZES:
        assert values[(loss_speed.FLOOR, n)] is None
        for config in ("info_nce", "fmicl/kl/gaussian", "fmicl/kl/cosine"):
            assert isinstance(values[(config, n)], float)
        simclr = values[(loss_speed.SIMCLR, n)]
        if simclr is not None:
            assert simclr == pytest.approx(2 * values[("info_nce", n)], rel=1e-4)


def test_markdown_tables(worker_report):
    report = {
        "date": "today",
        "machine": {"cpu_count": 2},
        "settings": {"dim": loss_speed.DIM},
        "workers": {BACKEND: {}},
        "results": worker_report["results"],
        "memory": [],
    }
    text = loss_speed.markdown(report)
    assert f"### {BACKEND}" in text
    assert "÷SimCLR N=16" in text and "÷floor N=8" in text
    assert "| fmicl/kl/cosine |" in text
    assert "Targets" in text


def test_memory_worker():
    """The memory measurement, in this process (the benchmark uses a fresh one)."""
    record = loss_speed.run_memory_worker("fmicl/kl/cosine", 32, loss_speed.DIM)
    assert "error" not in record, record
    assert (record["backend"], record["n"], record["m"]) == (BACKEND, 32, 64)
    assert record["matrix_bytes"] == 64 * 64 * 4
    assert record["matrix_d_bytes"] == 64 * 64 * loss_speed.DIM * 4
    assert record["peak_increase_bytes"] >= 0
    assert record["peak_maxrss_bytes"] >= record["baseline_maxrss_bytes"]
    assert isinstance(record["value"], float)
    table = loss_speed.memory_table({"memory": [record]})
    assert "| fmicl/kl/cosine | 32 | 64 |" in table


def test_parse_args_defaults_and_errors():
    args = loss_speed.parse_args([])
    assert args.sizes == list(loss_speed.DEFAULT_SIZES)
    assert args.backends == list(loss_speed.BACKENDS)
    assert args.memory_sizes == [8192]
    quick = loss_speed.parse_args(["--quick"])
    assert quick.sizes == list(loss_speed.QUICK_SIZES)
    with pytest.raises(SystemExit):
        loss_speed.parse_args(["--divergences", "kl,nope"])


def test_timed_parameters_default_to_the_library_defaults():
    from keras_fmicl.losses import similarities

    args = loss_speed.parse_args([])
    assert (args.sigma, args.temperature) == (
        similarities.DEFAULT_SIGMA,
        similarities.DEFAULT_TEMPERATURE,
    )
    args = loss_speed.parse_args(["--sigma", "0.5", "--temperature", "0.2"])
    assert (args.sigma, args.temperature) == (0.5, 0.2)
    assert "--sigma" in loss_speed.worker_arguments(args)


def test_timed_divergences_and_similarities_are_the_registered_ones():
    """The driver does not import Keras: its lists must follow the registries."""
    from keras_fmicl.losses import divergences
    from keras_fmicl.losses import similarities

    assert loss_speed.DIVERGENCES == divergences.names()
    assert loss_speed.SIMILARITIES == similarities.names()


def test_time_interleaved_runs_every_loss_in_rotating_rounds():
    order = []

    def runner(name):
        def run():
            order.append(name)
            return name

        return run

    def failing():
        order.append("bad")
        if order.count("bad") > 2:  # compiles and warms up, then fails
            raise RuntimeError("boom")
        return 0.0

    runners = {"a": runner("a"), "b": runner("b"), "bad": failing}
    records = loss_speed.time_interleaved(runners, repeats=4, warmup=1, max_seconds=60.0)
    assert "boom" in records["bad"]["error"]
    for name in ("a", "b"):
        record = records[name]
        assert record["value"] == name
        assert record["repeats"] == len(record["times_ms"]) == len(record["cpu_times_ms"]) >= 4
        assert 1 <= record["calls_per_round"] <= loss_speed.MAX_BLOCK_CALLS
        assert record["min_ms"] <= record["median_ms"]
    # After compiling (1 call), warming up (1) and calibrating (1), each
    # round runs a block of each loss, the rounds alternating which starts.
    calls = records["a"]["calls_per_round"]
    assert records["b"]["calls_per_round"] == calls
    timed = [name for name in order if name != "bad"][6:]
    blocks = [timed[i : i + calls] for i in range(0, len(timed), calls)]
    assert all(len(set(block)) == 1 for block in blocks)
    firsts = [block[0] for block in blocks]
    assert firsts[:8] == ["a", "b", "b", "a", "a", "b", "b", "a"]


def test_paired_ratio_is_the_median_of_same_round_ratios():
    a = {"interleaved": True, "times_ms": [2.0, 4.0, 9.0], "median_ms": 4.0,
         "cpu_times_ms": [1.0, 1.0, 1.0], "cpu_median_ms": 1.0}  # fmt: skip
    b = {"interleaved": True, "times_ms": [1.0, 4.0, 3.0], "median_ms": 3.0,
         "cpu_times_ms": [2.0, 2.0, 2.0], "cpu_median_ms": 2.0}  # fmt: skip
    assert loss_speed.paired_ratio(a, b) == 2.0  # ratios 2, 1, 3
    assert loss_speed.paired_ratio(a, b, "cpu_median_ms") == 0.5
    # Not timed together: the ratio of the medians.
    single = dict(a, interleaved=False)
    assert loss_speed.paired_ratio(single, b) == 4.0 / 3.0
