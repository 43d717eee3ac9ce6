"""`benchmarks/gpu.sh --paper`: every experiment of the paper listed, every command checked, some run at tiny size.

`gpu.sh --paper --dry-run` prints, per experiment, a comment (what to download,
where) and one command per loss. Every printed command, at its full size, is
checked by its script's own flag checks (`check_flags`: what a real run checks
before it imports Keras) on data the test writes itself (JPEG folders in the
Tiny ImageNet and ImageNet layouts, a corpus and SentEval files) or mocks
(tensorflow-datasets' `mock_data` for CIFAR and STL-10). Then one command per
experiment is trained at tiny size (one epoch on 16 images, 32x32 views,
small encoders): InfoNCE for three experiments and f-MICL for the other
three, alternating daily, the f-MICL divergence rotating daily too
(`FMICL_PAPER_ALL=1` trains all of them). All the commands of one script run
in one subprocess (this file, run as a script: the example imported once, its
flags re-parsed per command), under PyTorch (the fastest on a CPU: no
compilation; `FMICL_PAPER_BACKEND=jax` chooses another backend).
"""

import copy
import datetime
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time

import pytest

from tests.helpers import backend_independent

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GPU_SCRIPT = os.path.join(ROOT, "benchmarks", "gpu.sh")
EXPERIMENTS = ("cifar10", "cifar100", "stl10", "tiny_imagenet", "imagenet", "sts")
# the paper's f-Gaussian settings, written out independently of the package
VISION = {"sigma": 0.5**0.5, "alpha": 40.0}  # (2 sigma^2)^-1 = 1
TEXT = {"sigma": (1 / 40) ** 0.5, "alpha": 409600.0}  # (2 sigma^2)^-1 = 20
TINY_IMAGES = 16  # training images of a tiny run (and of every mocked split)
WNIDS = ("n001", "n002", "n003")


def dry_run(**env):
    result = subprocess.run(
        ["bash", GPU_SCRIPT, "--paper", "--dry-run"], capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PYTHON=sys.executable, **env), cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def experiments(lines):
    """{experiment: (comment, [argv, ...])} in the printed order."""
    listed = {}
    name = None
    for line in lines:
        if line.startswith("# "):
            name = line[2:].split(":", 1)[0]
            listed[name] = (line, [])
        elif line.strip():
            listed[name][1].append(shlex.split(line))
    return listed


def flag_values(argv):
    return dict(arg[2:].split("=", 1) for arg in argv if arg.startswith("--"))


def test_every_experiment_is_listed_with_its_download_and_losses():
    listed = experiments(dry_run(BACKENDS="jax"))
    assert tuple(listed) == EXPERIMENTS
    for name, (comment, commands) in listed.items():
        assert "Download first" in comment and ("data" in comment), comment
        losses = []
        for argv in commands:
            assert argv[:2] == ["env", "KERAS_BACKEND=jax"] and argv[2] == sys.executable
            values = flag_values(argv)
            assert values["backend"] == "jax" and values["output_dir"].startswith("benchmarks/results/gpu_paper/")
            if values["loss"] == "infonce":
                losses.append("infonce")
                continue
            paper = TEXT if name == "sts" else VISION
            assert values["similarity"] == "gaussian"
            assert float(values["sigma"]) == pytest.approx(paper["sigma"], rel=1e-12)
            assert float(values["alpha"]) == paper["alpha"]
            losses.append(values["divergence"])
        assert losses[0] == "infonce" and len(losses) >= 2, (name, losses)  # the baseline and f-MICL
    vit = flag_values(listed["imagenet"][1][0])
    assert (vit["mode"], vit["encoder"], vit["batch_size"], vit["temperature"]) == ("mocov3", "vit_small", "4096", "0.2")
    for name in ("stl10", "tiny_imagenet"):
        assert flag_values(listed[name][1][0])["encoder"] == "resnet50"
    assert flag_values(listed["sts"][1][0])["backbone"] == "bert_base_en_uncased"


def test_selection_by_environment():
    listed = experiments(dry_run(EXPERIMENTS="stl10 sts", BACKENDS="torch jax", LOSSES="infonce js", SEEDS="0 1",
                                 EPOCHS="3", DATA_DIR="/d"))
    assert tuple(listed) == ("stl10", "sts")
    assert len(listed["stl10"][1]) == 2 * 2 * 2
    stl10 = flag_values(listed["stl10"][1][0])
    assert stl10["epochs"] == "3" and stl10["data_dir"] == "/d/tensorflow_datasets"
    assert "epochs" not in flag_values(listed["sts"][1][0]) or flag_values(listed["sts"][1][0])["epochs"] == "1"
    bad = subprocess.run(["bash", GPU_SCRIPT, "--paper", "--dry-run"], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHON=sys.executable, EXPERIMENTS="mnist"), cwd=ROOT)
    assert bad.returncode == 2 and "unknown experiments ['mnist']" in bad.stderr


