"""``median``: the coordinate-wise median."""

from __future__ import annotations

import torch

from fedmtl.aggregation.coordinatewise import CoordinateWise, median_sorted
from fedmtl.aggregation.registry import register
from fedmtl.aggregation.rule import Aggregate


@register("median")
class Median(CoordinateWise):
    """Coordinate-wise median (mean of the two middle values for an even count).

    Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
    Rates", ICML 2018.
    """

    def combine_sorted(self, ordered: torch.Tensor) -> Aggregate:
        return Aggregate(median_sorted(ordered))
