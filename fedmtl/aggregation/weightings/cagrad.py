"""``cagrad``: the mean corrected towards the worst objective within a ball."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from fedmtl.aggregation.gramian import TorchjdWeighting
from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.registry import register
from fedmtl.aggregation.rule import NoParams, Weights

ZERO_WORST = 1e-3
"""``g_w`` is zero when ``‖g_w‖ ≤ ZERO_WORST · Σ w_i ‖g_i‖``. Measured on rows with 0 in their hull:
CLARABEL's ``g_w`` is 1e-9 of that for c ≠ 1, up to 3e-4 for c = 1 (where every ``g_w`` along
−g₀ is optimal, and the direction is 0 either way); a row 1e-8 of the others gives ~1."""
RESOLUTION = 1e-7
"""``g_w`` is zero when ``‖g_w‖ ≤ RESOLUTION · max_i ‖g_i‖``: below CLARABEL's accuracy at its
default tolerances (its ``g_w`` on a zero row is about 1e-10 of the longest row). A row shorter
than this relative to the longest is treated as zero, as the authors' code's ``+ 1e-8`` does."""
RESCALE = {0: lambda c: 1.0, 1: lambda c: 1.0 + c**2, 2: lambda c: 1.0 + c}
"""The official code's ``rescale`` argument: the divisor of ``g₀ + λ g_w`` for 0, 1, 2."""


@register("cagrad")
class CAGrad(TorchjdWeighting):
    """CAGrad: the mean gradient corrected towards the worst task within a ball of radius c.

    Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent for Multi-task Learning",
    NeurIPS 2021 (arXiv 2110.14048). With ``g₀`` the mean row and ``w ∈ Δ`` minimising
    ``g_wᵀg₀ + c‖g₀‖‖g_w‖``, the direction is ``d = (g₀ + (c‖g₀‖/‖g_w‖) g_w) / r``.
    ``g₀ + …`` is torchjd 0.18's ``CAGradWeighting`` (its weights are
    ``1/m + (c‖g₀‖/‖g_w‖) w``), with its ``norm_eps`` at 0. When ``g_w`` is 0 (to the solver's
    accuracy, relative to the rows it combines: :func:`worst_direction_vanishes`), which can
    happen only when 0 is in the rows' hull (a zero row, or rows g and −g), the correction is
    undefined. For c ≥ 1 the direction is then 0:
    d = 0 lies in the ball ``‖d − g₀‖ ≤ c‖g₀‖`` and no direction does better than
    ``min_i g_iᵀd = 0`` (the rows are Pareto-stationary; tests check that the rule then
    stops). For c < 1, d = 0 lies outside the ball: the direction is then ``g₀ / r``, the
    authors' code's, whose correction ``c‖g₀‖ g_w / (‖g_w‖ + 1e-8)`` vanishes with ``g_w``.
    Otherwise the full correction is kept however short ``g_w`` is, as in the authors' code
    (torchjd's default ``norm_eps`` of 1e-4 of the rows' scale dropped it when one row was
    1e-4 of the others, and gave the mean, a direction that conflicts with that row).
    One row ``g`` gives ``(1 + c) g / r``, as the formula does (``g₀ = g_w = g``), and as m
    copies of the row do.

    The divisor ``r`` follows the authors' code (Cranial-XIX/CAGrad): ``cagrad(grads,
    alpha=0.5, rescale=1)`` in ``nyuv2/utils.py`` and ``cityscapes/utils.py`` returns
    ``g / (1 + c²)`` for ``rescale=1`` (the default there and the value its trainers pass),
    ``g`` for 0 and ``g / (1 + c)`` for 2; ``mtrl/mtrl_files/cagrad.py`` divides by
    ``1 + c²`` and ``toy.py`` by ``1 + c``. The default here is the code's default, 1. That
    code then multiplies by the number of tasks "to match the sum loss"; fedmtl's weights are
    relative to the mean, so that factor is left out. ``rescale = 0`` gives torchjd's weights
    exactly. ``c = 0`` is gradient descent on the mean for every ``rescale``. The authors' code
    uses c = 0.4 (NYUv2, Cityscapes) and 0.5 (the toy); 0.4 here.
    """

    class Params(NoParams):
        c: float = Field(0.4, ge=0, description="Radius of the conflict-averse ball.")
        rescale: int = Field(
            1, ge=0, le=2,
            description="Divide the direction by 1 (0), 1 + c² (1, the authors' default) or 1 + c (2), "
            "as the official code's rescale argument.",
        )

    def torchjd_weighting(self) -> Any:
        import torchjd.aggregation as tjd  # imported on use: torchjd (and cvxpy) cost ~1 s per process

        # norm_eps = 0: whether 0 is in the hull is decided in from_gramian, relative to the rows
        return tjd.CAGradWeighting(c=self.params.c, norm_eps=0.0)

    def divisor(self) -> float:
        """``r`` of the class docstring (``rescale``)."""
        return RESCALE[self.params.rescale](self.params.c)

    def compute(self, objectives: Objectives) -> Weights:
        if len(objectives) == 1:
            return Weights(torch.full((1,), (1.0 + self.params.c) / self.divisor(), dtype=torch.float64))
        return super().compute(objectives)

    def from_gramian(self, gramian: torch.Tensor) -> torch.Tensor:
        m = len(gramian)
        weights = super().from_gramian(gramian).to(torch.float64)  # 1/m + (c‖g₀‖/‖g_w‖) w
        if self.params.c > 0 and worst_direction_vanishes(gramian, weights - 1.0 / m):
            weights = torch.zeros(m, dtype=torch.float64) if self.params.c >= 1 else torch.full((m,), 1.0 / m)
        return weights / self.divisor()


def worst_direction_vanishes(gramian: torch.Tensor, correction: torch.Tensor) -> bool:
    """Whether ``g_w = Σ w_i g_i`` is zero to the solver's accuracy, with ``w`` the correction's
    weights normalised to the simplex: the rows it combines cancel (``‖g_w‖ ≤ ZERO_WORST ·
    Σ w_i ‖g_i‖``), or it is below the solver's resolution (``‖g_w‖ ≤ RESOLUTION · max_i ‖g_i‖``,
    e.g. all its weight on a zero row). A short row's ``g_w`` is short, and not zero."""
    if not bool(torch.isfinite(correction).all()) or float(correction.sum()) <= 0:
        return True  # ‖g_w‖ = 0 exactly: torchjd divided by it
    w = correction / correction.sum()
    lengths = gramian.diagonal().clamp_min(0).sqrt()
    size = max(float(w @ gramian @ w), 0.0) ** 0.5
    return size <= ZERO_WORST * float(w @ lengths) or size <= RESOLUTION * float(lengths.max())
