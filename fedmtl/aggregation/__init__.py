"""Aggregation: map a batch of objectives to weights, and combine updates.

The one abstraction of fedmtl (see DESIGN.md): a :class:`Weighting` takes an
:class:`Objectives` batch (update rows and their Gramian, losses before training, example
counts, ids) and returns a weight vector; the combined update is ``Σ_i w_i u_i``. The same
weightings run on a client across its tasks and on the server across clients.
"""

from fedmtl.aggregation import (  # noqa: F401  (importing registers the weightings)
    basic,
    cross_client,
    gramian,
    loss_based,
    robust,
)
from fedmtl.aggregation.base import (
    WEIGHTINGS,
    Weighting,
    WeightingParamsError,
    describe_params,
    make_weighting,
)
from fedmtl.aggregation.combine import combine
from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.solvers import SolveInfo, solve_alpha_fair

__all__ = [
    "WEIGHTINGS",
    "Objectives",
    "SolveInfo",
    "Weighting",
    "WeightingParamsError",
    "combine",
    "describe_params",
    "make_weighting",
    "solve_alpha_fair",
]
