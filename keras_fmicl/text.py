"""Sentence embeddings from keras-hub text backbones.

`SentenceEncoder` turns any keras-hub text backbone (`BertBackbone`,
`RobertaBackbone`, `DistilBertBackbone`, ...) into an encoder mapping the
dict a keras-hub preprocessor gives (`token_ids`, `padding_mask` and, for
BERT, `segment_ids`) to `(N, F)` sentence features, the representation a
contrastive loss (through a projection head) and the STS evaluation see:

* `pooling="cls"`: the last hidden state of the first token (`[CLS]` /
  `<s>`), before any pooler layer: SimCSE's `cls_before_pooler`, with which
  unsupervised SimCSE is evaluated (its training-only MLP over `[CLS]` is a
  projector, in the README and `examples/train_sentences.py` a
  `keras.layers.Dense(..., activation="tanh")` as in SimCSE, dropped at
  evaluation).
* `pooling="mean"`: the average of the last hidden states over the real
  tokens, the padding masked out (SimCSE's `avg`).

Token ids stay integers from the preprocessor to the backbone's embedding
lookup on every backend. For supervised SimCSE (`keras_fmicl.methods.
SupervisedSimCSE`), `load_sentence_tuples` reads an NLI file of
(premise, entailment[, contradiction]) rows and `sentence_tuple_dataset`
batches them as `(B, C, L)` token ids. `tiny_backbone` builds a small random-init BERT
and a WordPiece vocabulary from a corpus, so that everything runs offline
(no presets, no download); its features are a smoke test, not a model.

keras-hub is an optional dependency (`pip install "keras-fmicl[text]"`,
Python >= 3.11): this module imports without it, and what needs it raises a
`keras_fmicl.data.MissingDependencyError` naming the package.

Example:

```python
import keras_hub
backbone = keras_hub.models.BertBackbone.from_preset("bert_base_en_uncased")
preprocessor = keras_hub.models.BertTextClassifierPreprocessor.from_preset(
    "bert_base_en_uncased", sequence_length=32
)
encoder = keras_fmicl.text.SentenceEncoder(backbone, pooling="cls")
features = encoder(preprocessor(["A man plays a guitar.", "A dog runs."]))
features.shape  # (2, 768)
```

Reference:
    Gao, Yao, Chen. "SimCSE: Simple Contrastive Learning of Sentence
    Embeddings", EMNLP 2021.
"""

from __future__ import annotations

import collections
import csv
import os
import re
from collections.abc import Mapping
from typing import Any

import keras
from keras import ops

from keras_fmicl.data import MissingDependencyError
from keras_fmicl.data import _check_sentences
from keras_fmicl.validation import check_choice
from keras_fmicl.validation import check_integer
from keras_fmicl.validation import is_real

_PACKAGE = "keras_fmicl"

POOLINGS = ("cls", "mean")
"""The `pooling` modes of `SentenceEncoder`."""

TOKEN_IDS = "token_ids"
PADDING_MASK = "padding_mask"
SEGMENT_IDS = "segment_ids"

BERT_RESERVED_TOKENS = ("[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]")
"""The special tokens a BERT WordPiece vocabulary starts with, in this order
(ids 0 to 4: `[PAD]` is id 0, the padding value of keras-hub's packers)."""

SUFFIX_INDICATOR = "##"

# A word is a run of letters and digits; every other non-space character is
# a token of its own, as BERT's basic tokenizer splits on punctuation.
_WORD_PATTERN = re.compile(r"[^\W_]+|\S")


def import_keras_hub() -> Any:
    """`keras_hub`, or a `MissingDependencyError` saying how to install it."""
    try:
        import keras_hub
    except ImportError as err:
        raise MissingDependencyError(
            "Sentence embeddings need the Python package `keras-hub`, which is "
            "not installed: `pip install keras-hub` (or "
            '`pip install "keras-fmicl[text]"`; keras-hub needs Python >= 3.11 '
            f"and installs tensorflow-text) ({err})."
        ) from err
    return keras_hub


def _input_names(backbone: Any) -> tuple[str, ...] | None:
    """The names of the backbone's dict inputs, or `None` when undeclared."""
    inputs = getattr(backbone, "_inputs_struct", None)
    if inputs is None:
        try:
            inputs = backbone.input
        except (AttributeError, ValueError):
            return None
    if isinstance(inputs, Mapping):
        return tuple(inputs)
    return None


def _check_backbone(backbone: Any) -> tuple[str, ...]:
    if not isinstance(backbone, keras.layers.Layer):
        raise ValueError(
            "`backbone` must be a keras-hub text backbone (a Keras model such "
            "as keras_hub.models.BertBackbone). Received: "
            f"backbone={backbone!r}"
        )
    names = _input_names(backbone)
    if names is None or TOKEN_IDS not in names:
        raise ValueError(
            "`backbone` must take a dict of inputs with a `token_ids` entry "
            "(and `padding_mask`), as keras-hub text backbones do. Received: "
            f"backbone={backbone.__class__.__name__} with inputs {names!r}"
        )
    return names


