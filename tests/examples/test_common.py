"""The examples' run plumbing, in process (cheap): run folders, --resume,
flag checks, the checkpoint, divergence and figures that never lose a run
(issues 26 and 27)."""

import json
import math
import os
import types

import keras
import numpy as np
import pytest

import keras_fmicl
from examples import _common as common
from examples import _figures as figures
from tests.helpers import backend_independent
from tests.helpers import to_numpy

FLAGS = {"dataset": "digits", "epochs": 2, "learning_rate": 0.003, "few_label": ["0.1"], "output_dir": None,
         "verbose": 2, "resume": False, "data_dir": None, "debug": False}


@backend_independent
def test_loss_tag_and_default_names_say_what_distinguishes_runs():
    assert common.loss_tag("fmicl", "js", None, 1.5) == "fmicl-js-gaussian"
    assert common.loss_tag("fmicl", "tsallis", "cosine", 2.0) == "fmicl-tsallis2-cosine"
    assert common.loss_tag("infonce", "js", None, 1.5) == "infonce-cosine"  # the divergence is not InfoNCE's
    assert common.default_output_dir("digits", "moco", "fmicl-kl-gaussian", "jax") == os.path.join(
        "runs", "digits_moco_fmicl-kl-gaussian_jax")


@backend_independent
def test_default_folders_count_up_and_never_reuse_a_run(tmp_path):
    prefix = str(tmp_path / "runs" / "digits_simclr_fmicl-kl-gaussian_jax")
    first = common.open_run_folder(None, prefix, False, FLAGS)
    assert first.path == prefix + "_1" and first.created[0] == str(tmp_path / "runs")
    assert json.loads((tmp_path / "runs" / "digits_simclr_fmicl-kl-gaussian_jax_1" / "flags.json").read_text()) == FLAGS
    os.mkdir(prefix + "_9")  # the counter follows the highest, as numbers (10 after 9)
    assert common.open_run_folder(None, prefix, False, FLAGS).path == prefix + "_10"
    assert common.numbered_folders(prefix) == [prefix + "_1", prefix + "_9", prefix + "_10"]


