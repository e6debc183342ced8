"""Across-client statistics, checked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedmtl.fairness import jain_index, summarize, worst_fraction_mean


def test_summary_by_hand():
    values = np.array([0.5, 1.0, 0.75, 0.25])
    s = summarize(values, weights=np.array([1, 1, 2, 0]))
    assert s["mean"] == pytest.approx(0.625)
    assert s["wmean"] == pytest.approx((0.5 + 1.0 + 1.5) / 4)
    assert s["std"] == pytest.approx(np.sqrt(np.mean((values - 0.625) ** 2)))
    assert s["worst"] == 0.25 and s["best"] == 1.0
    assert s["worst10"] == 0.25  # max(1, floor(0.4)) = 1 lowest
    assert s["jain"] == pytest.approx(2.5**2 / (4 * (0.25 + 1 + 0.5625 + 0.0625)))


def test_edge_cases():
    assert summarize(np.array([0.7]))["jain"] == pytest.approx(1.0)
    assert summarize(np.array([0.3, 0.3, 0.3]))["std"] == 0.0
    assert math.isnan(jain_index(np.zeros(3)))
    assert all(math.isnan(v) for v in summarize(np.array([])).values())


def test_lower_is_better_flips_worst():
    values = np.array([1.0, 4.0, 2.0, 3.0] * 5)
    s = summarize(values, higher_is_better=False)
    assert s["worst"] == 4.0 and s["best"] == 1.0
    assert worst_fraction_mean(values, 0.1, higher_is_better=False) == 4.0  # 2 worst of 20
    assert worst_fraction_mean(values, 0.2, higher_is_better=True) == pytest.approx(1.0)


def test_new_statistics_by_hand():
    from fedmtl.fairness import STATISTICS

    s = summarize(np.array([0.5, 1.0, 0.75, 0.25]))
    assert set(s) == set(STATISTICS)
    assert s["var"] == pytest.approx(0.078125)  # mean of squared deviations from 0.625
    assert s["gap"] == pytest.approx(0.75)
    # ordered pairs |a_i - a_j| sum to 5.0; 2 n² ā = 2·16·0.625 = 20
    assert s["gini"] == pytest.approx(0.25)
    p = np.array([0.2, 0.4, 0.3, 0.1])
    assert s["entropy"] == pytest.approx(-(p * np.log(p)).sum(), rel=1e-6)
    assert s["worst20"] == 0.25 and s["best10"] == 1.0  # floor(0.8) → 1 value each
    ten = summarize(np.arange(1, 11) / 10)
    assert ten["worst20"] == pytest.approx(0.15) and ten["best10"] == pytest.approx(1.0)


def test_new_statistics_edge_cases():
    one = summarize(np.array([0.7]))
    assert one["gini"] == 0 and one["gap"] == 0 and one["entropy"] == pytest.approx(0.0)
    equal = summarize(np.array([0.3] * 4))
    assert equal["gini"] == 0 and equal["entropy"] == pytest.approx(np.log(4))
    zeros = summarize(np.zeros(3))
    assert math.isnan(zeros["gini"]) and zeros["entropy"] == pytest.approx(np.log(3))
    lower = summarize(np.array([1.0, 4.0, 2.0, 3.0] * 5), higher_is_better=False)
    assert lower["best10"] == 1.0 and lower["worst20"] == 4.0


def test_delta_m_by_hand():
    from fedmtl.fairness import delta_m

    ref = {"left.accuracy": 0.8, "depth.mse": 2.0}
    higher = {"left.accuracy": True, "depth.mse": False}
    # accuracy +10% relative (better, −10), mse +50% relative (worse, +50): (−10 + 50) / 2
    assert delta_m({"left.accuracy": 0.88, "depth.mse": 3.0}, ref, higher) == pytest.approx(20.0)
    assert delta_m(ref, ref, higher) == 0.0
    with pytest.raises(KeyError, match="depth.mse"):
        delta_m({"left.accuracy": 0.9}, ref, higher)
    with pytest.raises(ValueError, match="undefined"):
        delta_m({"a": 1.0}, {"a": 0.0}, {"a": True})


def test_round_statistics_have_an_overall_summary_of_each_clients_task_mean(tmp_path):
    from fedmtl.data import dataset_tasks
    from fedmtl.results import OVERALL, RunRecorder
    from fedmtl.validation import load_config

    cfg = load_config(None, [])
    recorder = RunRecorder(tmp_path, cfg, dataset_tasks(cfg.data))
    per_client = {0: {"left": {"accuracy": 0.8}, "right": {"accuracy": 0.6}},
                  1: {"left": {"accuracy": 0.5}},  # holds one task: its mean is that task's
                  2: {"right": {"accuracy": 0.9}}}
    stats = recorder.record_evaluation(3, per_client, {0: 10, 1: 10, 2: 20})
    assert stats.metric[OVERALL] == "accuracy"
    assert stats.overall["mean"] == pytest.approx((0.7 + 0.5 + 0.9) / 3)
    assert stats.overall["wmean"] == pytest.approx((7 + 5 + 18) / 40)
    assert stats.overall["worst"] == 0.5
    assert stats.stats["left"]["mean"] == pytest.approx(0.65) and stats.stats["right"]["worst"] == 0.6
    recorder.log_round({"round": 3}, stats)
    import pandas as pd

    row = pd.read_csv(tmp_path / "rounds.csv").iloc[0]
    assert row["overall.accuracy.mean"] == pytest.approx(0.7) and row["left.accuracy.worst"] == 0.5
    assert not stats.group  # the multimnist data has no sensitive attribute
