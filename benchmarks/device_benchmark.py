"""A GPU benchmark that fits a few minutes of a lent machine.

Three parts, each per Keras backend that can be imported (one worker process
per backend, through `benchmarks/harness.py`; a backend that is not
installed gets an `unavailable` row, never a crash):

* `fit`: images per second of `keras_fmicl.ContrastiveModel.fit` (SimCLR
  method, `FMICLLoss("js")`, SGD with momentum 0.9, a `ProjectionHead` to
  128 dimensions) on synthetic pre-drawn views, for the CIFAR ResNet-18 at
  32 px, ResNet-50 at 96 px and ViT-S/16 at 224 px, in float32 and under
  `keras.mixed_precision` policy `mixed_bfloat16`. A first `fit` of
  `warmup` steps (compilation included) is timed apart; then one `fit` of
  `steps` steps is timed, to the end of its last update. Two views per
  sample count as two images.
* `loss`: one forward + backward of the loss alone at N = 4096 and 16384
  (`(N, 2, 128)` float32 embeddings): `FMICLLoss("js")`, `InfoNCELoss`,
  keras-cv's `SimCLRLoss` (when importable) and the matmul floor, timed by
  `benchmarks/loss_speed.py`'s own functions (`make_runner`,
  `time_interleaved`; on a CUDA torch the input lives on the GPU).
* `quality`: with the time left, Fashion-MNIST pretraining of the CIFAR
  ResNet-18 with InfoNCE and with f-MICL KL for a fixed number of epochs
  (views drawn on the accelerator by `SimCLRAugmentation`), scored by
  weighted kNN (k = 200, T = 0.1) on the test split. The data come from a
  compressed `.npz` written by `--prepare` (the lent machine has no copy of
  Fashion-MNIST and no network); without it the part is `skipped`.

A time budget (`--budget-seconds`) bounds the whole run: the fit and loss
parts of all backends share its first 70 %, the quality part gets the
rest; a measurement that cannot start in time is reported as `skipped`, and
workers are killed at their deadline, keeping what they had measured.

    python benchmarks/device_benchmark.py --prepare      # here: the .npz
    bash benchmarks/device.sh                            # there (see README)
    python benchmarks/device_benchmark.py --smoke        # CPU, tiny, < 1 min

Writes `device_benchmark.json`, `device_benchmark.md` and
`device_benchmark.log` (the workers' stderr) to `--output-dir`.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.util
import inspect
import json
import os
import subprocess
import sys
import time

SCRIPT = os.path.abspath(__file__)
ROOT = os.path.dirname(os.path.dirname(SCRIPT))
if ROOT not in sys.path:  # run as a script: python benchmarks/device_benchmark.py
    sys.path.append(ROOT)
from benchmarks import harness  # noqa: E402
from benchmarks import loss_speed  # noqa: E402
from examples.registry_names import BACKENDS  # noqa: E402

DEFAULT_DATA = os.path.join(ROOT, ".device_data", "fashion_mnist.npz")
DEFAULT_OUTPUT_DIR = os.path.join(harness.RESULTS_DIR, "device")
DEFAULT_BUDGET = 440.0
SMOKE_BUDGET = 240.0
RUN_ORDER = ("torch", "jax", "tensorflow")  # eager torch first: it leaves time over
DTYPES = ("float32", "mixed_bfloat16")
PROJECTION_DIM = 128
# (name, keras_fmicl.layers builder, image shape, batch size, timed steps,
# warm-up steps, builder arguments)
MODELS = (
    ("resnet18_32", "resnet18", (32, 32, 3), 512, 20, 3, {"variant": "cifar"}),
    ("resnet50_96", "resnet50", (96, 96, 3), 256, 10, 2, {}),
    ("vit_s16_224", "vit_small", (224, 224, 3), 128, 10, 2, {}),
)
# --smoke: the same models, tiny (arguments a builder does not take are dropped)
SMOKE_MODELS = (
    ("resnet18_32", "resnet18", (8, 8, 3), 8, 2, 1, {"variant": "cifar", "width": 4}),
    ("resnet50_96", "resnet50", (32, 32, 3), 4, 2, 1, {"width": 4}),
    ("vit_s16_224", "vit_small", (32, 32, 3), 4, 2, 1,
     {"depth": 1, "patch_size": 8, "width": 32, "num_heads": 2, "mlp_dim": 64}),
)
LOSS_CONFIGS = ("fmicl/js/gaussian", loss_speed.INFO_NCE, loss_speed.SIMCLR, loss_speed.FLOOR)
LOSS_SIZES = (4096, 16384)
SMOKE_LOSS_SIZES = (16, 32)
QUALITY_LOSSES = ("infonce", "kl")
QUALITY = {"epochs": 10, "batch_size": 512, "width": 64, "train": 20000, "test": 10000}
SMOKE_QUALITY = {"epochs": 1, "batch_size": 16, "width": 4, "train": 64, "test": 32}
FIT_LOSS_SHARE = 0.7  # of the budget, for the fit and loss parts of every backend
LOSS_SHARE = 0.2  # of a backend's slot, at most, for its loss part (it runs first)
GRACE = 20.0  # seconds past its deadline before a worker is killed
MIN_START = 15.0  # a measurement starts only with this many seconds left (smoke: 0)
# lightly's CIFAR-10 benchmark (docs/source/getting_started/benchmarks.rst):
# SimCLR, CIFAR ResNet-18, batch 512, 200 epochs in 87.1 min on one RTX A6000,
# kNN evaluation every epoch included.
LIGHTLY_EPOCH_SECONDS = 87.1 * 60 / 200
CIFAR10_TRAIN_IMAGES = 50000


# ---------------------------------------------------------------------------
# Worker: one backend per process.
# ---------------------------------------------------------------------------


def _short(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


class Report:
    """The worker's JSON, rewritten (atomically) after every measurement."""

    def __init__(self, path: str | None, data: dict):
        self.path, self.data = path, data

    def add(self, part: str, record: dict) -> None:
        self.data.setdefault(part, []).append(record)
        status = record["status"]
        what = " ".join(str(record.get(k)) for k in ("model", "dtype", "config", "n", "loss") if k in record)
        figure = record.get("images_per_second") or record.get("median_ms") or record.get("knn_top1")
        harness.log(f"[{self.data['backend']} {part}] {what}: {status} {figure if figure else record.get('reason', '')}")
        self.write()

    def write(self) -> None:
        if self.path is None:
            return
        tmp = self.path + ".tmp"
        harness.write_json(self.data, tmp, indent=1)
        os.replace(tmp, self.path)


