"""Federated and robust server rules (Bulyan, FSMGDA, FedGradNorm, RFA, centered clipping),
each cross-checked against a hand computation, its paper's update, or another implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedmtl.aggregation import Aggregator, Objectives, Weighting, make_rule
from fedmtl.aggregation.aggregators.bulyan import closest_to_median_mean
from fedmtl.aggregation.plans import AggregationPlan, Row

F64 = torch.float64


def rows(m: int, p: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(m, p, generator=torch.Generator().manual_seed(seed), dtype=F64)


def batch(updates: torch.Tensor, losses=None, counts=None, tasks=None) -> Objectives:
    m = len(updates)
    return Objectives(
        updates=updates,
        losses=None if losses is None else torch.as_tensor(losses, dtype=F64),
        num_examples=None if counts is None else torch.as_tensor(counts, dtype=F64),
        client_ids=[] if tasks is not None else list(range(m)),
        task_ids=tasks or [],
    )


def test_every_rule_is_a_server_rule_of_the_right_kind():
    kinds = {"bulyan": Aggregator, "centered-clipping": Aggregator, "rfa": Weighting, "fsmgda": Weighting,
             "fedgradnorm": Weighting}
    for name, kind in kinds.items():
        rule = make_rule(name)
        assert isinstance(rule, kind) and rule.scope == "server", name
        assert rule.needs_updates, name
    assert make_rule("fedgradnorm").needs_losses and not make_rule("rfa").needs_losses


# -- bulyan --------------------------------------------------------------------------------
def test_bulyan_matches_a_hand_computation():
    """m = 7, f = 1: θ = 5 picks, β = 3 (worked out in the comments)."""
    x = torch.tensor([[0.0], [1.0], [3.0], [4.0], [9.0], [20.0], [-30.0]], dtype=F64)
    rule = make_rule("bulyan", byzantine=1)
    # Krum scores with squared distances to the max(1, |R| - 3) nearest remaining rows:
    #   R = all, 4 nearest:   0:107  1:78  3:50  4:51  9:206 ...           -> 3
    #   R \ {3}, 3 nearest:   0:98   1:74  4:50  9:170 ...                 -> 4
    #   R \ {3,4}, 2 nearest: 0:82   1:65  9:145 20:482 -30:...            -> 1
    #   R = {0,9,20,-30}, 1:  0:81   9:81 (tie: key "0" < "4")             -> 0
    #   R = {9,20,-30}, 1:    9:121  20:121 (tie: key "4" < "5")           -> 9
    assert rule.selection(batch(x)) == [2, 3, 1, 0, 4]
    # sorted {0,1,3,4,9}, median 3; windows of β = 3: [0,1,3] costs 5, [1,3,4] 3, [3,4,9] 7
    result = rule.aggregate(batch(x))
    torch.testing.assert_close(result.direction, torch.tensor([8 / 3], dtype=F64))
    assert result.info.fallback == ""


@pytest.mark.parametrize("m, f, seed", [(7, 1, 0), (9, 1, 1), (11, 2, 2), (12, 2, 3), (15, 3, 4)])
def test_bulyan_agrees_with_flower(m, f, seed):
    from flwr.server.strategy.aggregate import aggregate_bulyan, aggregate_krum

    g = rows(m, p=8, seed=seed)
    g[0] += 50.0  # an outlier
    results = [([r.numpy().copy()], 1) for r in g]
    expected = aggregate_bulyan(results, num_malicious=f, aggregation_rule=aggregate_krum, to_keep=0)[0]
    ours = make_rule("bulyan", byzantine=f)(batch(g))
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("m", "f", "k", "seed"), [(6, 1, 1, 0), (9, 2, 1, 1), (9, 2, 3, 2), (12, 3, 4, 3)])
def test_krum_agrees_with_flower(m, f, k, seed):
    """Krum and Multi-Krum score squared distances (Blanchard et al. 2017), as Flower does."""
    from flwr.server.strategy.aggregate import aggregate_krum

    g = rows(m, p=8, seed=seed)
    g[0] += 50.0  # an outlier
    results = [([r.numpy().copy()], 1) for r in g]
    expected = aggregate_krum(results, num_malicious=f, to_keep=k if k > 1 else 0)[0]
    ours = make_rule("krum", byzantine=f, selected=k)(batch(g)) @ g
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_krum_scores_squared_distances_unless_told_otherwise():
    """Rows (0, 0), (±1, 0), (2.7, 0), (2.8, 0), f = 1: the sums of the 2 nearest squared
    distances are 2, 3.89, 5, 2.9, 3.25 (row 0 wins); of plain distances 2, 2.7, 3, 1.8, 1.9
    (row 3 wins)."""
    g = torch.tensor([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [2.7, 0.0], [2.8, 0.0]], dtype=torch.float64)
    assert int(torch.argmax(make_rule("krum", byzantine=1)(batch(g)))) == 0
    assert int(torch.argmax(make_rule("krum", byzantine=1, distance="euclidean")(batch(g)))) == 3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bulyan_selection_is_recursive_krum_as_torchjd_and_fedmtl_krum_compute_it(seed):
    from torchjd.aggregation import KrumWeighting

    m, f = 11, 2
    g = rows(m, seed=seed)
    obj = batch(g)
    chosen = make_rule("bulyan", byzantine=f, distance="euclidean").selection(obj)
    assert len(chosen) == m - 2 * f
    first = int(torch.argmax(KrumWeighting(n_byzantine=f)(obj.gramian)))
    euclidean = make_rule("krum", byzantine=f, distance="euclidean")
    assert chosen[0] == first == int(torch.argmax(euclidean(obj)))
    remaining = list(range(m))
    for pick in chosen:
        if len(remaining) < f + 3:  # Krum itself is undefined; Bulyan keeps one neighbour
            break
        sub = Objectives(updates=g[remaining], client_ids=remaining)
        assert remaining[int(torch.argmax(euclidean(sub)))] == pick
        remaining.remove(pick)


def test_bulyan_falls_back_to_the_coordinatewise_median_below_4f_plus_3_rows():
    g = rows(6)
    result = make_rule("bulyan", byzantine=1).aggregate(batch(g))
    assert result.info.fallback == "too-few-rows"
    torch.testing.assert_close(result.direction, make_rule("median")(batch(g)))
    assert make_rule("bulyan", byzantine=0).aggregate(batch(g)).info.fallback == ""  # f = 0: the mean
    torch.testing.assert_close(make_rule("bulyan", byzantine=0)(batch(g)), g.mean(dim=0))


def test_bulyan_averages_exactly_tied_windows_and_ignores_row_order():
    values = torch.tensor([[0.0], [1.0], [2.0]], dtype=F64)  # β = 2: [0,1] and [1,2] tie around 1
    torch.testing.assert_close(closest_to_median_mean(values, 2), torch.tensor([1.0], dtype=F64))
    g = rows(9, seed=5)
    rule = make_rule("bulyan")
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(0))
    shuffled = Objectives(updates=g[perm], client_ids=perm.tolist())
    torch.testing.assert_close(rule(batch(g)), rule(shuffled))


# -- fsmgda --------------------------------------------------------------------------------
def test_fsmgda_is_the_min_norm_point_of_the_aggregated_task_updates_by_hand():
    g = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=F64)
    result = make_rule("fsmgda").combine(batch(g, tasks=["a", "b"]))
    # two rows: λ1 = (g2 - g1)·g2 / ‖g1 - g2‖² = 4 / 5
    torch.testing.assert_close(result.weights, torch.tensor([0.8, 0.2], dtype=F64))
    torch.testing.assert_close(result.direction, torch.tensor([0.8, 0.4], dtype=F64))
    torch.testing.assert_close(g @ result.direction, torch.tensor([0.8, 0.8], dtype=F64))  # common descent


def test_fsmgda_as_the_task_level_of_tasks_then_clients_is_the_papers_server_step():
    gen = torch.Generator().manual_seed(4)
    parts = {(c, t): torch.randn(5, generator=gen, dtype=F64) for c in range(3) for t in ("a", "b")}
    rows_ = [Row(c, t, u, 1.0, 10.0) for (c, t), u in parts.items()]
    plan = AggregationPlan("tasks-then-clients", make_rule("mean"), make_rule("fsmgda"))
    # the paper: Δ^s = mean over the clients holding s; λ = argmin_Δ ‖Σ λ_s Δ^s‖²; d = Σ λ_s Δ^s
    d_a = torch.stack([parts[(c, "a")] for c in range(3)]).mean(dim=0)
    d_b = torch.stack([parts[(c, "b")] for c in range(3)]).mean(dim=0)
    lam = float(((d_b - d_a) @ d_b) / ((d_a - d_b) @ (d_a - d_b)))
    lam = min(max(lam, 0.0), 1.0)
    expected = 2 * (lam * d_a + (1 - lam) * d_b)  # × the task count cancels the clients' 1/T
    torch.testing.assert_close(plan(rows_).direction, expected)


def test_fsmgda_solves_the_same_program_as_mgda_without_normalising_rows():
    g = rows(4, seed=7) * torch.tensor([[1.0], [10.0], [0.1], [3.0]], dtype=F64)
    obj = batch(g, tasks=list("abcd"))
    torch.testing.assert_close(make_rule("fsmgda")(obj), make_rule("mgda")(obj))
    assert make_rule("mgda").scope == "both" and make_rule("fsmgda").scope == "server"


# -- fedgradnorm ---------------------------------------------------------------------------
def test_fedgradnorm_takes_the_papers_step_by_hand():
    g = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=F64)  # ‖g‖ = (1, 2)
    rule = make_rule("fedgradnorm", asymmetry=1.5, lr=0.025)
    first = rule(batch(g, losses=[1.0, 1.0], tasks=["a", "b"]))
    torch.testing.assert_close(first, torch.tensor([0.5, 0.5], dtype=F64))  # p = 1 on the first round
    # round 1: G = (1, 2), Ḡ = 1.5, r = (1, 1): target 1.5; p ← (1 + .025·1, 1 − .025·2), Σp = 2
    p = np.array([1.025, 0.95])
    p = p * 2 / p.sum()
    assert rule.task_weights == pytest.approx({"a": p[0], "b": p[1]})
    second = rule(batch(g, losses=[0.5, 1.0], tasks=["a", "b"]))
    torch.testing.assert_close(second, torch.tensor(p / 2, dtype=F64))
    # round 2: L̃ = (.5, 1), r = (2/3, 4/3); G = p·‖g‖, target = Ḡ r^1.5
    norms = np.array([1.0, 2.0])
    big_g = p * norms
    target = big_g.mean() * (np.array([2 / 3, 4 / 3]) ** 1.5)
    stepped = p - 0.025 * np.sign(big_g - target) * norms
    stepped = stepped * 2 / stepped.sum()
    assert rule.task_weights == pytest.approx({"a": stepped[0], "b": stepped[1]})
    assert rule.initial_losses == {"a": 1.0, "b": 1.0}


def test_fedgradnorm_resumes_exactly_from_its_state_dict():
    gen = torch.Generator().manual_seed(1)
    batches = [batch(torch.randn(3, 4, generator=gen, dtype=F64), torch.rand(3, generator=gen, dtype=F64) + 0.1,
                     tasks=["a", "b", "c"]) for _ in range(4)]
    original = make_rule("fedgradnorm")
    for obj in batches[:2]:
        original(obj)
    resumed = make_rule("fedgradnorm")
    resumed.load_state_dict(original.state_dict())
    for obj in batches[2:]:
        torch.testing.assert_close(original(obj), resumed(obj))


# -- rfa -----------------------------------------------------------------------------------
def test_rfa_one_iteration_is_the_official_codes_update():
    g = rows(5, seed=3)
    counts = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0], dtype=F64)
    result = make_rule("rfa", iterations=1).weigh(batch(g, counts=counts))
    alpha = counts / counts.sum()
    z0 = alpha @ g
    beta = alpha / (g - z0).norm(dim=1).clamp_min(1e-5)
    torch.testing.assert_close(result.weights, beta / beta.sum())
    assert result.info.iterations == 1


def test_rfa_weighted_sum_minimises_the_weighted_distance_sum():
    from scipy.optimize import minimize

    g = rows(5, p=3, seed=8)
    counts = np.array([3.0, 1.0, 1.0, 2.0, 5.0])
    alpha = counts / counts.sum()
    points = g.numpy()

    def objective(z: np.ndarray) -> float:
        return float(alpha @ np.linalg.norm(points - z, axis=1))

    reference = minimize(objective, points.mean(axis=0), method="Nelder-Mead",
                         options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000}).x
    result = make_rule("rfa", iterations=500, nu=1e-12, ftol=1e-15).combine(batch(g, counts=counts))
    assert result.weights.min() >= 0 and float(result.weights.sum()) == pytest.approx(1.0)
    assert result.info.fallback == ""
    np.testing.assert_allclose(result.direction.numpy(), reference, atol=1e-6)
    assert objective(result.direction.numpy()) <= objective(reference) + 1e-10


def test_rfa_reports_non_convergence_and_resists_an_outlier():
    g = rows(6, seed=2)
    g[0] = 1e6
    short = make_rule("rfa").weigh(batch(g))  # the authors' 4 iterations, uniform α without counts
    assert short.info.iterations == 4 and short.info.fallback == "not-converged" and short.info.residual > 1e-6
    assert float(short.weights[0]) < 1e-3  # from 1/6: each iteration pulls z towards the cluster
    long = make_rule("rfa", iterations=200).weigh(batch(g))
    assert long.info.fallback == "" and long.info.residual < 1e-6
    assert float(long.weights[0]) < 1e-6 and float((long.weights @ g).norm()) < 3
    identical = make_rule("rfa").weigh(batch(torch.ones(3, 4, dtype=F64)))
    assert identical.info.fallback == "" and identical.info.iterations == 0


# -- centered clipping ---------------------------------------------------------------------
def test_centered_clipping_by_hand_over_two_rounds():
    g = torch.tensor([[3.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=F64)
    rule = make_rule("centered-clipping", tau=1.0)
    # round 1 from v = 0: clip(3, 0) = (1, 0); the others have norm ≤ 1: v = (0, 1/3)
    torch.testing.assert_close(rule(batch(g)), torch.tensor([0.0, 1 / 3], dtype=F64))
    # round 2 from v = (0, 1/3)
    v = np.array([0.0, 1 / 3])
    step = np.zeros(2)
    for u in g.numpy():
        diff = u - v
        step += diff * min(1.0, 1.0 / math.hypot(*diff))
    np.testing.assert_allclose(rule(batch(g)).numpy(), v + step / 3)


def test_centered_clipping_iterations_repeat_the_step_and_a_wide_radius_gives_the_mean():
    g = rows(5, seed=6) * 3
    twice = make_rule("centered-clipping", tau=0.5, iterations=2)(batch(g))
    once = make_rule("centered-clipping", tau=0.5)
    once(batch(g))
    torch.testing.assert_close(twice, once(batch(g)))
    torch.testing.assert_close(make_rule("centered-clipping")(batch(g)), g.mean(dim=0))  # τ = 100, v = 0


def test_centered_clipping_keeps_one_center_per_task_group_and_resumes_from_its_state():
    gen = torch.Generator().manual_seed(2)
    parts = [Row(c, t, 5 * torch.randn(4, generator=gen, dtype=F64), 1.0, 1.0) for c in range(3) for t in "ab"]
    plan = AggregationPlan("tasks-then-clients", make_rule("centered-clipping", tau=1.0), make_rule("mean"))
    plan(parts)  # each task's group has its own instance of the rule (fedmtl.aggregation.plans)
    assert {task: sorted(rule.centers) for task, rule in plan.groups.items()} == {"a": ["task:a"], "b": ["task:b"]}
    again = AggregationPlan("tasks-then-clients", make_rule("centered-clipping", tau=1.0), make_rule("mean"))
    again.load_state_dict(plan.state_dict())
    torch.testing.assert_close(plan(parts).direction, again(parts).direction)


# -- every plan ----------------------------------------------------------------------------
@pytest.mark.parametrize("plan", ["clients", "flat", "clients-then-tasks", "tasks-then-clients"])
def test_every_rule_runs_in_every_server_slot_of_every_plan(plan):
    from fedmtl.aggregation.plans import WHOLE

    gen = torch.Generator().manual_seed(3)
    parts = [Row(c, t, torch.randn(5, generator=gen, dtype=F64), 1.0 + c, 10.0 * (c + 1))
             for c in range(8) for t in "ab"]
    whole = [Row(c, WHOLE, parts[2 * c].update + parts[2 * c + 1].update, 1.0 + c, 10.0 * (c + 1)) for c in range(8)]
    for name in ("bulyan", "fsmgda", "fedgradnorm", "rfa", "centered-clipping"):
        for client, task in ((name, "mean"), ("mean", name)):
            p = AggregationPlan(plan, make_rule(client), make_rule(task))
            for _ in range(2):
                result = p(whole if plan == "clients" else parts)
                assert result.direction.shape == (5,) and torch.isfinite(result.direction).all(), (name, plan)
