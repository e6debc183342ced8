"""``mean``: uniform weights."""

from __future__ import annotations

import torch

from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.registry import register
from fedmtl.aggregation.rule import Weighting


@register("mean")
class Mean(Weighting):
    """Uniform weights ``w_i = 1/m`` (linear scalarisation, FairGrad with α = 0).

    On a client the backbone then descends the mean of the task losses; on the server it is
    the unweighted mean of the updates. torchjd's ``MeanWeighting``.
    """

    scope = "both"
    claims = ("linear-under-scaling",)

    def compute(self, objectives: Objectives) -> torch.Tensor:
        m = len(objectives)
        return torch.full((m,), 1.0 / m, dtype=torch.float64)
