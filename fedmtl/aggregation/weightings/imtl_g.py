"""``imtl-g``: the direction with equal projections on every unit row."""

from __future__ import annotations

from typing import Any

from fedmtl.aggregation.gramian import TorchjdWeighting
from fedmtl.aggregation.registry import register


@register("imtl-g")
class IMTLG(TorchjdWeighting):
    """IMTL-G: the direction with equal projections on every unit gradient ``g_i/‖g_i‖``.

    Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021. torchjd 0.18's
    ``IMTLGWeighting``: ``v = A⁺ (‖g_i‖)_i``, ``w = v / Σv``, and zero weights where
    ``|Σv| < 1e-12``, where the weights cannot be normalised (e.g. rows ``e, e, −√2 e``: the
    only direction in their span with equal projections on the unit rows is 0). The
    direction is then 0, and stays 0 (the weights keep torchjd's scale; they are not
    rescaled to sum to one, which turned this case into the mean before). Through the
    pseudo-inverse the projections stay equal to rounding while the rows' norms differ by up
    to about 1e4, not beyond: three independent rows of norms 1e8, 1 and 1e-8 get
    projections 2.98, 2.98 and 1.08 (torchjd's weights, unchanged here).
    """

    nonnegative = False

    def torchjd_weighting(self) -> Any:
        import torchjd.aggregation as tjd  # imported on use: torchjd (and cvxpy) cost ~1 s per process

        return tjd.IMTLGWeighting()
