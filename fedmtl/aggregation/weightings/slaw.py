"""``slaw``: scaled loss approximate weighting."""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field

from fedmtl.aggregation.losses import losses_of
from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.registry import register
from fedmtl.aggregation.rule import NoParams, RuleContext, Weighting


@register("slaw")
class SLAW(Weighting):
    """SLAW: weights ∝ 1 / (running standard deviation of each loss), an estimate of 1 / ‖∇L_i‖.

    Crawshaw & Košecká, "SLAW: Scaled Loss Approximate Weighting for Efficient Multi-Task
    Learning", arXiv 2109.08218 (2021). Under SGD a task's loss moves by about its gradient
    norm times the step, so the spread of ``L_i`` over steps stands in for ``‖∇L_i‖``
    without per-task gradients; weighting by its inverse approximates GradNorm-style
    equal gradient norms.

    Follows the authors' code (mtcrawshaw/meta, tag ``SLAW``: ``SLAW`` in
    ``meta/train/loss.py``, ``RunningStats`` in ``meta/utils/estimate.py``): per row, the
    running mean ``b_i`` of ``L_i`` and ``a_i`` of ``L_i²`` are arithmetic means for the
    first ``round(1 / (1 − β))`` calls (100 at the code's ``β = 0.99``), then exponential
    averages ``a ← β a + (1 − β) L²``; ``s_i = √(a_i − b_i²)`` and
    ``w_i = (1 / max(s_i, ε)) / Σ_j (1 / max(s_j, ε))`` with ``ε = 1e-5``. The statistics
    include the current loss (the code updates its weights before forming the loss); the
    first call, where no spread exists yet, gives ``mean`` (the code's initial weights).
    The paper's weights sum to ``T``; here they sum to one (relative to ``mean``). Where
    round-off makes ``a − b²`` negative the code keeps its previous weights; here that
    variance counts as 0. On the server a row is a client and a call is a round; until
    every row of a call has two losses, the call gives ``mean``.
    """

    needs_losses = True
    state_attributes = ("moments",)

    class Params(NoParams):
        beta: float = Field(0.99, ge=0, lt=1, description="Averaging factor β of the loss moments.")
        eps: float = Field(1e-5, gt=0, description="Floor ε of each standard deviation.")

    def __init__(self, context: RuleContext | None = None, **params: Any) -> None:
        super().__init__(context, **params)
        self.moments: dict[str, list[float]] = {}  # key -> [count, mean of L, mean of L²]

    def _update(self, key: str, loss: float) -> list[float]:
        count, mean, square = self.moments.get(key, [0.0, 0.0, 0.0])
        count += 1
        beta = self.params.beta
        if count <= round(1.0 / (1.0 - beta)):  # arithmetic means first, as RunningStats
            mean += (loss - mean) / count
            square += (loss * loss - square) / count
        else:
            mean = beta * mean + (1 - beta) * loss
            square = beta * square + (1 - beta) * loss * loss
        self.moments[key] = [count, mean, square]
        return self.moments[key]

    def compute(self, objectives: Objectives) -> torch.Tensor:
        keys = objectives.keys()
        losses = losses_of(objectives, self.name).tolist()
        stats = [self._update(k, loss) for k, loss in zip(keys, losses, strict=True)]
        if any(count < 2 for count, _, _ in stats):
            return torch.full((len(keys),), 1.0 / len(keys), dtype=torch.float64)
        inverse = torch.tensor(
            [1.0 / max(math.sqrt(max(square - mean * mean, 0.0)), self.params.eps) for _, mean, square in stats],
            dtype=torch.float64,
        )
        return inverse / inverse.sum()
