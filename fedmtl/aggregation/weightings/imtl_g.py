"""``imtl-g``: the direction with equal projections on every unit row."""

from __future__ import annotations

from typing import Any

import torchjd.aggregation as tjd

from fedmtl.aggregation.gramian import TorchjdWeighting
from fedmtl.aggregation.registry import register


@register("imtl-g")
class IMTLG(TorchjdWeighting):
    """IMTL-G: the direction with equal projections on every unit gradient ``g_i/‖g_i‖``.

    Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021. torchjd's
    ``IMTLGWeighting`` (zero weights where the weights would sum to about 0).
    """

    nonnegative = False

    def torchjd_weighting(self) -> Any:
        return tjd.IMTLGWeighting()
