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

When to stop and what to accept. On an ill-conditioned Gramian the relative residual
``|(A w)_i − w_i^(-1/α)| / w_i^(-1/α)`` cannot reach 1e-13 in float64 even at the exact
solution: ``(A w)_i`` is a sum of terms ``A_ij w_j`` far larger than the result (nearly
opposite rows), and rounding them leaves an error of order ``ε (|A| w)_i``. We therefore
measure the componentwise backward error (Oettli & Prager, Numer. Math. 1964)

    β(w) = max_i |(A w)_i − w_i^(-1/α)| / ((|A| w)_i + w_i^(-1/α)),

the smallest relative perturbation of the entries of A and of the targets of which w is the
exact solution. Newton stops when the relative residual is below 1e-13 (accepted) or β is at
rounding level (``4 (m+1) ε``). An iterate with β below ``64 (m+1) ε`` is accepted
(``fallback = ""``) when a positive solution exists (checked only then, by MGDA's min-norm
point, which is 0 iff none exists): w then solves a Gramian that differs from A by no more
than float64's rounding. Without the existence check β would mislead: on Pareto-stationary
rows Newton's iterates grow without bound and β tends to 0 along them.
``SolveInfo.residual`` is the relative residual on the caller's Gramian.

A positive solution exists iff no nonnegative, nonzero ``v`` has ``Gᵀv = 0`` (0 is not in the
convex hull of the g_i, e.g. no two opposite directions). When Newton's iterate is not
accepted we also solve ``(Ā + εI) w = w^(-1/α)``, which always has a solution, and:

