"""The real tabular dataset 'arrests' (carData's Arrests, shipped inside scikit-lego)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmtl.config import ConfigError, load_config
from fedmtl.data import dataset_input_shape, dataset_tasks, load_federation
from fedmtl.data.arrests import load_table


def _cfg(*overrides):
    return load_config(None, ["data.dataset=arrests", "model.backbone=mlp", "data.num-clients=6", *overrides])


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
    cfg = _cfg("data.include-sensitive=true")
    assert dataset_input_shape(cfg.data) == (5,)
    client = load_federation(cfg.data, 0).client(0)
    np.testing.assert_array_equal(client.train.x[:, 4].numpy(), client.train.groups["colour"].numpy())


def test_year_sex_gives_12_clients_and_a_wrong_count_is_a_config_error():
    fed = load_federation(_cfg("data.client-key=year-sex", "data.num-clients=12").data, 0)
    assert fed.num_clients == 12
    with pytest.raises(ConfigError, match="has 6 natural clients with this config; set data.num-clients = 6"):
        load_config(None, ["data.dataset=arrests", "model.backbone=mlp", "data.num-clients=5"])
