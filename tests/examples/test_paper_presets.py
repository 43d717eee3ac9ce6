"""examples/paper_presets.py: the paper's settings as data, and train_cifar.py's --preset paper.

The expected values are written out here from the paper (Lu et al., TMLR 2023,
docs/fmicl-math.md section 8) and MoCo v3's ViT recipe (Chen, Xie and He,
ICCV 2021), independently of the module.
"""

import importlib.util
import json
import os

import pytest

from tests.examples.example_module import load_example
from tests.examples.scripts import ROOT
from tests.examples.scripts import error_lines
from tests.examples.scripts import run_script
from tests.examples.scripts import script_path
from tests.helpers import backend_independent


def load_presets():
    spec = importlib.util.spec_from_file_location("paper_presets_under_test", os.path.join(ROOT, "examples", "paper_presets.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@backend_independent
def test_resnet50_presets_follow_the_papers_vision_column():
    presets = load_presets()
    stl10 = presets.PAPER_OVERRIDES["stl10"]
    tiny = presets.TRAIN_PRESETS["tiny_imagenet"]
    for preset, size in ((stl10, 96), (tiny, 64)):
        assert (preset["encoder"], preset["optimizer"], preset["learning_rate"]) == ("resnet50", "sgd", 0.1)
        assert (preset["epochs"], preset["batch_size"], preset["knn_k"], preset["image_size"]) == (800, 512, 200, size)
    assert stl10["pretrain_split"] == "train+unlabelled" and stl10["eval_splits"] == ("train", "test")
    assert tiny["eval_splits"] == ("train", "val")
    assert presets.PAPER_OVERRIDES["cifar10"] == presets.PAPER_OVERRIDES["cifar100"] == {"epochs": 800}
    assert presets.VISION_SIGMA == pytest.approx(0.5**0.5) and presets.VISION_ALPHA == 40
    assert 1 / (2 * presets.TEXT_SIGMA**2) == pytest.approx(20) and presets.TEXT_ALPHA == 409600


@backend_independent
def test_imagenet_preset_is_moco_v3s_vit_recipe():
    preset = load_presets().TRAIN_PRESETS["imagenet"]
    expected = dict(
        encoder="vit_small", width=384, depth=12, patch_size=16, frozen_patch_projection=True, projection_dim=256,
        projection_hidden_dim=4096, predictor_hidden_dim=4096, epochs=300, batch_size=4096, base_learning_rate=1.5e-4,
        warmup_epochs=40, weight_decay=0.1, optimizer="adamw", crop_scale=(0.08, 1.0), image_size=224,
    )
    assert {key: preset[key] for key in expected} == expected
    # the linear scaling rule through the example: 1.5e-4 x batch / 256
    example = load_example()
    example.FLAGS.unparse_flags()
    example.FLAGS(["train_cifar.py", "--dataset=imagenet", "--batch_size=1024"])
    try:
        assert example.get_setting("learning_rate") == pytest.approx(1.5e-4 * 1024 / 256)
        assert example.get_setting("encoder") == "vit_small"
    finally:
        example.FLAGS.unparse_flags()


@backend_independent
def test_apply_preset_adds_the_streamed_sets_and_the_papers_overrides():
    presets = load_presets()
    base = {"cifar10": {"epochs": 200, "batch_size": 512}, "stl10": {"epochs": 200, "encoder": "resnet18"}}
    presets.apply_preset(base, "cifar10", None)
    assert base["cifar10"] == {"epochs": 200, "batch_size": 512} and "imagenet" in base and "tiny_imagenet" in base
    presets.apply_preset(base, "stl10", "paper")
    assert base["stl10"]["encoder"] == "resnet50" and base["stl10"]["epochs"] == 800
    assert presets.streams("stl10", "paper") and not presets.streams("stl10", None)
    assert presets.streams("imagenet", None) and not presets.streams("cifar10", "paper")


@backend_independent
def test_commands_and_table(tmp_path):
    presets = load_presets()
    lines = presets.lines(["imagenet", "sts"], ["torch"], [3], [], "py", "out", "/d", epochs=5, pipeline="model")
    assert lines[0].startswith("# imagenet: ") and "/d/imagenet/train/<wnid>" in lines[0]
    vit = [line for line in lines if not line.startswith("#")][0].split()
    assert vit[:5] == ["env", "KERAS_BACKEND=torch", "py", "examples/train_cifar.py", "--backend=torch"]
    assert "--epochs=5" in vit and "--data_dir=/d/imagenet" in vit and "--pipeline=model" not in vit
    assert vit[-1] == "--output_dir=out/imagenet_infonce_torch_seed3"
    sts = [line.split() for line in lines if "train_sentences.py" in line]
    assert len(sts) == 4 and "--corpus=/d/wiki1m_for_simcse.txt" in sts[0] and "--epochs=5" not in sts[0]
    # the table reads each run's results.json
    for folder, results in (("cifar10_kl_jax_seed0", {"knn_top1": 0.9061, "linear_top1": 0.5}),
                            ("sts_infonce_jax_seed1", {"sts": {"average": 77.4}})):
        os.makedirs(tmp_path / folder)
        (tmp_path / folder / "results.json").write_text(json.dumps(results))
    rows = presets.table(str(tmp_path))
    assert rows[2] == "| cifar10 | kl | jax | 0 | 90.61 | kNN top-1 (k = 200) | 90.61 |"
    assert rows[3] == "| sts | infonce | jax | 1 | 77.40 | STS average Spearman | 77.40 (SimCLR), 77.88 (MoCo) |"


@backend_independent
@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset=cifar10", "--image_size=32"], "--image_size applies to the data sets streamed from disk"),
        (["--dataset=stl10", "--depth=2"], "--depth applies to the data sets streamed from disk"),
        (["--dataset=imagenet", "--image_size=0"], "--image_size must be positive, got 0."),
    ],
)
def test_bad_streaming_flags_are_refused(args, message):
    result = run_script(script_path("train_cifar.py"), *args, timeout=120)
    assert result.returncode == 2, result.stderr
    assert message in error_lines(result.stderr)[-1]
