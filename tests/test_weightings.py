"""Each weighting: cross-checks against torchjd where it has the method, hand-computed cases
for ours (q-FFL against the paper's update formula)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchjd.aggregation as tjd

from fedmtl.aggregation import Objectives, make_weighting
from fedmtl.aggregation.solvers.simplex import project_simplex, project_simplex_box

F64 = torch.float64


def rows(m: int, p: int = 7, seed: int = 0) -> torch.Tensor:
    return torch.randn(m, p, generator=torch.Generator().manual_seed(seed), dtype=F64)


def direction_of(weights: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    d = weights @ g
    return d / d.norm()


# -- torchjd cross-checks ---------------------------------------------------------------
@pytest.mark.parametrize(
    "name, params, reference",
    [
        ("upgrad", {}, tjd.UPGradWeighting),
        ("dualproj", {}, tjd.DualProjWeighting),
        ("imtl-g", {}, tjd.IMTLGWeighting),
        ("aligned-mtl", {}, tjd.AlignedMTLWeighting),
        ("cagrad", {"rescale": 0}, lambda: tjd.CAGradWeighting(c=0.4)),
    ],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_same_weights_as_torchjd(name, params, reference, seed):
    """Same weights, scale included (fedmtl keeps torchjd's scale for these rules)."""
    g = rows(4, seed=seed)
    ours = make_weighting(name, **params)(Objectives(updates=g))
    theirs = reference()(g @ g.T)
    torch.testing.assert_close(ours, theirs.to(ours), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("c", [0.0, 0.4, 0.5, 2.0])
def test_cagrad_rescale_follows_the_official_code(c):
    """Cranial-XIX/CAGrad ``cagrad(grads, alpha, rescale=1)``: g / (1 + c²) by default (and in
    the NYUv2 / Cityscapes trainers), g for rescale 0, g / (1 + c) for 2 (``toy.py``)."""
    g = rows(4, seed=3)
    theirs = tjd.CAGradWeighting(c=c)(g @ g.T).to(F64)
    for rescale, divisor in [(None, 1 + c**2), (0, 1.0), (1, 1 + c**2), (2, 1 + c)]:
        params = {"c": c} if rescale is None else {"c": c, "rescale": rescale}
        ours = make_weighting("cagrad", **params)(Objectives(updates=g))
        torch.testing.assert_close(ours, theirs / divisor, rtol=1e-4, atol=1e-6)
    if c == 0:  # gradient descent on the mean, whatever the rescale
        mean = torch.full((4,), 0.25, dtype=F64)
        torch.testing.assert_close(make_weighting("cagrad", c=0.0)(Objectives(updates=g)), mean)


# -- findings of the independent check (issue 18): the weights keep torchjd's scale ---------
@pytest.mark.parametrize("c", [1.0, 2.0])
@pytest.mark.parametrize("rescale", [0, 1, 2])
def test_cagrad_with_c_at_least_one_stops_on_pareto_stationary_rows(c, rescale):
    """c ≥ 1 on rows with 0 in their hull: torchjd's direction is 0 (no row is worsened). The
    old sum-to-one rescale turned its zero weights into the mean: g·d = (−0.5, 1)."""
    g = torch.tensor([[1.0, 0.0], [-2.0, 0.0]], dtype=F64)
    result = make_weighting("cagrad", c=c, rescale=rescale).weigh(Objectives(updates=g))
    torch.testing.assert_close(result.weights, tjd.CAGradWeighting(c=c)(g @ g.T).to(F64))
    d = result.weights @ g
    assert float(d.norm()) == 0.0
    assert (g @ d >= 0).all()


def test_imtl_g_keeps_zero_weights_where_they_cannot_be_normalised():
    """Rows e, e, −√2e: torchjd's v = A⁺‖g‖ sums to 0, its weights are 0 and so is d (the only
    direction in the rows' span with equal projections on the unit rows). The old rescale
    returned the mean (0.195, 0), which worsens the third row."""
    g = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-math.sqrt(2.0), 0.0]], dtype=F64)
    w = make_weighting("imtl-g")(Objectives(updates=g))
    torch.testing.assert_close(w, tjd.IMTLGWeighting()(g @ g.T).to(F64))
    assert float((w @ g).norm()) == 0.0


def test_aligned_mtl_step_stays_small_on_nearly_opposite_rows():
    """J = [[1, 0], [−0.999, 0]]: torchjd's |d| = 5e-4 (scaled by the smallest singular value).
    Rescaling its weights to sum to one divided by 5e-4 − 5e-4 ≈ 1e-6: weights (1000, −999),
    |d| = 1998."""
    g = torch.tensor([[1.0, 0.0], [-0.999, 0.0]], dtype=F64)
    w = make_weighting("aligned-mtl")(Objectives(updates=g))
    theirs = tjd.AlignedMTLWeighting()(g @ g.T).to(F64)
    torch.testing.assert_close(w, theirs)
    assert float((w @ g).norm()) == pytest.approx(float((theirs @ g).norm()), rel=1e-9)
    assert float((w @ g).norm()) < 1e-3


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_mgda_is_the_exact_min_norm_point_and_beats_torchjd_frank_wolfe(seed):
    g = rows(4, seed=seed)
    a = g @ g.T
    ours = make_weighting("mgda")(Objectives(updates=g))
    theirs = tjd.MGDAWeighting(epsilon=1e-12, max_iters=100_000)(a)
    assert float(ours @ a @ ours) <= float(theirs @ a @ theirs) * (1 + 1e-9)
    torch.testing.assert_close(direction_of(ours, g), direction_of(theirs, g), rtol=1e-2, atol=1e-3)
    # KKT of min_{λ∈Δ} ‖Gᵀλ‖²: g_iᵀd ≥ ‖d‖², with equality where λ_i > 0
    d = ours @ g
    dots, norm2 = g @ d, float(d @ d)
    assert (dots >= norm2 - 1e-9).all()
    torch.testing.assert_close(dots[ours > 1e-6], torch.full_like(dots[ours > 1e-6], norm2), atol=1e-8, rtol=1e-7)


