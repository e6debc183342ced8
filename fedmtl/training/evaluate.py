"""Evaluation of a multi-task model: per-task metrics on one split."""

from __future__ import annotations

import torch

from fedmtl.data.federation import Split
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
    for x, targets in data.batches(batch_size):
        z = model.backbone(x.to(device))
        for t in tasks:
            out = model.heads[t.name](z)
            for metric, value in t.task_kind.metric_sums(out, targets[t.name].to(device)).items():
                sums[t.name][metric] = sums[t.name].get(metric, 0.0) + value
    n = max(len(data), 1)
    return {task: {m: v / n for m, v in metrics.items()} for task, metrics in sums.items()}
