"""``fedmgda+``: ε-bounded MGDA on normalised client updates."""

from __future__ import annotations

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
    gradient with an exact simplex-box projection, step ``1/λ_max`` of the cosine matrix);
    the step is ``Σ λ_k ĝ_k``, i.e. ``w_k = λ_k / ‖u_k‖`` (the server learning rate is the
    step length). The solve stops when an iteration moves no ``λ_k`` by more than 1e-12;
    when ``iterations`` run out first, the last λ is used and ``SolveInfo`` says so
    (``fallback = "not-converged"``, the iterations, and ``residual`` = the last move
    ``max_k |λ_k⁺ − λ_k|``, the projected-gradient fixed-point residual times the step).
    """

    scope = "server"
    needs_updates = True

    class Params(NoParams):
        epsilon: float = Field(0.1, ge=0, le=1, description="Max deviation ε from n_k/n.")
        iterations: int = Field(500, ge=1, description="Projected-gradient iterations.")

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
        lam = project_simplex_box(prior, lower, upper)
        step = 1.0 / max(float(torch.linalg.eigvalsh(cosine).max()), 1e-12)
        move = 0.0
        for iteration in range(1, self.params.iterations + 1):
            new = project_simplex_box(lam - step * (cosine @ lam), lower, upper)
            move = float((new - lam).abs().max())
            lam = new
            if move < TOLERANCE:
                return Weights(lam * inv, SolveInfo(iterations=iteration, residual=move))
        info = SolveInfo(iterations=self.params.iterations, residual=move, fallback="not-converged")
        return Weights(lam * inv, info)
