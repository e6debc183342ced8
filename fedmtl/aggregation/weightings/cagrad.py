"""``cagrad``: the mean corrected towards the worst objective within a ball."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from fedmtl.aggregation.gramian import TorchjdWeighting
from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.registry import register
from fedmtl.aggregation.rule import NoParams, Weights

RESCALE = {0: lambda c: 1.0, 1: lambda c: 1.0 + c**2, 2: lambda c: 1.0 + c}
"""The official code's ``rescale`` argument: the divisor of ``g₀ + λ g_w`` for 0, 1, 2."""


@register("cagrad")
class CAGrad(TorchjdWeighting):
    """CAGrad: the mean gradient corrected towards the worst task within a ball of radius c.

    Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent for Multi-task Learning",
    NeurIPS 2021 (arXiv 2110.14048). With ``g₀`` the mean row and ``w ∈ Δ`` minimising
    ``g_wᵀg₀ + c‖g₀‖‖g_w‖``, the direction is ``d = (g₀ + (c‖g₀‖/‖g_w‖) g_w) / r``.
    ``g₀ + …`` is torchjd 0.18's ``CAGradWeighting`` (its weights are
    ``1/m + (c‖g₀‖/‖g_w‖) w``). Where ``‖g_w‖`` is below torchjd's ``norm_eps`` (1e-4 of the
    trace-normalised scale) torchjd gives zero weights, a zero direction; that happens
    whenever 0 is in (or next to) the rows' hull (a zero row, or rows g and −g), for every c.
    For c ≥ 1 that is right: d = 0 lies in the ball ``‖d − g₀‖ ≤ c‖g₀‖`` and no direction does
    better than ``min_i g_iᵀd = 0`` (the rows are Pareto-stationary; tests check that the rule
    then stops). For c < 1, d = 0 lies outside the ball: the direction is then ``g₀ / r``, the
    authors' code's, whose correction ``c‖g₀‖ g_w / (‖g_w‖ + 1e-8)`` vanishes with ``g_w``.
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

        return tjd.CAGradWeighting(c=self.params.c)

    def divisor(self) -> float:
        """``r`` of the class docstring (``rescale``)."""
        return RESCALE[self.params.rescale](self.params.c)

    def compute(self, objectives: Objectives) -> Weights:
        if len(objectives) == 1:
            return Weights(torch.full((1,), (1.0 + self.params.c) / self.divisor(), dtype=torch.float64))
        return super().compute(objectives)

    def from_gramian(self, gramian: torch.Tensor) -> torch.Tensor:
        weights = super().from_gramian(gramian)
        if self.params.c < 1 and not bool(weights.any()):  # torchjd's ‖g_w‖ < norm_eps: 0 is outside the ball
            weights = torch.full_like(weights, 1.0 / len(weights))
        return weights / self.divisor()
