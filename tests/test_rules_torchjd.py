"""The rules taken from torchjd 0.18 (ExcessMTL, GradVac, PCD, ConFIG, GradDrop, CR-MOGM): each
against torchjd's own implementation over sequences of calls (several seeds, m = 2..5), plus
cases computed by hand from the papers' formulas and state round-trips."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torchjd.aggregation as tjd
from torchjd._linalg._dual_cone import QuadprogProjector

from fedmtl.aggregation import Objectives, WeightingParamsError, make_rule

F64 = torch.float64
SEEDS = (0, 1, 2, 3)
SIZES = (2, 3, 4, 5)


def sequence(seed: int, m: int, calls: int = 5, p: int = 7) -> list[torch.Tensor]:
    """Random rows whose scale changes from call to call (stateful rules see a history)."""
    gen = torch.Generator().manual_seed(1000 * seed + m)
    scales = [10 ** float(torch.randn(1, generator=gen)) for _ in range(calls)]
    return [torch.randn(m, p, generator=gen, dtype=F64) * s for s in scales]


def batch(rows: torch.Tensor, **kwargs) -> Objectives:
    return Objectives(updates=rows, **kwargs)


def close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-10) -> None:
    """Equal up to ``rtol`` relative to the largest entry of ``expected``."""
    scale = max(float(expected.abs().max()), 1e-300)
    torch.testing.assert_close(actual.to(F64), expected.to(F64), rtol=0, atol=rtol * scale)


# ---------------------------------------------------------------------------------- ExcessMTL


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("m", SIZES)
@pytest.mark.parametrize("warmup", [0, 1, 3])
def test_excess_mtl_agrees_with_torchjd_over_a_sequence(seed, m, warmup):
    ours = make_rule("excess-mtl", warmup_steps=warmup, robust_step_size=0.5)
    reference = tjd.ExcessMTLWeighting(robust_step_size=0.5, n_warmup_steps=warmup)
    for rows in sequence(seed, m):
        close(ours(batch(rows)), reference(rows), rtol=1e-12)


def test_excess_mtl_follows_the_official_code_by_hand():
    """yifei-he/ExcessMTL: the first call stores the excess risks and keeps the weights
    uniform; the next multiplies them by exp(η Ê / Ê⁰) and renormalises."""
    rule = make_rule("excess-mtl")
    first = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=F64)
    torch.testing.assert_close(rule(batch(first)), torch.full((2,), 0.5, dtype=F64))
    second = torch.tensor([[2.0, 0.0], [0.0, 2.0]], dtype=F64)
    baseline = [1 / math.sqrt(1 + 1e-7), 4 / math.sqrt(4 + 1e-7)]  # Σ g² / √(S + 1e-7) on the first call
    excess = [4 / math.sqrt(5 + 1e-7), 4 / math.sqrt(8 + 1e-7)]  # S accumulates the squares
    unnormalised = [math.exp(e / (b + 1e-7)) for e, b in zip(excess, baseline, strict=True)]
    expected = torch.tensor(unnormalised, dtype=F64) / sum(unnormalised)
    torch.testing.assert_close(rule(batch(second)), expected, rtol=1e-14, atol=0)


def test_excess_mtl_needs_parameter_rows():
    assert make_rule("excess-mtl").needs_parameter_rows()


# ------------------------------------------------------------------------------------ GradVac


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("m", SIZES)
def test_gradvac_agrees_with_torchjd_over_a_sequence(seed, m):
    """Same seed, same visiting orders: torchjd draws from the global generator, fedmtl from
    its own, seeded alike. fedmtl reads the trace-normalised Gramian and divides by m."""
    ours = make_rule("gradvac", seed=seed, beta=0.3)
    reference = tjd.GradVacWeighting(beta=0.3)
    torch.manual_seed(seed)
    for rows in sequence(seed, m):
        obj = batch(rows)
        gramian, _ = obj.normalised_gramian()
        close(ours(obj), reference(gramian) / m, rtol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_gradvac_on_the_raw_gramian_differs_only_by_eps(seed):
    """On rows of norm ~3, torchjd's ε = 1e-8 on the raw norms is within 1e-6 of ours."""
    gen = torch.Generator().manual_seed(seed)
    ours = make_rule("gradvac", seed=seed)
    reference = tjd.GradVacWeighting()
    torch.manual_seed(seed)
    for _ in range(5):
        rows = torch.randn(4, 9, generator=gen, dtype=F64)
        close(ours(batch(rows)), reference(rows @ rows.T) / 4, rtol=1e-6)


