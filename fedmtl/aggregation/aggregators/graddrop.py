"""``graddrop``: gradient sign dropout, keeping one sign per coordinate at random."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.registry import register
from fedmtl.aggregation.rule import Aggregate, Aggregator, NoParams, RuleContext


@register("graddrop")
class GradDrop(Aggregator):
    """GradDrop: per coordinate keep the positive or the negative entries, by sign purity, at random.

    Chen, Ngiam, Huang, Luong, Kretzschmar, Chai & Anguelov, "Just Pick a Sign: Optimizing
    Deep Multitask Models with Gradient Sign Dropout", NeurIPS 2020, arXiv 2010.06808
    (Algorithm 1, lines 10–15). The same rule as torchjd 0.18's ``GradDrop`` with ``f`` the
    identity; no official code was checked (UNVERIFIED: the authors' defaults beyond ``f`` =
    identity and no leak, which are torchjd's).

    Per coordinate k, the sign purity ``P_k = ½ (1 + Σ_i g_ik / Σ_i |g_ik|)`` and one draw
    ``U_k ~ Uniform(0, 1)`` decide which sign survives: ``M_ik = 1[P_k > U_k] 1[g_ik > 0] +
    1[P_k < U_k] 1[g_ik < 0]``, and

        d = (1/m) Σ_i (ℓ + (1 − ℓ) M_i) ⊙ g_i.

    The paper sums the masked gradients; fedmtl divides by m (relative to ``mean``). The paper
    applies the mask to gradients at an activation layer; here, as in torchjd, it applies to
    whole parameter rows (on a client: backbone rows). Each row's part is its masked row
    ``(ℓ + (1 − ℓ) M_i) ⊙ g_i / m``: the parts sum to the direction. The draws come from the
    rule's own seeded generator (one ``U`` per call, in the rows' dtype). The draws are per
    coordinate, not per row, so for a given draw the direction does not depend on the order
    of the rows (permutation-invariant; a new draw at every call).
    """

    per_row = True
    deterministic = False
    state_attributes = ("generator",)

    class Params(NoParams):
        leak: float = Field(
            0.0, ge=0, le=1, description="Leak ℓ: the fraction of every row passed unmasked (the same for every row)."
        )
        seed: int = Field(0, ge=0, description="Seed of the uniform draws U.")

    def __init__(self, context: RuleContext | None = None, **params: Any) -> None:
        super().__init__(context, **params)
        self.generator = torch.Generator().manual_seed(self.params.seed)

    def compute(self, objectives: Objectives) -> Aggregate:
        rows = self._rows(objectives).detach()
        m = len(rows)
        total, absolute = rows.sum(dim=0), rows.abs().sum(dim=0)
        purity = 0.5 * (1.0 + torch.where(absolute > 0, total / torch.where(absolute > 0, absolute, 1.0), 0.0))
        draws = torch.rand(rows.shape[1], generator=self.generator, dtype=rows.dtype).to(rows)
        keep = ((purity > draws) & (rows > 0)) | ((purity < draws) & (rows < 0))
        leak = self.params.leak
        return Aggregate.from_parts((leak + (1.0 - leak) * keep.to(rows.dtype)) * rows / m)
