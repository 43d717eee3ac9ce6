"""The example scripts' figures: curves.png and embedding.png.

`examples/train_cifar.py` and `examples/train_sentences.py` import this
module from their own folder (as `_common`). matplotlib is optional: without
it a note says what is not drawn. Nothing here imports Keras.
"""

from __future__ import annotations

import sys
import textwrap
from typing import Callable


def plot_safely(name: str, draw: Callable[[], object]):
    """`draw()`, or a warning line when it fails: a figure never loses a run."""
    try:
        return draw()
    except Exception as error:  # the run's results are written already
        print(f"Warning: {name} was not drawn ({type(error).__name__}: {error}).", file=sys.stderr)
        return None


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
    """curves.png: loss, alignment, uniformity, mi_estimate, the online
    probe and kNN top-1 per epoch.

    `knn` holds the kNN curve on the monitor's subset (`epochs`, `accuracy`,
    `test_images`, `train_images`) and the final kNN top-1 on the whole
    evaluation split (`final`, `final_images`; `split` names it).
    """
    plt = pyplot()
    if plt is None:
        return
    epochs = list(range(1, len(history["loss"]) + 1))
    figure, axes = plt.subplots(2, 3, figsize=(13, 7))
    plot_loss(axes.flat[0], epochs, history)
    panels = [
        ("alignment", "alignment (lower: positives closer)"),
        ("uniformity", "uniformity (lower: more spread)"),
        ("mi_estimate", "mi_estimate (nats)"),
    ]
    for axis, (key, title) in zip(axes.flat[1:4], panels):
        axis.plot(epochs, history.get(key, []), marker="o", markersize=3)
        axis.set_title(title)
    plot_probe(axes.flat[4], epochs, history)
    plot_knn(axes.flat[5], max(epochs) if epochs else 0, knn)
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


def plot_probe(axis, epochs, history):
    """The online linear probe's panel of curves.png: its top-1 on the training batches."""
    axis.plot(epochs, [100 * v for v in history.get("probe_accuracy", [])], marker="o", markersize=3,
              color="tab:purple")
    axis.set_title("online linear probe top-1 (%), training batches")


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
    points = centred @ components[:2].T
    if points.shape[1] < 2:  # fewer than 2 points (or features): a second, zero axis
        points = np.pad(points, ((0, 0), (0, 2 - points.shape[1])))
    return points, "PCA"


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
