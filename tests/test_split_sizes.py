"""A client's split sizes, counted without building its data, equal those of its built data.

The server bounds the example counts a client reports by these sizes
(:class:`fedmtl.screening.KnownClients`), so a wrong count would reject honest clients or let
a lying one through.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedmtl.data import load_federation
from fedmtl.data.federation import split_counts, split_rows
from fedmtl.screening import KnownClients
from fedmtl.validation import load_config
from tests.celeba_fixture import make_celeba

CASES = {
    "multimnist-iid": ["data.dataset=multimnist", "data.num-clients=7", "data.partitioner=iid"],
    "multimnist-skew": ["data.dataset=multimnist", "data.num-clients=9", "data.partitioner=dirichlet",
                        "data.dirichlet-alpha=0.1", "data.test-fraction=0.3", "data.validation-fraction=0.15",
                        "data.params.pairs-per-digit=3", "data.params.test-pairs-per-digit=5"],
    "multimnist-tasks-skew": ["data.dataset=multimnist", "data.num-clients=5", "data.task-sets=one",
                              "data.feature-skew=rotation"],
    "synthetic-natural": ["data.dataset=synthetic", "model.backbone=mlp", "data.num-clients=12",
                          "data.validation-fraction=0.2"],
    "synthetic-pooled": ["data.dataset=synthetic", "model.backbone=mlp", "data.num-clients=8",
                         "data.partitioner=dirichlet", "data.dirichlet-alpha=0.3", "data.feature-skew=noise"],
    "arrests": ["data.dataset=arrests", "model.backbone=mlp", "data.partitioner=natural", "data.num-clients=6",
                "data.test-fraction=0.4"],
}


def _assert_sizes_match(cfg) -> None:  # noqa: ANN001
    fed = load_federation(cfg.data, cfg.run.seed)
    assert fed.split_sizes is not None, "every shipped dataset counts its splits without data"
    for client in range(fed.num_clients):
        counted = fed.sizes(client)  # before the client is built: from split_sizes
        data = fed.client(client)
        assert counted == (len(data.train), len(data.test)), client
        assert fed.sizes(client) == counted  # after: from the cached data


@pytest.mark.parametrize("case", list(CASES))
def test_counted_sizes_equal_the_built_data(case: str) -> None:
    cfg = load_config(None, [*CASES[case], "run.seed=5"])
    load_federation.cache_clear()
    _assert_sizes_match(cfg)


def test_counted_sizes_equal_the_built_data_on_celeba(tmp_path):
    root = make_celeba(tmp_path / "celeba")
    cfg = load_config(None, ["data.dataset=celeba", f"data.path={root}", "data.num-clients=3",
                             "data.partitioner=iid", "model.backbone=lenet"])
    _assert_sizes_match(cfg)


@pytest.mark.parametrize("n", [2, 3, 5, 10, 77, 1000])
@pytest.mark.parametrize("fractions", [(0.2, 0.0), (0.5, 0.4), (0.01, 0.99), (0.9, 0.1)])
def test_split_counts_are_split_rows_lengths(n: int, fractions: tuple[float, float]) -> None:
    parts = split_rows(np.arange(n), *fractions, np.random.default_rng(n))
    assert split_counts(n, *fractions) == tuple(len(p) for p in parts)
    assert sum(split_counts(n, *fractions)) == n


def test_a_dataset_without_split_sizes_is_counted_from_its_data():
    cfg = load_config(None, ["data.num-clients=4"])
    fed = load_federation(cfg.data, cfg.run.seed)
    expected = [fed.sizes(c) for c in range(4)]
    fed.split_sizes = None
    fed._cache.clear()
    assert [fed.sizes(c) for c in range(4)] == expected
    assert not fed._cache  # counting does not keep the data
    known = KnownClients(cfg.data, cfg.run.seed, 0)
    assert [(known(c).max_train, known(c).max_test) for c in range(4)] == expected
    with pytest.raises(IndexError):
        fed.sizes(4)
