"""``qffl``: q-fair federated learning (q-FedAvg)."""

from __future__ import annotations

import torch
from pydantic import Field

from fedmtl.aggregation.losses import losses_of
from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.registry import register
from fedmtl.aggregation.rule import NoParams, Weighting


@register("qffl")
class QFFL(Weighting):
    """q-FFL / q-FedAvg: minimise ``Σ_k p_k F_k^(q+1) / (q+1)``.

    Li, Sanjabi, Beirami & Smith, "Fair Resource Allocation in Federated Learning", ICLR
    2020 (Algorithm q-FedAvg). With ``L = 1/η`` (η the local learning rate),
    ``Δw_k = L (wᵗ − w̄_k) = −L u_k``, ``Δ_k = F_k^q Δw_k`` and
    ``h_k = q F_k^(q−1) ‖Δw_k‖² + L F_k^q``, the paper's step ``wᵗ⁺¹ = wᵗ − Σ Δ_k / Σ h_k`` is
    ``Σ_k w_k u_k`` with ``w_k = L F_k^q / Σ_j h_j``. ``F_k`` is client k's loss of ``wᵗ``
    before local training (+1e-10, as in the paper's code). q = 0 gives the plain mean.
    Use ``server.lr = 1`` for the paper's update. The paper's clients take plain SGD steps, so
    that ``L (wᵗ − w̄_k)`` is their summed gradients; with ``client.momentum = μ`` (0.5 by
    default) an update is up to ``1/(1−μ)`` times longer, which weighs the ``‖Δw_k‖²`` term of
    ``h_k`` more: set ``client.momentum = 0`` for the paper's setting.
    """

    scope = "server"
    needs_updates = True
    needs_losses = True

    class Params(NoParams):
        q: float = Field(1.0, ge=0, description="Fairness exponent q (0 = FedAvg-style mean).")
        lipschitz: float = Field(
            0.0, ge=0, description="L, the inverse step size (0 = 1 / client.lr)."
        )

    def lipschitz(self) -> float:
        """``L``: the ``lipschitz`` parameter, else ``1 / client.lr`` from the run's context."""
        if self.params.lipschitz > 0:
            return float(self.params.lipschitz)
        if self.context.client_lr:
            return 1.0 / self.context.client_lr
        raise ValueError("qffl: lipschitz is not set and the run gave no client learning rate to derive it from")

    def compute(self, objectives: Objectives) -> torch.Tensor:
        q, lip = self.params.q, self.lipschitz()
        f = losses_of(objectives, self.name) + 1e-10
        squared_norms = torch.diagonal(objectives.gramian).clamp_min(0)
        h = q * f.pow(q - 1) * lip**2 * squared_norms + lip * f.pow(q)
        return lip * f.pow(q) / h.sum()
