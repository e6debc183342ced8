"""Byzantine-robust aggregation rules (server only): Krum, trimmed mean, median."""

from __future__ import annotations

import torch
from pydantic import Field

from fedmtl.aggregation.base import WEIGHTINGS, NoParams, Weighting
from fedmtl.aggregation.objectives import Objectives


@WEIGHTINGS.register("krum")
class Krum(Weighting):
    """(Multi-)Krum: average the updates closest to their ``m − f − 2`` nearest neighbours.

    Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent",
    NeurIPS 2017. Distances come from the Gramian (the same rule as torchjd's ``KrumWeighting``,
    with ties broken by row key, not row position). With fewer than ``f + 3`` rows Krum is
    undefined: the plain mean is used and the fallback ``"too-few-rows"`` is recorded.
    """

    name = "krum"
    scope = "server"
    needs_updates = True

    class Params(NoParams):
        byzantine: int = Field(1, ge=0, description="Number f of Byzantine clients tolerated.")
        selected: int = Field(1, ge=1, description="Updates averaged (1 = Krum, >1 = Multi-Krum).")

    def weights(self, objectives: Objectives) -> torch.Tensor:
        m = len(objectives)
        f, k = self.params.byzantine, self.params.selected
        if m < f + 3:
            self.fallback = "too-few-rows"
            return torch.full((m,), 1.0 / m, dtype=torch.float64)
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


class CoordinateWise(Weighting):
    """Base of coordinate-wise rules: not a weighted sum of rows."""

    scope = "server"
    needs_updates = True
    needs_parameter_rows = True
    linear = False

    def combine_sorted(self, ordered: torch.Tensor) -> torch.Tensor:
        """Combine rows already sorted along dimension 0."""
        raise NotImplementedError

    def weights(self, objectives: Objectives) -> torch.Tensor:
        raise TypeError(f"{self.name} is coordinate-wise, not a weighted sum: use aggregate()")

    def aggregate(self, objectives: Objectives) -> tuple[torch.Tensor, torch.Tensor | None]:
        if objectives.updates is None:
            raise ValueError(f"weighting '{self.name}' needs update rows")
        self.fallback = ""
        ordered, _ = torch.sort(objectives.updates, dim=0)
        return self.combine_sorted(ordered), None

    def contributions(self, objectives: Objectives) -> torch.Tensor:
        raise TypeError(f"{self.name} is coordinate-wise; it runs on the server only")


@WEIGHTINGS.register("trimmed-mean")
class TrimmedMean(CoordinateWise):
    """Coordinate-wise trimmed mean: drop the ``b`` largest and smallest values per coordinate.

    Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
    Rates", ICML 2018. With ``m ≤ 2b`` rows nothing would remain: the coordinate-wise median
    is used and the fallback ``"too-few-rows"`` is recorded.
    """

    name = "trimmed-mean"

    class Params(NoParams):
        trim: int = Field(1, ge=0, description="Values b trimmed from each end per coordinate.")

    def combine_sorted(self, ordered: torch.Tensor) -> torch.Tensor:
        m, b = len(ordered), self.params.trim
        if m <= 2 * b:
            self.fallback = "too-few-rows"
            return _median_sorted(ordered)
        return ordered[b : m - b].mean(dim=0)


@WEIGHTINGS.register("median")
class Median(CoordinateWise):
    """Coordinate-wise median (mean of the two middle values for an even count).

    Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
    Rates", ICML 2018.
    """

    name = "median"

    def combine_sorted(self, ordered: torch.Tensor) -> torch.Tensor:
        return _median_sorted(ordered)


def _median_sorted(ordered: torch.Tensor) -> torch.Tensor:
    m = len(ordered)
    if m % 2:
        return ordered[m // 2]
    return 0.5 * (ordered[m // 2 - 1] + ordered[m // 2])