- if 0 is in the convex hull (MGDA's min-norm point is 0: no positive solution exists), return
  the regularised weights with ``fallback = "regularised"``;
- otherwise (a solution exists, Newton did not reach it), return whichever of Newton's best
  iterate and the regularised weights has the smaller relative residual, with
  ``fallback = "inexact"``.

For large α (the targets ``w_i^(-1/α)`` all near 1) Newton from the start can crawl: when it
fails for α > 2 the solve is repeated by continuation in α (α = 2, 4, 8, ..., each from the
previous solution) before any fallback.

Callers log and count the fallback (:class:`~fedmtl.aggregation.info.SolveInfo`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fedmtl.aggregation.info import SolveInfo
from fedmtl.aggregation.solvers.min_norm import is_pareto_stationary, min_norm_weights

EPSILON = 1e-6
TOLERANCE = 1e-13
ROUNDING = 4.0
"""Newton stops when β ≤ ROUNDING·(m+1)·ε: at rounding level."""
ACCEPTABLE = 64.0
"""Newton's iterate is accepted when β ≤ ACCEPTABLE·(m+1)·ε."""
MAX_ITERATIONS = 50
CONTINUATION_START = 2.0
"""When Newton fails for α above this, it is solved again by continuation in α from here
(:func:`_continuation`)."""
NEAR = 1e-2
QUICK = 12
"""The backward error is computed once the relative residual is below NEAR or after QUICK
iterations (well-conditioned solves finish before either, at no extra cost)."""
FLOAT64_EPS = float(np.finfo(np.float64).eps)


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


def _backward(gradient: np.ndarray, target: np.ndarray, magnitude: np.ndarray) -> float:
    return float(np.max(np.abs(gradient) / (magnitude + target)))


def backward_error(a: np.ndarray, w: np.ndarray, alpha: float) -> float:
    """``max_i |(A w)_i − w_i^(-1/α)| / ((|A| w)_i + w_i^(-1/α))`` for ``w > 0``.

    The componentwise backward error of the α-fair condition (Oettli & Prager 1964): the
    smallest η such that ``w`` solves the condition exactly for a Gramian ``A + ΔA`` and
    targets ``w^(-1/α) + Δt`` with ``|ΔA| ≤ η |A|``, ``|Δt| ≤ η w^(-1/α)``. Rounding alone
    gives about ``m ε``, however ill-conditioned ``A`` is.
    """
    a = np.asarray(a, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    target = w ** (-1.0 / alpha)
    return _backward(a @ w - target, target, np.abs(a) @ w)


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


def _newton(a: np.ndarray, alpha: float, start: np.ndarray) -> tuple[np.ndarray, int, str]:
    """Damped Newton on F from ``start``; returns (w, iterations, how).

    ``how`` is ``"converged"`` (relative residual ≤ TOLERANCE), ``"rounding"`` (the iterate of
    least backward error seen, which is at rounding level) or ``"failed"`` (that iterate is
    not).
    """
    m = len(a)
    stop, accept = ROUNDING * (m + 1) * FLOAT64_EPS, ACCEPTABLE * (m + 1) * FLOAT64_EPS
    magnitude: np.ndarray | None = None  # |A|, formed when first needed
    w = start.copy()
    value = _objective(a, w, alpha)
    best, best_error = w, math.inf

    def stalled(iteration: int) -> tuple[np.ndarray, int, str]:
        return best, iteration, "rounding" if best_error <= accept else "failed"

    for iteration in range(1, MAX_ITERATIONS + 1):
        target = w ** (-1.0 / alpha)
        gradient = a @ w - target
        relative = _row_error(gradient, target)
        if relative <= TOLERANCE:
            return _polish(a, alpha, w), iteration - 1, "converged"
        if relative <= NEAR or iteration > QUICK:  # the backward error matters only from here on
            magnitude = np.abs(a) if magnitude is None else magnitude
            error = _backward(gradient, target, magnitude @ w)
            if error < best_error:
                best, best_error = w, error
            if error <= stop:
                return _polish(a, alpha, w), iteration - 1, "rounding"
        hessian = a + np.diag(target / (alpha * w))
        try:
            step = -np.linalg.solve(hessian, gradient)
        except np.linalg.LinAlgError:
            return stalled(iteration)
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
            return stalled(iteration)
        w, value = candidate, new_value
        if not np.isfinite(w).all() or w.min() <= 0:
            return stalled(iteration)
    target = w ** (-1.0 / alpha)
    gradient = a @ w - target
    if _row_error(gradient, target) <= TOLERANCE:
        return w, MAX_ITERATIONS, "converged"
    error = _backward(gradient, target, np.abs(a) @ w)
    if error < best_error:
        best, best_error = w, error
    return stalled(MAX_ITERATIONS)


def _max_min_weights(a: np.ndarray) -> tuple[np.ndarray, SolveInfo]:
    """α = ∞: ``w = λ / (λᵀAλ)`` with λ the min-norm point of the simplex (MGDA).

    On Pareto-stationary rows (``Gᵀλ = 0``) every direction has ``min_i g_iᵀd ≤ 0``, so the
    max-min direction is 0: λ itself is returned (``d = Gᵀλ = 0``, as MGDA), reported as
    ``"pareto-stationary"``.
    """
    lam = min_norm_weights(a)
    if is_pareto_stationary(a, lam):
        return lam, SolveInfo(fallback="pareto-stationary")
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
        Iterations, relative residual on ``gramian``, and the fallback used, if any:
        ``""`` (solved to rounding level: backward error ≤ 64 (m+1) ε), ``"inexact"`` (a
        positive solution exists but was not reached; the best answer found is returned),
        ``"regularised"`` (no positive solution exists), ``"zero-gramian"``, or
        ``"pareto-stationary"`` (α = ∞).

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
    w, iterations, how = _newton(normalised, alpha, start)
    if how == "failed" and alpha > CONTINUATION_START:
        w, iterations, how = _continuation(normalised, alpha, w, iterations)
    info = SolveInfo(iterations=iterations)
    if how != "converged":
        # a small backward error certifies w only if a solution exists: on Pareto-stationary
        # rows Newton runs off to infinity, where the backward error also vanishes
        solvable = not is_pareto_stationary(normalised, min_norm_weights(normalised))
        if how == "failed" or not solvable:
            w, info = _fallback(normalised, alpha, w, iterations, solvable)
    weights = factor * w
    info.residual = relative_residual(a, weights, alpha)
    return weights, info


def _continuation(a: np.ndarray, alpha: float, newton: np.ndarray, iterations: int) -> tuple[np.ndarray, int, str]:
    """Newton failed at a large α: solve for α = CONTINUATION_START, then for α doubled from
    each solution, up to ``alpha``. Each solve starts near its answer; straight from the
    start, the targets ``w_i^(-1/α)`` close to 1 make Newton's steps crawl (on rows whose norms
    span four orders of magnitude, 147 of 300 random problems failed at α = 50, none with
    continuation). Returns Newton's own failed iterate when the continuation fails too."""
    current = CONTINUATION_START
    w, total, how = _newton(a, current, _initial(a, current))
    total += iterations
    while how != "failed" and current < alpha:
        current = min(alpha, 2.0 * current)
        w, more, how = _newton(a, current, w)
        total += more
    return (w, total, how) if how != "failed" else (newton, total, "failed")


def _fallback(
    a: np.ndarray, alpha: float, newton: np.ndarray, iterations: int, solvable: bool
) -> tuple[np.ndarray, SolveInfo]:
    """Newton's iterate was not accepted: the regularised solve, and an honest label."""
    m = len(a)
    regularised = a + EPSILON * np.eye(m)
    w, more, _ = _newton(regularised, alpha, _initial(regularised, alpha))
    total = iterations + more
    if not solvable:  # 0 ∈ conv{g_i}: no positive solution exists
        return w, SolveInfo(iterations=total, fallback="regularised")
    usable = bool(np.all(np.isfinite(newton)) and np.all(newton > 0))
    if usable and relative_residual(a, newton, alpha) <= relative_residual(a, w, alpha):
        w = newton
    return w, SolveInfo(iterations=total, fallback="inexact")
