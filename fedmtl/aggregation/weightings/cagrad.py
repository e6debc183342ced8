"""``cagrad``: the mean corrected towards the worst objective within a ball."""

from __future__ import annotations

from typing import Any

import torchjd.aggregation as tjd
from pydantic import Field

from fedmtl.aggregation.gramian import TorchjdWeighting
from fedmtl.aggregation.registry import register
from fedmtl.aggregation.rule import NoParams


@register("cagrad")
class CAGrad(TorchjdWeighting):
    """CAGrad: the mean gradient corrected towards the worst task within a ball of radius c.

    Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS 2021.
    torchjd's ``CAGradWeighting`` (``d = g₀ + (c‖g₀‖/‖g_w‖) g_w``); ``c = 0`` is gradient
    descent on the mean. With ``c ≥ 1`` on Pareto-stationary rows the direction is 0.
    """

    class Params(NoParams):
        c: float = Field(0.4, ge=0, description="Radius of the conflict-averse ball.")

    def torchjd_weighting(self) -> Any:
        return tjd.CAGradWeighting(c=self.params.c)