def test_pcgrad_matches_torchjd_for_two_tasks_and_projects_conflicts():
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=F64)
    ours = make_weighting("pcgrad")(Objectives(updates=g))
    theirs = tjd.PCGradWeighting()(g @ g.T)
    torch.testing.assert_close(ours, theirs / 2)  # the paper's sum, divided by m = 2
    # hand: g1' = g1 - (g1·g2/|g2|²) g2 = (0.5, 0.5); g2' = g2 - (g2·g1/|g1|²) g1 = (0, 1)
    torch.testing.assert_close(ours @ g, torch.tensor([0.5, 1.5], dtype=F64) / 2)


def test_mean_and_rlw_match_torchjd():
    g = rows(5)
    torch.testing.assert_close(make_weighting("mean")(Objectives(updates=g)), tjd.MeanWeighting()(g @ g.T))
    torch.manual_seed(9)
    theirs = tjd.RandomWeighting()(g.to(torch.float64))
    ours = make_weighting("rlw", seed=9)(Objectives(updates=g))
    torch.testing.assert_close(ours, theirs)


def test_pcgrad_order_is_seeded():
    g = rows(5)
    a = make_weighting("pcgrad", seed=3)
    b = make_weighting("pcgrad", seed=3)
    for _ in range(3):
        torch.testing.assert_close(a(Objectives(updates=g)), b(Objectives(updates=g)))


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 5.0])
def test_fairgrad_agrees_with_torchjd(alpha):
    g = rows(4, p=10, seed=int(alpha * 10))
    ours = make_weighting("fairgrad", alpha=alpha)(Objectives(updates=g))
    theirs = tjd.FairGradWeighting(alpha=alpha)(g @ g.T)
    torch.testing.assert_close(ours, theirs / theirs.sum(), rtol=1e-6, atol=1e-9)


def test_nash_mtl_solves_its_condition_and_matches_fairgrad_alpha_1():
    g = rows(3, seed=4)
    a = g @ g.T
    w = make_weighting("nash-mtl")(Objectives(updates=g))
    torch.testing.assert_close(w, make_weighting("fairgrad", alpha=1.0)(Objectives(updates=g)))
    raw = w * math.sqrt(1.0 / float(w @ a @ w) * len(w))  # (A w)_i = 1 / w_i fixes the scale
    torch.testing.assert_close(a @ raw, 1.0 / raw, rtol=1e-7, atol=1e-9)


def _nash_residual(a: torch.Tensor, w: torch.Tensor) -> float:
    """max_i |(A s w)_i (s w)_i − 1| at the best scale s (s² = mean(1 / (w ⊙ A w)))."""
    w = w.to(F64)
    s = math.sqrt(float((1.0 / (w * (a @ w))).mean()))
    return float(((a @ (s * w)) * (s * w) - 1).abs().max())


@pytest.mark.parametrize("seed", [5, 6])
def test_nash_mtl_agrees_with_torchjd_when_cvxpy_is_installed(seed):
    """torchjd's NashMTL weighting is a matrix weighting: it is given the rows G (it forms
    G Gᵀ itself); given the Gramian it would solve the condition for A² instead."""
    pytest.importorskip("cvxpy")
    pytest.importorskip("ecos")
    g = rows(3, seed=seed) + 1.5 * rows(1, seed=seed + 100)  # correlated rows: a solution exists
    a = g @ g.T
    ours = make_weighting("nash-mtl")(Objectives(updates=g))
    weighting = tjd.NashMTL(n_tasks=3, max_norm=0.0, optim_niter=200).weighting
    theirs = weighting(g).to(F64)
    assert _nash_residual(a, theirs) < 1e-2  # torchjd really solved A w = 1/w (stops at ‖·‖ < 1e-3)
    assert _nash_residual(a, ours) <= 1e-10
    assert _nash_residual(a, ours) <= _nash_residual(a, theirs)
    torch.testing.assert_close(ours, theirs / theirs.sum(), rtol=1e-2, atol=1e-3)
    cosine = float(direction_of(ours, g) @ direction_of(theirs, g))
    assert cosine > 0.9999


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_nash_mtl_matches_an_independent_solution_of_its_condition(seed):
    """Navon et al. 2022: the Nash bargaining weights solve (G Gᵀ w)_i = 1 / w_i. Solved here by
    MINPACK's hybrid method (scipy.optimize.root) on w = e^x, not by our Newton solver, and in
    closed form for orthogonal rows (w_i = 1/‖g_i‖)."""
    from scipy.optimize import root

    g = rows(4, p=9, seed=seed) + 1.0 * rows(1, p=9, seed=seed + 50)
    a = (g @ g.T).numpy()
    solution = root(lambda x: a @ np.exp(x) - np.exp(-x), np.zeros(4), method="hybr", tol=1e-14)
    assert solution.success
    expected = torch.from_numpy(np.exp(solution.x))
    ours = make_weighting("nash-mtl")(Objectives(updates=g))
    torch.testing.assert_close(ours, expected / expected.sum(), rtol=1e-9, atol=1e-12)
    orthogonal = torch.diag(torch.tensor([1.0, 2.0, 0.5], dtype=F64)) @ torch.eye(3, 5, dtype=F64)
    inverse_norms = torch.tensor([1.0, 0.5, 2.0], dtype=F64)
    torch.testing.assert_close(make_weighting("nash-mtl")(Objectives(updates=orthogonal)),
                               inverse_norms / inverse_norms.sum())


