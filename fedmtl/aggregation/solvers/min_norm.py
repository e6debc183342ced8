"""The min-norm point of the convex hull of the rows (MGDA's quadratic program).

``λ = argmin_{λ ∈ Δ} λᵀ A λ`` for a Gramian ``A = G Gᵀ``, solved exactly by quadprog's
Goldfarb–Idnani dual active-set method (Désidéri 2012; Sener & Koltun, NeurIPS 2018), in
variables scaled by the rows' lengths (:func:`min_norm_weights`).
"""

from __future__ import annotations

import numpy as np

STATIONARY = 1e-12
"""0 is in the hull when ``‖Σ λ_i g_i‖² ≤ STATIONARY · (Σ λ_i ‖g_i‖)²`` (a relative 1e-6 in norm; the
min-norm point of rows with 0 in their hull comes out near 1e-28)."""
RIDGE = 1e-12
"""The ridge added to the row-scaled Gramian (unit diagonal) to make it positive definite."""


def is_pareto_stationary(a: np.ndarray, lam: np.ndarray) -> bool:
    """Whether ``d = Σ λ_i g_i`` is zero up to round-off (0 is in the convex hull of the g_i).

    Relative to the rows ``λ`` combines, ``‖d‖² ≤ STATIONARY · (Σ λ_i ‖g_i‖)²``, not to the
    largest row: a row 1e6 times the others, which ``λ`` leaves out, does not make the others'
    min-norm point look like 0.

    A zero row (a task at zero loss: a saturated softmax gives exactly 0) is 0 in the hull
    itself; λ sits on it only up to the solver's last bits, and the ε it leaves on the other
    rows makes ``d`` long against the rows λ combines, so a zero row is tested for directly.
    """
    lengths = _row_lengths(a)
    if len(lengths) and float(lengths.min()) == 0.0:
        return True
    scale = float(lam @ lengths)
    return float(lam @ a @ lam) <= STATIONARY * scale**2


def _row_lengths(a: np.ndarray) -> np.ndarray:
    """``‖g_i‖`` of each row, from the Gramian's diagonal."""
    return np.sqrt(np.clip(np.diag(a), 0.0, None))


def _row_scales(a: np.ndarray) -> np.ndarray:
    """``1 / ‖g_i‖`` of each row (1 for a zero row)."""
    norms = _row_lengths(a)
    return np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 1.0)


def _scaled_simplex_qp(
    hessian: np.ndarray, scales: np.ndarray, extra_equalities: np.ndarray | None = None,
) -> np.ndarray:
    """``λ = D μ`` with ``μ = argmin μᵀ H μ`` subject to ``Σ_i D_i μ_i = 1``, ``μ ≥ 0`` (and
    ``Eᵀμ = 0`` for the columns E of ``extra_equalities``), ``D = diag(scales)``, by quadprog's
    Goldfarb–Idnani dual active-set method; λ is in the simplex."""
    from quadprog import solve_qp

    m = len(hessian)
    simplex = scales[:, None]
    equalities = simplex if extra_equalities is None else np.hstack([simplex, extra_equalities])
    constraints = np.hstack([equalities, np.eye(m)])  # Σ D_i μ_i = 1 and Eᵀμ = 0 (equalities), μ ≥ 0
    bounds = np.concatenate([[1.0], np.zeros(constraints.shape[1] - 1)])
    mu = solve_qp(hessian, np.zeros(m), constraints, bounds, meq=equalities.shape[1])[0]
    lam = np.clip(scales * mu, 0.0, None)
    return lam / lam.sum()


def min_norm_weights(a: np.ndarray) -> np.ndarray:
    """``λ = argmin_{λ ∈ Δ} λᵀ A λ``: the min-norm point of the convex hull (MGDA).

    Solved exactly as a quadratic program in the row-scaled variables ``μ_i = ‖g_i‖ λ_i``,
    whose Hessian ``D A D`` (``D = diag(1/‖g_i‖)``) has a unit diagonal whatever the rows'
    scales, plus a ridge of :data:`RIDGE`: a perturbation relative to each row, so rows of
    very different lengths (one 1e6 times the others) are solved as accurately as rows of
    one length (a ridge relative to the trace swamped the short rows). When 0 is in the hull
    (Pareto-stationary rows, :func:`is_pareto_stationary`) every λ with ``Gᵀλ = 0`` is
    optimal; we return the one of least ``‖λ‖`` among them (a second QP with ``D A D μ = 0``
    on the range of ``D A D``), so the weights do not depend on the order of the rows.
    """
    m = len(a)
    if m == 1:
        return np.ones(1)
    scales = _row_scales(a)
    scaled = a * scales[:, None] * scales[None, :]
    try:
        lam = _scaled_simplex_qp(scaled + RIDGE * np.eye(m), scales)
    except ValueError:  # numerically not positive definite: fall back to the barycentre
        return np.full(m, 1.0 / m)
    if not is_pareto_stationary(a, lam):
        return lam
    values, vectors = np.linalg.eigh(scaled)
    range_basis = vectors[:, values > 1e-9 * max(float(values.max()), 1e-300)]
    try:  # least ‖λ‖² = μᵀ D² μ
        return _scaled_simplex_qp(np.diag(scales**2), scales, range_basis)
    except ValueError:  # the equalities are inconsistent after round-off: keep the first λ
        return lam
