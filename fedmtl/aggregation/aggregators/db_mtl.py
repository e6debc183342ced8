"""``db-mtl``: dual balancing of log-loss gradients."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from fedmtl.aggregation.losses import EPS, losses_of
from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.registry import register
from fedmtl.aggregation.rule import Aggregate, Aggregator, NoParams, RuleContext


@register("db-mtl")
class DBMTL(Aggregator):
    """DB-MTL: dual balancing of log-loss gradients.

    Lin et al., "Dual-Balancing for Multi-Task Learning", arXiv 2308.12029 (2023). Rows are
    gradients (updates) of ``log L_i`` (``u_i / L_i``); their running averages
    ``ĝ_i ← β_t ĝ_i + (1 − β_t) u_i / L_i`` (``β_t = β / t^σ``, from zero) are combined as
    ``d = (1/T) Σ_i (max_j ‖ĝ_j‖ / ‖ĝ_i‖) ĝ_i`` (the paper's sum, divided by T as for
    ``mean``). The averages are per row key, so on a client it needs full backbone
    gradients, not representation gradients. Each row's part is its scaled average.
    """

    needs_losses = True
    per_row = True
    state_attributes = ("averages", "step")

    class Params(NoParams):
        beta: float = Field(0.9, ge=0, lt=1, description="Averaging factor β of the gradients.")
        sigma: float = Field(0.0, ge=0, description="Decay exponent σ of β_t = β / t^σ.")

    def __init__(self, context: RuleContext | None = None, **params: Any) -> None:
        super().__init__(context, **params)
        self.averages: dict[str, torch.Tensor] = {}
        self.step = 0

    def compute(self, objectives: Objectives) -> Aggregate:
        updates = self._rows(objectives)
        keys = objectives.keys()
        losses = losses_of(objectives, self.name, EPS).to(updates)
        self.step += 1
        beta = self.params.beta / self.step**self.params.sigma
        rows = []
        for key, row, loss in zip(keys, updates, losses, strict=True):
            previous = self.averages.get(key)
            if previous is None or previous.shape != row.shape:
                previous = torch.zeros_like(row)
            average = beta * previous + (1 - beta) * row / loss
            self.averages[key] = average.detach().clone()
            rows.append(average)
        stacked = torch.stack(rows)
        # each row rescaled to the largest norm, as its unit vector times that norm, the norms
        # taken of rows divided by their largest entry: no square or ratio of norms under- or
        # overflows at any scale, and a zero row contributes nothing
        peaks = stacked.abs().amax(dim=1)
        shrunk = stacked / torch.where(peaks > 0, peaks, 1.0)[:, None]
        shrunk_norms = shrunk.norm(dim=1)
        units = shrunk / torch.where(peaks > 0, shrunk_norms, 1.0)[:, None]
        largest = (peaks * shrunk_norms).max()
        return Aggregate.from_parts(largest * units / len(keys))
