"""Everything around the example scripts' training recipes: the run's plumbing.

Flag errors, the backend choice, quiet framework start-up, data-parallel
set-up, the run folder (flags.json, the checkpoint that `--resume` continues,
history.csv), the summary table and the exit-code protocol; the figures
are in `_figures.py`.

`examples/train_cifar.py` and `examples/train_sentences.py` import this
module (their own folder is put on `sys.path` first, so it is found however
the script is started). It imports neither Keras nor a framework at import;
the functions that need one import it when called.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import re
import sys
import tempfile
from typing import Callable, Iterator


class FlagError(ValueError):
    """A bad flag value: reported as one sentence."""


class RunDiverged(RuntimeError):
    """Training produced a non-finite loss: the run stops (exit status 1)."""


class RunComplete(Exception):
    """`--resume` of a run that has already finished: said, exit status 0."""


def check_positive(values: dict) -> None:
    """Each `--name` of `values` (name -> value; None: unset) is a positive, finite number."""
    for name, value in values.items():
        if value is not None and not value > 0:
            raise FlagError(f"--{name} must be positive, got {value}.")
        if value is not None and not math.isfinite(value):
            raise FlagError(f"--{name} must be a finite number, got {value}.")


def check_at_least_two(values: dict, samples: str) -> None:
    """Each set `--name` of `values` is at least 2: a batch's other `samples` are each one's negatives."""
    for name, value in values.items():
        if value is not None and value < 2:
            raise FlagError(
                f"--{name} must be at least 2 (a batch's other {samples} are each one's negatives), got {value}."
            )


def check_finite(values: dict) -> None:
    """Each float `--name` of `values` is finite (inf and nan are no settings)."""
    for name, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise FlagError(f"--{name} must be a finite number, got {value}.")


def refuse_ignored_flags(flags_object, rules) -> None:
    """Refuses a flag the user set (`FLAGS[name].present`) that the run would ignore.

    `rules` holds `(name, applies, when)`: `--name` is ignored unless
    `applies`; `when` says when it applies (e.g. "--loss fmicl").
    """
    for name, applies, when in rules:
        if flags_object[name].present and not applies:
            raise FlagError(f"--{name} is ignored by this run: it applies only with {when} (drop --{name}).")


def loss_flag_rules(flags_object) -> list:
    """The `refuse_ignored_flags` rules of the loss flags: --divergence and
    --tsallis_order are f-MICL's, --sigma the Gaussian similarity's,
    --temperature the cosine one's."""
    similarity = flags_object.similarity or ("gaussian" if flags_object.loss == "fmicl" else "cosine")
    return [
        ("divergence", flags_object.loss == "fmicl", "--loss fmicl"),
        ("tsallis_order", flags_object.loss == "fmicl" and flags_object.divergence == "tsallis",
         "--loss fmicl --divergence tsallis"),
        ("sigma", similarity == "gaussian", "--similarity gaussian (the default of --loss fmicl)"),
        ("temperature", similarity == "cosine", "--similarity cosine (the default of --loss infonce)"),
    ]


def check_batch(batch_size: int, samples: int, what: str = "training samples") -> None:
    """A contrastive batch needs at least 2 samples: the others are the negatives."""
    if min(batch_size, samples) < 2:
        raise FlagError(
            f"a batch needs at least 2 samples (each one's negatives are the others), but --batch_size "
            f"{batch_size} with {samples} {what} gives {min(batch_size, samples)}."
        )


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


def import_frameworks(debug: bool, seed: int):
    """(keras, numpy, keras_fmicl), imported quietly (see `quiet_native_logging`).

    TensorFlow is imported too, if installed, whatever the backend:
    `keras.utils.set_random_seed` (called here with `seed`) and tf.data
    import it anyway, and its C++ start-up lines (and its CUDA probing,
    done now) fall in the quiet window only when it happens here. The
    backend must be selected first (`select_backend`).
    """
    with quiet_native_logging(debug):
        import keras
        import numpy as np

        import keras_fmicl

        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # probes CUDA now, quietly
        except ImportError:
            pass
        keras.utils.set_random_seed(seed)
    return keras, np, keras_fmicl


def backend_version_and_device(backend: str) -> tuple:
    """(version of the backend's framework, the device it computes on), for results.json."""
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return jax.__version__, f"{device.platform}: {getattr(device, 'device_kind', device)} x {jax.device_count()}"
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return torch.__version__, f"cuda: {torch.cuda.get_device_name(0)} x {torch.cuda.device_count()}"
        return torch.__version__, "cpu"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
        return tf.__version__, f"gpu: {name} x {len(gpus)}"
    return tf.__version__, "cpu"


