"""The min-norm point of the convex hull of the rows (MGDA's quadratic program).

``λ = argmin_{λ ∈ Δ} λᵀ A λ`` for a Gramian ``A = G Gᵀ``, solved exactly by quadprog's
Goldfarb–Idnani dual active-set method (Désidéri 2012; Sener & Koltun, NeurIPS 2018).
"""

from __future__ import annotations

import numpy as np


def is_pareto_stationary(a: np.ndarray, lam: np.ndarray) -> bool:
    """Whether ``Σ λ_i g_i`` is zero up to round-off (0 is in the convex hull of the g_i)."""
    return float(lam @ a @ lam) <= 1e-12 * max(float(np.trace(a)), 1e-300)


def _simplex_qp(hessian: np.ndarray, extra_equalities: np.ndarray | None = None) -> np.ndarray:
    """``argmin_{λ ∈ Δ} λᵀ H λ`` (with ``Eᵀλ = 0`` for the columns E of
    ``extra_equalities``), by quadprog's Goldfarb–Idnani dual active-set method."""
    from quadprog import solve_qp

    m = len(hessian)
    equalities = np.ones((m, 1)) if extra_equalities is None else np.hstack([np.ones((m, 1)), extra_equalities])
    constraints = np.hstack([equalities, np.eye(m)])  # Σλ = 1 and Eᵀλ = 0 (equalities), λ ≥ 0
    bounds = np.concatenate([[1.0], np.zeros(constraints.shape[1] - 1)])
    lam = solve_qp(hessian, np.zeros(m), constraints, bounds, meq=equalities.shape[1])[0]
    lam = np.clip(lam, 0.0, None)
    return lam / lam.sum()


def min_norm_weights(a: np.ndarray) -> np.ndarray:
    """``λ = argmin_{λ ∈ Δ} λᵀ A λ``: the min-norm point of the convex hull (MGDA).

    Solved exactly as a quadratic program on ``A + 1e-12·tr(A)/m · I``. When 0 is in the
    hull (Pareto-stationary rows) every λ with ``Gᵀλ = 0`` is optimal; we return the one
    of least ``‖λ‖`` among them (a second, well-conditioned QP with ``Aλ = 0`` on the range
    of A), so the weights do not depend on the order of the rows.
    """
    m = len(a)
    if m == 1:
        return np.ones(1)
    ridge = 1e-12 * max(float(np.trace(a)) / m, 1e-300)
    try:
        lam = _simplex_qp(a + ridge * np.eye(m))
    except ValueError:  # numerically not positive definite: fall back to the barycentre
        return np.full(m, 1.0 / m)
    if not is_pareto_stationary(a, lam):
        return lam
    values, vectors = np.linalg.eigh(a)
    range_basis = vectors[:, values > 1e-9 * max(float(values.max()), 1e-300)]
    try:
        return _simplex_qp(np.eye(m), range_basis)
    except ValueError:  # the equalities are inconsistent after round-off: keep the first λ
        return lam
