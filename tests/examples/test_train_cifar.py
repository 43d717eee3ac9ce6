"""The example end to end, as a user runs it: a subprocess per run."""

import csv
import glob
import json
import os
import re
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_fmicl
from tests.examples.example_module import load_example
from tests.examples.scripts import NATIVE_NOISE
from tests.examples.scripts import ROOT
from tests.examples.scripts import error_lines
from tests.examples.scripts import kill_after_first_epoch
from tests.examples.scripts import run_script
from tests.examples.scripts import script_path
from tests.helpers import backend_independent

SCRIPT = script_path("train_cifar.py")
TINY = [
    "--dataset=digits",
    "--epochs=2",
    "--warmup_epochs=0",
    "--max_train_samples=256",
    "--max_test_samples=96",
    "--batch_size=64",
    "--knn_every=1",
    "--linear_epochs=3",
    "--verbose=0",
]


def run_example(*args, timeout=300, env=None):
    return run_script(SCRIPT, *args, timeout=timeout, env=env)


# runs whose embedding.png nothing checks skip its t-SNE
NO_EMBEDDING = ["--embedding_points=0"]



# the shared tiny run: MoCo (a queue and a momentum encoder to checkpoint),
# the views drawn in the model (no tf.data: TensorFlow is imported by Keras
# itself, issue 27 item 11)
TINY_MOCO = [*TINY, "--mode=moco", "--pipeline=model"]


def user_env():
    """As a user runs it: without the TF_CPP_MIN_LOG_LEVEL=3 of tests/conftest.py."""
    return {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}


def no_native_noise(stderr):
    """Issue 13 item 15, issue 27 item 11: no native start-up lines (cuInit, oneDNN, absl)."""
    noisy = [line for line in stderr.splitlines()
             if line.startswith(("WARNING: All log messages before absl", "I0000")) or "cpu_feature_guard" in line]
    return not noisy and not NATIVE_NOISE.findall(stderr)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """(completed process, output folder) of one uninterrupted TINY_MOCO run."""
    output_dir = tmp_path_factory.mktemp("tiny_run")
    return run_example(*TINY_MOCO, f"--output_dir={output_dir}", env=user_env()), output_dir


