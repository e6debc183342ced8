"""``aligned-mtl``: align the principal components of the rows."""

from __future__ import annotations

from typing import Any

from fedmtl.aggregation.gramian import TorchjdWeighting
from fedmtl.aggregation.registry import register


@register("aligned-mtl")
class AlignedMTL(TorchjdWeighting):
    """Aligned-MTL: align the gradient system's principal components (condition number 1).

    Senushkin et al., "Independent Component Alignment for Multi-Task Learning", CVPR 2023.
    torchjd's ``AlignedMTLWeighting`` (scale mode ``min``: the step is scaled by the smallest
    singular value, as in the paper; no rescaling to sum one, which divided by a sum near 0
    on nearly opposite rows).
    """

    nonnegative = False

    def torchjd_weighting(self) -> Any:
        import torchjd.aggregation as tjd  # imported on use: torchjd (and cvxpy) cost ~1 s per process

        return tjd.AlignedMTLWeighting()
