"""The paper's experiments as data: the presets of examples/train_cifar.py and one command each.

Lu et al., "f-MICL: Understanding and Generalizing InfoNCE-based Contrastive
Learning", TMLR 2023 (arXiv 2402.10150), "Experimental setup" (its Table 7)
and docs/fmicl-math.md section 8; the ImageNet run follows MoCo v3's ViT
recipe (Chen, Xie and He, ICCV 2021, and facebookresearch/moco-v3). Keras-free
(benchmarks/gpu.sh runs it with any Python):

    python examples/paper_presets.py --backends jax --out runs/paper   # the commands
    python examples/paper_presets.py --list                            # the experiment names

docs/paper-experiments.md shows every setting beside the paper's and states
the deviations; tests/benchmarks/test_gpu_paper.py checks every command's
flags and runs one per experiment at tiny size.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

# f-Gaussian similarity and alpha of the paper's vision setting,
# (2 sigma^2)^-1 = 1 and alpha = 40, and of its text setting, (2 sigma^2)^-1 = 20
# and alpha = 409600.
VISION_SIGMA = 2**-0.5
VISION_ALPHA = 40.0
TEXT_SIGMA = 40**-0.5
TEXT_ALPHA = 409600.0

# Settings shared by the ResNet-50 runs (STL-10, TinyImageNet): the vision
# column of the paper's table (SGD, learning rate 0.1, cosine, 800 epochs,
# kNN k = 200); the batch of 512 is CIFAR-10's, the one the table states.
_RESNET50 = dict(
    encoder="resnet50", width=None, projection_dim=128, epochs=800, batch_size=512,
    learning_rate=0.1, warmup_epochs=10, weight_decay=5e-4, optimizer="sgd",
    max_train_samples=None, knn_every=0, linear_epochs=100, knn_k=200,
    crop_scale=(0.2, 1.0), flip=True, color=True,
)

TRAIN_PRESETS = {
    # Tiny ImageNet (64x64, 200 classes): ResNet-50 at its native 64x64
    # (train: 100,000 images; evaluation on the 10,000 of val).
    "tiny_imagenet": dict(_RESNET50, image_size=64, pretrain_split="train", eval_splits=("train", "val")),
    # ImageNet-1k with ViT-S/16 and MoCo v3's recipe: AdamW with learning
    # rate 1.5e-4 x batch / 256 (base_learning_rate), weight decay 0.1, 40
    # warmup epochs, 300 epochs, batch 4096, momentum 0.99 rising to 1
    # (cosine), a 3-layer projector 4096-256 and a 2-layer predictor
    # 4096-256, a frozen random patch projection, crops of (0.08, 1).
    "imagenet": dict(
        encoder="vit_small", width=384, depth=12, patch_size=16, frozen_patch_projection=True,
        projection_dim=256, projection_hidden_dim=4096, predictor_hidden_dim=4096,
        epochs=300, batch_size=4096, learning_rate=None, base_learning_rate=1.5e-4,
        warmup_epochs=40, weight_decay=0.1, optimizer="adamw",
        max_train_samples=None, knn_every=0, linear_epochs=90, knn_k=20,
        crop_scale=(0.08, 1.0), flip=True, color=True, blur_probability=0.5,
        image_size=224, pretrain_split="train", eval_splits=("train", "val"),
    ),
}
"""train_cifar.py's presets of the data sets it streams from disk (the paper's settings)."""

PAPER_OVERRIDES = {
    # the paper's 800 epochs (the dataset presets keep 200, its alpha ablation)
    "cifar10": dict(epochs=800),
    "cifar100": dict(epochs=800),
    # STL-10: ResNet-50 on 96x96 views, pretrained on train + unlabelled
    # (105,000 images), evaluated on train (5,000) -> test (8,000)
    "stl10": dict(_RESNET50, image_size=96, pretrain_split="train+unlabelled", eval_splits=("train", "test")),
    "tiny_imagenet": {},
    "imagenet": {},
}
"""`--preset paper`: what changes from each data set's own preset."""

