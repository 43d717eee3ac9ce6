"""The text path with expected values computed without the code under test.

`load_sentence_tuples` on SimCSE's two-column header (`sent0,sent1`), and
`evaluate_sts` with a head holding dropout: the head must run in inference
mode, so the scores are those of the head's dense layer written out in
numpy, ranked by the float64 Spearman reference of
tests/evaluation/test_sts.py. The tokenizer is a TensorFlow function (no
keras-hub needed).
"""

import keras
import numpy as np
import pytest

from keras_fmicl import data
from keras_fmicl import evaluation
from tests.evaluation.test_sts import reference_cosine
from tests.evaluation.test_sts import reference_spearman

VOCABULARY, WIDTH = 37, 6


def test_a_two_column_nli_header_is_skipped(tmp_path):
    path = tmp_path / "nli_pairs.csv"
    path.write_text("sent0,sent1\nA man sleeps.,Someone rests.\nTwo dogs run.,Dogs run.\n", encoding="utf-8")
    assert data.load_sentence_tuples(path) == (
        ["A man sleeps.", "Two dogs run."], ["Someone rests.", "Dogs run."]
    )


def _preprocess(sentences):
    """Strings -> `{"token_ids": (B, 2)}`: the length and a hash of each sentence."""
    import tensorflow as tf

    length = tf.strings.length(sentences) % VOCABULARY
    hashed = tf.cast(tf.strings.to_hash_bucket_fast(sentences, VOCABULARY), "int32")
    return {"token_ids": tf.stack([length, hashed], axis=1)}


def test_evaluate_sts_runs_a_head_with_dropout_in_inference_mode():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(VOCABULARY, WIDTH))
    constant = keras.ops.convert_to_tensor(table.astype("float32"))

    def encoder(batch):  # a bag of the two token vectors, in keras.ops (traced by predict)
        ids = batch["token_ids"]
        return keras.ops.take(constant, ids[:, 0], axis=0) + keras.ops.take(constant, ids[:, 1], axis=0)

    keras.utils.set_random_seed(3)
    head = keras.Sequential([keras.layers.Dropout(0.5), keras.layers.Dense(4)])
    head.build((None, WIDTH))
    kernel, bias = (keras.ops.convert_to_numpy(w).astype("float64") for w in head.layers[1].weights)
    words = ["a", "cat", "dog", "runs", "sleeps", "the", "big", "small", "red", "park"]
    sentences_a = [" ".join(rng.choice(words, size=rng.integers(2, 6))) for _ in range(12)]
    sentences_b = [" ".join(rng.choice(words, size=rng.integers(2, 6))) for _ in range(12)]
    gold = rng.uniform(0, 5, size=12)
    results = evaluation.evaluate_sts(
        encoder, {"task": (sentences_a, sentences_b, gold)}, _preprocess, batch_size=8, head=head
    )

    def embed(sentences):
        ids = np.asarray(_preprocess(sentences)["token_ids"])
        return (table[ids[:, 0]] + table[ids[:, 1]]) @ kernel + bias

    expected = reference_spearman(reference_cosine(embed(sentences_a), embed(sentences_b)), gold)
    assert results["task"] == pytest.approx(expected, abs=1e-6)
