"""The α-fair solver: the FairGrad condition, torchjd agreement, limits and degenerate input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchjd.aggregation import FairGradWeighting, MGDAWeighting

from fedmtl.aggregation import solve_alpha_fair
from fedmtl.aggregation.solvers import relative_residual
from fedmtl.aggregation.solvers.alpha_fair import ACCEPTABLE, backward_error

ALPHAS = [0.5, 1.0, 2.0, 5.0]


def _gramian(m: int, kind: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "random":
        g = rng.normal(size=(m, 3 * m))
    elif kind == "correlated":
        g = rng.normal(size=(1, 3 * m)) + 0.1 * rng.normal(size=(m, 3 * m))
    else:  # positive combinations of 2 directions with a positive common part: rank 2, solvable
        base = rng.normal(size=(2, 3 * m))
        g = rng.uniform(0.1, 1.0, size=(m, 2)) @ base + 2.0 * base.sum(0)
    return g @ g.T


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("m", [2, 5, 20])
@pytest.mark.parametrize("kind", ["random", "correlated"])
def test_agrees_with_torchjd_fairgrad_where_it_converges(alpha, m, kind):
    a = _gramian(m, kind)
    ours, info = solve_alpha_fair(a, alpha)
    theirs = FairGradWeighting(alpha)(torch.from_numpy(a)).numpy()
    assert info.fallback == "" and info.residual < 1e-12
    if relative_residual(a, theirs, alpha) < 1e-9:  # torchjd converged
        np.testing.assert_allclose(ours, theirs, rtol=1e-6)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_condition_holds_on_every_row(alpha):
    a = _gramian(8, "random", seed=3)
    w, _ = solve_alpha_fair(torch.from_numpy(a), alpha)
    assert (w > 0).all()
    np.testing.assert_allclose(a @ w, w ** (-1 / alpha), rtol=1e-10)


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("s", [1e-6, 0.3, 250.0])
def test_scaling_law(alpha, s):
    """Scaling the Gramian by s scales the weights by s^(-α/(α+1)) (direction unchanged)."""
    a = _gramian(6, "correlated", seed=1)
    w, _ = solve_alpha_fair(a, alpha)
    ws, _ = solve_alpha_fair(s * a, alpha)
    np.testing.assert_allclose(ws, s ** (-alpha / (alpha + 1)) * w, rtol=1e-9)


def test_permutation_equivariance():
    a = _gramian(7, "random", seed=2)
    perm = np.random.default_rng(0).permutation(7)
    w, _ = solve_alpha_fair(a, 2.0)
    wp, _ = solve_alpha_fair(a[np.ix_(perm, perm)], 2.0)
    np.testing.assert_allclose(wp, w[perm], rtol=1e-10)


def test_alpha_zero_is_uniform_and_alpha_one_is_nash():
    a = _gramian(5, "random")
    w0, info = solve_alpha_fair(a, 0.0)
    np.testing.assert_allclose(w0, np.full(5, 0.2))
    assert info.iterations == 0
    w1, _ = solve_alpha_fair(a, 1.0)
    np.testing.assert_allclose(a @ w1, 1 / w1, rtol=1e-10)  # Nash-MTL: A w = 1/w


def test_alpha_infinity_is_the_mgda_direction_and_the_large_alpha_limit():
    rng = np.random.default_rng(4)
    g = rng.normal(size=(4, 12)) + 1.5 * rng.normal(size=(1, 12))
    a = g @ g.T
    w_inf, info = solve_alpha_fair(a, math.inf)
    assert info.fallback == ""
    d = w_inf @ g
    lam = MGDAWeighting(epsilon=1e-9, max_iters=10_000)(torch.from_numpy(a)).numpy()
    d_mgda = lam @ g
    assert np.dot(d, d_mgda) / (np.linalg.norm(d) * np.linalg.norm(d_mgda)) > 1 - 1e-6
    # max-min: every objective improves at least 1 (= on the support); Frank-Wolfe accuracy
    assert (g @ d >= 1 - 1e-3).all()
    w_big, _ = solve_alpha_fair(a, 200.0)
    d_big = w_big @ g
    assert np.dot(d, d_big) / (np.linalg.norm(d) * np.linalg.norm(d_big)) > 0.99


def test_rank_deficient_but_solvable_needs_no_fallback():
    a = _gramian(6, "rank2")
    assert np.linalg.matrix_rank(a) == 2
    w, info = solve_alpha_fair(a, 2.0)
    assert info.fallback == "" and info.residual < 1e-10


def test_pareto_stationary_input_falls_back_finitely_and_says_so():
    g = np.array([[1.0, 2.0, 0.5]])
    a = np.vstack([g, -2 * g]) @ np.vstack([g, -2 * g]).T  # 0 is in the hull: no positive solution
    w, info = solve_alpha_fair(a, 1.0)
    assert info.fallback == "regularised"
    assert np.isfinite(w).all() and (w > 0).all()
    w, info = solve_alpha_fair(np.zeros((3, 3)), 2.0)
    assert info.fallback == "zero-gramian" and np.allclose(w, 1 / 3)
    w, info = solve_alpha_fair(a, math.inf)
    assert info.fallback == "pareto-stationary" and np.isfinite(w).all()
    # max-min: every d has min_i g_iᵀd ≤ 0 here, so d = 0 (MGDA's λ with Gᵀλ = 0), not the mean
    assert np.linalg.norm(w @ np.vstack([g, -2 * g])) < 1e-12 and (w >= 0).all()


def test_warm_start_from_the_solution_converges_at_once():
    a = _gramian(30, "random", seed=5)
    w, info = solve_alpha_fair(a, 2.0)
    w2, info2 = solve_alpha_fair(a, 2.0, warm_start=w)
    assert info2.iterations <= 1 < info.iterations
    np.testing.assert_allclose(w2, w, rtol=1e-10)


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        solve_alpha_fair(np.eye(2), -1.0)
    with pytest.raises(ValueError, match="square"):
        solve_alpha_fair(np.ones((2, 3)), 1.0)
    with pytest.raises(ValueError, match="NaN"):
        solve_alpha_fair(np.array([[1.0, np.nan], [np.nan, 1.0]]), 1.0)


@settings(max_examples=60, deadline=None)
@given(
    m=st.integers(1, 12),
    rank=st.integers(1, 12),
    alpha=st.sampled_from([0.25, 1.0, 3.0, math.inf]),
    scale=st.floats(1e-8, 1e8),
    seed=st.integers(0, 2**16),
)
def test_never_raises_and_weights_are_finite_and_positive(m, rank, alpha, scale, seed):
    g = np.random.default_rng(seed).normal(size=(m, min(rank, m) + 1)) * scale
    w, info = solve_alpha_fair(g @ g.T, alpha)
    assert w.shape == (m,) and np.isfinite(w).all() and (w >= 0).all()
    if alpha != math.inf:
        assert (w > 0).all()
        assert info.fallback in {"", "inexact", "regularised"}
    if info.fallback == "" and alpha != math.inf:  # solved to rounding level
        assert backward_error(g @ g.T, w, alpha) <= ACCEPTABLE * (m + 1) * np.finfo(float).eps


# -- ill-conditioned but solvable: Newton's answer is kept (issue 18, finding 3) --------------
def _exact_alpha_fair(gramian: np.ndarray, alpha: float, start: np.ndarray) -> np.ndarray:
    """The α-fair weights of the float64 Gramian as given, in 60-digit arithmetic (Newton from
    ``start``, halving steps to stay > 0)."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 60
    m = len(gramian)
    a = mpmath.matrix([[mpmath.mpf(float(x)) for x in row] for row in gramian])
    w = mpmath.matrix([mpmath.mpf(float(x)) for x in start])
    for _ in range(100):
        target = [w[i] ** (-1 / mpmath.mpf(alpha)) for i in range(m)]
        gradient = a * w - mpmath.matrix(target)
        hessian = a + mpmath.diag([target[i] / (alpha * w[i]) for i in range(m)])
        step = mpmath.lu_solve(hessian, gradient)
        t = mpmath.mpf(1)
        while min(w[i] - t * step[i] for i in range(m)) <= 0:
            t /= 2
        w = w - t * step
    return np.array([float(x) for x in w])


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_ill_conditioned_solvable_gramian_keeps_newtons_answer(alpha):
    """G = [[1, 0, 0], [−1, 1e-5, 0], [.5, 0, 1e-3]] (cond(G Gᵀ) ≈ 5e10): Newton reaches the
    solution to float64's limit (relative residual ~1e-6, backward error ~1e-16), which the old
    1e-8 relative threshold rejected for the ε-regularised answer (residual 1.4, a conflicting
    direction, cosine 0.59 to the exact one at α = 1 and 0.15 at α = 2, labelled "regularised"
    though a positive solution exists)."""
    g = np.array([[1.0, 0.0, 0.0], [-1.0, 1e-5, 0.0], [0.5, 0.0, 1e-3]])
    a = g @ g.T
    w, info = solve_alpha_fair(a, alpha)
    assert info.fallback == ""
    assert (w > 0).all()
    d = w @ g
    assert (g @ d > 0).all()  # non-conflicting: (G d)_i = w_i^(-1/α) > 0
    assert backward_error(a, w, alpha) < 1e-14
    exact = _exact_alpha_fair(a, alpha, w)
    d_exact = exact @ g
    assert float(d @ d_exact / (np.linalg.norm(d) * np.linalg.norm(d_exact))) > 1 - 1e-9
    np.testing.assert_allclose(w, exact, rtol=1e-5)
    assert relative_residual(a, exact, alpha) > 1e-8  # even the exact answer, rounded, misses 1e-8