def test_krum_with_euclidean_distances_matches_torchjd_without_ties():
    g = rows(6, seed=7)
    g[5] += 10.0  # an outlier
    for f, k in [(1, 1), (2, 2), (1, 3)]:
        ours = make_weighting("krum", byzantine=f, selected=k, distance="euclidean")(
            Objectives(updates=g, client_ids=list(range(6))))
        theirs = tjd.KrumWeighting(n_byzantine=f, n_selected=k)(g @ g.T)
        torch.testing.assert_close(ours, theirs)
        assert ours[5] == 0


def test_trimmed_mean_and_median_match_torchjd_and_hand_values():
    g = torch.tensor([[1.0, 10.0], [2.0, -5.0], [3.0, 0.0], [100.0, 1.0]], dtype=F64)
    r = make_weighting("trimmed-mean", trim=1).combine(Objectives(updates=g))
    d, w = r.direction, r.weights
    assert w is None
    torch.testing.assert_close(d, torch.tensor([2.5, 0.5], dtype=F64))
    torch.testing.assert_close(d, tjd.TrimmedMean(trim_number=1)(g))
    d = make_weighting("median").aggregate(Objectives(updates=g)).direction
    torch.testing.assert_close(d, torch.tensor([2.5, 0.5], dtype=F64))
    d = make_weighting("median").aggregate(Objectives(updates=g[:3])).direction
    torch.testing.assert_close(d, torch.tensor([2.0, 0.0], dtype=F64))
    small = make_weighting("trimmed-mean", trim=2)
    result = small.aggregate(Objectives(updates=g[:3]))
    d = result.direction
    assert result.info.fallback == "too-few-rows"
    torch.testing.assert_close(d, torch.tensor([2.0, 0.0], dtype=F64))


# -- q-FFL against the paper's update ---------------------------------------------------
@pytest.mark.parametrize("q", [0.0, 0.5, 1.0, 5.0])
def test_qffl_reproduces_the_q_fedavg_update(q):
    """Li et al. 2020, Algorithm 2 (q-FedAvg), written out with explicit local models."""
    lr = 0.1
    lip = 1 / lr
    w_global = torch.tensor([0.3, -0.2, 0.5], dtype=F64)
    w_local = w_global + rows(4, p=3, seed=11) * 0.05
    losses = torch.tensor([0.4, 1.3, 0.9, 2.2], dtype=F64)
    # the paper: Δw_k = L(wᵗ − w̄_k); Δ_k = F_k^q Δw_k; h_k = q F_k^(q−1) ‖Δw_k‖² + L F_k^q
    delta_w = lip * (w_global - w_local)
    f = losses + 1e-10
    deltas = f[:, None] ** q * delta_w
    h = q * f ** (q - 1) * (delta_w**2).sum(dim=1) + lip * f**q
    expected = w_global - deltas.sum(dim=0) / h.sum()

    updates = w_local - w_global
    direction = make_weighting("qffl", q=q, lipschitz=lip).combine(Objectives(updates=updates, losses=losses)).direction
    torch.testing.assert_close(w_global + direction, expected)
    if q == 0:
        torch.testing.assert_close(w_global + direction, w_local.mean(dim=0))


def test_qffl_gives_more_weight_to_higher_loss_clients():
    g = torch.eye(3, dtype=F64) * 0.01
    w = make_weighting("qffl", q=2.0, lipschitz=10.0)(
        Objectives(updates=g, losses=torch.tensor([0.5, 1.0, 2.0], dtype=F64))
    )
    assert w[0] < w[1] < w[2]
    torch.testing.assert_close(w[2] / w[1], torch.tensor(4.0, dtype=F64))  # (F_2/F_1)^q