def _has_time(deadline: float, smoke: bool) -> bool:
    return time.time() + (0.0 if smoke else MIN_START) < deadline


def device_info() -> dict:
    """The accelerators the backend of this process sees."""
    import keras

    backend = keras.backend.backend()
    info = {"backend": backend, "devices": []}
    try:
        if backend == "jax":
            import jax

            info["devices"] = [str(d.device_kind) for d in jax.devices()]
            info["platform"] = jax.default_backend()
        elif backend == "torch":
            import torch

            if torch.cuda.is_available():
                info["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            info["platform"] = "cuda" if torch.cuda.is_available() else "cpu"
        else:
            import tensorflow as tf

            info["devices"] = [d.name for d in tf.config.list_logical_devices("GPU")]
            info["platform"] = "gpu" if info["devices"] else "cpu"
    except Exception as error:  # noqa: BLE001 - recorded
        info["error"] = _short(error)
    return info


def _reset_peak_memory(backend: str) -> None:
    try:
        if backend == "torch":
            import torch

            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
        elif backend == "tensorflow":
            import tensorflow as tf

            if tf.config.list_logical_devices("GPU"):
                tf.config.experimental.reset_memory_stats("GPU:0")
    except Exception:  # noqa: BLE001 - memory figures are optional
        pass


def _peak_memory(backend: str) -> tuple[int | None, str | None]:
    """Peak accelerator memory in bytes and its scope (`measurement` or
    `process`: JAX's peak cannot be reset), or `(None, None)` on a CPU."""
    try:
        if backend == "torch":
            import torch

            if torch.cuda.is_available():
                return int(torch.cuda.max_memory_allocated()), "measurement"
        elif backend == "jax":
            import jax

            stats = jax.local_devices()[0].memory_stats() or {}
            if "peak_bytes_in_use" in stats:
                return int(stats["peak_bytes_in_use"]), "process"
        else:
            import tensorflow as tf

            if tf.config.list_logical_devices("GPU"):
                return int(tf.config.experimental.get_memory_info("GPU:0")["peak"]), "measurement"
    except Exception:  # noqa: BLE001
        pass
    return None, None


def _free(keras) -> None:
    keras.backend.clear_session()
    gc.collect()
    if keras.backend.backend() == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def build_encoder(keras_fmicl, builder: str, image_shape: tuple, kwargs: dict):
    """The encoder `keras_fmicl.layers.<builder>(input_shape=..., **kwargs)`,
    with the arguments it does not take dropped; and the arguments used.

    Raises:
        LookupError: the builder does not exist in this checkout.
    """
    function = getattr(keras_fmicl.layers, builder, None)
    if function is None:
        raise LookupError(f"keras_fmicl.layers.{builder} does not exist in this checkout")
    parameters = inspect.signature(function).parameters
    used = {k: v for k, v in kwargs.items() if k in parameters}
    return function(input_shape=image_shape, **used), used


def time_fit(model_spec: tuple, dtype: str, smoke: bool) -> dict:
    """Images per second of `ContrastiveModel.fit` for one model and dtype policy."""
    import keras
    import numpy as np

    import keras_fmicl

    name, builder, image_shape, batch, steps, warmup, kwargs = model_spec
    backend = keras.backend.backend()
    record = {"backend": backend, "model": name, "builder": builder, "dtype": dtype,
              "image_shape": list(image_shape), "batch_size": batch, "steps": steps, "warmup": warmup}  # fmt: skip
    keras.config.set_dtype_policy(dtype)
    try:
        keras.utils.set_random_seed(0)
        encoder, record["encoder_kwargs"] = build_encoder(keras_fmicl, builder, image_shape, kwargs)
        record["encoder_parameters"] = int(encoder.count_params())
        projector = keras_fmicl.ProjectionHead(encoder.output_shape[-1], 16 if smoke else PROJECTION_DIM)
        model = keras_fmicl.ContrastiveModel(encoder, method=keras_fmicl.methods.SimCLR(), projector=projector)
        model.compile(
            optimizer=keras.optimizers.SGD(learning_rate=0.05, momentum=0.9),
            loss=keras_fmicl.FMICLLoss("js"),
        )
        views = np.random.default_rng(0).random((steps * batch, 2) + tuple(image_shape), dtype="float32")
        _reset_peak_memory(backend)
        start = time.perf_counter()
        model.fit(views[: warmup * batch], batch_size=batch, epochs=1, verbose=0, shuffle=False)
        keras.ops.convert_to_numpy(model.trainable_variables[-1])  # waits for the last update
        record["warmup_seconds"] = time.perf_counter() - start
        start = time.perf_counter()
        history = model.fit(views, batch_size=batch, epochs=1, verbose=0, shuffle=False)
        keras.ops.convert_to_numpy(model.trainable_variables[-1])
        seconds = time.perf_counter() - start
        record["peak_memory_bytes"], record["peak_memory_scope"] = _peak_memory(backend)
        record.update(
            status="ok",
            seconds=seconds,
            step_ms=1e3 * seconds / steps,
            images_per_second=2 * batch * steps / seconds,
            jit_compile=bool(model.jit_compile),
            final_loss=float(history.history["loss"][-1]),
        )
    except LookupError as error:
        record.update(status="unavailable", reason=str(error))
    except Exception as error:  # noqa: BLE001 - recorded (an out-of-memory error, say)
        record.update(status="error", reason=_short(error))
    finally:
        keras.config.set_dtype_policy("float32")
        model = encoder = projector = None
        _free(keras)
    return record


def fit_part(options: dict, report: Report, deadline: float) -> None:
    for spec in options["models"]:
        for dtype in options["dtypes"]:
            if not _has_time(deadline, options["smoke"]):
                report.add("fit", {"backend": report.data["backend"], "model": spec[0], "dtype": dtype,
                                   "status": "skipped", "reason": "time budget"})  # fmt: skip
                continue
            report.add("fit", time_fit(tuple(spec), dtype, options["smoke"]))


def _torch_cuda_runner(config: str, y_np):
    """loss_speed.make_runner's eager torch runner, with the input on the GPU."""
    import torch

    x = torch.from_numpy(y_np).to("cuda")
    if config == loss_speed.FLOOR:

        def run_floor():
            with torch.no_grad():
                loss_speed.matmul_floor(x)
            torch.cuda.synchronize()

        return run_floor
    loss_fn = loss_speed.make_loss_fn(config)

    def run():
        leaf = x.detach().requires_grad_(True)
        value = loss_fn(leaf)
        torch.autograd.grad(value, leaf)
        torch.cuda.synchronize()
        return float(value.detach())

    return run


def make_loss_runner(backend: str, config: str, y_np):
    """One forward + backward of `config`, compiled as loss_speed.py does
    (JAX: jit; TensorFlow: XLA; torch: eager)."""
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return _torch_cuda_runner(config, y_np)
    return loss_speed.make_runner(backend, loss_speed.MODES[backend][0], config, y_np)


def loss_part(options: dict, report: Report, deadline: float) -> None:
    backend = report.data["backend"]
    smoke = options["smoke"]
    for n in options["loss_sizes"]:
        base = {"backend": backend, "mode": loss_speed.MODES[backend][0], "n": n, "dim": loss_speed.DIM}
        if not _has_time(deadline, smoke):
            for config in LOSS_CONFIGS:
                report.add("loss", dict(base, config=config, status="skipped", reason="time budget"))
            continue
        y_np = loss_speed.make_embeddings(n)
        runners, records = {}, {}
        for config in LOSS_CONFIGS:
            records[config] = dict(base, config=config)
            try:
                runners[config] = make_loss_runner(backend, config, y_np)
            except ImportError as error:
                records[config].update(status="unavailable", reason=_short(error))
            except Exception as error:  # noqa: BLE001
                records[config].update(status="error", reason=_short(error))
        repeats, warmup = (2, 0) if smoke else (5, 2)
        timings = loss_speed.time_interleaved(runners, repeats, warmup, max_seconds=10.0)
        runners = None
        gc.collect()
        for config in LOSS_CONFIGS:
            record = records[config]
            timing = timings.get(config, {})
            if "error" in timing:
                record.update(status="error", reason=timing["error"].splitlines()[-1][:300])
            elif "median_ms" in timing:
                record.update(timing, status="ok", interleaved=True)
            report.add("loss", record)


def load_quality_data(path: str, limits: dict):
    """`(train_x, train_y), (test_x, test_y)` from the `--prepare` file:
    float32 images in [0, 1], (N, 28, 28, 1)."""
    import numpy as np

    with np.load(path) as data:
        train = data["train_x"][: limits["train"]], data["train_y"][: limits["train"]]
        test = data["test_x"][: limits["test"]], data["test_y"][: limits["test"]]
    return [(x.astype("float32") / 255.0, y.astype("int64")) for x, y in (train, test)]


def _deadline_callback(keras, deadline: float):
    """Stops `fit` after an epoch when another as long would pass `deadline`."""

    class Deadline(keras.callbacks.Callback):
        epochs_done = 0

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.time()

        def on_epoch_end(self, epoch, logs=None):
            self.epochs_done = epoch + 1
            if 2 * time.time() - self.started > deadline:
                self.model.stop_training = True

    return Deadline()


def train_and_score(loss_name: str, data, settings: dict, deadline: float) -> dict:
    """Pretrains the CIFAR ResNet-18 on Fashion-MNIST with one loss; kNN top-1."""
    import keras

    import keras_fmicl

    (train_x, train_y), (test_x, test_y) = data
    batch, epochs = settings["batch_size"], settings["epochs"]
    record = {"backend": keras.backend.backend(), "loss": loss_name, "epochs": epochs, "batch_size": batch,
              "train_images": len(train_x), "test_images": len(test_x), "width": settings["width"]}  # fmt: skip
    keras.utils.set_random_seed(0)
    augmenter = keras_fmicl.SimCLRAugmentation(
        image_size=train_x.shape[1:3], crop_scale=(0.3, 1.0), grayscale_probability=0.0,
        value_range=(0.0, 1.0), seed=0,
    )  # fmt: skip
    encoder = keras_fmicl.layers.resnet18(train_x.shape[1:], variant="cifar", width=settings["width"])
    model = keras_fmicl.ContrastiveModel(
        encoder, method=keras_fmicl.methods.SimCLR(), augmenter=augmenter,
        projector=keras_fmicl.ProjectionHead(encoder.output_shape[-1], PROJECTION_DIM),
    )  # fmt: skip
    steps = max(1, len(train_x) // batch)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=epochs * steps, warmup_target=2e-3, warmup_steps=steps
    )
    loss = keras_fmicl.InfoNCELoss() if loss_name == "infonce" else keras_fmicl.FMICLLoss(loss_name)
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-4), loss=loss)
    stopper = _deadline_callback(keras, deadline)
    start = time.perf_counter()
    history = model.fit(train_x[: steps * batch], batch_size=batch, epochs=epochs, shuffle=True,
                        verbose=0, callbacks=[stopper])  # fmt: skip
    record["pretrain_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    train_features = keras_fmicl.evaluation.extract_features(encoder, train_x)
    test_features = keras_fmicl.evaluation.extract_features(encoder, test_x)
    knn = keras_fmicl.knn_accuracy(train_features, train_y, test_features, test_y, k=200, temperature=0.1)
    record.update(
        eval_seconds=time.perf_counter() - start,
        epochs_done=stopper.epochs_done,
        final_loss=float(history.history["loss"][-1]),
        knn_top1=float(knn),
        status="ok" if stopper.epochs_done == epochs else "partial",
        reason=None if stopper.epochs_done == epochs else "time budget: stopped early",
    )
    return record


def quality_part(options: dict, report: Report, deadline: float) -> None:
    import keras

    settings = options["quality"]
    base = {"backend": report.data["backend"], "epochs": settings["epochs"]}
    data = None
    if not os.path.exists(options["data"]):
        reason = f"no data: {options['data']} is missing (run benchmarks/device.sh --prepare, carry .device_data)"
    else:
        data, reason = load_quality_data(options["data"], settings), None
    for i, loss_name in enumerate(QUALITY_LOSSES):
        record = dict(base, loss=loss_name)
        if data is None:
            report.add("quality", dict(record, status="skipped", reason=reason))
            continue
        # each run gets an equal share of what is left
        run_deadline = time.time() + (deadline - time.time()) / (len(QUALITY_LOSSES) - i)
        if not _has_time(run_deadline, options["smoke"]):
            report.add("quality", dict(record, status="skipped", reason="time budget"))
            continue
        try:
            record = train_and_score(loss_name, data, settings, run_deadline)
        except Exception as error:  # noqa: BLE001
            record.update(status="error", reason=_short(error))
        finally:
            _free(keras)
        report.add("quality", record)


def run_worker(options: dict, output: str | None) -> dict:
    """Runs the parts named in `options["parts"]` until their deadlines."""
    import keras

    report = Report(output, {"backend": keras.backend.backend(), "versions": harness.versions(),
                             "device": device_info(), "fit": [], "loss": [], "quality": []})  # fmt: skip
    report.write()
    parts = {"loss": loss_part, "fit": fit_part, "quality": quality_part}
    for part in options["parts"]:
        parts[part](options, report, options["deadlines"][part])
    return report.data


# ---------------------------------------------------------------------------
# Driver.
# ---------------------------------------------------------------------------


def availability(backends: list[str]) -> dict:
    """`{backend: None or the reason it is unavailable}`, without importing."""
    keras_missing = importlib.util.find_spec("keras") is None
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}
    reasons = {}
    for backend in backends:
        if keras_missing:
            reasons[backend] = "keras is not installed"
        elif importlib.util.find_spec(module[backend]) is None:
            reasons[backend] = f"{module[backend]} is not installed"
        else:
            reasons[backend] = None
    return reasons