class Distribution:
    """What `--distribute` set up: a scope to build the model in, this
    process's rank and the number of processes that split the data."""

    def __init__(self, scope=None, rank=0, processes=1, description="one device"):
        self.scope = scope or contextlib.nullcontext()
        self.rank = rank
        self.processes = processes
        self.description = description


def setup_distribution(backend: str, batch_size: int, script: str) -> Distribution:
    """Data-parallel training with the backend's engine (`--distribute`).

    tf.distribute (MultiWorkerMirroredStrategy when TF_CONFIG is set, else
    TPUStrategy on a TPU, else MirroredStrategy), keras.distribution's
    DataParallel over every JAX device, or torch.distributed in a process
    that `torchrun` launched (`script` is named in the hint when it was
    not; `batch_size`, the global batch, must split evenly).
    """
    if backend == "tensorflow":
        import tensorflow as tf

        if "TF_CONFIG" in os.environ:
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
            name = "MultiWorkerMirroredStrategy"
        else:
            try:
                resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
                tf.config.experimental_connect_to_cluster(resolver)
                tf.tpu.experimental.initialize_tpu_system(resolver)
                strategy, name = tf.distribute.TPUStrategy(resolver), "TPUStrategy"
            except (ValueError, RuntimeError, tf.errors.NotFoundError):
                strategy, name = tf.distribute.MirroredStrategy(), "MirroredStrategy"
        # every worker reads the whole dataset; tf.distribute splits each global batch
        return Distribution(
            strategy.scope(), description=f"{name}, {strategy.num_replicas_in_sync} replicas"
        )
    if backend == "jax":
        import jax
        import keras

        if "KERAS_DISTRIBUTION_JOB_ADDRESSES" in os.environ:
            keras.distribution.initialize()
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
        return Distribution(description=f"keras.distribution.DataParallel, {len(jax.devices())} devices")
    import torch
    import torch.distributed as dist

    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise FlagError(f"--distribute on the torch backend needs a launcher: torchrun --nproc_per_node=N {script} ...")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if batch_size % world:
        raise FlagError(f"--batch_size ({batch_size}) must be a multiple of the {world} processes.")
    return Distribution(rank=rank, processes=world, description=f"torch.distributed, {world} processes")


def leave_process_group() -> None:
    """Leaves the torch.distributed process group `setup_distribution` joined, if any."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def per_dataset_help(presets: dict, name: str) -> str:
    """'default per --dataset: fashion_mnist 12, digits 10, cifar10/cifar100/... 200', for a flag's --help."""
    groups = {}
    for dataset, preset in presets.items():
        groups.setdefault(str(preset[name]), []).append(dataset)
    return "default per --dataset: " + ", ".join(f"{'/'.join(names)} {value}" for value, names in groups.items())


# ------------------------------------------------------------- run folder

FLAGS_FILE = "flags.json"
RESULTS_FILE = "results.json"
# Flags that may change between a run and its --resume: where things are,
# how much is printed.
NOT_COMPARED = ("output_dir", "resume", "verbose", "debug", "data_dir")


def loss_tag(loss: str, divergence: str, similarity: str | None, tsallis_order: float) -> str:
    """'fmicl-kl-gaussian', 'fmicl-tsallis1.5-cosine' or 'infonce-cosine' (for folder names)."""
    similarity = similarity or ("gaussian" if loss == "fmicl" else "cosine")
    if loss == "infonce":
        return f"infonce-{similarity}"
    if divergence == "tsallis":
        divergence = f"tsallis{tsallis_order:g}"
    return f"fmicl-{divergence}-{similarity}"


def default_output_dir(*parts: str) -> str:
    """`runs/<part>_<part>_...`: the name a run's folder takes without
    `--output_dir`, before its counter (`_1`, `_2`, ...)."""
    return os.path.join("runs", "_".join(parts))


def numbered_folders(prefix: str) -> list:
    """The existing `<prefix>_<N>` folders, by N."""
    parent, base = os.path.split(prefix)
    pattern = re.compile(re.escape(base) + r"_(\d+)")
    try:
        names = os.listdir(parent or ".")
    except OSError:
        return []
    found = [(int(m.group(1)), name) for name in names if (m := pattern.fullmatch(name))]
    return [os.path.join(parent, name) for _, name in sorted(found)]


def make_output_dir(path: str) -> list[str]:
    """Creates `path`; returns the folders this call created (deepest last)."""
    created = []
    head = os.path.abspath(path)
    while head and not os.path.exists(head):
        created.append(head)
        head = os.path.dirname(head)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise FlagError(f"--output_dir {path!r} cannot be created: {error.strerror or error}.") from None
    if not os.access(path, os.W_OK):
        raise FlagError(f"--output_dir {path!r} is not writable.")
    return created[::-1]


