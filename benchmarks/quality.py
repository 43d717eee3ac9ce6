"""Learning quality of f-MICL against InfoNCE on real data, with paired CIs.

Each run is `examples/train_cifar.py` on Fashion-MNIST (the Debian package's
files) with one fixed small encoder and budget, in its own process; runs
that already have a result file are skipped, so an interrupted benchmark
resumes where it stopped. Every run is scored four ways on frozen features:
weighted kNN (k = 200, T = 0.1), a linear probe on all training labels, and
few-label linear probes on class-balanced 1 % and 10 % subsets of the
training labels (3 subset draws each; random-init features fall much
further behind there).

Configs are compared with a reference trained on the same seeds (same
weights at start, same data order, same label subsets): the report gives the
mean paired difference and its 95 % confidence interval (Student t over
seeds), not only mean +- std.

    # the test-split table: every divergence, InfoNCE, a random-init floor
    # and the momentum modes, at the package defaults, 5 seeds
    python benchmarks/quality.py

    # the sweep behind the defaults, on a validation split carved from the
    # training split (never the test split), one suite at a time
    python benchmarks/quality.py --suite alpha
    python benchmarks/quality.py --suite sigma --alpha 40
    python benchmarks/quality.py --suite divergence --sigma 0.7071 --alpha 40

Outputs (under --output_dir, default benchmarks/results/quality_<suite>):
`runs/*.json` (one per run), `summary.json`, `quality.md` and `quality.png`.
`--report` summarises every finished run of a folder without training.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script: python benchmarks/quality.py
    sys.path.append(ROOT)
from benchmarks import harness  # noqa: E402
from examples.registry_names import BACKENDS  # noqa: E402
from examples.registry_names import DIVERGENCES  # noqa: E402

EXAMPLE = os.path.join(ROOT, "examples", "train_cifar.py")

# The paper's vision setting (its setup table): (2 sigma^2)^-1 = 1, alpha = 40.
PAPER_SIGMA = 0.7071
PAPER_ALPHA = 40.0

# The fixed budget of every run: small CNN (width 16), 20k images, 10 epochs,
# batch 256; about 4 minutes on 2 CPU cores with the TensorFlow backend
# (3.5 min of pretraining, under a minute of evaluation).
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
    "few_label": "0.01,0.1",
    "few_label_draws": 3,
}

# metric key in a run record -> column title
METRICS = {
    "knn": "kNN top-1",
    "linear": "linear top-1",
    "few_label_0.01": "1 % labels",
    "few_label_0.1": "10 % labels",
}

SUITES = ("table", "alpha", "sigma", "divergence", "temperature", "batch", "momentum")

# Two-sided 95 % quantiles of Student's t, by degrees of freedom.
_T975 = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
    9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131,
    16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086, 25: 2.060, 30: 2.042,
}


def t_quantile_975(df: int) -> float:
    """The 97.5 % quantile of Student's t with `df` degrees of freedom."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if df in _T975:
        return _T975[df]
    below = max(k for k in _T975 if k < df)
    if df > 30:
        return 1.96 + (2.042 - 1.96) * 30 / df  # ~ 1.96 + 2.46 / df
    above = min(k for k in _T975 if k > df)
    weight = (df - below) / (above - below)
    return _T975[below] + weight * (_T975[above] - _T975[below])


def paired_difference(values: dict, reference: dict) -> dict | None:
    """Mean paired difference `values - reference` over common seeds and its 95 % CI.

    Both arguments map seed -> metric. Returns `None` without common seeds;
    with one seed the interval is undefined (`half_width` is None).
    """
    seeds = sorted(set(values) & set(reference))
    seeds = [s for s in seeds if values[s] is not None and reference[s] is not None]
    if not seeds:
        return None
    differences = np.array([values[s] - reference[s] for s in seeds], dtype=np.float64)
    mean = float(differences.mean())
    if len(seeds) < 2:
        return {"n": 1, "mean": mean, "half_width": None, "low": None, "high": None}
    standard_error = float(differences.std(ddof=1)) / math.sqrt(len(seeds))
    half_width = t_quantile_975(len(seeds) - 1) * standard_error
    return {
        "n": len(seeds), "mean": mean, "half_width": half_width,
        "low": mean - half_width, "high": mean + half_width,
    }


# ---------------------------------------------------------------- configs


def _fmicl(divergence, similarity="gaussian", **settings) -> dict:
    return {"loss": "fmicl", "divergence": divergence, "similarity": similarity, **settings}


def _number(value: float) -> str:
    return f"{value:g}"