def unavailable_rows(reasons: dict) -> dict:
    """One `unavailable` row per part for each backend that cannot run."""
    return {
        part: [{"backend": b, "status": "unavailable", "reason": r} for b, r in reasons.items() if r is not None]
        for part in ("fit", "loss", "quality")
    }


def gpu_info() -> list[str] | None:
    """nvidia-smi's name, memory and driver of each GPU; None without one."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] or None


def worker_options(args: argparse.Namespace) -> dict:
    models = SMOKE_MODELS if args.smoke else MODELS
    return {
        "smoke": args.smoke,
        "models": [list(m) for m in models if m[0] in args.models],
        "dtypes": args.dtypes,
        "loss_sizes": args.loss_sizes,
        "data": args.data,
        "quality": dict(SMOKE_QUALITY if args.smoke else QUALITY, epochs=args.quality_epochs),
    }


def _launch(backend: str, options: dict, parts: list, deadlines: dict, log_path: str) -> dict:
    options = dict(options, parts=parts, deadlines=deadlines)
    timeout = max(deadlines.values()) - time.time() + GRACE
    env_flags = ["--worker", "--worker-options", json.dumps(options)]
    return harness.stream_worker(SCRIPT, backend, env_flags, timeout, "[", log_path)


def _merge(report: dict, backend: str, worker: dict) -> None:
    for part in ("fit", "loss", "quality"):
        report[part].extend(worker.get(part, []))
    report["workers"][backend] = {k: worker.get(k) for k in ("device", "versions", "error", "stderr_tail")}


def run_driver(args: argparse.Namespace) -> dict:
    start = time.time()
    options = worker_options(args)
    reasons = availability(args.backends)
    report = {
        "benchmark": "device",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": harness.git_commit(),
        "machine": harness.machine_info(),
        "gpus": gpu_info(),
        "versions": harness.versions(),
        "settings": dict(options, backends=args.backends, budget_seconds=args.budget_seconds),
        "availability": reasons,
        "workers": {},
        "fit": [],
        "loss": [],
        "quality": [],
    }
    log_path = os.path.join(args.output_dir, "device_benchmark.log")
    open(log_path, "w").close()
    available = [b for b in sorted(args.backends, key=RUN_ORDER.index) if reasons[b] is None]
    for part, rows in unavailable_rows(reasons).items():
        report[part].extend(rows)
    fit_loss_end = start + FIT_LOSS_SHARE * args.budget_seconds
    quality_end = start + args.budget_seconds - 5.0
    quality_backend = args.quality_backend or next((b for b in ("jax", "torch", "tensorflow") if b in available), None)
    if quality_backend in available:  # its worker runs last and goes on with the quality part
        available.remove(quality_backend)
        available.append(quality_backend)
    for i, backend in enumerate(available):
        now = time.time()
        slot = max(0.0, fit_loss_end - now) / (len(available) - i)
        parts, deadlines = ["loss", "fit"], {"loss": now + LOSS_SHARE * slot, "fit": now + slot}
        if backend == quality_backend:
            parts.append("quality")
            deadlines["quality"] = quality_end
        harness.log(f"== {backend}: {', '.join(parts)} ({slot:.0f} s for loss and fit)")
        _merge(report, backend, _launch(backend, options, parts, deadlines, log_path))
    if available and quality_backend not in available:
        report["quality"].append({"backend": quality_backend, "status": "unavailable",
                                  "reason": f"backend {quality_backend} is not available"})  # fmt: skip
    report["total_seconds"] = time.time() - start
    return report


# ---------------------------------------------------------------------------
# Markdown.
# ---------------------------------------------------------------------------


def _num(value, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _status(record: dict) -> str:
    reason = record.get("reason")
    return record["status"] + (f" ({reason})" if reason and record["status"] != "ok" else "")


def fit_table(records: list) -> list[str]:
    lines = [
        harness.table_row(["backend", "model", "input", "batch", "dtype", "images/s", "ms/step",
                           "warm-up s", "CIFAR-10 epoch s", "peak GPU GiB", "status"]),
        harness.table_rule("lllrlrrrrrl"),
    ]  # fmt: skip
    for r in records:
        rate = r.get("images_per_second")
        epoch = 2 * CIFAR10_TRAIN_IMAGES / rate if rate and r.get("model") == "resnet18_32" else None
        memory = r.get("peak_memory_bytes")
        shape = r.get("image_shape")
        cells = [r["backend"], r.get("model", "–"), "x".join(map(str, shape)) if shape else "–",
                 r.get("batch_size", "–"), r.get("dtype", "–"), _num(rate), _num(r.get("step_ms"), 1),
                 _num(r.get("warmup_seconds"), 1), _num(epoch, 1),
                 _num(memory / 2**30, 1) + (" (process)" if r.get("peak_memory_scope") == "process" else "")
                 if memory else "–", _status(r)]  # fmt: skip
        lines.append(harness.table_row(cells))
    return lines


def loss_table(records: list) -> list[str]:
    lines = [
        harness.table_row(["backend", "mode", "loss", "N", "median ms (min)", "÷ SimCLR", "÷ floor", "status"]),
        harness.table_rule("lllrrrrl"),
    ]
    index = {(r["backend"], r.get("config"), r.get("n")): r for r in records}
    for r in records:
        ratios = []
        for reference in (loss_speed.SIMCLR, loss_speed.FLOOR):
            other = index.get((r["backend"], reference, r.get("n")), {})
            ok = "median_ms" in r and "median_ms" in other and r.get("config") != reference
            ratios.append(_num(loss_speed.paired_ratio(r, other), 2) if ok else "–")
        timing = f"{r['median_ms']:.3g} ({r['min_ms']:.3g})" if "median_ms" in r else "–"
        cells = [r["backend"], r.get("mode", "–"), r.get("config", "–"), r.get("n", "–"), timing, *ratios, _status(r)]
        lines.append(harness.table_row(cells))
    return lines


def quality_table(records: list) -> list[str]:
    lines = [
        harness.table_row(["backend", "loss", "epochs (done)", "train / test images", "kNN top-1",
                           "pretrain s", "status"]),
        harness.table_rule("llrrrrl"),
    ]  # fmt: skip
    for r in records:
        knn = r.get("knn_top1")
        images = f"{r['train_images']} / {r['test_images']}" if "train_images" in r else "–"
        epochs = f"{r.get('epochs', '–')} ({r['epochs_done']})" if "epochs_done" in r else str(r.get("epochs", "–"))
        cells = [r["backend"], r.get("loss", "–"), epochs, images, "–" if knn is None else f"{100 * knn:.2f} %",
                 _num(r.get("pretrain_seconds"), 1), _status(r)]  # fmt: skip
        lines.append(harness.table_row(cells))
    return lines


def markdown(report: dict) -> str:
    settings = report["settings"]
    gpus = ", ".join(report.get("gpus") or []) or "no GPU (nvidia-smi absent)"
    parts = [
        f"## Device benchmark — {report['date']}\n",
        f"{gpus}; {report['machine'].get('cpu_count')} CPUs; commit {report.get('commit')}; "
        f"budget {settings['budget_seconds']:.0f} s, ran {report.get('total_seconds', 0):.0f} s"
        f"{'; SMOKE (tiny sizes, not a measurement)' if settings['smoke'] else ''}.\n",
        "### ContrastiveModel.fit (SimCLR, FMICLLoss(\"js\"), synthetic views)\n",
        *fit_table(report["fit"]),
        f"\nCIFAR-10 epoch s: 2 x {CIFAR10_TRAIN_IMAGES:,} views / images/s (ResNet-18 rows). lightly's "
        f"CIFAR-10 benchmark: SimCLR, CIFAR ResNet-18, batch 512, 200 epochs in 87.1 min on one RTX A6000 "
        f"= {LIGHTLY_EPOCH_SECONDS:.1f} s per epoch with its kNN evaluation "
        f"(>= {2 * CIFAR10_TRAIN_IMAGES / LIGHTLY_EPOCH_SECONDS:,.0f} images/s).\n",
        "### The loss alone: forward + backward, (N, 2, 128) float32\n",
        *loss_table(report["loss"]),
        "",
        "### Fashion-MNIST quality: CIFAR ResNet-18, InfoNCE vs f-MICL KL, kNN (k = 200)\n",
        *quality_table(report["quality"]),
        "",
    ]
    for name, worker in report.get("workers", {}).items():
        if worker.get("error"):
            parts.append(f"**{name} worker**: {worker['error']}\n")
    return "\n".join(parts)


# ---------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------


def prepare(path: str, train: int, test: int) -> None:
    """Writes the Fashion-MNIST subset the lent machine reads (compressed .npz)."""
    import numpy as np

    import keras_fmicl

    (train_x, train_y), (test_x, test_y) = (keras_fmicl.data.load("fashion_mnist", s) for s in ("train", "test"))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez_compressed(path, train_x=train_x[:train], train_y=train_y[:train], test_x=test_x[:test],
                        test_y=test_y[:test])  # fmt: skip
    harness.log(f"wrote {path}: {min(train, len(train_x))} training and {min(test, len(test_x))} test "
                f"images, {os.path.getsize(path) / 2**20:.1f} MiB")  # fmt: skip


def _names(allowed: tuple):
    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        if not values or any(v not in allowed for v in values):
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {', '.join(allowed)}. "
                                             f"Received: {text!r}")  # fmt: skip
        return values

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on any machine (< 1 min on 2 CPUs)")
    parser.add_argument("--prepare", action="store_true", help="write the Fashion-MNIST subset to --data, then stop")
    parser.add_argument("--backends", type=_names(BACKENDS), default=list(RUN_ORDER))
    parser.add_argument("--models", type=_names(tuple(m[0] for m in MODELS)), default=[m[0] for m in MODELS])
    parser.add_argument("--dtypes", type=_names(DTYPES), default=list(DTYPES))
    parser.add_argument("--loss-sizes", type=lambda t: [int(v) for v in t.split(",")], default=None)
    parser.add_argument("--budget-seconds", type=float, default=None,
                        help=f"time for everything (default {DEFAULT_BUDGET:.0f}; smoke {SMOKE_BUDGET:.0f})")
    parser.add_argument("--quality-backend", choices=BACKENDS, default=None,
                        help="backend of the Fashion-MNIST runs (default: jax, else torch, else tensorflow)")
    parser.add_argument("--quality-epochs", type=int, default=None)
    parser.add_argument("--data", default=DEFAULT_DATA, help="the .npz written by --prepare")
    parser.add_argument("--train-images", type=int, default=QUALITY["train"], help="--prepare: training images kept")
    parser.add_argument("--output-dir", default=None, help=f"default $OUT, else {DEFAULT_OUTPUT_DIR}")
    harness.add_worker_flags(parser)
    parser.add_argument("--worker-options", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.loss_sizes is None:
        args.loss_sizes = list(SMOKE_LOSS_SIZES if args.smoke else LOSS_SIZES)
    if args.budget_seconds is None:
        args.budget_seconds = SMOKE_BUDGET if args.smoke else DEFAULT_BUDGET
    if args.quality_epochs is None:
        args.quality_epochs = (SMOKE_QUALITY if args.smoke else QUALITY)["epochs"]
    if args.output_dir is None:
        args.output_dir = os.environ.get("OUT") or DEFAULT_OUTPUT_DIR
    if args.budget_seconds <= 0 or args.quality_epochs < 1:
        parser.error("--budget-seconds must be > 0 and --quality-epochs >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        run_worker(json.loads(args.worker_options), args.worker_output)
        return 0
    if args.prepare:
        prepare(args.data, args.train_images, QUALITY["test"])
        return 0
    if args.smoke:
        # tiny shapes: XLA's CPU optimisation passes would be most of the time,
        # and more than one thread per worker only waits on the others
        os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.makedirs(args.output_dir, exist_ok=True)
    report = run_driver(args)
    text = markdown(report)
    harness.write_json(report, os.path.join(args.output_dir, "device_benchmark.json"), indent=1)
    with open(os.path.join(args.output_dir, "device_benchmark.md"), "w") as f:
        f.write(text)
    print(text)
    harness.log(f"wrote {args.output_dir}/device_benchmark.{{json,md,log}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
