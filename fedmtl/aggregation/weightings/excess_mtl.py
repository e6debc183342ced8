"""``excess-mtl``: exponentiated-gradient weights driven by each objective's excess risk."""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field

from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.registry import register
from fedmtl.aggregation.rule import NoParams, RuleContext, Weighting

RIDGE = 1e-7
"""Added under the square root of the accumulated squares and to the baseline (as the
official code's ``sqrt(grad_sum + 1e-7)``; the baseline's ``+ 1e-7`` is torchjd's)."""


@register("excess-mtl")
class ExcessMTL(Weighting):
    """ExcessMTL: weights ``w ∝ w_prev · exp(η_α Ê_i / Ê_i⁰)`` from estimated excess risks.

    He, Zhou, Zhang, Yun, Xu, Zeng, Chilimbi & Zhao, "Robust Multi-Task Learning with Excess
    Risks", ICML 2024 (PMLR 235; arXiv 2402.02009, UNVERIFIED id). Official code
    ``yifei-he/ExcessMTL`` ``LibMTL/LibMTL/weighting/ExcessMTL.py`` (read), reproduced by
    torchjd 0.18's ``ExcessMTLWeighting``.

    Each row key ``i`` accumulates the squares of its rows, ``S_i ← S_i + g_i ⊙ g_i`` (a
    diagonal, AdaGrad-style Hessian estimate, equation 7), and its excess risk is estimated
    as ``Ê_i = Σ_k g_ik² / √(S_ik + 1e-7)`` (equation 6). After ``warmup-steps`` calls the
    baseline ``Ê_i⁰`` is the mean excess risk of the warm-up calls ("scale processing",
    section 3.2), and every later call takes an exponentiated-gradient step (equation 9)
    ``w_i ← w_i exp(η_α Ê_i / (Ê_i⁰ + 1e-7)) / Σ_j (…)``; the weights start uniform and sum
    to one (the official code keeps them summing to T; relative to ``mean`` that is the same
    rule).

    Defaults are the official code's: ``η_α = 1`` (``robust_step_size``), and one warm-up
    call — the official code stores the first call's excess risks as the baseline and keeps
    the weights uniform on that call (its ``first_epoch`` flag is cleared after the first
    step). ``warmup-steps = 0`` is torchjd's default instead: the first call's raw excess
    risks (not divided by any baseline) already move the weights. The paper (appendix C.1)
    recommends three epochs of warm-up.

    The squared sums are per row and per coordinate, so the rows must be whole parameter
    vectors (on a client: backbone rows, ``client.gradients = "backbone"`` or ``"auto"``);
    the state holds one row-sized vector per row key.
    """

    needs_updates = True
    state_attributes = ("log_weights", "squared_sums", "warmup_sums", "baselines", "steps")

    class Params(NoParams):
        robust_step_size: float = Field(
            1.0, gt=0, description="Step size η_α of the exponentiated weight update (official code: 1)."
        )
        warmup_steps: int = Field(
            1,
            ge=0,
            description="Calls with uniform weights whose mean excess risk becomes the baseline (official code: 1; "
            "0: torchjd's default, the first call's raw excess risk moves the weights).",
        )

    def __init__(self, context: RuleContext | None = None, **params: Any) -> None:
        super().__init__(context, **params)
        self.log_weights: dict[str, float] = {}
        self.squared_sums: dict[str, torch.Tensor] = {}
        self.warmup_sums: dict[str, float] = {}
        self.baselines: dict[str, float] = {}
        self.steps: dict[str, int] = {}

    @classmethod
    def needs_parameter_rows(cls) -> bool:
        """The squared sums are per parameter: representation rows change meaning (and size)
        from batch to batch."""
        return True

    def excess_risk(self, key: str, row: torch.Tensor) -> float:
        """Add ``row``'s squares to the key's sum and return ``Σ_k g_k² / √(S_k + 1e-7)``."""
        squares = row.detach() * row.detach()
        total = self.squared_sums.get(key)
        total = squares.clone() if total is None or total.shape != squares.shape else total + squares
        self.squared_sums[key] = total
        return float((squares / torch.sqrt(total + RIDGE)).sum())

    def scaled_excess(self, key: str, excess: float) -> float | None:
        """The step's exponent ``Ê_i / Ê_i⁰`` for a key, or ``None`` during its warm-up."""
        warmup = self.params.warmup_steps
        step = self.steps.get(key, 0)
        self.steps[key] = step + 1
        if step < warmup:
            self.warmup_sums[key] = self.warmup_sums.get(key, 0.0) + excess
            return None
        if key not in self.baselines:
            if warmup == 0:  # torchjd's default: the first call's raw excess risk is both baseline and step
                self.baselines[key] = excess
                return excess
            self.baselines[key] = self.warmup_sums.pop(key, 0.0) / warmup
        return excess / (self.baselines[key] + RIDGE)

    def compute(self, objectives: Objectives) -> torch.Tensor:
        rows = self._rows(objectives)
        keys = objectives.keys()
        m = len(keys)
        exponents = []
        for key, row in zip(keys, rows, strict=True):
            scaled = self.scaled_excess(key, self.excess_risk(key, row))
            exponents.append(0.0 if scaled is None else scaled)
        logits = torch.tensor([self.log_weights.get(k, -math.log(m)) for k in keys], dtype=torch.float64)
        step = self.params.robust_step_size * torch.tensor(exponents, dtype=torch.float64)
        logits = torch.log_softmax(logits + step, dim=0)
        self.log_weights.update(zip(keys, logits.tolist(), strict=True))
        return logits.exp()
