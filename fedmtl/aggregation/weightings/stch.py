"""``stch``: smooth Tchebycheff scalarisation of log-normalised losses."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from fedmtl.aggregation.losses import EPS, losses_of
from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.registry import register
from fedmtl.aggregation.rule import NoParams, RuleContext, Weighting


@register("stch")
class STCH(Weighting):
    """STCH: smooth Tchebycheff scalarisation, ``w_i = softmax_i(log(L_i / z_i) / μ) / L_i``.

    Lin, Zhang, Yang, Liu, Wang & Zhang, "Smooth Tchebycheff Scalarization for
    Multi-Objective Optimization", ICML 2024 (arXiv 2402.19078): minimise
    ``μ log Σ_i exp(λ_i (f_i − z_i*) / μ)``, a smooth maximum of the objectives. This rule
    follows the authors' multi-task code (Xi-L/STCH, ``STCH_MTL/LibMTL/weighting/STCH.py``
    with the defaults of ``STCH_MTL/LibMTL/config.py``: ``μ = 1``, 4 warm-up epochs):

    - the objectives are log-normalised losses ``f_i = log(L_i / z_i)``, with preferences
      ``λ_i = 1``; the reference ``z_i`` is row i's mean loss over the epoch after the
      warm-up (the code's "nadir vector"), so ``z* = 0`` in log space;
    - during the warm-up, and the epoch that measures ``z``, the code descends
      ``Σ_i log L_i``: weights ``1 / (T L_i)``;
    - afterwards it descends ``T μ log Σ_i exp(f_i / μ)``, whose gradient is
      ``T Σ_i softmax_i(f / μ) ∇L_i / L_i``; divided by ``T`` (the scale of ``mean``), the
      weights are ``softmax_i(f / μ) / L_i``.

    Epochs are counted by ``end_epoch()`` (local epochs on a client, rounds on the
    server). A row seen for the first time after the warm-up has its reference measured over
    the next epoch; until every row of a call has a reference, the call uses the warm-up
    weights. The weights scale as ``1 / L``: the authors train with Adam, which undoes such
    a scale; with SGD the step grows as the losses fall. ``L`` is floored at 1e-8.
    """

    needs_losses = True
    state_attributes = ("epoch", "totals", "reference")

    class Params(NoParams):
        mu: float = Field(1.0, gt=0, description="Smoothing μ of the Tchebycheff maximum (smaller: closer to the max).")
        warmup_epochs: int = Field(
            4, ge=0, description="Epochs of warm-up (log-loss descent) before the reference losses are measured."
        )

    def __init__(self, context: RuleContext | None = None, **params: Any) -> None:
        super().__init__(context, **params)
        self.epoch = 0
        self.totals: dict[str, list[float]] = {}
        self.reference: dict[str, float] = {}

    def compute(self, objectives: Objectives) -> torch.Tensor:
        keys = objectives.keys()
        losses = losses_of(objectives, self.name, EPS)
        if self.epoch >= self.params.warmup_epochs:
            for key, loss in zip(keys, losses.tolist(), strict=True):
                if key not in self.reference:
                    total = self.totals.setdefault(key, [0.0, 0.0])
                    total[0] += loss
                    total[1] += 1
        if not all(k in self.reference for k in keys):
            return 1.0 / (len(keys) * losses)
        reference = torch.tensor([self.reference[k] for k in keys], dtype=torch.float64)
        tilted = torch.softmax((losses.log() - reference.log()) / self.params.mu, dim=0)
        return tilted / losses

    def end_epoch(self) -> None:
        for key, (total, count) in self.totals.items():
            self.reference[key] = max(total / count, EPS)
        self.totals = {}
        self.epoch += 1
