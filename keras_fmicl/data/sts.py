"""Semantic textual similarity benchmarks: STS12-16, STS-B and SICK-R from SentEval files, GLUE STS-B."""

from __future__ import annotations

import os
from typing import Any
from typing import NamedTuple

import numpy as np

from keras_fmicl.data.files import check_path
from keras_fmicl.data.sentences import read_text
from keras_fmicl.data.sentences import split_lines
from keras_fmicl.data.sources import prepare_tfds
from keras_fmicl.data.sources import tfds_load_errors
from keras_fmicl.utils.errors import DatasetNotAvailableError

# ---------------------------------------------------------------------------
# Sentences: a corpus file, tokenized tf.data batches, STS sentence pairs
# ---------------------------------------------------------------------------

STS_TASKS = (
    "STS12",
    "STS13",
    "STS14",
    "STS15",
    "STS16",
    "STSBenchmark",
    "SICKRelatedness",
)
"""The seven STS tasks SimCSE (and f-MICL) report, in their table order."""

STS_SUBSETS = {
    "STS12": ("MSRpar", "MSRvid", "SMTeuroparl", "surprise.OnWN", "surprise.SMTnews"),
    # SentEval's STS13 has no "SMT" subset (its licence).
    "STS13": ("FNWN", "headlines", "OnWN"),
    "STS14": ("deft-forum", "deft-news", "headlines", "images", "OnWN", "tweet-news"),
    "STS15": ("answers-forums", "answers-students", "belief", "headlines", "images"),
    "STS16": ("answer-answer", "headlines", "plagiarism", "postediting", "question-question"),
}
"""STS12-16 task -> its subsets, files `STS.input.<subset>.txt` (two
tab-separated sentences a line) and `STS.gs.<subset>.txt` (one gold score a
line; an empty line drops the pair) in `downstream/STS/<task>-en-test/`."""

STS_SPLITS = {
    "STSBenchmark": {"train": "sts-train.csv", "dev": "sts-dev.csv", "test": "sts-test.csv"},
    "SICKRelatedness": {
        "train": "SICK_train.txt",
        "dev": "SICK_trial.txt",
        "test": "SICK_test_annotated.txt",
    },
}
"""STS-B and SICK-R split -> SentEval file (in `downstream/STS/STSBenchmark/`
and `downstream/SICK/`); STS12-16 have a `"test"` split only."""

_STS_DIRS = {
    **{task: ("STS", f"{task}-en-test") for task in STS_SUBSETS},
    "STSBenchmark": ("STS", "STSBenchmark"),
    "SICKRelatedness": ("SICK",),
}

_STS_ALIASES = {
    "stsb": "STSBenchmark",
    "sts_b": "STSBenchmark",
    "stsbenchmark": "STSBenchmark",
    "sickr": "SICKRelatedness",
    "sick_r": "SICKRelatedness",
    "sickrelatedness": "SICKRelatedness",
    **{task.lower(): task for task in STS_SUBSETS},
}

_SENTEVAL_HINT = (
    "get SentEval's data with SimCSE's `SentEval/data/downstream/download_dataset.sh` "
    "and pass `data_dir` pointing to `SentEval/data`"
)

GLUE_STSB_SPLITS = ("train", "validation")

STS_SCORE_RANGE = (0.0, 5.0)
"""The scale of the gold scores `load_sts` accepts (STS: 0-5, SICK-R: 1-5);
a score outside it is refused, naming the file and the line."""


class STSPairs(NamedTuple):
    """Sentence pairs with gold similarity scores (an STS task or split).

    Attributes:
        sentences_a: list of N first sentences.
        sentences_b: list of N second sentences.
        scores: float64 `(N,)` gold scores (0-5 for STS, 1-5 for SICK-R).
        subsets: `(N,)` array naming each pair's subset (STS12-16), or its
            split for STS-B and SICK-R.
    """

    sentences_a: list
    sentences_b: list
    scores: np.ndarray
    subsets: np.ndarray


def _sts_task(task: Any) -> str:
    key = task.strip().lower().replace("-", "_") if isinstance(task, str) else None
    if key not in _STS_ALIASES:
        raise ValueError(
            f"Unknown `task`: expected one of {', '.join(map(repr, STS_TASKS))} "
            f"(or 'STS-B', 'SICK-R'). Received: task={task!r}"
        )
    return _STS_ALIASES[key]


