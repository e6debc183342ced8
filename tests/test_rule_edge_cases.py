"""Edge cases of the rules and the fairness statistics that an independent check turned up:
non-finite objectives are refused by every rule, CAGrad's direction near a zero row and with
one row, rows whose Gramian overflows or underflows float64, and Jain's index, the Gini coefficient and the worst 10 %
on NaN, negative, tiny and huge values."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

import fedmtl.aggregation  # noqa: F401  (registers every rule)
from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.registry import RULES, make_rule
from fedmtl.fairness import gini_coefficient, jain_index, normalised_entropy, row_statistics, summarize


def objectives(rows: torch.Tensor, losses: torch.Tensor | None = None) -> Objectives:
    m = len(rows)
    return Objectives(updates=rows, losses=torch.ones(m) if losses is None else losses,
                      num_examples=torch.full((m,), 10.0), client_ids=list(range(m)))


@pytest.mark.parametrize("name", RULES.names())
@pytest.mark.parametrize("where", ["updates", "losses"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_every_rule_refuses_objectives_that_are_not_finite_naming_itself(name, where, bad):
    rows = torch.randn(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    losses = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    (rows if where == "updates" else losses)[1] = bad
    expected = rf"'{re.escape(name)}': the objectives' {where} are not finite .* row\(s\) \[1\]"
    with pytest.raises(ValueError, match=expected):
        make_rule(name).combine(objectives(rows, losses))


def test_cagrad_below_c_1_keeps_the_mean_where_the_worst_direction_is_zero():
    """A zero row puts 0 in the rows' hull and g_w = 0 (torchjd's weights are then all 0, or huge
    on the zero row), but d = 0 lies outside the ball ‖d − g₀‖ ≤ c‖g₀‖ for c < 1; the authors'
    code then returns g₀ / (1 + c²). A short row that is not zero is not: g_w is that row, and
    the full correction c‖g₀‖ g_w/‖g_w‖ points along it (torchjd's norm_eps of 1e-4 dropped it
    and returned the mean for a row 1e-5 of the others)."""
    g1, g2 = torch.tensor([1.0, 0.2, 0.0, 0.0]), torch.tensor([0.1, 1.0, 0.1, 0.0])
    rule = make_rule("cagrad", c=0.4)
    for size in (0.0, 1e-9):  # zero, or below the solver's resolution
        rows = torch.stack([g1, g2, size * torch.tensor([0.0, 0.0, 0.0, 1.0])]).double()
        combined = rule.combine(objectives(rows))
        expected = rows.mean(dim=0) / (1 + 0.4**2)
        assert torch.allclose(combined.direction[:3], expected[:3], atol=1e-12)
    for size in (1e-4, 1e-5, 1e-6):
        rows = torch.stack([g1, g2, size * torch.tensor([0.0, 0.0, 0.0, 1.0])]).double()
        combined = rule.combine(objectives(rows))
        g0 = rows.mean(dim=0)
        expected = (g0 + 0.4 * g0.norm() * torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)) / (1 + 0.4**2)
        assert torch.allclose(combined.direction, expected, rtol=1e-5, atol=1e-6), size
        assert (rows @ combined.direction > 0).all()  # no row conflicts, the short one included
    stopping = make_rule("cagrad", c=1.0).combine(objectives(torch.stack([g1, -g1]).double()))
    assert torch.equal(stopping.direction, torch.zeros(4, dtype=torch.float64))  # c ≥ 1: 0 is in the ball


@pytest.mark.parametrize(("c", "rescale"), [(0.4, 1), (0.5, 2), (0.3, 0)])
def test_cagrad_gives_one_row_what_it_gives_copies_of_it(c, rescale):
    row = torch.tensor([[0.3, -1.2, 2.0]], dtype=torch.float64)
    rule = make_rule("cagrad", c=c, rescale=rescale)
    one = rule.combine(objectives(row)).direction
    two = rule.combine(objectives(torch.cat([row, row]))).direction
    divisor = {0: 1.0, 1: 1 + c**2, 2: 1 + c}[rescale]
    assert torch.allclose(one, two, rtol=1e-9) and torch.allclose(one, (1 + c) * row[0] / divisor, rtol=1e-12)


GRAMIAN_RULES = ("upgrad", "mgda", "imtl-g", "fairgrad", "nash-mtl", "cagrad", "dualproj", "aligned-mtl", "pcgrad",
                 "gradvac", "krum")


@pytest.mark.parametrize("name", GRAMIAN_RULES)
@pytest.mark.parametrize("scale", [6.3e153, 1e200, 1e300, 1e-160, 1e-170, 1e-300])
def test_rules_on_the_gramian_give_the_same_weights_at_every_finite_scale(name, scale):
    """Rows whose Gramian overflows float64 (trace ∞, entries finite or not) or underflows got
    the mean, labelled as nothing, 'zero-gramian' or 'gramian-overflow' (a conflict with a row:
    UPGrad and MGDA claim none), weights 0 (IMTL-G), or raised (CAGrad, FairGrad, Nash-MTL,
    UPGrad's solver). The trace-normalised Gramian is now computed from the rows divided by
    their largest entry when the Gramian itself is out of float64's range."""
    generator = torch.Generator().manual_seed(2)
    rows = torch.randn(7, 3, generator=generator, dtype=torch.float64)
    rows[1] = -0.5 * rows[0] + 0.1 * rows[1]  # a conflict
    two = torch.tensor([[1.0, 0.0], [-2.0, 0.3]], dtype=torch.float64)
    for base in (rows, two):
        expected = make_rule(name).combine(objectives(base))
        scaled = make_rule(name).combine(objectives(base * scale))
        assert scaled.info.fallback == expected.info.fallback
        torch.testing.assert_close(scaled.weights, expected.weights, rtol=1e-9, atol=1e-12)


def test_zero_rows_are_reported_as_a_zero_gramian():
    small = make_rule("mgda").combine(objectives(torch.zeros(2, 2, dtype=torch.float64)))
    assert small.info.fallback == "zero-gramian"
    assert torch.equal(small.weights, torch.full((2,), 0.5, dtype=torch.float64))


@pytest.mark.parametrize("scale", [1e-300, 1e-150, 1.0, 1e150, 1e300])
def test_jains_index_of_equal_values_is_one_at_every_scale(scale):
    values = np.full(7, scale)
    assert jain_index(values) == pytest.approx(1.0)
    assert row_statistics(values[None, :])["jain"][0] == pytest.approx(1.0)
    uneven = np.array([1.0, 2.0, 4.0]) * scale
    assert jain_index(uneven) == pytest.approx(49 / (3 * 21))


def test_shares_of_negative_values_are_not_defined():
    values = np.array([-1.0, 1.0, 2.0])
    assert math.isnan(jain_index(values)) and math.isnan(gini_coefficient(values))
    assert math.isnan(normalised_entropy(values))
    stats = row_statistics(values[None, :])
    assert math.isnan(stats["jain"][0]) and math.isnan(stats["gini"][0])


@pytest.mark.parametrize("higher", [True, False])
def test_a_nan_value_makes_the_worst_and_best_shares_nan_in_both_directions(higher):
    values = np.array([0.1, 0.5, math.nan, 0.9] + [0.7] * 8)
    stats = summarize(values, higher_is_better=higher)
    assert all(math.isnan(stats[k]) for k in ("mean", "worst", "worst10", "worst20", "best10", "jain"))


def test_krum_picks_the_lowest_score_when_a_huge_row_shrinks_every_other():
    """One row of norm 1e9 scales the normalised Gramian so that every other score falls below
    1e-12: ties must be judged relative to each score, or the smallest key (here an outlier 100σ
    from the honest rows) wins (Blanchard et al. 2017: the argmin of the score)."""
    gen = torch.Generator().manual_seed(0)
    mu = 5 * torch.randn(20, generator=gen, dtype=torch.float64) / math.sqrt(20)
    honest = mu + torch.randn(5, 20, generator=gen, dtype=torch.float64)
    outlier = mu + 100 * torch.randn(20, generator=gen, dtype=torch.float64) / math.sqrt(20)
    rows = torch.cat([outlier[None], honest, 1e9 * torch.randn(1, 20, generator=gen, dtype=torch.float64)])
    squared = torch.cdist(rows, rows) ** 2
    expected = int(torch.sort(squared, 1).values[:, 1:len(rows) - 2 - 2 + 1].sum(1).argmin())
    assert expected in range(1, 6)
    weights = make_rule("krum", byzantine=2)(Objectives(updates=rows))
    assert int(weights.argmax()) == expected and float(weights.sum()) == 1.0
    # five equal rows and one 1e-6 off: the equal rows score 0, the other does not
    near = torch.ones(6, 4, dtype=torch.float64)
    near[0, 0] += 1e-6
    assert int(make_rule("krum", byzantine=1)(Objectives(updates=near)).argmax()) == 1
    assert int(make_rule("krum", byzantine=1)(Objectives(updates=1e3 * near)).argmax()) == 1


def test_afl_whose_lambda_left_every_sampled_client_weighs_them_equally_and_says_so():
    """λ ascends on the losses and is projected onto the simplex, which zeroes entries: after a
    client with a loss of 30 (honest, diverging), the clients sampled next round all had λ = 0
    and their weights were 0 / 0 = NaN (found by an adversarial pass)."""
    afl = make_rule("afl")
    first = Objectives(updates=torch.ones(3, 2), losses=torch.tensor([1.0, 1.0, 30.0]), client_ids=[0, 1, 2])
    weights = afl.weigh(first)
    assert torch.allclose(weights.weights, torch.full((3,), 1 / 3, dtype=torch.float64))
    assert afl.lam["2"] == 1.0 and afl.lam["0"] == afl.lam["1"] == 0.0
    second = Objectives(updates=torch.ones(2, 2), losses=torch.tensor([1.0, 1.0]), client_ids=[0, 1])
    result = afl.weigh(second)
    assert result.weights.tolist() == [0.5, 0.5] and result.info.fallback == "zero-lambda"
    third = Objectives(updates=torch.ones(2, 2), losses=torch.tensor([1.0, 1.0]), client_ids=[1, 2])
    assert afl.weigh(third).info.fallback == ""  # λ on a sampled client: the paper's weights


def test_fedfv_breaks_equal_losses_by_row_key_not_position():
    """With equal pre-training losses the row order decided which client was exempt and the
    projection order: the same rows in another order gave another direction, though FedFV
    claims permutation invariance."""
    rows = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [0.2, -1.0]], dtype=torch.float64)
    losses = torch.ones(3, dtype=torch.float64)
    directions = []
    for order in ([0, 1, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]):
        batch = Objectives(updates=rows[order], losses=losses[order], client_ids=[10 + i for i in order])
        directions.append(make_rule("fedfv").combine(batch).direction)
    for direction in directions[1:]:
        torch.testing.assert_close(direction, directions[0], rtol=1e-12, atol=1e-15)


def test_the_entropy_of_one_client_is_zero_not_minus_zero():
    """summary.json printed ``-0.0`` for a run with one evaluated client (found by an audit)."""
    value = normalised_entropy(np.array([0.7]))
    assert value == 0.0 and math.copysign(1.0, value) == 1.0 and str(value) == "0.0"
