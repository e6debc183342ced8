"""``rfa``: robust federated aggregation by the geometric median (smoothed Weiszfeld)."""

from __future__ import annotations

import torch
from pydantic import Field

from fedmtl.aggregation.info import SolveInfo
from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.registry import register
from fedmtl.aggregation.rule import NoParams, Weighting, Weights


@register("rfa")
class RFA(Weighting):
    """RFA: the geometric median of the updates, ``argmin_z Σ_k α_k ‖z − u_k‖``, by smoothed Weiszfeld.

    Pillutla, Kakade & Harchaoui, "Robust Aggregation for Federated Learning", IEEE
    Transactions on Signal Processing 70, 2022 (arXiv 1912.13445); official code
    krishnap25/RFA, ``models/model.py`` (``ServerModel.geometric_median_update``), whose
    defaults are used: ``α_k = n_k / Σ n`` (example counts, uniform when there are none),
    ``z`` starts at the ``α``-weighted mean, and each iteration sets
    ``β_k = α_k / max(ν, ‖z − u_k‖)`` and ``z = Σ_k β_k u_k / Σ_k β_k``, with smoothing
    ``ν = 1e-5`` (``eps``), at most 4 iterations (``--weiszfeld-maxiter 4``) and an early
    stop once the objective ``Σ_k α_k ‖z − u_k‖`` decreases by less than ``ftol = 1e-6``
    times its value. The median is a weighted sum of the rows, so this is a weighting:
    ``w = β / Σ β`` of the last iteration (``α`` after zero iterations, or when the
    objective is already 0).

    How the call went comes back in ``SolveInfo``: the iterations run, the last relative
    decrease of the objective (``residual``), and the fallback ``"not-converged"`` when the
    iteration budget ran out before the decrease fell below ``ftol``. With the authors'
    budget of 4 iterations that is common and by design (the paper reports that a few
    iterations suffice); raise ``iterations`` for the exact smoothed median. Distances are
    computed from the rows in float64. ``ν`` is an absolute distance, so rows much smaller
    than ``ν`` get the weighted mean.
    """

    scope = "server"
    needs_updates = True

    class Params(NoParams):
        nu: float = Field(1e-5, gt=0, description="Smoothing ν: distances below ν count as ν.")
        iterations: int = Field(4, ge=0, description="Most Weiszfeld iterations (the authors' default 4).")
        ftol: float = Field(1e-6, ge=0, description="Stop when the objective's relative decrease is below ftol.")

    def compute(self, objectives: Objectives) -> Weights:
        rows = self._rows(objectives).to(torch.float64)
        m = len(rows)
        counts = objectives.num_examples
        if counts is not None and float(counts.sum()) > 0:
            alpha = (counts / counts.sum()).to(rows)
        else:
            alpha = torch.full((m,), 1.0 / m, dtype=torch.float64).to(rows)
        weights = alpha
        objective = float(alpha @ (rows - alpha @ rows).norm(dim=1))
        done, residual, converged = 0, 0.0, objective == 0.0  # 0: every row is the median
        while not converged and done < self.params.iterations:
            beta = alpha / (rows - weights @ rows).norm(dim=1).clamp_min(self.params.nu)
            weights = beta / beta.sum()
            previous, objective = objective, float(alpha @ (rows - weights @ rows).norm(dim=1))
            done += 1
            residual = abs(previous - objective) / objective if objective > 0 else 0.0
            converged = residual < self.params.ftol
        fallback = "" if converged or self.params.iterations == 0 else "not-converged"
        return Weights(weights.cpu(), SolveInfo(iterations=done, residual=residual, fallback=fallback))
