"""benchmarks/quality.py: configs, paired CIs, resumption and the report, without training."""

import json

import numpy as np
import pytest

from benchmarks import quality


def test_benchmark_configs_cover_every_divergence_infonce_a_floor_and_the_momentum_modes():
    configs = quality.benchmark_configs()
    for divergence in quality.DIVERGENCES:
        assert configs[f"fmicl-{divergence}-gaussian"] == {
            "loss": "fmicl", "divergence": divergence, "similarity": "gaussian"
        }
    assert configs["random-init"] == {"epochs": 0}
    assert configs["infonce"] == {"loss": "infonce"}
    assert configs["moco-fmicl-js"]["mode"] == "moco"
    assert configs["mocov3-infonce"] == {"mode": "mocov3", "loss": "infonce"}


def test_alpha_suite_is_the_issue_grid_at_the_paper_sigma():
    args = quality.parse_args(["--suite=alpha"])
    configs = quality.sweep_configs("alpha", args)
    alphas = [1, 4, 10, 20, 40, 80, 160]
    for divergence in ("kl", "js"):
        for alpha in alphas:
            flags = configs[f"fmicl-{divergence}-gaussian-s0.7071-a{alpha}"]
            assert flags["sigma"] == pytest.approx(1 / np.sqrt(2), abs=1e-4)
            assert flags["alpha"] == alpha
    assert len(configs) == 2 * len(alphas) + 2  # + infonce and random-init references


def test_sigma_and_batch_suites_use_the_given_alpha():
    args = quality.parse_args(["--suite=sigma", "--alpha=20"])
    configs = quality.sweep_configs("sigma", args)
    assert configs["fmicl-js-gaussian-s0.5-a20"] == {
        "loss": "fmicl", "divergence": "js", "similarity": "gaussian", "sigma": 0.5, "alpha": 20.0
    }
    configs = quality.sweep_configs("batch", quality.parse_args(["--suite=batch", "--sweep_divergences=kl"]))
    assert configs["b128-fmicl-kl"]["batch_size"] == 128 and configs["b512-infonce"]["batch_size"] == 512


def test_reference_is_infonce_of_the_same_mode_and_batch():
    assert quality.reference_of("fmicl-kl-gaussian-s0.7071-a40") == "infonce"
    assert quality.reference_of("moco-fmicl-js-a10") == "moco-infonce"
    assert quality.reference_of("b128-fmicl-kl") == "b128-infonce"


def test_paired_difference_hand_checked():
    # differences 1, 2, 3: mean 2, sd 1, se 1/sqrt(3), t(2) = 4.303
    result = quality.paired_difference({0: 11.0, 1: 12.0, 2: 13.0, 3: 99.0}, {0: 10.0, 1: 10.0, 2: 10.0})
    assert result["n"] == 3
    assert result["mean"] == pytest.approx(2.0)
    assert result["half_width"] == pytest.approx(4.303 / np.sqrt(3), rel=1e-6)
    assert result["low"] == pytest.approx(2.0 - 2.48434, abs=1e-4)
    assert quality.paired_difference({0: 1.0}, {0: 0.5})["half_width"] is None
    assert quality.paired_difference({0: 1.0}, {1: 0.5}) is None


def test_t_quantiles():
    assert quality.t_quantile_975(1) == pytest.approx(12.706)
    assert quality.t_quantile_975(4) == pytest.approx(2.776)
    assert 2.042 < quality.t_quantile_975(22) < 2.086  # interpolated
    assert 1.96 < quality.t_quantile_975(1000) < 1.97
    with pytest.raises(ValueError):
        quality.t_quantile_975(0)


def _record(name, seed, knn, few=None):
    return {
        "name": name, "seed": seed, "knn_top1": knn, "linear_top1": knn + 0.05,
        "few_label": {"0.01": few} if few is not None else {},
        "wall_seconds": 10.0, "loss_config": {"name": name},
        "final_alignment": 0.5, "final_uniformity": -3.0,
    }


