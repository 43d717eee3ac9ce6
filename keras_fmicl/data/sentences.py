"""Sentence data: text files and SimCSE's NLI tuples to tokenized tf.data batches."""

from __future__ import annotations

import csv
import io
import os
from typing import Any
from typing import Callable

from keras_fmicl.data.batching import check_batching
from keras_fmicl.data.batching import index_batches
from keras_fmicl.data.files import check_path
from keras_fmicl.data.files import text_lines
from keras_fmicl.utils.checks import check_integer
from keras_fmicl.utils.checks import check_sentences
from keras_fmicl.utils.imports import import_tensorflow


def read_text(path: str, argument: str = "path") -> str:
    """The text of the UTF-8 file `path` (a byte-order mark dropped).

    A missing file, a directory, a binary file (a NUL byte) or bytes that
    are not UTF-8 raise `files.text_lines`' `ValueError`, which names the
    file and the line.
    """
    if os.path.isfile(path):
        with open(path, "rb") as handle:
            raw = handle.read()
        if b"\x00" not in raw:
            try:
                return raw.decode("utf-8-sig")
            except UnicodeDecodeError:
                pass
    text_lines(path, argument)  # raises the error naming the file and the line
    raise ValueError(f"`{argument}` must be a UTF-8 text file. Received: {argument}={path!r}")


