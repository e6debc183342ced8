"""Evaluation of a multi-task model: per-task metrics on one split."""

from __future__ import annotations

import torch

from fedmtl.data.federation import Split
from fedmtl.group_fairness import group_metrics
from fedmtl.models import MultiTaskModel
from fedmtl.tasks import TaskSpec


@torch.no_grad()
def evaluate(
    model: MultiTaskModel,
    data: Split,
    tasks: list[TaskSpec],
    *,
    batch_size: int = 256,
    device: torch.device | None = None,
) -> dict[str, dict[str, float]]:
    """Return ``{task: {metric: value}}`` averaged over the examples of ``data``.

    When ``data`` carries group attributes (``data.groups``), classification tasks also get
    the per-group metrics and gaps of :func:`fedmtl.group_fairness.group_metrics` (group values
    named by ``data.group_names``).

    Parameters
    ----------
    model : MultiTaskModel
        The model to evaluate (its heads for ``tasks`` are used).
    data : Split
        Examples and targets.
    tasks : list[TaskSpec]
        Tasks to evaluate.
    batch_size : int
        Evaluation batch size.
    device : torch.device, optional
        Where batches are moved (default: the CPU).
    """
    device = device or torch.device("cpu")
    model.eval()
    sums: dict[str, dict[str, float]] = {t.name: {} for t in tasks}
    grouped = [t for t in tasks if data.groups and t.kind != "regression"]
    predictions: dict[str, list[torch.Tensor]] = {t.name: [] for t in grouped}
    for x, targets in data.batches(batch_size):
        z = model.backbone(x.to(device))
        for t in tasks:
            out = model.heads[t.name](z)
            for metric, value in t.task_kind.metric_sums(out, targets[t.name].to(device)).items():
                sums[t.name][metric] = sums[t.name].get(metric, 0.0) + value
            if t.name in predictions:
                predicted = (out.squeeze(1) > 0).long() if t.kind == "binary" else out.argmax(dim=1)
                predictions[t.name].append(predicted.cpu())
    n = max(len(data), 1)
    results = {task: {m: v / n for m, v in metrics.items()} for task, metrics in sums.items()}
    for t in grouped:
        results[t.name].update(group_metrics(
            torch.cat(predictions[t.name]), data.targets[t.name].long(), data.groups, t.kind == "binary",
            data.group_names,
        ))
    return results
