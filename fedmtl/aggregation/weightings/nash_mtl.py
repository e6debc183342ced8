"""``nash-mtl``: the Nash bargaining solution, ``(G Gᵀ w)_i = 1 / w_i``."""

from __future__ import annotations

from pydantic import Field

from fedmtl.aggregation.registry import register
from fedmtl.aggregation.rule import NoParams
from fedmtl.aggregation.weightings.fairgrad import AlphaFair


@register("nash-mtl")
class NashMTL(AlphaFair):
    """Nash-MTL: the Nash bargaining solution, ``(G Gᵀ w)_i = 1 / w_i``.

    Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022. The same condition
    as FairGrad with α = 1; solved exactly by our Newton method instead of the paper's
    sequence of convex programs.
    """

    claims = ("non-conflicting",)

    class Params(NoParams):
        warm_start: bool = Field(True, description="Start Newton from the previous weights.")

    def alpha(self) -> float:
        return 1.0