def benchmark_configs() -> dict:
    """The test-split table at the package defaults: config name -> flags."""
    configs = {f"fmicl-{d}-gaussian": _fmicl(d) for d in DIVERGENCES}
    configs["fmicl-kl-cosine"] = _fmicl("kl", "cosine")
    configs["fmicl-js-cosine"] = _fmicl("js", "cosine")
    configs["infonce"] = {"loss": "infonce"}
    configs["random-init"] = {"epochs": 0}
    configs.update(momentum_configs())
    return configs


def momentum_configs(alphas=(), online_weights=()) -> dict:
    """InfoNCE and f-MICL (KL, JS) in the MoCo v2 and MoCo v3 modes.

    `alphas`: f-MICL variants at the paper's sigma; `online_weights`: the
    same with `--online_weight` (suffix `-w<weight>`), InfoNCE included;
    in MoCo v2 mode these take its symmetric form (`--moco_symmetric`), the
    only one with a query per view.
    """
    configs = {}
    for mode in ("moco", "mocov3"):
        configs[f"{mode}-infonce"] = {"mode": mode, "loss": "infonce"}
        for weight in online_weights:
            configs[f"{mode}-infonce-w{_number(weight)}"] = _with_online_weight(
                {"mode": mode, "loss": "infonce"}, weight
            )
        for divergence in ("kl", "js"):
            configs[f"{mode}-fmicl-{divergence}"] = dict(_fmicl(divergence), mode=mode)
            for alpha in alphas:  # the sweep's variants: at the paper's sigma
                name = f"{mode}-fmicl-{divergence}-s{_number(PAPER_SIGMA)}-a{_number(alpha)}"
                flags = dict(_fmicl(divergence, sigma=PAPER_SIGMA, alpha=alpha), mode=mode)
                configs[name] = flags
                for weight in online_weights:
                    configs[f"{name}-w{_number(weight)}"] = _with_online_weight(flags, weight)
    return configs


def _with_online_weight(flags: dict, weight: float) -> dict:
    """`flags` with `--online_weight` (and MoCo v2's symmetric form, which it needs)."""
    flags = dict(flags, online_weight=weight)
    if flags["mode"] == "moco":
        flags["moco_symmetric"] = True
    return flags


def sweep_configs(suite: str, args) -> dict:
    """Config name -> flags of one validation suite, with its references."""
    configs = {"infonce": {"loss": "infonce"}, "random-init": {"epochs": 0}}
    divergences = args.sweep_divergences.split(",")
    if suite == "alpha":
        for divergence, alpha in itertools.product(divergences, _floats(args.sweep_alphas)):
            configs[f"fmicl-{divergence}-gaussian-s{_number(PAPER_SIGMA)}-a{_number(alpha)}"] = _fmicl(
                divergence, sigma=PAPER_SIGMA, alpha=alpha
            )
    elif suite == "sigma":
        for divergence, sigma in itertools.product(divergences, _floats(args.sweep_sigmas)):
            configs[f"fmicl-{divergence}-gaussian-s{_number(sigma)}-a{_number(args.alpha)}"] = _fmicl(
                divergence, sigma=sigma, alpha=args.alpha
            )
    elif suite == "divergence":
        for divergence in DIVERGENCES:
            configs[f"fmicl-{divergence}-gaussian-s{_number(args.sigma)}-a{_number(args.alpha)}"] = _fmicl(
                divergence, sigma=args.sigma, alpha=args.alpha
            )
    elif suite == "temperature":
        for temperature in _floats(args.sweep_temperatures):
            configs[f"infonce-t{_number(temperature)}"] = {"loss": "infonce", "temperature": temperature}
            for divergence in divergences:
                configs[f"fmicl-{divergence}-cosine-t{_number(temperature)}-a{_number(args.alpha)}"] = _fmicl(
                    divergence, "cosine", temperature=temperature, alpha=args.alpha
                )
    elif suite == "batch":
        for batch_size in (128, 512):
            configs[f"b{batch_size}-infonce"] = {"loss": "infonce", "batch_size": batch_size}
            for divergence in divergences:
                configs[f"b{batch_size}-fmicl-{divergence}"] = dict(
                    _fmicl(divergence, sigma=args.sigma, alpha=args.alpha), batch_size=batch_size
                )
    elif suite == "momentum":
        configs.update(
            momentum_configs(_floats(args.sweep_alphas), _floats(args.sweep_online_weights))
        )
    else:
        raise SystemExit(f"quality.py: unknown suite {suite!r}; choose from {SUITES}.")
    return configs


def reference_of(name: str) -> str:
    """The InfoNCE config a config is compared with: same prefix (mode, batch)."""
    if "fmicl-" in name:
        return name.split("fmicl-")[0] + "infonce"
    return "infonce"


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