def test_pareto_stationary_rows_are_regularised_not_accepted_by_backward_error():
    """On rows with 0 in their hull Newton's iterates grow without bound and their backward error
    tends to 0; the existence check (MGDA's min-norm point is 0) keeps them out."""
    g = np.random.default_rng(0).normal(size=(3, 2))  # three rows in R²: 0 is in their hull
    for alpha in (0.25, 1.0, 3.0):
        w, info = solve_alpha_fair(g @ g.T, alpha)
        assert info.fallback == "regularised", alpha
        assert np.isfinite(w).all() and (w > 0).all()


def test_inexact_is_reported_when_newton_cannot_reach_an_existing_solution(monkeypatch):
    """When Newton fails on a solvable Gramian the label says "inexact" (not "regularised", which
    means that no positive solution exists), and the better of the two answers is returned."""
    from fedmtl.aggregation.solvers import alpha_fair

    a = _gramian(5, "random", seed=1)
    scale = np.trace(a) / 5
    monkeypatch.setattr(alpha_fair, "MAX_ITERATIONS", 2)
    w, info = solve_alpha_fair(a, 2.0)
    assert info.fallback == "inexact" and (w > 0).all()
    newton, _, how = alpha_fair._newton(a / scale, 2.0, alpha_fair._initial(a / scale, 2.0))
    assert how == "failed"
    ridge = a / scale + alpha_fair.EPSILON * np.eye(5)
    regularised, _, _ = alpha_fair._newton(ridge, 2.0, alpha_fair._initial(ridge, 2.0))
    best = min(relative_residual(a / scale, newton, 2.0), relative_residual(a / scale, regularised, 2.0))
    assert info.residual == pytest.approx(best, rel=1e-9) and info.residual > 1e-8