def _is_integer_dtype(x: Any) -> bool:
    dtype = keras.backend.standardize_dtype(x.dtype)
    return dtype.startswith("int") or dtype.startswith("uint")


# keras-hub backbone layers that compute a pooled output SentenceEncoder never
# reads (BertBackbone's dense + tanh over [CLS]).
UNUSED_POOLER_LAYERS = ("pooled_dense",)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SentenceEncoder(keras.Model):
    """A keras-hub text backbone pooled into `(N, F)` sentence features.

    Takes the dict a keras-hub preprocessor returns: `token_ids` (integers,
    `(N, L)`), `padding_mask` (`(N, L)`, true or 1 on real tokens) and,
    where the backbone takes them, `segment_ids` (zeros when absent: one
    segment). Other entries are ignored. `F` is the backbone's hidden size.

    The backbone runs with the `training` flag it is given, so its dropout
    is active in training and off in inference: two training-mode passes of
    the same batch give the two SimCSE views.

    A sentence whose padding mask is all false has no token to average: its
    mean-pooled features are NaN (0 / 0), so a loss on it is NaN (and
    `keras.callbacks.TerminateOnNaN` stops the run) rather than a silent
    finite number. keras-hub preprocessors always keep `[CLS]` and `[SEP]`.

    Args:
        backbone: a keras-hub text backbone, e.g.
            `keras_hub.models.BertBackbone` or `RobertaBackbone`: a Keras
            model taking a dict with `token_ids` and returning the last
            hidden states `(N, L, F)` (or a dict holding them under
            `"sequence_output"`, as BERT does).
        pooling: `"cls"` (the first token's last hidden state, before any
            pooler: SimCSE's `cls_before_pooler`) or `"mean"` (the average
            over the tokens the padding mask keeps). Defaults to `"cls"`.
            The backbone's own pooler (BERT's `pooled_dense`), which
            neither pooling reads, is set non-trainable.
        **kwargs: `keras.Model` arguments (`name`, ...).

    Example:

    ```python
    backbone, preprocessor = keras_fmicl.text.tiny_backbone(sentences)
    encoder = keras_fmicl.text.SentenceEncoder(backbone, pooling="mean")
    features = encoder(preprocessor(["a sentence", "another one"]))  # (2, 32)
    encoder.save("encoder.keras")
    ```
    """

    def __init__(self, backbone: keras.layers.Layer, pooling: str = "cls", **kwargs: Any):
        super().__init__(**kwargs)
        self._backbone_inputs = _check_backbone(backbone)
        self.pooling = check_choice("pooling", pooling, POOLINGS)
        self.backbone = backbone
        # Neither pooling reads the backbone's pooler (BERT's `pooled_dense`,
        # over [CLS]): frozen, it gets no gradient and no optimizer warning.
        for layer in getattr(backbone, "layers", ()):
            if layer.name in UNUSED_POOLER_LAYERS:
                layer.trainable = False

    @property
    def output_dim(self) -> int | None:
        """`F`, the backbone's hidden size (`None` where it does not say)."""
        return getattr(self.backbone, "hidden_dim", None)

    def build(self, input_shape: Any = None) -> None:
        # The backbone (a functional model) is built when constructed.
        self.built = True

    def _backbone_call_inputs(self, inputs: Any) -> dict:
        if not isinstance(inputs, Mapping) or TOKEN_IDS not in inputs:
            raise ValueError(
                "`inputs` must be a dict with `token_ids` and `padding_mask` "
                "(what a keras-hub preprocessor returns). Received: inputs of "
                f"type {type(inputs).__name__}"
                + (f" with keys {sorted(inputs)}" if isinstance(inputs, Mapping) else "")
            )
        token_ids = inputs[TOKEN_IDS]
        if not hasattr(token_ids, "dtype"):
            token_ids = ops.convert_to_tensor(token_ids)
        if len(token_ids.shape) != 2:
            raise ValueError(
                "`token_ids` must have shape (batch_size, sequence_length). "
                f"Received: token_ids.shape={tuple(token_ids.shape)}"
            )
        if not _is_integer_dtype(token_ids):
            raise ValueError(
                "`token_ids` must be integers (vocabulary indices); a cast to "
                "float would corrupt large ids. Received: token_ids with "
                f"dtype {keras.backend.standardize_dtype(token_ids.dtype)}"
            )
        needs_mask = self.pooling == "mean" or PADDING_MASK in self._backbone_inputs
        if needs_mask and PADDING_MASK not in inputs:
            raise ValueError(
                "`inputs` must hold a `padding_mask` (true on real tokens) "
                f"for this backbone and pooling={self.pooling!r}. Received: "
                f"inputs with keys {sorted(inputs)}"
            )
        call_inputs = {}
        for name in self._backbone_inputs:
            if name == TOKEN_IDS:
                call_inputs[name] = token_ids
            elif name in inputs:
                call_inputs[name] = inputs[name]
            elif name == SEGMENT_IDS:
                call_inputs[name] = ops.zeros_like(token_ids)
            else:
                raise ValueError(
                    f"`inputs` must hold `{name}`, an input of "
                    f"{self.backbone.__class__.__name__}. Received: inputs "
                    f"with keys {sorted(inputs)}"
                )
        return call_inputs

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        call_inputs = self._backbone_call_inputs(inputs)
        outputs = self.backbone(call_inputs, training=training)
        if isinstance(outputs, Mapping):
            if "sequence_output" not in outputs:
                raise ValueError(
                    "`backbone` must return the last hidden states (N, L, F), "
                    "or a dict holding them under 'sequence_output'. Received: "
                    f"outputs with keys {sorted(outputs)}"
                )
            outputs = outputs["sequence_output"]
        if len(outputs.shape) != 3:
            raise ValueError(
                "`backbone` must return hidden states of shape (N, L, F). "
                f"Received: shape {tuple(outputs.shape)}"
            )
        if self.pooling == "cls":
            return outputs[:, 0, :]
        mask = ops.cast(inputs[PADDING_MASK], outputs.dtype)
        total = ops.sum(outputs * ops.expand_dims(mask, -1), axis=1)
        count = ops.sum(mask, axis=1, keepdims=True)
        return total / count  # NaN for a sentence without tokens (documented)

    def compute_output_spec(self, inputs: Any, training: bool | None = None) -> Any:
        batch = inputs[TOKEN_IDS].shape[0] if isinstance(inputs, Mapping) else None
        return keras.KerasTensor((batch, self.output_dim), dtype=self.compute_dtype)

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.saving.serialize_keras_object(self.dtype_policy),
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "pooling": self.pooling,
        }

    @classmethod
    def from_config(cls, config: dict) -> "SentenceEncoder":
        config = dict(config)
        if isinstance(config.get("backbone"), dict):
            import_keras_hub()  # registers the keras-hub classes
            config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)


