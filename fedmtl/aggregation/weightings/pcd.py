"""``pcd``: priority-constrained descent, the primary gradient with a guaranteed share for the others."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import Field

from fedmtl.aggregation.info import SolveInfo
from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.registry import register
from fedmtl.aggregation.rule import NoParams, RuleContext, Weighting, Weights

PRECISION = 10.0 * torch.finfo(torch.float64).eps
"""Relative precision of the float64 Gramian: a direction below it is zero (as torchjd)."""


def solve_pcd(gramian: np.ndarray, tau: float) -> tuple[np.ndarray, SolveInfo]:
    """The weights ``[1, μ_2, …, μ_m]`` of ``d = g_1 + Σ_j μ_j g_j`` solving

        min_d ½ ‖d − g_1‖²   s.t.   g_jᵀ d ≥ τ ‖g_j‖²   (j = 2, …, m)

    for the Gramian of ``g_1, …, g_m``. The rows are written in an orthonormal basis of their
    span (``G = R Rᵀ`` from the eigendecomposition), where the problem is a strictly convex
    quadratic program of the rank's size, solved exactly by quadprog's Goldfarb–Idnani dual
    active-set method; ``μ`` are its Lagrange multipliers (stationarity: ``d − g_1 = Σ μ_j g_j``).
    Zero rows' constraints (``0 ≥ 0``) are left out. Infeasible constraints (e.g. two opposite
    secondary rows) give ``[1, 0, …, 0]`` and the fallback ``"infeasible"``. The weights do not
    depend on the rows' scale (rows ``t g_i`` give ``t d`` and the same ``μ``), so the problem
    is solved on the Gramian divided by its largest diagonal entry: quadprog's tolerances are
    absolute, and took the constraints of rows of 1e-12 (entries ~1e-16) as met.
    """
    from quadprog import solve_qp

    m = len(gramian)
    weights = np.zeros(m)
    weights[0] = 1.0
    largest = float(np.max(np.diagonal(gramian))) if m else 0.0
    if largest > 0:
        gramian = gramian / largest
    values, vectors = np.linalg.eigh((gramian + gramian.T) / 2)
    keep = values > 1e-13 * max(float(values.max()), 0.0)
    if m == 1 or not keep.any():
        return weights, SolveInfo()
    coordinates = vectors[:, keep] * np.sqrt(values[keep])  # row i of G in an orthonormal basis of the span
    sq_norms = (coordinates * coordinates).sum(axis=1)
    secondary = [j for j in range(1, m) if sq_norms[j] > 0]
    if not secondary:
        return weights, SolveInfo()
    normals = np.ascontiguousarray(coordinates[secondary].T)
    try:
        _, _, _, iterations, multipliers, _ = solve_qp(
            np.eye(len(values[keep])), coordinates[0], normals, tau * sq_norms[secondary]
        )
    except ValueError:  # "constraints are inconsistent, no solution"
        return weights, SolveInfo(fallback="infeasible")
    weights[secondary] = np.clip(multipliers, 0.0, None)
    return weights, SolveInfo(iterations=int(iterations[0]))


@register("pcd")
class PCD(Weighting):
    """PCD: follow the primary gradient, guaranteeing each other objective a share τ of progress.

    Varam & AlHajri, "Not All Objectives Are Born Equal: Priority-Constrained Descent for
    Hierarchical Multi-Objective Optimization", TMLR 2026 (openreview HT01yGHLEt; arXiv
    2606.29521 as torchjd cites it, UNVERIFIED). Reference code
    ``DaraVaram/priority-constrained-descent`` ``pcd/optim.py``, ``pcd/normalize.py`` (read);
    the same rule as torchjd 0.18's ``PCDWeighting``.

    With ``g̃_i = s_i g_i``, ``s_i = 1 / √(v̂_i + ε)`` and ``v̂_i`` the bias-corrected moving
    average of ``‖g_i‖²`` (decay β, per row key, Definition 4.5):

        d̃ = argmin_d ½ ‖d − g̃_1‖²   s.t.   g̃_jᵀ d ≥ τ ‖g̃_j‖²  for every secondary j,

    and the update is ``d̃`` rescaled to ``‖g_1‖``. ``g_1 = 0`` or ``d̃ = 0`` (to rounding) gives
    0; infeasible constraints (only with m ≥ 3, e.g. two opposite secondary rows) are dropped,
    giving ``g_1`` (fallback ``"infeasible"``). The primary objective is the first row (the
    reference code's ``losses[0]``) or the row whose task is ``primary``: on a client, the first
    configured task; on the server it is meaningful only where rows are tasks. Computed on the
    raw Gramian, as the reference code: ε is in the rows' squared units.

    Defaults are the reference code's: τ = 0.02, β = 0.999, ε = 1e-8. Scale: ``‖d‖ = ‖g_1‖``
    (torchjd's and the paper's).
    """

    needs_updates = True
    state_attributes = ("averages", "steps")

    class Params(NoParams):
        tau: float = Field(
            0.02, ge=0, le=1, description="Fraction τ of normalised progress guaranteed to each secondary objective."
        )
        beta: float = Field(0.999, ge=0, lt=1, description="Decay β of the moving average of squared row norms.")
        eps: float = Field(1e-8, ge=0, description="ε added to the moving average before its inverse square root.")
        primary: str | None = Field(
            None, description="Task of the primary objective; unset: the first row (the reference code's convention)."
        )

    def __init__(self, context: RuleContext | None = None, **params: Any) -> None:
        super().__init__(context, **params)
        self.averages: dict[str, float] = {}
        self.steps: dict[str, int] = {}

    def primary_index(self, objectives: Objectives) -> int:
        """Row of the primary objective."""
        if self.params.primary is None:
            return 0
        rows = [i for i, task in enumerate(objectives.task_ids) if task == self.params.primary]
        if len(rows) != 1:
            raise ValueError(
                f"rule 'pcd': primary = {self.params.primary!r} must be the task of exactly one row; "
                f"the rows' tasks: {objectives.task_ids}"
            )
        return rows[0]

    def scales(self, keys: list[str], sq_norms: list[float]) -> np.ndarray:
        """Update each key's moving average with its squared norm and return ``s_i``."""
        beta, eps = self.params.beta, self.params.eps
        scales = np.zeros(len(keys))
        for i, (key, sq) in enumerate(zip(keys, sq_norms, strict=True)):
            average = beta * self.averages.get(key, 0.0) + (1.0 - beta) * sq
            step = self.steps.get(key, 0) + 1
            self.averages[key], self.steps[key] = average, step
            denominator = np.sqrt(average / (1.0 - beta**step) + eps)
            scales[i] = 1.0 / denominator if denominator > 0 else 0.0  # always-zero rows: scale irrelevant
        return scales

    def compute(self, objectives: Objectives) -> Weights:
        m = len(objectives)
        gramian = objectives.gramian.numpy()
        if not np.isfinite(gramian).all():
            return Weights(torch.full((m,), 1.0 / m, dtype=torch.float64), SolveInfo(fallback="non-finite"))
        first = self.primary_index(objectives)
        order = [first] + [i for i in range(m) if i != first]
        a = gramian[np.ix_(order, order)]
        sq_norms = np.diagonal(a)
        scales = self.scales([objectives.keys()[i] for i in order], sq_norms.tolist())
        weights = np.zeros(m)
        info = SolveInfo()
        if sq_norms[0] > 0:
            normalised = a * np.outer(scales, scales)
            w, info = solve_pcd(normalised, self.params.tau)
            sq_direction = float(w @ normalised @ w)
            magnitude = float(np.abs(w) @ np.sqrt(np.clip(np.diagonal(normalised), 0, None))) ** 2
            if sq_direction > PRECISION * magnitude:
                weights[order] = w * scales * np.sqrt(sq_norms[0] / sq_direction)
        return Weights(torch.from_numpy(weights), info)
