"""f-MICL with a momentum encoder at the package defaults, over a grid nobody tuned on.

Issue 24, item 4: `ContrastiveModel(encoder, method=MoCoV2(...) or
MoCoV3(...), projector=ProjectionHead(128, 64))` compiled with
`FMICLLoss(divergence)` at its defaults must learn wherever InfoNCE does.
This script trains that configuration, as a new user would write it, over

    data set   x  optimizer                 x  method (queue)          x  loss            x  seed
    fashion_mnist  adamw (constant)            moco, 4 batches of keys     infonce, kl, js     0, 1
    digits         adamw_cosine (warmup)       moco, > 1/10 of the data
                   sgd_cosine                  mocov3 (no queue)

plus a random-init encoder per data set and seed, and scores each run by
weighted kNN (k = 200, T = 0.1) on a validation split carved from the end
of the training split (never the test split). The report compares each
f-MICL run with InfoNCE of the same grid point and seed (paired
differences, 95 % Student-t CI over seeds) and with the random-init floor,
against the issue's targets: the best f-MICL within 1 point of InfoNCE, every
f-MICL at least 1 point above random init.

    python benchmarks/momentum_grid.py                   # the whole grid (resumes)
    python benchmarks/momentum_grid.py --datasets digits # one data set
    python benchmarks/momentum_grid.py --report          # the table of finished runs

One JSON file per run under `--output_dir` (default
benchmarks/results/momentum_grid/runs): a run with a file is skipped, so an
interrupted grid resumes where it stopped; `summary.json` and `grid.md` are
written by every call.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUTPUT = os.path.join(ROOT, "benchmarks", "results", "momentum_grid")

# Per data set: the training budget and the two queue sizes (4 batches of
# keys; one holding more than a tenth of the training samples).
DATASETS = {
    "fashion_mnist": dict(
        train=20000, validation=10000, epochs=10, batch_size=256, width=16,
        queues=(4 * 256, 4096), crop_scale=(0.3, 1.0), flip=True,
    ),
    "digits": dict(
        train=None, validation=300, epochs=40, batch_size=128, width=16,
        queues=(4 * 128, 1024), crop_scale=(0.4, 1.0), flip=False,
    ),
}
OPTIMIZERS = ("adamw", "adamw_cosine", "sgd_cosine")
METHODS = ("moco_small_queue", "moco_large_queue", "mocov3")
LOSSES = ("infonce", "kl", "js")
SEEDS = (0, 1)
MOMENTUM = 0.99
SGD_RATE = 0.06  # the grid's SGD peak learning rate per 256 samples (`--sgd_rate`)
KNN_K, KNN_T = 200, 0.1


def run_name(dataset, optimizer, method, loss, seed):
    return f"{dataset}-{optimizer}-{method}-{loss}-s{seed}"


def random_init_name(dataset, seed):
    return f"{dataset}-random-init-s{seed}"


def load_split(keras_fmicl, dataset):
    """(train images, train labels, validation images, validation labels), float32 in [0, 1]."""
    budget = DATASETS[dataset]
    images, labels = keras_fmicl.data.load(dataset, "train")
    images = images.astype("float32") / 255.0
    count = budget["validation"]
    train_x, train_y = images[:-count], labels[:-count]
    if budget["train"] is not None:
        train_x, train_y = train_x[: budget["train"]], train_y[: budget["train"]]
    return train_x, train_y, images[-count:], labels[-count:]


def build_optimizer(keras, name, steps, batch_size, sgd_rate=SGD_RATE):
    """The grid's optimizers; `sgd_rate`: SGD's peak learning rate per 256 samples."""
    if name == "adamw":
        return keras.optimizers.AdamW(2e-3, weight_decay=1e-4)
    warmup = max(steps // 10, 1)
    if name == "adamw_cosine":
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0, steps - warmup, warmup_target=2e-3, warmup_steps=warmup
        )
        return keras.optimizers.AdamW(schedule, weight_decay=1e-4)
    if name == "sgd_cosine":  # momentum 0.9 as MoCo v2 (its rate: 0.03 per 256; the grid: SGD_RATE)
        schedule = keras.optimizers.schedules.CosineDecay(sgd_rate * batch_size / 256, steps)
        return keras.optimizers.SGD(schedule, momentum=0.9, weight_decay=1e-4)
    raise ValueError(name)


def build_method(keras_fmicl, name, budget, steps):
    if name == "mocov3":
        return keras_fmicl.methods.MoCoV3(
            momentum=keras_fmicl.CosineMomentum(MOMENTUM, steps),
            predictor=keras_fmicl.PredictionHead(128, 64),
        )
    small, large = budget["queues"]
    queue = small if name == "moco_small_queue" else large
    return keras_fmicl.methods.MoCoV2(momentum=MOMENTUM, queue_size=queue)


def build_loss(keras_fmicl, name):
    if name == "infonce":
        return keras_fmicl.InfoNCELoss()
    return keras_fmicl.FMICLLoss(name)  # every other argument at its default


def knn(keras_fmicl, encoder, split):
    train_x, train_y, val_x, val_y = split
    train_f = keras_fmicl.evaluation.extract_features(encoder, train_x)
    val_f = keras_fmicl.evaluation.extract_features(encoder, val_x)
    return float(keras_fmicl.knn_accuracy(train_f, train_y, val_f, val_y, k=KNN_K, temperature=KNN_T))


def train_one(keras, keras_fmicl, dataset, optimizer, method, loss, seed, split, sgd_rate=SGD_RATE):
    budget = DATASETS[dataset]
    train_x = split[0]
    keras.utils.set_random_seed(seed)
    encoder = keras_fmicl.small_cnn(train_x.shape[1:], width=budget["width"])
    steps = budget["epochs"] * (len(train_x) // budget["batch_size"])
    model = keras_fmicl.ContrastiveModel(
        encoder,
        method=build_method(keras_fmicl, method, budget, steps),
        projector=keras_fmicl.ProjectionHead(128, 64),
        augmenter=keras_fmicl.SimCLRAugmentation(
            train_x.shape[1:3], crop_scale=budget["crop_scale"], flip=budget["flip"],
            value_range=(0.0, 1.0), seed=seed,
        ),
    )  # fmt: skip
    model.compile(
        optimizer=build_optimizer(keras, optimizer, steps, budget["batch_size"], sgd_rate),
        loss=build_loss(keras_fmicl, loss),
    )
    start = time.time()
    history = model.fit(
        train_x, batch_size=budget["batch_size"], epochs=budget["epochs"], verbose=0,
        callbacks=[keras.callbacks.TerminateOnNaN()],
    )  # fmt: skip
    seconds = time.time() - start
    logs = {key: [float(v) for v in values] for key, values in history.history.items()}
    return {"knn": knn(keras_fmicl, encoder, split), "history": logs, "train_seconds": seconds,
            "steps": steps}


def random_init(keras, keras_fmicl, dataset, seed, split):
    keras.utils.set_random_seed(seed)
    encoder = keras_fmicl.small_cnn(split[0].shape[1:], width=DATASETS[dataset]["width"])
    return {"knn": knn(keras_fmicl, encoder, split)}


def machine():
    try:
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "commit": commit}


def run_grid(args):
    import keras

    import keras_fmicl

    runs_dir = os.path.join(args.output_dir, "runs")
    os.makedirs(runs_dir, exist_ok=True)
    for dataset in args.datasets:
        split = None
        todo = [(None, None, None, seed) for seed in args.seeds] + list(
            itertools.product(args.optimizers, args.methods, args.losses, args.seeds)
        )
        for optimizer, method, loss, seed in todo:
            name = (
                random_init_name(dataset, seed) if optimizer is None
                else run_name(dataset, optimizer, method, loss, seed)
            )  # fmt: skip
            path = os.path.join(runs_dir, name + ".json")
            if os.path.exists(path):
                continue
            if split is None:
                split = load_split(keras_fmicl, dataset)
            print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)
            if optimizer is None:
                record = random_init(keras, keras_fmicl, dataset, seed, split)
            else:
                record = train_one(keras, keras_fmicl, dataset, optimizer, method, loss, seed, split,
                                   args.sgd_rate)
            record.update(
                name=name, dataset=dataset, optimizer=optimizer, method=method, loss=loss, seed=seed,
                backend=keras.backend.backend(), keras_fmicl=keras_fmicl.__version__,
                machine=machine(), budget=DATASETS[dataset], sgd_rate=args.sgd_rate,
            )  # fmt: skip
            print(f"    kNN {100 * record['knn']:.2f} %", flush=True)
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(record, f, indent=1)
            os.replace(tmp, path)  # a killed run leaves no half-written record
            keras.backend.clear_session()


def t_interval(differences):
    """Mean and 95 % Student-t CI of paired differences (None for one)."""
    d = np.asarray(differences, float)
    if len(d) < 2:
        return float(d.mean()), None
    t = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571}.get(len(d), 2.0)
    half = t * d.std(ddof=1) / math.sqrt(len(d))
    return float(d.mean()), (float(d.mean() - half), float(d.mean() + half))


def report(args):
    runs_dir = os.path.join(args.output_dir, "runs")
    records = {}
    for entry in sorted(os.listdir(runs_dir)) if os.path.isdir(runs_dir) else []:
        if entry.endswith(".json"):
            with open(os.path.join(runs_dir, entry)) as f:
                record = json.load(f)
            records[record["name"]] = record
    rows, lines = [], []
    lines.append("| data set | optimizer | method | InfoNCE | KL - InfoNCE | JS - InfoNCE | "
                 "random init | best f-MICL within 1 | every f-MICL >= floor + 1 | seeds |")
    lines.append("|---|---|---|---:|---:|---:|---:|---|---|---:|")
    for dataset, optimizer, method in itertools.product(DATASETS, OPTIMIZERS, METHODS):
        seeds = [
            s for s in SEEDS
            if all(run_name(dataset, optimizer, method, loss, s) in records for loss in LOSSES)
            and random_init_name(dataset, s) in records
        ]  # fmt: skip
        if not seeds:
            continue

        def score(loss, seed):
            return 100 * records[run_name(dataset, optimizer, method, loss, seed)]["knn"]

        floor = [100 * records[random_init_name(dataset, s)]["knn"] for s in seeds]
        infonce = [score("infonce", s) for s in seeds]
        row = {"dataset": dataset, "optimizer": optimizer, "method": method, "seeds": seeds,
               "infonce": float(np.mean(infonce)), "random_init": float(np.mean(floor))}
        cells, best = [], -float("inf")
        every_above = True
        for loss in ("kl", "js"):
            values = [score(loss, s) for s in seeds]
            mean, ci = t_interval([v - b for v, b in zip(values, infonce)])
            row[loss] = {"mean": float(np.mean(values)), "delta": mean, "ci": ci}
            best = max(best, mean)
            every_above &= float(np.mean(values)) >= float(np.mean(floor)) + 1.0
            shown = f"{mean:+.2f}" + ("" if ci is None else f" [{ci[0]:+.2f}, {ci[1]:+.2f}]")
            cells.append(f"{np.mean(values):.2f} ({shown})")
        row["best_within_1"] = best >= -1.0
        row["every_above_floor"] = every_above
        rows.append(row)
        lines.append(
            f"| {dataset} | {optimizer} | {method} | {np.mean(infonce):.2f} | {cells[0]} | {cells[1]} | "
            f"{np.mean(floor):.2f} | {'yes' if best >= -1.0 else 'NO'} | "
            f"{'yes' if every_above else 'NO'} | {len(seeds)} |"
        )
    table = "\n".join(lines)
    print(table)
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "grid.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.output_dir, "summary.json"), "w") as f:
        json.dump({"rows": rows, "runs": len(records)}, f, indent=1)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=lambda s: s.split(","), default=list(DATASETS))
    parser.add_argument("--optimizers", type=lambda s: s.split(","), default=list(OPTIMIZERS))
    parser.add_argument("--methods", type=lambda s: s.split(","), default=list(METHODS))
    parser.add_argument("--losses", type=lambda s: s.split(","), default=list(LOSSES))
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=list(SEEDS))
    parser.add_argument("--output_dir", default=DEFAULT_OUTPUT)
    parser.add_argument("--report", action="store_true", help="only summarise the finished runs")
    parser.add_argument("--sgd_rate", type=float, default=SGD_RATE,
                        help=f"sgd_cosine's peak learning rate per 256 samples (default {SGD_RATE}); "
                             "another value needs its own --output_dir")
    args = parser.parse_args(argv)
    if not (math.isfinite(args.sgd_rate) and args.sgd_rate > 0):
        parser.error(f"--sgd_rate must be a positive number. Received: {args.sgd_rate}")
    if args.sgd_rate != SGD_RATE and os.path.abspath(args.output_dir) == os.path.abspath(DEFAULT_OUTPUT):
        parser.error(f"--sgd_rate {args.sgd_rate:g} is not the grid's ({SGD_RATE:g}): give it an --output_dir "
                     "of its own, so that the grid's records stay the grid's")
    for name, allowed in (("datasets", DATASETS), ("optimizers", OPTIMIZERS),
                          ("methods", METHODS), ("losses", LOSSES)):
        unknown = [v for v in getattr(args, name) if v not in allowed]
        if unknown:
            parser.error(f"--{name}: unknown {unknown}; choose from {list(allowed)}")
    if not args.report:
        run_grid(args)
    report(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
