"""``dualproj``: the mean row projected onto the dual cone."""

from __future__ import annotations

from typing import Any

from fedmtl.aggregation.gramian import TorchjdWeighting
from fedmtl.aggregation.registry import register
from fedmtl.aggregation.weightings.upgrad import DualConeParams


@register("dualproj")
class DualProj(TorchjdWeighting):
    """DualProj: the mean gradient projected onto the dual cone ``{x : G x ≥ 0}``.

    Quinton & Rey, arXiv 2406.16232 (2024), after Lopez-Paz & Ranzato's GEM (NeurIPS 2017).
    torchjd's ``DualProjWeighting``.
    """

    claims = ("non-conflicting",)
    Params = DualConeParams

    def torchjd_weighting(self) -> Any:
        import torchjd.aggregation as tjd  # imported on use: torchjd (and cvxpy) cost ~1 s per process
        from torchjd._linalg._dual_cone import QuadprogProjector

        return tjd.DualProjWeighting(projector=QuadprogProjector(reg_eps=self.params.reg_eps))
