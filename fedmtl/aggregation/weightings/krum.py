"""``krum``: (Multi-)Krum selection of the most central updates."""

from __future__ import annotations

import torch
from pydantic import Field

from fedmtl.aggregation.info import SolveInfo
from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.registry import register
from fedmtl.aggregation.rule import NoParams, Weighting, Weights


@register("krum")
class Krum(Weighting):
    """(Multi-)Krum: average the updates closest to their ``m − f − 2`` nearest neighbours.

    Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent",
    NeurIPS 2017. Distances come from the Gramian (the same rule as torchjd's ``KrumWeighting``,
    with ties broken by row key, not row position). With fewer than ``f + 3`` rows Krum is
    undefined: the plain mean is used and the fallback ``"too-few-rows"`` is recorded.
    """

    scope = "server"
    needs_updates = True

    class Params(NoParams):
        byzantine: int = Field(1, ge=0, description="Number f of Byzantine clients tolerated.")
        selected: int = Field(1, ge=1, description="Updates averaged (1 = Krum, >1 = Multi-Krum).")

    def compute(self, objectives: Objectives) -> torch.Tensor | Weights:
        m = len(objectives)
        f, k = self.params.byzantine, self.params.selected
        if m < f + 3:
            return Weights(torch.full((m,), 1.0 / m, dtype=torch.float64), SolveInfo(fallback="too-few-rows"))
        a, _ = objectives.normalised_gramian()
        norms = torch.diagonal(a)
        distances = (norms[:, None] + norms[None, :] - 2 * a).clamp_min(0).sqrt()
        nearest = torch.sort(distances, dim=1).values[:, 1 : m - f - 1]  # skip the row itself
        scores = nearest.sum(dim=1).tolist()
        keys = objectives.keys()
        chosen = sorted(range(m), key=lambda i: (round(scores[i], 12), keys[i]))[: min(k, m)]
        weights = torch.zeros(m, dtype=torch.float64)
        weights[chosen] = 1.0 / len(chosen)
        return weights
