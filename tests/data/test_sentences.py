"""keras_fmicl.data, sentences: the corpus reader, the tokenized tf.data
pipeline and the STS loaders (SentEval files the tests write, tfds mock data)."""

import os
import sys

import keras
import numpy as np
import pytest

from keras_fmicl import data
from keras_fmicl.data import sources

tf = pytest.importorskip("tensorflow")


# ---------------------------------------------------------------------------
# load_sentences
# ---------------------------------------------------------------------------


def test_load_sentences_skips_empty_lines_and_strips(tmp_path):
    path = tmp_path / "wiki.txt"
    path.write_bytes(
        "\ufeffFirst sentence.\r\n\n   \nSecond  one \n\tThird: café\nlast line".encode("utf-8")
    )
    assert data.load_sentences(path) == [
        "First sentence.", "Second  one", "Third: café", "last line",
    ]
    assert data.load_sentences(str(path)) == data.load_sentences(path)


def test_load_sentences_splits_only_at_line_ends(tmp_path):
    """U+2028, U+0085, \\f and \\v are characters of a sentence, not line
    ends; \\n, \\r\\n and \\r are."""
    lines = ["one\u2028two", "three\x85four", "five\x0csix", "seven\x0beight", "nine"]
    path = tmp_path / "corpus.txt"
    path.write_bytes("\n".join(lines[:3]).encode() + b"\r\n" + lines[3].encode() + b"\r" + lines[4].encode())
    assert data.load_sentences(path) == lines


def test_load_sentence_tuples_keeps_line_breaks_of_quoted_fields(tmp_path):
    path = tmp_path / "nli.csv"
    path.write_bytes(b'sent0,sent1,hard_neg\r\n"two\nlines",b,"c, with comma"\r\nd,e,f\r\n')
    assert data.load_sentence_tuples(path) == (["two\nlines", "d"], ["b", "e"], ["c, with comma", "f"])
    path.write_bytes(b'a,"b\nc"\nd,e,f\n')  # the bad row ends on line 3
    with pytest.raises(ValueError, match="line 3 of"):
        data.load_sentence_tuples(path)


def test_load_sentences_bad_files(tmp_path):
    with pytest.raises(ValueError, match="no such file") as info:
        data.load_sentences(tmp_path / "absent.txt")
    assert "absent.txt" in str(info.value)
    with pytest.raises(ValueError, match="a directory"):
        data.load_sentences(tmp_path)
    binary = tmp_path / "model.bin"
    binary.write_bytes(b"ok\n\x00\x01\x02\xff")
    with pytest.raises(ValueError, match=r"NUL byte on line 2.*binary") as info:
        data.load_sentences(binary)
    assert "model.bin" in str(info.value)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("one\ntwo\ncaf\u00e9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"line 3 of .*latin1.txt.* not valid UTF-8"):
        data.load_sentences(latin1)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="at least one sentence"):
        data.load_sentences(empty)
    with pytest.raises(ValueError, match="`path` must be a path"):
        data.load_sentences(3)


# ---------------------------------------------------------------------------
# sentence_dataset
# ---------------------------------------------------------------------------

SENTENCES = [f"sentence number {i} about the cat" for i in range(10)]
VOCABULARY = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]", "sentence", "number",
              "about", "the", "cat"] + [str(i) for i in range(10)]


@pytest.fixture(scope="module")
def tokenizer():
    keras_hub = pytest.importorskip("keras_hub")
    return keras_hub.models.BertTokenizer(vocabulary=VOCABULARY, lowercase=True)


@pytest.fixture(scope="module")
def preprocessor(tokenizer):
    keras_hub = pytest.importorskip("keras_hub")
    return keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=8)


def expected_ids(i):
    return [1, 5, 6, 10 + i, 7, 8, 9, 2]  # [CLS] sentence number i about the cat [SEP]


def test_sentence_dataset_in_order_with_integer_ids(preprocessor):
    dataset = data.sentence_dataset(
        SENTENCES, preprocessor, batch_size=4, shuffle=False, drop_remainder=False
    )
    batches = list(dataset.as_numpy_iterator())
    assert [len(b["token_ids"]) for b in batches] == [4, 4, 2]
    first = batches[0]
    assert set(first) == {"token_ids", "padding_mask", "segment_ids"}
    assert first["token_ids"].dtype == np.int32 and first["token_ids"].shape == (4, 8)
    ids = np.concatenate([b["token_ids"] for b in batches])
    np.testing.assert_array_equal(ids, [expected_ids(i) for i in range(10)])
    assert np.concatenate([b["padding_mask"] for b in batches]).all()


