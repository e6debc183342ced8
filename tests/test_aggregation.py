"""The objectives -> weights interface: properties every registered weighting shares."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmtl.aggregation import (
    WEIGHTINGS,
    Objectives,
    WeightingParamsError,
    combine,
    make_weighting,
)


def build(name: str, **params):
    if name == "qffl":
        params.setdefault("lipschitz", 20.0)
    return make_weighting(name, **params)


def objectives(rows: torch.Tensor, losses: torch.Tensor, counts: torch.Tensor) -> Objectives:
    return Objectives(updates=rows, losses=losses, num_examples=counts, client_ids=list(range(len(rows))))


def run(name: str, obj: Objectives) -> tuple[torch.Tensor, torch.Tensor | None]:
    return build(name).aggregate(obj)


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


def test_the_registry_has_at_least_25_documented_weightings():
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


@settings(max_examples=25, deadline=None)
@given(
    counts=st.lists(st.integers(1, 1000), min_size=1, max_size=8),
    seed=st.integers(0, 2**16),
    scale=st.floats(0.01, 100.0),
)
def test_shared_properties_of_every_weighting(counts, seed, scale):
    """Finite; nonnegative where documented; permutation-equivariant; documented scaling."""
    m = len(counts)
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randn(m, 6, generator=gen, dtype=torch.float64)
    losses = torch.rand(m, generator=gen, dtype=torch.float64) + 0.1
    n = torch.tensor(counts, dtype=torch.float64)
    perm = torch.randperm(m, generator=gen)
    base = objectives(rows, losses, n)
    for name, cls in WEIGHTINGS.items():
        direction, weights = run(name, base)
        assert torch.isfinite(direction).all(), name
        if cls.linear:
            assert weights is not None and torch.isfinite(weights).all(), name
            if cls.nonnegative:
                assert (weights >= -1e-12).all(), (name, weights)
        if cls.deterministic:
            permuted = Objectives(updates=rows[perm], losses=losses[perm], num_examples=n[perm],
                                  client_ids=perm.tolist())
            d_perm, w_perm = run(name, permuted)
            torch.testing.assert_close(d_perm, direction, rtol=1e-5, atol=1e-8, msg=name)
            if weights is not None:
                torch.testing.assert_close(w_perm, weights[perm], rtol=1e-5, atol=1e-8, msg=name)
        if cls.scaling != "none" and cls.deterministic:
            d_s, w_s = run(name, objectives(scale * rows, losses, n))
            if cls.linear:
                expected = weights if cls.scaling == "invariant" else weights / scale
                torch.testing.assert_close(w_s, expected, rtol=1e-4, atol=1e-7, msg=name)
            else:
                torch.testing.assert_close(d_s, scale * direction, rtol=1e-4, atol=1e-7, msg=name)


@settings(max_examples=30, deadline=None)
@given(m=st.integers(2, 6), p=st.integers(2, 12), seed=st.integers(0, 2**16))
@pytest.mark.parametrize("name", ["mgda", "upgrad", "dualproj"])
def test_no_objective_is_worsened_to_first_order(name, m, p, seed):
    """MGDA, UPGrad and DualProj: g_iᵀ d ≥ 0 for every row."""
    rows = torch.randn(m, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    params = {} if name == "mgda" else {"reg_eps": 1e-9}  # torchjd's ridge bounds the violation
    direction, _ = make_weighting(name, **params).aggregate(Objectives(updates=rows))
    dots = rows @ direction
    assert (dots >= -1e-7 * rows.norm(dim=1).max() ** 2).all(), dots


def test_zero_gramian_gives_uniform_weights_and_a_logged_fallback():
    for name in ("mgda", "upgrad", "fairgrad", "cagrad", "imtl-g", "aligned-mtl"):
        weighting = make_weighting(name)
        w = weighting(Objectives(updates=torch.zeros(3, 4)))
        torch.testing.assert_close(w, torch.full((3,), 1 / 3, dtype=torch.float64))
        assert weighting.fallback == "zero-gramian", name


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
            original.aggregate(obj)
            original.end_epoch()
        resumed = build(name)
        resumed.load_state_dict(original.state_dict())
        for obj in batches[2:]:
            d1, _ = original.aggregate(obj)
            d2, _ = resumed.aggregate(obj)
            torch.testing.assert_close(d1, d2, msg=name)
            original.end_epoch()
            resumed.end_epoch()
