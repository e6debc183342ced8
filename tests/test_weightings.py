"""Each weighting: cross-checks against torchjd where it has the method, hand-computed cases
for ours (q-FFL against the paper's update formula)."""

from __future__ import annotations

import math

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
    "name, reference",
    [
        ("upgrad", tjd.UPGradWeighting),
        ("dualproj", tjd.DualProjWeighting),
        ("imtl-g", tjd.IMTLGWeighting),
        ("aligned-mtl", tjd.AlignedMTLWeighting),
        ("cagrad", lambda: tjd.CAGradWeighting(c=0.4)),
    ],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_same_weights_as_torchjd(name, reference, seed):
    """Same weights, scale included (fedmtl keeps torchjd's scale for these rules)."""
    g = rows(4, seed=seed)
    ours = make_weighting(name)(Objectives(updates=g))
    theirs = reference()(g @ g.T)
    torch.testing.assert_close(ours, theirs.to(ours), rtol=1e-4, atol=1e-6)


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


def test_nash_mtl_agrees_with_torchjd_when_cvxpy_is_installed():
    pytest.importorskip("cvxpy")
    g = rows(3, seed=5)
    ours = make_weighting("nash-mtl")(Objectives(updates=g))
    a = g @ g.T
    theirs = tjd.NashMTL(n_tasks=3, optim_niter=200).weighting(a)

    def residual(w):  # best scale s of w for (A s w) = 1 / (s w): s² = mean(1 / (w ⊙ A w))
        w = w.to(F64)
        s = math.sqrt(float((1.0 / (w * (a @ w))).mean()))
        return float(((a @ (s * w)) * (s * w) - 1).abs().max())

    assert residual(ours) <= residual(theirs) + 1e-12
    cosine = float(direction_of(ours, g) @ direction_of(theirs.to(F64), g))
    assert cosine > 0.99


def test_krum_matches_torchjd_without_ties():
    g = rows(6, seed=7)
    g[5] += 10.0  # an outlier
    for f, k in [(1, 1), (2, 2), (1, 3)]:
        ours = make_weighting("krum", byzantine=f, selected=k)(Objectives(updates=g, client_ids=list(range(6))))
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


def test_term_tilts_towards_high_losses_and_keeps_a_running_normaliser():
    term = make_weighting("term", tilt=2.0)
    f = torch.tensor([0.0, 1.0], dtype=F64)
    e = torch.exp(2.0 * (f - 1.0))
    w1 = term(Objectives(losses=f))
    torch.testing.assert_close(w1, e / (2 * e.mean()))
    f2 = torch.tensor([0.0, 0.5], dtype=F64)
    e2 = torch.exp(2.0 * (f2 - 0.5))
    z = 0.5 * float(e.mean()) + 0.5 * float(e2.mean())
    torch.testing.assert_close(term(Objectives(losses=f2)), e2 / (2 * z))
    zero = make_weighting("term", tilt=0.0)
    torch.testing.assert_close(zero(Objectives(losses=f)), torch.full((2,), 0.5, dtype=F64))


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
    # client 1 (α m = 1 highest loss) is exempt; client 0 is projected off client 1:
    # g0' = g0 − (g0·g1/|g1|²) g1 = (0.5, 0.5); mean = ((0.5 − 1)/2, (0.5 + 1)/2)
    expected = torch.tensor([-0.25, 0.75], dtype=F64)
    expected = expected / expected.norm() * g.mean(dim=0).norm()
    torch.testing.assert_close(d, expected)
    # with history: next round's direction is projected off last round's conflicting updates
    fedfv = make_weighting("fedfv", alpha=0.0, tau=1)
    fedfv.combine(Objectives(updates=torch.tensor([[0.0, -1.0], [0.0, -1.0]], dtype=F64), losses=losses))
    d = fedfv.aggregate(Objectives(updates=torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=F64), losses=losses)).direction
    assert abs(float(d[1])) < 1e-12 and float(d[0]) > 0


def test_propfair_weights_by_inverse_gap_to_the_baseline():
    w = make_weighting("propfair", baseline=3.0)(Objectives(losses=torch.tensor([1.0, 2.0, 2.95], dtype=F64)))
    raw = torch.tensor([1 / 2.0, 1 / 1.0, 1 / 0.2], dtype=F64)
    torch.testing.assert_close(w, raw / raw.sum())


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
