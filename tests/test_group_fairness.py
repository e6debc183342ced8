"""Group fairness metrics, checked by hand, and through evaluation on the arrests data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedmtl.group_fairness import group_metrics

ROOT = Path(__file__).resolve().parents[1]


def test_binary_group_metrics_by_hand():
    #            group 0: 4 examples       group 1: 4 examples
    pred = torch.tensor([1, 1, 0, 0, 1, 0, 0, 0])
    true = torch.tensor([1, 0, 0, 1, 1, 1, 0, 0])
    group = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    m = group_metrics(pred, true, {"g": group}, binary=True)
    assert m["count-g-0"] == 4 and m["count-g-1"] == 4
    assert m["accuracy-g-0"] == 0.5 and m["accuracy-g-1"] == 0.75
    assert m["accuracy-gap-g"] == 0.25
    assert m["positive-rate-g-0"] == 0.5 and m["positive-rate-g-1"] == 0.25
    assert m["demographic-parity-diff-g"] == 0.25
    # TPR: g0 1/2, g1 1/2 -> gap 0; FPR: g0 1/2, g1 0/2 -> gap 0.5
    assert m["tpr-g-0"] == 0.5 and m["tpr-g-1"] == 0.5 and m["fpr-g-0"] == 0.5 and m["fpr-g-1"] == 0.0
    assert m["equalized-odds-diff-g"] == 0.5


def test_group_rates_are_exact_ratios_of_counts():
    # 17 of 72 right: a float32 mean gives 0.2361111044..., the exact ratio 0.2361111111...
    true = torch.zeros(72, dtype=torch.long)
    pred = torch.cat([torch.zeros(17, dtype=torch.long), torch.ones(55, dtype=torch.long)])
    m = group_metrics(pred, true, {"g": torch.zeros(72, dtype=torch.long)}, binary=True)
    assert m["accuracy-g-0"] == 17 / 72 and m["positive-rate-g-0"] == 55 / 72 and m["fpr-g-0"] == 55 / 72


def test_undefined_rates_are_left_out_and_multiclass_has_accuracy_only():
    m = group_metrics(torch.tensor([1, 1, 2]), torch.tensor([1, 1, 0]), {"g": torch.tensor([0, 0, 1])}, binary=False)
    assert m == {"count-g-0": 2.0, "accuracy-g-0": 1.0, "count-g-1": 1.0, "accuracy-g-1": 0.0, "accuracy-gap-g": 1.0,
                 "top-class-rate": 2 / 3, "top-class-rate-g-0": 1.0, "top-class-rate-g-1": 1.0}
    one = group_metrics(torch.tensor([1, 0]), torch.tensor([1, 1]), {"g": torch.tensor([0, 0])}, binary=True)
    assert "fpr-g-0" not in one and "accuracy-gap-g" not in one and "equalized-odds-diff-g" not in one


def test_evaluation_reports_group_metrics_for_data_with_groups():
    from fedmtl.data import dataset_input_shape, dataset_tasks, load_federation
    from fedmtl.models import build_model
    from fedmtl.training import evaluate
    from fedmtl.validation import load_config

    cfg = load_config(None, ["data.dataset=arrests", "model.backbone=mlp", "data.partitioner=natural",
                             "data.num-clients=6"])
    client = load_federation(cfg.data, 0).client(2)
    torch.manual_seed(0)
    model = build_model(cfg.model, dataset_input_shape(cfg.data), dataset_tasks(cfg.data))
    results = evaluate(model, client.test, dataset_tasks(cfg.data))
    released = results["released"]
    total = released["count-colour-White"] + released["count-colour-Black"]  # groups by their names
    assert total == len(client.test)
    pooled = (released["accuracy-colour-White"] * released["count-colour-White"]
              + released["accuracy-colour-Black"] * released["count-colour-Black"]) / total
    assert pooled == pytest.approx(released["accuracy"])
    assert "demographic-parity-diff-colour" in released and "equalized-odds-diff-colour" in released
    assert "positive-rate-colour-White" not in results["checks"] and "accuracy-gap-colour" in results["checks"]
    assert 0 < results["checks"]["top-class-rate-colour-Black"] <= 1


@pytest.mark.parametrize("seed", range(6))
def test_pooled_gaps_equal_the_gaps_of_all_examples_taken_together(seed):
    from fedmtl.group_fairness import GAPS, pooled_group_gaps

    gen = torch.Generator().manual_seed(seed)
    parts = []
    for size in (5, 9, 3, 12):
        pred, true = torch.randint(0, 2, (size,), generator=gen), torch.randint(0, 2, (size,), generator=gen)
        parts.append((pred, true, torch.randint(0, 3, (size,), generator=gen)))
    per_client = [group_metrics(p, t, {"g": g}, binary=True) for p, t, g in parts]
    together = group_metrics(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]),
                                    {"g": torch.cat([p[2] for p in parts])}, binary=True)
    pooled = pooled_group_gaps(per_client)
    expected = {k: v for k, v in together.items() if k.startswith(GAPS)}
    assert set(pooled) == set(expected)
    for key, value in expected.items():
        assert pooled[key] == pytest.approx(value)


def test_group_gap_summary_by_hand():
    from fedmtl.group_fairness import summarize_group_gaps

    clients = [
        {"count-g-0": 2.0, "accuracy-g-0": 1.0, "count-g-1": 2.0, "accuracy-g-1": 0.5, "accuracy-gap-g": 0.5},
        {"count-g-0": 6.0, "accuracy-g-0": 0.5, "count-g-1": 2.0, "accuracy-g-1": 0.5, "accuracy-gap-g": 0.0},
        {"count-g-0": 1.0, "accuracy-g-0": 1.0},  # one group only: no gap
    ]
    out = summarize_group_gaps(clients)
    # pooled: group 0 (2·1 + 6·0.5 + 1·1) / 9 = 6/9; group 1 (1 + 1) / 4 = 0.5
    assert out == pytest.approx({"accuracy-gap-g.mean": 0.25, "accuracy-gap-g.worst": 0.5,
                                 "accuracy-gap-g.pooled": 6 / 9 - 0.5})
    assert summarize_group_gaps([]) == {} and summarize_group_gaps([{"accuracy": 1.0}]) == {}


def test_an_attribute_whose_name_extends_another_keeps_its_own_groups():
    """``count-a-b-1`` is group 1 of attribute ``a-b``, not a group ``1`` of attribute ``a``:
    the pooled and resampled gaps of ``a`` equal those computed without ``a-b``."""
    import numpy as np

    from fedmtl.group_fairness import pooled_group_gaps, resampled_group_gaps

    gen = torch.Generator().manual_seed(3)
    both, alone = [], []
    for size in (8, 11, 6):
        pred, true = torch.randint(0, 2, (size,), generator=gen), torch.randint(0, 2, (size,), generator=gen)
        a, ab = torch.randint(0, 2, (size,), generator=gen), torch.randint(2, 5, (size,), generator=gen)
        both.append(group_metrics(pred, true, {"a": a, "a-b": ab}, binary=True))
        alone.append(group_metrics(pred, true, {"a": a}, binary=True))
    assert any(key.startswith("count-a-b-") for key in both[0])
    pooled_both, pooled_alone = pooled_group_gaps(both), pooled_group_gaps(alone)
    assert {k: v for k, v in pooled_both.items() if not k.endswith("-a-b")} == pytest.approx(pooled_alone)
    rows = np.array([[0, 1, 2], [2, 2, 0]])
    resampled_both, resampled_alone = resampled_group_gaps(both, rows), resampled_group_gaps(alone, rows)
    for key, value in resampled_alone.items():
        np.testing.assert_allclose(resampled_both[key], value)


def test_a_model_predicting_one_class_for_everyone_is_named_on_the_terminal_and_in_the_summary(tmp_path, capsys):
    """Its 80% accuracy is the share of the majority label and its gaps are 0: the run says so
    where the number is shown, not only in a report."""
    import json

    from fedmtl.data import dataset_tasks
    from fedmtl.progress import Progress
    from fedmtl.results import RunRecorder
    from fedmtl.validation import load_config

    cfg = load_config(ROOT / "configs/arrests.toml", [])
    recorder = RunRecorder(tmp_path, cfg, dataset_tasks(cfg.data))
    rng = torch.Generator().manual_seed(0)

    def client(constant: bool) -> dict[str, dict[str, float]]:
        targets = (torch.rand(40, generator=rng) < 0.8).long()
        colour = torch.arange(40) % 2
        released = torch.ones(40, dtype=torch.long) if constant else targets.clone()
        if not constant:
            released[:5] = 1 - released[:5]
        out = {}
        for task, predicted in (("released", released), ("checks", targets)):
            metrics = group_metrics(predicted, targets, {"colour": colour}, binary=True,
                                    names={"colour": ["Black", "White"]})
            out[task] = {"accuracy": float((predicted == targets).float().mean()), "loss": 1.0, **metrics}
        return out

    per_client = {c: client(constant=True) for c in range(3)}
    stats = recorder.record_evaluation(1, per_client, dict.fromkeys(per_client, 40))
    assert stats.predictions == {"released": "degenerate: predicts one class (positive) for every example"}
    Progress(1).final_table(stats)
    assert "note: released: degenerate: predicts one class (positive) for every example" in capsys.readouterr().out
    recorder.finish(stats)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["predictions"] == stats.predictions
    honest = recorder.record_evaluation(2, {c: client(constant=False) for c in range(3)}, dict.fromkeys(range(3), 40))
    assert honest.predictions == {}