STREAMED = ("tiny_imagenet", "imagenet")
"""Data sets streamed from disk (`keras_fmicl.data.image_stream`) whatever the preset."""


def streams(dataset: str, preset: str | None) -> bool:
    """Whether train_cifar.py streams `dataset` from disk (views drawn in tf.data)."""
    return dataset in STREAMED or (preset == "paper" and "pretrain_split" in PAPER_OVERRIDES.get(dataset, {}))


def apply_preset(presets: dict, dataset: str, preset: str | None) -> None:
    """Adds the streamed data sets to train_cifar.py's `presets` and, with
    `preset == "paper"`, the paper's overrides of `dataset`."""
    presets.update({name: dict(values) for name, values in TRAIN_PRESETS.items() if name not in presets})
    if preset == "paper":
        presets[dataset] = dict(presets[dataset], **PAPER_OVERRIDES[dataset])


# --------------------------------------------------------------------------- the experiments

FMICL_VISION = ["--loss=fmicl", "--similarity=gaussian", f"--sigma={VISION_SIGMA!r}", f"--alpha={VISION_ALPHA:g}"]

_SINGLE = {
    "cifar10": dict(
        title="CIFAR-10, ResNet-18, SimCLR",
        download="CIFAR-10 through tensorflow-datasets (~160 MB): "
                 "python -c \"import tensorflow_datasets as t; t.load('cifar10', data_dir='DATA_DIR/tensorflow_datasets')\"",
        script="train_cifar.py",
        flags=["--dataset=cifar10", "--preset=paper", "--mode=simclr", "--encoder=resnet18", "--width=64",
               "--batch_size=512", "--learning_rate=0.1", "--epochs=800", "--knn_k=200"],
        data_flags=["--data_dir={data_dir}/tensorflow_datasets"],
        pipeline=True,
        losses=("infonce", "kl", "js"),
        paper={"infonce": "89.71 (SimCLR)", "kl": "90.61", "js": "89.66", "pearson": "89.35", "vlc": "89.13"},
        metric="kNN top-1 (k = 200)",
    ),
    "stl10": dict(
        title="STL-10, ResNet-50, SimCLR, train + unlabelled",
        download="STL-10 through tensorflow-datasets (~2.6 GB, with the 100,000 unlabelled images): "
                 "python -c \"import tensorflow_datasets as t; t.builder('stl10', data_dir='DATA_DIR/tensorflow_datasets')"
                 ".download_and_prepare()\"",
        script="train_cifar.py",
        flags=["--dataset=stl10", "--preset=paper", "--mode=simclr", "--encoder=resnet50", "--image_size=96",
               "--batch_size=512", "--learning_rate=0.1", "--epochs=800", "--knn_k=200"],
        data_flags=["--data_dir={data_dir}/tensorflow_datasets"],
        losses=("infonce", "kl", "js"),
        paper={"js": "85.94 (best divergence)"},
        metric="kNN top-1 (k = 200)",
    ),
    "tiny_imagenet": dict(
        title="Tiny ImageNet, ResNet-50, SimCLR",
        download="Tiny ImageNet: unzip http://cs231n.stanford.edu/tiny-imagenet-200.zip (~240 MB) into "
                 "DATA_DIR (DATA_DIR/tiny-imagenet-200/wnids.txt, train/, val/)",
        script="train_cifar.py",
        flags=["--dataset=tiny_imagenet", "--preset=paper", "--mode=simclr", "--encoder=resnet50",
               "--image_size=64", "--batch_size=512", "--learning_rate=0.1", "--epochs=800", "--knn_k=200"],
        data_flags=["--data_dir={data_dir}"],
        losses=("infonce", "kl", "pearson"),
        paper={"pearson": "43.45 (best divergence)"},
        metric="kNN top-1 (k = 200)",
    ),
    "imagenet": dict(
        title="ImageNet-1k, ViT-S/16, MoCo v3",
        download="ImageNet-1k (ILSVRC2012, ~150 GB, from image-net.org after sign-up): DATA_DIR/imagenet/train/<wnid>/*.JPEG "
                 "and DATA_DIR/imagenet/val/<wnid>/*.JPEG (val sorted into class folders), or tensorflow-datasets' "
                 "imagenet2012 with ILSVRC2012_img_{train,val}.tar in DATA_DIR/imagenet/downloads/manual",
        script="train_cifar.py",
        flags=["--dataset=imagenet", "--preset=paper", "--mode=mocov3", "--encoder=vit_small", "--image_size=224",
               "--patch_size=16", "--batch_size=4096", "--epochs=300", "--momentum=0.99", "--knn_k=20"],
        data_flags=["--data_dir={data_dir}/imagenet"],
        infonce_flags=["--loss=infonce", "--similarity=cosine", "--temperature=0.2"],
        losses=("infonce", "kl", "js"),
        paper={"infonce": "73.2 (MoCo v3)", "js": "76.5"},
        metric="linear top-1",
    ),
    "sts": dict(
        title="STS, BERT-base, SimCSE (unsupervised)",
        download="SimCSE's wiki1m_for_simcse.txt (~120 MB, huggingface.co/datasets/princeton-nlp/datasets-for-simcse) "
                 "as DATA_DIR/wiki1m_for_simcse.txt, SentEval's STS data (SentEval/data/downstream/get_transfer_data.bash) "
                 "as DATA_DIR/SentEval/data; the keras-hub preset bert_base_en_uncased downloads itself",
        script="train_sentences.py",
        flags=["--backbone=bert_base_en_uncased", "--method=simcse", "--batch_size=64", "--learning_rate=3e-05",
               "--epochs=1", "--sequence_length=32"],
        fmicl_flags=["--loss=fmicl", "--similarity=gaussian", f"--sigma={TEXT_SIGMA!r}", f"--alpha={TEXT_ALPHA:g}"],
        data_flags=["--corpus={data_dir}/wiki1m_for_simcse.txt", "--sts_dir={data_dir}/SentEval/data"],
        losses=("infonce", "kl", "pearson", "js"),
        paper={"infonce": "77.40 (SimCLR), 77.88 (MoCo)", "kl": "78.02", "pearson": "77.59", "js": "76.76"},  # and three more in docs/fmicl-math.md
        metric="STS average Spearman",
    ),
}

