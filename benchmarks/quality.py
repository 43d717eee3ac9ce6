"""Learning quality of every f-MICL divergence against InfoNCE, on real data.

Each run is `examples/train_cifar.py` on Fashion-MNIST (the Debian package's
files) with one fixed small encoder and budget, in its own process; runs
that already have a result file are skipped, so an interrupted benchmark
resumes where it stopped.

    # the table of the README: 6 divergences x {gaussian, cosine}, InfoNCE and
    # a random-init floor, 3 seeds, evaluated on the test split
    python benchmarks/quality.py

    # the sweep behind the package defaults, on a validation split carved
    # from the training split (never the test split)
    python benchmarks/quality.py --sweep

Outputs (under --output_dir, default benchmarks/results/quality[_sweep]):
`runs/*.json` (one per run), `summary.json`, `quality.md` (mean +- std of
kNN and linear top-1) and `quality.png` (bar chart).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "train_cifar.py")
DIVERGENCES = ("kl", "js", "pearson", "squared_hellinger", "tsallis", "vlc")

# The fixed budget of every run: small CNN (width 16), 20k images, 10 epochs,
# batch 256: about 3 minutes on 2 CPU cores with the TensorFlow backend.
BUDGET = {
    "dataset": "fashion_mnist",
    "encoder": "small_cnn",
    "width": 16,
    "epochs": 10,
    "batch_size": 256,
    "max_train_samples": 20000,
    "knn_every": 0,
    "linear_epochs": 30,
    "mode": "simclr",
}


def benchmark_configs() -> dict:
    """Config name -> flags of the comparison table."""
    configs = {}
    for divergence in DIVERGENCES:
        for similarity in ("gaussian", "cosine"):
            configs[f"fmicl-{divergence}-{similarity}"] = {
                "loss": "fmicl", "divergence": divergence, "similarity": similarity,
            }
    configs["infonce"] = {"loss": "infonce"}
    configs["random-init"] = {"epochs": 0}
    return configs


def sweep_configs(divergences, sigmas, alphas, temperatures) -> dict:
    """Config name -> flags of the defaults sweep (validation split)."""
    configs = {}
    for divergence, sigma, alpha in itertools.product(divergences, sigmas, alphas):
        configs[f"fmicl-{divergence}-gaussian-s{sigma}-a{alpha}"] = {
            "loss": "fmicl", "divergence": divergence, "similarity": "gaussian",
            "sigma": sigma, "alpha": alpha,
        }
    for divergence, temperature in itertools.product(divergences, temperatures):
        configs[f"fmicl-{divergence}-cosine-t{temperature}"] = {
            "loss": "fmicl", "divergence": divergence, "similarity": "cosine",
            "temperature": temperature,
        }
    for temperature in temperatures:
        configs[f"infonce-t{temperature}"] = {"loss": "infonce", "temperature": temperature}
    return configs


def run_one(name, flags, seed, args, runs_dir) -> dict | None:
    path = os.path.join(runs_dir, f"{name}__seed{seed}.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    settings = dict(BUDGET, **{k: v for k, v in vars(args).items() if k in BUDGET and v is not None})
    settings.update(flags)
    work_dir = os.path.join(runs_dir, "work", f"{name}__seed{seed}")
    command = [sys.executable, EXAMPLE, f"--backend={args.backend}", f"--seed={seed}",
               f"--output_dir={work_dir}", "--verbose=0"]
    command += [f"--{key}={value}" for key, value in settings.items()]
    if args.sweep:
        command += ["--evaluate_on=validation", f"--validation_samples={args.validation_samples}"]
    if args.data_dir:
        command.append(f"--data_dir={args.data_dir}")
    print(f"[quality] {name} seed {seed}: {' '.join(command[2:])}", flush=True)
    start = time.time()
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    seconds = time.time() - start
    if result.returncode != 0:
        print(f"[quality] {name} seed {seed} FAILED ({seconds:.0f} s):\n{result.stderr[-2000:]}", flush=True)
        return None
    with open(os.path.join(work_dir, "results.json")) as f:
        results = json.load(f)
    record = {
        "name": name,
        "seed": seed,
        "flags": settings,
        "knn_top1": results["knn_top1"],
        "linear_top1": results["linear_top1"],
        "final_loss": results["history"]["loss"][-1] if results["history"]["loss"] else None,
        "final_alignment": (results["history"].get("alignment") or [None])[-1],
        "final_uniformity": (results["history"].get("uniformity") or [None])[-1],
        "evaluate_on": results["evaluate_on"],
        "train_samples": results["train_samples"],
        "test_samples": results["test_samples"],
        "loss_config": results["loss"],
        "wall_seconds": seconds,
        "pretrain_seconds": results["pretrain_seconds"],
    }
    with open(path, "w") as f:
        json.dump(record, f, indent=2)
    print(f"[quality] {name} seed {seed}: kNN {100 * record['knn_top1']:.2f} linear "
          f"{100 * record['linear_top1']:.2f} ({seconds:.0f} s)", flush=True)
    return record


def finished_runs(runs_dir) -> dict:
    """Config name -> the records of its finished runs (any seed)."""
    records = {}
    for file_name in sorted(os.listdir(runs_dir)):
        if file_name.endswith(".json"):
            with open(os.path.join(runs_dir, file_name)) as f:
                record = json.load(f)
            records.setdefault(record["name"], []).append(record)
    return records


def summarise(records_by_config) -> list[dict]:
    rows = []
    for name, records in records_by_config.items():
        records = [r for r in records if r is not None]
        if not records:
            continue
        knn = np.array([r["knn_top1"] for r in records]) * 100
        linear = np.array([r["linear_top1"] for r in records]) * 100
        rows.append({
            "name": name,
            "seeds": len(records),
            "knn_mean": float(knn.mean()), "knn_std": float(knn.std(ddof=1)) if len(knn) > 1 else 0.0,
            "linear_mean": float(linear.mean()),
            "linear_std": float(linear.std(ddof=1)) if len(linear) > 1 else 0.0,
            "wall_seconds_mean": float(np.mean([r["wall_seconds"] for r in records])),
            "loss_config": records[0]["loss_config"],
        })
    return rows


def markdown(rows, args) -> str:
    lines = [
        f"Fashion-MNIST, {'validation split' if args.sweep else 'test split'}; "
        f"budget: {json.dumps({k: v for k, v in BUDGET.items()})}; backend {args.backend}.",
        "",
        "| config | seeds | kNN top-1 (%) | linear top-1 (%) | s / run |",
        "|---|---|---|---|---|",
    ]
    for row in sorted(rows, key=lambda r: -r["knn_mean"]):
        spread = (lambda key: f" ± {row[key]:.2f}") if row["seeds"] > 1 else (lambda key: "")
        lines.append(
            f"| {row['name']} | {row['seeds']} | {row['knn_mean']:.2f}{spread('knn_std')} | "
            f"{row['linear_mean']:.2f}{spread('linear_std')} | {row['wall_seconds_mean']:.0f} |"
        )
    lines += goals(rows)
    return "\n".join(lines) + "\n"


def goals(rows) -> list[str]:
    """The benchmark's two questions, answered from the table (kNN top-1).

    1. Is the best f-MICL at least 1 point above InfoNCE?
    2. Is f-Gaussian at least as good as cosine for each divergence?
    """
    by_name = {row["name"]: row for row in rows}
    lines = []
    fmicl = [row for row in rows if row["name"].startswith("fmicl-")]
    if "infonce" in by_name and fmicl:
        best = max(fmicl, key=lambda r: r["knn_mean"])
        gap = best["knn_mean"] - by_name["infonce"]["knn_mean"]
        lines += [
            "",
            f"Best f-MICL ({best['name']}) minus InfoNCE, kNN top-1: {gap:+.2f} points "
            f"(goal >= +1: {'met' if gap >= 1.0 else 'not met'}).",
        ]
    pairs = []
    for divergence in DIVERGENCES:
        gaussian = by_name.get(f"fmicl-{divergence}-gaussian")
        cosine = by_name.get(f"fmicl-{divergence}-cosine")
        if gaussian and cosine:
            pairs.append((divergence, gaussian["knn_mean"] - cosine["knn_mean"]))
    if pairs:
        met = sum(gap >= 0 for _, gap in pairs)
        lines += [
            "",
            f"f-Gaussian minus cosine, kNN top-1 (goal >= 0): "
            + ", ".join(f"{d} {gap:+.2f}" for d, gap in pairs)
            + f" (met for {met} of {len(pairs)}).",
        ]
    return lines


def bar_chart(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: -r["knn_mean"])
    names = [r["name"] for r in rows]
    x = np.arange(len(rows))
    figure, axis = plt.subplots(figsize=(max(8, 0.6 * len(rows)), 4.5))
    axis.bar(x - 0.2, [r["knn_mean"] for r in rows], 0.4, yerr=[r["knn_std"] for r in rows], label="kNN top-1")
    axis.bar(x + 0.2, [r["linear_mean"] for r in rows], 0.4, yerr=[r["linear_std"] for r in rows], label="linear top-1")
    axis.set_xticks(x, names, rotation=60, ha="right", fontsize=8)
    low = min(min(r["knn_mean"], r["linear_mean"]) for r in rows)
    axis.set_ylim(max(0, low - 5), 100)
    axis.set_ylabel("accuracy (%)")
    axis.legend()
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="tensorflow", choices=("tensorflow", "jax", "torch"))
    parser.add_argument("--seeds", default="0,1,2", help="Comma-separated seeds.")
    parser.add_argument("--configs", default=None, help="Comma-separated config names (default: all).")
    parser.add_argument("--sweep", action="store_true", help="Run the defaults sweep on a validation split.")
    parser.add_argument("--sweep_divergences", default="kl,js")
    parser.add_argument("--sweep_sigmas", default="0.3,0.5,0.7,1.0")
    parser.add_argument("--sweep_alphas", default="0.5,1,2")
    parser.add_argument("--sweep_temperatures", default="0.1,0.2,0.5")
    parser.add_argument("--validation_samples", type=int, default=10000)
    parser.add_argument("--output_dir", default=None)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--list", action="store_true", help="List the configs and exit.")
    parser.add_argument(
        "--report", action="store_true",
        help="Train nothing: summarise every finished run found in the output folder.",
    )
    for key, value in BUDGET.items():
        parser.add_argument(f"--{key}", type=type(value), default=None, help=f"Budget override (default {value}).")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.sweep:
        floats = lambda text: [float(v) for v in text.split(",") if v]  # noqa: E731
        configs = sweep_configs(
            args.sweep_divergences.split(","), floats(args.sweep_sigmas),
            floats(args.sweep_alphas), floats(args.sweep_temperatures),
        )
    else:
        configs = benchmark_configs()
    if args.configs:
        wanted = args.configs.split(",")
        unknown = sorted(set(wanted) - set(configs))
        if unknown:
            raise SystemExit(f"quality.py: unknown configs {unknown}; --list shows them.")
        configs = {name: configs[name] for name in wanted}
    if args.list:
        print("\n".join(configs))
        return 0
    output_dir = args.output_dir or os.path.join(
        ROOT, "benchmarks", "results", "quality_sweep" if args.sweep else "quality"
    )
    runs_dir = os.path.join(output_dir, "runs")
    os.makedirs(runs_dir, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    start = time.time()
    if args.report:
        records = finished_runs(runs_dir)
        seeds = sorted({r["seed"] for rs in records.values() for r in rs})
    else:
        records = {name: [] for name in configs}
        for seed in seeds:  # seed-major: a partial run already covers every config
            for name, flags in configs.items():
                records[name].append(run_one(name, flags, seed, args, runs_dir))
    rows = summarise(records)
    summary = {
        "benchmark": "quality_sweep" if args.sweep else "quality",
        "budget": dict(BUDGET, **{k: v for k, v in vars(args).items() if k in BUDGET and v is not None}),
        "backend": args.backend,
        "seeds": seeds,
        "rows": rows,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d"),
        "wall_seconds": time.time() - start,
    }
    with open(os.path.join(output_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    table = markdown(rows, args)
    with open(os.path.join(output_dir, "quality.md"), "w") as f:
        f.write(table)
    if rows:
        bar_chart(rows, os.path.join(output_dir, "quality.png"))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