# ---------------------------------------------------------------------------
# An offline tiny backbone and its WordPiece vocabulary
# ---------------------------------------------------------------------------


def word_piece_vocabulary(
    sentences: Any,
    vocabulary_size: int = 1000,
    lowercase: bool = True,
    reserved_tokens: tuple[str, ...] = BERT_RESERVED_TOKENS,
) -> list[str]:
    """A small WordPiece vocabulary from a corpus, in pure Python.

    The reserved tokens first, then every character of the corpus twice
    (as a word start and as the continuation `##c`, most frequent first),
    then the most frequent whole words, up to `vocabulary_size` entries.
    Every word of the corpus is then tokenized without `[UNK]` as long as
    its characters fit (whole words where they made the cut, characters
    otherwise). Ties are broken alphabetically, so the vocabulary is a
    function of the corpus. Words are split as BERT's basic tokenizer does:
    runs of letters and digits; any other non-space character is a token.

    (keras-hub's `compute_word_piece_vocabulary` learns sub-word pieces but
    needs tensorflow-text; this builder needs nothing and is enough for the
    offline tiny backbone.)

    Args:
        sentences: list of strings.
        vocabulary_size: the most entries, `> len(reserved_tokens)`.
        lowercase: lowercase the corpus first (as an uncased tokenizer
            does; keep it equal to the tokenizer's `lowercase`).
        reserved_tokens: special tokens placed first, in order.

    Returns:
        The vocabulary, a list of distinct strings.

    Example:

    >>> word_piece_vocabulary(["a cat", "a dog"], vocabulary_size=20)[:8]
    ['[PAD]', '[CLS]', '[SEP]', '[UNK]', '[MASK]', 'a', '##a', 'c']
    """
    sentences = _check_sentences(sentences)
    reserved = list(reserved_tokens)
    if len(set(reserved)) != len(reserved) or not all(isinstance(t, str) for t in reserved):
        raise ValueError(
            "`reserved_tokens` must be distinct strings. Received: "
            f"reserved_tokens={reserved_tokens!r}"
        )
    vocabulary_size = check_integer("vocabulary_size", vocabulary_size, len(reserved) + 1)
    words: collections.Counter = collections.Counter()
    for sentence in sentences:
        words.update(_WORD_PATTERN.findall(sentence.lower() if lowercase else sentence))
    characters: collections.Counter = collections.Counter()
    for word, count in words.items():
        for character in word:
            characters[character] += count

    def by_frequency(counter: collections.Counter) -> list[str]:
        return sorted(counter, key=lambda token: (-counter[token], token))

    vocabulary = list(reserved)
    seen = set(vocabulary)
    candidates = []
    for character in by_frequency(characters):
        candidates += [character, SUFFIX_INDICATOR + character]
    candidates += by_frequency(words)
    for token in candidates:
        if len(vocabulary) >= vocabulary_size:
            break
        if token not in seen:
            vocabulary.append(token)
            seen.add(token)
    return vocabulary


