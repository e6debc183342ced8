"""``dwa``: dynamic weight average of loss ratios."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from fedmtl.aggregation.losses import EPS, losses_of
from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.registry import register
from fedmtl.aggregation.rule import NoParams, RuleContext, Weighting


@register("dwa")
class DWA(Weighting):
    """Dynamic weight average: ``w ∝ exp(r_k / τ)``, ``r_k = L_k(t−1) / L_k(t−2)``.

    Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019. ``L_k``
    are epoch means (on a client: local epochs; on the server: rounds, one call per round);
    uniform until every row has two epochs of history. The paper's weights sum to T; here
    they sum to one (relative to ``mean``).
    """
    state_attributes = ("history", "current")

    needs_losses = True

    class Params(NoParams):
        temperature: float = Field(2.0, gt=0, description="Softmax temperature τ.")

    def __init__(self, context: RuleContext | None = None, **params: Any) -> None:
        super().__init__(context, **params)
        self.history: dict[str, list[float]] = {}
        self.current: dict[str, list[float]] = {}

    def compute(self, objectives: Objectives) -> torch.Tensor:
        keys = objectives.keys()
        losses = losses_of(objectives, self.name, EPS)
        for key, loss in zip(keys, losses.tolist(), strict=True):
            self.current.setdefault(key, [0.0, 0.0])
            self.current[key][0] += loss
            self.current[key][1] += 1
        if not all(len(self.history.get(k, [])) == 2 for k in keys):
            return torch.full((len(keys),), 1.0 / len(keys), dtype=torch.float64)
        ratios = torch.tensor([self.history[k][1] / self.history[k][0] for k in keys], dtype=torch.float64)
        return torch.softmax(ratios / self.params.temperature, dim=0)

    def end_epoch(self) -> None:
        for key, (total, count) in self.current.items():
            self.history[key] = (self.history.get(key, []) + [max(total / count, EPS)])[-2:]
        self.current = {}