EXPERIMENTS = {  # CIFAR-100: CIFAR-10's setting (no number of the paper recorded)
    "cifar10": _SINGLE["cifar10"],
    "cifar100": dict(
        _SINGLE["cifar10"], title="CIFAR-100, ResNet-18, SimCLR", paper={},
        download=_SINGLE["cifar10"]["download"].replace("CIFAR-10", "CIFAR-100").replace("'cifar10'", "'cifar100'"),
        flags=[flag.replace("=cifar10", "=cifar100") for flag in _SINGLE["cifar10"]["flags"]],
    ),
    **{name: value for name, value in _SINGLE.items() if name != "cifar10"},
}
"""One entry per experiment of the paper: what to download, the flags, the
losses run (InfoNCE: the baseline), the paper's numbers per loss."""


def loss_flags(experiment: dict, loss: str) -> list[str]:
    """The flags of one loss of an experiment (InfoNCE: its baseline)."""
    if loss == "infonce":
        return list(experiment.get("infonce_flags", ["--loss=infonce"]))
    return list(experiment.get("fmicl_flags", FMICL_VISION)) + [f"--divergence={loss}"]


def command(name: str, loss: str, backend: str, seed: int, python: str, out: str,
            data_dir: str, epochs: int | None = None, pipeline: str | None = None) -> list[str]:
    """One run of experiment `name` with `loss` on `backend`: the argv."""
    experiment = EXPERIMENTS[name]
    flags = list(experiment["flags"])
    if epochs is not None and experiment["script"] == "train_cifar.py":
        flags = [f"--epochs={epochs}" if flag.startswith("--epochs=") else flag for flag in flags]
    if pipeline and experiment.get("pipeline"):
        flags.append(f"--pipeline={pipeline}")
    flags += [flag.format(data_dir=data_dir) for flag in experiment["data_flags"]]
    folder = os.path.join(out, f"{name}_{loss}_{backend}_seed{seed}")
    return ["env", f"KERAS_BACKEND={backend}", python, f"examples/{experiment['script']}", f"--backend={backend}",
            *flags, *loss_flags(experiment, loss), f"--seed={seed}", f"--output_dir={folder}"]