def tiny_backbone(
    sentences: Any,
    vocabulary_size: int = 1000,
    sequence_length: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    hidden_dim: int = 32,
    intermediate_dim: int | None = None,
    dropout: float = 0.1,
) -> tuple[Any, Any]:
    """A small random-init BERT and its preprocessor, built from a corpus.

    The vocabulary comes from `word_piece_vocabulary(sentences)` (uncased),
    so nothing is downloaded: the whole sentence-embedding pipeline runs
    offline. The weights are random (Keras' global seed decides them:
    `keras.utils.set_random_seed`), so its STS figures only check that the
    pipeline runs.

    Args:
        sentences: the corpus (list of strings).
        vocabulary_size: the most vocabulary entries (fewer when the corpus
            has fewer distinct characters and words).
        sequence_length: tokens per sentence, `[CLS]` and `[SEP]` included
            (longer sentences are truncated, shorter ones padded).
        num_layers: transformer layers.
        num_heads: attention heads; must divide `hidden_dim`.
        hidden_dim: hidden size, the `F` of the sentence features.
        intermediate_dim: feed-forward width; `None` for `4 * hidden_dim`.
        dropout: dropout rate of the backbone (SimCSE's views differ through
            it; BERT uses 0.1).

    Returns:
        `(backbone, preprocessor)`: a `keras_hub.models.BertBackbone` and a
        `keras_hub.models.BertTextClassifierPreprocessor` mapping a batch of
        strings to `{"token_ids", "padding_mask", "segment_ids"}`.

    Raises:
        MissingDependencyError: keras-hub is not installed.

    Example:

    ```python
    backbone, preprocessor = tiny_backbone(keras_fmicl.data.load_sentences("wiki1m.txt")[:10000])
    encoder = SentenceEncoder(backbone)
    ```
    """
    sentences = _check_sentences(sentences)
    sequence_length = check_integer("sequence_length", sequence_length, 2)
    num_layers = check_integer("num_layers", num_layers, 1)
    num_heads = check_integer("num_heads", num_heads, 1)
    hidden_dim = check_integer("hidden_dim", hidden_dim, 1)
    if hidden_dim % num_heads:
        raise ValueError(
            "`hidden_dim` must be a multiple of `num_heads`. Received: "
            f"hidden_dim={hidden_dim}, num_heads={num_heads}"
        )
    if intermediate_dim is None:
        intermediate_dim = 4 * hidden_dim
    intermediate_dim = check_integer("intermediate_dim", intermediate_dim, 1)
    if not is_real(dropout) or not 0 <= dropout < 1:
        raise ValueError(f"`dropout` must be a number in [0, 1). Received: dropout={dropout!r}")
    keras_hub = import_keras_hub()
    vocabulary = word_piece_vocabulary(sentences, vocabulary_size, lowercase=True)
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary, lowercase=True)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer, sequence_length=sequence_length
    )
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(vocabulary),
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        intermediate_dim=intermediate_dim,
        dropout=float(dropout),
        max_sequence_length=sequence_length,
    )
    return backbone, preprocessor


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
    module's.

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
    from keras_fmicl import data

    path = data._check_path(path)
    if delimiter is None:
        delimiter = "\t" if path.lower().endswith(".tsv") else ","
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise ValueError(
            f"`delimiter` must be one character. Received: delimiter={delimiter!r}"
        )
    lines = data._text_lines(path)
    rows = []
    reader = csv.reader(lines, delimiter=delimiter)
    for number, row in enumerate(reader, start=1):
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
    checked = [_check_sentences(column, f"columns[{index}]") for index, column in enumerate(columns)]
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
    from keras_fmicl import data

    columns = _check_columns(columns)

    def stack(outputs):
        tf = data._import_tensorflow()
        return tf.nest.map_structure(lambda *parts: tf.stack(parts, axis=1), *outputs)

    return data._tokenized_batches(
        columns, stack, "sentence tuples", preprocessor, batch_size, shuffle,
        shuffle_buffer, seed, drop_remainder, sequence_length, prefetch,
    )
