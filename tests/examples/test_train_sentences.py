"""examples/train_sentences.py end to end, as a user runs it: a subprocess per run.

The training runs use `--backbone tiny` (a random-init BERT built offline);
the bad-flag runs stop before Keras is imported (about a second each).
"""

import json
import os

import keras
import numpy as np
import pytest

from tests.examples.scripts import NATIVE_NOISE
from tests.examples.scripts import error_lines
from tests.examples.scripts import kill_after_first_epoch
from tests.examples.scripts import run_script
from tests.examples.scripts import script_path
from tests.data.test_sentences import write_sick
from tests.data.test_sentences import write_sts_task
from tests.data.test_sentences import write_stsb
from tests.helpers import backend_independent

SCRIPT = script_path("train_sentences.py")
PNG = b"\x89PNG\r\n\x1a\n"


def run_example(*args, timeout=300, env=None):
    return run_script(SCRIPT, *args, timeout=timeout, env=env)


def test_tiny_smoke_run_as_printed_writes_every_output(tmp_path):
    pytest.importorskip("keras_hub")
    # as a user runs it (the README's command, with a space before the value),
    # without the TF_CPP_MIN_LOG_LEVEL=3 of tests/conftest.py
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = run_example("--backbone", "tiny", "--max_steps", "5", f"--output_dir={tmp_path}",
                         "--verbose=0", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not NATIVE_NOISE.findall(result.stderr), result.stderr[-3000:]
    assert "STS: skipped, no --sts_dir" in result.stdout
    assert "random init: a smoke test" in result.stdout
    with open(tmp_path / "results.json") as f:
        results = json.load(f)
    assert results["backend"] == keras.backend.backend()
    # issue 27 item 12: the backend's version and the device
    assert results["versions"][keras.backend.backend()] == __import__(keras.backend.backend()).__version__
    assert results["device"] and results["diverged"] is False
    assert results["steps"] == 5 and results["history"]["step"] == [1, 2, 3, 4, 5]
    for key in ("loss", "alignment", "uniformity", "mi_estimate"):
        assert len(results["history"][key]) == 5 and np.all(np.isfinite(results["history"][key])), key
    # the paper's text setting by default: (2 sigma^2)^-1 = 20, alpha = 409600
    assert results["loss"]["divergence"] == "kl"
    assert 1.0 / (2.0 * results["loss"]["sigma"] ** 2) == pytest.approx(20.0)
    assert results["loss"]["alpha"] == 409600.0
    assert results["method"]["class_name"] == "SimCSE"
    assert results["evaluated_features"].startswith("encoder (") and "mlp" not in results["outputs"]
    assert results["sts"] is None and results["corpus"].startswith("built-in synthetic corpus")
    held = results["held_out"]
    assert held["sentences"] > 0 and np.isfinite(held["alignment"]) and np.isfinite(held["uniformity"])
    # the two dropout views of one `predict` have different masks
    assert held["alignment"] > 0
    with open(tmp_path / "curves.png", "rb") as f:
        assert f.read(8) == PNG
    # the saved encoder and vocabulary embed new sentences
    import keras_hub

    import keras_fmicl  # noqa: F401  (registers SentenceEncoder)

    encoder = keras.saving.load_model(tmp_path / "encoder.keras")
    with open(tmp_path / "vocabulary.txt", encoding="utf-8") as f:
        vocabulary = f.read().splitlines()
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary, lowercase=True)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=32)
    features = keras.ops.convert_to_numpy(encoder(preprocessor(["A man reads a book.", "The cat."])))
    assert features.shape == (2, 32) and np.all(np.isfinite(features))


