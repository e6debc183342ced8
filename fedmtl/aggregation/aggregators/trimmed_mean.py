"""``trimmed-mean``: the coordinate-wise trimmed mean."""

from __future__ import annotations

import torch
from pydantic import Field

from fedmtl.aggregation.coordinatewise import CoordinateWise, median_sorted
from fedmtl.aggregation.info import SolveInfo
from fedmtl.aggregation.registry import register
from fedmtl.aggregation.rule import Aggregate, NoParams


@register("trimmed-mean")
class TrimmedMean(CoordinateWise):
    """Coordinate-wise trimmed mean: drop the ``b`` largest and smallest values per coordinate.

    Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
    Rates", ICML 2018. With ``m ≤ 2b`` rows nothing would remain: the coordinate-wise median
    is used and the fallback ``"too-few-rows"`` is recorded.
    """

    class Params(NoParams):
        trim: int = Field(1, ge=0, description="Values b trimmed from each end per coordinate.")

    def combine_sorted(self, ordered: torch.Tensor) -> Aggregate:
        m, b = len(ordered), self.params.trim
        if m <= 2 * b:
            return Aggregate(median_sorted(ordered), SolveInfo(fallback="too-few-rows"))
        return Aggregate(ordered[b : m - b].mean(dim=0))