@pytest.mark.parametrize("rule", ["fairgrad-1", "fairgrad-2", "fairgrad-inf", "nash-mtl"])
def test_a_zero_row_is_labelled_as_having_no_positive_solution(rule):
    """A task at zero loss gives a zero row: 0 is then in the hull and no positive α-fair
    solution exists (REFERENCES §1): "regularised" (finite α, Nash-MTL), "pareto-stationary"
    (α = ∞), not "inexact" (a solution exists but was not reached), nor success at α = ∞."""
    from fedmtl.aggregation import Objectives, make_rule

    gen = torch.Generator().manual_seed(11)
    g = torch.randn(2, 7, generator=gen, dtype=torch.float64)
    expected = "pareto-stationary" if rule == "fairgrad-inf" else "regularised"
    made = (make_rule("nash-mtl") if rule == "nash-mtl"
            else make_rule("fairgrad", alpha=math.inf if rule.endswith("inf") else float(rule[-1])))
    for rows in (torch.stack([g[0], torch.zeros(7, dtype=torch.float64), g[1]]),
                 torch.stack([g[0], torch.zeros(7, dtype=torch.float64)])):
        assert made.weigh(Objectives(updates=rows)).info.fallback == expected
    # a short row that is not zero keeps 0 out of the hull: solved as usual
    short = torch.stack([g[0], 1e-9 * g[1], torch.randn(7, generator=gen, dtype=torch.float64)])
    assert made.weigh(Objectives(updates=short)).info.fallback == ""


SPREAD_ROWS = torch.tensor([  # two rows 1e-4 of the others: an independent check's counterexample
    [-1.767e-4, 4.604e-3, 5.355e-4, -3.123e-3, 1.860e-3, -1.777e-3],
    [35.94, 56.71, -53.92, -88.90, -8.047, 55.07],
    [-141.6, -16.28, 378.4, -90.64, 270.3, -22.61],
    [183.6, 393.3, -255.5, 277.5, -287.4, -185.0],
    [-7.015e-3, 4.948e-3, 9.738e-3, 1.611e-3, 7.057e-3, -7.769e-4]], dtype=torch.float64)


@pytest.mark.parametrize("alpha", [10.0, 20.0])
def test_large_alpha_on_rows_of_very_different_lengths_is_solved_not_stopped_short(alpha):
    """Newton from the start stopped short at α = 10 and 20 on these rows (labelled 'inexact',
    relative residual 0.79 and 0.97; the direction 15% and 63% off the solution): it is now
    solved by continuation in α."""
    gramian = SPREAD_ROWS @ SPREAD_ROWS.T
    weights, info = solve_alpha_fair(gramian, alpha)
    assert info.fallback == "" and info.residual < 1e-12
    assert relative_residual(gramian.numpy(), weights, alpha) < 1e-12


def test_large_alpha_on_random_rows_of_spread_lengths_is_solved():
    """Up to α = 50 no problem of this family stops short (46% did at α = 50 before)."""
    rng = np.random.default_rng(1)
    for _ in range(40):
        m = int(rng.integers(3, 7))
        rows = rng.normal(size=(m, 6)) * 10.0 ** rng.uniform(-2, 2, size=(m, 1))
        weights, info = solve_alpha_fair(rows @ rows.T, 50.0)
        assert info.fallback == "" and np.all(weights > 0)
