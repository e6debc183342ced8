"""``fedfv``: federated fair averaging by projecting conflicting client updates."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from fedmtl.aggregation.losses import losses_of
from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.registry import register
from fedmtl.aggregation.rule import Aggregate, Aggregator, NoParams, RuleContext


@register("fedfv")
class FedFV(Aggregator):
    """FedFV: mitigate conflicting client updates by projection (federated fair averaging).

    Wang et al., "Federated Learning with Fair Averaging", IJCAI 2021. Clients are ordered
    by pre-training loss; the ``⌊α m⌋`` highest-loss clients keep their update, every other
    update is projected off each update it conflicts with (``u_i·u_j < 0``), j in ascending
    loss order (higher-loss clients last, so their conflicts are removed). The average is
    projected off the sum of the stored updates of the last τ rounds that conflict with it,
    and rescaled to the norm of the plain average.
    """

    scope = "server"
    needs_losses = True
    state_attributes = ("history",)

    class Params(NoParams):
        alpha: float = Field(0.1, ge=0, le=1, description="Fraction α of clients exempt from projection.")
        tau: int = Field(1, ge=0, description="Rounds τ of update history used.")

    def __init__(self, context: RuleContext | None = None, **params: Any) -> None:
        super().__init__(context, **params)
        self.history: list[torch.Tensor] = []

    def projected_weights(self, objectives: Objectives) -> torch.Tensor:
        """The weights of the projected average (before the history step)."""
        m = len(objectives)
        a = objectives.gramian
        order = torch.argsort(losses_of(objectives, self.name), stable=True).tolist()
        exempt = set(order[m - int(self.params.alpha * m):]) if int(self.params.alpha * m) else set()
        coefficients = torch.eye(m, dtype=torch.float64)
        for i in range(m):
            if i in exempt:
                continue
            for j in order:
                if j == i or a[j, j] <= 0:
                    continue
                dot = coefficients[i] @ a[:, j]
                if dot < 0:
                    coefficients[i, j] -= dot / a[j, j]
        return coefficients.sum(dim=0) / m

    def compute(self, objectives: Objectives) -> Aggregate:
        updates = self._rows(objectives)
        weights = self.projected_weights(objectives)
        direction = weights.to(updates) @ updates
        conflicting = [h for h in self.history if h.shape == direction.shape and h @ direction < 0]
        if conflicting:
            total = torch.stack(conflicting).sum(dim=0)
            dot, sq = direction @ total, total @ total
            if dot < 0 and sq > 0:
                direction = direction - (dot / sq) * total
        target = updates.mean(dim=0).norm()
        norm = direction.norm()
        if norm > 0:
            direction = direction * (target / norm)
        if self.params.tau > 0:
            self.history = (self.history + [u.detach().clone() for u in updates])[-self.params.tau * len(updates):]
        return Aggregate(direction)
