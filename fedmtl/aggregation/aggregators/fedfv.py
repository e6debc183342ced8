"""``fedfv``: federated fair averaging by projecting conflicting client updates."""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field

from fedmtl.aggregation.info import SolveInfo
from fedmtl.aggregation.losses import losses_of
from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.registry import register
from fedmtl.aggregation.rule import Aggregate, Aggregator, NoParams, RuleContext

ZERO = 64.0
"""A direction is zero when its norm is at most ZERO·ε·Σ_i |w_i|‖u_i‖ (rounding level)."""


def exempt_count(m: int, alpha: float) -> int:
    """How many highest-loss clients keep their update: ``m − ⌈(m−1)(1−α)⌉`` for α > 0, else 0.

    The official code's ``order[math.ceil((len(order) - 1) * (1 - self.alpha)):]`` (easyFL
    ``algorithm/fedfv.py``), with the same float arithmetic: at least one client is exempt
    whenever α > 0 (the paper's text says "the αm clients with the largest losses").
    """
    if alpha <= 0 or m == 0:
        return 0
    return m - math.ceil((m - 1) * (1 - alpha))


@register("fedfv")
class FedFV(Aggregator):
    """FedFV: mitigate conflicting client updates by projection (federated fair averaging).

    Wang, Xu, Liu, Xing & Ji, "Federated Learning with Fair Averaging", IJCAI 2021 (arXiv
    2104.14937); follows the official code, WwZzz/easyFL ``algorithm/fedfv.py``
    (``Server.iterate``), step by step:

    1. Clients are ordered by pre-training loss (equal losses by row key, so that the rows'
       order does not matter; the code keeps their position). The ``m − ⌈(m−1)(1−α)⌉`` highest-loss clients
       (none for α = 0) keep their update (:func:`exempt_count`); every other update is
       projected off each original update ``u_j`` it conflicts with (``u_i'·u_j < 0``), j in
       ascending loss order (higher-loss clients last, so their conflicts are removed).
    2. ``d`` = the mean of the projected updates.
    3. History (τ > 0): each client's latest update is stored with the round it was sent in,
       *this round's included* (the code stores them before step 1). From round τ on
       (rounds counted from 0 by this rule's calls, as the code's ``if t >= self.tau``), for
       k = τ−1, …, 0: the stored updates of the clients last seen k rounds ago that conflict
       with ``d`` are summed into ``g``, and ``d`` is projected off ``g`` if ``d·g < 0``.
       With τ = 1 that is this round's original updates.
    4. ``d`` is rescaled to the norm of the plain mean of the updates.

    When ``d`` is zero to rounding (``‖d‖ ≤ 64 ε Σ_i |w_i|‖u_i‖`` with ε of the rows' dtype,
    e.g. ± parallel rows that project each other away), the direction is 0 and
    ``SolveInfo.fallback = "zero-direction"``: rescaling would blow rounding noise up to a
    full step in an arbitrary direction (the official code divides by ‖d‖ regardless).
    Defaults α = 0.1, τ = 1 are the code's. Differences from fedmtl before this version: it
    exempted ⌊αm⌋ clients (0 for m < 10 at α = 0.1) and used only the previous round's
    updates as history; neither follows a source, so neither is kept.
    """

    scope = "server"
    needs_losses = True
    state_attributes = ("history", "rounds")

    class Params(NoParams):
        alpha: float = Field(0.1, ge=0, le=1, description="Fraction α of clients exempt from projection.")
        tau: int = Field(1, ge=0, description="Rounds τ of update history used (this round's included).")

    def __init__(self, context: RuleContext | None = None, **params: Any) -> None:
        super().__init__(context, **params)
        self.history: dict[str, tuple[int, torch.Tensor]] = {}
        self.rounds = 0

    def projected_weights(self, objectives: Objectives) -> torch.Tensor:
        """The weights of the projected mean (step 1–2, before the history step)."""
        m = len(objectives)
        a = objectives.gramian
        losses, keys = losses_of(objectives, self.name).tolist(), objectives.keys()
        order = sorted(range(m), key=lambda i: (losses[i], keys[i]))  # ties by row key, not position
        count = exempt_count(m, self.params.alpha)
        exempt = set(order[m - count:]) if count else set()
        coefficients = torch.eye(m, dtype=torch.float64)
        for i in range(m):
            if i in exempt:
                continue
            for j in order:
                if j == i or a[j, j] <= 0:
                    continue
                dot = coefficients[i] @ a[:, j]
                if dot < 0:
                    coefficients[i, j] -= dot / a[j, j]
        return coefficients.sum(dim=0) / m

    def _remember(self, objectives: Objectives, updates: torch.Tensor) -> None:
        """Store each client's latest update with this round's number; forget the ones too
        old to be used again."""
        t = self.rounds
        for key, update in zip(objectives.keys(), updates, strict=True):
            self.history[key] = (t, update.detach().clone())
        self.history = {k: v for k, v in self.history.items() if v[0] > t - self.params.tau}

    def _external(self, direction: torch.Tensor) -> torch.Tensor:
        """Step 3: project off the summed conflicting stored updates, oldest round first."""
        t = self.rounds
        for k in range(self.params.tau - 1, -1, -1):
            stored = [u for r, u in self.history.values() if r == t - k and u.shape == direction.shape]
            conflicting = [u for u in stored if u @ direction < 0]
            if not conflicting:
                continue
            total = torch.stack(conflicting).sum(dim=0)
            dot, sq = direction @ total, total @ total
            if dot < 0 and sq > 0:
                direction = direction - (dot / sq) * total
        return direction

    def compute(self, objectives: Objectives) -> Aggregate:
        updates = self._rows(objectives)
        if self.params.tau > 0:
            self._remember(objectives, updates)
        weights = self.projected_weights(objectives)
        direction = weights.to(updates) @ updates
        if self.params.tau > 0 and self.rounds >= self.params.tau:
            direction = self._external(direction)
        self.rounds += 1
        norms = torch.diagonal(objectives.gramian).clamp_min(0).sqrt()
        eps = torch.finfo(updates.dtype).eps if updates.is_floating_point() else torch.finfo(torch.float64).eps
        rounding = ZERO * eps * float(weights.abs() @ norms)
        norm = float(direction.norm())
        if norm <= rounding:
            return Aggregate(torch.zeros_like(direction), SolveInfo(fallback="zero-direction"))
        target = updates.mean(dim=0).norm()
        return Aggregate(direction * (target / norm))