@backend_independent
def test_explicit_output_dir_is_refused_unless_new_or_empty(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert common.open_run_folder(str(empty), "unused", False, FLAGS).path == str(empty)
    with pytest.raises(common.FlagError, match=r"--output_dir '.*empty' is not empty .*--resume"):
        common.open_run_folder(str(empty), "unused", False, FLAGS)  # it holds flags.json now
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(common.FlagError, match=r"--output_dir '.*a_file/run' cannot be created: "):
        common.open_run_folder(str(blocker / "run"), "unused", False, FLAGS)


@backend_independent
def test_resume_checks_the_folder_and_the_flags(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(common.FlagError, match="holds no run to continue"):
        common.open_run_folder(str(tmp_path), "unused", True, FLAGS)
    with pytest.raises(common.FlagError, match="there is no run .*_<N> to continue"):
        common.open_run_folder(None, str(tmp_path / "none"), True, FLAGS)
    common.open_run_folder(str(run), "unused", False, FLAGS)
    # killed before its first epoch: it starts again from the first
    folder = common.open_run_folder(str(run), "unused", True, dict(FLAGS, verbose=0, output_dir="elsewhere"))
    assert folder.start == 0 and folder.log is None and folder.resumed
    changed = dict(FLAGS, epochs=3, learning_rate=0.01)
    with pytest.raises(common.FlagError) as error:
        common.open_run_folder(str(run), "unused", True, changed)
    assert "--epochs (run: 2, now: 3), --learning_rate (run: 0.003, now: 0.01)" in str(error.value)
    (run / "results.json").write_text(json.dumps({"diverged": True}))
    with pytest.raises(common.RunComplete, match="is complete .diverged"):
        common.open_run_folder(str(run), "unused", True, FLAGS)
    # without --output_dir: the last numbered folder of the default name
    prefix = str(tmp_path / "digits")
    common.open_run_folder(None, prefix, False, FLAGS)
    common.open_run_folder(None, prefix, False, dict(FLAGS, epochs=5))
    assert common.open_run_folder(None, prefix, True, dict(FLAGS, epochs=5)).path == prefix + "_2"


@backend_independent
def test_failed_run_before_its_first_epoch_leaves_no_folder(tmp_path):
    folder = common.open_run_folder(str(tmp_path / "runs" / "a"), "unused", False, FLAGS)

    def fail(folder):
        raise ValueError("no data")

    with pytest.raises(ValueError):
        common.run_in_folder(folder, fail)
    assert not (tmp_path / "runs").exists()


@backend_independent
def test_numeric_flags_must_be_finite_and_positive():
    common.check_positive({"learning_rate": 0.1, "sigma": None})
    for value, message in [(math.inf, "must be a finite number, got inf"), (math.nan, "must be positive, got nan"),
                           (0, "must be positive, got 0")]:
        with pytest.raises(common.FlagError, match=f"--learning_rate {message}"):
            common.check_positive({"learning_rate": value})
    with pytest.raises(common.FlagError, match="--momentum must be a finite number, got -inf"):
        common.check_finite({"seed": 0, "momentum": -math.inf})
    with pytest.raises(common.FlagError, match="at least 2 samples .* gives 1"):
        common.check_batch(256, 1)


@backend_independent
def test_flags_the_run_ignores_are_refused_when_set():
    flag = types.SimpleNamespace
    flags = {"divergence": flag(present=True), "sigma": flag(present=False)}
    common.refuse_ignored_flags(flags, [("sigma", False, "--similarity gaussian")])  # left unset: fine
    with pytest.raises(common.FlagError, match=r"--divergence is ignored .* only with --loss fmicl"):
        common.refuse_ignored_flags(flags, [("divergence", False, "--loss fmicl")])


@backend_independent
def test_exit_codes_of_a_diverged_and_a_complete_run(capsys):
    def diverge():
        raise common.RunDiverged("training diverged: the loss is nan at epoch 1")

    assert common.exit_code("x.py", ["x.py"], diverge) == 1
    assert capsys.readouterr().err == "x.py: error: training diverged: the loss is nan at epoch 1\n"

    def complete():
        raise common.RunComplete("the run in 'r' is complete")

    assert common.exit_code("x.py", ["x.py"], complete) == 0
    assert "is complete" in capsys.readouterr().out


def test_divergence_stops_fit_at_the_first_non_finite_loss():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.ones((8, 2), "float32")
    y = np.full((8, 1), np.nan, "float32")
    seen = []
    counter = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(epoch))
    with pytest.raises(common.RunDiverged, match="the loss is nan at step 1 of epoch 1"):
        model.fit(x, y, batch_size=4, epochs=3, verbose=0,
                  callbacks=[common.divergence_check(keras, every_batch=True), counter])
    with pytest.raises(common.RunDiverged, match="the loss is nan at epoch 1"):
        model.fit(x, y, batch_size=4, epochs=3, verbose=0, callbacks=[common.divergence_check(keras), counter])
    assert seen == []  # the callbacks after it never saw a NaN epoch


def tiny_moco_model():
    encoder = keras_fmicl.small_cnn((8, 8, 1), width=4)
    method = keras_fmicl.methods.MoCoV2(momentum=keras_fmicl.CosineMomentum(0.9, 10), queue_size=16)
    model = keras_fmicl.ContrastiveModel(encoder, method=method, projector=keras_fmicl.ProjectionHead(16, 8),
                                         num_views=2)
    schedule = keras.optimizers.schedules.CosineDecay(0.1, decay_steps=10)
    model.compile(optimizer=keras.optimizers.SGD(schedule, momentum=0.9), loss=keras_fmicl.FMICLLoss("kl"))
    return model


def test_checkpoint_restores_optimizer_queue_and_momentum_encoder(tmp_path):
    """The checkpoint holds every variable a resumed run needs: the
    optimizer's (its step drives the learning-rate schedule), MoCo's key
    encoder and queue, and what the run logged."""
    views = np.random.default_rng(0).uniform(size=(16, 2, 8, 8, 1)).astype("float32")
    checkpoint = common.Checkpoint(str(tmp_path))
    trained = tiny_moco_model()
    trained.fit({"views": views}, batch_size=8, epochs=1, verbose=0,
                callbacks=[checkpoint.callback(keras, lambda: {"rows": [{"epoch": 1}]})])
    state = checkpoint.state()
    assert state["epoch"] == 1 and state["log"] == {"rows": [{"epoch": 1}]}
    assert sorted(os.listdir(checkpoint.folder)) == ["epoch_1.weights.h5", "state.json"]
    restored = tiny_moco_model()
    checkpoint.restore(keras, restored, {"views": views})  # builds the model and its optimizer first
    assert int(to_numpy(restored.optimizer.iterations)) == 2
    assert len(restored.weights) == len(trained.weights)
    for before, after in zip(trained.weights + trained.optimizer.variables,
                             restored.weights + restored.optimizer.variables):
        assert tuple(before.shape) == tuple(after.shape), before.path
        np.testing.assert_array_equal(to_numpy(after), to_numpy(before), err_msg=before.path)
    assert [v for v in restored.weights if "queue" in v.path]


@backend_independent
def test_history_csv_continues_after_a_restore(tmp_path):
    path = str(tmp_path / "history.csv")
    first = common.HistoryCSV(path, extra_keys=["knn_accuracy"])
    first.add(1, {"loss": 2.0, "probe_loss": 0.5, "knn_accuracy": 0.25})
    second = common.HistoryCSV(path, extra_keys=["knn_accuracy"])
    second.restore(json.loads(json.dumps(first.state())))  # as the checkpoint keeps it
    second.add(2, {"loss": 1.0, "probe_loss": 0.25})
    assert second.history() == {"loss": [2.0, 1.0], "probe_loss": [0.5, 0.25], "knn_accuracy": [0.25]}
    assert open(path).read().splitlines() == [
        "epoch,loss,contrastive_loss,knn_accuracy,probe_loss", "1,2.0,1.5,0.25,0.5", "2,1.0,0.75,,0.25"]


@backend_independent
def test_a_failed_figure_is_a_warning_line_and_one_point_is_drawn(tmp_path, capsys):
    def broken():
        raise IndexError("index 1 is out of bounds")

    assert figures.plot_safely("embedding.png", broken) is None
    assert capsys.readouterr().err == "Warning: embedding.png was not drawn (IndexError: index 1 is out of bounds).\n"
    points, method = figures.embed_2d(np.ones((1, 4)), seed=0)
    assert points.shape == (1, 2) and method == "PCA"
    pytest.importorskip("matplotlib")
    path = tmp_path / "embedding.png"
    assert figures.plot_embedding(np.ones((3, 4)), np.array([0, 1, 2]), None, "t", "k", str(path), 1, 0) == "PCA"
    assert path.stat().st_size > 0
