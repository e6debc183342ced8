"""``config``: ConFIG, the direction with equal cosine to every row, at their projected length."""

from __future__ import annotations

import math

import torch

from fedmtl.aggregation.info import SolveInfo
from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.registry import register
from fedmtl.aggregation.rule import Aggregate, Aggregator

VANISHING = 1e-10
"""``‖U x‖ / √m`` below this is rounding noise: the rows' units admit no common direction."""


@register("config")
class ConFIG(Aggregator):
    """ConFIG: the unit direction with equal cosine to every row, scaled by the rows' projections.

    Liu, Chu & Thuerey, "ConFIG: Towards Conflict-free Training of Physics Informed Neural
    Networks", ICLR 2025, arXiv 2408.11104. Official code ``tum-pbs/ConFIG``
    ``conflictfree/grad_operator.py`` (``ConFIG_update``) and ``length_model.py``
    (``ProjectionLength``), read; torchjd 0.18's ``ConFIG`` is the same rule.

    With ``U`` the matrix of unit rows ``g_i / ‖g_i‖`` (zero rows stay zero), equation 2:

        u = x / ‖x‖,  x = U⁺ 1,        d = (1/m) Σ_i (g_iᵀ u) u.

    When the units are linearly independent, ``U x = 1``: ``u`` has the same positive cosine
    with every row (the paper's conflict-free direction). The paper and its code sum the
    projections; fedmtl divides by m (relative to ``mean``). When ``U x`` vanishes to rounding
    (e.g. two opposite rows) the direction is 0 (fallback ``"no-common-direction"``) rather
    than a unit vector of rounding noise.

    Defaults of the official code: equal weights (``EqualWeight``), ``ProjectionLength``, and a
    least-squares solve (``torch.linalg.lstsq``); the pseudo-inverse used here (as torchjd)
    gives the same minimum-norm ``x``. For two rows the official operator uses a closed form
    (``ConFIG_update_double``) that gives the same direction. Each row's part is its
    projection ``(g_iᵀ u) u / m``: the parts sum to the direction (the paper's length is the
    sum of these projections).
    """

    per_row = True
    claims = ("linear-under-scaling",)

    def compute(self, objectives: Objectives) -> Aggregate:
        rows = self._rows(objectives)
        g = rows.detach().to(torch.float64)
        m = len(g)
        norms = g.norm(dim=1, keepdim=True)
        units = torch.where(norms > 0, g / torch.where(norms > 0, norms, 1.0), 0.0)
        x = torch.linalg.pinv(units) @ torch.ones(m, dtype=torch.float64).to(g)
        length = x.norm()
        if not float((units @ x).norm()) > VANISHING * math.sqrt(m) or not length > 0:
            why = "no-common-direction" if bool((norms > 0).any()) else ""  # zero rows: 0 is exact
            return Aggregate.from_parts(torch.zeros_like(rows), SolveInfo(fallback=why))
        unit = x / length
        parts = (g @ unit)[:, None] * unit[None, :] / m
        return Aggregate.from_parts(parts.to(rows.dtype))
