"""``uncertainty``: homoscedastic-uncertainty loss weights."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from fedmtl.aggregation.losses import EPS, losses_of
from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.registry import register
from fedmtl.aggregation.rule import NoParams, RuleContext, Weighting


@register("uncertainty")
class Uncertainty(Weighting):
    """Uncertainty weighting: learnable ``s_k = log σ_k²`` with loss ``½ Σ (e^(−s_k) L_k + s_k)``.

    Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses", CVPR
    2018. The task weight is ``e^(−s_k) / T`` (``s = 0`` gives ``mean``); after each step
    ``s_k`` takes an SGD step on the same objective, ``∂/∂s_k = (1 − e^(−s_k) L_k) / T``.
    """
    state_attributes = ("log_vars",)

    scope = "client"
    needs_losses = True

    class Params(NoParams):
        lr: float = Field(0.05, gt=0, description="SGD learning rate of the log-variances s_k.")

    def __init__(self, context: RuleContext | None = None, **params: Any) -> None:
        super().__init__(context, **params)
        self.log_vars: dict[str, float] = {}

    def compute(self, objectives: Objectives) -> torch.Tensor:
        keys = objectives.keys()
        losses = losses_of(objectives, self.name, EPS)
        s = torch.tensor([self.log_vars.get(k, 0.0) for k in keys], dtype=torch.float64)
        weights = torch.exp(-s) / len(keys)
        grad = (1 - torch.exp(-s) * losses) / len(keys)
        self.log_vars.update(zip(keys, (s - self.params.lr * grad).tolist(), strict=True))
        return weights
