"""``term``: tilted empirical risk minimisation across clients."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from fedmtl.aggregation.losses import losses_of
from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.registry import register
from fedmtl.aggregation.rule import NoParams, RuleContext, Weighting


@register("term")
class TERM(Weighting):
    """Tilted empirical risk minimisation across clients.

    Li, Beirami, Sanjabi & Smith, "Tilted Empirical Risk Minimization", ICLR 2021 (arXiv
    2007.01162). The tilted objective ``(1/t) log mean_k e^(t F_k)`` has the gradient
    ``Σ_k e^(t F_k) ∇F_k / Σ_j e^(t F_j)``: clients are weighted by ``e^(t F_k)``. ``t → 0``
    is the mean, ``t → ∞`` the worst client, ``t < 0`` down-weights outliers.

    Federated form, ``variant = "official"`` (the default): the authors' code,
    litian96/TERM ``fair_flearn/flearn/trainers/tilting.py``. With ``F_k`` the global model's
    loss on client k before training and ``e_k = e^(t (F_k − max F))``, it keeps a running
    normaliser ``ẑ`` that starts at 0 (``estimates = 0``) and each round sets
    ``ẑ ← ½ ẑ + ½ mean_k e_k``; it scales client k's update by ``e_k / (m ẑ)``
    (``weights = exp(t (losses − max_l)) / (estimates * clients_per_round)``), adds it to the
    global model and averages the m results (``aggregate``: a plain mean). The new model is
    ``w + (1/m) Σ_k e_k u_k / (m ẑ)``, so the weights are ``w_k = e_k / (m² ẑ)``. In round 1
    ``ẑ = ½ mean e``, so the weights sum to ``2/m``, and as ``ẑ`` settles they sum to about
    ``1/m``: at ``t = 0`` this is the mean update divided by m.

    ``variant = "mean"``: ``w_k = e_k / (m ẑ)`` with ``ẑ`` starting at the first round's
    ``mean e`` (fedmtl's rule before it followed the code). Kept because it is TERM's
    gradient expressed relative to ``mean`` like every other fedmtl rule: ``t = 0`` gives
    exactly the mean update (FedAvg) whatever m, and round 1 has no start-up factor 2, so a
    server learning rate tuned for ``mean`` carries over. The official variant's steps are
    1/m of that in steady state (2/m in round 1), which a server learning rate of m undoes
    only after the normaliser has settled.
    """

    state_attributes = ("z",)

    scope = "server"
    needs_losses = True

    class Params(NoParams):
        tilt: float = Field(1.0, description="Tilt t (> 0 fairness, < 0 robustness).")
        variant: Literal["official", "mean"] = Field(
            "official",
            description="official: the authors' code (ẑ from 0, weights e_k/(m² ẑ)); "
            "mean: weights e_k/(m ẑ), ẑ from the first round's mean (t = 0 is the mean).",
        )

    def __init__(self, context: RuleContext | None = None, **params: Any) -> None:
        super().__init__(context, **params)
        self.z: float | None = None

    def compute(self, objectives: Objectives) -> torch.Tensor:
        f = losses_of(objectives, self.name)
        e = torch.exp(self.params.tilt * (f - f.max()))
        mean = float(e.mean())
        m = len(f)
        if self.params.variant == "official":
            self.z = 0.5 * (self.z or 0.0) + 0.5 * mean
            return e / (m * m * self.z)
        self.z = mean if self.z is None else 0.5 * self.z + 0.5 * mean
        return e / (m * self.z)