def test_gradvac_first_call_is_pcgrad_and_the_next_reaches_the_target():
    rows = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=F64)
    rule = make_rule("gradvac", beta=0.5, eps=0.0)  # ε = 0: the exact formula
    # targets start at 0: PCGrad, g1' = (.5, .5), g2' = (0, 1); their sum divided by m
    direction = rule.combine(batch(rows)).direction
    torch.testing.assert_close(direction, torch.tensor([0.25, 0.75], dtype=F64))
    # φ̂_12 = .5·0 + .5·cos(g1, g2) = −1/(2√2); cos(g1, g2) is below it, so g1' = g1 + c g2
    # has cosine exactly φ̂_12 with g2
    target = -1 / (2 * math.sqrt(2))
    weights = rule(batch(rows))
    coefficient = 2 * weights[1] - 1  # weights = (e_1 + e_2 + c e_2 + c' e_1) / 2
    corrected = rows[0] + coefficient * rows[1]
    assert float(corrected @ rows[1] / corrected.norm() / rows[1].norm()) == pytest.approx(target, abs=1e-12)


# ---------------------------------------------------------------------------------------- PCD


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("m", SIZES)
@pytest.mark.parametrize(("tau", "beta"), [(0.02, 0.999), (0.5, 0.9), (1.0, 0.0)])
def test_pcd_agrees_with_torchjd_over_a_sequence(seed, m, tau, beta):
    ours = make_rule("pcd", tau=tau, beta=beta)
    reference = tjd.PCDWeighting(tau=tau, beta=beta)
    for rows in sequence(seed, m):
        close(ours(batch(rows)), reference(rows @ rows.T), rtol=1e-9)


def pcd_two_rows(g1: torch.Tensor, g2: torch.Tensor, tau: float, eps: float = 1e-8) -> torch.Tensor:
    """The paper's closed form for one secondary objective (first call: v̂ = ‖g‖²)."""
    s1, s2 = 1 / math.sqrt(float(g1 @ g1) + eps), 1 / math.sqrt(float(g2 @ g2) + eps)
    n1, n2 = s1 * g1, s2 * g2
    mu = max(0.0, (tau * float(n2 @ n2) - float(n1 @ n2)) / float(n2 @ n2))
    d = n1 + mu * n2
    return d * g1.norm() / d.norm()


@pytest.mark.parametrize("scale", [1.0, 1e-6, 1e-12])
@pytest.mark.parametrize("tau", [0.0, 0.02, 0.5, 1.0])
def test_pcd_two_objectives_match_the_closed_form(tau, scale):
    """At every scale: rows of 1e-12 (normalised Gramian entries ~1e-16, below quadprog's
    absolute tolerances) once came back as g_1 with the constraint dropped."""
    gen = torch.Generator().manual_seed(11)
    for _ in range(5):
        rows = torch.randn(2, 6, generator=gen, dtype=F64) * scale
        direction = make_rule("pcd", tau=tau).combine(batch(rows)).direction
        close(direction, pcd_two_rows(rows[0], rows[1], tau), rtol=1e-9)


def test_pcd_hand_cases():
    # the constraint can only be met against the primary gradient; the norm stays ‖g_1‖
    direction = make_rule("pcd").combine(batch(torch.tensor([[1.0, 0.0], [-3.0, 0.0]], dtype=F64))).direction
    torch.testing.assert_close(direction, torch.tensor([-1.0, 0.0], dtype=F64))
    # constraints already met: the primary gradient itself
    rows = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 0.0, 1.0]], dtype=F64)
    torch.testing.assert_close(make_rule("pcd", tau=0.5)(batch(rows)), torch.tensor([1.0, 0.0, 0.0], dtype=F64))
    # opposite secondary rows: infeasible, dropped, reported
    rows = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, -2.0]], dtype=F64)
    result = make_rule("pcd").weigh(batch(rows))
    torch.testing.assert_close(result.weights, torch.tensor([1.0, 0.0, 0.0], dtype=F64))
    assert result.info.fallback == "infeasible"
    # a zero primary gradient halts
    rows = torch.tensor([[0.0, 0.0], [1.0, 2.0]], dtype=F64)
    torch.testing.assert_close(make_rule("pcd")(batch(rows)), torch.zeros(2, dtype=F64))


