"""``term``: tilted empirical risk minimisation across clients."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from fedmtl.aggregation.losses import losses_of
from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.registry import register
from fedmtl.aggregation.rule import NoParams, RuleContext, Weighting


@register("term")
class TERM(Weighting):
    """Tilted empirical risk minimisation across clients.

    Li, Beirami, Sanjabi & Smith, "Tilted Empirical Risk Minimization", ICLR 2021. The
    tilted objective's gradient weights clients by ``e^(t F_k)``; federated form (the
    paper's code): ``w_k = e^(t (F_k − max F)) / (m ẑ)`` with
    ``ẑ ← ½ ẑ + ½ mean_k e^(t (F_k − max F))`` across rounds. ``t → 0`` is the mean,
    ``t → ∞`` the worst client, ``t < 0`` down-weights outliers.
    """
    state_attributes = ("z",)

    scope = "server"
    needs_losses = True

    class Params(NoParams):
        tilt: float = Field(1.0, description="Tilt t (> 0 fairness, < 0 robustness).")

    def __init__(self, context: RuleContext | None = None, **params: Any) -> None:
        super().__init__(context, **params)
        self.z: float | None = None

    def compute(self, objectives: Objectives) -> torch.Tensor:
        f = losses_of(objectives, self.name)
        e = torch.exp(self.params.tilt * (f - f.max()))
        mean = float(e.mean())
        self.z = mean if self.z is None else 0.5 * self.z + 0.5 * mean
        return e / (len(f) * self.z)