def _senteval_dir(data_dir: Any, task: str) -> str:
    """The folder of `task` under `data_dir` (SentEval's `data`, its
    `downstream`, or the task folder itself)."""
    data_dir = check_path(data_dir, "data_dir")
    parts = _STS_DIRS[task]
    candidates = [
        os.path.join(data_dir, "downstream", *parts),
        os.path.join(data_dir, *parts),
        os.path.join(data_dir, parts[-1]),
        data_dir,
    ]
    for candidate in candidates[:3]:
        if os.path.isdir(candidate):
            return candidate
    if os.path.basename(os.path.normpath(data_dir)) == parts[-1] and os.path.isdir(data_dir):
        return data_dir
    raise DatasetNotAvailableError(
        f"No {task} files under data_dir={data_dir!r}: looked for "
        f"{os.path.join('downstream', *parts)!r} there; {_SENTEVAL_HINT} "
        "(no network is needed once the files are there)."
    )


def _sts_file(directory: str, name: str, task: str) -> str:
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
        raise DatasetNotAvailableError(
            f"{task} is incomplete: {path!r} is missing; {_SENTEVAL_HINT}."
        )
    return path


def _score(text: str, path: str, number: int) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not np.isfinite(value):
        raise ValueError(
            f"Line {number} of {path!r} must hold a finite gold score. "
            f"Received: {text!r:.80}"
        )
    if not STS_SCORE_RANGE[0] <= value <= STS_SCORE_RANGE[1]:
        raise ValueError(
            f"Line {number} of {path!r} must hold a gold score in "
            f"[{STS_SCORE_RANGE[0]}, {STS_SCORE_RANGE[1]}] (the STS scale). "
            f"Received: {text!r:.80}"
        )
    return value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _normalise(sentence: str) -> str:
    """White space collapsed, as SentEval's `split()` / `' '.join` does."""
    return " ".join(sentence.split())


def _fields(line: str, path: str, number: int, count: int) -> list[str]:
    fields = line.split("\t")
    if len(fields) < count:
        raise ValueError(
            f"Line {number} of {path!r} must have at least {count} tab-separated "
            f"fields. Received: {line!r:.120}"
        )
    return fields


def _load_sts_subset(directory: str, task: str, subset: str) -> tuple:
    input_path = _sts_file(directory, f"STS.input.{subset}.txt", task)
    gold_path = _sts_file(directory, f"STS.gs.{subset}.txt", task)
    pairs = split_lines(read_text(input_path, "data_dir"))
    gold = split_lines(read_text(gold_path, "data_dir"))
    if len(pairs) != len(gold):
        raise ValueError(
            f"{task}: {input_path!r} and {gold_path!r} must have one line per "
            f"pair. Received: {len(pairs)} and {len(gold)} lines"
        )
    a, b, scores = [], [], []
    for number, (pair, score) in enumerate(zip(pairs, gold), start=1):
        if not score.strip():
            continue  # no gold score: SentEval drops the pair
        fields = _fields(pair, input_path, number, 2)
        a.append(_normalise(fields[0]))
        b.append(_normalise(fields[1]))
        scores.append(_score(score.strip(), gold_path, number))
    return a, b, scores


def _load_sts_table(path: str, columns: tuple[int, int, int], header: bool) -> tuple:
    """The pairs of a tab-separated table. With `header`, the first non-empty
    line is skipped only when its score column is not a number (SICK's
    `relatedness_score`): a file without its header keeps its first pair."""
    lines = split_lines(read_text(path, "data_dir"))
    a, b, scores = [], [], []
    first, second, score = columns
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = _fields(line, path, number, max(columns) + 1)
        if header:
            header = False
            if not _is_number(fields[score].strip()):
                continue
        a.append(_normalise(fields[first]))
        b.append(_normalise(fields[second]))
        scores.append(_score(fields[score].strip(), path, number))
    return a, b, scores