def split_lines(text: str) -> list[str]:
    """`text` split at line ends `\\n`, `\\r\\n` and `\\r` only.

    Not `str.splitlines`, which also splits at U+2028, U+2029, U+0085,
    `\\f`, `\\v` and the separators U+001C-U+001E: characters that occur
    inside sentences of real corpora (Wikipedia text holds U+2028).

    Example:

    >>> split_lines("a\\u2028b\\r\\nc\\rd\\n")
    ['a\\u2028b', 'c', 'd']
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def load_sentences(path: str | os.PathLike) -> list[str]:
    """The sentences of a corpus file, one a line (SimCSE's wiki1m format).

    Lines end at `\\n`, `\\r\\n` or `\\r` only (a U+2028, U+0085, `\\f`
    or `\\v` inside a sentence does not split it); they are stripped of
    surrounding white space, and empty lines are skipped.

    Args:
        path: a UTF-8 text file, e.g. `wiki1m_for_simcse.txt` (10^6 English
            Wikipedia sentences).

    Returns:
        The list of sentences, in file order.

    Raises:
        ValueError: the file is missing, a directory, binary, not UTF-8 (the
            message gives the line), or holds no sentence.

    Example:

    >>> sentences = load_sentences("wiki1m_for_simcse.txt")
    >>> len(sentences)
    1000000
    """
    path = check_path(path)
    sentences = [line.strip() for line in split_lines(read_text(path))]
    sentences = [sentence for sentence in sentences if sentence]
    if not sentences:
        raise ValueError(
            f"`path` must hold at least one sentence (one a line). Received: "
            f"path={path!r} with no non-empty line"
        )
    return sentences


def _is_keras_hub_tokenizer(layer: Any) -> bool:
    try:
        import keras_hub
    except ImportError:
        return False
    return isinstance(layer, keras_hub.tokenizers.Tokenizer)


def _token_id(tokenizer: Any, names: tuple[str, ...], default: int | None) -> int | None:
    for name in names:
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return default


def _packing_preprocessor(tokenizer: Any, sequence_length: Any) -> Callable[[Any], dict]:
    """A tokenizer plus `[CLS] ... [SEP]` packing, as keras-hub's single
    sentence preprocessors do: `{"token_ids", "padding_mask", "segment_ids"}`."""
    import keras_hub

    if sequence_length is None:
        raise ValueError(
            "`sequence_length` is needed when `preprocessor` is a bare keras-hub "
            "tokenizer (pass it, or a preprocessor such as "
            "keras_hub.models.BertTextClassifierPreprocessor). Received: sequence_length=None"
        )
    sequence_length = check_integer("sequence_length", sequence_length, 2)
    packer = keras_hub.layers.StartEndPacker(
        sequence_length,
        start_value=_token_id(tokenizer, ("cls_token_id", "start_token_id"), None),
        end_value=_token_id(tokenizer, ("sep_token_id", "end_token_id"), None),
        pad_value=_token_id(tokenizer, ("pad_token_id",), 0),
        return_padding_mask=True,
    )

    tf = import_tensorflow()

    def preprocess(batch: Any) -> dict:
        token_ids, padding_mask = packer(tokenizer(batch))
        return {
            "token_ids": token_ids,
            "padding_mask": padding_mask,
            "segment_ids": tf.zeros_like(token_ids),
        }

    return preprocess


def _check_preprocessor(preprocessor: Any, sequence_length: Any) -> Callable[[Any], Any]:
    if _is_keras_hub_tokenizer(preprocessor):
        return _packing_preprocessor(preprocessor, sequence_length)
    if not callable(preprocessor):
        raise ValueError(
            "`preprocessor` must be a keras-hub preprocessor (e.g. "
            "keras_hub.models.BertTextClassifierPreprocessor), a keras-hub "
            "tokenizer, or a callable mapping a batch of strings to the "
            f"backbone's input dict. Received: preprocessor={preprocessor!r:.80}"
        )
    if sequence_length is not None:
        raise ValueError(
            "`sequence_length` applies to a bare tokenizer only; set it on the "
            f"preprocessor instead. Received: sequence_length={sequence_length!r}"
        )
    return preprocessor


def sentence_dataset(
    sentences: Any,
    preprocessor: Any,
    batch_size: int = 64,
    shuffle: bool = True,
    shuffle_buffer: int | None = None,
    seed: int | None = None,
    drop_remainder: bool = True,
    sequence_length: int | None = None,
    prefetch: bool = True,
) -> Any:
    """A `tf.data.Dataset` of tokenized sentence batches.

    Every epoch the sentences are shuffled (a permutation of indices, as
    `multiview_dataset` does) and batched; each batch of strings then goes
    through `preprocessor` inside tf.data, giving the dict a keras-hub
    backbone (or `keras_fmicl.text.SentenceEncoder`) takes: integer
    `token_ids (B, L)`, `padding_mask (B, L)` and, for BERT, `segment_ids`.
    The views of SimCSE come from the model's dropout, so a batch holds each
    sentence once.

    Args:
        sentences: list of N strings (e.g. `load_sentences(path)`).
        preprocessor: a keras-hub preprocessor such as
            `keras_hub.models.BertTextClassifierPreprocessor(tokenizer,
            sequence_length=32)`, any callable mapping a batch of strings to
            such a dict with TensorFlow ops, or a bare keras-hub tokenizer
            (then give `sequence_length`: its ids are packed as
            `[CLS] ... [SEP]` plus padding).
        batch_size: B, sentences per batch (SimCSE: 64).
        shuffle: reshuffle the sentences every epoch.
        shuffle_buffer: shuffle buffer size; `None` for N (a full shuffle).
        seed: seed of the shuffle.
        drop_remainder: drop the last, smaller batch (for training); pass
            `False` (and `shuffle=False`) to embed every sentence in order.
        sequence_length: L, only with a bare tokenizer.
        prefetch: prefetch batches (`tf.data.AUTOTUNE`).

    Returns:
        A `tf.data.Dataset` of dicts of `(B, L)` tensors.

    Example:

    >>> dataset = sentence_dataset(load_sentences("wiki1m_for_simcse.txt"), preprocessor)
    >>> batch = next(iter(dataset))
    >>> batch["token_ids"].shape, batch["token_ids"].dtype
    (TensorShape([64, 32]), tf.int32)
    """
    sentences = check_sentences(sentences)
    return tokenized_batches(
        [sentences], lambda tokenized: tokenized[0], "sentences", preprocessor, batch_size,
        shuffle, shuffle_buffer, seed, drop_remainder, sequence_length, prefetch,
    )


def tokenized_batches(
    columns: list,
    combine: Any,
    noun: str,
    preprocessor: Any,
    batch_size: int,
    shuffle: bool,
    shuffle_buffer: int | None,
    seed: int | None,
    drop_remainder: bool,
    sequence_length: int | None,
    prefetch: bool,
) -> Any:
    """Batches of the samples of `columns` (checked lists of N strings),
    each column tokenized by `preprocessor` and the results joined by
    `combine` (`sentence_dataset`, `text.sentence_tuple_dataset`)."""
    preprocess = _check_preprocessor(preprocessor, sequence_length)
    count = len(columns[0])
    batch_size, shuffle, drop_remainder, prefetch = check_batching(
        count, batch_size, shuffle, drop_remainder, prefetch, noun
    )
    seed = None if seed is None else check_integer("seed", seed, 0)
    tf = import_tensorflow()
    tables = [tf.constant(column, dtype=tf.string) for column in columns]

    def tokenize(index):
        return combine([preprocess(tf.gather(table, index)) for table in tables])

    dataset = index_batches(tf, count, batch_size, shuffle, shuffle_buffer, seed, drop_remainder)
    dataset = dataset.map(tokenize, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if prefetch:
        dataset = dataset.prefetch(tf.data.AUTOTUNE)
    return dataset


# ---------------------------------------------------------------------------
# Sentence tuples: supervised SimCSE's (premise, entailment, contradiction)
# ---------------------------------------------------------------------------

SIMCSE_NLI_HEADER = ("sent0", "sent1", "hard_neg")
"""The header of SimCSE's `nli_for_simcse.csv` (premise, entailment,
contradiction); `load_sentence_tuples` skips a first row made of its first
2 or 3 names."""


def load_sentence_tuples(
    path: str | os.PathLike, delimiter: str | None = None
) -> tuple[list[str], ...]:
    """The columns of a CSV or TSV file of sentence tuples (supervised SimCSE).

    Each row holds 2 sentences (premise, entailment) or 3 (premise,
    entailment, contradiction), the same number on every row: SimCSE's
    `nli_for_simcse.csv` (SNLI + MNLI, 275,601 triples) has the header
    `sent0,sent1,hard_neg`, which is skipped. Fields are stripped of
    surrounding white space; empty lines are skipped; quoting is the `csv`
    module's: a quoted field may hold the delimiter and line breaks, which
    it keeps (lines end at `\\n`, `\\r\\n` or `\\r` only). An error names
    the line on which the faulty row ends.

    Args:
        path: a UTF-8 text file.
        delimiter: the field separator; `None` for a tab in a `.tsv` file
            and a comma otherwise.

    Returns:
        A tuple of 2 or 3 lists of strings (the columns), of equal length,
        what `sentence_tuple_dataset` takes.

    Raises:
        ValueError: the file is missing, binary or not UTF-8, holds no
            row, or a row with another number of fields than 2 or 3, than
            the first row, or with an empty field (the line is named).

    Example:

    ```python
    premises, entailments, contradictions = load_sentence_tuples("nli_for_simcse.csv")
    ```
    """
    path = check_path(path)
    if delimiter is None:
        delimiter = "\t" if path.lower().endswith(".tsv") else ","
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise ValueError(
            f"`delimiter` must be one character. Received: delimiter={delimiter!r}"
        )
    rows = []
    reader = csv.reader(io.StringIO(read_text(path), newline=""), delimiter=delimiter)
    for row in reader:
        number = reader.line_num
        fields = [field.strip() for field in row]
        if not any(fields):
            continue
        if not rows and tuple(f.lower() for f in fields) == SIMCSE_NLI_HEADER[: len(fields)]:
            continue
        if len(fields) not in (2, 3):
            raise ValueError(
                f"`path` must hold rows of 2 or 3 {'tab' if delimiter == chr(9) else repr(delimiter)}-"
                "separated sentences (premise, entailment[, contradiction]); "
                f"line {number} of {path!r} has {len(fields)} field(s). Received: path={path!r}"
            )
        if rows and len(fields) != len(rows[0]):
            raise ValueError(
                f"`path` must hold the same number of sentences on every row; line "
                f"{number} of {path!r} has {len(fields)}, the first row {len(rows[0])}. "
                f"Received: path={path!r}"
            )
        if not all(fields):
            raise ValueError(
                f"`path` must hold a sentence in every field; line {number} of "
                f"{path!r} has an empty one. Received: path={path!r}"
            )
        rows.append(fields)
    if not rows:
        raise ValueError(
            f"`path` must hold at least one row of sentences. Received: path={path!r} "
            "with no row"
        )
    return tuple(list(column) for column in zip(*rows))


def _check_columns(columns: Any) -> list[list[str]]:
    if isinstance(columns, (str, bytes)) or not isinstance(columns, (list, tuple)):
        raise ValueError(
            "`columns` must be a tuple of 2 or more lists of sentences (e.g. "
            "premises, entailments, contradictions). Received: "
            f"columns={columns!r:.80}"
        )
    if len(columns) < 2:
        raise ValueError(
            "`columns` must hold at least 2 lists of sentences (the views of a "
            f"sample). Received: {len(columns)} column(s)"
        )
    checked = [check_sentences(column, f"columns[{index}]") for index, column in enumerate(columns)]
    lengths = [len(column) for column in checked]
    if len(set(lengths)) != 1:
        raise ValueError(
            f"`columns` must hold lists of the same length, one sentence per "
            f"sample. Received: lengths {lengths}"
        )
    return checked


def sentence_tuple_dataset(
    columns: Any,
    preprocessor: Any,
    batch_size: int = 64,
    shuffle: bool = True,
    shuffle_buffer: int | None = None,
    seed: int | None = None,
    drop_remainder: bool = True,
    sequence_length: int | None = None,
    prefetch: bool = True,
) -> Any:
    """A `tf.data.Dataset` of tokenized sentence tuples, `(B, C, L)` a key.

    The batches `keras_fmicl.methods.SupervisedSimCSE` trains on: sample
    `i` is the tuple `(columns[0][i], ..., columns[C-1][i])`, e.g.
    (premise, entailment, contradiction); each column of a batch goes
    through `preprocessor` inside tf.data and the results are stacked on
    axis 1: integer `token_ids (B, C, L)`, `padding_mask (B, C, L)`, ...
    Shuffling and batching are those of `keras_fmicl.data.sentence_dataset`
    (a fresh permutation of the tuples every epoch).

    Args:
        columns: `C >= 2` lists of N strings each (`load_sentence_tuples`).
        preprocessor: a keras-hub preprocessor, a bare keras-hub tokenizer
            (with `sequence_length`), or a callable mapping a batch of
            strings to the backbone's input dict with TensorFlow ops.
        batch_size: B, tuples per batch (supervised SimCSE trained
            BERT-base with 512).
        shuffle: reshuffle the tuples every epoch.
        shuffle_buffer: shuffle buffer size; `None` for N (a full shuffle).
        seed: seed of the shuffle.
        drop_remainder: drop the last, smaller batch.
        sequence_length: L, only with a bare tokenizer.
        prefetch: prefetch batches (`tf.data.AUTOTUNE`).

    Returns:
        A `tf.data.Dataset` of dicts of `(B, C, L)` tensors.

    Example:

    ```python
    columns = load_sentence_tuples("nli_for_simcse.csv")
    dataset = sentence_tuple_dataset(columns, preprocessor, batch_size=64)
    next(iter(dataset))["token_ids"].shape  # (64, 3, 32)
    ```
    """
    columns = _check_columns(columns)

    def stack(outputs):
        tf = import_tensorflow()
        return tf.nest.map_structure(lambda *parts: tf.stack(parts, axis=1), *outputs)

    return tokenized_batches(
        columns, stack, "sentence tuples", preprocessor, batch_size, shuffle,
        shuffle_buffer, seed, drop_remainder, sequence_length, prefetch,
    )
