"""CelebA from a local copy in the standard layout, on a fixture the tests generate."""

from __future__ import annotations

import pytest
import torch

from fedmtl.config import ConfigError
from fedmtl.data import dataset_input_shape, dataset_tasks, load_federation
from fedmtl.data.celeba import read_tables
from fedmtl.validation import load_config
from tests.celeba_fixture import ATTRIBUTES, make_celeba


def _cfg(path, *overrides):
    return load_config(None, ["data.dataset=celeba", f"data.path={path}", "data.num-clients=3",
                              "data.partitioner=natural", "data.params.image-size=16", *overrides])


def test_tasks_clients_splits_and_images(tmp_path):
    root = make_celeba(tmp_path / "celeba")
    cfg = _cfg(root)
    assert [t.name for t in dataset_tasks(cfg.data)] == ATTRIBUTES
    assert all(t.kind == "binary" for t in dataset_tasks(cfg.data))
    assert dataset_input_shape(cfg.data) == (3, 16, 16)
    fed = load_federation(cfg.data, 0)
    # identities with >= 5 images: 10 (6 images), 12 (7), 13 (5); 11 (3 images) is not a client
    sizes = [len(c.train) + len(c.test) for c in fed.clients()]
    assert sizes == [6, 7, 5]
    images, attributes, identities = read_tables(str(root))
    client = fed.client(1)
    assert client.train.x.shape[1:] == (3, 16, 16)
    assert float(client.train.x.min()) >= -1 and float(client.train.x.max()) <= 1
    rows = [i for i, name in enumerate(images) if identities[name] == 12]
    positives = int((attributes[rows][:, ATTRIBUTES.index("Smiling")] > 0).sum())
    both = torch.cat([client.train.targets["Smiling"], client.test.targets["Smiling"]])
    assert int(both.sum()) == positives and set(both.tolist()) <= {0, 1}
    assert len(client.test) == round(0.2 * 7)


def test_attribute_subset(tmp_path):
    root = make_celeba(tmp_path / "celeba")
    cfg = _cfg(root, "data.params.attributes=Smiling, Young")
    assert [t.name for t in dataset_tasks(cfg.data)] == ["Smiling", "Young"]
    assert set(load_federation(cfg.data, 0).client(0).train.targets) == {"Smiling", "Young"}
    with pytest.raises(ConfigError, match="unknown attribute.*Smilling"):
        _cfg(root, "data.params.attributes=Smilling")


def test_missing_or_incomplete_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="needs data.path"):
        load_config(None, ["data.dataset=celeba"])
    with pytest.raises(ConfigError, match="no such folder"):
        _cfg(tmp_path / "nowhere")
    root = make_celeba(tmp_path / "celeba")
    (root / "identity_CelebA.txt").unlink()
    with pytest.raises(ConfigError, match="missing identity_CelebA.txt"):
        _cfg(root)


def test_too_few_celebrities_is_a_clear_error(tmp_path):
    root = make_celeba(tmp_path / "celeba")
    cfg = _cfg(root, "data.num-clients=4")
    with pytest.raises(ValueError, match="only 3 celebrities have at least data.params.min-images = 5"):
        load_federation(cfg.data, 0)
