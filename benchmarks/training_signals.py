"""Which recorded training histories the visible-failure signals flag, and which the former rule flagged.

Reads every history the benchmarks recorded (`benchmarks/results/quality*/runs`,
`momentum_grid/runs`, `momentum_grid_unstandardized/runs`), applies
`keras_fmicl.models.diagnostics.failing_epochs` (what `fit`'s
`PositivesDriftMonitor` warns on, patience 3) and the former rule
(`drifting_epochs`: alignment up while mi_estimate down, 3 epochs), and
counts, per group: InfoNCE runs (must stay silent), f-MICL runs that end
below a random-init encoder + 1 point ("failed"), and the other f-MICL runs.
Prints a markdown table and writes `benchmarks/results/training_signals.json`.

    python benchmarks/training_signals.py
"""

import glob
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from keras_fmicl.models.diagnostics import drifting_epochs  # noqa: E402
from keras_fmicl.models.diagnostics import failing_epochs  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results")
PATIENCE = 3


def records():
    """[{source, name, infonce, knn, history}] and {source: random-init kNN (%)}."""
    runs, floors = [], {}
    for path in sorted(glob.glob(os.path.join(RESULTS, "*", "runs", "*.json"))):
        source = path.split(os.sep)[-3]
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        knn = 100 * record["knn_top1" if "knn_top1" in record else "knn"]
        name = record.get("name", os.path.basename(path)[:-5])
        if source.startswith("momentum_grid"):
            source = f"{source}:{record['dataset']}"
        history = record.get("history") or {}
        if name.startswith(("random-init", "digits-random-init", "fashion_mnist-random-init")) or not history:
            floors.setdefault(source, []).append(knn)
            continue
        if not {"alignment", "uniformity", "mi_estimate"} <= set(history):
            continue
        loss = record.get("loss") or (record.get("flags") or {}).get("loss", "fmicl")
        runs.append(dict(source=source, name=name, infonce=loss == "infonce", knn=knn, history=history))
    return runs, {source: sum(v) / len(v) for source, v in floors.items()}


def fires(history):
    """(new signal or None, former rule fired) with patience 3, at any epoch."""
    alignment, uniformity, mi = history["alignment"], history["uniformity"], history["mi_estimate"]
    signal, former = None, False
    for end in range(1, len(alignment) + 1):
        count, which = failing_epochs(alignment[:end], uniformity[:end])
        if count >= PATIENCE and signal is None:
            signal = which
        former = former or drifting_epochs(alignment[:end], mi[:end]) >= PATIENCE
    return signal, former


def main():
    runs, floors = records()
    default_floor = sum(floors.values()) / len(floors)
    rows, table = [], {}
    for run in runs:
        floor = floors.get(run["source"], default_floor)
        group = "infonce" if run["infonce"] else ("fmicl_failed" if run["knn"] < floor + 1 else "fmicl_other")
        signal, former = fires(run["history"])
        rows.append(dict(run, group=group, floor=floor, signal=signal, former_rule=former, history=None))
        counts = table.setdefault(group, {"runs": 0, "signal": 0, "former_rule": 0})
        counts["runs"] += 1
        counts["signal"] += signal is not None
        counts["former_rule"] += former
    print("| group | runs | warned (far / stalled signals) | warned by the former rule |")
    print("|---|---|---|---|")
    for group in ("infonce", "fmicl_failed", "fmicl_other"):
        c = table.get(group, {"runs": 0, "signal": 0, "former_rule": 0})
        print(f"| {group} | {c['runs']} | {c['signal']} | {c['former_rule']} |")
    print()
    for row in rows:
        if row["signal"] or row["former_rule"]:
            print(f"- {row['source']} {row['name']}: kNN {row['knn']:.2f} (floor {row['floor']:.2f}), "
                  f"signal {row['signal']}, former rule {row['former_rule']}")
    for row in rows:
        row.pop("history")
    out = os.path.join(RESULTS, "training_signals.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"patience": PATIENCE, "table": table, "runs": rows}, f, indent=1)
        f.write("\n")
    print(f"\nwrote {os.path.relpath(out, ROOT)}")


if __name__ == "__main__":
    main()