# -- other cross-client rules, by hand --------------------------------------------------
def test_afl_weights_then_ascends_lambda_on_the_simplex():
    afl = make_weighting("afl", lr_lambda=0.1)
    obj = Objectives(losses=torch.tensor([1.0, 2.0, 3.0], dtype=F64), client_ids=[0, 1, 2])
    torch.testing.assert_close(afl(obj), torch.full((3,), 1 / 3, dtype=F64))
    # λ = Proj_Δ(1/3 + 0.1 F) = 1/3 + 0.1 F − 0.2 = (0.2333, 0.3333, 0.4333)
    torch.testing.assert_close(afl(obj), torch.tensor([0.7, 1.0, 1.3], dtype=F64) / 3)
    # a sampled subset is renormalised among itself
    sub = Objectives(losses=torch.tensor([0.0, 0.0], dtype=F64), client_ids=[0, 2])
    w = afl(sub)
    assert float(w.sum()) == pytest.approx(1.0) and w[0] < w[1]


def _official_term(w0: torch.Tensor, rounds: list[tuple[torch.Tensor, torch.Tensor]], t: float) -> list[torch.Tensor]:
    """litian96/TERM fair_flearn/flearn/trainers/tilting.py, ``Server.train`` written out: the
    models after each round, from (losses, local solutions) per round."""
    model, estimates, models = w0.clone(), 0.0, []
    for losses, solns in rounds:
        m = len(losses)
        max_l = float(losses.max())
        new_ = float(torch.exp(t * (losses - max_l)).mean())
        estimates = estimates * 0.5 + new_ * 0.5
        weights = torch.exp(t * (losses - max_l)) / (estimates * m)
        csolns = [model - weights[k] * (model - solns[k]) for k in range(m)]  # updates = before − soln
        model = sum(csolns) / m  # BaseFedarated.aggregate: a plain average
        models.append(model)
    return models


@pytest.mark.parametrize("tilt", [1.0, 0.1, -2.0])
@pytest.mark.parametrize("m", [3, 5])
def test_term_reproduces_the_official_update_over_three_rounds(tilt, m):
    """The default follows the authors' code: ẑ starts at 0 and the scaled models are averaged
    (a factor 1/m); before, fedmtl's steps were 2.5x larger in round 1 for m = 5, rising to m x."""
    gen = torch.Generator().manual_seed(m)
    w0 = torch.randn(4, generator=gen, dtype=F64)
    term = make_weighting("term", tilt=tilt)
    rounds, model = [], w0.clone()
    ours = []
    for _ in range(3):
        losses = torch.rand(m, generator=gen, dtype=F64) * 3
        updates = 0.1 * torch.randn(m, 4, generator=gen, dtype=F64)
        rounds.append((losses, model + updates))
        model = model + term.combine(Objectives(updates=updates, losses=losses)).direction
        ours.append(model)  # the next round's local solutions start from it (and from the official model)
    theirs = _official_term(w0, rounds, tilt)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_term_by_hand_and_the_mean_variant():
    f = torch.tensor([0.0, 1.0], dtype=F64)
    e = torch.exp(2.0 * (f - 1.0))
    f2 = torch.tensor([0.0, 0.5], dtype=F64)
    e2 = torch.exp(2.0 * (f2 - 0.5))
    official = make_weighting("term", tilt=2.0)
    z = 0.5 * float(e.mean())  # ẑ = ½·0 + ½ mean e
    torch.testing.assert_close(official(Objectives(losses=f)), e / (4 * z))
    z = 0.5 * z + 0.5 * float(e2.mean())
    torch.testing.assert_close(official(Objectives(losses=f2)), e2 / (4 * z))
    # variant "mean": ẑ starts at the first mean, weights e / (m ẑ); t = 0 is the mean
    mean = make_weighting("term", tilt=2.0, variant="mean")
    torch.testing.assert_close(mean(Objectives(losses=f)), e / (2 * e.mean()))
    z = 0.5 * float(e.mean()) + 0.5 * float(e2.mean())
    torch.testing.assert_close(mean(Objectives(losses=f2)), e2 / (2 * z))
    zero = make_weighting("term", tilt=0.0, variant="mean")
    torch.testing.assert_close(zero(Objectives(losses=f)), torch.full((2,), 0.5, dtype=F64))
    zero = make_weighting("term", tilt=0.0)  # official: 2/m in round 1, then → 1/m
    torch.testing.assert_close(zero(Objectives(losses=f)), torch.full((2,), 0.5, dtype=F64))
    torch.testing.assert_close(zero(Objectives(losses=f)), torch.full((2,), 1 / 3, dtype=F64))


@pytest.mark.parametrize("variant", ["official", "mean"])
def test_term_with_a_negative_tilt_over_spread_losses_gives_the_finite_weights(variant):
    """t = −2 over losses 400, 1, 0.5: e^(t (F − max F)) overflows (e^1598), though the weights,
    ratios of e, are finite: round 1 gives c · softmax(t F) (c = 2/m official, 1 mean)."""
    f = torch.tensor([400.0, 1.0, 0.5], dtype=F64)
    term = make_weighting("term", tilt=-2.0, variant=variant)
    weights = term(Objectives(losses=f))
    scale = 2 / 3 if variant == "official" else 1.0
    torch.testing.assert_close(weights, scale * torch.softmax(-2.0 * f, 0), rtol=1e-12, atol=0)
    assert bool(torch.isfinite(term(Objectives(losses=f + 3.0))).all())  # and the next round's
    # the state survives a checkpoint; one of an older fedmtl (ẑ itself, "z") still loads
    again = make_weighting("term", tilt=2.0, variant=variant)
    again.load_state_dict({"z": 0.25})
    older = make_weighting("term", tilt=2.0, variant=variant)
    older.load_state_dict(again.state_dict())
    g = torch.tensor([0.0, 1.0], dtype=F64)
    e = torch.exp(2.0 * (g - 1.0))
    z = 0.5 * 0.25 + 0.5 * float(e.mean())
    torch.testing.assert_close(older(Objectives(losses=g)), e / ((4 if variant == "official" else 2) * z))


