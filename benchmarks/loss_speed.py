"""Speed and memory of the f-MICL losses, against keras-cv's SimCLR loss.

Times one forward + backward pass of each loss with respect to `y_pred`
(`(N, 2, d)` float32 embeddings), compiled the way each backend compiles a
training step:

* JAX: `jax.jit(jax.value_and_grad(loss))`;
* TensorFlow: `tf.function(jit_compile=True)` around a `GradientTape`;
* PyTorch: eager, and `torch.compile` (static shapes, default inductor
  backend) for a subset of the losses (`--torch-compile`).

The losses, side by side in the same process:

* `fmicl/<divergence>/<similarity>`: `keras_fmicl.FMICLLoss` for every
  divergence and both similarities (`--sigma`, `--temperature`: the
  library's defaults 2**-0.5 and 1.0 unless given; benchmarks/README.md
  says which settings the recorded results were timed at);
* `info_nce`: `keras_fmicl.InfoNCELoss(temperature)`;
* `simclr_keras_cv`: `keras_cv.losses.SimCLRLoss(temperature)`, called
  as `loss(z1, z2)` on the two views (it sums both directions, so its value
  is twice InfoNCE's);
* `matmul_floor`: the three `(M x d) . (d x M)`-sized matmuls of a
  forward + backward of an `(M, M)` similarity matrix differentiated by
  autodiff (M = 2N): `S = A A^T`, then `S A` and `S^T A`. f-MICL's
  self-contrast can go below it: its matrix is symmetric, and
  `keras_fmicl.losses.fast_paths.symmetric_row_sum` differentiates the negatives
  with one matmul, two in all.

Timing: per size, every loss is compiled and warmed up, then timed in
interleaved rounds (each round runs a block of calls of every loss in turn,
blocks of about 25 ms for cheap losses), so that slow drifts of a shared
machine reach every loss alike; ratios are medians of same-round ratios.

The Keras backend is fixed per process, so the driver launches one worker
subprocess per backend (`KERAS_BACKEND=<b> python loss_speed.py --worker`,
through `benchmarks/harness.py`) and merges their JSON. With `--memory` it
also measures the peak memory of one forward + backward at N = 8192
(M = 16384) in a fresh subprocess per measurement: the increase of the
peak resident set size (`resource.getrusage().ru_maxrss`) over its value
after the imports and the creation of the input, next to `M^2 * 4` bytes
(one float32 `(M, M)` matrix) and `M^2 * d * 4` bytes (an `(M, M, d)`
tensor): memory must be O(M^2), never O(M^2 d).

Targets (reported, never asserted): every f-MICL configuration at or below
the keras-cv SimCLR time (ratio <= 1.0) on every backend, within 2x of the
matmul floor, memory O(M^2).

Usage (from the repository root):

    python benchmarks/loss_speed.py --backends tensorflow,jax,torch
    python benchmarks/loss_speed.py --quick                # smoke test
    python benchmarks/loss_speed.py --memory --skip-speed  # memory only

Prints Markdown tables and writes every raw number, the machine, the
versions, the load average and the date to `--output` (default
`benchmarks/results/loss_speed.json`).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib
import math
import os
import resource
import statistics
import sys
import time
import traceback
from typing import Any, Callable

SCRIPT = os.path.abspath(__file__)
REPO_ROOT = os.path.dirname(os.path.dirname(SCRIPT))
if REPO_ROOT not in sys.path:  # run as a script: python benchmarks/loss_speed.py
    sys.path.append(REPO_ROOT)
from benchmarks import harness  # noqa: E402
from examples.registry_names import BACKENDS  # noqa: E402
from examples.registry_names import DIVERGENCES  # noqa: E402
from examples.registry_names import SIMILARITIES  # noqa: E402

DEFAULT_OUTPUT = os.path.join(harness.RESULTS_DIR, "loss_speed.json")
DEFAULT_SIZES = (256, 1024, 4096)
QUICK_SIZES = (8, 16)
DEFAULT_MEMORY_SIZES = (8192,)
QUICK_MEMORY_SIZES = (32,)
DIM = 128
VIEWS = 2
# The library's defaults (keras_fmicl.losses.similarities.DEFAULT_SIGMA and
# DEFAULT_TEMPERATURE; the driver does not import Keras).
SIGMA = 2**-0.5
TEMPERATURE = 1.0
MAX_REPEATS = 50
# Calls per timed block: about this many seconds (cheap calls are repeated).
MIN_BLOCK_SECONDS = 0.025
MAX_BLOCK_CALLS = 100

SIMCLR = "simclr_keras_cv"
INFO_NCE = "info_nce"
FLOOR = "matmul_floor"
MEMORY_CONFIGS = ("fmicl/js/gaussian", "fmicl/kl/cosine", INFO_NCE, SIMCLR)
# Losses compiled with torch.compile under `--torch-compile subset` (each
# compilation costs seconds to tens of seconds on a CPU).
TORCH_COMPILE_SUBSET = ("fmicl/js/gaussian", "fmicl/kl/cosine", INFO_NCE, SIMCLR, FLOOR)

MODES = {
    "jax": ("jax.jit",),
    "tensorflow": ("tf.function(jit_compile=True)",),
    "torch": ("eager", "torch.compile"),
}
# The mode of the memory measurements (torch: eager, what most users run).
MEMORY_MODE = {"jax": "jax.jit", "tensorflow": "tf.function(jit_compile=True)", "torch": "eager"}


# ---------------------------------------------------------------------------
# Losses (backend-agnostic: keras.ops only).
# ---------------------------------------------------------------------------


def loss_configs(divergences: tuple, similarities: tuple) -> list[str]:
    """Names of the timed configurations: the references first."""
    fmicl = [f"fmicl/{d}/{s}" for d in divergences for s in similarities]
    return [FLOOR, SIMCLR, INFO_NCE] + fmicl


def matmul_floor(y: Any) -> Any:
    """The three `(M, d) x (d, M)`-sized matmuls of a forward + backward.

    `S = A A^T` (forward) and `S A`, `S^T A` (the two gradient products of
    the backward pass, with `S` standing in for the upstream gradient).
    """
    from keras import ops

    a = ops.reshape(y, (-1, ops.shape(y)[-1]))
    s = ops.matmul(a, ops.transpose(a))
    return ops.matmul(s, a) + ops.matmul(ops.transpose(s), a)


def make_loss_fn(
    config: str, sigma: float = SIGMA, temperature: float = TEMPERATURE
) -> Callable[[Any], Any]:
    """`y -> scalar loss` for `y` of shape `(N, 2, d)`.

    Raises:
        ImportError: for `simclr_keras_cv` when keras-cv is not installed.
    """
    if config == SIMCLR:
        import keras_cv

        simclr = keras_cv.losses.SimCLRLoss(temperature=temperature)
        return lambda y: simclr(y[:, 0, :], y[:, 1, :])

    import keras_fmicl

    if config == INFO_NCE:
        loss = keras_fmicl.InfoNCELoss(temperature=temperature)
    elif config.startswith("fmicl/"):
        _, divergence, similarity = config.split("/")
        # each similarity gets its own parameter only (the other would warn)
        parameter = {"sigma": sigma} if similarity == "gaussian" else {"temperature": temperature}
        loss = keras_fmicl.FMICLLoss(divergence=divergence, similarity=similarity, **parameter)
    else:
        raise ValueError(f"Unknown loss configuration. Received: config={config!r}")
    return lambda y: loss(None, y)


def make_embeddings(num_samples: int, dim: int = DIM, seed: int = 0):
    """`(N, 2, d)` float32 embeddings: two correlated views of N samples."""
    import numpy as np

    rng = np.random.default_rng(seed)
    anchor = rng.standard_normal((num_samples, 1, dim))
    views = anchor + 0.5 * rng.standard_normal((num_samples, VIEWS, dim))
    return views.astype("float32")


# ---------------------------------------------------------------------------
# One compiled forward + backward per backend.
# ---------------------------------------------------------------------------


def make_runner(
    backend: str,
    mode: str,
    config: str,
    y_np,
    sigma: float = SIGMA,
    temperature: float = TEMPERATURE,
) -> Callable[[], Any]:
    """A zero-argument callable: one forward + backward, blocking on the result.

    It returns the loss value (a float), or `None` for the matmul floor. The
    input is converted to a backend tensor here, before the first call.
    """
    floor = config == FLOOR
    loss_fn = None if floor else make_loss_fn(config, sigma, temperature)

    if backend == "jax":
        import jax

        x = jax.numpy.asarray(y_np)
        if floor:
            compiled = jax.jit(matmul_floor)

            def run():
                compiled(x).block_until_ready()

            return run
        compiled = jax.jit(jax.value_and_grad(loss_fn))

        def run():
            value, grad = compiled(x)
            jax.block_until_ready((value, grad))
            return float(value)

        return run

    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.constant(y_np)
        if floor:
            compiled = tf.function(matmul_floor, jit_compile=True)

            def run():
                compiled(x).numpy()

            return run

        @tf.function(jit_compile=True)
        def step(y):
            with tf.GradientTape() as tape:
                tape.watch(y)
                value = loss_fn(y)
            return value, tape.gradient(value, y)

        def run():
            value, grad = step(x)
            grad.numpy()
            return float(value.numpy())

        return run

    if backend == "torch":
        import torch

        x = torch.from_numpy(y_np)
        if mode == "torch.compile":
            # The f-MICL configurations share one code object (the lambda
            # of `make_loss_fn`), each with its own guards: room for all of
            # them in dynamo's cache, or the later ones fall back to eager.
            config_module = torch._dynamo.config
            for limit in (
                "cache_size_limit",
                "recompile_limit",
                "accumulated_cache_size_limit",
                "accumulated_recompile_limit",
            ):
                if hasattr(config_module, limit):
                    setattr(config_module, limit, max(getattr(config_module, limit), 256))
            fn = torch.compile(matmul_floor if floor else loss_fn, dynamic=False)
        elif mode == "eager":
            fn = matmul_floor if floor else loss_fn
        else:
            raise ValueError(f"Unknown torch mode. Received: mode={mode!r}")
        if floor:

            def run():
                with torch.no_grad():
                    fn(x).cpu().numpy()

            return run

        def run():
            leaf = x.detach().requires_grad_(True)
            value = fn(leaf)
            (grad,) = torch.autograd.grad(value, leaf)
            grad.cpu().numpy()
            return float(value.detach())

        return run

    raise ValueError(f"Unknown backend. Received: backend={backend!r}")


def time_runner(
    run: Callable[[], Any],
    repeats: int,
    warmup: int,
    max_seconds: float,
    min_seconds: float = 0.0,
) -> dict:
    """Times one `run` alone (see `time_interleaved`, which the worker uses)."""
    return time_interleaved({"run": run}, repeats, warmup, max_seconds, min_seconds)["run"]


def time_interleaved(
    runners: dict[str, Callable[[], Any]],
    repeats: int,
    warmup: int,
    max_seconds: float,
    min_seconds: float = 0.0,
) -> dict[str, dict]:
    """Times several runners in interleaved rounds, after compiling and warming up.

    Each runner's first (compiling) call is timed on its own, followed by
    `warmup` more calls. Each runner then gets a block size: the number of
    calls that last about `MIN_BLOCK_SECONDS` (1 for slow ones), so that the
    clock's resolution and one-off hiccups weigh little on a cheap call. A
    round runs one block of every runner, starting one runner later each
    round; a runner's times are the per-call means of its blocks. Slow drifts
    of the machine (other jobs, clock frequency) then reach every
    configuration alike, and `paired_ratio` compares blocks of the same round.

    There are at least `repeats` rounds, more (up to `MAX_REPEATS`) while
    they took less than `min_seconds` in all, and no more once they exceed
    `max_seconds` per runner (after at least 2 rounds). A runner that raises
    gets an `error` and leaves the rounds; the others go on.

    Returns:
        `{name: record}`, a record holding `median_ms`, `min_ms`, `mean_ms`,
        `times_ms` (one per round), `cpu_median_ms` and `cpu_times_ms`
        (process CPU time, all threads, per call), `repeats` (rounds),
        `calls_per_round`, `first_call_ms` and `value` (the first call's),
        or `error`.
    """
    records: dict[str, dict] = {}
    blocks: dict[str, int] = {}
    for name, run in runners.items():
        try:
            start = time.perf_counter()
            value = run()
            first_ms = 1e3 * (time.perf_counter() - start)
            for _ in range(warmup):
                run()
            start = time.perf_counter()
            run()
            one_call = time.perf_counter() - start
        except Exception as error:  # noqa: BLE001 - recorded, the others go on
            records[name] = {"error": _error_text(error)}
            continue
        blocks[name] = max(1, min(MAX_BLOCK_CALLS, round(MIN_BLOCK_SECONDS / max(one_call, 1e-9))))
        records[name] = {
            "first_call_ms": first_ms,
            "value": value,
            "calls_per_round": blocks[name],
            "times_ms": [],
            "cpu_times_ms": [],
        }
    active = list(blocks)
    started = time.perf_counter()
    rounds = 0
    gc_was_enabled = gc.isenabled()
    while active:
        gc.collect()
        gc.disable()  # no collection inside a timed block
        try:
            shift = rounds % len(active)
            for name in active[shift:] + active[:shift]:
                calls, run = blocks[name], runners[name]
                t, c = time.perf_counter(), time.process_time()
                try:
                    for _ in range(calls):
                        run()
                except Exception as error:  # noqa: BLE001
                    records[name] = {"error": _error_text(error)}
                    continue
                records[name]["times_ms"].append(1e3 * (time.perf_counter() - t) / calls)
                records[name]["cpu_times_ms"].append(1e3 * (time.process_time() - c) / calls)
        finally:
            if gc_was_enabled:
                gc.enable()
        active = [name for name in active if "error" not in records[name]]
        rounds += 1
        elapsed = time.perf_counter() - started
        if rounds >= 2 and elapsed > max_seconds * max(len(active), 1):
            break
        if rounds >= repeats and (elapsed >= min_seconds or rounds >= MAX_REPEATS):
            break
    for name in active:
        record = records[name]
        times = record["times_ms"]
        record.update(
            median_ms=statistics.median(times),
            min_ms=min(times),
            mean_ms=statistics.fmean(times),
            cpu_median_ms=statistics.median(record["cpu_times_ms"]),
            repeats=len(times),
        )
    return records


def paired_ratio(record: dict, reference: dict, key: str = "median_ms") -> float:
    """Median over rounds of `record`'s time ÷ `reference`'s in the same round.

    For records timed together by `time_interleaved` (same number of
    rounds); otherwise the ratio of the medians. `key` is `"median_ms"`
    (wall time) or `"cpu_median_ms"` (process CPU time).
    """
    series = "times_ms" if key == "median_ms" else "cpu_times_ms"
    a, b = record.get(series), reference.get(series)
    if a and b and len(a) == len(b) and record.get("interleaved") and reference.get("interleaved"):
        return statistics.median(x / y for x, y in zip(a, b))
    return record[key] / reference[key]


# ---------------------------------------------------------------------------
# Workers (one backend per process).
# ---------------------------------------------------------------------------


def _error_text(error: BaseException) -> str:
    lines = traceback.format_exception_only(type(error), error)
    return "".join(lines).strip()[-2000:]


def run_worker(options: dict) -> dict:
    """Times every configuration on the backend of this process.

    Args:
        options: `sizes`, `repeats`, `warmup`, `max_seconds`, `min_seconds`,
            `divergences`, `similarities`, `torch_compile` (`"off"`,
            `"subset"`, `"all"`), `dim`, `sigma` and `temperature`.

    Returns:
        `{"backend", "modes", "versions", "loadavg_start", "loadavg_end",
        "threads", "results": [record, ...]}`.
    """
    import keras

    backend = keras.backend.backend()
    modes = list(MODES[backend])
    if backend == "torch" and options["torch_compile"] == "off":
        modes.remove("torch.compile")
    configs = loss_configs(tuple(options["divergences"]), tuple(options["similarities"]))
    report = {
        "backend": backend,
        "modes": modes,
        "versions": harness.versions(),
        "keras_fmicl_path": _module_path("keras_fmicl"),
        "threads": _threads(backend),
        "loadavg_start": harness.loadavg(),
        "results": [],
    }
    for mode in modes:
        for n in options["sizes"]:
            y_np = make_embeddings(n, options["dim"])
            group = [
                config
                for config in configs
                if not (
                    mode == "torch.compile"
                    and options["torch_compile"] == "subset"
                    and config not in TORCH_COMPILE_SUBSET
                )
            ]
            runners, records = {}, {}
            if mode == "torch.compile":
                import torch

                torch._dynamo.reset()  # frees the previous size's graphs
            for config in group:
                records[config] = {
                    "backend": backend,
                    "mode": mode,
                    "config": config,
                    "n": n,
                    "m": VIEWS * n,
                    "dim": options["dim"],
                }
                try:
                    runners[config] = make_runner(
                        backend, mode, config, y_np, options["sigma"], options["temperature"]
                    )
                except ImportError as error:
                    records[config]["skipped"] = _error_text(error)
                    harness.log(f"[{backend} {mode}] N={n} {config}: skipped ({records[config]['skipped']})")
                except Exception as error:  # noqa: BLE001 - recorded, run goes on
                    records[config]["error"] = _error_text(error)
            gc.collect()
            timings = time_interleaved(
                runners,
                options["repeats"],
                options["warmup"],
                options["max_seconds"],
                options["min_seconds"],
            )
            runners = None
            loadavg = harness.loadavg()
            for config in group:
                record = records[config]
                if config in timings:
                    record.update(timings[config], interleaved=True, loadavg=loadavg)
                if "error" in record:
                    harness.log(f"[{backend} {mode}] N={n} {config}: ERROR {record['error']}")
                elif "median_ms" in record:
                    harness.log(
                        f"[{backend} {mode}] N={n} {config}: "
                        f"median {record['median_ms']:.2f} ms, min {record['min_ms']:.2f} ms "
                        f"({record['repeats']} rounds of {record['calls_per_round']}, "
                        f"first call {record['first_call_ms']:.0f} ms)"
                    )
                report["results"].append(record)
    report["loadavg_end"] = harness.loadavg()
    return report


def _module_path(name: str) -> str | None:
    try:
        module = importlib.import_module(name)
    except ImportError:
        return None
    return os.path.dirname(os.path.abspath(module.__file__))


def _threads(backend: str) -> dict:
    info = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}
    if backend == "torch":
        import torch

        info["torch_num_threads"] = torch.get_num_threads()
    return info


def _current_rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def _maxrss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def run_memory_worker(
    config: str, n: int, dim: int, sigma: float = SIGMA, temperature: float = TEMPERATURE
) -> dict:
    """Peak RSS increase of one forward + backward, in this (fresh) process."""
    import keras

    backend = keras.backend.backend()
    mode = MEMORY_MODE[backend]
    m = VIEWS * n
    record = {
        "backend": backend,
        "mode": mode,
        "config": config,
        "n": n,
        "m": m,
        "dim": dim,
        "matrix_bytes": m * m * 4,
        "matrix_d_bytes": m * m * dim * 4,
    }
    try:
        y_np = make_embeddings(n, dim)
        run = make_runner(backend, mode, config, y_np, sigma, temperature)  # imports + input
        gc.collect()
        record["baseline_maxrss_bytes"] = _maxrss_bytes()
        record["baseline_rss_bytes"] = _current_rss_bytes()
        start = time.perf_counter()
        record["value"] = run()  # compiles, then runs
        run()
        record["seconds"] = time.perf_counter() - start
        record["peak_maxrss_bytes"] = _maxrss_bytes()
        increase = record["peak_maxrss_bytes"] - record["baseline_maxrss_bytes"]
        record["peak_increase_bytes"] = increase
        if record["baseline_rss_bytes"] is not None:
            record["peak_over_baseline_rss_bytes"] = (
                record["peak_maxrss_bytes"] - record["baseline_rss_bytes"]
            )
        record["matrices"] = increase / record["matrix_bytes"]
        record["fraction_of_matrix_d"] = increase / record["matrix_d_bytes"]
    except ImportError as error:
        record["skipped"] = _error_text(error)
    except Exception as error:  # noqa: BLE001
        record["error"] = _error_text(error)
    record["loadavg"] = harness.loadavg()
    return record


# ---------------------------------------------------------------------------
# Driver.
# ---------------------------------------------------------------------------


# What the timing worker takes from the command line (`run_worker`'s options).
WORKER_OPTIONS = (
    "sizes", "repeats", "warmup", "max_seconds", "min_seconds", "divergences", "similarities",
    "sigma", "temperature", "torch_compile", "dim",
)  # fmt: skip


def worker_options(args: argparse.Namespace) -> dict:
    """The options of `run_worker`, from the parsed flags."""
    return {name: getattr(args, name) for name in WORKER_OPTIONS}


def worker_arguments(args: argparse.Namespace) -> list[str]:
    """The flags that hand `worker_options(args)` to a worker process."""
    arguments = []
    for name, value in worker_options(args).items():
        text = ",".join(str(v) for v in value) if isinstance(value, list) else str(value)
        arguments += ["--" + name.replace("_", "-"), text]
    return arguments


def _memory_worker_arguments(args: argparse.Namespace, config: str, n: int) -> list[str]:
    return [
        "--memory-worker",
        "--memory-config", config,
        "--memory-n", str(n),
        "--dim", str(args.dim),
        "--sigma", str(args.sigma),
        "--temperature", str(args.temperature),
    ]  # fmt: skip


def _run_subprocess(backend: str, arguments: list[str], timeout: float) -> dict:
    """A worker process (driver, below): its stderr's progress lines are
    passed on, and the caller's PYTHONPATH comes before this checkout."""
    return harness.run_worker(
        SCRIPT, backend, arguments, timeout, checkout_first=False, progress_prefix="["
    )


def run_driver(args: argparse.Namespace) -> dict:
    report = {
        "benchmark": "loss_speed",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": harness.git_commit(),
        "machine": harness.machine_info(),
        "versions": harness.versions(),
        "settings": {
            "backends": args.backends,
            "sizes": args.sizes,
            "views": VIEWS,
            "dim": args.dim,
            "dtype": "float32",
            **{
                name: getattr(args, name)
                for name in WORKER_OPTIONS
                if name not in ("sizes", "dim")  # above
            },
            "torch_compile_subset": list(TORCH_COMPILE_SUBSET),
            "modes": {b: list(MODES[b]) for b in args.backends},
            "memory_sizes": args.memory_sizes if args.memory else None,
            "memory_modes": {b: MEMORY_MODE[b] for b in args.backends} if args.memory else None,
            "quick": args.quick,
        },
        "workers": {},
        "results": [],
        "memory": [],
    }
    started = time.perf_counter()
    if not args.skip_speed:
        for backend in args.backends:
            harness.log(f"== {backend}: timing (load average {harness.loadavg()})")
            worker = _run_subprocess(backend, ["--worker", *worker_arguments(args)], args.timeout)
            report["results"].extend(worker.pop("results", []))
            report["workers"][backend] = worker
    if args.memory:
        for backend in args.backends:
            for n in args.memory_sizes:
                for config in MEMORY_CONFIGS:
                    harness.log(f"== {backend}: memory of {config} at N={n}")
                    record = _run_subprocess(
                        backend, _memory_worker_arguments(args, config, n), args.timeout
                    )
                    record.setdefault("backend", backend)
                    record.setdefault("config", config)
                    record.setdefault("n", n)
                    report["memory"].append(record)
                    if "peak_increase_bytes" in record:
                        harness.log(
                            f"   peak increase {record['peak_increase_bytes'] / 2**20:.0f} MiB "
                            f"= {record['matrices']:.2f} x M^2*4"
                        )
                    else:
                        harness.log(f"   {record.get('error') or record.get('skipped')}")
    report["total_seconds"] = time.perf_counter() - started
    report["machine"]["loadavg_end"] = harness.loadavg()
    return report


# ---------------------------------------------------------------------------
# Markdown tables.
# ---------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    if value == 0:
        return "0"
    decimals = max(0, digits - 1 - int(math.floor(math.log10(abs(value)))))
    return f"{value:.{decimals}f}"


def _ms_cell(record: dict | None) -> str:
    if record is None:
        return "–"
    if "median_ms" not in record:
        return "error" if "error" in record else "skipped"
    return f"{_fmt(record['median_ms'])} ({_fmt(record['min_ms'])})"


def _ratio(record: dict | None, reference: dict | None, key: str = "median_ms") -> float | None:
    if not record or not reference or key not in record or key not in reference:
        return None
    return paired_ratio(record, reference, key)


def _ordered(items) -> list:
    seen = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen


def speed_tables(report: dict) -> str:
    results = report.get("results", [])
    lines = []
    groups = _ordered((r["backend"], r["mode"]) for r in results)
    for backend, mode in groups:
        rows = [r for r in results if r["backend"] == backend and r["mode"] == mode]
        sizes = sorted({r["n"] for r in rows})
        configs = _ordered(r["config"] for r in rows)
        index = {(r["config"], r["n"]): r for r in rows}
        repeats = [r["repeats"] for r in rows if "repeats" in r]
        fewest = min(repeats) if repeats else 0
        lines.append(
            f"### {backend} — {mode}\n\nmedian ms (min) per forward+backward over >= {fewest} "
            "interleaved rounds (each round times a block of calls of every loss in turn); "
            "ratios are the medians of the same-round ratios.\n"
        )
        header = (
            ["loss"]
            + [f"N={n}" for n in sizes]
            + [f"÷SimCLR N={n}" for n in sizes]
            + [f"÷floor N={n}" for n in sizes]
        )
        lines.append(harness.table_row(header))
        lines.append(harness.table_rule("l" + "r" * (len(header) - 1)))
        for config in configs:
            cells = [config]
            cells += [_ms_cell(index.get((config, n))) for n in sizes]
            for reference in (SIMCLR, FLOOR):
                cells += [
                    _fmt(_ratio(index.get((config, n)), index.get((reference, n))), 2) for n in sizes
                ]
            lines.append(harness.table_row(cells))
        lines.append("")
    return "\n".join(lines)


def target_table(report: dict, key: str = "median_ms") -> str:
    """f-MICL ratios per backend and N against the two speed targets.

    Args:
        report: the merged report.
        key: `"median_ms"` (wall time) or `"cpu_median_ms"` (process CPU
            time, all threads: steadier when other jobs share the machine).
    """
    results = report.get("results", [])
    groups = _ordered((r["backend"], r["mode"]) for r in results)
    what = "wall time" if key == "median_ms" else "process CPU time"
    lines = [
        f"### Targets ({what}): f-MICL ÷ keras-cv SimCLR <= 1.0, f-MICL ÷ matmul floor <= 2.0\n",
        harness.table_row(
            ["backend", "mode", "N", "f-MICL ÷ SimCLR (best–worst)", "<= 1.0",
             "f-MICL ÷ floor (best–worst)", "<= 2.0", "InfoNCE ÷ SimCLR"]
        ),
        harness.table_rule("llrrcrcr"),
    ]

    for backend, mode in groups:
        rows = [r for r in results if r["backend"] == backend and r["mode"] == mode]
        index = {(r["config"], r["n"]): r for r in rows}
        for n in sorted({r["n"] for r in rows}):
            fmicl = [r for r in rows if r["n"] == n and r["config"].startswith("fmicl/")]
            simclr, floor = index.get((SIMCLR, n)), index.get((FLOOR, n))
            to_simclr = [x for x in (_ratio(r, simclr, key) for r in fmicl) if x is not None]
            to_floor = [x for x in (_ratio(r, floor, key) for r in fmicl) if x is not None]

            def span(values):
                return f"{_fmt(min(values), 2)}–{_fmt(max(values), 2)}" if values else "–"

            def verdict(values, limit):
                if not values:
                    return "–"
                return "yes" if max(values) <= limit else f"no ({sum(v > limit for v in values)}/{len(values)})"

            lines.append(
                harness.table_row(
                    [backend, mode, n, span(to_simclr), verdict(to_simclr, 1.0),
                     span(to_floor), verdict(to_floor, 2.0),
                     _fmt(_ratio(index.get((INFO_NCE, n)), simclr, key), 2)]
                )
            )
    lines.append("")
    return "\n".join(lines)


def memory_table(report: dict) -> str:
    records = report.get("memory", [])
    if not records:
        return ""
    lines = [
        "### Peak memory of one forward+backward (increase of peak RSS over the "
        "baseline after imports and input creation)\n",
        harness.table_row(
            ["backend", "mode", "loss", "N", "M", "peak increase (MiB)", "M²·4 B (MiB)",
             "÷ M²·4", "M²·d·4 B (GiB)", "÷ M²·d·4"]
        ),
        harness.table_rule("lllrrrrrrr"),
    ]
    for r in records:
        m = r.get("m", VIEWS * r["n"])
        dim = r.get("dim", DIM)
        matrix = m * m * 4
        matrix_d = matrix * dim
        if "peak_increase_bytes" in r:
            increase = r["peak_increase_bytes"]
            cells = [
                _fmt(increase / 2**20, 4),
                _fmt(matrix / 2**20, 4),
                _fmt(increase / matrix, 3),
                _fmt(matrix_d / 2**30, 4),
                _fmt(increase / matrix_d, 2),
            ]
        else:
            status = "error" if "error" in r else "skipped"
            cells = [status, _fmt(matrix / 2**20, 4), "–", _fmt(matrix_d / 2**30, 4), "–"]
        lines.append(harness.table_row([r["backend"], r.get("mode", "–"), r["config"], r["n"], m, *cells]))
    lines.append("")
    return "\n".join(lines)


def markdown(report: dict) -> str:
    machine = report.get("machine", {})
    parts = [
        f"## loss_speed — {report.get('date')}\n",
        f"{machine.get('cpu_count')} CPUs ({machine.get('cpu_model')}), "
        f"load average {machine.get('loadavg')} → {machine.get('loadavg_end')}; "
        f"commit {report.get('commit')}; d = {report['settings']['dim']}, "
        f"V = {VIEWS}, float32.\n",
    ]
    for backend, worker in report.get("workers", {}).items():
        if "error" in worker:
            parts.append(f"**{backend} worker failed**: {worker['error']}\n")
    if report.get("results"):
        parts.append(speed_tables(report))
        parts.append(target_table(report))
        parts.append(target_table(report, key="cpu_median_ms"))
    parts.append(memory_table(report))
    return "\n".join(parts)


# ---------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or any(v < 2 for v in values):
        raise argparse.ArgumentTypeError(f"expected sizes >= 2, e.g. 256,1024. Received: {text!r}")
    return values


def _choices(allowed: tuple) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        unknown = [v for v in values if v not in allowed]
        if not values or unknown:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated subset of {', '.join(allowed)}. Received: {text!r}"
            )
        return values

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Forward+backward speed and peak memory of the f-MICL losses "
        "against keras-cv's SimCLR loss and a matmul floor, per Keras backend.",
    )
    parser.add_argument("--backends", type=_choices(BACKENDS), default=list(BACKENDS))
    parser.add_argument("--sizes", type=_int_list, default=None, help="N values (samples)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed rounds, at least (default 7; quick: 2)"
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed runs after compiling (1; quick: 0)"
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=60.0,
        help="stop the rounds of one size after this many seconds per loss (>= 2 rounds)",
    )
    parser.add_argument(
        "--min-seconds",
        type=float,
        default=None,
        help=f"more rounds (<= {MAX_REPEATS}) until the rounds of one size took this many "
        "seconds (default 5, quick 0)",
    )
    parser.add_argument("--divergences", type=_choices(DIVERGENCES), default=list(DIVERGENCES))
    parser.add_argument("--similarities", type=_choices(SIMILARITIES), default=list(SIMILARITIES))
    parser.add_argument("--dim", type=int, default=DIM)
    parser.add_argument(
        "--sigma", type=float, default=SIGMA, help="Gaussian bandwidth (library default)"
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=TEMPERATURE,
        help="temperature of the cosine f-MICL, InfoNCE and SimCLR losses (library default)",
    )
    parser.add_argument(
        "--torch-compile",
        choices=("off", "subset", "all"),
        default="subset",
        help=f"losses timed under torch.compile (subset: {', '.join(TORCH_COMPILE_SUBSET)})",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--memory", action="store_true", help="also measure peak memory")
    parser.add_argument("--memory-sizes", type=_int_list, default=None, help="N for --memory")
    parser.add_argument("--skip-speed", action="store_true", help="only the memory part")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="JSON report path")
    parser.add_argument("--timeout", type=float, default=3600.0, help="per worker, seconds")
    # Internal: the subprocesses.
    harness.add_worker_flags(parser)
    parser.add_argument("--memory-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--memory-config", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--memory-n", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sizes is None:
        args.sizes = list(QUICK_SIZES if args.quick else DEFAULT_SIZES)
    if args.repeats is None:
        args.repeats = 2 if args.quick else 7
    if args.warmup is None:
        args.warmup = 0 if args.quick else 1
    if args.min_seconds is None:
        args.min_seconds = 0.0 if args.quick else 5.0
    if args.memory_sizes is None:
        args.memory_sizes = list(QUICK_MEMORY_SIZES if args.quick else DEFAULT_MEMORY_SIZES)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1. Received: {args.repeats}")
    return args


def _write_json(data: dict, path: str | None) -> None:
    harness.write_json(data, path, indent=1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        _write_json(run_worker(worker_options(args)), args.worker_output)
        return 0
    if args.memory_worker:
        config = args.memory_config or MEMORY_CONFIGS[0]
        n = args.memory_n or args.memory_sizes[0]
        _write_json(
            run_memory_worker(config, n, args.dim, args.sigma, args.temperature),
            args.worker_output,
        )
        return 0
    report = run_driver(args)
    _write_json(report, args.output)
    print(markdown(report))
    harness.log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
