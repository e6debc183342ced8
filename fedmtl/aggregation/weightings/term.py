"""``term``: tilted empirical risk minimisation across clients."""

from __future__ import annotations

import math
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

    Both are computed in logs (``log e_k`` and ``log ẑ``): ``e_k`` itself overflows once
    ``|t| (max F − F_k) > 709``, as with a negative tilt over spread losses (t = −2 over losses
    400, 1 and 0.5), where the weights, ratios of ``e``, are finite; the authors' code gives
    ``nan`` there.
    """

    state_attributes = ("log_z",)

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
        self.log_z: float | None = None
        """``log ẑ``, the running normaliser in logs (``None`` before the first round)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output; a checkpoint of an older fedmtl holds ``ẑ``
        itself (``z``)."""
        if "log_z" not in state and "z" in state:
            z = state["z"]
            state = {"log_z": None if z is None else (math.log(z) if z > 0 else -math.inf)}
        super().load_state_dict(state)

    def compute(self, objectives: Objectives) -> torch.Tensor:
        """The weights ``e_k / (m² ẑ)`` (``"official"``) or ``e_k / (m ẑ)`` (``"mean"``),
        computed in logs: ``e_k`` overflows where ``|t| (max F − F_k) > 709`` (a negative tilt
        over spread losses), though the weights, ratios of ``e``, are finite."""
        f = losses_of(objectives, self.name).to(torch.float64)
        m = len(f)
        log_e = self.params.tilt * (f - f.max())  # the authors' shift: e_k = e^(t (F_k − max F))
        log_mean = float(torch.logsumexp(log_e, 0)) - math.log(m)
        if self.params.variant == "official":  # ẑ ← ½ ẑ + ½ mean e, from ẑ = 0
            self.log_z = _half_sum(self.log_z, log_mean)
            return torch.exp(log_e - self.log_z - 2 * math.log(m))
        self.log_z = log_mean if self.log_z is None else _half_sum(self.log_z, log_mean)
        return torch.exp(log_e - self.log_z - math.log(m))


def _half_sum(log_a: float | None, log_b: float) -> float:
    """``log(½ a + ½ b)`` from ``log a`` (``None``: a = 0) and ``log b``."""
    if log_a is None:
        return math.log(0.5) + log_b
    return float(torch.logaddexp(torch.tensor(log_a, dtype=torch.float64), torch.tensor(log_b, dtype=torch.float64))) \
        + math.log(0.5)