def test_fedmgda_plus_epsilon_bounds_the_deviation_from_fedavg():
    g = torch.tensor([[1.0, 0.0], [0.0, 4.0], [-1.0, 0.2]], dtype=F64)
    n = torch.tensor([1.0, 1.0, 2.0], dtype=F64)
    norms = g.norm(dim=1)
    # ε = 0: λ = n / Σn, and the rows are normalised
    w = make_weighting("fedmgda+", epsilon=0.0)(Objectives(updates=g, num_examples=n))
    torch.testing.assert_close(w * norms, n / n.sum())
    # ε = 1: plain MGDA on the normalised rows
    w = make_weighting("fedmgda+", epsilon=1.0, iterations=5000)(Objectives(updates=g, num_examples=n))
    unit = g / norms[:, None]
    lam = make_weighting("mgda")(Objectives(updates=unit))
    torch.testing.assert_close(w * norms, lam, atol=1e-6, rtol=1e-5)
    # ε in between: |λ − λ0| ≤ ε
    w = make_weighting("fedmgda+", epsilon=0.1)(Objectives(updates=g, num_examples=n))
    assert float((w * norms - n / n.sum()).abs().max()) <= 0.1 + 1e-9


def test_fedfv_projects_low_loss_conflicts_and_keeps_the_mean_norm():
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=F64)
    losses = torch.tensor([0.2, 0.9], dtype=F64)  # client 1 has the higher loss
    fedfv = make_weighting("fedfv", alpha=0.5, tau=0)
    d = fedfv.aggregate(Objectives(updates=g, losses=losses)).direction
    # client 1 (2 − ⌈1·0.5⌉ = 1 highest loss) is exempt; client 0 is projected off client 1:
    # g0' = g0 − (g0·g1/|g1|²) g1 = (0.5, 0.5); mean = ((0.5 − 1)/2, (0.5 + 1)/2)
    expected = torch.tensor([-0.25, 0.75], dtype=F64)
    expected = expected / expected.norm() * g.mean(dim=0).norm()
    torch.testing.assert_close(d, expected)


def _official_fedfv(rounds, alpha: float, tau: int) -> list[torch.Tensor]:
    """WwZzz/easyFL algorithm/fedfv.py, ``Server.iterate`` written out (rounds t = 0, 1, …);
    returns each round's step −gt (fedmtl's direction; the code's model update is −gt)."""
    history: dict[int, torch.Tensor] = {}
    last_round: dict[int, int] = {}
    steps = []
    for t, (ids, updates, losses) in enumerate(rounds):
        grads = [-u for u in updates]  # grads = model − w
        for cid, gi in zip(ids, grads, strict=True):
            history[cid] = gi
            last_round[cid] = t
        order_grads = [gi.clone() for gi in grads]
        order = [x[1] for x in sorted(zip(losses.tolist(), range(len(grads)), strict=True), key=lambda x: x[0])]
        keep_original = order[math.ceil((len(order) - 1) * (1 - alpha)):] if alpha > 0 else []
        for i in range(len(order_grads)):
            if i in keep_original:
                continue
            for j in order:
                if j == i:
                    continue
                dot = grads[j] @ order_grads[i]
                if dot < 0:
                    order_grads[i] = order_grads[i] - grads[j] * dot / grads[j].norm() ** 2
        gt = sum(order_grads) / len(order_grads)
        if t >= tau:
            for k in range(tau - 1, -1, -1):
                gcs = [history[c] for c in history if last_round[c] == t - k and gt @ history[c] < 0]
                if gcs:
                    g_con = sum(gcs)
                    dot = gt @ g_con
                    if dot < 0:
                        gt = gt - g_con * dot / g_con.norm() ** 2
        gnorm = (sum(grads) / len(grads)).norm()
        steps.append(-(gt / gt.norm() * gnorm))
    return steps


@pytest.mark.parametrize("m", [4, 5])
@pytest.mark.parametrize("alpha, tau", [(0.1, 1), (0.1, 2), (0.0, 1), (0.5, 3)])
def test_fedfv_follows_the_official_code_round_by_round(m, alpha, tau):
    """Clients sampled from 7 over 5 rounds. easyFL exempts m − ⌈(m−1)(1−α)⌉ clients (1 for
    m = 4, 5 at α = 0.1, where fedmtl exempted ⌊αm⌋ = 0) and projects off each client's latest
    update, this round's included, from round τ on (fedmtl used the previous round's)."""
    gen = torch.Generator().manual_seed(100 * m + int(10 * alpha) + tau)
    rounds = []
    for _ in range(5):
        ids = torch.randperm(7, generator=gen)[:m].tolist()
        updates = torch.randn(m, 6, generator=gen, dtype=F64)
        updates[0] = -0.8 * updates[1] + 0.3 * torch.randn(6, generator=gen, dtype=F64)  # a conflict
        rounds.append((ids, updates, torch.rand(m, generator=gen, dtype=F64)))
    fedfv = make_weighting("fedfv", alpha=alpha, tau=tau)
    for (ids, updates, losses), expected in zip(rounds, _official_fedfv(rounds, alpha, tau), strict=True):
        d = fedfv.aggregate(Objectives(updates=updates, losses=losses, client_ids=ids)).direction
        torch.testing.assert_close(d, expected, rtol=1e-10, atol=1e-12)


