"""Degenerate metrics are flagged: a model that predicts one class for a whole task or group is
named as such next to its group gaps, and group values are shown by their names."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from fedmtl import report
from fedmtl.data import dataset_tasks
from fedmtl.group_fairness import (
    OneClass,
    group_metrics,
    one_class_predictions,
    pooled_group_gaps,
    resampled_group_gaps,
    summarize_group_gaps,
)
from fedmtl.results import RunRecorder
from fedmtl.screening import evaluation_range
from fedmtl.validation import load_config

NAMES = {"colour": ("White", "Black")}
ARRESTS = ["data.dataset=arrests", "model.backbone=mlp", "data.partitioner=natural", "data.num-clients=6"]


# -- per client ----------------------------------------------------------------------------------
def test_group_values_are_named_and_the_top_class_rate_is_recorded():
    pred = torch.tensor([1, 1, 1, 1, 1, 0])
    true = torch.tensor([1, 0, 1, 0, 1, 0])
    group = torch.tensor([0, 0, 0, 1, 1, 1])
    m = group_metrics(pred, true, {"colour": group}, binary=True, names=NAMES)
    assert m["count-colour-White"] == 3 and m["count-colour-Black"] == 3
    assert m["positive-rate-colour-White"] == 1.0 and m["positive-rate-colour-Black"] == pytest.approx(2 / 3)
    assert m["top-class-rate-colour-White"] == 1.0 and m["top-class-rate-colour-Black"] == pytest.approx(2 / 3)
    assert m["top-class-rate"] == pytest.approx(5 / 6)
    assert not any(key.endswith(("-0", "-1")) for key in m)
    unnamed = group_metrics(pred, true, {"colour": group}, binary=True)
    assert "count-colour-0" in unnamed and "count-colour-1" in unnamed  # no names: the codes
    with pytest.raises(ValueError, match="cannot be part of a metric name"):
        group_metrics(pred, true, {"colour": group}, binary=True, names={"colour": ("not-white", "black")})


def test_pooled_gaps_with_named_groups_equal_the_gaps_of_all_examples():
    gen = torch.Generator().manual_seed(0)
    parts = []
    for size in (7, 11, 4):
        parts.append(tuple(torch.randint(0, 2, (size,), generator=gen) for _ in range(3)))
    per_client = [group_metrics(p, t, {"colour": g}, binary=True, names=NAMES) for p, t, g in parts]
    together = group_metrics(*(torch.cat([p[i] for p in parts]) for i in range(2)),
                             {"colour": torch.cat([p[2] for p in parts])}, binary=True, names=NAMES)
    pooled = pooled_group_gaps(per_client)
    assert pooled and all(pooled[k] == pytest.approx(together[k], abs=1e-6) for k in pooled)


@pytest.mark.parametrize("binary", [True, False])
def test_resampled_gaps_equal_the_summary_of_each_resample(binary):
    gen = torch.Generator().manual_seed(int(binary))
    classes = 2 if binary else 4
    clients = []
    for size in (1, 3, 6, 8, 2):
        pred, true = (torch.randint(0, classes, (size,), generator=gen) for _ in range(2))
        group = torch.randint(0, 2, (size,), generator=gen)
        clients.append(group_metrics(pred, true, {"colour": group}, binary, NAMES))
    rows = np.random.default_rng(0).integers(0, len(clients), size=(50, len(clients)))
    fast = resampled_group_gaps(clients, rows)
    for b, row in enumerate(rows):
        slow = {k: v for k, v in summarize_group_gaps([clients[i] for i in row]).items() if not k.endswith(".worst")}
        for key in set(slow) | set(fast):
            assert fast[key][b] == pytest.approx(slow.get(key, math.nan), nan_ok=True, abs=1e-12), key


def test_the_new_rate_passes_the_servers_range_check():
    assert evaluation_range("top-class-rate", 10) == (0.0, 1.0)
    assert evaluation_range("top-class-rate-colour-Black", 10) == (0.0, 1.0)


# -- one-class predictions -------------------------------------------------------------------------
def client(pred: list[int], true: list[int], group: list[int], binary: bool = True) -> dict[str, float]:
    return group_metrics(torch.tensor(pred), torch.tensor(true), {"colour": torch.tensor(group)}, binary, NAMES)


def test_a_model_answering_positive_to_everyone_is_degenerate_though_its_gaps_are_zero():
    clients = [client([1] * 6, [1, 0, 1, 0, 0, 1], [0, 0, 0, 1, 1, 1]),
               client([1] * 4, [0, 0, 1, 1], [0, 1, 0, 1])]
    gaps = summarize_group_gaps(clients)
    assert gaps["demographic-parity-diff-colour.pooled"] == 0.0
    assert gaps["equalized-odds-diff-colour.pooled"] == 0.0
    found = one_class_predictions(clients)
    assert (found.clients, found.whole) == (2, 2)
    assert found.pooled_positive_rate == {"colour=White": 1.0, "colour=Black": 1.0}
    assert found.describe() == "degenerate: predicts one class (positive) for every example"


def test_one_class_for_one_group_is_named_per_group():
    clients = [client([1, 1, 1, 0, 1, 0], [1, 0, 1, 0, 0, 1], [0, 0, 0, 1, 1, 1]),
               client([1, 1, 0, 1], [0, 1, 1, 0], [0, 0, 1, 1])]
    found = one_class_predictions(clients)
    assert found.whole == 0 and found.groups == {"colour=White": (2, 2), "colour=Black": (0, 2)}
    assert found.describe() == ("degenerate: colour=White: predicts one class (positive) for every "
                                "example of the group")


def test_multiclass_and_partly_degenerate_models():
    checks = [client([2, 2, 2, 2], [0, 2, 5, 1], [0, 0, 1, 1], binary=False),
              client([3, 3, 3], [3, 1, 3], [0, 1, 1], binary=False),
              client([0, 4, 4, 1], [0, 4, 4, 1], [0, 0, 1, 1], binary=False)]
    found = one_class_predictions(checks)
    assert (found.clients, found.whole) == (3, 2) and not found.pooled_positive_rate
    assert found.groups == {"colour=White": (0, 1), "colour=Black": (0, 1)}  # the third model's groups
    assert found.describe() == "degenerate: 2 of 3 client models predict one class for all their examples"
    partly = one_class_predictions([*checks, client([5, 5, 0, 6], [5, 1, 0, 6], [0, 0, 1, 1], binary=False)])
    assert partly.describe() == ("degenerate: 2 of 4 client models predict one class for all their examples; "
                                 "colour=White: 1 of 2 other client models predict one class for the group")
    assert one_class_predictions(checks[:2]).describe() == (
        "degenerate: every client model (2) predicts one class for all its examples")
    fine = one_class_predictions([client([1, 0, 1, 0], [1, 0, 0, 1], [0, 0, 1, 1])])
    assert fine.describe() == "" and fine.groups == {"colour=White": (0, 1), "colour=Black": (0, 1)}


def test_predicting_the_one_label_a_group_has_is_no_fault():
    right = one_class_predictions([client([1, 1, 0, 1], [1, 1, 0, 1], [0, 0, 1, 1])])  # White: all positive
    assert right.groups == {"colour=Black": (0, 1)} and right.describe() == ""


def test_runs_recorded_before_the_top_class_rate_are_read_from_positive_rates():
    old = [{k: v for k, v in client([1] * 4, [1, 0, 0, 1], [0, 0, 1, 1]).items() if not k.startswith("top-class")}]
    assert one_class_predictions(old).describe() == "degenerate: predicts one class (positive) for every example"


def test_seeds_add_up_and_disagreeing_pooled_rates_are_dropped():
    positive = one_class_predictions([client([1] * 4, [1, 0, 0, 1], [0, 0, 1, 1])])
    negative = one_class_predictions([client([0] * 4, [1, 0, 0, 1], [0, 0, 1, 1])])
    both = positive + negative
    assert (both.clients, both.whole) == (2, 2)
    assert both.describe() == "degenerate: every client model (2) predicts one class for all its examples"
    assert (positive + positive).describe() == "degenerate: predicts one class (positive) for every example"
    assert OneClass().describe() == ""


# -- evaluation on the arrests data --------------------------------------------------------------
def test_evaluation_of_a_constant_model_on_arrests_names_the_groups_and_flags_it():
    from fedmtl.data import dataset_input_shape, load_federation
    from fedmtl.models import build_model
    from fedmtl.training import evaluate

    cfg = load_config(None, ARRESTS)
    torch.manual_seed(0)
    model = build_model(cfg.model, dataset_input_shape(cfg.data), dataset_tasks(cfg.data))
    with torch.no_grad():  # the last layer of each head: a constant output
        for task, bias in (("released", torch.tensor([5.0])), ("checks", torch.eye(7)[2])):
            last = model.heads[task][-1]
            last.weight.zero_()
            last.bias.copy_(bias)
    data = load_federation(cfg.data, 0).client(1).test
    assert data.group_names == {"colour": ("White", "Black")}
    results = evaluate(model, data, dataset_tasks(cfg.data))
    released, checks = results["released"], results["checks"]
    assert released["positive-rate-colour-White"] == released["positive-rate-colour-Black"] == 1.0
    assert released["demographic-parity-diff-colour"] == 0.0 and released["top-class-rate"] == 1.0
    assert checks["top-class-rate-colour-Black"] == 1.0
    assert one_class_predictions([released]).describe() == (
        "degenerate: predicts one class (positive) for every example")
    assert one_class_predictions([checks]).describe() == "degenerate: predicts one class for every example"


# -- the report ------------------------------------------------------------------------------------
def arrests_run(folder, seed: int, weighting: str, released) -> None:
    """A finished arrests run: 6 clients, ``released(client) -> predictions`` of 10 test examples
    (5 White, 5 Black), ``checks`` predicted at random."""
    cfg = load_config(None, [*ARRESTS, f"run.seed={seed}", f"client.weighting={weighting}"])
    recorder = RunRecorder(folder, cfg, dataset_tasks(cfg.data))
    gen = torch.Generator().manual_seed(seed)
    group = torch.tensor([0] * 5 + [1] * 5)
    per_client = {}
    for c in range(6):
        true = torch.randint(0, 2, (10,), generator=gen)
        true[[0, 5]], true[[1, 6]] = 1, 0  # both labels in both groups
        pred = torch.tensor(released(c, true))
        classes, guess = torch.randint(0, 7, (10,), generator=gen), torch.randint(0, 7, (10,), generator=gen)
        per_client[c] = {
            "released": {"accuracy": float((pred == true).float().mean()), "loss": 0.7,
                         **group_metrics(pred, true, {"colour": group}, True, NAMES)},
            "checks": {"accuracy": float((guess == classes).float().mean()), "loss": 1.9,
                       **group_metrics(guess, classes, {"colour": group}, False, NAMES)},
        }
    final = recorder.record_evaluation(1, per_client, dict.fromkeys(range(6), 10))
    recorder.log_round({"round": 1}, final)
    recorder.finish(final)


def test_the_report_flags_the_always_positive_model_next_to_its_zero_gaps(tmp_path, monkeypatch):
    monkeypatch.setattr("fedmtl.plots.plot_run", lambda run_dir: [])
    monkeypatch.setattr(report, "report_figures", lambda *args, **kwargs: [], raising=False)
    for seed in (0, 1):
        arrests_run(tmp_path / "runs" / "mean" / f"seed-{seed}", seed, "mean", lambda c, true: [1] * 10)
        arrests_run(tmp_path / "runs" / "fairgrad" / f"seed-{seed}", seed, "fairgrad",
                    lambda c, true: true.tolist()[:9] + [1 - int(true[9])])
    arrests_run(tmp_path / "one" / "run", 0, "mean", lambda c, true: [1] * 5 + true.tolist()[5:])
    metrics = pd.read_csv(tmp_path / "runs" / "mean" / "seed-0" / "metrics.csv")
    assert {"positive-rate-colour-White", "count-colour-Black", "top-class-rate"} <= set(metrics.metric)
    text = report.make_report([tmp_path / "runs"], tmp_path / "report")["report"].read_text()
    table = text.split("## Group fairness", 1)[1].split("##", 1)[0]
    rows = {tuple(cell.strip() for cell in line.strip("|").split(" | ")[:2]): line
            for line in table.splitlines() if line.startswith("| client.")}
    header = next(line for line in table.splitlines() if line.startswith("| configuration"))
    assert "demographic-parity-diff-colour pooled / client mean" in header and header.endswith("| predictions |")
    always = next(line for (label, task), line in rows.items() if "weighting=mean" in label and task == "released")
    assert "0.000 [0.000, 0.000] / 0.000 [0.000, 0.000]" in always  # parity and equalized odds: 0
    assert always.endswith("| degenerate: predicts one class (positive) for every example |")
    honest = next(line for (label, task), line in rows.items() if "fairgrad" in label and task == "released")
    assert honest.endswith("| – |")
    single = report.make_report([tmp_path / "one"], tmp_path / "report-one")["report"].read_text()
    line = next(row for row in single.split("## Group fairness", 1)[1].splitlines() if "| released |" in row)
    assert line.endswith("| degenerate: colour=White: predicts one class (positive) for every example of the group |")
    assert "bootstrap" in single and " [" in line  # one seed: the gaps' intervals come from the clients
