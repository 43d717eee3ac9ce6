"""Everything around the example scripts' training recipes: the run's plumbing.

Flag errors, the backend choice, quiet framework start-up, data-parallel
set-up, the output folder and what goes in it (history.csv, the figures,
the summary table) and the exit-code protocol.

`examples/train_cifar.py` and `examples/train_sentences.py` import this
module (their own folder is put on `sys.path` first, so it is found however
the script is started). It imports neither Keras nor a framework at import;
the functions that need one import it when called.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import sys
import tempfile
import textwrap
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


def import_frameworks(debug: bool, tensorflow: bool):
    """(keras, numpy, keras_fmicl), imported quietly (see `quiet_native_logging`).

    With `tensorflow` (the backend, or a tf.data pipeline) TensorFlow is
    imported too, if installed, and probes CUDA now, quietly. The backend
    must be selected first (`select_backend`).
    """
    with quiet_native_logging(debug):
        import keras
        import numpy as np

        import keras_fmicl

        if tensorflow:
            try:
                import tensorflow as tf

                tf.config.list_physical_devices()  # probes CUDA now, quietly
            except ImportError:
                pass
    return keras, np, keras_fmicl


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


def default_output_dir(*parts: str) -> str:
    """`runs/<part>_<part>_...`: where a run goes without `--output_dir`."""
    return os.path.join("runs", "_".join(parts))


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

    def add(self, epoch, logs):
        row = {key: float(value) for key, value in logs.items() if not key.startswith("val_")}
        if "probe_loss" in row and "loss" in row:
            row["contrastive_loss"] = row["loss"] - row["probe_loss"]
        if self.keys is None:
            first = ["loss", "contrastive_loss"]
            keys = [k for k in first if k in row] + sorted(k for k in row if k not in first)
            self.keys = keys + [k for k in self.extra_keys if k not in keys]
        self.rows.append({"epoch": epoch, **row})
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["epoch", *self.keys], extrasaction="ignore", restval="")
            writer.writeheader()
            writer.writerows(self.rows)


# ------------------------------------------------------------------ figures


def pyplot(missing: str = "figures"):
    """matplotlib.pyplot on the Agg backend; without matplotlib, a note
    that `missing` is not drawn, and None."""
    try:
        import matplotlib
    except ImportError:
        print(f"Note: matplotlib is not installed; no {missing} (pip install matplotlib).")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(plt, figure, path: str, **savefig_kwargs) -> None:
    """Lays `figure` out, writes it to `path` and frees it."""
    figure.tight_layout()
    figure.savefig(path, **savefig_kwargs)
    plt.close(figure)


def plot_curves(history, knn, run_title, path):
    """curves.png: loss, alignment, uniformity and kNN top-1 per epoch.

    `knn` holds the kNN curve on the monitor's subset (`epochs`, `accuracy`,
    `test_images`, `train_images`) and the final kNN top-1 on the whole
    evaluation split (`final`, `final_images`; `split` names it).
    """
    plt = pyplot()
    if plt is None:
        return
    epochs = list(range(1, len(history["loss"]) + 1))
    figure, axes = plt.subplots(2, 2, figsize=(9.5, 7))
    plot_loss(axes.flat[0], epochs, history)
    panels = [
        ("alignment", "alignment (lower: positives closer)"),
        ("uniformity", "uniformity (lower: more spread)"),
    ]
    for axis, (key, title) in zip(axes.flat[1:3], panels):
        axis.plot(epochs, history.get(key, []), marker="o", markersize=3)
        axis.set_title(title)
    plot_knn(axes.flat[3], max(epochs) if epochs else 0, knn)
    from matplotlib.ticker import MaxNLocator

    for axis in axes.flat:
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(epochs) == 1:  # one point: one tick, not a fractional axis
            axis.set_xticks(epochs)
            axis.set_xlim(0.5, 1.5)
        axis.grid(alpha=0.3)
    figure.suptitle(run_title, fontsize=10)
    save_figure(plt, figure, path, dpi=110)


def plot_loss(axis, epochs, history):
    """The loss panel of curves.png: as `fit` printed it, and its contrastive part."""
    if "probe_loss" in history:
        contrastive = [a - b for a, b in zip(history["loss"], history["probe_loss"])]
        axis.plot(epochs, history["loss"], marker="o", markersize=3,
                  label="loss (as printed: contrastive + probe)")
        axis.plot(epochs, contrastive, marker="o", markersize=3,
                  label="contrastive loss (loss - probe_loss)")
        axis.legend(fontsize=8)
        axis.set_title("training loss")
    else:
        axis.plot(epochs, history["loss"], marker="o", markersize=3)
        axis.set_title("training loss (as printed)")


def plot_knn(axis, last_epoch, knn):
    """The kNN panel of curves.png: the monitor's curve and the final score (see `plot_curves`)."""
    if knn["epochs"]:
        axis.plot(knn["epochs"], [100 * v for v in knn["accuracy"]], marker="o", color="tab:green",
                  label=f"{knn['test_images']:,} {knn['split']} images "
                        f"(memory bank: {knn['train_images']:,} training images)")
        axis.set_title(f"kNN top-1 (%) on a {knn['test_images']:,}-image {knn['split']} subset")
    else:
        axis.set_title("kNN top-1 (%)")
    axis.plot([last_epoch], [100 * knn["final"]], marker="*", markersize=12, color="tab:red", linestyle="none",
              label=f"final, all {knn['final_images']:,} {knn['split']} images: {100 * knn['final']:.2f} %")
    axis.legend(fontsize=8, loc="best")


def embed_2d(features, seed):
    """(N, 2) map of (N, F) features: t-SNE (scikit-learn), else PCA.

    Rows are L2-normalised first: Euclidean distances between them are the
    cosine distances the kNN evaluation uses.
    """
    import numpy as np

    features = np.asarray(features, dtype="float64")
    features = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        TSNE = None
    if TSNE is not None and len(features) > 6:
        perplexity = float(min(30.0, (len(features) - 1) / 3.0))
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                    random_state=seed)
        return tsne.fit_transform(features), "t-SNE"
    centred = features - features.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    return centred @ components[:2].T, "PCA"


def plot_embedding(features, labels, class_names, run_title, knn_text, path, max_points, seed):
    """embedding.png: the test features in 2-D, one colour per class."""
    import numpy as np

    plt = pyplot()
    if plt is None:
        return None
    labels = np.asarray(labels)
    count = min(len(labels), max_points)
    chosen = np.sort(np.random.default_rng(seed).choice(len(labels), count, replace=False))
    points, method = embed_2d(np.asarray(features)[chosen], seed)
    labels = labels[chosen]
    classes = np.unique(labels)
    figure, axis = plt.subplots(figsize=(8.5, 6.5))
    colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for index, label in enumerate(classes):
        mask = labels == label
        name = class_names[label] if class_names is not None and 0 <= label < len(class_names) else str(label)
        axis.scatter(points[mask, 0], points[mask, 1], s=6, alpha=0.7,
                     color=colours(index % colours.N), label=name, rasterized=True)
    if len(classes) <= 20:
        axis.legend(markerscale=3, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    axis.set_xticks([])
    axis.set_yticks([])
    title = textwrap.fill(run_title, 80) + f"\n{method} of {count:,} test features, {knn_text}"
    axis.set_title(title, fontsize=10)
    save_figure(plt, figure, path, dpi=100, bbox_inches="tight")
    return method
