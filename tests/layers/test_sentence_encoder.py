"""keras_fmicl.layers.SentenceEncoder over keras-hub backbones, the offline
tiny backbone and its WordPiece vocabulary (tiny random backbones only)."""

import configparser
import contextlib
import math
import os
import re
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

import keras_fmicl
from keras_fmicl import data
from keras_fmicl import methods
from keras_fmicl.layers import text_backbone
from tests.helpers import to_numpy
from tests.helpers import traced

keras_hub = pytest.importorskip("keras_hub")

CORPUS = [
    "The cat sat on the mat.",
    "A dog runs in the park!",
    "Dogs and cats are pets",
    "the quick brown fox jumps over the lazy dog",
    "Un café, s'il vous plaît",
]
SEQUENCE_LENGTH = 12
HIDDEN = 32


@pytest.fixture
def tiny(tiny_text_backbone):
    """The session's tiny BERT (tests/conftest.py), whose corpus starts with CORPUS."""
    assert tiny_text_backbone.corpus[: len(CORPUS)] == tuple(CORPUS)
    assert (tiny_text_backbone.sequence_length, tiny_text_backbone.hidden_dim) == (SEQUENCE_LENGTH, HIDDEN)
    return tiny_text_backbone.backbone, tiny_text_backbone.preprocessor


def tokens(preprocessor, sentences=CORPUS):
    return {k: to_numpy(v) for k, v in preprocessor(sentences).items()}


def sequence_output(backbone, inputs):
    outputs = backbone(inputs, training=False)
    if isinstance(outputs, dict):
        outputs = outputs["sequence_output"]
    return to_numpy(outputs).astype(np.float64)


# ---------------------------------------------------------------------------
# Vocabulary and tiny backbone
# ---------------------------------------------------------------------------


def test_word_piece_vocabulary_is_deterministic_and_covers_the_corpus():
    vocabulary = text_backbone.word_piece_vocabulary(CORPUS, vocabulary_size=100)
    assert vocabulary == text_backbone.word_piece_vocabulary(list(reversed(CORPUS)), vocabulary_size=100)
    assert vocabulary[:5] == list(text_backbone.BERT_RESERVED_TOKENS)
    assert len(vocabulary) == len(set(vocabulary)) <= 100
    assert {"the", "a", "##e", "é", "##é", "!", "'"} <= set(vocabulary)
    # every character fits: no sentence of the corpus needs [UNK]
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary, lowercase=True)
    ids = [to_numpy(t).tolist() for t in tokenizer(CORPUS)]
    assert all(vocabulary.index("[UNK]") not in row for row in ids)
    # a small budget keeps the reserved tokens and the most frequent characters
    small = text_backbone.word_piece_vocabulary(CORPUS, vocabulary_size=9)
    assert small[:5] == list(text_backbone.BERT_RESERVED_TOKENS) and len(small) == 9
    assert small[5] in ("e", "t", "a", "o")  # most frequent letter first


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(sentences="one string"), "sentences"),
        (dict(sentences=[]), "sentences"),
        (dict(sentences=["ok", 3]), "sentences"),
        (dict(sentences=CORPUS, vocabulary_size=5), "vocabulary_size"),
        (dict(sentences=CORPUS, vocabulary_size=True), "vocabulary_size"),
        (dict(sentences=CORPUS, reserved_tokens=("[PAD]", "[PAD]")), "reserved_tokens"),
    ],
)
def test_word_piece_vocabulary_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        text_backbone.word_piece_vocabulary(**kwargs)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(num_heads=3), "hidden_dim"),
        (dict(sequence_length=1), "sequence_length"),
        (dict(dropout=1.0), "dropout"),
        (dict(num_layers=0), "num_layers"),
    ],
)
def test_tiny_backbone_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        text_backbone.tiny_backbone(CORPUS, **kwargs)


def test_tiny_backbone_takes_numpy_numbers():
    backbone, _ = text_backbone.tiny_backbone(CORPUS, dropout=np.float32(0.25), num_layers=np.int64(1))
    assert backbone.dropout == pytest.approx(0.25) and backbone.num_layers == 1