def load_sts(task: str, data_dir: str | os.PathLike, split: str = "test") -> STSPairs:
    """The sentence pairs and gold scores of an STS task, from SentEval files.

    Reads the layout of SentEval's data folder (as SimCSE distributes it):

    | task              | files under `data_dir/downstream/`                        |
    |-------------------|-----------------------------------------------------------|
    | `STS12`..`STS16`  | `STS/STS1x-en-test/STS.input.<subset>.txt`, `STS.gs.<subset>.txt` |
    | `STSBenchmark`    | `STS/STSBenchmark/sts-{train,dev,test}.csv` (tab-separated: score in column 5, sentences in 6 and 7) |
    | `SICKRelatedness` | `SICK/SICK_{train,trial,test_annotated}.txt` (a header line, skipped when its score column is not a number: a file without it keeps its first pair; sentences in columns 2 and 3, score in 4) |

    `data_dir` may also be the `downstream` folder or the task's own folder.
    As SentEval does, STS12-16 concatenate their subsets in the order of
    `STS_SUBSETS` and drop pairs whose gold line is empty, and sentences
    have their white space collapsed. STS-B's `"dev"` is SICK's "trial".

    Args:
        task: one of `STS_TASKS` (`"STS-B"`, `"SICK-R"` and lowercase names
            are accepted).
        data_dir: SentEval's `data` folder (no network is used).
        split: `"test"` (the reported split); `"train"` or `"dev"` for
            STS-B and SICK-R.

    Returns:
        `STSPairs(sentences_a, sentences_b, scores, subsets)`.

    Raises:
        DatasetNotAvailableError: the task's folder or a file is missing (the
            message says how to get them).
        ValueError: a bad argument, or a malformed file (the message names
            the file and the line), e.g. a gold score outside
            `STS_SCORE_RANGE` (0-5).

    Example:

    >>> pairs = load_sts("STS12", "SentEval/data")
    >>> len(pairs.scores), pairs.subsets[0]
    (3108, 'MSRpar')
    """
    task = _sts_task(task)
    splits = STS_SPLITS.get(task, {"test": None})
    if split not in splits:
        raise ValueError(
            f"Unknown `split` for {task}: expected one of "
            f"{', '.join(map(repr, splits))}. Received: split={split!r}"
        )
    directory = _senteval_dir(data_dir, task)
    a, b, scores, subsets = [], [], [], []
    if task in STS_SUBSETS:
        for subset in STS_SUBSETS[task]:
            subset_a, subset_b, subset_scores = _load_sts_subset(directory, task, subset)
            a += subset_a
            b += subset_b
            scores += subset_scores
            subsets += [subset] * len(subset_scores)
    else:
        path = _sts_file(directory, splits[split], task)
        if task == "STSBenchmark":
            a, b, scores = _load_sts_table(path, (5, 6, 4), header=False)
        else:
            a, b, scores = _load_sts_table(path, (1, 2, 3), header=True)
        subsets = [split] * len(scores)
    if not scores:
        raise ValueError(
            f"{task} ({split}) under {directory!r} must hold at least one scored "
            "pair. Received: none"
        )
    return STSPairs(a, b, np.asarray(scores, np.float64), np.asarray(subsets))


def load_sts_tasks(
    data_dir: str | os.PathLike, tasks: Any = STS_TASKS, split: str = "test"
) -> dict:
    """`{task: load_sts(task, data_dir, split)}` for several tasks (all seven
    by default), in the order given: the `tasks` of `evaluate_sts`.

    Example:

    >>> tasks = load_sts_tasks("SentEval/data")
    >>> list(tasks)
    ['STS12', 'STS13', 'STS14', 'STS15', 'STS16', 'STSBenchmark', 'SICKRelatedness']
    """
    if isinstance(tasks, str):
        tasks = (tasks,)
    names = [_sts_task(task) for task in tasks]
    if not names:
        raise ValueError("`tasks` must name at least one STS task. Received: tasks=()")
    return {name: load_sts(name, data_dir, split) for name in names}


def load_glue_stsb(split: str = "validation", data_dir: str | None = None) -> STSPairs:
    """STS-B from tensorflow-datasets (`glue/stsb`, downloaded once, ~1 MB).

    GLUE hides the labels of its test split (they read -1), so only
    `"train"` (5749 pairs) and `"validation"` (1500) are offered; the
    scored STS-B test set is SentEval's `sts-test.csv` (`load_sts`).

    Args:
        split: `"train"` or `"validation"`.
        data_dir: tensorflow-datasets data folder; `None` for its default.

    Returns:
        `STSPairs` with scores in [0, 5] and `subsets` all equal to `split`.

    Raises:
        MissingDependencyError: tensorflow-datasets is not installed.
        DatasetNotAvailableError: it cannot be downloaded or read.

    Example:

    >>> pairs = load_glue_stsb("validation")
    >>> len(pairs.sentences_a)
    1500
    """
    if split not in GLUE_STSB_SPLITS:
        hint = (
            " (GLUE's STS-B test labels are hidden; load_sts('STSBenchmark', "
            "data_dir) reads SentEval's scored test set)"
            if split == "test"
            else ""
        )
        raise ValueError(
            f"Unknown `split` for glue/stsb: expected one of "
            f"{', '.join(map(repr, GLUE_STSB_SPLITS))}{hint}. Received: split={split!r}"
        )
    name = "glue/stsb"
    tfds, data_dir = prepare_tfds(name, split, data_dir)
    with tfds_load_errors(name, split):
        dataset = tfds.load(name, split=split, data_dir=data_dir)
        a, b, scores = [], [], []
        for example in dataset.as_numpy_iterator():
            a.append(_normalise(example["sentence1"].decode("utf-8")))
            b.append(_normalise(example["sentence2"].decode("utf-8")))
            scores.append(float(example["label"]))
    return STSPairs(a, b, np.asarray(scores, np.float64), np.asarray([split] * len(scores)))