def test_finished_runs_are_skipped_and_summarised(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    runs.mkdir()
    for name, seed, knn in [("infonce", 0, 0.80), ("infonce", 1, 0.82),
                            ("fmicl-kl-gaussian", 0, 0.81), ("fmicl-kl-gaussian", 1, 0.84)]:
        (runs / f"{name}__seed{seed}.json").write_text(json.dumps(_record(name, seed, knn, few=knn - 0.2)))

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was started again")

    monkeypatch.setattr(quality.subprocess, "run", no_training)
    assert quality.main(["--configs=infonce,fmicl-kl-gaussian", "--seeds=0,1", f"--output_dir={tmp_path}"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    rows = {row["name"]: row for row in summary["rows"]}
    assert rows["infonce"]["seeds"] == 2
    assert rows["infonce"]["knn_mean"] == pytest.approx(81.0)
    assert rows["infonce"]["knn_std"] == pytest.approx(1.41421356, rel=1e-6)
    paired = rows["fmicl-kl-gaussian"]["paired"]["knn"]
    assert paired["mean"] == pytest.approx(1.5)  # differences +1, +2
    assert paired["half_width"] == pytest.approx(12.706 * 0.5, rel=1e-6)  # sd 0.7071 / sqrt(2)
    assert rows["fmicl-kl-gaussian"]["few_label_0.01_mean"] == pytest.approx(62.5)
    table = (tmp_path / "quality.md").read_text()
    assert "| infonce | 2 | 81.00 ± 1.41" in table
    assert "+1.50 [-4.85, +7.85]" in table
    assert "Resolution (kNN)" in table
    assert (tmp_path / "quality.png").stat().st_size > 1000


def test_unknown_config_is_rejected():
    with pytest.raises(SystemExit, match="unknown configs"):
        quality.main(["--configs=fmicl-foo"])


def test_report_summarises_every_finished_run_without_training(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    runs.mkdir()
    for name, seed, knn in [("infonce", 0, 0.70), ("fmicl-kl-gaussian", 0, 0.74), ("fmicl-kl-gaussian", 1, 0.76)]:
        (runs / f"{name}__seed{seed}.json").write_text(json.dumps(_record(name, seed, knn)))

    def no_training(*args, **kwargs):
        raise AssertionError("--report started a run")

    monkeypatch.setattr(quality.subprocess, "run", no_training)
    assert quality.main(["--report", f"--output_dir={tmp_path}"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["seeds"] == [0, 1]
    rows = {row["name"]: row for row in summary["rows"]}
    assert rows["fmicl-kl-gaussian"]["seeds"] == 2
    assert rows["fmicl-kl-gaussian"]["knn_mean"] == pytest.approx(75.0)
    assert rows["fmicl-kl-gaussian"]["paired"]["knn"]["n"] == 1  # one common seed
    table = (tmp_path / "quality.md").read_text()
    assert "| fmicl-kl-gaussian | 2 | 75.00 ± 1.41" in table
    assert "| infonce | 1 | 70.00 | 75.00 | – |" in table  # one seed: no spread; no few-label score
    assert "+4.00 (1 seed)" in table


def test_goals_compare_best_fmicl_with_infonce_of_its_mode_and_gaussian_with_cosine():
    def row(name, knn, paired=None):
        return {"name": name, "knn_mean": knn, "paired": {"knn": paired} if paired else {}}

    def one_seed(mean):
        return {"n": 1, "mean": mean, "half_width": None, "low": None, "high": None}

    def ci(mean, half):
        return {"n": 3, "mean": mean, "half_width": half, "low": mean - half, "high": mean + half}

    rows = [
        row("infonce", 70.0), row("random-init", 60.0),
        row("fmicl-kl-gaussian", 71.5, ci(1.5, 0.5)), row("fmicl-kl-cosine", 72.0, ci(2.0, 0.5)),
        row("fmicl-js-gaussian", 69.0, ci(-1.0, 0.5)), row("fmicl-js-cosine", 68.0, ci(-2.0, 0.5)),
        row("moco-infonce", 65.0), row("moco-fmicl-kl", 55.0, ci(-10.0, 1.0)),
        row("mocov3-infonce", 66.0), row("mocov3-fmicl-kl", 65.7, one_seed(-0.3)),
        row("b128-infonce", 64.0), row("b128-fmicl-kl", 63.0, one_seed(-1.0)),
    ]
    text = "\n".join(quality.goals(rows))
    # one seed: no CI, so only the 0.5-point margin is judged, and said so
    assert "mocov3-fmicl-kl, kNN -0.30 (1 seed) points (within 0.5 point of InfoNCE or better, 1 seed)" in text
    assert "b128-fmicl-kl, kNN -1.00 (1 seed) points (more than 0.5 point below InfoNCE, 1 seed)" in text
    assert "Best f-MICL vs infonce: fmicl-kl-cosine, kNN +2.00 [+1.50, +2.50] points (≥ InfoNCE)" in text
    assert "worst f-MICL (fmicl-js-cosine) 68.00 vs random init 60.00" in text
    assert "Best f-MICL vs moco-infonce: moco-fmicl-kl, kNN -10.00 [-11.00, -9.00] points (below InfoNCE)" in text
    assert "kl -0.50, js +1.00 (≥ 0 for 1 of 2)" in text
