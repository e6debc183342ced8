"""Combining update rows with weights, and the server's update step."""

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
    if objectives.updates is None:
        raise ValueError("combine needs update rows")
    weights = weighting(objectives)
    direction = weights.to(objectives.updates.dtype) @ objectives.updates
    return direction, weights
