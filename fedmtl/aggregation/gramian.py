"""The base of weightings computed from the Gramian ``A = G Gᵀ`` of the rows.

Rules see the trace-normalised Gramian ``A / (tr A / m)``: every rule built on it gives the
same weights for ``A`` and ``sA`` (``s > 0``), and solvers are better conditioned. Rules that
torchjd 0.18 implements call torchjd's ``Weighting`` on it (:class:`TorchjdWeighting`).
"""

from __future__ import annotations

from typing import Any

import torch

from fedmtl.aggregation.info import SolveInfo
from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.rule import Weighting, Weights


class GramianWeighting(Weighting):
    """Weights from the trace-normalised Gramian; one row gets weight 1, zero rows the mean
    (reported as ``zero-gramian``), non-finite weights the mean (reported as ``non-finite``).
    Rows of any finite scale, however large or small, get the weights they get at scale 1
    (:meth:`~fedmtl.aggregation.Objectives.normalised_gramian`)."""

    needs_updates = True

    def from_gramian(self, gramian: torch.Tensor) -> torch.Tensor | Weights:
        """Weights for a trace-normalised, nonzero Gramian (float64, CPU)."""
        raise NotImplementedError

    def compute(self, objectives: Objectives) -> Weights:
        m = len(objectives)
        gramian, scale = objectives.normalised_gramian()
        if m == 1:
            return Weights(torch.ones(1, dtype=torch.float64))
        if scale == 0.0:  # every row zero (rows of any other finite scale are normalised)
            return Weights(torch.full((m,), 1.0 / m, dtype=torch.float64), SolveInfo(fallback="zero-gramian"))
        result = self.from_gramian(gramian)
        if not isinstance(result, Weights):
            result = Weights(result)
        weights = result.weights.to(torch.float64)
        if not torch.isfinite(weights).all():
            return Weights(torch.full((m,), 1.0 / m, dtype=torch.float64), SolveInfo(fallback="non-finite"))
        return Weights(weights, result.info)


class TorchjdWeighting(GramianWeighting):
    """A Gramian weighting computed by torchjd 0.18 (:meth:`torchjd_weighting` builds it)."""

    def torchjd_weighting(self) -> Any:
        """The torchjd ``Weighting`` instance with this rule's parameters."""
        raise NotImplementedError

    def from_gramian(self, gramian: torch.Tensor) -> torch.Tensor:
        return self.torchjd_weighting()(gramian)
