"""``fedmgda+``: ε-bounded MGDA on normalised client updates."""

from __future__ import annotations

import torch
from pydantic import Field

from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.registry import register
from fedmtl.aggregation.rule import NoParams, Weighting
from fedmtl.aggregation.solvers.simplex import project_simplex_box


@register("fedmgda+")
class FedMGDAPlus(Weighting):
    """FedMGDA+: ε-bounded MGDA on normalised client updates.

    Hu, Shaloudegi, Zhang & Yu, "FedMGDA+: Federated Learning meets Multi-objective
    Optimization", IEEE TNSE 2022. ``ĝ_k = u_k / ‖u_k‖``;
    ``λ = argmin ‖Σ λ_k ĝ_k‖²`` over the simplex with ``|λ_k − n_k/n| ≤ ε`` (projected
    gradient with an exact simplex-box projection); the step is ``Σ λ_k ĝ_k``, i.e.
    ``w_k = λ_k / ‖u_k‖`` (the server learning rate is the step length).
    """

    scope = "server"
    needs_updates = True

    class Params(NoParams):
        epsilon: float = Field(0.1, ge=0, le=1, description="Max deviation ε from n_k/n.")
        iterations: int = Field(500, ge=1, description="Projected-gradient iterations.")

    def compute(self, objectives: Objectives) -> torch.Tensor:
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
        for _ in range(self.params.iterations):
            new = project_simplex_box(lam - step * (cosine @ lam), lower, upper)
            if float((new - lam).abs().max()) < 1e-12:
                lam = new
                break
            lam = new
        return lam * inv
