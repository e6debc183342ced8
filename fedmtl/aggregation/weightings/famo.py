"""``famo``: fast adaptive multitask optimisation."""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field

from fedmtl.aggregation.losses import EPS, losses_of
from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.registry import register
from fedmtl.aggregation.rule import NoParams, RuleContext, Weighting


@register("famo")
class FAMO(Weighting):
    """FAMO: fast adaptive multitask optimisation, balancing the rates of loss decrease.

    Liu et al., "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023. Logits ``ξ``
    give ``z = softmax(ξ)``; the step descends ``Σ z_i log L_i``, i.e. weights
    ``w_i = (z_i / L_i) / Σ_j (z_j / L_j)``. After each call, Adam updates ``ξ`` with the
    gradient ``J_softmaxᵀ (log L_prev − log L_now) + γ ξ``: the official code
    (Cranial-XIX/FAMO ``famo.py`` and ``methods/weight_methods.py``) steps
    ``torch.optim.Adam([w], lr=w_lr, weight_decay=gamma)``, whose weight decay is added to the
    gradient before the moments (not AdamW's decoupled decay); lr 0.025 and γ = 1e-5 are
    ``weight_methods.py``'s defaults (``famo.py`` alone uses γ = 0.01). The paper measures
    ``L_now`` on the same batch after the step; here it is the next call's loss (no extra
    forward pass).
    """
    state_attributes = ("logits", "moments", "previous", "steps")

    needs_losses = True

    class Params(NoParams):
        lr: float = Field(0.025, gt=0, description="Adam learning rate of the logits.")
        weight_decay: float = Field(
            1e-5, ge=0, description="Weight decay γ of the logits (added to their gradient, as in FAMO's code)."
        )

    def __init__(self, context: RuleContext | None = None, **params: Any) -> None:
        super().__init__(context, **params)
        self.logits: dict[str, float] = {}
        self.moments: dict[str, tuple[float, float]] = {}
        self.previous: dict[str, float] = {}
        self.steps = 0

    def _update_logits(self, keys: list[str], log_losses: torch.Tensor) -> None:
        if not all(k in self.previous for k in keys):
            return
        xi = torch.tensor([self.logits[k] for k in keys], dtype=torch.float64)
        z = torch.softmax(xi, dim=0)
        delta = torch.tensor([self.previous[k] for k in keys], dtype=torch.float64) - log_losses
        # J_softmax(ξ)ᵀ δ = z ⊙ (δ − zᵀδ), plus the weight decay added to the gradient (L2,
        # coupled: torch.optim.Adam(weight_decay=γ) in FAMO's code, not AdamW's decoupled decay)
        grad = z * (delta - z @ delta) + self.params.weight_decay * xi
        self.steps += 1
        b1, b2, eps = 0.9, 0.999, 1e-8
        for i, key in enumerate(keys):
            m, v = self.moments.get(key, (0.0, 0.0))
            g = float(grad[i])
            m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
            self.moments[key] = (m, v)
            m_hat, v_hat = m / (1 - b1**self.steps), v / (1 - b2**self.steps)
            self.logits[key] -= self.params.lr * m_hat / (math.sqrt(v_hat) + eps)

    def compute(self, objectives: Objectives) -> torch.Tensor:
        keys = objectives.keys()
        losses = losses_of(objectives, self.name, EPS)
        for key in keys:
            self.logits.setdefault(key, 0.0)
        self._update_logits(keys, losses.log())
        self.previous.update(zip(keys, losses.log().tolist(), strict=True))
        z = torch.softmax(torch.tensor([self.logits[k] for k in keys], dtype=torch.float64), dim=0)
        scaled = z / losses
        return scaled / scaled.sum()
