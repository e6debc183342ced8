"""``rlw``: random loss weighting."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.registry import register
from fedmtl.aggregation.rule import NoParams, RuleContext, Weighting


@register("rlw")
class RLW(Weighting):
    """Random loss weighting: ``w = softmax(ε)``, ``ε ~ N(0, I)`` drawn at every call.

    Lin et al., "Reasonable Effectiveness of Random Weighting: A Litmus Test for Multi-Task
    Learning", TMLR 2022. Drawn from the rule's own seeded generator.
    """

    deterministic = False
    state_attributes = ("generator",)

    class Params(NoParams):
        seed: int = Field(0, ge=0, description="Seed of the random weights.")

    def __init__(self, context: RuleContext | None = None, **params: Any) -> None:
        super().__init__(context, **params)
        self.generator = torch.Generator().manual_seed(self.params.seed)

    def compute(self, objectives: Objectives) -> torch.Tensor:
        eps = torch.randn(len(objectives), generator=self.generator, dtype=torch.float64)
        return torch.softmax(eps, dim=0)
