"""Numerical solvers the rules share: the α-fair Newton solver, the min-norm (MGDA) quadratic
program and projections onto the simplex.

``solve_alpha_fair``, ``SolveInfo``, ``min_norm_weights`` and ``relative_residual`` are
re-exported here (their historical import path).
"""

from fedmtl.aggregation.info import SolveInfo
from fedmtl.aggregation.solvers.alpha_fair import relative_residual, solve_alpha_fair
from fedmtl.aggregation.solvers.min_norm import is_pareto_stationary, min_norm_weights

__all__ = ["SolveInfo", "is_pareto_stationary", "min_norm_weights", "relative_residual", "solve_alpha_fair"]