def new_numbered_folder(prefix: str) -> tuple[str, list[str]]:
    """Creates `<prefix>_<N>`, N the first free counter (1, 2, ...): a
    default-named run never writes into an earlier run's folder."""
    created = make_output_dir(os.path.dirname(prefix) or ".")
    existing = numbered_folders(prefix)
    number = int(existing[-1].rsplit("_", 1)[1]) + 1 if existing else 1
    while True:
        path = f"{prefix}_{number}"
        try:
            os.mkdir(path)  # atomic: two runs started at once get two folders
        except FileExistsError:
            number += 1
            continue
        except OSError as error:
            raise FlagError(f"the run folder {path!r} cannot be created: {error.strerror or error}.") from None
        return path, created + [os.path.abspath(path)]


def remove_if_empty(created: list[str]) -> None:
    """Removes the folders of `make_output_dir` that are still empty."""
    for folder in reversed(created):
        try:
            os.rmdir(folder)  # only succeeds on an empty folder
        except OSError:
            break


def write_json(path: str, data) -> None:
    """Writes `data` as JSON to `path` atomically (a kill leaves the old file or the new one)."""
    temporary = path + ".tmp"
    with open(temporary, "w") as f:
        json.dump(data, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def comparable(run_flags: dict) -> dict:
    """The flags two runs must share for one to continue the other (as JSON would hold them)."""
    return json.loads(json.dumps({k: v for k, v in run_flags.items() if k not in NOT_COMPARED}, default=str))


class Checkpoint:
    """`<run folder>/checkpoint/`: the state of the last completed epoch.

    The weights (the model's variables, the optimizer's included: its step
    drives the learning-rate schedule; the momentum encoder and the queue
    of MoCo) go to `epoch_<N>.weights.h5`, then `state.json` (the epoch
    and what the run logged so far) is replaced atomically and names that
    file: a kill at any point leaves a complete earlier checkpoint.
    """

    def __init__(self, folder: str):
        self.folder = os.path.join(folder, "checkpoint")
        self.state_path = os.path.join(self.folder, "state.json")

    def state(self) -> dict | None:
        """{"epoch": N, "weights": file name, "log": what the run logged}, or None."""
        if not os.path.isfile(self.state_path):
            return None
        return read_json(self.state_path)

    def save(self, model, epoch: int, log) -> None:
        os.makedirs(self.folder, exist_ok=True)
        weights = f"epoch_{epoch}.weights.h5"
        model.save_weights(os.path.join(self.folder, weights), overwrite=True)
        write_json(self.state_path, {"epoch": epoch, "weights": weights, "log": log})
        for name in os.listdir(self.folder):
            if name.endswith(".weights.h5") and name != weights:
                os.remove(os.path.join(self.folder, name))

    def restore(self, keras, model, x) -> None:
        """Loads the saved weights into `model` (compiled; built first on a
        batch of `x`, fit's input: a tf.data.Dataset or arrays), if any."""
        state = self.state()
        if state is None:
            return
        if not model.built:
            if hasattr(x, "element_spec"):  # a tf.data.Dataset: its first batch's inputs
                batch = next(iter(x.take(1)))
                batch = keras.utils.unpack_x_y_sample_weight(batch)[0] if isinstance(batch, tuple) else batch
            else:
                batch = keras.tree.map_structure(lambda array: array[:2], x)
            model(keras.tree.map_structure(lambda array: keras.ops.convert_to_numpy(array), batch))
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(os.path.join(self.folder, state["weights"]))

    def callback(self, keras, log: Callable[[], object]):
        """Saves the checkpoint at every epoch's end whose logs are finite
        (after the callbacks before it in the list; `log()` is what the run
        logged so far)."""
        checkpoint = self

        class _Callback(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if all(math.isfinite(float(v)) for v in (logs or {}).values()):
                    checkpoint.save(self.model, epoch + 1, log())

        return _Callback()


class RunFolder:
    """A run's output folder: `flags.json` (the run's flags), `checkpoint/`
    (see `Checkpoint`), the outputs, and `results.json` last.

    `open_run_folder` makes one; `start` is the epoch training starts
    from (0, or the checkpoint's with `--resume`) and `log` what the
    checkpoint logged before it (None on a fresh run).
    """

    def __init__(self, path: str, created=(), resumed: dict | None = None, writer: bool = True):
        self.path = path
        self.writer = writer
        self.created = list(created)
        self.checkpoint = Checkpoint(path)
        self.start = resumed["epoch"] if resumed else 0
        self.log = resumed["log"] if resumed else None
        self.resumed = resumed is not None

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def discard_if_untrained(self) -> None:
        """After a failure before any checkpoint: removes flags.json, the
        history so far and the folders this run created (if left empty)."""
        if self.checkpoint.state() is not None or self.resumed or not self.writer:
            return
        for name in (FLAGS_FILE, "history.csv"):
            with contextlib.suppress(OSError):
                os.remove(self.file(name))
        with contextlib.suppress(OSError):
            os.rmdir(self.checkpoint.folder)
        remove_if_empty(self.created)


def resumed_folder(output_dir: str | None, prefix: str, run_flags: dict) -> RunFolder:
    """The run `--resume` continues: `--output_dir`, else the last `<prefix>_<N>`."""
    if output_dir is None:
        folders = numbered_folders(prefix)
        if not folders:
            raise FlagError(f"--resume: there is no run {prefix}_<N> to continue; pass its --output_dir.")
        output_dir = folders[-1]
    if not os.path.isfile(os.path.join(output_dir, FLAGS_FILE)):
        raise FlagError(
            f"--resume: {output_dir!r} holds no run to continue (no {FLAGS_FILE}, no checkpoint); "
            "start the run without --resume."
        )
    saved = read_json(os.path.join(output_dir, FLAGS_FILE))
    before, now = comparable(saved), comparable(run_flags)
    differing = [name for name in sorted(set(before) | set(now)) if before.get(name) != now.get(name)]
    if differing:
        listed = ", ".join(f"--{name} (run: {before.get(name)!r}, now: {now.get(name)!r})" for name in differing)
        raise FlagError(
            f"--resume continues the run in {output_dir!r} with its own flags; these differ: {listed}. "
            f"Resume with the run's flags ({FLAGS_FILE}), or start a new run without --resume."
        )
    results = os.path.join(output_dir, RESULTS_FILE)
    if os.path.isfile(results):
        ending = "diverged" if read_json(results).get("diverged") else "finished"
        raise RunComplete(f"the run in {output_dir!r} is complete ({ending}; see {RESULTS_FILE}): nothing to resume.")
    state = Checkpoint(output_dir).state()
    if state is None:
        print(f"Resuming {output_dir}: no epoch was completed; training starts from the first.")
        state = {"epoch": 0, "log": None}
    else:
        print(f"Resuming {output_dir} after epoch {state['epoch']}.")
    return RunFolder(output_dir, resumed=state)


def open_run_folder(output_dir: str | None, prefix: str, resume: bool, run_flags: dict,
                    writer: bool = True) -> RunFolder:
    """The run's folder: with `resume` the run to continue (its flags must
    be `run_flags`); else a new one: `output_dir` (created; refused if it
    holds anything) or, without it, `<prefix>_<N>`. A new folder gets
    `flags.json` at once.

    A process that writes nothing (`writer=False`: a torch.distributed
    process other than the chief) neither creates nor checks a new folder.
    """
    if resume:
        return resumed_folder(output_dir, prefix, run_flags)
    if not writer:
        return RunFolder(output_dir or prefix, writer=False)
    if output_dir is None:
        path, created = new_numbered_folder(prefix)
    else:
        if os.path.isdir(output_dir) and os.listdir(output_dir):
            raise FlagError(
                f"--output_dir {output_dir!r} is not empty (an earlier run?); choose another folder, "
                "or pass --resume to continue the run in it."
            )
        path, created = output_dir, make_output_dir(output_dir)
    folder = RunFolder(path, created)
    write_json(folder.file(FLAGS_FILE), run_flags)
    return folder


def run_in_folder(folder: RunFolder, body: Callable[[RunFolder], object]):
    """`body(folder)`; a run that fails before its first checkpoint leaves no folder behind."""
    try:
        return body(folder)
    except RunDiverged:
        raise
    except BaseException:
        folder.discard_if_untrained()
        raise


def exit_code(script: str, argv: list[str], run: Callable[[], object]) -> int:
    """Runs `run()` as `main` does: 0, 1 after a diverged run, or 2 with
    one sentence on stderr.

    Errors a user can fix (a bad flag, a data set that cannot be loaded, a
    ValueError of the library) are printed as `<script>: error: ...`, as
    is a diverged run; `--resume` of a finished run says so (status 0);
    anything else propagates with its traceback.
    """
    if len(argv) > 1:
        print(f"{script}: error: unexpected arguments {argv[1:]}; flags look like --name=value.",
              file=sys.stderr)
        return 2
    try:
        run()
    except RunComplete as message:
        print(f"{script}: {message}")
        return 0
    except RunDiverged as error:
        print(f"{script}: error: {error}", file=sys.stderr)
        return 1
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


def describe_loss(loss, sigma_format: str = "g", upper_short_names: bool = True) -> str:
    """'f-MICL KL, f-Gaussian (sigma 0.707107), alpha 40' or 'InfoNCE, cosine (T 0.1)'.

    `sigma_format` is the format spec of sigma; with `upper_short_names`,
    divergence names of up to three letters are capitalised (KL, JS).
    """
    config = loss.get_config()
    similarity = loss.similarity
    if similarity.name == "gaussian":
        similarity_text = f"f-Gaussian (sigma {getattr(similarity, 'sigma', config.get('sigma')):{sigma_format}})"
    else:
        similarity_text = f"cosine (T {getattr(similarity, 'temperature', config.get('temperature')):g})"
    if config.get("name") == "infonce" or "divergence" not in config:
        return f"InfoNCE, {similarity_text}"
    divergence = config["divergence"]
    if not isinstance(divergence, str):
        divergence = getattr(loss, "divergence", None)
        divergence = getattr(divergence, "name", str(divergence))
    if upper_short_names and len(divergence) <= 3:
        divergence = divergence.upper()
    text = f"f-MICL {divergence}, {similarity_text}"
    if config.get("alpha") is not None:
        text += f", alpha {config['alpha']:g}"
    return text


def print_results_table(rows: list[tuple[str, str]]) -> None:
    """Prints the run's summary: a Markdown table of (result, value) rows."""
    width = max(len(key) for key, _ in rows)
    print("\n| " + "result".ljust(width) + " | value |")
    print("|" + "-" * (width + 2) + "|-------|")
    for key, value in rows:
        print(f"| {key.ljust(width)} | {value} |")


class HistoryCSV:
    """history.csv, one row per epoch, rewritten after every epoch.

    Keras' CSVLogger adds an always-empty `val_*` column for every metric
    when there is no validation data, and fixes its columns at the first
    epoch (so a kNN accuracy logged every few epochs would be lost).
    """

    def __init__(self, path, extra_keys=()):
        self.path = path
        self.extra_keys = list(extra_keys)
        self.rows = []
        self.keys = None

    def callback(self, keras):
        logger = self

        class _Callback(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                logger.add(epoch + 1, logs or {})

        return _Callback()

    def state(self) -> dict:
        """The rows so far and their columns (what `restore` takes back)."""
        return {"rows": self.rows, "keys": self.keys}

    def restore(self, state) -> None:
        """Continues from `state` (a checkpoint's): its rows are kept."""
        self.rows, self.keys = [dict(row) for row in state["rows"]], state["keys"]
        self.write()

    def add(self, epoch, logs):
        row = {key: float(value) for key, value in logs.items() if not key.startswith("val_")}
        if "probe_loss" in row and "loss" in row:
            row["contrastive_loss"] = row["loss"] - row["probe_loss"]
        if self.keys is None:
            first = ["loss", "contrastive_loss"]
            keys = [k for k in first if k in row] + sorted(k for k in row if k not in first)
            self.keys = keys + [k for k in self.extra_keys if k not in keys]
        self.rows.append({"epoch": epoch, **row})
        self.write()

    def write(self):
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["epoch", *(self.keys or [])], extrasaction="ignore", restval="")
            writer.writeheader()
            writer.writerows(self.rows)

    def history(self) -> dict:
        """Every epoch's logs, key -> list (as `fit`'s History: a key only on the epochs it was logged)."""
        history = {}
        for row in self.rows:
            for key, value in row.items():
                if key not in ("epoch", "contrastive_loss"):
                    history.setdefault(key, []).append(value)
        return history


def divergence_check(keras, every_batch: bool = False):
    """A callback that stops `fit` at the first non-finite loss (at an
    epoch's end, or with `every_batch` after every step) by raising
    `RunDiverged`; place it first, before callbacks that would work on NaN."""

    def check(logs, where):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise RunDiverged(
                f"training diverged: the loss is {float(loss)} at {where}; the run stops (results.json "
                "marks it diverged). A lower --learning_rate may help."
            )

    class _Callback(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if every_batch:
                check(logs, f"step {batch + 1} of epoch {self.epoch + 1}")

        def on_epoch_end(self, epoch, logs=None):
            check(logs, f"epoch {epoch + 1}")

    if not every_batch:  # no per-step hook: fit then skips syncing the logs every step
        del _Callback.on_train_batch_end
    return _Callback()
