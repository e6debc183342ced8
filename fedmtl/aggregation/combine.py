"""Combining update rows with a weighting: ``(Σ_i w_i u_i, w)`` for weighted-sum rules."""

from __future__ import annotations

import torch

from fedmtl.aggregation.base import Weighting
from fedmtl.aggregation.objectives import Objectives


def combine(objectives: Objectives, weighting: Weighting) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(Σ_i w_i u_i, w)`` for the batch's update rows.

    Parameters
    ----------
    objectives : Objectives
        Must carry ``updates``.
    weighting : Weighting
        Maps the batch to weights.
    """
    direction, weights = weighting.aggregate(objectives)
    if weights is None:
        raise ValueError(f"weighting '{weighting.name}' is not a weighted sum of rows; use aggregate()")
    return direction, weights
