"""Our α-fair solver: the weights of FairGrad (Ban & Ji, ICML 2024) and Nash-MTL (α = 1).

Given the Gramian ``A = G Gᵀ`` of ``m`` update directions, the α-fair weights are the
``w > 0`` with

    (A w)_i = w_i^(-1/α)          for every i,

so that the update ``d = Σ_i w_i g_i`` satisfies ``g_iᵀ d = w_i^(-1/α)``. α = 0 is linear
scalarisation (uniform weights), α = 1 proportional fairness (Nash-MTL's condition), α = 2
minimum potential delay, α → ∞ max-min fairness (the MGDA direction).

Method (our derivation, see DESIGN.md): the condition is ``∇F(w) = 0`` for the strictly
convex

    F(w) = ½ wᵀ A w − Σ_i φ_α(w_i),   φ_α'(w) = w^(-1/α),
    φ_α(w) = α/(α−1) · w^((α−1)/α)  (α ≠ 1),   φ_1(w) = log w,

whose Hessian ``A + diag(w^(-1-1/α)/α)`` is positive definite on ``w > 0``. We run damped
Newton steps in float64 with a fraction-to-the-boundary rule (w stays positive) and Armijo
backtracking on F, on the trace-normalised Gramian ``Ā = A / s`` (``s = tr A / m``); the
weights of ``A`` follow exactly from those of ``Ā``: ``w(sĀ) = s^(-α/(α+1)) · w(Ā)``.

A positive solution exists iff no nonnegative, nonzero ``v`` has ``Gᵀv = 0`` (0 is not in the
convex hull of the g_i, e.g. no two opposite directions). When it does not, or Newton does
not converge, we solve ``(Ā + εI) w = w^(-1/α)`` instead, which always has a solution, and
say so in :class:`~fedmtl.aggregation.info.SolveInfo` (``fallback``); callers log and count it.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fedmtl.aggregation.info import SolveInfo
from fedmtl.aggregation.solvers.min_norm import is_pareto_stationary, min_norm_weights

EPSILON = 1e-6
TOLERANCE = 1e-13
ACCEPTABLE = 1e-8
MAX_ITERATIONS = 50


def _as_numpy(gramian: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(gramian, torch.Tensor):
        gramian = gramian.detach().cpu().to(torch.float64).numpy()
    a = np.asarray(gramian, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"the Gramian must be a square matrix, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("the Gramian has NaN or infinite entries")
    return (a + a.T) / 2


def _row_error(gradient: np.ndarray, target: np.ndarray) -> float:
    """``max_i |∇F_i| / w_i^(-1/α)``: every row of the condition, relative to itself."""
    return float(np.max(np.abs(gradient) / target))


def relative_residual(a: np.ndarray, w: np.ndarray, alpha: float) -> float:
    """``max_i |(A w)_i − w_i^(-1/α)| / w_i^(-1/α)`` (the α-fair condition, row by row)."""
    target = w ** (-1.0 / alpha)
    return _row_error(a @ w - target, target)


def _phi(w: np.ndarray, alpha: float) -> float:
    if alpha == 1:
        return float(np.log(w).sum())
    return float((alpha / (alpha - 1)) * (w ** ((alpha - 1) / alpha)).sum())


def _objective(a: np.ndarray, w: np.ndarray, alpha: float) -> float:
    return 0.5 * float(w @ a @ w) - _phi(w, alpha)


def _initial(a: np.ndarray, alpha: float) -> np.ndarray:
    """``c·1`` solving the condition on average: ``c^(1+1/α) = m / 1ᵀA1``."""
    m = len(a)
    total = float(a.sum())
    c = (m / total) ** (alpha / (alpha + 1)) if total > 0 else 1.0
    return np.full(m, c)


def _gradient(a: np.ndarray, alpha: float, w: np.ndarray) -> np.ndarray:
    return a @ w - w ** (-1.0 / alpha)


def _polish(a: np.ndarray, alpha: float, w: np.ndarray) -> np.ndarray:
    """One more full Newton step near the solution, kept only if it lowers ‖∇F‖."""
    target = w ** (-1.0 / alpha)
    gradient = a @ w - target
    try:
        candidate = w - np.linalg.solve(a + np.diag(target / (alpha * w)), gradient)
    except np.linalg.LinAlgError:
        return w
    if candidate.min() > 0 and relative_residual(a, candidate, alpha) < _row_error(gradient, target):
        return candidate
    return w


def _newton(a: np.ndarray, alpha: float, start: np.ndarray) -> tuple[np.ndarray, int, bool]:
    """Damped Newton on F from ``start``; returns (w, iterations, converged)."""
    w = start.copy()
    value = _objective(a, w, alpha)
    for iteration in range(1, MAX_ITERATIONS + 1):
        target = w ** (-1.0 / alpha)
        gradient = a @ w - target
        if _row_error(gradient, target) <= TOLERANCE:
            return _polish(a, alpha, w), iteration - 1, True
        hessian = a + np.diag(target / (alpha * w))
        try:
            step = -np.linalg.solve(hessian, gradient)
        except np.linalg.LinAlgError:
            return w, iteration, False
        shrinking = step < 0
        t = min(1.0, 0.99 * float(np.min(-w[shrinking] / step[shrinking]))) if shrinking.any() else 1.0
        slope = float(gradient @ step)
        gradient_norm = float(np.linalg.norm(gradient))
        while True:
            candidate = w + t * step
            new_value = _objective(a, candidate, alpha)
            # Armijo on F; near the solution F's decrease is below round-off, so a step that
            # halves ‖∇F‖ is accepted too (quadratic convergence region)
            if new_value <= value + 1e-4 * t * slope or t < 1e-12:
                break
            if np.linalg.norm(_gradient(a, alpha, candidate)) <= 0.5 * gradient_norm:
                break
            t *= 0.5
        if t < 1e-12:  # no further decrease possible in float64
            return w, iteration, _row_error(gradient, target) <= ACCEPTABLE
        w, value = candidate, new_value
        if not np.isfinite(w).all() or w.min() <= 0:
            return w, iteration, False
    return w, MAX_ITERATIONS, relative_residual(a, w, alpha) <= ACCEPTABLE


def _max_min_weights(a: np.ndarray) -> tuple[np.ndarray, SolveInfo]:
    """α = ∞: ``w = λ / (λᵀAλ)`` with λ the min-norm point of the simplex (MGDA)."""
    lam = min_norm_weights(a)
    if is_pareto_stationary(a, lam):
        return np.full(len(a), 1.0 / len(a)), SolveInfo(fallback="pareto-stationary")
    return lam / float(lam @ a @ lam), SolveInfo()


def solve_alpha_fair(
    gramian: torch.Tensor | np.ndarray,
    alpha: float,
    warm_start: np.ndarray | None = None,
) -> tuple[np.ndarray, SolveInfo]:
    """Return the α-fair weights of a Gramian and how the solve went.

    Parameters
    ----------
    gramian : torch.Tensor or np.ndarray
        ``A = G Gᵀ`` (``m x m``, symmetric PSD); converted to float64.
    alpha : float
        α ≥ 0; ``math.inf`` for max-min fairness.
    warm_start : np.ndarray, optional
        Weights of a previous solve (e.g. last round's), on the same scale as ``gramian``.

    Returns
    -------
    weights : np.ndarray
        ``m`` positive float64 weights solving ``(A w)_i = w_i^(-1/α)`` (or the fallback).
    info : SolveInfo
        Iterations, relative residual on ``gramian``, and the fallback used, if any.

    Never raises on degenerate but finite input; raises ``ValueError`` for a non-square or
    non-finite Gramian and for α < 0.
    """
    if alpha < 0 or math.isnan(alpha):
        raise ValueError(f"alpha must be >= 0 (or inf), got {alpha}")
    a = _as_numpy(gramian)
    m = len(a)
    if alpha == 0:
        return np.full(m, 1.0 / m), SolveInfo()
    scale = float(np.trace(a)) / m
    if scale <= 0:
        return np.full(m, 1.0 / m), SolveInfo(fallback="zero-gramian")
    normalised = a / scale
    if math.isinf(alpha):
        w, info = _max_min_weights(normalised)
        return w / scale, info
    factor = scale ** (-alpha / (alpha + 1))  # w(A) = factor · w(Ā)
    start = _initial(normalised, alpha)
    if warm_start is not None and len(warm_start) == m and np.all(np.asarray(warm_start) > 0):
        candidate = np.asarray(warm_start, dtype=np.float64) / factor
        if _objective(normalised, candidate, alpha) < _objective(normalised, start, alpha):
            start = candidate
    w, iterations, converged = _newton(normalised, alpha, start)
    info = SolveInfo(iterations=iterations)
    if not converged:
        regularised = normalised + EPSILON * np.eye(m)
        w, more, _ = _newton(regularised, alpha, _initial(regularised, alpha))
        info = SolveInfo(iterations=iterations + more, fallback="regularised")
    weights = factor * w
    info.residual = relative_residual(a, weights, alpha)
    return weights, info