def test_tiny_backbone_gives_integer_token_ids_and_features(tiny):
    backbone, preprocessor = tiny
    inputs = preprocessor(CORPUS)
    assert set(inputs) == {"token_ids", "padding_mask", "segment_ids"}
    assert keras.backend.standardize_dtype(inputs["token_ids"].dtype) == "int32"
    assert tuple(inputs["token_ids"].shape) == (len(CORPUS), SEQUENCE_LENGTH)
    assert int(to_numpy(inputs["token_ids"]).max()) < backbone.vocabulary_size
    encoder = keras_fmicl.layers.SentenceEncoder(backbone)
    features = encoder(inputs)
    assert tuple(features.shape) == (len(CORPUS), HIDDEN) and encoder.output_dim == HIDDEN
    assert np.all(np.isfinite(to_numpy(features)))


def test_missing_keras_hub_is_named_with_its_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "keras_hub", None)  # import fails
    with pytest.raises(data.MissingDependencyError, match="pip install keras-hub") as info:
        text_backbone.tiny_backbone(CORPUS)
    assert isinstance(info.value, ImportError) and "keras-fmicl[text]" in str(info.value)


def test_core_package_imports_without_keras_hub():
    code = (
        "import sys; sys.modules['keras_hub'] = None\n"
        "import keras_fmicl, keras_fmicl.layers, keras_fmicl.data, keras_fmicl.evaluation\n"
        "print('ok')"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_extras_declare_keras_hub():
    config = configparser.ConfigParser()
    config.read(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "setup.cfg"))
    extras = config["options.extras_require"]
    for extra in ("text", "all", "test"):
        assert "keras-hub" in extras[extra], extra
        assert 'python_version >= "3.11"' in extras[extra], extra


# ---------------------------------------------------------------------------
# SentenceEncoder
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_pooling_matches_float64_reference(tiny, pooling):
    backbone, preprocessor = tiny
    inputs = tokens(preprocessor)
    hidden = sequence_output(backbone, inputs)  # (N, L, F)
    mask = inputs["padding_mask"].astype(np.float64)
    if pooling == "cls":
        expected = hidden[:, 0, :]
    else:
        expected = np.einsum("nlf,nl->nf", hidden, mask) / mask.sum(axis=1, keepdims=True)
    got = to_numpy(keras_fmicl.layers.SentenceEncoder(backbone, pooling=pooling)(inputs))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    if pooling == "mean":  # the padding is not averaged in
        assert not np.allclose(got, hidden.mean(axis=1), atol=1e-4)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_padded_positions_change_nothing(tiny, pooling):
    backbone, preprocessor = tiny
    inputs = tokens(preprocessor)
    padded = ~inputs["padding_mask"].astype(bool)
    assert padded.any()
    changed = dict(inputs)
    changed["token_ids"] = np.where(padded, 7, inputs["token_ids"]).astype(np.int32)
    changed["segment_ids"] = np.where(padded, 1, inputs["segment_ids"]).astype(np.int32)
    encoder = keras_fmicl.layers.SentenceEncoder(backbone, pooling=pooling)
    np.testing.assert_allclose(
        to_numpy(encoder(changed)), to_numpy(encoder(inputs)), rtol=1e-5, atol=1e-6
    )


def test_roberta_backbone_without_segment_ids(tiny):
    bert, _ = tiny
    # the tiny BERT's sizes, so that JAX reuses its compiled eager ops
    backbone = keras_hub.models.RobertaBackbone(
        vocabulary_size=bert.vocabulary_size, num_layers=1, num_heads=2,
        hidden_dim=HIDDEN, intermediate_dim=4 * HIDDEN, max_sequence_length=SEQUENCE_LENGTH,
    )
    token_ids = np.ones((2, SEQUENCE_LENGTH), np.int32)  # <pad> is 1 in RoBERTa
    token_ids[0, :4] = [0, 5, 9, 2]
    token_ids[1, :3] = [0, 7, 2]
    mask = token_ids != 1
    inputs = {"token_ids": token_ids, "padding_mask": mask}
    hidden = sequence_output(backbone, inputs)
    expected = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    got = to_numpy(keras_fmicl.layers.SentenceEncoder(backbone, pooling="mean")(inputs))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_segment_ids_default_to_one_segment(tiny):
    backbone, preprocessor = tiny
    inputs = tokens(preprocessor)
    without = {k: v for k, v in inputs.items() if k != "segment_ids"}
    encoder = keras_fmicl.layers.SentenceEncoder(backbone, pooling="mean")
    np.testing.assert_allclose(to_numpy(encoder(without)), to_numpy(encoder(inputs)), atol=1e-6)


