"""``pcgrad``: project each row off the rows it conflicts with, in random order."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from fedmtl.aggregation.gramian import GramianWeighting
from fedmtl.aggregation.registry import register
from fedmtl.aggregation.rule import NoParams, RuleContext
from fedmtl.seeds import TORCH_RNG_LOCK


@register("pcgrad")
class PCGrad(GramianWeighting):
    """PCGrad: project each ``g_i`` off every conflicting ``g_j`` (random order), then sum.

    Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020. torchjd's
    ``PCGradWeighting`` divided by m (the paper sums the projected rows; fedmtl's weights are
    relative to the mean), with the random order drawn from this rule's own seeded generator
    (reproducible runs).
    """

    deterministic = False
    state_attributes = ("generator",)

    class Params(NoParams):
        seed: int = Field(0, ge=0, description="Seed of the projection order.")

    def __init__(self, context: RuleContext | None = None, **params: Any) -> None:
        super().__init__(context, **params)
        self.generator = torch.Generator().manual_seed(self.params.seed)

    def from_gramian(self, gramian: torch.Tensor) -> torch.Tensor:
        import torchjd.aggregation as tjd  # imported on use: torchjd (and cvxpy) cost ~1 s per process

        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        with TORCH_RNG_LOCK, torch.random.fork_rng(devices=[]):  # no other thread's draws in between
            torch.manual_seed(seed)  # a weighting's own generator: its seed parameter
            return tjd.PCGradWeighting()(gramian) / len(gramian)
