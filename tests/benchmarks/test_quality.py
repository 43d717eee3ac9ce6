"""benchmarks/quality.py: configs, resumption and the report, without training."""

import json

import pytest

from benchmarks import quality


def test_benchmark_configs_cover_every_divergence_infonce_and_a_floor():
    configs = quality.benchmark_configs()
    assert len(configs) == 6 * 2 + 2
    assert configs["random-init"] == {"epochs": 0}
    assert configs["fmicl-vlc-cosine"] == {"loss": "fmicl", "divergence": "vlc", "similarity": "cosine"}
    assert configs["infonce"] == {"loss": "infonce"}


def test_sweep_configs_grid():
    configs = quality.sweep_configs(["kl"], [0.3, 0.5], [1.0, 2.0], [0.2])
    assert len(configs) == 2 * 2 + 1 + 1
    assert configs["fmicl-kl-gaussian-s0.3-a2.0"]["sigma"] == 0.3


def test_finished_runs_are_skipped_and_summarised(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    runs.mkdir()
    for seed, knn in [(0, 0.80), (1, 0.82)]:
        (runs / f"infonce__seed{seed}.json").write_text(json.dumps({
            "knn_top1": knn, "linear_top1": knn + 0.05, "wall_seconds": 10.0,
            "loss_config": {"name": "info_nce"},
        }))

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was started again")

    monkeypatch.setattr(quality.subprocess, "run", no_training)
    assert quality.main(["--configs=infonce", "--seeds=0,1", f"--output_dir={tmp_path}"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    (row,) = summary["rows"]
    assert row["seeds"] == 2
    assert row["knn_mean"] == pytest.approx(81.0)
    assert row["knn_std"] == pytest.approx(1.41421356, rel=1e-6)
    assert "| infonce | 2 | 81.00 ± 1.41" in (tmp_path / "quality.md").read_text()
    assert (tmp_path / "quality.png").stat().st_size > 1000


def test_unknown_config_is_rejected():
    with pytest.raises(SystemExit, match="unknown configs"):
        quality.main(["--configs=fmicl-foo"])


def test_report_summarises_every_finished_run_without_training(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    runs.mkdir()
    for name, seed, knn in [("infonce", 0, 0.70), ("fmicl-kl-gaussian", 0, 0.74), ("fmicl-kl-gaussian", 1, 0.76)]:
        (runs / f"{name}__seed{seed}.json").write_text(json.dumps({
            "name": name, "seed": seed, "knn_top1": knn, "linear_top1": knn + 0.05,
            "wall_seconds": 10.0, "loss_config": {"name": name},
        }))

    def no_training(*args, **kwargs):
        raise AssertionError("--report started a run")

    monkeypatch.setattr(quality.subprocess, "run", no_training)
    assert quality.main(["--report", f"--output_dir={tmp_path}"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["seeds"] == [0, 1]
    rows = {row["name"]: row for row in summary["rows"]}
    assert rows["fmicl-kl-gaussian"]["seeds"] == 2
    assert rows["fmicl-kl-gaussian"]["knn_mean"] == pytest.approx(75.0)
    table = (tmp_path / "quality.md").read_text()
    assert "| fmicl-kl-gaussian | 2 | 75.00 ± 1.41" in table
    assert "| infonce | 1 | 70.00 | 75.00 |" in table  # one seed: no spread


def test_goals_compare_best_fmicl_with_infonce_and_gaussian_with_cosine():
    rows = [
        {"name": "infonce", "knn_mean": 70.0},
        {"name": "fmicl-kl-gaussian", "knn_mean": 71.5},
        {"name": "fmicl-kl-cosine", "knn_mean": 72.0},
        {"name": "fmicl-js-gaussian", "knn_mean": 69.0},
        {"name": "fmicl-js-cosine", "knn_mean": 68.0},
    ]
    text = "\n".join(quality.goals(rows))
    assert "Best f-MICL (fmicl-kl-cosine) minus InfoNCE, kNN top-1: +2.00 points (goal >= +1: met)" in text
    assert "kl -0.50, js +1.00 (met for 1 of 2)" in text
    rows[0]["knn_mean"] = 71.5
    assert "+0.50 points (goal >= +1: not met)" in "\n".join(quality.goals(rows))