def test_sentence_dataset_shuffles_a_permutation_and_drops_the_remainder(preprocessor):
    dataset = data.sentence_dataset(SENTENCES, preprocessor, batch_size=3, seed=5)
    epochs = [list(dataset.as_numpy_iterator()) for _ in range(2)]
    for batches in epochs:
        assert [len(b["token_ids"]) for b in batches] == [3, 3, 3]
        numbers = np.concatenate([b["token_ids"][:, 3] - 10 for b in batches])
        assert len(set(numbers.tolist())) == 9 and set(numbers.tolist()) <= set(range(10))
    order = [np.concatenate([b["token_ids"][:, 3] for b in batches]) for batches in epochs]
    assert not np.array_equal(order[0], order[1])  # reshuffled every epoch
    again = data.sentence_dataset(SENTENCES, preprocessor, batch_size=3, seed=5)
    np.testing.assert_array_equal(
        np.concatenate([b["token_ids"] for b in again.as_numpy_iterator()]),
        np.concatenate([b["token_ids"] for b in epochs[0]]),
    )


def test_sentence_dataset_with_a_bare_tokenizer(tokenizer):
    dataset = data.sentence_dataset(
        SENTENCES[:2] + ["cat"], tokenizer, batch_size=3, shuffle=False, sequence_length=6
    )
    batch = next(dataset.as_numpy_iterator())
    np.testing.assert_array_equal(
        batch["token_ids"], [[1, 5, 6, 10, 7, 2], [1, 5, 6, 11, 7, 2], [1, 9, 2, 0, 0, 0]]
    )
    np.testing.assert_array_equal(batch["padding_mask"][2], [1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(batch["segment_ids"], np.zeros((3, 6)))
    with pytest.raises(ValueError, match="`sequence_length`"):
        data.sentence_dataset(SENTENCES, tokenizer)


def test_fit_style_iteration_under_the_backend(preprocessor):
    """The batches reach a model under any backend with integer ids."""
    inputs = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    embedded = keras.layers.Embedding(len(VOCABULARY), 4)(inputs)
    model = keras.Model({"token_ids": inputs}, keras.layers.GlobalAveragePooling1D()(embedded))
    dataset = data.sentence_dataset(SENTENCES, preprocessor, batch_size=5, shuffle=False)
    dataset = dataset.map(lambda x: {"token_ids": x["token_ids"]})
    assert model.predict(dataset, verbose=0).shape == (10, 4)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(sentences="one sentence"), "sentences"),
        (dict(sentences=[]), "sentences"),
        (dict(sentences=["a", None]), "sentences"),
        (dict(preprocessor="bert"), "preprocessor"),
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=11), "batch_size"),
        (dict(seed=1.5), "seed"),
        (dict(sequence_length=8), "sequence_length"),
    ],
)
def test_sentence_dataset_bad_arguments(preprocessor, kwargs, argument):
    kwargs = {"sentences": SENTENCES, "preprocessor": preprocessor, "batch_size": 2, **kwargs}
    with pytest.raises(ValueError, match=f"`{argument}`"):
        data.sentence_dataset(**kwargs)


# ---------------------------------------------------------------------------
# STS loaders: SentEval files
# ---------------------------------------------------------------------------


def write(path, lines, encoding="utf-8"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding=encoding, newline="") as handle:
        handle.write("".join(line + "\n" for line in lines))


def write_sts_task(root, task, empty_gold=False):
    """A SentEval STS1x folder, two pairs per subset; with `empty_gold` the
    second pair of each subset has no gold score."""
    folder = os.path.join(root, "downstream", "STS", f"{task}-en-test")
    for k, subset in enumerate(data.STS_SUBSETS[task]):
        write(
            os.path.join(folder, f"STS.input.{subset}.txt"),
            [f"{subset} one\tthe  first {k}", f"{subset} two\tsecond {k}"],
        )
        write(os.path.join(folder, f"STS.gs.{subset}.txt"), [f"{k * 0.5 + 0.25}", "" if empty_gold else "4"])
    return folder


def write_stsb(root):
    folder = os.path.join(root, "downstream", "STS", "STSBenchmark")
    for split, offset in (("train", 0), ("dev", 10), ("test", 20)):
        write(
            os.path.join(folder, f"sts-{split}.csv"),
            [
                f"main-captions\tMSRvid\t2012test\t{offset:04d}\t5.000\ta plane is taking off .\tan air plane is taking off .",
                f"main-news\theadlines\t2013\t{offset + 1:04d}\t0.5\ta man {split}\tno\textra\tcolumns",
            ],
        )
    return folder


SICK_HEADER = "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment"


def write_sick(root):
    folder = os.path.join(root, "downstream", "SICK")
    header = SICK_HEADER
    for name, score in (("train", "4.5"), ("trial", "3.6"), ("test_annotated", "1.2")):
        write(
            os.path.join(folder, f"SICK_{name}.txt"),
            [header, f"1\tA boy plays\tA kid plays\t{score}\tENTAILMENT",
             "2\tA cat sleeps\tA man runs\t1\tNEUTRAL"],
        )
    return folder


