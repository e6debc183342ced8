"""``fedmgda+``: ε-bounded MGDA on normalised client updates."""

from __future__ import annotations

import math

import torch
from pydantic import Field

from fedmtl.aggregation.info import SolveInfo
from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.registry import register
from fedmtl.aggregation.rule import NoParams, Weighting, Weights
from fedmtl.aggregation.solvers.simplex import project_simplex_box

TOLERANCE = 1e-12
"""Converged when an iteration moves no λ_k by more than this."""


@register("fedmgda+")
class FedMGDAPlus(Weighting):
    """FedMGDA+: ε-bounded MGDA on normalised client updates.

    Hu, Shaloudegi, Zhang & Yu, "FedMGDA+: Federated Learning meets Multi-objective
    Optimization", IEEE TNSE 2022. ``ĝ_k = u_k / ‖u_k‖``;
    ``λ = argmin ‖Σ λ_k ĝ_k‖²`` over the simplex with ``|λ_k − n_k/n| ≤ ε`` (projected
    gradient, accelerated (FISTA with restarts), with an exact simplex-box projection, step
    ``1/λ_max`` of the cosine matrix);
    the step is ``Σ λ_k ĝ_k``, i.e. ``w_k = λ_k / ‖u_k‖`` (the server learning rate is the
    step length). The solve stops when an iteration moves no ``λ_k`` by more than 1e-12;
    when ``iterations`` run out first, the last λ is used and ``SolveInfo`` says so
    (``fallback = "not-converged"``, the iterations, and ``residual`` = the last move
    ``max_k |λ_k⁺ − y_k|`` from the extrapolated point, the projected-gradient fixed-point
    residual times the step).
    """

    scope = "server"
    needs_updates = True

    class Params(NoParams):
        epsilon: float = Field(0.1, ge=0, le=1, description="Max deviation ε from n_k/n.")
        iterations: int = Field(5000, ge=1, description="Accelerated projected-gradient iterations at most.")

    def compute(self, objectives: Objectives) -> Weights:
        m = len(objectives)
        a = objectives.gramian
        norms = torch.diagonal(a).clamp_min(0).sqrt()
        alive = norms > 0
        if objectives.num_examples is not None:
            prior = objectives.num_examples.to(torch.float64)
            prior = prior / prior.sum() if prior.sum() > 0 else torch.full((m,), 1.0 / m, dtype=torch.float64)
        else:
            prior = torch.full((m,), 1.0 / m, dtype=torch.float64)
        inv = torch.where(alive, 1.0 / norms.clamp_min(1e-300), torch.zeros_like(norms))
        cosine = a * inv[:, None] * inv[None, :]
        lower = (prior - self.params.epsilon).clamp_min(0)
        upper = (prior + self.params.epsilon).clamp_max(1)
        lam, iterations, move = _accelerated_projected_gradient(cosine, project_simplex_box(prior, lower, upper),
                                                                lower, upper, self.params.iterations)
        if move < TOLERANCE:
            return Weights(lam * inv, SolveInfo(iterations=iterations, residual=move))
        return Weights(lam * inv, SolveInfo(iterations=iterations, residual=move, fallback="not-converged"))


def _accelerated_projected_gradient(
    c: torch.Tensor, start: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, iterations: int
) -> tuple[torch.Tensor, int, float]:
    """``argmin λᵀCλ`` over the simplex within ``[lower, upper]``: FISTA (Beck & Teboulle, SIAM
    J. Imaging Sci. 2009) with step ``1/λ_max(C)`` and the gradient restart of O'Donoghue &
    Candès (Found. Comput. Math. 2015), which keeps its O(1/k²) rate from being spoilt by
    momentum carried past the minimum.

    Returns ``(λ, iterations, move)``: ``move = max_k |λ_k − y_k|``, the projected-gradient
    step from the extrapolated point ``y`` (0 exactly at a minimiser, where ``λ = y``); the
    solve stops when it is below :data:`TOLERANCE`.
    """
    step = 1.0 / max(float(torch.linalg.eigvalsh(c).max()), 1e-12)
    lam, y, t, move = start, start, 1.0, math.inf
    for iteration in range(1, iterations + 1):
        new = project_simplex_box(y - step * (c @ y), lower, upper)
        move = float((new - y).abs().max())
        if move < TOLERANCE:
            return new, iteration, move
        if float((y - new) @ (new - lam)) > 0:  # the momentum points uphill: restart it
            t, y = 1.0, new
        else:
            t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
            y, t = new + ((t - 1) / t_next) * (new - lam), t_next
        lam = new
    return lam, iterations, move
