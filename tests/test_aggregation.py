"""The objectives -> weights interface: properties every registered weighting shares."""

from __future__ import annotations

import pytest
import torch

from fedmtl.aggregation import (
    WEIGHTINGS,
    Objectives,
    RuleContext,
    WeightingParamsError,
    combine,
    make_weighting,
)


def build(name: str, **params):
    return make_weighting(name, RuleContext(client_lr=0.05), **params)


def objectives(rows: torch.Tensor, losses: torch.Tensor, counts: torch.Tensor) -> Objectives:
    return Objectives(updates=rows, losses=losses, num_examples=counts, client_ids=list(range(len(rows))))


def run(name: str, obj: Objectives) -> tuple[torch.Tensor, torch.Tensor | None]:
    result = build(name).combine(obj)
    return result.direction, result.weights


def test_objectives_reject_mismatched_rows():
    with pytest.raises(ValueError, match="disagree"):
        Objectives(updates=torch.zeros(3, 4), losses=torch.zeros(2))
    with pytest.raises(ValueError, match="at least one"):
        Objectives()


def test_gramian_is_lazy_float64_and_correct():
    g = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    obj = Objectives(updates=g)
    assert obj._gramian is None
    assert obj.gramian.dtype == torch.float64
    torch.testing.assert_close(obj.gramian, torch.tensor([[5.0, 1.0], [1.0, 10.0]], dtype=torch.float64))


def test_row_keys_name_clients_tasks_or_both():
    assert Objectives(losses=torch.ones(2), client_ids=[3, 4]).keys() == ["3", "4"]
    assert Objectives(losses=torch.ones(2), task_ids=["a", "b"]).keys() == ["a", "b"]
    assert Objectives(losses=torch.ones(2), client_ids=[3, 3], task_ids=["a", "b"]).keys() == ["3/a", "3/b"]


def test_fedavg_weights_by_example_counts_and_mean_is_uniform():
    obj = Objectives(updates=torch.eye(3), num_examples=torch.tensor([10.0, 30.0, 60.0]))
    torch.testing.assert_close(make_weighting("fedavg")(obj), torch.tensor([0.1, 0.3, 0.6], dtype=torch.float64))
    torch.testing.assert_close(make_weighting("mean")(obj), torch.full((3,), 1 / 3, dtype=torch.float64))


def test_combine_is_the_weighted_sum_of_rows():
    rows = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    obj = Objectives(updates=rows, num_examples=torch.tensor([1.0, 3.0]))
    direction, weights = combine(obj, make_weighting("fedavg"))
    torch.testing.assert_close(direction, torch.tensor([0.25, 1.5]))
    assert weights.sum().item() == pytest.approx(1.0)


def test_the_registry_has_at_least_25_documented_rules():
    assert len(WEIGHTINGS) >= 25
    for name, cls in WEIGHTINGS.items():
        assert cls.__doc__ and len(cls.__doc__.strip()) > 40, name
        assert cls.scope in {"client", "server", "both"}, name
        assert cls.name == name
        for field, info in cls.Params.model_fields.items():
            assert info.description, f"{name}.{field} has no description"


def test_unknown_or_out_of_range_parameters_are_named():
    with pytest.raises(WeightingParamsError, match="no parameter 'alhpa'.*did you mean 'alpha'"):
        make_weighting("fairgrad", alhpa=2)
    with pytest.raises(WeightingParamsError, match="q = -1"):
        make_weighting("qffl", q=-1)
    with pytest.raises(WeightingParamsError, match="its parameters: none"):
        make_weighting("mean", c=1)


def test_zero_gramian_gives_uniform_weights_and_a_reported_fallback():
    for name in ("mgda", "upgrad", "fairgrad", "cagrad", "imtl-g", "aligned-mtl"):
        result = make_weighting(name).weigh(Objectives(updates=torch.zeros(3, 4)))
        torch.testing.assert_close(result.weights, torch.full((3,), 1 / 3, dtype=torch.float64))
        assert result.info.fallback == "zero-gramian", name


def test_how_a_call_went_is_returned_not_stored():
    """SolveInfo comes back with the result; a rule keeps no per-call side channel."""
    rule = make_weighting("krum")
    first = rule.weigh(Objectives(updates=torch.randn(2, 3, dtype=torch.float64)))
    second = rule.weigh(Objectives(updates=torch.randn(5, 3, dtype=torch.float64)))
    assert first.info.fallback == "too-few-rows" and second.info.fallback == ""
    assert not hasattr(rule, "fallback")


def test_rules_are_weightings_or_aggregators_by_type():
    from fedmtl.aggregation import Aggregator, Weighting

    for name, cls in WEIGHTINGS.items():
        assert issubclass(cls, Weighting) != issubclass(cls, Aggregator), name
        assert cls.kind == ("weighting" if issubclass(cls, Weighting) else "aggregator"), name
    with pytest.raises(TypeError, match="aggregator"):
        combine(Objectives(updates=torch.randn(3, 4)), make_weighting("median"))


def test_stateful_weightings_resume_exactly_from_their_state_dict():
    gen = torch.Generator().manual_seed(3)
    batches = [
        objectives(torch.randn(4, 5, generator=gen, dtype=torch.float64),
                   torch.rand(4, generator=gen, dtype=torch.float64) + 0.1,
                   torch.tensor([5.0, 6.0, 7.0, 8.0], dtype=torch.float64))
        for _ in range(4)
    ]
    for name, _cls in WEIGHTINGS.items():
        original = build(name)
        for obj in batches[:2]:
            original.combine(obj)
            original.end_epoch()
        resumed = build(name)
        resumed.load_state_dict(original.state_dict())
        for obj in batches[2:]:
            d1 = original.combine(obj).direction
            d2 = resumed.combine(obj).direction
            torch.testing.assert_close(d1, d2, msg=name)
            original.end_epoch()
            resumed.end_epoch()
