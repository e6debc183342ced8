"""``mgda``: the min-norm point of the convex hull of the rows."""

from __future__ import annotations

import torch

from fedmtl.aggregation.gramian import GramianWeighting
from fedmtl.aggregation.registry import register
from fedmtl.aggregation.solvers.min_norm import min_norm_weights


@register("mgda")
class MGDA(GramianWeighting):
    """MGDA: the min-norm point of the convex hull, ``w = argmin_{w∈Δ} ‖Σ w_i g_i‖²``.

    Désidéri, "Multiple-gradient descent algorithm", C. R. Math. 2012; Sener & Koltun,
    "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018. Solved exactly as
    a quadratic program (quadprog's dual active-set method) rather than by Frank–Wolfe, so
    that ``g_iᵀ d ≥ ‖d‖² ≥ 0`` holds to rounding, relative to each row's length even when the
    rows' lengths differ by 1e12 (the QP is solved in row-scaled variables,
    :func:`fedmtl.aggregation.solvers.min_norm_weights`); agrees with torchjd's ``MGDAWeighting``
    where that converges. On Pareto-stationary rows (0 in the hull) the optimal weights are
    not unique; the ones of least norm are returned.
    """

    claims = ("non-conflicting",)

    def from_gramian(self, gramian: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(min_norm_weights(gramian.numpy()))
