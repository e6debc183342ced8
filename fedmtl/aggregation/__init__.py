"""Aggregation: map a batch of objectives to a combined update.

The one abstraction of fedmtl (see DESIGN.md). An :class:`Objectives` batch carries update
rows and their Gramian, losses before training, example counts and ids. Two kinds of rule map
it to an update, as in torchjd:

- a :class:`Weighting` returns weights ``w`` and the update is ``Σ_i w_i u_i``
  (``weightings/``, one rule per file);
- an :class:`Aggregator` returns a direction that is not a weighted sum of the rows
  (``aggregators/``, one rule per file).

Both return how the call went (:class:`SolveInfo`) with their result. The same rules run on a
client across its tasks and on the server across clients (``scope`` says where each may run).
Shared numerics live in ``solvers/``; the properties each rule guarantees in
:mod:`fedmtl.aggregation.properties`.
"""

from fedmtl.aggregation import aggregators, weightings  # noqa: F401  (importing registers the rules)
from fedmtl.aggregation.info import SolveInfo
from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.registry import (
    RULES,
    WEIGHTINGS,
    describe_params,
    make_rule,
    make_weighting,
    register,
)
from fedmtl.aggregation.rule import (
    Aggregate,
    Aggregator,
    Combined,
    NoParams,
    Rule,
    RuleContext,
    Weighting,
    WeightingParamsError,
    Weights,
    validate_params,
)
from fedmtl.aggregation.solvers import solve_alpha_fair

__all__ = [
    "RULES",
    "WEIGHTINGS",
    "Aggregate",
    "Aggregator",
    "Combined",
    "NoParams",
    "Objectives",
    "Rule",
    "RuleContext",
    "SolveInfo",
    "Weighting",
    "WeightingParamsError",
    "Weights",
    "combine",
    "describe_params",
    "make_rule",
    "make_weighting",
    "register",
    "solve_alpha_fair",
    "validate_params",
]


def combine(objectives: Objectives, rule: Rule) -> tuple:
    """``(Σ_i w_i u_i, w)`` for a weighting's rows (historical helper; see :meth:`Rule.combine`).

    Raises
    ------
    TypeError
        When ``rule`` is an aggregator (it has no weights).
    """
    if not isinstance(rule, Weighting):
        raise TypeError(f"rule '{rule.name}' is an aggregator, not a weighted sum of rows: use rule.combine()")
    result = rule.combine(objectives)
    return result.direction, result.weights