@backend_independent
def test_supervised_run_with_an_sts_table(tmp_path):
    """--method supervised on a CSV corpus, scored on STS files: the
    example's flags, corpus reader and Markdown table. Once, under
    TensorFlow: every backend trains SupervisedSimCSE in tests/methods/test_methods.py
    and scores STS tasks in tests/evaluation/test_sts.py, and runs the
    example end to end in the smoke run."""
    pytest.importorskip("keras_hub")
    sts_dir = tmp_path / "SentEval" / "data"
    write_sts_task(str(sts_dir), "STS13")
    write_stsb(str(sts_dir))
    write_sick(str(sts_dir))
    corpus = tmp_path / "nli.csv"
    rows = ["sent0,sent1,hard_neg"] + [
        f"a man reads book {i},a person reads book {i},nobody reads book {i}" for i in range(24)
    ]
    corpus.write_text("\n".join(rows) + "\n", encoding="utf-8")
    result = run_example(
        "--backbone=tiny", "--method=supervised", f"--corpus={corpus}", f"--sts_dir={sts_dir}",
        "--sts_tasks=STS13,STS-B,SICK-R", "--loss=infonce", "--batch_size=8", "--max_steps=2", "--sequence_length=16", "--verbose=0",
        f"--output_dir={tmp_path / 'run'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "run" / "results.json") as f:
        results = json.load(f)
    assert results["method"]["class_name"] == "SupervisedSimCSE"
    assert results["method"]["config"]["symmetric"] is False  # SimCSE's cl_forward pairs
    # SimCSE's supervised convention: the MLP is kept at evaluation, and saved
    assert results["evaluated_features"].startswith("encoder + MLP")
    mlp = keras.saving.load_model(results["outputs"]["mlp"])
    assert mlp.output_shape[-1] == results["backbone"]["hidden_dim"]
    assert results["loss"]["temperature"] == 0.05  # SimCSE's
    assert results["train_samples"] == 24 and results["steps"] == 2
    sts = results["sts"]
    assert list(sts) == ["STS13", "STSBenchmark", "SICKRelatedness", "average"]
    assert all(-100.0 <= value <= 100.0 for value in sts.values())
    assert sts["average"] == pytest.approx(np.mean([v for k, v in sts.items() if k != "average"]))
    assert "| STS13 | STSBenchmark | SICKRelatedness | average |" in result.stdout  # Markdown table


@backend_independent
def test_missing_sts_task_gives_one_sentence_before_training(tmp_path):
    sts_dir = tmp_path / "SentEval" / "data"
    write_sts_task(str(sts_dir), "STS13")
    result = run_example(f"--sts_dir={sts_dir}", "--sts_tasks=STS12", f"--output_dir={tmp_path / 'run'}")
    assert result.returncode == 2, result.stderr[-2000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "STS12" in lines[0], result.stderr[-2000:]
    assert "Training" not in result.stdout and not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sigma=-1"], "--sigma must be positive, got -1.0."),
        (["--max_steps=0"], "--max_steps must be positive, got 0."),
        (["--sequence_length=1"], "--sequence_length must be at least 2"),
        (["--loss=infonce", "--alpha=2"], "--alpha weighs the negative term"),
        (["--method=supervised"], "CSV or TSV of (premise, entailment, contradiction) rows"),
        (["--backbone=bert_base_en_uncased"], "--corpus is needed with --backbone bert_base_en_uncased"),
        (["--corpus=/no/such/corpus.txt"], "--corpus '/no/such/corpus.txt' is not a file."),
        (["--sts_dir=/no/such/SentEval"], "--sts_dir '/no/such/SentEval' is not a folder"),
        (["--sts_tasks="], "--sts_tasks must name at least one STS task"),
        (["--divergence=tsallis", "--tsallis_order=1"], "--tsallis_order must be positive and not 1"),
        # issue 27 item 8: non-finite numbers are no settings
        (["--learning_rate=inf"], "--learning_rate must be a finite number, got inf."),
        # issue 27 item 4: a batch of one has no negatives (it trained to "final loss 0.0000")
        (["--batch_size=1"], "--batch_size must be at least 2"),
        (["--max_sentences=1"], "--max_sentences must be at least 2"),
        # issue 27 item 6: a flag the run would ignore
        (["--loss=infonce", "--divergence=js"], "--divergence is ignored by this run: it applies only with --loss fmicl"),
        (["--temperature=0.1"], "--temperature is ignored by this run: it applies only with --similarity cosine"),
        (["--sts_tasks=STS12"], "--sts_tasks is ignored by this run: it applies only with --sts_dir"),
    ],
)
def test_bad_flags_get_one_clear_sentence(args, message):
    result = run_example(*args, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("train_sentences.py: error: ") and message in lines[0]


def test_unknown_method_is_rejected_by_absl():
    result = run_example("--method=byol", timeout=120)
    assert result.returncode != 0
    assert "--method" in result.stderr and "supervised" in result.stderr


@backend_independent
def test_offline_preset_gives_one_sentence_and_no_folder(tmp_path):
    """A keras-hub preset without network: one line (no traceback), no run folder."""
    pytest.importorskip("keras_hub")
    proxy = "http://127.0.0.1:9"  # nothing listens on port 9: no network
    env = dict(os.environ, HTTPS_PROXY=proxy, HTTP_PROXY=proxy, https_proxy=proxy, http_proxy=proxy,
               NO_PROXY="", no_proxy="", KAGGLEHUB_CACHE=str(tmp_path / "kagglehub"),
               HF_HOME=str(tmp_path / "hf"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"sentence number {i}\n" for i in range(80)), encoding="utf-8")
    result = run_example("--backbone=bert_base_en_uncased", f"--corpus={corpus}",
                         f"--output_dir={tmp_path / 'run'}", env=env, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr[-2000:]
    assert "--backbone 'bert_base_en_uncased' could not be loaded" in lines[0] and "network" in lines[0]
    assert not os.path.exists(tmp_path / "run")


# a few steps of 8 sentences per epoch, 2 epochs
TWO_EPOCHS = ["--backbone=tiny", "--epochs=2", "--max_sentences=40", "--batch_size=8", "--sequence_length=16",
              "--verbose=0"]


@backend_independent  # CI time: once, under TensorFlow; the checkpoint's restore is unit-tested on every backend
def test_killed_run_resumes_to_the_same_results(tmp_path):
    """Issue 26 item 4: SIGKILLed after its first epoch and started again
    with --resume, the run ends as an uninterrupted one does: the same keys,
    steps and epochs, the first epoch's logs exactly (kept in the
    checkpoint), the second epoch's loss close (the optimizer state and the
    learning-rate step are restored; the resumed epoch's order and dropout
    masks are drawn afresh)."""
    pytest.importorskip("keras_hub")
    reference = run_example(*TWO_EPOCHS, f"--output_dir={tmp_path / 'reference'}")
    assert reference.returncode == 0, reference.stderr[-3000:]
    output_dir = tmp_path / "run"
    args = [*TWO_EPOCHS, f"--output_dir={output_dir}"]
    state = kill_after_first_epoch(SCRIPT, *args, output_dir=str(output_dir))
    assert state["epoch"] == 1 and not os.path.exists(output_dir / "results.json")
    differing = run_example(*args, "--resume", "--loss=infonce", timeout=120)
    assert differing.returncode == 2 and "these differ: --loss (run: 'fmicl', now: 'infonce')" in differing.stderr
    resumed = run_example(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    with open(tmp_path / "reference" / "results.json") as f:
        expected = json.load(f)
    with open(output_dir / "results.json") as f:
        results = json.load(f)
    assert sorted(results) == sorted(expected) and results["resumed_from_epoch"] == 1
    assert results["steps"] == expected["steps"] == 8 and results["history"]["step"] == list(range(1, 9))
    for key, values in expected["epoch_history"].items():
        assert len(results["epoch_history"][key]) == len(values) == 2, key
        assert results["epoch_history"][key][0] == pytest.approx(values[0], rel=1e-5), key
    assert results["epoch_history"]["loss"][1] == pytest.approx(expected["epoch_history"]["loss"][1], rel=0.2)
    again = run_example(*args, "--resume", timeout=120)
    assert again.returncode == 0 and "is complete (finished" in again.stdout, again.stdout[-2000:]