def test_tiny_run_writes_every_output(tiny_run):
    result, tmp_path = tiny_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert no_native_noise(result.stderr), result.stderr[-3000:]
    assert "kNN top-1 (k=200)" in result.stdout and "linear top-1" in result.stdout
    with open(tmp_path / "results.json") as f:
        results = json.load(f)
    # issue 27 item 12: the backend's version and the device
    backend = keras.backend.backend()
    assert results["versions"][backend] == __import__(backend).__version__
    assert results["device"] == "cpu" or results["device"].startswith(("cpu:", "gpu:", "cuda:"))
    assert results["diverged"] is False and results["resumed_from_epoch"] == 0
    assert results["backend"] == keras.backend.backend()
    assert results["train_samples"] == 256 and results["test_samples"] == 96
    for key in ["loss", "alignment", "uniformity", "mi_estimate", "probe_accuracy"]:
        assert len(results["history"][key]) == 2 and np.all(np.isfinite(results["history"][key]))
    assert results["knn_curve"]["epochs"] == [1, 2]
    assert 0.0 <= results["knn_top1"] <= 1.0 and 0.0 <= results["linear_top1"] <= 1.0
    assert results["loss"]["divergence"] == "kl"
    check_mode(results, "moco")
    with open(tmp_path / "flags.json") as f:
        assert json.load(f)["backend"] == backend
    for name in ("curves.png", "embedding.png"):  # issue 13 item 18: embedding.png
        assert os.path.getsize(tmp_path / name) > 10_000, name
        with open(tmp_path / name, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", name
    assert results["embedding_method"] in ("t-SNE", "PCA")
    assert results["outputs"]["embedding"] == str(tmp_path / "embedding.png")
    # issue 13 item 14: history.csv has the epochs' columns, none all-empty
    with open(tmp_path / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert not [key for key in rows[0] if key.startswith("val_")], list(rows[0])
    for key in ["loss", "contrastive_loss", "probe_loss", "alignment", "uniformity", "mi_estimate", "knn_accuracy"]:
        values = [float(row[key]) for row in rows]
        assert np.all(np.isfinite(values)), key
    for row, loss, probe in zip(rows, results["history"]["loss"], results["history"]["probe_loss"]):
        assert float(row["loss"]) == pytest.approx(loss)  # the loss fit prints
        assert float(row["contrastive_loss"]) == pytest.approx(loss - probe)
    assert "contrastive" in result.stdout.split("final loss")[1].splitlines()[0]
    encoder = keras.models.load_model(tmp_path / "encoder.keras")
    features = keras.ops.convert_to_numpy(encoder(np.zeros((2, 8, 8, 1), "float32")))
    assert features.shape == (2, 64)  # small_cnn width 16: 4 * 16 features


@backend_independent  # CI time: once, under TensorFlow; the checkpoint's restore is unit-tested on every backend
def test_killed_run_resumes_to_the_same_results(tiny_run, tmp_path):
    """Issue 26 item 4: a run SIGKILLed after its first epoch, started again
    with --resume, ends with the results of an uninterrupted run: the same
    keys and epochs, the first epoch's logs exactly (kept in the checkpoint),
    the second's close (the optimizer, MoCo's key encoder and queue and the
    learning-rate step are restored; the data order and augmentations of the
    resumed epoch are drawn afresh)."""
    reference_run, reference_dir = tiny_run
    assert reference_run.returncode == 0, reference_run.stderr[-3000:]
    output_dir = tmp_path / "run"
    args = [*TINY_MOCO, f"--output_dir={output_dir}"]
    state = kill_after_first_epoch(SCRIPT, *args, output_dir=str(output_dir))
    assert state["epoch"] == 1 and not os.path.exists(output_dir / "results.json")
    refused = run_example(*args, timeout=120)  # not resumed: the folder is not empty
    assert refused.returncode == 2 and "is not empty" in error_lines(refused.stderr)[0]
    differing = run_example(*args, "--resume", "--epochs=3", "--seed=1", timeout=120)
    assert differing.returncode == 2, differing.stderr[-2000:]
    assert "these differ: --epochs (run: 2, now: 3), --seed (run: 0, now: 1)" in error_lines(differing.stderr)[0]
    resumed = run_example(*args, "--resume", env=user_env())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming" in resumed.stdout and no_native_noise(resumed.stderr), resumed.stderr[-3000:]
    with open(reference_dir / "results.json") as f:
        reference = json.load(f)
    with open(output_dir / "results.json") as f:
        results = json.load(f)
    assert sorted(results) == sorted(reference) and results["resumed_from_epoch"] == 1
    assert sorted(results["history"]) == sorted(reference["history"])
    for key, values in reference["history"].items():
        assert len(results["history"][key]) == len(values) == 2, key
        assert results["history"][key][0] == pytest.approx(values[0], rel=1e-5, abs=1e-6), key
    assert results["history"]["loss"][1] == pytest.approx(reference["history"]["loss"][1], rel=0.02)
    assert results["knn_curve"]["epochs"] == reference["knn_curve"]["epochs"] == [1, 2]
    with open(output_dir / "history.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["1", "2"]
    again = run_example(*args, "--resume", timeout=120)
    assert again.returncode == 0 and "is complete (finished" in again.stdout, again.stdout[-2000:]


def check_mode(results, mode):
    """results.json of a --mode run: the keras_fmicl.methods object, a finite loss."""
    assert results["mode"] == mode
    method = {"moco": "MoCoV2", "mocov3": "MoCoV3"}[mode]
    assert results["method"]["class_name"] == method  # the keras_fmicl.methods object
    assert results["method"]["config"]["momentum"]["class_name"] == "CosineMomentum"
    assert np.isfinite(results["history"]["loss"][0])


@backend_independent
def test_mocov3_mode_with_tsallis_and_cosine_runs(tmp_path):
    """The example's --mode mocov3, --divergence tsallis and --similarity
    cosine flags reach the method and the loss. Once, under TensorFlow: every
    backend trains MoCo v3 in tests/models/test_contrastive_model.py (each mode) and
    the Tsallis and cosine losses in tests/losses/test_losses.py, and runs the
    example end to end in the tiny, random-init and --distribute runs."""
    args = ["--mode=mocov3", "--divergence=tsallis", "--tsallis_order=2", "--similarity=cosine"]
    result = run_example(*TINY, "--epochs=1", "--knn_every=0", *NO_EMBEDDING, *args, f"--output_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "results.json") as f:
        results = json.load(f)
    check_mode(results, "mocov3")
    assert "shortened" not in result.stdout and results["settings"]["warmup_epochs"] == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sigma=-1"], "--sigma must be positive, got -1.0."),
        (["--momentum=1"], "--momentum must be in [0, 1), got 1.0."),
        (["--loss=infonce", "--alpha=2"], "--alpha weighs the negative term"),
        (["--few_label=0.01,2"], "--few_label takes fractions in (0, 1], got '2'."),
        (["--divergence=tsallis", "--tsallis_order=1"], "--tsallis_order must be positive and not 1"),
        (["--mode=moco", "--online_weight=1.5"], "--online_weight must be in [0, 1], got 1.5."),
        (["--online_weight=0.5"], "--online_weight applies to --mode moco or mocov3, not simclr."),
        (["--mode=mocov3", "--queue_size=4096"], "--queue_size applies to --mode moco, not mocov3."),
        (["--mode=moco", "--queue_size=0"], "--queue_size must be positive, got 0."),
        (["--mode=moco", "--batch_size=64", "--queue_size=60"],
         "--queue_size must hold the keys of a batch (1 view x batch size 64 = 64), got 60."),
        (["--mode=moco", "--moco_symmetric", "--batch_size=64", "--queue_size=100"],
         "--queue_size must hold the keys of a batch (2 views x batch size 64 = 128), got 100."),
        (["--mode=moco", "--online_weight=0.5"], "it needs --moco_symmetric"),
        (["--mode=mocov3", "--moco_symmetric"], "--moco_symmetric applies to --mode moco, not mocov3."),
        # issue 27 item 8: non-finite numbers are no settings
        (["--learning_rate=inf"], "--learning_rate must be a finite number, got inf."),
        (["--weight_decay=nan"], "--weight_decay must be a finite number, got nan."),
        # issue 27 item 4: a batch of one has no negatives
        (["--batch_size=1"], "--batch_size must be at least 2"),
        (["--max_train_samples=1"], "--max_train_samples must be at least 2"),
        # issue 27 item 6: a flag the run would ignore
        (["--loss=infonce", "--divergence=js"], "--divergence is ignored by this run: it applies only with --loss fmicl"),
        (["--temperature=0.2"], "--temperature is ignored by this run: it applies only with --similarity cosine"),
        (["--loss=infonce", "--sigma=0.5"], "--sigma is ignored by this run"),
        (["--divergence=js", "--tsallis_order=2"], "--tsallis_order is ignored by this run"),
        (["--validation_samples=100"], "--validation_samples is ignored by this run"),
        # issue 27 item 12: a missing --data_dir is said, not downloaded around
        (["--data_dir=/no/such/folder"], "--data_dir '/no/such/folder' is missing"),
        # issue 26 item 4: nothing to resume
        (["--resume", "--output_dir=/no/such/run"], "--resume: '/no/such/run' holds no run to continue"),
    ],
)
def test_bad_flags_get_one_clear_sentence(args, message):
    result = run_example("--dataset=digits", *args, timeout=120)
    assert result.returncode == 2
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert message in lines[0]


def test_unknown_flag_value_is_rejected_by_absl():
    result = run_example("--mode=byol", timeout=120)
    assert result.returncode != 0
    assert "--mode" in result.stderr and "simclr" in result.stderr


@backend_independent
def test_missing_dataset_gives_one_sentence(tmp_path, monkeypatch):
    # An empty data_dir: no IDX files, and keras' download is unreachable in
    # CI; either way the user reads how to get the data.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    # every download goes to a proxy that refuses at once (nothing listens on
    # port 9): no DNS lookup to time out where there is no network
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "")
    prefix = os.path.join(ROOT, "runs", f"fashion_mnist_simclr_fmicl-kl-gaussian_{keras.backend.backend()}_")
    existed = set(glob.glob(prefix + "*"))
    result = run_example(
        "--dataset=fashion_mnist", f"--data_dir={tmp_path}", "--epochs=1", "--warmup_epochs=0", timeout=200
    )
    if result.returncode == 0:
        pytest.skip("Fashion-MNIST could be downloaded here")
    assert result.returncode == 2, result.stderr[-2000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert "Fashion-MNIST" in lines[0] or "fashion_mnist" in lines[0]
    # issue 13 item 11: the failed run leaves no empty run folder behind
    assert set(glob.glob(prefix + "*")) == existed


@backend_independent
def test_offline_cifar10_fails_fast_and_leaves_no_folder(tmp_path):
    """Issue 13 item 11: offline, tensorflow-datasets retried for ~205 s; the
    run must end with one sentence (the probe waits 5 s at most) and remove
    the output folder it created."""
    pytest.importorskip("tensorflow_datasets")
    proxy = "http://127.0.0.1:9"  # nothing listens on port 9: no network
    env = dict(os.environ, HTTPS_PROXY=proxy, HTTP_PROXY=proxy, https_proxy=proxy, http_proxy=proxy,
               NO_PROXY="", no_proxy="")
    output_dir = tmp_path / "runs" / "cifar"
    (tmp_path / "tfds").mkdir()
    try:
        result = run_example("--dataset=cifar10", f"--data_dir={tmp_path / 'tfds'}",
                             f"--output_dir={output_dir}", timeout=90, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("an offline CIFAR-10 run did not fail within 90 s")
    assert result.returncode == 2, result.stderr[-2000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert "Could not download 'cifar10'" in lines[0] and "network" in lines[0]
    assert "`data_dir`" not in lines[0]  # issue 27 item 12: the flag's name
    assert not os.path.exists(tmp_path / "runs")


def test_the_package_exports_what_the_example_uses():
    for name in ["ContrastiveModel", "FMICLLoss", "InfoNCELoss", "ProjectionHead", "PredictionHead",
                 "SimCLRAugmentation", "CosineMomentum", "KNNMonitor", "knn_accuracy", "resnet18", "small_cnn"]:
        assert hasattr(keras_fmicl, name), name


def test_random_init_floor_few_label_probes_and_saved_features(tmp_path):
    """--epochs 0 evaluates the untrained encoder; --evaluate_on validation
    holds the end of the training split out (never the test split);
    --few_label reports a probe per fraction (mean over draws); --save_features
    writes the features the scores were computed from."""
    result = run_example(
        "--dataset=digits", "--epochs=0", "--evaluate_on=validation", "--validation_samples=100",
        "--knn_every=0", "--linear_epochs=2", "--verbose=0", "--few_label=0.5",
        "--few_label_draws=2", "--save_features", *NO_EMBEDDING, f"--output_dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "results.json") as f:
        results = json.load(f)
    assert results["evaluate_on"] == "validation"
    assert results["test_samples"] == 100
    train_samples = len(keras_fmicl.data.load("digits", "train")[0]) - 100
    assert results["train_samples"] == train_samples
    assert results["history"]["loss"] == []
    assert 0.0 < results["knn_top1"] <= 1.0
    assert "linear top-1, 50 % labels" in result.stdout
    few_label = results["few_label"]
    assert sorted(few_label) == ["0.5"]  # several fractions: tests/evaluation/test_evaluation.py
    for fraction, entry in few_label.items():
        assert len(entry["accuracies"]) == 2
        assert entry["mean"] == pytest.approx(np.mean(entry["accuracies"]))
        # class-balanced: about fraction x train_samples labels in each draw
        assert all(abs(n - float(fraction) * train_samples) <= 10 for n in entry["labels_per_draw"])
    saved = np.load(tmp_path / "features.npz")
    assert saved["train_features"].shape[0] == train_samples and saved["test_features"].shape[0] == 100
    assert saved["train_labels"].shape == (train_samples,)


def test_few_label_probe_epochs_cover_fractions_below_one_label():
    """~300 probe steps however few the labels, at least 100 epochs; a
    fraction below one label (class_balanced_subset still takes one per
    class) used to divide by zero after the whole pretraining."""
    example = load_example()
    labels = np.arange(1337) % 10
    assert example.few_label_epochs(labels, 0.0005, batch_size=256) == 300  # 0.67 labels: 1 step
    assert example.few_label_epochs(labels, 0.01, batch_size=256) == 300  # 13 labels: 1 step
    assert example.few_label_epochs(labels, 0.5, batch_size=256) == 100  # 668 labels: 3 steps
    assert example.few_label_epochs(np.arange(60000) % 10, 0.1, batch_size=256) == 100  # 24 steps


def test_distribute_flag_runs_moco_on_the_backends_engine(tmp_path, monkeypatch):
    """--distribute: MirroredStrategy (TF), DataParallel over 2 host devices
    (JAX), torchrun with 2 processes (torch); the chief writes the results.

    The same run covers --mode moco with --loss infonce, and the preset's
    1-epoch warmup in a 1-epoch run: clamped and said, not rejected (issue 13
    item 12)."""
    backend = keras.backend.backend()
    tiny = [a for a in TINY if not a.startswith("--warmup_epochs")]
    args = [*tiny, "--epochs=1", "--knn_every=0", "--mode=moco", "--loss=infonce", "--distribute",
            *NO_EMBEDDING, f"--output_dir={tmp_path}"]
    if backend == "torch":
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
             "--master_addr=127.0.0.1", f"--master_port={port}", SCRIPT, "--backend=torch", *args],
            capture_output=True, text=True, timeout=300, env=env, cwd=ROOT,
        )
        expected = "torch.distributed, 2 processes"
    else:
        if backend == "jax":
            flags = os.environ.get("XLA_FLAGS", "")
            monkeypatch.setenv("XLA_FLAGS", f"{flags} --xla_force_host_platform_device_count=2".strip())
        result = run_example(*args)
        expected = "DataParallel, 2 devices" if backend == "jax" else "MirroredStrategy"
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    with open(tmp_path / "results.json") as f:
        results = json.load(f)
    assert expected in results["distribution"]
    check_mode(results, "moco")
    assert "supervised_form" in results["loss"]  # the InfoNCE baseline
    assert "it is shortened to 0.1 epochs" in result.stdout
    assert results["settings"]["warmup_epochs"] == pytest.approx(0.1)


@backend_independent
def test_diverged_run_stops_with_one_line_and_marks_results(tmp_path):
    """Issue 27 item 8: a non-finite loss stops the run (exit status 1, one
    line) instead of training every epoch on NaN; results.json says so, and
    --resume says the run is over."""
    args = [*TINY, "--epochs=2", "--knn_every=0", "--learning_rate=1e30", *NO_EMBEDDING, f"--output_dir={tmp_path}"]
    result = run_example(*args)
    assert result.returncode == 1, (result.stdout + result.stderr)[-3000:]
    # besides the one line, only the model's warning that steps with non-finite
    # gradients were skipped (and the line of code Python's warnings print)
    skipped = re.compile(r"UserWarning: \d+ training step\(s\) of epoch \d+ had non-finite|^\s*callback\.")
    lines = [line for line in error_lines(result.stderr) if not skipped.search(line)]
    assert len(lines) == 1 and "training diverged: the loss is" in lines[0], result.stderr[-3000:]
    with open(tmp_path / "results.json") as f:
        results = json.load(f)
    assert results["diverged"] is True and "epoch 1" in results["diverged_at"]
    assert "knn_top1" not in results
    again = run_example(*args, "--resume", timeout=120)
    assert again.returncode == 0 and "is complete (diverged" in again.stdout


def test_help_lists_the_per_dataset_defaults():
    """Issue 27 item 12: --help says each preset's value, not "see PRESETS"."""
    example = load_example()
    assert "digits 10" in example.flags.FLAGS["epochs"].help and "fashion_mnist 12" in example.flags.FLAGS["epochs"].help
    assert "cifar10/cifar100/synthetic_cifar/stl10/tiny_imagenet 0.1" in example.flags.FLAGS["learning_rate"].help
    for name in ("encoder", "width", "batch_size", "weight_decay", "knn_every", "linear_epochs"):
        assert "default per --dataset: " in example.flags.FLAGS[name].help, name
