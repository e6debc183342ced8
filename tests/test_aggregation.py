"""The objectives -> weights interface and the first weightings."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmtl.aggregation import WEIGHTINGS, Objectives, combine, make_weighting


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


@settings(max_examples=50, deadline=None)
@given(
    counts=st.lists(st.integers(1, 1000), min_size=1, max_size=12),
    seed=st.integers(0, 2**16),
)
def test_registered_weightings_are_finite_nonnegative_and_permutation_equivariant(counts, seed):
    n = torch.tensor(counts, dtype=torch.float64)
    rows = torch.randn(len(counts), 5, generator=torch.Generator().manual_seed(seed))
    perm = torch.randperm(len(counts), generator=torch.Generator().manual_seed(seed + 1))
    for name in WEIGHTINGS.names():
        weighting = make_weighting(name)
        w = weighting(Objectives(updates=rows, num_examples=n, losses=n / 10))
        assert torch.isfinite(w).all() and (w >= 0).all(), name
        w_perm = weighting(Objectives(updates=rows[perm], num_examples=n[perm], losses=n[perm] / 10))
        torch.testing.assert_close(w_perm, w[perm], msg=name)


def test_every_weighting_has_a_docstring_and_a_scope():
    for name, cls in WEIGHTINGS.items():
        assert cls.__doc__ and cls.__doc__.strip(), name
        assert cls.scope in {"client", "server", "both"}, name
        assert cls.name == name
