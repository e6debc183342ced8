"""``gradnorm``: gradient normalisation across tasks."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from fedmtl.aggregation.losses import EPS, losses_of
from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.registry import register
from fedmtl.aggregation.rule import NoParams, RuleContext, Weighting


@register("gradnorm")
class GradNorm(Weighting):
    """GradNorm: learn weights so that the weighted gradient norms train at equal rates.

    Chen et al., "GradNorm: Gradient Normalization for Adaptive Loss Balancing", ICML 2018.
    With ``G_i = w_i ‖g_i‖``, ``L̃_i = L_i / L_i(0)``, ``r_i = L̃_i / mean(L̃)``, the weights take
    a gradient step on ``Σ_i |G_i − mean(G) r_i^a|`` (target held constant) and are
    renormalised to sum to T. ``g_i`` is the gradient at the shared representation (the
    output of the last shared layer). Returned as ``w / T`` (relative to ``mean``).
    """
    state_attributes = ("task_weights", "initial_losses")

    scope = "client"
    needs_updates = True
    needs_losses = True

    class Params(NoParams):
        asymmetry: float = Field(1.5, ge=0, description="Restoring-force strength a.")
        lr: float = Field(0.025, gt=0, description="Learning rate of the weights.")

    def __init__(self, context: RuleContext | None = None, **params: Any) -> None:
        super().__init__(context, **params)
        self.task_weights: dict[str, float] = {}
        self.initial_losses: dict[str, float] = {}

    def compute(self, objectives: Objectives) -> torch.Tensor:
        keys = objectives.keys()
        t = len(keys)
        losses = losses_of(objectives, self.name, EPS)
        for key, loss in zip(keys, losses.tolist(), strict=True):
            self.initial_losses.setdefault(key, loss)
            self.task_weights.setdefault(key, 1.0)
        w = torch.tensor([self.task_weights[k] for k in keys], dtype=torch.float64)
        norms = torch.diagonal(objectives.gramian).clamp_min(0).sqrt()
        ratio = losses / torch.tensor([self.initial_losses[k] for k in keys], dtype=torch.float64)
        target = (w * norms).mean() * (ratio / ratio.mean()) ** self.params.asymmetry
        grad = torch.sign(w * norms - target) * norms
        new = (w - self.params.lr * grad).clamp_min(1e-6)
        new = new * t / new.sum()
        self.task_weights.update(zip(keys, new.tolist(), strict=True))
        return w / t
