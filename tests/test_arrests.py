"""The real tabular dataset 'arrests' (carData's Arrests, shipped inside scikit-lego)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmtl.config import ConfigError
from fedmtl.data import dataset_input_shape, dataset_tasks, load_federation
from fedmtl.data.arrests import load_table
from fedmtl.validation import load_config


def _cfg(*overrides):
    return load_config(None, ["data.dataset=arrests", "model.backbone=mlp", "data.partitioner=natural",
                              "data.num-clients=6", *overrides])


def test_the_table_is_the_published_one():
    table = load_table()
    assert table.shape == (5226, 8)
    assert sorted(table.year.unique()) == list(range(1997, 2003))
    assert set(table.colour) == {"Black", "White"} and set(table.released) == {"Yes", "No"}
    assert table.checks.between(0, 6).all()


def test_clients_are_years_and_cover_every_row_once():
    cfg = _cfg()
    fed = load_federation(cfg.data, 0)
    table = load_table()
    sizes = [len(c.train) + len(c.test) for c in fed.clients()]
    assert sizes == table.groupby("year").size().tolist()
    assert [t.name for t in dataset_tasks(cfg.data)] == ["released", "checks"]
    client = fed.client(2)  # 1999
    both = torch.cat([client.train.targets["released"], client.test.targets["released"]])
    expected = (table[table.year == 1999].released == "Yes").sum()
    assert int(both.sum()) == expected
    assert set(client.train.groups) == {"colour"}
    assert len(client.test) == round(0.2 * sizes[2])


def test_sensitive_attribute_is_an_input_only_when_asked():
    assert dataset_input_shape(_cfg().data) == (4,)
    cfg = _cfg("data.params.include-sensitive=true")
    assert dataset_input_shape(cfg.data) == (5,)
    client = load_federation(cfg.data, 0).client(0)
    np.testing.assert_array_equal(client.train.x[:, 4].numpy(), client.train.groups["colour"].numpy())


def test_year_sex_gives_12_clients_and_a_wrong_count_is_a_config_error():
    fed = load_federation(_cfg("data.params.client-key=year-sex", "data.num-clients=12").data, 0)
    assert fed.num_clients == 12
    with pytest.raises(ConfigError, match="has 6 natural clients with this config; set data.num-clients = 6"):
        load_config(None, ["data.dataset=arrests", "model.backbone=mlp", "data.partitioner=natural",
                           "data.num-clients=5"])


def test_any_partitioner_splits_the_pooled_rows_with_label_skew_on_a_chosen_task():
    base = ["data.dataset=arrests", "model.backbone=mlp", "data.num-clients=10"]
    iid = load_federation(load_config(None, [*base, "data.partitioner=iid"]).data, 0)
    skew = load_federation(load_config(None, [*base, "data.partitioner=dirichlet", "data.dirichlet-alpha=0.1",
                                              "data.partition-task=checks"]).data, 0)
    for fed in (iid, skew):
        assert sum(len(c.train) + len(c.test) for c in fed.clients()) == 5226

    def top_share(fed):
        shares = []
        for c in fed.clients():
            counts = np.bincount(torch.cat([c.train.targets["checks"], c.test.targets["checks"]]).numpy())
            shares.append(counts.max() / counts.sum())
        return float(np.mean(shares))

    assert top_share(skew) > top_share(iid) + 0.15
    with pytest.raises(ConfigError, match="partition-task = 'check' is not a task.*did you mean 'checks'"):
        load_config(None, [*base, "data.partition-task=check"])


def test_validation_split_is_held_out_on_request():
    fed = load_federation(_cfg("data.validation-fraction=0.1").data, 0)
    for client in fed.clients():
        n = len(client.train) + len(client.test) + len(client.validation)
        assert len(client.validation) == round(0.1 * n)
    assert load_federation(_cfg().data, 0).client(0).validation is None
    with pytest.raises(ConfigError, match="leaves no training data"):
        _cfg("data.validation-fraction=0.5", "data.test-fraction=0.5")
