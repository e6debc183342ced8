"""``geometric-mean``: descend the geometric mean of the losses (GLS)."""

from __future__ import annotations

import torch

from fedmtl.aggregation.losses import EPS, losses_of
from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.registry import register
from fedmtl.aggregation.rule import Weighting


@register("geometric-mean")
class GeometricMean(Weighting):
    """Geometric loss strategy (GLS): descend ``(Π_i L_i)^(1/T)``, i.e. ``w_i = (Π_j L_j)^(1/T) / (T L_i)``.

    Chennupati, Sistu, Yogamani & Rawashdeh, "MultiNet++: Multi-Stream Feature Aggregation
    and Geometric Loss Strategy for Multi-Task Learning", CVPR Workshops 2019. The gradient of
    the geometric mean ``G = (Π L_j)^(1/T)`` is ``Σ_i (G / (T L_i)) ∇L_i``: these weights,
    without rescaling, are already on the scale of ``mean`` (equal losses give ``1/T``
    each; in general they sum to ``G / H ≥ 1``, H the harmonic mean of the losses). The
    authors released no code; LibMTL's ``LibMTL/weighting/GLS.py`` and torchjd 0.18's
    ``torchjd.scalarization.GeometricMean`` descend the same objective. Computed as
    ``exp(mean_j log L_j − log L_i) / T`` with ``L`` floored at 1e-8. Stateless.
    """

    needs_losses = True

    def compute(self, objectives: Objectives) -> torch.Tensor:
        logs = losses_of(objectives, self.name, EPS).log()
        return torch.exp(logs.mean() - logs) / len(logs)
