"""A tiny random-init BERT and its WordPiece vocabulary, for tests and offline runs."""

from __future__ import annotations

import collections
import re
from typing import Any

from keras_fmicl.utils.checks import check_integer
from keras_fmicl.utils.checks import check_sentences
from keras_fmicl.utils.checks import is_real
from keras_fmicl.utils.imports import import_keras_hub

BERT_RESERVED_TOKENS = ("[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]")
"""The special tokens a BERT WordPiece vocabulary starts with, in this order
(ids 0 to 4: `[PAD]` is id 0, the padding value of keras-hub's packers)."""

SUFFIX_INDICATOR = "##"

# A word is a run of letters and digits; every other non-space character is
# a token of its own, as BERT's basic tokenizer splits on punctuation.
_WORD_PATTERN = re.compile(r"[^\W_]+|\S")


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

    ```python
    word_piece_vocabulary(["a cat", "a dog"], vocabulary_size=20)[:8]
    # ['[PAD]', '[CLS]', '[SEP]', '[UNK]', '[MASK]', 'a', '##a', 'c']
    ```
    """
    sentences = check_sentences(sentences)
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
    sentences = check_sentences(sentences)
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