@pytest.mark.parametrize("task", sorted(data.STS_SUBSETS))
def test_load_sts_senteval_years(tmp_path, task):
    write_sts_task(str(tmp_path), task)
    pairs = data.load_sts(task, tmp_path)
    subsets = data.STS_SUBSETS[task]
    assert len(pairs.sentences_a) == len(pairs.sentences_b) == len(pairs.scores) == 2 * len(subsets)
    assert pairs.scores.dtype == np.float64
    np.testing.assert_array_equal(pairs.scores[::2], [k * 0.5 + 0.25 for k in range(len(subsets))])
    assert pairs.sentences_a[0] == f"{subsets[0]} one"
    assert pairs.sentences_b[0] == "the first 0"  # white space collapsed
    assert list(pairs.subsets[::2]) == list(subsets)


def test_load_sts_drops_pairs_without_gold_and_finds_the_folder(tmp_path):
    folder = write_sts_task(str(tmp_path), "STS13", empty_gold=True)
    for data_dir in (tmp_path, tmp_path / "downstream", folder):
        pairs = data.load_sts("sts13", data_dir)
        assert len(pairs.scores) == 3 and pairs.sentences_b == ["the first 0", "the first 1", "the first 2"]


def test_load_sts_benchmark_and_sick(tmp_path):
    write_stsb(str(tmp_path))
    write_sick(str(tmp_path))
    test = data.load_sts("STS-B", tmp_path)
    assert test.sentences_a == ["a plane is taking off .", "a man test"]
    assert test.sentences_b == ["an air plane is taking off .", "no"]
    np.testing.assert_array_equal(test.scores, [5.0, 0.5])
    assert list(test.subsets) == ["test", "test"]
    assert data.load_sts("STSBenchmark", tmp_path, split="dev").sentences_a[1] == "a man dev"
    sick = data.load_sts("SICK-R", tmp_path)
    assert sick.sentences_a == ["A boy plays", "A cat sleeps"]
    np.testing.assert_array_equal(sick.scores, [1.2, 1.0])
    np.testing.assert_array_equal(data.load_sts("SICKRelatedness", tmp_path, "dev").scores, [3.6, 1.0])
    tasks = data.load_sts_tasks(tmp_path, ["STS-B", "sick-r"])
    assert list(tasks) == ["STSBenchmark", "SICKRelatedness"]


def test_load_sts_missing_files_give_one_clear_sentence(tmp_path):
    with pytest.raises(data.DatasetNotAvailableError, match="No STS12 files") as info:
        data.load_sts("STS12", tmp_path)
    message = str(info.value)
    assert "\n" not in message and "download_dataset.sh" in message and str(tmp_path) in message
    folder = write_sts_task(str(tmp_path), "STS12")
    os.remove(os.path.join(folder, "STS.gs.MSRvid.txt"))
    with pytest.raises(data.DatasetNotAvailableError, match=r"STS.gs.MSRvid.txt.* is missing"):
        data.load_sts("STS12", tmp_path)
    write_stsb(str(tmp_path))
    os.remove(os.path.join(tmp_path, "downstream", "STS", "STSBenchmark", "sts-test.csv"))
    with pytest.raises(data.DatasetNotAvailableError, match="sts-test.csv"):
        data.load_sts("STSBenchmark", tmp_path)


def test_load_sts_malformed_files(tmp_path):
    folder = write_sts_task(str(tmp_path), "STS15")
    gold = os.path.join(folder, "STS.gs.belief.txt")
    write(gold, ["1.0", "high"])
    with pytest.raises(ValueError, match=r"Line 2 of .*STS.gs.belief.txt.* finite gold score"):
        data.load_sts("STS15", tmp_path)
    write(gold, ["1.0"])
    with pytest.raises(ValueError, match="one line per pair"):
        data.load_sts("STS15", tmp_path)
    write(gold, ["1.0", "2.0"])
    write(os.path.join(folder, "STS.input.belief.txt"), ["no tab here", "a\tb"])
    with pytest.raises(ValueError, match=r"Line 1 of .*STS.input.belief.txt.* 2 tab-separated"):
        data.load_sts("STS15", tmp_path)
    write(os.path.join(folder, "STS.input.belief.txt"), ["caf\u00e9\tb", "a\tb"], encoding="latin-1")
    with pytest.raises(ValueError, match="line 1 of .* not valid UTF-8"):
        data.load_sts("STS15", tmp_path)


