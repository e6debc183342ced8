"""Task kinds: how a task's head output is scored (loss) and measured (metrics).

A :class:`TaskSpec` names one task of a dataset (``"left"``), its kind
(``"multiclass"``, ``"binary"`` or ``"regression"``) and its output size. The kind decides
the loss used for training and the metrics reported at evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fedmtl.registry import Registry


class TaskKind:
    """Base class of task kinds.

    Attributes
    ----------
    name : str
        Registry name.
    metrics : dict[str, bool]
        Metric name -> ``True`` when higher is better.
    """

    name: str = ""
    metrics: dict[str, bool] = {}

    def output_dim(self, num_classes: int) -> int:
        """Size of the head's output layer."""
        raise NotImplementedError

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean loss of a batch."""
        raise NotImplementedError

    def metric_sums(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """Per-batch *sums* of every metric (divided by the example count later)."""
        raise NotImplementedError

    def target_problem(self, target: torch.Tensor, num_classes: int) -> str | None:
        """What is wrong with a split's targets of a task of this kind (``None``: nothing; a
        kind that does not say accepts any)."""
        return None


TASK_KINDS: Registry[type[TaskKind]] = Registry("task kind")


def class_problem(target: torch.Tensor, num_classes: int) -> str | None:
    """Class labels must be integers in ``[0, num_classes)``."""
    if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
        return f"class labels must be integers, not {target.dtype}"
    if len(target) and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        return f"class labels span {int(target.min())}..{int(target.max())}, outside 0..{num_classes - 1}"
    return None


@TASK_KINDS.register("multiclass")
class MultiClass(TaskKind):
    """Single-label classification: softmax cross-entropy; accuracy."""

    name = "multiclass"
    metrics = {"accuracy": True, "loss": False}

    def output_dim(self, num_classes: int) -> int:
        return num_classes

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output, target.long())

    def metric_sums(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        target = target.long()
        return {
            "accuracy": (output.argmax(dim=1) == target).sum().item(),
            "loss": F.cross_entropy(output, target, reduction="sum").item(),
        }

    def target_problem(self, target: torch.Tensor, num_classes: int) -> str | None:
        return class_problem(target, num_classes)


@TASK_KINDS.register("binary")
class Binary(TaskKind):
    """Binary classification from one logit: sigmoid cross-entropy; accuracy."""

    name = "binary"
    metrics = {"accuracy": True, "loss": False}

    def output_dim(self, num_classes: int) -> int:
        return 1

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(output.squeeze(1), target.float())

    def metric_sums(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        logit = output.squeeze(1)
        target = target.float()
        return {
            "accuracy": ((logit > 0).float() == target).sum().item(),
            "loss": F.binary_cross_entropy_with_logits(logit, target, reduction="sum").item(),
        }

    def target_problem(self, target: torch.Tensor, num_classes: int) -> str | None:
        if target.dtype.is_complex or not bool(((target == 0) | (target == 1)).all()):
            return "binary labels must be 0 or 1"
        return None


@TASK_KINDS.register("regression")
class Regression(TaskKind):
    """Scalar regression: mean squared error; MSE and MAE."""

    name = "regression"
    metrics = {"mse": False, "mae": False, "loss": False}

    def output_dim(self, num_classes: int) -> int:
        return 1

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(output.squeeze(1), target.float())

    def metric_sums(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        err = output.squeeze(1) - target.float()
        sq = (err**2).sum().item()
        return {"mse": sq, "mae": err.abs().sum().item(), "loss": sq}

    def target_problem(self, target: torch.Tensor, num_classes: int) -> str | None:
        if target.dtype.is_complex or target.dtype == torch.bool:
            return f"regression targets must be real numbers, not {target.dtype}"
        if not bool(torch.isfinite(target.float()).all()):
            return "regression targets must be finite"
        return None


@dataclass(frozen=True)
class TaskSpec:
    """One task of a dataset.

    Parameters
    ----------
    name : str
        Task name, the key of its head and of its targets (``"left"``).
    kind : str
        A registered task kind.
    num_classes : int
        Number of classes (ignored by ``regression``).
    """

    name: str
    kind: str
    num_classes: int = 0

    @property
    def task_kind(self) -> TaskKind:
        """The kind object (loss and metrics)."""
        return TASK_KINDS.get(self.kind)()

    @property
    def output_dim(self) -> int:
        """Size of the head's output layer."""
        return self.task_kind.output_dim(self.num_classes)

    @property
    def primary_metric(self) -> str:
        """The metric shown in tables and plots (accuracy, or MSE for regression)."""
        return next(iter(self.task_kind.metrics))