# ------------------------------------------------------------------- runs


def run_one(name, flags, seed, args, runs_dir) -> dict | None:
    path = os.path.join(runs_dir, f"{name}__seed{seed}.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    settings = dict(BUDGET, **budget_overrides(args))
    settings.update(flags)
    work_dir = os.path.join(runs_dir, "work", f"{name}__seed{seed}")
    command = [sys.executable, EXAMPLE, f"--backend={args.backend}", f"--seed={seed}",
               f"--output_dir={work_dir}", "--verbose=0", "--embedding_points=0"]
    command += [f"--{key}={value}" for key, value in settings.items()]
    if args.suite != "table":
        command += ["--evaluate_on=validation", f"--validation_samples={args.validation_samples}"]
    if args.data_dir:
        command.append(f"--data_dir={args.data_dir}")
    print(f"[quality] {name} seed {seed}: {' '.join(command[2:])}", flush=True)
    start = time.time()
    result = subprocess.run(command, capture_output=True, text=True, env=harness.script_env(), cwd=ROOT)
    seconds = time.time() - start
    if result.returncode != 0:
        print(f"[quality] {name} seed {seed} FAILED ({seconds:.0f} s):\n{result.stderr[-2000:]}", flush=True)
        return None
    with open(os.path.join(work_dir, "results.json")) as f:
        results = json.load(f)
    history = results["history"]
    record = {
        "name": name,
        "seed": seed,
        "flags": settings,
        "knn_top1": results["knn_top1"],
        "linear_top1": results["linear_top1"],
        "few_label": {fraction: r["mean"] for fraction, r in results.get("few_label", {}).items()},
        "few_label_draws": {fraction: r["accuracies"] for fraction, r in results.get("few_label", {}).items()},
        "final_loss": history["loss"][-1] if history["loss"] else None,
        "history": {key: history.get(key) for key in ("loss", "alignment", "uniformity", "mi_estimate")},
        "final_alignment": (history.get("alignment") or [None])[-1],
        "final_uniformity": (history.get("uniformity") or [None])[-1],
        "evaluate_on": results["evaluate_on"],
        "train_samples": results["train_samples"],
        "test_samples": results["test_samples"],
        "loss_config": results["loss"],
        "mode": results.get("mode"),
        "wall_seconds": seconds,
        "pretrain_seconds": results["pretrain_seconds"],
        "versions": results.get("versions"),
    }
    harness.write_json(record, path)
    few = ", ".join(f"{100 * float(k):g} % labels {100 * v:.2f}" for k, v in record["few_label"].items())
    print(f"[quality] {name} seed {seed}: kNN {100 * record['knn_top1']:.2f} linear "
          f"{100 * record['linear_top1']:.2f}{', ' + few if few else ''} ({seconds:.0f} s)", flush=True)
    return record


def budget_overrides(args) -> dict:
    return {k: v for k, v in vars(args).items() if k in BUDGET and v is not None}


def metric(record: dict, key: str) -> float | None:
    """One metric of a run record in percent (None if the run lacks it)."""
    if key == "knn":
        value = record.get("knn_top1")
    elif key == "linear":
        value = record.get("linear_top1")
    else:
        value = (record.get("few_label") or {}).get(key[len("few_label_"):])
    return None if value is None else 100.0 * value


def finished_runs(runs_dir) -> dict:
    """Config name -> the records of its finished runs (any seed)."""
    records = {}
    for file_name in sorted(os.listdir(runs_dir)):
        if file_name.endswith(".json"):
            with open(os.path.join(runs_dir, file_name)) as f:
                record = json.load(f)
            records.setdefault(record["name"], []).append(record)
    return records


# ---------------------------------------------------------------- summary


def summarise(records_by_config) -> list[dict]:
    """Per config: seeds, mean and std of every metric, paired differences."""
    by_seed = {
        name: {r["seed"]: r for r in records if r is not None}
        for name, records in records_by_config.items()
    }
    rows = []
    for name, records in by_seed.items():
        if not records:
            continue
        row = {"name": name, "seeds": len(records), "seed_list": sorted(records)}
        for key in METRICS:
            values = [metric(r, key) for r in records.values()]
            values = np.array([v for v in values if v is not None])
            row[f"{key}_mean"] = float(values.mean()) if values.size else None
            row[f"{key}_std"] = float(values.std(ddof=1)) if values.size > 1 else (0.0 if values.size else None)
        reference = reference_of(name)
        row["reference"] = reference
        row["paired"] = {}
        if reference != name and by_seed.get(reference):
            for key in METRICS:
                row["paired"][key] = paired_difference(
                    {s: metric(r, key) for s, r in records.items()},
                    {s: metric(r, key) for s, r in by_seed[reference].items()},
                )
        first = next(iter(records.values()))
        row["wall_seconds_mean"] = float(np.mean([r["wall_seconds"] for r in records.values()]))
        row["loss_config"] = first.get("loss_config")
        row["final_alignment_mean"] = _mean_of(records, "final_alignment")
        row["final_uniformity_mean"] = _mean_of(records, "final_uniformity")
        rows.append(row)
    return rows


def _mean_of(records: dict, key: str) -> float | None:
    values = [r.get(key) for r in records.values() if r.get(key) is not None]
    return float(np.mean(values)) if values else None


def resolution(rows, key: str = "knn") -> float | None:
    """Median CI half-width (points) of the paired differences with >= 2 seeds."""
    widths = [
        row["paired"][key]["half_width"]
        for row in rows
        if row.get("paired", {}).get(key) and row["paired"][key]["half_width"] is not None
    ]
    return float(np.median(widths)) if widths else None


def _cell(row, key) -> str:
    mean, std = row.get(f"{key}_mean"), row.get(f"{key}_std")
    if mean is None:
        return "–"
    return f"{mean:.2f}" + (f" ± {std:.2f}" if row["seeds"] > 1 else "")


def _paired_cell(row, key) -> str:
    paired = row.get("paired", {}).get(key)
    if not paired:
        return "–"
    if paired["half_width"] is None:
        return f"{paired['mean']:+.2f} (1 seed)"
    return f"{paired['mean']:+.2f} [{paired['low']:+.2f}, {paired['high']:+.2f}]"


def markdown(rows, args) -> str:
    split = "test split" if args.suite == "table" else "validation split"
    budget = dict(BUDGET, **budget_overrides(args))
    lines = [
        f"Fashion-MNIST, {split}; suite `{args.suite}`; budget: {json.dumps(budget)}; backend {args.backend}.",
        "Accuracies in %, mean ± std over seeds. Δ: mean paired difference to the reference "
        "(InfoNCE of the same mode and batch size, same seeds) with its 95 % CI.",
        "",
        harness.table_row(
            ["config", "seeds", *METRICS.values(), "Δ kNN [95 % CI]", "Δ 1 % labels [95 % CI]",
             "Δ linear [95 % CI]", "alignment", "uniformity"]
        ),
        harness.table_rule("lr" + "r" * len(METRICS) + "rrrrr"),
    ]
    for row in sorted(rows, key=lambda r: -(r["knn_mean"] or 0)):
        extra = [
            "–" if row[k] is None else f"{row[k]:.2f}" for k in ("final_alignment_mean", "final_uniformity_mean")
        ]
        lines.append(harness.table_row(
            [row["name"], row["seeds"], *(_cell(row, key) for key in METRICS),
             *(_paired_cell(row, key) for key in ("knn", "few_label_0.01", "linear")), *extra]
        ))
    for key, title in (("knn", "kNN"), ("few_label_0.01", "1 % labels"), ("linear", "linear")):
        width = resolution(rows, key)
        if width is not None:
            lines.append(
                f"\nResolution ({title}): the median 95 % CI half-width of the paired differences is "
                f"{width:.2f} points."
            )
    lines += goals(rows)
    return "\n".join(lines) + "\n"


def goals(rows) -> list[str]:
    """The benchmark's questions, answered from the paired differences (kNN).

    1. Is the best f-MICL at least as good as InfoNCE (CI of the paired
       difference reaching 0 or above)?
    2. Is f-Gaussian at least as good as cosine for each divergence?
    """
    by_name = {row["name"]: row for row in rows}
    lines = []
    for prefix in sorted({reference_of(row["name"]) for row in rows}):
        fmicl = [
            row for row in rows
            if row["name"].startswith(prefix[: -len("infonce")] + "fmicl-") and row.get("paired", {}).get("knn")
        ]
        if prefix not in by_name or not fmicl:
            continue
        best = max(fmicl, key=lambda r: r["paired"]["knn"]["mean"])
        paired = best["paired"]["knn"]
        if paired["high"] is not None:  # a CI: does it reach 0?
            verdict = "≥ InfoNCE" if paired["high"] >= 0 else "below InfoNCE"
        else:  # one seed: no CI, only the 0.5-point margin
            verdict = (
                "within 0.5 point of InfoNCE or better, 1 seed" if paired["mean"] >= -0.5
                else "more than 0.5 point below InfoNCE, 1 seed"
            )
        floor = by_name.get("random-init")
        beats_floor = ""
        if floor and floor.get("knn_mean") is not None:
            worst = min(fmicl, key=lambda r: r["knn_mean"])
            beats_floor = (
                f"; worst f-MICL ({worst['name']}) {worst['knn_mean']:.2f} vs random init "
                f"{floor['knn_mean']:.2f}"
            )
        lines += [
            "",
            f"Best f-MICL vs {prefix}: {best['name']}, kNN {_paired_cell(best, 'knn')} points "
            f"({verdict}){beats_floor}.",
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
            "f-Gaussian minus cosine, kNN top-1: "
            + ", ".join(f"{d} {gap:+.2f}" for d, gap in pairs)
            + f" (≥ 0 for {met} of {len(pairs)}).",
        ]
    return lines


def bar_chart(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: -(r["knn_mean"] or 0))
    names = [r["name"] for r in rows]
    x = np.arange(len(rows))
    figure, axis = plt.subplots(figsize=(max(8, 0.6 * len(rows)), 4.5))
    shown = [("knn", "kNN top-1"), ("linear", "linear top-1"), ("few_label_0.01", "1 % labels")]
    width = 0.8 / len(shown)
    for offset, (key, label) in enumerate(shown):
        means = [r[f"{key}_mean"] or 0 for r in rows]
        stds = [r[f"{key}_std"] or 0 for r in rows]
        axis.bar(x + (offset - 1) * width, means, width, yerr=stds, label=label)
    axis.set_xticks(x, names, rotation=60, ha="right", fontsize=8)
    values = [r[f"{k}_mean"] for r in rows for k, _ in shown if r[f"{k}_mean"]]
    axis.set_ylim(max(0, min(values) - 5) if values else 0, 100)
    axis.set_ylabel("accuracy (%)")
    axis.set_title("Fashion-MNIST: frozen-feature accuracy per config (mean ± std over seeds)")
    axis.legend()
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# ------------------------------------------------------------------- main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="tensorflow", choices=BACKENDS)
    parser.add_argument("--suite", default="table", choices=SUITES,
                        help="table: the test-split comparison; the others: validation-split sweeps.")
    parser.add_argument("--seeds", default=None, help="Comma-separated seeds (default: 0-4 for table, 0,1 else).")
    parser.add_argument("--configs", default=None, help="Comma-separated config names (default: all).")
    parser.add_argument("--sweep_divergences", default="kl,js")
    parser.add_argument("--sweep_sigmas", default="0.5,0.7071,1.0")
    parser.add_argument("--sweep_alphas", default="1,4,10,20,40,80,160")
    parser.add_argument("--sweep_online_weights", default="",
                        help="momentum suite: --online_weight variants (e.g. 0.5).")
    parser.add_argument("--sweep_temperatures", default="0.1,0.2,0.5,1")
    parser.add_argument("--sigma", type=float, default=PAPER_SIGMA, help="sigma of the sigma-fixed suites.")
    parser.add_argument("--alpha", type=float, default=PAPER_ALPHA, help="alpha of the alpha-fixed suites.")
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
    configs = benchmark_configs() if args.suite == "table" else sweep_configs(args.suite, args)
    if args.configs:
        wanted = args.configs.split(",")
        unknown = sorted(set(wanted) - set(configs))
        if unknown:
            raise SystemExit(f"quality.py: unknown configs {unknown}; --list shows them.")
        configs = {name: configs[name] for name in wanted}
    if args.list:
        print("\n".join(configs))
        return 0
    output_dir = args.output_dir or os.path.join(harness.RESULTS_DIR, f"quality_{args.suite}")
    runs_dir = os.path.join(output_dir, "runs")
    os.makedirs(runs_dir, exist_ok=True)
    default_seeds = "0,1,2,3,4" if args.suite == "table" else "0,1"
    seeds = [int(s) for s in (args.seeds or default_seeds).split(",") if s]
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
        "benchmark": f"quality_{args.suite}",
        "budget": dict(BUDGET, **budget_overrides(args)),
        "backend": args.backend,
        "seeds": seeds,
        "rows": rows,
        "resolution_points": {key: resolution(rows, key) for key in METRICS},
        "machine": harness.machine_info(cpus="cpu_count", platform="platform", python="python"),
        "date": time.strftime("%Y-%m-%d"),
        "wall_seconds": time.time() - start,
    }
    harness.write_json(summary, os.path.join(output_dir, "summary.json"))
    table = markdown(rows, args)
    with open(os.path.join(output_dir, "quality.md"), "w") as f:
        f.write(table)
    if rows:
        bar_chart(rows, os.path.join(output_dir, "quality.png"))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