def test_fedfv_exempts_as_many_clients_as_the_official_code():
    from fedmtl.aggregation.aggregators.fedfv import exempt_count

    def official(m, alpha):  # len(order[math.ceil((len(order) - 1) * (1 - alpha)):]) if alpha > 0
        return len(list(range(m))[math.ceil((m - 1) * (1 - alpha)):]) if alpha > 0 else 0

    assert [exempt_count(m, 0.1) for m in (4, 5, 10, 11, 20)] == [1, 1, 1, 2, 2]  # ⌊αm⌋: 0, 0, 1, 1, 2
    for m in range(1, 30):
        for alpha in (0.0, 0.05, 0.1, 0.2, 0.25, 1 / 3, 0.5, 0.9, 1.0):
            assert exempt_count(m, alpha) == official(m, alpha), (m, alpha)


def test_fedfv_gives_zero_on_rows_that_project_each_other_away():
    """± parallel rows, nobody exempt (α = 0): every projected row is 0 up to rounding. Before,
    the ~1e-17 remainder was rescaled to the mean's norm: a full step in an arbitrary
    direction, different for every order of the rows."""
    u = torch.tensor([0.3, -1.2, 0.7, 2.0], dtype=F64)
    g = torch.stack([u, -2 * u, 0.5 * u, -1.5 * u])
    losses = torch.tensor([0.4, 0.1, 0.9, 0.6], dtype=F64)
    directions = []
    for perm in ([0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]):
        rule = make_weighting("fedfv", alpha=0.0, tau=1)
        result = rule.aggregate(Objectives(updates=g[perm], losses=losses[perm], client_ids=perm))
        assert result.info.fallback == "zero-direction"
        directions.append(result.direction)
    for d in directions:
        torch.testing.assert_close(d, torch.zeros(4, dtype=F64), atol=0.0, rtol=0.0)
    # float32 rows: the rounding level is float32's
    result = make_weighting("fedfv", alpha=0.0).aggregate(Objectives(updates=g.float(), losses=losses))
    assert result.info.fallback == "zero-direction" and float(result.direction.abs().max()) == 0.0
    # a genuine direction is kept: one row not parallel
    g2 = g.clone()
    g2[2] = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=F64)
    result = make_weighting("fedfv", alpha=0.0).aggregate(Objectives(updates=g2, losses=losses))
    assert result.info.fallback == "" and float(result.direction.norm()) > 0.1


def test_propfair_weights_by_inverse_gap_to_the_baseline():
    losses = torch.tensor([1.0, 2.0, 2.95], dtype=F64)  # M − F = 2, 1, 0.05
    w = make_weighting("propfair", baseline=3.0)(Objectives(losses=losses))
    # huawei-noah/Federated-Learning FairFL PropFair.log_loss: base − loss < ε → loss / base
    raw = torch.tensor([1 / 2.0, 1 / 1.0, 1 / 3.0], dtype=F64)
    torch.testing.assert_close(w, raw / raw.sum())
    # huber=True: loss / ε, weight 1/ε = 5 (fedmtl's weight before it followed the code)
    w = make_weighting("propfair", baseline=3.0, huber=True)(Objectives(losses=losses))
    raw = torch.tensor([1 / 2.0, 1 / 1.0, 1 / 0.2], dtype=F64)
    torch.testing.assert_close(w, raw / raw.sum())


def test_propfair_weights_are_the_gradients_of_the_papers_code_surrogate():
    """The weight of client k is d(surrogate)/dF_k of FairFL's ``log_loss``: −log(1 − F/M) where
    M − F ≥ ε, else F/M (or F/ε with huber), differentiated by autograd."""
    baseline, epsilon = 2.0, 0.2
    for huber in (False, True):
        losses = torch.tensor([0.3, 1.0, 1.75, 1.85, 2.4], dtype=F64, requires_grad=True)
        surrogate = []
        for loss in losses:
            if baseline - loss < epsilon:
                surrogate.append(loss / epsilon if huber else loss / baseline)
            else:
                surrogate.append(-torch.log(1 - loss / baseline))
        (grad,) = torch.autograd.grad(sum(surrogate), losses)
        w = make_weighting("propfair", baseline=baseline, huber=huber)(Objectives(losses=losses.detach()))
        torch.testing.assert_close(w, grad / grad.sum())


