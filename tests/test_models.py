"""Backbones, heads, the multi-task model and task kinds."""

from __future__ import annotations

import math

import pytest
import torch

from fedmtl.config import ModelSection
from fedmtl.models import BACKBONES, build_model
from fedmtl.tasks import TASK_KINDS, TaskSpec

TASKS = [TaskSpec("a", "multiclass", 10), TaskSpec("b", "binary"), TaskSpec("c", "regression")]


@pytest.mark.parametrize("backbone", ["lenet", "mlp"])
def test_model_has_one_head_per_task_and_right_output_shapes(backbone):
    model = build_model(ModelSection(backbone=backbone, width=16, head_hidden=8), (1, 28, 28), TASKS)
    out = model(torch.randn(5, 1, 28, 28))
    assert model.task_names == ["a", "b", "c"]
    assert out["a"].shape == (5, 10) and out["b"].shape == (5, 1) and out["c"].shape == (5, 1)
    assert set(model.backbone_state()).isdisjoint({f"heads.{k}" for k in model.heads_state()})
    assert all(k.split(".")[0] in {"a", "b", "c"} for k in model.heads_state())


def test_linear_heads_when_head_hidden_is_zero():
    model = build_model(ModelSection(backbone="mlp", width=4, head_hidden=0), (3,), TASKS[:1])
    assert isinstance(model.heads["a"], torch.nn.Linear)


def test_registry_knows_both_backbones():
    assert {"lenet", "mlp"} <= set(BACKBONES.names())
    assert set(TASK_KINDS.names()) == {"binary", "multiclass", "regression"}


def test_multiclass_loss_and_metrics_by_hand():
    kind = TaskSpec("t", "multiclass", 3).task_kind
    out = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    y = torch.tensor([0, 1])
    sums = kind.metric_sums(out, y)
    assert sums["accuracy"] == 1
    p0 = math.exp(2) / (math.exp(2) + 2)
    p1 = 1 / (2 + math.e)
    assert sums["loss"] == pytest.approx(-math.log(p0) - math.log(p1), rel=1e-6)
    assert kind.loss(out, y).item() == pytest.approx(sums["loss"] / 2, rel=1e-6)


def test_binary_and_regression_metrics_by_hand():
    binary = TaskSpec("t", "binary").task_kind
    logits = torch.tensor([[1.0], [-2.0], [0.5]])
    y = torch.tensor([1, 1, 0])
    assert binary.metric_sums(logits, y)["accuracy"] == 1
    regression = TaskSpec("r", "regression").task_kind
    sums = regression.metric_sums(torch.tensor([[1.0], [3.0]]), torch.tensor([2.0, 0.0]))
    assert sums["mse"] == pytest.approx(1 + 9) and sums["mae"] == pytest.approx(1 + 3)
    assert TaskSpec("r", "regression").primary_metric == "mse"
    assert TaskSpec("t", "multiclass", 2).primary_metric == "accuracy"