def test_load_sts_refuses_scores_outside_the_scale(tmp_path):
    folder = write_sts_task(str(tmp_path), "STS15")
    for score in ("5.5", "-0.1"):
        write(os.path.join(folder, "STS.gs.belief.txt"), ["1.0", score])
        with pytest.raises(ValueError, match=r"Line 2 of .*STS.gs.belief.txt.* in \[0.0, 5.0\]"):
            data.load_sts("STS15", tmp_path)
    write(os.path.join(folder, "STS.gs.belief.txt"), ["0", "5"])  # the ends are valid
    assert len(data.load_sts("STS15", tmp_path).scores) == 10
    stsb = write_stsb(str(tmp_path))
    write(os.path.join(stsb, "sts-test.csv"), ["g\tc\ty\t0001\t7.0\ta\tb"])
    with pytest.raises(ValueError, match=r"Line 1 of .*sts-test.csv.* in \[0.0, 5.0\]"):
        data.load_sts("STSBenchmark", tmp_path)


def test_load_sick_without_its_header_keeps_the_first_pair(tmp_path):
    folder = write_sick(str(tmp_path))
    rows = ["1\tA boy plays\tA kid plays\t4.5\tENTAILMENT", "2\tA cat sleeps\tA man runs\t1\tNEUTRAL"]
    write(os.path.join(folder, "SICK_test_annotated.txt"), rows)
    sick = data.load_sts("SICK-R", tmp_path)
    assert sick.sentences_a == ["A boy plays", "A cat sleeps"]
    np.testing.assert_array_equal(sick.scores, [4.5, 1.0])
    # with the header (after an empty line), the header alone is skipped
    write(os.path.join(folder, "SICK_test_annotated.txt"), ["", SICK_HEADER] + rows)
    assert data.load_sts("SICK-R", tmp_path).sentences_a == ["A boy plays", "A cat sleeps"]


def test_sts_lines_split_only_at_line_ends(tmp_path):
    """A U+2028 or \\f inside a sentence neither splits it nor shifts the
    gold scores of the following pairs."""
    folder = write_sts_task(str(tmp_path), "STS15")
    write(os.path.join(folder, "STS.input.belief.txt"), ["a\u2028b\tc\x0cd", "e\tf"])
    write(os.path.join(folder, "STS.gs.belief.txt"), ["1.0", "2.0"])
    pairs = data.load_sts("STS15", tmp_path)
    belief = [i for i, name in enumerate(pairs.subsets) if name == "belief"]
    # one pair, its white space collapsed as SentEval's split() does
    assert [pairs.sentences_a[i] for i in belief] == ["a b", "e"]
    assert [pairs.sentences_b[i] for i in belief] == ["c d", "f"]
    np.testing.assert_array_equal(pairs.scores[belief], [1.0, 2.0])


def test_load_sts_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="Unknown `task`"):
        data.load_sts("STS17", tmp_path)
    with pytest.raises(ValueError, match="Unknown `split`"):
        data.load_sts("STS12", tmp_path, split="train")
    with pytest.raises(ValueError, match="Unknown `split`"):
        data.load_sts("SICK-R", tmp_path, split="validation")
    with pytest.raises(ValueError, match="`data_dir`"):
        data.load_sts("STS12", None)
    with pytest.raises(ValueError, match="`tasks`"):
        data.load_sts_tasks(tmp_path, [])


# ---------------------------------------------------------------------------
# STS-B through tensorflow-datasets (glue/stsb)
# ---------------------------------------------------------------------------


def test_glue_stsb_with_mock_data(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(sources, "DOWNLOAD_PROBE_TIMEOUT", None)
    with tfds.testing.mock_data(num_examples=5):
        for split in data.GLUE_STSB_SPLITS:
            pairs = data.load_glue_stsb(split)
            assert len(pairs.sentences_a) == len(pairs.sentences_b) == 5
            assert all(isinstance(s, str) for s in pairs.sentences_a + pairs.sentences_b)
            assert pairs.scores.shape == (5,) and pairs.scores.dtype == np.float64
            assert np.all(np.isfinite(pairs.scores)) and list(pairs.subsets) == [split] * 5


def test_glue_stsb_test_split_and_missing_tfds(monkeypatch):
    with pytest.raises(ValueError, match="test labels are hidden"):
        data.load_glue_stsb("test")
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(data.MissingDependencyError, match="pip install tensorflow-datasets") as info:
        data.load_glue_stsb("validation")
    assert "\n" not in str(info.value)


def test_glue_stsb_failure_gives_one_clear_sentence(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    cause = OSError("Failed to download https://dl.fbaipublicfiles.com/glue/data/STS-B.zip")

    def failing_load(*args, **kwargs):
        raise cause

    monkeypatch.setattr(tfds, "load", failing_load)
    monkeypatch.setattr(sources, "DOWNLOAD_PROBE_TIMEOUT", None)
    with pytest.raises(data.DatasetNotAvailableError) as info:
        data.load_glue_stsb("train", data_dir="/nowhere")
    message = str(info.value)
    assert "\n" not in message and "'glue/stsb'" in message and "network" in message
    assert info.value.__cause__ is cause