def test_pcd_primary_names_a_task():
    gen = torch.Generator().manual_seed(5)
    rows = torch.randn(3, 5, generator=gen, dtype=F64)
    named = make_rule("pcd", primary="b").combine(batch(rows, task_ids=["a", "b", "c"])).direction
    first = make_rule("pcd").combine(batch(rows[[1, 0, 2]], task_ids=["b", "a", "c"])).direction
    close(named, first, rtol=1e-12)
    with pytest.raises(ValueError, match="primary = 'z'"):
        make_rule("pcd", primary="z")(batch(rows, task_ids=["a", "b", "c"]))


# ------------------------------------------------------------------------------------- ConFIG


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("m", SIZES)
def test_config_agrees_with_torchjd_divided_by_m(seed, m):
    for rows in sequence(seed, m):
        close(make_rule("config")(batch(rows)), tjd.ConFIG()(rows) / m, rtol=1e-12)


def official_two_row_config(g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    """tum-pbs/ConFIG's ``ConFIG_update_double`` with equal weights and ProjectionLength."""
    u1, u2 = g1 / g1.norm(), g2 / g2.norm()
    cos = float(u1 @ u2)
    o1, o2 = g2 - g2.norm() * cos * u1, g1 - g1.norm() * cos * u2  # orthogonal to u1, to u2
    o1, o2 = o1 / o1.norm(), o2 / o2.norm()
    direction = float(o2 @ u1) / float(o1 @ u2) * o1 + o2
    unit = direction / direction.norm()
    return (g1 @ unit + g2 @ unit) * unit


def test_config_by_hand():
    # orthogonal rows: u = (1, 1)/√2, projections 2/√2 and 3/√2: (2.5, 2.5), divided by m = 2
    rows = torch.tensor([[2.0, 0.0], [0.0, 3.0]], dtype=F64)
    result = make_rule("config").combine(batch(rows))
    torch.testing.assert_close(result.direction, torch.tensor([1.25, 1.25], dtype=F64))
    torch.testing.assert_close(result.parts, torch.tensor([[0.5, 0.5], [0.75, 0.75]], dtype=F64))
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        rows = torch.randn(2, 6, generator=gen, dtype=F64)
        close(make_rule("config")(batch(rows)), official_two_row_config(rows[0], rows[1]) / 2, rtol=1e-12)
        rows = torch.randn(4, 9, generator=gen, dtype=F64)
        d = make_rule("config")(batch(rows))
        cosines = rows @ d / rows.norm(dim=1) / d.norm()  # the paper's equal, positive cosines
        close(cosines, torch.full((4,), float(cosines[0]), dtype=F64), rtol=1e-12)
        assert (cosines > 0).all()


def test_config_opposite_rows_give_zero_not_noise():
    rows = torch.tensor([[1.0, 0.0], [-2.0, 0.0]], dtype=F64)
    result = make_rule("config").combine(batch(rows))
    assert torch.equal(result.direction, torch.zeros(2, dtype=F64))
    assert result.info.fallback == "no-common-direction"


# ----------------------------------------------------------------------------------- GradDrop


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("m", SIZES)
@pytest.mark.parametrize("leak", [0.0, 0.3])
def test_graddrop_agrees_with_torchjd_divided_by_m(seed, m, leak):
    ours = make_rule("graddrop", seed=seed, leak=leak)
    reference = tjd.GradDrop(leak=torch.full((m,), leak, dtype=F64))
    torch.manual_seed(seed)
    for rows in sequence(seed, m):
        close(ours(batch(rows)), reference(rows) / m, rtol=1e-12)


def test_graddrop_keeps_one_sign_per_coordinate_and_its_parts_sum_to_the_direction():
    rows = torch.tensor([[1.0, 2.0, -1.0, 0.0], [3.0, -2.0, -4.0, 1.0], [2.0, 1.0, 1.0, -1.0]], dtype=F64)
    for seed in range(10):
        result = make_rule("graddrop", seed=seed).combine(batch(rows))
        torch.testing.assert_close(result.parts.sum(dim=0), result.direction)
        for k in range(rows.shape[1]):
            kept = result.parts[:, k] * 3
            assert all(float(v) in (0.0, float(g)) for v, g in zip(kept, rows[:, k], strict=True))
            signs = {math.copysign(1, float(v)) for v in kept if v != 0}
            assert len(signs) <= 1  # one sign survives
        torch.testing.assert_close(result.direction[0], rows[:, 0].sum() / 3)  # purity 1: all kept
    torch.testing.assert_close(make_rule("graddrop", leak=1.0)(batch(rows)), rows.mean(dim=0))


# ------------------------------------------------------------------------------------ CR-MOGM


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("m", SIZES)
def test_cr_mogm_agrees_with_torchjd_over_a_sequence(seed, m):
    upgrad = make_rule("cr-mogm", inner="upgrad", alpha=0.7)
    upgrad_reference = tjd.CRMOGMWeighting(tjd.UPGradWeighting(projector=QuadprogProjector(reg_eps=1e-4)), alpha=0.7)
    gradvac = make_rule("cr-mogm", inner="gradvac", inner_params={"seed": seed})
    gradvac_reference = tjd.CRMOGMWeighting(tjd.GradVacWeighting())
    torch.manual_seed(seed)
    for rows in sequence(seed, m):
        obj = batch(rows)
        gramian, _ = obj.normalised_gramian()
        close(upgrad(obj), upgrad_reference(gramian), rtol=1e-9)
        close(gradvac(obj), gradvac_reference(gramian) / m, rtol=1e-12)


def test_cr_mogm_smooths_by_hand():
    rule = make_rule("cr-mogm", inner="fedavg", alpha=0.9)
    first = rule(Objectives(num_examples=torch.tensor([1.0, 3.0])))
    torch.testing.assert_close(first, torch.tensor([0.25, 0.75], dtype=F64))  # λ_1 = λ̂_1
    second = rule(Objectives(num_examples=torch.tensor([3.0, 1.0])))
    torch.testing.assert_close(second, torch.tensor([0.3, 0.7], dtype=F64))  # .9 λ_1 + .1 λ̂_2
    frozen = make_rule("cr-mogm", inner="fedavg", alpha=1.0)
    frozen(Objectives(num_examples=torch.tensor([1.0, 3.0])))
    torch.testing.assert_close(frozen(Objectives(num_examples=torch.tensor([3.0, 1.0]))), first)


def test_cr_mogm_validates_its_inner_weighting():
    with pytest.raises(WeightingParamsError, match="unknown weighting 'mgdaa' \\(did you mean 'mgda'\\?\\); allowed:"):
        make_rule("cr-mogm", inner="mgdaa")
    with pytest.raises(WeightingParamsError, match="'median' is an aggregator"):
        make_rule("cr-mogm", inner="median")
    with pytest.raises(WeightingParamsError, match="weighting 'fairgrad' has no parameter 'alhpa'"):
        make_rule("cr-mogm", inner="fairgrad", inner_params={"alhpa": 2.0})
    with pytest.raises(WeightingParamsError, match="alpha = 2"):
        make_rule("cr-mogm", alpha=2)


def test_cr_mogm_reads_what_its_inner_weighting_reads():
    assert make_rule("cr-mogm", inner="dwa").needs_losses
    assert not make_rule("cr-mogm", inner="dwa").needs_updates
    assert make_rule("cr-mogm", inner="excess-mtl").needs_parameter_rows()
    assert not make_rule("cr-mogm").needs_parameter_rows()
    assert not make_rule("cr-mogm", inner="rlw").deterministic


# ------------------------------------------------------------------------------ state round-trips


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("excess-mtl", {}),
        ("excess-mtl", {"warmup_steps": 0}),
        ("gradvac", {"seed": 3}),
        ("pcd", {"beta": 0.9}),
        ("graddrop", {"seed": 4}),
        ("cr-mogm", {"inner": "gradvac", "inner_params": {"seed": 2}}),
        ("cr-mogm", {"inner": "excess-mtl"}),
    ],
)
def test_state_dict_round_trip_resumes_exactly(name, params):
    rows = sequence(7, 4, calls=6)
    original = make_rule(name, **params)
    for r in rows[:3]:
        original.combine(batch(r, task_ids=["a", "b", "c", "d"]))
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)  # as a checkpoint stores it
    state = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    resumed = make_rule(name, **params)
    resumed.load_state_dict(state)
    for r in rows[3:]:
        obj = batch(r, task_ids=["a", "b", "c", "d"])
        assert torch.equal(original.combine(obj).direction, resumed.combine(obj).direction), name
    if name == "cr-mogm":
        assert "inner_state" in state and state["inner_state"]


def test_state_is_kept_per_row_key():
    """A row's state follows its key, not its position."""
    rows = sequence(9, 3, calls=4)
    rules = [("excess-mtl", {}), ("pcd", {"beta": 0.5, "primary": "x"}), ("cr-mogm", {"inner": "excess-mtl"})]
    for name, params in rules:
        straight, shuffled = make_rule(name, **params), make_rule(name, **params)
        for r in rows:
            a = straight(batch(r, task_ids=["x", "y", "z"]))
            b = shuffled(batch(r[[2, 0, 1]], task_ids=["z", "x", "y"]))
            close(b, a[[2, 0, 1]], rtol=1e-12)