def test_dropout_acts_in_training_only(tiny):
    backbone, preprocessor = tiny
    inputs = tokens(preprocessor)
    encoder = keras_fmicl.layers.SentenceEncoder(backbone)
    first, second = (to_numpy(encoder(inputs, training=True)) for _ in range(2))
    assert not np.allclose(first, second)
    np.testing.assert_array_equal(
        to_numpy(encoder(inputs, training=False)), to_numpy(encoder(inputs, training=False))
    )


def test_traced_call_keeps_integer_token_ids(tiny):
    backbone, preprocessor = tiny
    inputs = tokens(preprocessor)
    encoder = keras_fmicl.layers.SentenceEncoder(backbone, pooling="mean")
    seen = []

    def fn(token_ids, padding_mask, segment_ids):
        seen.append(keras.backend.standardize_dtype(token_ids.dtype))
        return encoder(
            {"token_ids": token_ids, "padding_mask": padding_mask, "segment_ids": segment_ids}
        )

    out = traced(fn)(inputs["token_ids"], inputs["padding_mask"], inputs["segment_ids"])
    assert seen and all(dtype == "int32" for dtype in seen)
    np.testing.assert_allclose(to_numpy(out), to_numpy(encoder(inputs)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad_id", ["negative", "vocabulary_size"])
def test_token_ids_outside_the_vocabulary_are_refused(tiny, bad_id):
    """Eager ids outside [0, vocabulary_size) raise a clear ValueError (before:
    features from no token on all backends, NaN on JAX, backend errors)."""
    backbone, preprocessor = tiny
    inputs = tokens(preprocessor)
    inputs["token_ids"] = inputs["token_ids"].copy()
    size = backbone.vocabulary_size
    value = -1 if bad_id == "negative" else size
    inputs["token_ids"][2, 3] = value
    encoder = keras_fmicl.layers.SentenceEncoder(backbone, pooling="mean")
    low, high = min(value, 0), max(value, int(np.max(tokens(preprocessor)["token_ids"])))
    message = f"must be vocabulary indices in [0, {size}) (the backbone's `vocabulary_size`)"
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        encoder(inputs)
    assert f"Received: token_ids from {low} to {high}" in str(info.value)
    inputs["token_ids"][2, 3] = size - 1  # the last id is valid
    assert np.all(np.isfinite(to_numpy(encoder(inputs))))


def test_sentence_without_tokens_is_nan_not_a_number(tiny):
    backbone, preprocessor = tiny
    inputs = tokens(preprocessor)
    inputs["padding_mask"] = inputs["padding_mask"].copy()
    inputs["padding_mask"][1] = False
    out = to_numpy(keras_fmicl.layers.SentenceEncoder(backbone, pooling="mean")(inputs))
    assert np.all(np.isnan(out[1])) and np.all(np.isfinite(np.delete(out, 1, axis=0)))


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_keras_file_round_trip(tiny, tmp_path, pooling):
    backbone, preprocessor = tiny
    inputs = tokens(preprocessor)
    encoder = keras_fmicl.layers.SentenceEncoder(backbone, pooling=pooling, name="sentences")
    expected = to_numpy(encoder(inputs))
    path = str(tmp_path / "encoder.keras")
    encoder.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, keras_fmicl.layers.SentenceEncoder)
    assert loaded.pooling == pooling and loaded.name == "sentences"
    assert isinstance(loaded.backbone, keras_hub.models.BertBackbone)
    np.testing.assert_array_equal(to_numpy(loaded(inputs)), expected)
    np.testing.assert_array_equal(loaded.predict(inputs, verbose=0), encoder.predict(inputs, verbose=0))
    clone = keras_fmicl.layers.SentenceEncoder.from_config(encoder.get_config())
    assert clone.pooling == pooling and clone.backbone is not backbone
    # the dtype policy survives the config (the backbone keeps its own)
    mixed = keras_fmicl.layers.SentenceEncoder(backbone, pooling=pooling, dtype="mixed_bfloat16")
    config = mixed.get_config()
    clone = keras_fmicl.layers.SentenceEncoder.from_config(config)
    assert clone.dtype_policy.name == "mixed_bfloat16"
    assert keras_fmicl.layers.SentenceEncoder.from_config(encoder.get_config()).dtype_policy.name == "float32"


def test_bad_arguments_and_inputs(tiny):
    backbone, preprocessor = tiny
    inputs = tokens(preprocessor)
    with pytest.raises(ValueError, match="`pooling`"):
        keras_fmicl.layers.SentenceEncoder(backbone, pooling="max")
    with pytest.raises(ValueError, match="`backbone`"):
        keras_fmicl.layers.SentenceEncoder(keras.layers.Dense(3))
    with pytest.raises(ValueError, match="`backbone`"):
        keras_fmicl.layers.SentenceEncoder("bert_base_en_uncased")
    encoder = keras_fmicl.layers.SentenceEncoder(backbone, pooling="mean")
    with pytest.raises(ValueError, match="`token_ids` must be integers"):
        encoder({**inputs, "token_ids": inputs["token_ids"].astype("float32")})
    with pytest.raises(ValueError, match="`padding_mask`"):
        encoder({"token_ids": inputs["token_ids"]})
    with pytest.raises(ValueError, match="`inputs` must be a dict"):
        encoder(inputs["token_ids"])
    with pytest.raises(ValueError, match="token_ids.shape"):
        encoder({**inputs, "token_ids": inputs["token_ids"][0]})


# ---------------------------------------------------------------------------
# SimCSE end to end: a SentenceEncoder inside a ContrastiveModel
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def dropout_off(layer):
    """Every `keras.layers.Dropout` inside `layer` at rate 0, restored after
    (the backbone's embedding, attention and feed-forward dropout)."""
    dropouts = [
        sub for sub in layer._flatten_layers(include_self=True, recursive=True)
        if isinstance(sub, keras.layers.Dropout)
    ]
    assert dropouts
    rates = [sub.rate for sub in dropouts]
    try:
        for sub in dropouts:
            sub.rate = 0.0
        yield
    finally:
        for sub, rate in zip(dropouts, rates):
            sub.rate = rate


def simcse_model(backbone):
    keras.utils.set_random_seed(0)
    return keras_fmicl.ContrastiveModel(
        keras_fmicl.layers.SentenceEncoder(backbone, pooling="cls"),
        method=methods.SimCSE(),
        projector=keras_fmicl.ProjectionHead(HIDDEN, 16, batch_norm=False),
    )


def test_simcse_views_differ_only_through_dropout(tiny_text_backbone):
    backbone, preprocessor = tiny_text_backbone.backbone, tiny_text_backbone.preprocessor
    model = simcse_model(backbone)
    batch = tokens(preprocessor, list(tiny_text_backbone.corpus[:8]))
    features = to_numpy(model(batch, training=True)["features"])  # (8, 2, F)
    assert features.shape == (8, 2, HIDDEN)
    assert np.abs(features[:, 0] - features[:, 1]).max() > 1e-3
    with dropout_off(backbone):  # training mode, no dropout: identical views
        features = to_numpy(model(batch, training=True)["features"])
    np.testing.assert_allclose(features[:, 0], features[:, 1], rtol=1e-6, atol=1e-6)
    features = to_numpy(model(batch, training=False)["features"])
    np.testing.assert_allclose(features[:, 0], features[:, 1], rtol=1e-6, atol=1e-6)


def test_simcse_trains_a_sentence_encoder_and_round_trips(tiny_text_backbone, tmp_path):
    backbone, preprocessor = tiny_text_backbone.backbone, tiny_text_backbone.preprocessor
    model = simcse_model(backbone)
    # the paper's text setting: (2 sigma^2)^-1 = 20, alpha = 409600
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras_fmicl.FMICLLoss("kl", sigma=1 / math.sqrt(40), alpha=409600.0),
    )
    x = tokens(preprocessor, list(tiny_text_backbone.corpus))  # 16 sentences
    before = model.evaluate(x, batch_size=8, verbose=0, return_dict=True)["loss"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(x, batch_size=8, epochs=2, verbose=0).history
    assert np.all(np.isfinite(history["loss"])) and np.all(np.isfinite(history["mi_estimate"]))
    # BERT's pooler, which neither pooling reads, is frozen: no gradient missing
    assert not [w for w in caught if "Gradients do not exist" in str(w.message)]
    assert not [w for w in model.trainable_weights if "pooled_dense" in w.path]
    after = model.evaluate(x, batch_size=8, verbose=0, return_dict=True)["loss"]
    assert after < before  # deterministic (inference mode), same sentences
    assert int(to_numpy(model.training_steps.value)) == 4
    path = str(tmp_path / "simcse.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.encoder, keras_fmicl.layers.SentenceEncoder)
    assert isinstance(loaded.method, methods.SimCSE) and loaded.mode == "simcse"
    assert not [w for w in loaded.trainable_weights if "pooled_dense" in w.path]
    batch = tokens(preprocessor, list(tiny_text_backbone.corpus[:8]))  # the shapes of the
    expected, got = model(batch), loaded(batch)  # views test: JAX reuses its compiled ops
    for key in ("features", "queries"):  # encoder and projector
        np.testing.assert_array_equal(to_numpy(got[key]), to_numpy(expected[key]))


def test_sentence_tuple_dataset_columns_and_bad_arguments(tiny_text_backbone):
    preprocessor = tiny_text_backbone.preprocessor
    columns = (["a cat", "a dog", "the mat"], ["cats", "dogs", "mats"])
    dataset = data.sentence_tuple_dataset(columns, preprocessor, batch_size=3, shuffle=False)
    batch = next(iter(dataset))
    single = tokens(preprocessor, columns[1])
    np.testing.assert_array_equal(to_numpy(batch["token_ids"])[:, 1], single["token_ids"])
    np.testing.assert_array_equal(to_numpy(batch["padding_mask"])[:, 1], single["padding_mask"])
    for bad, match in [
        ((["a"],), "at least 2"),
        ("a cat", "`columns`"),
        ((["a", "b"], ["c"]), "same length"),
        ((["a", "b"], ["c", 3]), r"columns\[1\]"),
    ]:
        with pytest.raises(ValueError, match=match):
            data.sentence_tuple_dataset(bad, preprocessor, batch_size=1)
    with pytest.raises(ValueError, match="`batch_size`"):
        data.sentence_tuple_dataset(columns, preprocessor, batch_size=4)


def test_load_sentence_tuples(tmp_path):
    path = tmp_path / "nli.csv"
    path.write_text(
        'sent0,sent1,hard_neg\n"A man, smiling.",A man smiles.,Nobody smiles.\n\n'
        "Two dogs run., Dogs run. , Cats sleep.\n",
        encoding="utf-8",
    )
    premises, entailments, contradictions = data.load_sentence_tuples(path)
    assert premises == ["A man, smiling.", "Two dogs run."]
    assert entailments == ["A man smiles.", "Dogs run."]
    assert contradictions == ["Nobody smiles.", "Cats sleep."]
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("a cat\tthe cat\nsome dogs\tdogs\n", encoding="utf-8")
    assert data.load_sentence_tuples(tsv) == (["a cat", "some dogs"], ["the cat", "dogs"])
    cases = [
        ("one.csv", "just one field\n", "line 1 .* 1 field"),
        ("four.csv", "a,b,c,d\n", "line 1 .* 4 field"),
        ("mixed.csv", "a,b,c\nd,e\n", "line 2 .* has 2, the first row 3"),
        ("empty_field.csv", "a,b\nc, \n", "line 2 .* empty"),
        ("empty.csv", "\n\n", "at least one row"),
    ]
    for name, content, match in cases:
        bad = tmp_path / name
        bad.write_text(content, encoding="utf-8")
        with pytest.raises(ValueError, match=match):
            data.load_sentence_tuples(bad)
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"a,b\x00\n")
    with pytest.raises(ValueError, match="binary"):
        data.load_sentence_tuples(binary)
    with pytest.raises(ValueError, match="no such file"):
        data.load_sentence_tuples(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="`delimiter`"):
        data.load_sentence_tuples(path, delimiter=";;")
