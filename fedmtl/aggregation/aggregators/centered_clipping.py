"""``centered-clipping``: average the updates' differences from the last aggregate, each clipped."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from fedmtl.aggregation.info import SolveInfo
from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.registry import register
from fedmtl.aggregation.rule import Aggregate, Aggregator, NoParams, RuleContext


@register("centered-clipping")
class CenteredClipping(Aggregator):
    """Centered clipping: ``v ← v + (1/m) Σ_k clip_τ(u_k − v)``, L times, from the previous round's aggregate.

    Karimireddy, He & Jaggi, "Learning from History for Byzantine Robust Optimization",
    ICML 2021 (arXiv 2012.10333), equation (CC); official code
    epfml/byzantine-robust-optimizer, ``codes/aggregator/clipping.py`` (``Clipping``), with
    the defaults of its main experiments (``momentum-robustness/cifar10-all.py``:
    ``Clipping(tau=100, n_iter=1)``; also LPD-EPFL/byzfl's ``CenteredClipping``):
    ``clip_τ(x) = x · min(1, τ / ‖x‖)``, ``τ = 100``, ``L = 1`` iteration, ``v`` starting
    at zero in the first round and at the previous round's output afterwards. In the paper
    the rows are the workers' momenta; here they are whatever the server combines (client
    updates), so ``τ`` is in the rows' units.

    An aggregator, not a weighting: after one iteration
    ``v' = (1 − c̄) v + (1/m) Σ_k c_k u_k`` with ``c_k = min(1, τ / ‖u_k − v‖)`` and
    ``c̄ = mean c_k``, so the direction carries ``(1 − c̄)`` of the previous aggregate,
    which belongs to no row of this round (with ``v = 0``, in the first round, it is the
    weighted sum ``(1/m) Σ c_k u_k``).

    The previous aggregate is kept per group of rows, so that a plan calling the rule once
    per group resumes each group from its own history: per task when every row has the
    same task (the per-task groups of ``tasks-then-clients``), per client when the rows are
    the tasks of one client (``clients-then-tasks``), else one for the whole batch. A stored
    aggregate of another shape is discarded (start from zero).
    """

    scope = "server"
    state_attributes = ("centers",)

    class Params(NoParams):
        tau: float = Field(100.0, gt=0, description="Clipping radius τ, in the rows' units.")
        iterations: int = Field(1, ge=1, description="Clipping iterations L per call.")

    def __init__(self, context: RuleContext | None = None, **params: Any) -> None:
        super().__init__(context, **params)
        self.centers: dict[str, torch.Tensor] = {}

    def compute(self, objectives: Objectives) -> Aggregate:
        rows = self._rows(objectives)
        key = group_key(objectives)
        center = self.centers.get(key)
        if center is None or center.shape != rows.shape[1:]:
            center = torch.zeros_like(rows[0])
        center = center.to(rows)
        for _ in range(self.params.iterations):
            differences = rows - center
            norms = differences.norm(dim=1)
            scale = torch.where(norms > self.params.tau, self.params.tau / norms.clamp_min(1e-300), 1.0)
            center = center + (scale[:, None] * differences).mean(dim=0)
        self.centers[key] = center.detach().clone()
        return Aggregate(center, SolveInfo(iterations=self.params.iterations))


def group_key(objectives: Objectives) -> str:
    """``task:<t>`` when every row has task t, ``client:<c>`` when the rows are tasks of
    client c, else ``all``."""
    tasks, clients = set(objectives.task_ids), set(objectives.client_ids)
    if len(tasks) == 1:
        return f"task:{next(iter(tasks))}"
    if tasks and len(clients) == 1:
        return f"client:{next(iter(clients))}"
    return "all"