def lines(names, backends, seeds, losses, python, out, data_dir, epochs=None, pipeline=None) -> list[str]:
    """The shell lines: per experiment a comment (what to download, where)
    and one command per backend, seed and loss."""
    result = []
    for name in names:
        experiment = EXPERIMENTS[name]
        where = experiment["download"].replace("DATA_DIR", data_dir)
        result.append(f"# {name}: {experiment['title']}. Download first: {where}")
        for backend in backends:
            for seed in seeds:
                for loss in losses or experiment["losses"]:
                    argv = command(name, loss, backend, seed, python, out, data_dir, epochs, pipeline)
                    result.append(" ".join(shlex.quote(arg) for arg in argv))
    return result


def table(folder: str) -> list[str]:
    """The runs under `folder` (one `<experiment>_<loss>_<backend>_seed<seed>/results.json` each) as
    Markdown rows beside the paper's numbers."""
    rows = ["| experiment | loss | backend | seed | ours | metric | paper |", "|---|---|---|---:|---:|---|---:|"]
    for entry in sorted(os.listdir(folder)):
        path = os.path.join(folder, entry, "results.json")
        name = next((key for key in EXPERIMENTS if entry.startswith(key + "_")), None)
        if name is None or not os.path.exists(path):
            continue
        loss, backend, seed = entry[len(name) + 1:].rsplit("_", 2)
        with open(path) as f:
            results = json.load(f)
        experiment = EXPERIMENTS[name]
        if name == "sts":
            value = (results.get("sts") or {}).get("average")
            ours = "-" if value is None else f"{value:.2f}"  # evaluate_sts reports percent
        else:
            ours = f"{100 * results['linear_top1' if name == 'imagenet' else 'knn_top1']:.2f}"
        rows.append(f"| {name} | {loss} | {backend} | {seed[4:]} | {ours} | {experiment['metric']} "
                    f"| {experiment['paper'].get(loss, '-')} |")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="The paper's experiments, one shell command each.")
    parser.add_argument("--list", action="store_true", help="print the experiment names and stop")
    parser.add_argument("--experiments", default=" ".join(EXPERIMENTS))
    parser.add_argument("--backends", default="jax")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--losses", default="", help="override every experiment's losses (infonce or divergences)")
    parser.add_argument("--python", default="python3")
    parser.add_argument("--out", default="benchmarks/results/gpu_paper")
    parser.add_argument("--data_dir", default="data", help="the folder the downloads go under")
    parser.add_argument("--epochs", type=int, default=None, help="vision runs: override the epochs")
    parser.add_argument("--pipeline", default=None, help="CIFAR runs: --pipeline of train_cifar.py (model, tf_data)")
    parser.add_argument("--table", default=None, help="print the results under this folder beside the paper's")
    args = parser.parse_args(argv)
    if args.list:
        print(" ".join(EXPERIMENTS))
        return 0
    if args.table:
        print("\n".join(table(args.table)))
        return 0
    names = args.experiments.split()
    unknown = [name for name in names if name not in EXPERIMENTS]
    if unknown:
        print(f"paper_presets.py: unknown experiments {unknown}; known: {' '.join(EXPERIMENTS)}", file=sys.stderr)
        return 2
    seeds = [int(seed) for seed in args.seeds.split()]
    for line in lines(names, args.backends.split(), seeds, args.losses.split(), args.python, args.out,
                      args.data_dir, args.epochs, args.pipeline):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