# --------------------------------------------------------------------------- tiny runs


def write_jpeg(tf, path, shape, seed):
    import numpy as np

    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    tf.io.write_file(path, tf.io.encode_jpeg(image))


def write_image_folders(root):
    """Tiny ImageNet (official layout) and ImageNet (class folders), 3 classes."""
    import tensorflow as tf

    tiny = os.path.join(root, "tiny-imagenet-200")
    os.makedirs(tiny)
    with open(os.path.join(tiny, "wnids.txt"), "w") as f:
        f.write("\n".join(WNIDS) + "\n")
    annotations = []
    for label, wnid in enumerate(WNIDS):
        for i in range(6):
            write_jpeg(tf, os.path.join(tiny, "train", wnid, "images", f"{wnid}_{i}.JPEG"), (64, 64, 3), 10 * label + i)
            write_jpeg(tf, os.path.join(root, "imagenet", "train", wnid, f"{i}.JPEG"), (40 + 4 * i, 48, 3), i)
        for i in range(2):
            name = f"val_{label}_{i}.JPEG"
            write_jpeg(tf, os.path.join(tiny, "val", "images", name), (64, 64, 3), 100 + i)
            annotations.append(f"{name}\t{wnid}\t0\t0\t8\t8")
            write_jpeg(tf, os.path.join(root, "imagenet", "val", wnid, f"{i}.JPEG"), (50, 36, 3), 200 + i)
    with open(os.path.join(tiny, "val", "val_annotations.txt"), "w") as f:
        f.write("\n".join(annotations) + "\n")


def write_text_data(root):
    """A corpus and SentEval's seven STS tasks."""
    from tests.data.test_sentences import write_sick
    from tests.data.test_sentences import write_sts_task
    from tests.data.test_sentences import write_stsb

    sts_dir = os.path.join(root, "SentEval", "data")
    for task in ("STS12", "STS13", "STS14", "STS15", "STS16"):
        write_sts_task(sts_dir, task)
    write_stsb(sts_dir)
    write_sick(sts_dir)
    corpus = os.path.join(root, "wiki1m_for_simcse.txt")
    with open(corpus, "w") as f:
        f.write("".join(f"sentence number {i} is about a {('cat', 'dog', 'plane')[i % 3]} .\n" for i in range(64)))
    return corpus, sts_dir


def local_argv(argv, name, root, out):
    """The command as printed, on the test's data and folders: (script, argv after the script)."""
    script = argv[3]
    values = flag_values(argv)
    values.pop("backend")
    values["output_dir"] = os.path.join(out, os.path.basename(values["output_dir"]))
    if name == "sts":
        values.update(corpus=os.path.join(root, "wiki1m_for_simcse.txt"), sts_dir=os.path.join(root, "SentEval", "data"))
    else:
        values["data_dir"] = {"tiny_imagenet": root, "imagenet": os.path.join(root, "imagenet")}.get(name, root)
    return script, values


def tiny_argv(argv, name, root, out):
    """The command at tiny size on the test's data: (script, argv after the script)."""
    script, values = local_argv(argv, name, root, out)
    if name == "sts":
        values.update(backbone="tiny", max_steps="2", batch_size="8", verbose="0")
    else:
        values.update(epochs="1", warmup_epochs="0", batch_size="8", max_train_samples=str(TINY_IMAGES),
                      max_test_samples="8", knn_k="5", linear_epochs="1", embedding_points="0", verbose="0",
                      projection_dim="16")
        if values["encoder"] == "resnet18":
            values["width"] = "8"
        if "image_size" in values:
            values["image_size"] = "32"
        if values["encoder"] == "vit_small":
            values.update(patch_size="8", depth="1", width="32")
    return script, as_argv(script, values)


def as_argv(script, values):
    return [script] + [f"--{key}={value}" for key, value in values.items()]


