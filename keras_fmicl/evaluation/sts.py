"""Sentence embeddings scored on STS: Spearman correlation of cosine similarities with gold scores."""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_fmicl.data.sentences import sentence_dataset
from keras_fmicl.evaluation.arrays import check_finite
from keras_fmicl.evaluation.arrays import check_non_negative_int
from keras_fmicl.evaluation.arrays import row_list
from keras_fmicl.evaluation.arrays import to_numpy
from keras_fmicl.utils.checks import check_positive_integer

# --------------------------------------------------------------------------
# Semantic textual similarity (STS): Spearman correlation of cosine scores
# --------------------------------------------------------------------------

TIE_TOLERANCE = 1e-6
"""Spread of the cosine similarities at or below which `sts_correlation`
takes them as constant and returns NaN."""

STS_AVERAGE = "average"
"""The key of `evaluate_sts`'s average over the tasks (SimCSE's "Avg.")."""


def _host_array(x: Any, argument: str) -> np.ndarray:
    """`x` as a float64 numpy array (tensors are fetched from the device)."""
    array = np.asarray(ops.convert_to_numpy(x) if ops.is_tensor(x) else x)
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise ValueError(
            f"`{argument}` must hold numbers. Received: {argument} of dtype {array.dtype}"
        )
    return array.astype(np.float64)


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of `x`, tied values sharing the average of their ranks
    (scipy.stats.rankdata's "average" method)."""
    order = np.argsort(x, kind="mergesort")
    ordered = x[order]
    starts_group = np.concatenate([[True], ordered[1:] != ordered[:-1]])
    starts = np.flatnonzero(starts_group)
    ends = np.concatenate([starts[1:], [x.size]])
    group_rank = (starts + ends + 1) / 2.0  # mean of starts+1 .. ends
    ranks = np.empty(x.size, np.float64)
    ranks[order] = group_rank[np.cumsum(starts_group) - 1]
    return ranks


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean()
    y = y - y.mean()
    denominator = math.sqrt(float(np.dot(x, x)) * float(np.dot(y, y)))
    if denominator == 0.0:
        return float("nan")
    return float(np.clip(np.dot(x, y) / denominator, -1.0, 1.0))


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity in float64, scale-invariant like
    `similarities.l2_normalize`: only an all-zero row counts as the zero
    vector (similarity 0)."""

    def unit(x: np.ndarray) -> np.ndarray:
        scale = np.max(np.abs(x), axis=1, keepdims=True)
        scaled = x / np.where(scale > 0, scale, 1.0)
        norm = np.sqrt(np.sum(scaled * scaled, axis=1, keepdims=True))
        is_zero = scale == 0
        return np.where(is_zero, 0.0, scaled / np.where(is_zero, 1.0, norm))

    return np.sum(unit(a) * unit(b), axis=1)


def sts_correlation(embeddings_a: Any, embeddings_b: Any, gold_scores: Any) -> float:
    """Spearman correlation x 100 of cosine similarities with gold scores.

    The STS measure of SentEval and SimCSE: the cosine similarity of each
    pair's embeddings, ranked against the gold scores. Ties get the average
    of their ranks (as `scipy.stats.spearmanr`); computed in float64 on the
    host, without scipy. When all similarities are equal (a collapsed
    encoder, or `embeddings_a` equal to `embeddings_b`) the correlation is
    undefined and the result is NaN, as scipy gives: similarities within
    `TIE_TOLERANCE` (1e-6) of each other count as equal, since rounding
    makes the cosines of equal directions differ in their last bits (a
    float32 cosine by about 6e-8) and their ranks would be noise.

    Args:
        embeddings_a: `(N, F)` embeddings of the first sentences (numpy or
            backend tensor).
        embeddings_b: `(N, F)` embeddings of the second sentences.
        gold_scores: `(N,)` gold similarity scores, not all equal.

    Returns:
        A Python float in [-100, 100], or NaN for constant similarities.

    Raises:
        ValueError: shapes that differ or are not `(N, F)` / `(N,)`, fewer
            than 2 pairs, non-finite values, or constant gold scores.

    Example:

    >>> a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    >>> b = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    >>> sts_correlation(a, b, [5.0, 3.0, 0.0])
    100.0
    """
    a = _host_array(embeddings_a, "embeddings_a")
    b = _host_array(embeddings_b, "embeddings_b")
    gold = _host_array(gold_scores, "gold_scores")
    for argument, array in (("embeddings_a", a), ("embeddings_b", b)):
        if array.ndim != 2 or array.shape[1] == 0:
            raise ValueError(
                f"`{argument}` must have shape (num_pairs, num_features). "
                f"Received: {argument}.shape={array.shape}"
            )
    if a.shape != b.shape:
        raise ValueError(
            "`embeddings_a` and `embeddings_b` must have the same shape, one row "
            f"per pair. Received: embeddings_a.shape={a.shape}, "
            f"embeddings_b.shape={b.shape}"
        )
    if gold.ndim == 2 and gold.shape[1] == 1:
        gold = gold[:, 0]
    if gold.shape != (a.shape[0],):
        raise ValueError(
            f"`gold_scores` must have shape (num_pairs,) = ({a.shape[0]},), one "
            f"score per pair. Received: gold_scores.shape={gold.shape}"
        )
    if a.shape[0] < 2:
        raise ValueError(
            "A rank correlation needs at least 2 pairs. Received: "
            f"{a.shape[0]} pair(s)"
        )
    check_finite(a, "`embeddings_a`")
    check_finite(b, "`embeddings_b`")
    bad = np.flatnonzero(~np.isfinite(gold))
    if bad.size:
        raise ValueError(
            f"`gold_scores` must be finite; rows {row_list(bad)} hold NaN or "
            f"Inf. Received: {bad.size} non-finite scores of {gold.size}"
        )
    if np.all(gold == gold[0]):
        raise ValueError(
            "`gold_scores` must not all be equal (a rank correlation with a "
            f"constant is undefined). Received: {gold.size} scores all {gold[0]!r}"
        )
    similarities = _cosine_rows(a, b)
    if np.ptp(similarities) <= TIE_TOLERANCE:
        return float("nan")  # constant predictions: the ranks would be rounding noise
    return 100.0 * _pearson(average_ranks(similarities), average_ranks(gold))


def _sts_task_pairs(name: Any, pairs: Any) -> tuple[list, list, np.ndarray]:
    if not isinstance(name, str):
        raise ValueError(f"`tasks` must be keyed by task names. Received: key {name!r}")
    try:
        sentences_a, sentences_b, scores = tuple(pairs)[:3]
    except (TypeError, ValueError):
        raise ValueError(
            f"`tasks[{name!r}]` must be (sentences_a, sentences_b, gold_scores), "
            "e.g. keras_fmicl.data.load_sts(...). Received: "
            f"{type(pairs).__name__}"
        ) from None
    sentences_a, sentences_b = list(sentences_a), list(sentences_b)
    scores = np.asarray(scores)
    if not len(sentences_a) == len(sentences_b) == len(scores):
        raise ValueError(
            f"`tasks[{name!r}]` must hold as many second sentences and scores as "
            f"first sentences. Received: {len(sentences_a)}, {len(sentences_b)} "
            f"and {len(scores)}"
        )
    return sentences_a, sentences_b, scores


class _EncoderWithHead(keras.Model):
    """`head(encoder(x))` in one model (inference mode), for `evaluate_sts`."""

    def __init__(self, encoder: Any, head: keras.layers.Layer, **kwargs):
        # a name TensorFlow takes as a root scope (not the class name's "_...")
        kwargs.setdefault("name", "encoder_with_head")
        super().__init__(**kwargs)
        self.encoder = encoder
        self.head = head

    def call(self, inputs, training=False):
        if isinstance(self.encoder, keras.layers.Layer):
            features = self.encoder(inputs, training=training)
        else:
            features = self.encoder(inputs)
        return self.head(features, training=training)


def _embed_sentences(
    encoder: Any, sentences: list, preprocessor: Any, batch_size: int, verbose: int, task: str
) -> np.ndarray:
    """(len(sentences), F) features, in full batches of `batch_size`.

    The list is padded with empty sentences to a multiple of `batch_size`
    (their rows are dropped), so every task of `evaluate_sts` feeds the
    encoder one batch shape: one compilation on JAX/XLA, not one per task.
    Inference is row-independent, so the padding changes no feature.
    """
    count = len(sentences)
    padded = list(sentences) + [""] * (-count % batch_size)
    dataset = sentence_dataset(
        padded, preprocessor, batch_size=batch_size, shuffle=False, drop_remainder=False
    )
    if isinstance(encoder, keras.Model):
        features = encoder.predict(dataset, verbose=verbose)
    else:
        outputs = []
        for batch in dataset:
            batch = keras.tree.map_structure(lambda t: ops.convert_to_tensor(np.asarray(t)), batch)
            if isinstance(encoder, keras.Layer):
                outputs.append(to_numpy(encoder(batch, training=False)))
            else:
                outputs.append(to_numpy(encoder(batch)))
        features = np.concatenate(outputs, axis=0)
    if isinstance(features, (dict, list, tuple)) or np.ndim(features) != 2:
        raise ValueError(
            "`encoder` must map a batch of tokenized sentences to (N, F) "
            f"features. Received: an output of type {type(features).__name__}"
            + (f" and shape {np.shape(features)}" if not isinstance(features, dict) else "")
        )
    if features.shape[0] != len(padded):
        raise ValueError(
            f"`encoder` must return one row per sentence: {len(padded)} for "
            f"task {task!r} (its {count} sentences in batches of {batch_size}). "
            f"Received: {features.shape[0]} rows"
        )
    return np.asarray(features)[:count]


def evaluate_sts(
    encoder: Any,
    tasks: Any,
    preprocessor: Any,
    batch_size: int = 128,
    verbose: int = 0,
    head: Any = None,
) -> dict:
    """STS scores of a sentence encoder: per task, and their average.

    For each task, both sentences of every pair are embedded (inference
    mode, in full batches of `batch_size`: the last one is padded with empty
    sentences, so every task shares one compiled shape) and scored with `sts_correlation`:
    the Spearman correlation x 100 of the cosine similarities with the
    gold scores, over all the task's pairs at once. For STS12-16 this is
    SentEval's "all" setting (the subsets concatenated), which SimCSE and
    f-MICL report; for STS-B and SICK-R the test split is the task. The
    average is the plain mean over the tasks (SimCSE's "Avg.").

    Args:
        encoder: a `keras.Model` (e.g. `keras_fmicl.text.SentenceEncoder`,
            run through `predict`), layer or callable mapping the
            preprocessor's dict to `(N, F)` features; for a trained
            `ContrastiveModel` pass its encoder, and its projector as
            `head` where the convention keeps it.
        tasks: dict task name -> `(sentences_a, sentences_b, gold_scores)`,
            e.g. `keras_fmicl.data.load_sts_tasks("SentEval/data")`.
        preprocessor: what turns a batch of strings into the encoder's
            input dict (a keras-hub preprocessor; see
            `keras_fmicl.data.sentence_dataset`).
        batch_size: sentences per forward pass.
        verbose: verbosity of `predict`.
        head: `None` (default), or a Keras layer applied to the encoder's
            features in inference mode before the cosines. SimCSE's
            conventions (`simcse/models.py`, `sentemb_forward`): the
            unsupervised model is evaluated without its MLP
            (`cls_before_pooler`: `head=None`), the supervised one with it
            (`cls`: `head=model.projector`).

    Returns:
        dict task name -> score, in the order of `tasks`, then
        `"average"` -> their mean (`STS_AVERAGE`).

    Example:

    ```python
    tasks = keras_fmicl.data.load_sts_tasks("SentEval/data")
    results = evaluate_sts(encoder, tasks, preprocessor)
    print(sts_table(results))
    ```
    """
    if not callable(encoder):
        raise ValueError(
            "`encoder` must be a Keras model, layer or callable mapping tokenized "
            f"sentences to features. Received: encoder={encoder!r:.80}"
        )
    batch_size = check_positive_integer("batch_size", batch_size)
    if head is not None:
        if not isinstance(head, keras.layers.Layer):
            raise ValueError(
                "`head` must be a Keras layer applied to the encoder's features "
                f"(e.g. a ContrastiveModel's projector) or None. Received: head={head!r:.80}"
            )
        encoder = _EncoderWithHead(encoder, head)
    if not isinstance(tasks, dict) or not tasks:
        raise ValueError(
            "`tasks` must be a non-empty dict of task name -> (sentences_a, "
            "sentences_b, gold_scores), e.g. keras_fmicl.data.load_sts_tasks(...). "
            f"Received: tasks={tasks!r:.80}"
        )
    if STS_AVERAGE in tasks:
        raise ValueError(
            f"`tasks` must not use the name {STS_AVERAGE!r}, the key of the "
            f"average. Received: tasks with keys {list(tasks)}"
        )
    results = {}
    for name, pairs in tasks.items():
        sentences_a, sentences_b, scores = _sts_task_pairs(name, pairs)
        if len(scores) < 2:
            raise ValueError(
                f"`tasks[{name!r}]` must hold at least 2 pairs. Received: {len(scores)}"
            )
        features = _embed_sentences(
            encoder, sentences_a + sentences_b, preprocessor, batch_size, verbose, name
        )
        count = len(sentences_a)
        try:
            results[name] = sts_correlation(features[:count], features[count:], scores)
        except ValueError as err:
            raise ValueError(f"STS task {name!r}: {err}") from None
    results[STS_AVERAGE] = float(np.mean(list(results.values())))
    return results


def sts_table(results: dict, digits: int = 2) -> str:
    """`evaluate_sts` results as a two-row Markdown table.

    Example:

    >>> print(sts_table({"STS12": 68.4, "STSBenchmark": 76.85, "average": 72.625}))
    | STS12 | STSBenchmark | average |
    |---|---|---|
    | 68.40 | 76.85 | 72.62 |
    """
    if not isinstance(results, dict) or not results:
        raise ValueError(f"`results` must be a non-empty dict. Received: results={results!r:.80}")
    check_non_negative_int("digits", digits)
    names = [str(name) for name in results]
    values = [f"{float(value):.{digits}f}" for value in results.values()]
    return "\n".join(
        [
            "| " + " | ".join(names) + " |",
            "|" + "---|" * len(names),
            "| " + " | ".join(values) + " |",
        ]
    )
