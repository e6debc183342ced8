"""``go4align``: group optimisation for multi-task alignment."""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field

from fedmtl.aggregation.losses import EPS, losses_of
from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.registry import register
from fedmtl.aggregation.rule import NoParams, RuleContext, Weighting


def kmeans_1d(values: list[float], groups: int) -> list[int]:
    """The exact k-means partition of scalars: a group index per value.

    Dynamic programming over the sorted distinct values (optimal 1-D clusters are
    contiguous), at most ``groups`` groups and never more than there are distinct values;
    equal values always share a group, and ties between partitions go to the earliest cut,
    so the result depends on the multiset of values only, not on their order.
    """
    distinct = sorted(set(values))
    count = {v: 0 for v in distinct}
    for v in values:
        count[v] += 1
    d, k = len(distinct), max(1, min(groups, len(distinct)))
    # prefix sums over blocks of equal values: number, sum, sum of squares
    n, s1, s2 = [0.0], [0.0], [0.0]
    for v in distinct:
        n.append(n[-1] + count[v])
        s1.append(s1[-1] + count[v] * v)
        s2.append(s2[-1] + count[v] * v * v)

    def cost(a: int, b: int) -> float:  # within-group sum of squares of blocks a..b-1
        size, total = n[b] - n[a], s1[b] - s1[a]
        return max(s2[b] - s2[a] - total * total / size, 0.0)

    best = [[math.inf] * (d + 1) for _ in range(k + 1)]
    cut = [[0] * (d + 1) for _ in range(k + 1)]
    best[0][0] = 0.0
    for c in range(1, k + 1):
        for b in range(c, d + 1):
            for a in range(c - 1, b):
                value = best[c - 1][a] + cost(a, b)
                if value < best[c][b]:
                    best[c][b], cut[c][b] = value, a
    group_of: dict[float, int] = {}
    b = d
    for c in range(k, 0, -1):
        a = cut[c][b]
        for v in distinct[a:b]:
            group_of[v] = c - 1
        b = a
    return [group_of[v] for v in values]


@register("go4align")
class GO4Align(Weighting):
    """GO4Align: risk-guided group indicators ``(Σ_j L_j / L_i) p_i``, averaged within k-means groups.

    Shen, Wang, Xiao, van Noord & Worring, "GO4Align: Group Optimization for Multi-Task
    Alignment", NeurIPS 2024 (arXiv 2404.06486). Follows the authors' code
    (autumn9999/GO4Align, class ``GO4ALIGN`` in ``methods/cluster_methods.py``; defaults of
    ``experiments/nyuv2/trainer.py``):

    - risk-guided probabilities ``p ← p ⊙ exp(−η L)``, renormalised to sum one (``p``
      starts uniform; ``η`` = the code's ``robust_step_size`` = 1e-4);
    - group indicators ``γ_i = (Σ_j L_j / L_i) p_i``;
    - dynamical group assignment: k-means of the scalars ``γ`` into ``num-groups`` groups;
      every task gets its group's mean ``γ``.

    The code's loss is ``Σ_i γ̄_i L_i`` (equal losses give ``γ̄_i = 1``, a sum of T); here the
    weights are ``γ̄_i / T`` (relative to ``mean``). The code's default is one group (every
    task gets ``mean_j γ_j``), the only setting the released file runs as is: for two or
    more groups it calls ``kmeans`` from ``kmeans_pytorch``, whose import is commented out
    there, and that Lloyd iteration starts from random centres. Here the groups are the
    exact 1-D k-means optimum (deterministic, ``kmeans_1d`` in this module). UNVERIFIED: the number of
    groups behind the paper's tables, and whether the paper's k-means matches
    ``kmeans_pytorch``'s. ``p`` is kept in log form per row key; a new row starts at
    ``1/m``. ``L`` is floored at 1e-8.
    """

    needs_losses = True
    state_attributes = ("log_probs",)

    class Params(NoParams):
        num_groups: int = Field(1, ge=1, description="Number of task groups of the k-means assignment.")
        step_size: float = Field(
            1e-4, ge=0, description="Step η of the risk-guided probabilities p ← p·exp(−ηL) (robust_step_size)."
        )

    def __init__(self, context: RuleContext | None = None, **params: Any) -> None:
        super().__init__(context, **params)
        self.log_probs: dict[str, float] = {}

    def compute(self, objectives: Objectives) -> torch.Tensor:
        keys = objectives.keys()
        m = len(keys)
        losses = losses_of(objectives, self.name, EPS)
        previous = torch.tensor([self.log_probs.get(k, -math.log(m)) for k in keys], dtype=torch.float64)
        log_probs = torch.log_softmax(previous - self.params.step_size * losses, dim=0)
        self.log_probs.update(zip(keys, log_probs.tolist(), strict=True))
        indicators = losses.sum() / losses * log_probs.exp()
        groups = torch.tensor(kmeans_1d(indicators.tolist(), self.params.num_groups))
        weights = torch.zeros(m, dtype=torch.float64)
        for g in groups.unique().tolist():
            members = groups == g
            weights[members] = indicators[members].mean()
        return weights / m
