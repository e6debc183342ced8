"""Linear weightings that need no update rows: uniform mean and FedAvg."""

from __future__ import annotations

import torch

from fedmtl.aggregation.base import WEIGHTINGS, Weighting
from fedmtl.aggregation.objectives import Objectives


@WEIGHTINGS.register("mean")
class Mean(Weighting):
    """Uniform weights ``w_i = 1/m`` (linear scalarisation, FairGrad with α = 0).

    On a client the backbone then descends the mean of the task losses; on the server it is
    the unweighted mean of the updates.
    """

    name = "mean"
    scope = "both"

    def weights(self, objectives: Objectives) -> torch.Tensor:
        m = len(objectives)
        return torch.full((m,), 1.0 / m, dtype=torch.float64)


@WEIGHTINGS.register("fedavg")
class FedAvg(Weighting):
    """Weights proportional to example counts, ``w_i = n_i / Σ_j n_j``.

    McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized
    Data", AISTATS 2017.
    """

    name = "fedavg"
    scope = "server"

    def weights(self, objectives: Objectives) -> torch.Tensor:
        if objectives.num_examples is None:
            raise ValueError("fedavg needs example counts")
        n = objectives.num_examples.to(torch.float64)
        total = n.sum()
        if total <= 0:
            return torch.full_like(n, 1.0 / len(n))
        return n / total
