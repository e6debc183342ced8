"""``afl``: agnostic federated learning."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from fedmtl.aggregation.info import SolveInfo
from fedmtl.aggregation.losses import losses_of
from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.registry import register
from fedmtl.aggregation.rule import NoParams, RuleContext, Weighting, Weights
from fedmtl.aggregation.solvers.simplex import project_simplex


@register("afl")
class AFL(Weighting):
    """Agnostic federated learning: ``min_w max_{λ∈Δ} Σ_k λ_k F_k``.

    Mohri, Sivek & Suresh, "Agnostic Federated Learning", ICML 2019 (arXiv 1902.00146). The
    sampled clients' updates get weights ``λ_k / Σ_{j∈S} λ_j``; then
    ``λ ← Proj_Δ(λ + γ_λ F)`` with the sampled clients' pre-training losses (a client seen
    for the first time enters with the mean of the known λ; when the projection has left every
    sampled client at λ = 0, their weights are equal, reported as fallback ``zero-lambda``).
    λ is the weighting's state. The
    order (weights from λ before its ascent step) is that of litian96/fair_flearn
    ``flearn/trainers/afl.py``, γ_λ = 0.1 that of huawei-noah/Federated-Learning
    ``FairFL/algs/run.py`` (whose ``AFL.aggregate`` ascends λ first, then weighs).

    Which model is the output: the paper's algorithm (stochastic mirror descent for the
    minimax problem) returns the running mean of the iterates ``w̄_T = (1/T) Σ_t w_t``, and
    fair_flearn's ``afl.py`` evaluates exactly that (``resulting_model = (resulting_model * i
    + latest_model) / (i + 1)``) while training continues from the last iterate. A rule only
    forms each round's update, so this one cannot average models: **fedmtl trains and
    evaluates the last iterate** ``w_T``, as FairFL's ``AFL`` (huawei-noah/Federated-Learning
    ``FairFL/algs/algorithms.py``, which keeps no average) does. Results are therefore those
    of the last iterate, not of the averaged model the paper's guarantee is about.
    """
    state_attributes = ("lam",)

    scope = "server"
    needs_losses = True

    class Params(NoParams):
        lr_lambda: float = Field(0.1, gt=0, description="Step size γ_λ of the λ ascent.")

    def __init__(self, context: RuleContext | None = None, **params: Any) -> None:
        super().__init__(context, **params)
        self.lam: dict[str, float] = {}

    def compute(self, objectives: Objectives) -> Weights:
        keys = objectives.keys()
        losses = losses_of(objectives, self.name)
        fill = sum(self.lam.values()) / len(self.lam) if self.lam else 1.0
        for key in keys:
            self.lam.setdefault(key, fill)
        present = torch.tensor([self.lam[k] for k in keys], dtype=torch.float64)
        info = SolveInfo()
        if float(present.sum()) > 0:
            weights = present / present.sum()
        else:  # λ went to clients not sampled now (the simplex projection zeroes entries): no λ to weigh by
            weights, info = torch.full_like(present, 1.0 / len(present)), SolveInfo(fallback="zero-lambda")
        names = list(self.lam)
        vector = torch.tensor([self.lam[k] for k in names], dtype=torch.float64)
        vector = vector / vector.sum()
        index = {k: i for i, k in enumerate(names)}
        for key, loss in zip(keys, losses.tolist(), strict=True):
            vector[index[key]] += self.params.lr_lambda * loss
        self.lam = dict(zip(names, project_simplex(vector).tolist(), strict=True))
        return Weights(weights, info)
