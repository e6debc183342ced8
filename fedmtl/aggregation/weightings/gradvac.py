"""``gradvac``: Gradient Vaccine, raising each pair's cosine similarity to an adaptive target."""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field

from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.registry import register
from fedmtl.aggregation.rule import NoParams, RuleContext, Weighting


@register("gradvac")
class GradVac(Weighting):
    """GradVac: raise each ``cos(g_i', g_j)`` to an EMA target ``φ̂_ij`` (random order), then sum.

    Wang, Tsvetkov, Firat & Cao, "Gradient Vaccine: Investigating and Improving Multi-task
    Optimization in Massively Multilingual Models", ICLR 2021, arXiv 2010.05874. No official
    code; this follows torchjd 0.18's ``GradVacWeighting`` (the ``whole_model`` granularity of
    LibMTL's ``GradVac.py``).

    For each row ``i`` (starting from ``g_i' = g_i``), the other rows ``j`` are visited in a
    random order; with ``φ = cos(g_i', g_j)`` and the target ``φ̂ = φ̂_ij``, if ``φ < φ̂``:

        g_i' ← g_i' + g_j ‖g_i'‖ (φ̂ √(1 − φ²) − φ √(1 − φ̂²)) / (‖g_j‖ √(1 − φ̂²) + ε),

    and then, for every visited pair, ``φ̂_ij ← (1 − β) φ̂_ij + β φ`` (targets start at 0, where
    GradVac is PCGrad). The update is ``Σ_i g_i'`` (the paper's sum), divided by m here (weights
    relative to ``mean``). Everything is read from the trace-normalised Gramian (``g_i'`` is a
    combination of the rows), so ε acts on unit-scale norms. The targets are kept per ordered
    pair of row keys.

    Defaults: β = 0.5 and ε = 1e-8 (torchjd; LibMTL's β is also 0.5). UNVERIFIED: whether the
    paper updates φ̂ for every visited pair (torchjd, followed here) or only when a correction
    is made (LibMTL's ``GradVac.py``); the paper's text was not available.
    """

    needs_updates = True
    deterministic = False
    state_attributes = ("targets", "generator")

    class Params(NoParams):
        beta: float = Field(0.5, ge=0, le=1, description="EMA rate β of the targets: φ̂ ← (1 − β) φ̂ + β φ.")
        eps: float = Field(1e-8, ge=0, description="ε added to the denominators (on the trace-normalised Gramian).")
        seed: int = Field(0, ge=0, description="Seed of the visiting order.")

    def __init__(self, context: RuleContext | None = None, **params: Any) -> None:
        super().__init__(context, **params)
        self.targets: dict[str, dict[str, float]] = {}
        self.generator = torch.Generator().manual_seed(self.params.seed)

    def compute(self, objectives: Objectives) -> torch.Tensor:
        keys = objectives.keys()
        m = len(keys)
        gramian, _ = objectives.normalised_gramian()  # a zero Gramian stays zero: every φ is 0
        beta, eps = self.params.beta, self.params.eps
        norms = torch.diagonal(gramian).clamp_min(0).sqrt().tolist()
        coefficients = torch.eye(m, dtype=torch.float64)  # g_i' = Σ_k coefficients[i, k] g_k
        for i in range(m):
            targets = self.targets.setdefault(keys[i], {})
            dots = gramian[i].clone()  # g_i'ᵀ g_k for every k
            others = [j for j in range(m) if j != i]
            for position in torch.randperm(m - 1, generator=self.generator).tolist():
                j = others[position]
                norm_i = math.sqrt(max(float(coefficients[i] @ dots), 0.0))
                phi = float(dots[j]) / (norm_i * norms[j] + eps)
                target = targets.get(keys[j], 0.0)
                if phi < target:
                    sin_phi = math.sqrt(max(1.0 - phi * phi, 0.0))
                    sin_target = math.sqrt(max(1.0 - target * target, 0.0))
                    step = norm_i * (target * sin_phi - phi * sin_target) / (norms[j] * sin_target + eps)
                    coefficients[i, j] += step
                    dots += step * gramian[j]
                targets[keys[j]] = (1.0 - beta) * target + beta * phi
        return coefficients.sum(dim=0) / m