def test_fedmgda_plus_reports_whether_its_iterations_converged():
    g = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [-0.5, 0.1, 1.0], [0.2, -1.0, 0.3]], dtype=F64)
    n = torch.tensor([1.0, 2.0, 1.0, 3.0], dtype=F64)
    converged = make_weighting("fedmgda+", epsilon=0.5).weigh(Objectives(updates=g, num_examples=n))
    assert converged.info.fallback == "" and converged.info.residual < 1e-12
    assert 1 <= converged.info.iterations < 500
    short = make_weighting("fedmgda+", epsilon=0.5, iterations=2).weigh(Objectives(updates=g, num_examples=n))
    assert short.info.fallback == "not-converged" and short.info.iterations == 2
    assert short.info.residual > 1e-12
    assert float((short.weights - converged.weights).abs().max()) > 1e-6


def test_afl_documents_which_model_it_evaluates():
    """The paper outputs the running mean of the iterates; a rule cannot, and the docstring says
    plainly that fedmtl evaluates the last iterate."""
    doc = " ".join(type(make_weighting("afl")).__doc__.split())
    assert "running mean" in doc and "evaluates the last iterate" in doc


def test_famo_steps_its_logits_as_torch_adam_with_weight_decay():
    """FAMO's code: ``torch.optim.Adam([w], lr=w_lr, weight_decay=gamma)`` on the logits with the
    gradient J_softmaxᵀ(log L_prev − log L_now): the decay is added to the gradient."""
    famo = make_weighting("famo", lr=0.025, weight_decay=0.3)
    logits = torch.zeros(3, dtype=F64, requires_grad=True)
    adam = torch.optim.Adam([logits], lr=0.025, weight_decay=0.3)
    sequence = [[1.0, 2.0, 0.5], [0.7, 2.1, 0.4], [0.6, 1.5, 0.45], [0.5, 1.4, 0.5]]
    keys = ["x", "y", "z"]
    famo(Objectives(losses=torch.tensor(sequence[0], dtype=F64), task_ids=keys))
    for previous, now in zip(sequence, sequence[1:], strict=False):
        famo(Objectives(losses=torch.tensor(now, dtype=F64), task_ids=keys))
        delta = torch.tensor(previous, dtype=F64).log() - torch.tensor(now, dtype=F64).log()
        adam.zero_grad()
        (logits.grad,) = torch.autograd.grad(torch.softmax(logits, 0), logits, grad_outputs=delta)
        adam.step()
        torch.testing.assert_close(torch.tensor([famo.logits[k] for k in keys], dtype=F64), logits.detach())


# -- loss-based rules, by hand ----------------------------------------------------------
def test_rlw_is_a_seeded_softmax_of_gaussians():
    w = make_weighting("rlw", seed=5)(Objectives(losses=torch.ones(4, dtype=F64)))
    gen = torch.Generator().manual_seed(5)
    torch.testing.assert_close(w, torch.softmax(torch.randn(4, generator=gen, dtype=F64), dim=0))


def test_dwa_is_uniform_for_two_epochs_then_follows_loss_ratios():
    dwa = make_weighting("dwa", temperature=2.0)

    def obj(a, b):
        return Objectives(losses=torch.tensor([a, b], dtype=F64), task_ids=["x", "y"])

    for a, b in [(1.0, 1.0), (0.5, 1.0)]:
        torch.testing.assert_close(dwa(obj(a, b)), torch.full((2,), 0.5, dtype=F64))
        dwa.end_epoch()
    r = torch.tensor([0.5 / 1.0, 1.0 / 1.0], dtype=F64)
    torch.testing.assert_close(dwa(obj(0.4, 0.9)), torch.softmax(r / 2.0, dim=0))


def test_famo_weights_inverse_losses_then_moves_logits_towards_the_slower_task():
    famo = make_weighting("famo")

    def obj(a, b):
        return Objectives(losses=torch.tensor([a, b], dtype=F64), task_ids=["x", "y"])

    w = famo(obj(1.0, 2.0))
    torch.testing.assert_close(w, torch.tensor([2 / 3, 1 / 3], dtype=F64))
    famo(obj(0.5, 2.0))  # task x improved, y did not: y's logit must grow
    assert famo.logits["y"] > famo.logits["x"]


def test_uncertainty_weights_and_log_variance_step():
    unc = make_weighting("uncertainty", lr=0.5)
    obj = Objectives(losses=torch.tensor([2.0, 0.5], dtype=F64), task_ids=["x", "y"])
    torch.testing.assert_close(unc(obj), torch.full((2,), 0.5, dtype=F64))
    # s ← s − lr (1 − e^{−s} L)/T = 0 − 0.5 (1 − L)/2
    assert unc.log_vars == pytest.approx({"x": 0.25, "y": -0.125})
    torch.testing.assert_close(unc(obj), torch.exp(-torch.tensor([0.25, -0.125], dtype=F64)) / 2)


def test_gradnorm_raises_the_weight_of_the_task_that_trains_slower():
    gn = make_weighting("gradnorm", asymmetry=1.5, lr=0.1)
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=F64)
    gn(Objectives(updates=g, losses=torch.tensor([1.0, 1.0], dtype=F64), task_ids=["x", "y"]))
    w = gn(Objectives(updates=g, losses=torch.tensor([0.2, 1.0], dtype=F64), task_ids=["x", "y"]))
    torch.testing.assert_close(w, torch.full((2,), 0.5, dtype=F64))  # weights from before the step
    assert gn.task_weights["y"] > gn.task_weights["x"]
    assert sum(gn.task_weights.values()) == pytest.approx(2.0)


