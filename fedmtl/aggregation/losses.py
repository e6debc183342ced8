"""Reading each objective's loss, for the rules that weight by losses."""

from __future__ import annotations

import torch

from fedmtl.aggregation.objectives import Objectives

EPS = 1e-8
"""Floor of a loss before it is divided by or logged (as DB-MTL's and FAMO's code add 1e-8)."""


def losses_of(objectives: Objectives, rule: str, floor: float | None = None) -> torch.Tensor:
    """The batch's losses (float64, CPU), raised to ``floor`` if given.

    Raises
    ------
    ValueError
        Naming the rule, when the batch carries no losses.
    """
    if objectives.losses is None:
        raise ValueError(f"rule '{rule}' needs each objective's loss (before local training on the server)")
    losses = objectives.losses.to(torch.float64)
    return losses if floor is None else losses.clamp_min(floor)
