"""``fedavg``: weights proportional to example counts."""

from __future__ import annotations

import torch

from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.registry import register
from fedmtl.aggregation.rule import Weighting


@register("fedavg")
class FedAvg(Weighting):
    """Weights proportional to example counts, ``w_i = n_i / Σ_j n_j``.

    McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized
    Data", AISTATS 2017. All counts zero: uniform weights.
    """

    scope = "server"
    claims = ("linear-under-scaling",)

    def compute(self, objectives: Objectives) -> torch.Tensor:
        if objectives.num_examples is None:
            raise ValueError("fedavg needs example counts")
        n = objectives.num_examples.to(torch.float64)
        total = n.sum()
        if total <= 0:
            return torch.full_like(n, 1.0 / len(n))
        return n / total