def test_db_mtl_balances_log_loss_gradient_norms():
    g = torch.tensor([[3.0, 0.0], [0.0, 1.0]], dtype=F64)
    losses = torch.tensor([2.0, 0.5], dtype=F64)
    r = make_weighting("db-mtl", beta=0.0).aggregate(Objectives(updates=g, losses=losses, task_ids=["x", "y"]))
    d, w = r.direction, None
    assert w is None
    # ĝ = g / L = (1.5, 0), (0, 2); scaled to the largest norm 2, summed, divided by T = 2
    torch.testing.assert_close(d, torch.tensor([1.0, 1.0], dtype=F64))


@pytest.mark.parametrize("scale", [1e-300, 1e-40, 1e-31, 1e-29, 1.0, 1e200])
def test_db_mtl_rescales_rows_of_any_size_to_the_largest_norm(scale):
    """A clamp of the norms at 1e-30 left rows below it unscaled (at 1e-31 the direction was
    (1e-3, 3e-3, 5e-4) × scale, not (0.1, 0.1, 0.1) × scale), and squared norms under- or
    overflowed at 1e-300 and 1e200: DB-MTL is homogeneous at every scale."""
    g = torch.tensor([[1.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 0.5]], dtype=F64) * scale
    losses = torch.ones(3, dtype=F64)
    d = make_weighting("db-mtl").aggregate(Objectives(updates=g, losses=losses, task_ids=["a", "b", "c"])).direction
    torch.testing.assert_close(d / scale, torch.full((3,), 0.1, dtype=F64), rtol=1e-12, atol=0)


def test_simplex_projections():
    torch.testing.assert_close(project_simplex(torch.tensor([0.3, 0.2, 0.25], dtype=F64)),
                               torch.tensor([0.3833333333, 0.2833333333, 0.3333333333], dtype=F64))
    torch.testing.assert_close(project_simplex(torch.tensor([5.0, -1.0], dtype=F64)),
                               torch.tensor([1.0, 0.0], dtype=F64))
    lower = torch.tensor([0.2, 0.2, 0.2], dtype=F64)
    upper = torch.tensor([0.5, 0.5, 0.5], dtype=F64)
    x = project_simplex_box(torch.tensor([1.0, 0.0, 0.0], dtype=F64), lower, upper)
    torch.testing.assert_close(x, torch.tensor([0.5, 0.25, 0.25], dtype=F64))


def test_mgda_weights_on_pareto_stationary_rows_are_the_least_norm_ones():
    """8 rows in R^6 with 0 in their hull: every λ ≥ 0 with Gᵀλ = 0, Σλ = 1 is optimal; we
    return the one of least norm, so the weights follow the rows under permutation."""
    gen = torch.Generator().manual_seed(7919)
    g = torch.randn(8, 6, generator=gen, dtype=F64)
    perm = torch.randperm(8, generator=gen)
    w = make_weighting("mgda")(Objectives(updates=g))
    assert float((w @ g).norm()) < 1e-9
    torch.testing.assert_close(make_weighting("mgda")(Objectives(updates=g[perm])), w[perm], rtol=1e-7, atol=1e-10)
    # all weights positive here, so the least-norm λ on {Gᵀλ = 0, Σλ = 1} is the normalised
    # projection of the all-ones vector onto null(Gᵀ)
    assert (w > 1e-6).all()
    null = torch.linalg.svd(g.T).Vh[6:]  # orthonormal rows spanning {λ : Gᵀλ = 0}
    projection = null.T @ (null @ torch.ones(8, dtype=F64))
    torch.testing.assert_close(w, projection / projection.sum(), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fedmgda_plus_reaches_the_exact_qp_optimum_on_nearly_parallel_updates(seed):
    """Clients whose updates share a direction (the common case) make the cosine matrix nearly
    rank one: plain projected gradient stopped short of the optimum on almost every round with
    the default budget (1-2.5% off the step; found by an audit). The default solve converges and
    its step is the exact QP's (quadprog's active-set solution, an independent method)."""
    from quadprog import solve_qp

    gen = np.random.default_rng(seed)
    m, eps = 20, 0.1
    u = gen.normal(size=100) + gen.normal(size=(m, 100)) * 0.2
    n = gen.integers(20, 500, m).astype(float)
    result = make_weighting("fedmgda+", epsilon=eps).weigh(
        Objectives(updates=torch.tensor(u), num_examples=torch.tensor(n)))
    assert not result.info.fallback, result.info
    g = u / np.linalg.norm(u, axis=1, keepdims=True)
    prior = n / n.sum()
    lower, upper = np.maximum(prior - eps, 0), np.minimum(prior + eps, 1)
    constraints = np.hstack([np.ones((m, 1)), np.eye(m), -np.eye(m)])
    exact = solve_qp(g @ g.T + 1e-12 * np.eye(m), np.zeros(m), constraints,
                     np.concatenate([[1.0], lower, -upper]), meq=1)[0]
    step = result.weights.numpy() @ u  # w_k = λ_k / ‖u_k‖
    np.testing.assert_allclose(step, exact @ g, rtol=1e-6, atol=1e-9)
