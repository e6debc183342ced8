"""``propfair``: proportional fairness across clients."""

from __future__ import annotations

import torch
from pydantic import Field

from fedmtl.aggregation.losses import losses_of
from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.registry import register
from fedmtl.aggregation.rule import NoParams, Weighting


@register("propfair")
class PropFair(Weighting):
    """PropFair: proportional fairness across clients, maximise ``Σ_k log(M − F_k)``.

    Zhang, Malekmohammadi, Chen & Yu, "Proportional Fairness in Federated Learning", TMLR
    2023 (arXiv 2202.01666). The objective's gradient weights client k by
    ``1 / (M − F_k)`` (pre-training loss ``F_k``); where ``M − F_k < 0.2`` the weight is
    capped at ``1 / 0.2`` (the surrogate's linear region). Weights are normalised to sum
    to one. The paper applies the surrogate inside local training; this is its server form.
    """

    scope = "server"
    needs_losses = True

    class Params(NoParams):
        baseline: float = Field(5.0, gt=0, description="Baseline M (above every client's loss).")

    def compute(self, objectives: Objectives) -> torch.Tensor:
        gap = (self.params.baseline - losses_of(objectives, self.name)).clamp_min(0.2)
        weights = 1.0 / gap
        return weights / weights.sum()
