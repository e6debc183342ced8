"""``upgrad``: every row projected onto the dual cone, then averaged."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from fedmtl.aggregation.gramian import TorchjdWeighting
from fedmtl.aggregation.registry import register
from fedmtl.aggregation.rule import NoParams


class DualConeParams(NoParams):
    """The ridge of torchjd's dual-cone projections (UPGrad, DualProj)."""

    reg_eps: float = Field(
        1e-4, gt=0, description="Ridge added to the normalised Gramian; g_iᵀd ≥ 0 holds up to about it."
    )


@register("upgrad")
class UPGrad(TorchjdWeighting):
    """UPGrad: each ``g_i / m`` projected onto the dual cone ``{x : G x ≥ 0}``, then summed.

    Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", arXiv 2406.16232
    (2024). torchjd's ``UPGradWeighting`` (its scale: the mean where rows do not conflict).
    No objective is worsened to first order.
    """

    claims = ("non-conflicting", "linear-under-scaling", "strongly-stationary")
    Params = DualConeParams

    def torchjd_weighting(self) -> Any:
        import torchjd.aggregation as tjd  # imported on use: torchjd (and cvxpy) cost ~1 s per process
        from torchjd._linalg._dual_cone import QuadprogProjector

        return tjd.UPGradWeighting(projector=QuadprogProjector(reg_eps=self.params.reg_eps))