def trained_commands(listed, day):
    """{experiment: index of the command trained}: InfoNCE (the first
    command) for every other experiment, an f-MICL command for the rest,
    alternating with `day`; every command with FMICL_PAPER_ALL=1."""
    if os.environ.get("FMICL_PAPER_ALL") == "1":
        return {name: range(len(commands)) for name, (_, commands) in listed.items()}
    chosen = {}
    for position, (name, (_, commands)) in enumerate(listed.items()):
        fmicl = len(commands) - 1  # the commands after InfoNCE's
        chosen[name] = [0] if (position + day) % 2 == 0 else [1 + (day // 2) % fmicl]  # its f-MICL days: every other
    return chosen


@backend_independent
def test_trained_commands_alternate_infonce_and_fmicl():
    listed = {name: ("", [["infonce"], ["kl"], ["js"]]) for name in EXPERIMENTS}
    for day in (0, 1, 2):
        chosen = trained_commands(listed, day)
        assert sorted(len(indices) for indices in chosen.values()) == [1] * 6
        assert sum(chosen[name][0] == 0 for name in EXPERIMENTS) == 3  # InfoNCE for three, f-MICL for three
    assert [trained_commands(listed, day)["cifar10"] for day in range(5)] == [[0], [1], [0], [2], [0]]
    assert [trained_commands(listed, day)["cifar100"] for day in range(4)] == [[1], [0], [2], [0]]


def paper_backend():
    return os.environ.get("FMICL_PAPER_BACKEND", "torch")


@pytest.mark.skipif(
    os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow",
    reason="backend-independent: runs once, under KERAS_BACKEND=tensorflow (its runs use FMICL_PAPER_BACKEND, torch)",
)
def test_every_printed_command_is_checked_and_some_run_at_tiny_size(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("keras_hub")
    backend = paper_backend()
    root, out = str(tmp_path / "data"), str(tmp_path / "runs")
    write_image_folders(root)
    write_text_data(root)
    listed = experiments(dry_run(BACKENDS=backend))
    chosen = trained_commands(listed, datetime.date.today().toordinal())
    by_script = {}
    trained = 0
    for name, (_, commands) in listed.items():
        for index, argv in enumerate(commands):
            script, values = local_argv(argv, name, root, out)
            by_script.setdefault(script, []).append({"argv": as_argv(script, values), "train": False})
            if index in chosen[name]:
                by_script[script].append({"argv": tiny_argv(argv, name, root, out)[1], "train": True})
                trained += 1
    for script, runs in by_script.items():
        start = time.time()
        result = subprocess.run(
            [sys.executable, __file__, script, json.dumps(runs)], capture_output=True, text=True, timeout=1800,
            env=dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")),
            cwd=ROOT,
        )
        assert result.returncode == 0, (script, result.stdout[-3000:], result.stderr[-5000:])
        assert result.stdout.count("checked ") == sum(not run["train"] for run in runs), result.stdout
        print("\n".join(line[:200] for line in result.stdout.splitlines() if line.startswith(("running", "  "))))
        print(f"{script}: {sum(run['train'] for run in runs)} of {len(runs)} trained under {backend} "
              f"in {time.time() - start:.0f} s")
    runs = sorted(os.listdir(out))
    assert len(runs) == trained and trained >= len(EXPERIMENTS)
    for run in runs:
        with open(os.path.join(out, run, "results.json")) as f:
            results = json.load(f)
        assert results["backend"] == backend, run
        if run.startswith("sts_"):
            assert results["sts"] is not None and "average" in results["sts"], run
        else:
            assert 0.0 <= results["knn_top1"] <= 1.0 and 0.0 <= results["linear_top1"] <= 1.0, run


# --------------------------------------------------------------------------- the runner (a subprocess)


def run_commands(script, runs):
    """Runs examples/<script> once per {"argv", "train"} in this process (tfds
    mocked); "train": false only checks the flags."""
    import tensorflow_datasets as tfds
    from absl import flags

    from keras_fmicl.data import sources

    sources.DOWNLOAD_PROBE_TIMEOUT = None  # mock data needs no network
    if os.environ.get("KERAS_BACKEND") == "tensorflow":  # XLA compiles a ResNet-50 step for minutes on a CPU
        import keras_fmicl

        compile_model = keras_fmicl.ContrastiveModel.compile

        def compile_without_xla(self, *args, **kwargs):
            return compile_model(self, *args, **dict(kwargs, jit_compile=False))

        keras_fmicl.ContrastiveModel.compile = compile_without_xla
    name = "paper_run_" + os.path.basename(script)[:-3]
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, script))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    presets = copy.deepcopy(getattr(module, "PRESETS", {}))
    with tfds.testing.mock_data(num_examples=TINY_IMAGES):
        for run in runs:
            start = time.time()
            flags.FLAGS.unparse_flags()
            argv = flags.FLAGS(run["argv"])
            if run["train"]:
                print("running", " ".join(run["argv"]), flush=True)
                code = module.main(argv)
                if code:
                    sys.exit(code)
            else:  # what a run checks before it imports Keras
                module.check_flags()
                print("checked", " ".join(run["argv"]), flush=True)
            if presets:
                module.PRESETS.clear()
                module.PRESETS.update(copy.deepcopy(presets))
            if run["train"]:
                print(f"  {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    run_commands(sys.argv[1], json.loads(sys.argv[2]))
