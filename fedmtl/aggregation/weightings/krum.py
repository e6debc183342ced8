"""``krum``: (Multi-)Krum selection of the most central updates."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from fedmtl.aggregation.info import SolveInfo
from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.registry import register
from fedmtl.aggregation.rule import NoParams, Weighting, Weights

Distance = Literal["squared", "euclidean"]
DISTANCE_HELP = "Krum score: sum of squared distances (the paper's) or of distances (torchjd's KrumWeighting)."


def pairwise_distances(gramian: torch.Tensor, distance: Distance) -> torch.Tensor:
    """The rows' pairwise squared (``"squared"``) or Euclidean distances, from their Gramian."""
    norms = torch.diagonal(gramian)
    squared = (norms[:, None] + norms[None, :] - 2 * gramian).clamp_min(0)
    return squared if distance == "squared" else squared.sqrt()


def krum_scores(distances: torch.Tensor, neighbours: int) -> list[float]:
    """Each row's Krum score: the sum of its ``neighbours`` smallest distances to other rows."""
    return torch.sort(distances, dim=1).values[:, 1 : neighbours + 1].sum(dim=1).tolist()  # skip the row itself


def best_scored(scores: list[float], keys: list[str], count: int = 1) -> list[int]:
    """The ``count`` rows of lowest score, ties broken by row key, not position.

    Scores equal to 12 significant digits tie (the same rows in another order may differ in
    the last bits of their distances). The rounding is relative to each score, not to a fixed
    number of decimals: one huge row scales every other score down (the Gramian is normalised
    by its mean diagonal), and an absolute rounding made them all tie, so the smallest key won,
    an outlier among them."""
    return sorted(range(len(scores)), key=lambda i: (float(f"{scores[i]:.12g}"), keys[i]))[:count]


@register("krum")
class Krum(Weighting):
    """(Multi-)Krum: average the updates closest to their ``m − f − 2`` nearest neighbours.

    Blanchard, El Mhamdi, Guerraoui & Stainer, "Machine Learning with Adversaries: Byzantine
    Tolerant Gradient Descent", NeurIPS 2017: a row's score is the sum of its *squared*
    distances to its ``m − f − 2`` nearest neighbours (the paper's ``s(i) = Σ ‖V_i − V_j‖²``,
    also Flower's ``aggregate_krum``); the ``selected`` rows of lowest score are averaged
    (Multi-Krum for more than one). ``distance = "euclidean"`` sums plain distances, as
    torchjd 0.18's ``KrumWeighting`` does (the two can pick different rows: scores of
    (0, 0), (±1, 0), (2.7, 0), (2.8, 0) with f = 1). Distances come from the Gramian; ties are
    broken by row key, not row position. With fewer than ``f + 3`` rows Krum is undefined: the
    plain mean is used and the fallback ``"too-few-rows"`` is recorded.
    """

    scope = "server"
    needs_updates = True

    class Params(NoParams):
        byzantine: int = Field(1, ge=0, description="Number f of Byzantine clients tolerated.")
        selected: int = Field(1, ge=1, description="Updates averaged (1 = Krum, >1 = Multi-Krum).")
        distance: Distance = Field("squared", description=DISTANCE_HELP)

    def compute(self, objectives: Objectives) -> torch.Tensor | Weights:
        m = len(objectives)
        f, k = self.params.byzantine, self.params.selected
        if m < f + 3:
            return Weights(torch.full((m,), 1.0 / m, dtype=torch.float64), SolveInfo(fallback="too-few-rows"))
        a, _ = objectives.normalised_gramian()
        scores = krum_scores(pairwise_distances(a, self.params.distance), m - f - 2)
        chosen = best_scored(scores, objectives.keys(), min(k, m))
        weights = torch.zeros(m, dtype=torch.float64)
        weights[chosen] = 1.0 / len(chosen)
        return weights
