"""The min-norm point of the convex hull (MGDA's QP, fedmtl.aggregation.solvers.min_norm)
against an exact oracle: every face of the simplex solved by its KKT system.

Rows of very different lengths are the case the property suite's tolerances (relative to the
root-mean-square row) cannot see: a ridge relative to the trace once made the short rows'
min-norm point look like 0, and MGDA returned a direction that conflicts with one of them.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from fedmtl.aggregation import Objectives, make_rule
from fedmtl.aggregation.solvers.min_norm import is_pareto_stationary, min_norm_weights


def exact_min_norm(g: np.ndarray) -> np.ndarray:
    """``argmin_{λ ∈ Δ} ‖Gᵀλ‖²`` by enumeration: on each face S, the stationary point of
    ``‖G_Sᵀλ‖²`` with ``Σλ = 1`` (least squares on the KKT system); the feasible one of least
    norm wins."""
    m = len(g)
    best, best_value = None, np.inf
    for size in range(1, m + 1):
        for face in itertools.combinations(range(m), size):
            a = g[list(face)] @ g[list(face)].T
            kkt = np.block([[2 * a, np.ones((size, 1))], [np.ones((1, size)), np.zeros((1, 1))]])
            solution = np.linalg.lstsq(kkt, np.concatenate([np.zeros(size), [1.0]]), rcond=None)[0][:size]
            if (solution < -1e-12).any() or abs(solution.sum() - 1) > 1e-9:
                continue
            lam = np.zeros(m)
            lam[list(face)] = np.clip(solution, 0, None)
            value = float(np.sum((g.T @ lam) ** 2))
            if value < best_value * (1 - 1e-12):
                best, best_value = lam, value
    return best


@pytest.mark.parametrize("big", [1e4, 1e6, 1e8])
def test_a_long_row_left_out_does_not_make_the_short_rows_look_stationary(big):
    g = np.array([[big, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, -2.0, 1.0]])
    lam = min_norm_weights(g @ g.T)
    np.testing.assert_allclose(lam, [0.0, 0.7, 0.3], atol=1e-9)  # d = (0, 0.1, 0.3), ‖d‖² = 0.1
    assert not is_pareto_stationary(g @ g.T, lam)
    assert (g @ (g.T @ lam) > 0.09).all()  # g_iᵀd ≥ ‖d‖² for every row


def optimality_gap(g: np.ndarray, lam: np.ndarray) -> float:
    """How far ``λ`` is from the min-norm point, relative to each row: ``λ ∈ Δ`` is optimal
    exactly when ``g_iᵀd ≥ ‖d‖²`` for every row, with equality where ``λ_i > 0`` (``d = Gᵀλ``;
    the KKT conditions of the convex QP), so the largest violation, divided by ``‖g_i‖‖d‖``,
    is 0 at the optimum, whatever the rows' lengths."""
    d = g.T @ lam
    slack = (g @ d - d @ d) / (np.linalg.norm(g, axis=1) * np.linalg.norm(d))
    return float(max(-slack.min(), np.abs(slack[lam > 1e-9]).max()))


@pytest.mark.parametrize("seed", range(12))
def test_rows_of_one_length_give_the_exact_min_norm_point(seed):
    rng = np.random.default_rng(seed)
    g = rng.normal(size=(3 + seed % 3, 6)) * 10.0 ** rng.uniform(-1.5, 1.5, size=(3 + seed % 3, 1))
    lam, exact = min_norm_weights(g @ g.T), exact_min_norm(g)  # the oracle is exact at moderate spreads
    assert np.linalg.norm(g.T @ (lam - exact)) <= 1e-8 * np.linalg.norm(g.T @ exact)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("spread", [1e3, 1e6, 1e9, 1e12])
def test_rows_of_very_different_lengths_give_the_min_norm_point(seed, spread):
    rng = np.random.default_rng(seed)
    m = 3 + seed % 3
    g = rng.normal(size=(m, 6)) * spread ** rng.uniform(-1, 1, size=(m, 1))  # lengths 1/spread .. spread
    lam = min_norm_weights(g @ g.T)
    assert lam.min() >= 0 and lam.sum() == pytest.approx(1.0)
    assert optimality_gap(g, lam) <= 1e-9  # before: up to 0.7 at spread 1e6


@pytest.mark.parametrize(("name", "params"), [("mgda", {}), ("fairgrad", {"alpha": float("inf")}), ("fsmgda", {})])
def test_rules_built_on_the_min_norm_point_do_not_conflict_with_a_short_row(name, params):
    g = torch.tensor([[1e6, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, -2.0, 1.0]], dtype=torch.float64)
    d = make_rule(name, **params).combine(Objectives(updates=g)).direction
    assert (g @ d > 0).all(), (name, (g @ d).tolist())
    assert torch.allclose(d / d.norm(), torch.tensor([0.0, 0.1, 0.3], dtype=torch.float64) / 0.1**0.5, atol=1e-6)
