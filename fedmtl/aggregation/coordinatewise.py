"""The base of coordinate-wise aggregators (median, trimmed mean): rows sorted per coordinate."""

from __future__ import annotations

import torch

from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.rule import Aggregate, Aggregator


class CoordinateWise(Aggregator):
    """Combine, coordinate by coordinate, the rows sorted along dimension 0."""

    scope = "server"

    def combine_sorted(self, ordered: torch.Tensor) -> Aggregate:
        """The direction for rows already sorted along dimension 0."""
        raise NotImplementedError

    def compute(self, objectives: Objectives) -> Aggregate:
        ordered, _ = torch.sort(self._rows(objectives), dim=0)
        return self.combine_sorted(ordered)


def median_sorted(ordered: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median of sorted rows (mean of the two middle values for an even count)."""
    m = len(ordered)
    if m % 2:
        return ordered[m // 2]
    return 0.5 * (ordered[m // 2 - 1] + ordered[m // 2])
