"""``imtl-l``: impartial loss balance with learnable loss scales."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from fedmtl.aggregation.losses import EPS, losses_of
from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.registry import register
from fedmtl.aggregation.rule import NoParams, RuleContext, Weighting


@register("imtl-l")
class IMTLL(Weighting):
    """IMTL-L: learnable loss scales ``s_i``; each task minimises ``e^(s_i) L_i − s_i``.

    Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial Multi-task Learning",
    ICLR 2021 (the loss balance, eq. 6 with ``a = e``, ``b = 1``). The scaled losses are
    driven towards ``e^(s_i) L_i = 1``, the stationary point of ``e^(s_i) L_i − s_i`` in
    ``s_i``; the shared parameters descend ``Σ_i e^(s_i) L_i``.

    The paper's sum is divided by ``T`` (the scale of ``mean``): the weights are
    ``w_i = e^(s_i) / T``, so ``s = 0`` gives ``mean``. After each call ``s_i`` takes one
    SGD step on the paper's objective, ``s_i ← s_i − lr (e^(s_i) L_i − 1)``, at the ``s_i``
    the weights were computed with (the paper trains ``s`` jointly with the network). The
    authors released no code; LibMTL's ``LibMTL/weighting/IMTL.py`` (the hybrid IMTL, whose
    loss part is this rule) and torchjd 0.18's ``torchjd.scalarization.IMTLL`` start
    ``s = 0`` and train ``s`` with the model's optimizer: the default ``lr`` is fedmtl's
    default client learning rate. ``L_i`` is floored at 1e-8. One scale per row key.
    """

    scope = "client"
    needs_losses = True
    state_attributes = ("scales",)

    class Params(NoParams):
        lr: float = Field(
            0.05, gt=0, description="SGD learning rate of the loss scales s_i (the model's optimizer trains them)."
        )

    def __init__(self, context: RuleContext | None = None, **params: Any) -> None:
        super().__init__(context, **params)
        self.scales: dict[str, float] = {}

    def compute(self, objectives: Objectives) -> torch.Tensor:
        keys = objectives.keys()
        losses = losses_of(objectives, self.name, EPS)
        s = torch.tensor([self.scales.get(k, 0.0) for k in keys], dtype=torch.float64)
        weights = torch.exp(s) / len(keys)
        step = torch.exp(s) * losses - 1.0  # ∂/∂s_i of e^(s_i) L_i − s_i
        self.scales.update(zip(keys, (s - self.params.lr * step).tolist(), strict=True))
        return weights
