"""Synthetic(α, β) (Li et al.), extended to T tasks: the published construction, by property."""

from __future__ import annotations

import numpy as np
import pytest

from fedmtl.config import ConfigError
from fedmtl.data import dataset_tasks, load_federation
from fedmtl.data.synthetic import DIMENSION, client_sizes, generate_device
from fedmtl.validation import load_config


def _cfg(*overrides, dataset="synthetic"):
    return load_config(None, [f"data.dataset={dataset}", "model.backbone=mlp", "data.partitioner=natural",
                              "data.num-clients=30", *overrides])


def test_sizes_follow_the_lognormal_law_plus_50():
    sizes = client_sizes(2000, seed=0)
    assert sizes.min() >= 50
    extra = sizes - 50  # ⌊LogNormal(4, 2)⌋: median e^4 ≈ 54.6, P(> e^6) = P(Z > 1) ≈ 0.159
    assert abs(np.median(extra) - np.exp(4)) < 8
    assert abs((extra > np.exp(6)).mean() - 0.1587) < 0.03
    np.testing.assert_array_equal(client_sizes(10, 3), client_sizes(10, 3))


def test_inputs_have_the_power_law_covariance_and_device_means():
    rng = np.random.default_rng(0)
    x, y = generate_device(20_000, 1.0, 1.0, 2, 0.5, rng)
    assert x.shape == (20_000, DIMENSION) and y.shape == (20_000, 2)
    variances = x.var(axis=0)
    expected = np.arange(1, DIMENSION + 1) ** -1.2
    np.testing.assert_allclose(variances, expected, rtol=0.05)
    assert y.min() >= 0 and y.max() <= 9


def test_relatedness_one_gives_identical_tasks_and_zero_different_ones():
    _, same = generate_device(2000, 1.0, 1.0, 3, 1.0, np.random.default_rng(1))
    assert (same[:, 0] == same[:, 1]).all() and (same[:, 0] == same[:, 2]).all()
    _, other = generate_device(2000, 1.0, 1.0, 2, 0.0, np.random.default_rng(1))
    assert (other[:, 0] == other[:, 1]).mean() < 0.9


def test_federation_is_deterministic_and_split_by_test_fraction():
    cfg = _cfg("data.params.num-tasks=3", "data.test-fraction=0.1")
    assert [t.name for t in dataset_tasks(cfg.data)] == ["task0", "task1", "task2"]
    fed = load_federation(cfg.data, 0)
    sizes = client_sizes(30, 0)
    for client in fed.clients()[:5]:
        n = len(client.train) + len(client.test)
        assert n == sizes[client.client_id]
        assert len(client.train) == int(0.9 * n)  # FedProx's generator: train_len = int(0.9 * num_samples)
        assert set(client.train.targets) == {"task0", "task1", "task2"}
    again = load_federation(_cfg("data.params.num-tasks=3", "data.test-fraction=0.1", "run.seed=0").data, 0)
    np.testing.assert_array_equal(fed.client(3).train.x.numpy(), again.client(3).train.x.numpy())


def test_devices_split_as_the_generators_split_them_into_train_validation_and_test():
    from fedmtl.data.federation import floor_split_counts

    sizes = client_sizes(100, 0)
    fed = load_federation(_cfg("data.num-clients=100", "data.test-fraction=0.1").data, 0)
    trains = [fed.split_sizes(c)[0] for c in range(100)]
    assert trains == [int(0.9 * n) for n in sizes]  # 38 of these 100 differ from n - round(0.1 n)
    assert sum(int(0.9 * n) != n - round(0.1 * n) for n in sizes) > 0
    # q-FFL's split (fair_flearn's client.py): int(0.8 n) train, up to int(0.9 n) validation, the rest test
    fed = load_federation(_cfg("data.test-fraction=0.1", "data.validation-fraction=0.1").data, 0)
    for client in fed.clients()[:10]:
        n = int(client_sizes(30, 0)[client.client_id])
        assert (len(client.train), len(client.validation), len(client.test)) == (
            int(0.8 * n), int(0.9 * n) - int(0.8 * n), n - int(0.9 * n))
        assert fed.split_sizes(client.client_id) == (len(client.train), len(client.test))
    # train and test keep a row each, whatever the fractions
    assert floor_split_counts(2, 0.999, 0.0) == (1, 0, 1) and floor_split_counts(2, 1e-17, 0.0) == (1, 0, 1)
    assert floor_split_counts(10, 0.5, 0.49) == (1, 4, 5)


def test_alpha_changes_no_label_as_in_the_published_generator():
    """u_k shifts every class score of an input alike (REFERENCES §4): the argmax stays."""
    (x0, y0), (x5, y5) = (generate_device(500, alpha, 1.0, 2, 0.5, np.random.default_rng(7)) for alpha in (0.0, 5.0))
    xs, ys = (x0, x5), (y0, y5)
    np.testing.assert_array_equal(xs[0], xs[1])
    np.testing.assert_array_equal(ys[0], ys[1])
    _, other_beta = generate_device(500, 1.0, 5.0, 2, 0.5, np.random.default_rng(7))
    assert (other_beta != ys[0]).any()


def test_lenet_on_vector_inputs_is_a_clear_config_error():
    with pytest.raises(ConfigError, match="lenet' needs image inputs.*use backbone = 'mlp'$"):
        load_config(None, ["data.dataset=synthetic"])


def test_other_partitioners_resplit_the_pooled_devices():
    iid = load_config(None, ["data.dataset=synthetic", "model.backbone=mlp", "data.num-clients=30",
                             "data.partitioner=iid"])
    fed = load_federation(iid.data, 0)
    assert sum(len(c.train) + len(c.test) for c in fed.clients()) == int(client_sizes(30, 0).sum())
    sizes = [len(c.train) + len(c.test) for c in fed.clients()]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("partitioner", ["dirichlet", "pathological"])
def test_a_label_partition_of_the_pooled_devices_does_not_follow_the_devices(partitioner):
    """The pooled rows come device by device, and flwr-datasets' label partitioners cut each
    class into consecutive blocks: with α = 1e6 (equal label shares) devices of 160 rows
    reached 2 of 10 clients, every client a run of neighbouring devices. The rows are now
    partitioned in a seeded random order: a large device's rows reach nearly every client
    that holds its classes."""
    from fedmtl.data.synthetic import SyntheticRows

    cfg = load_config(None, ["data.dataset=synthetic", "model.backbone=mlp", "data.num-clients=10",
                             f"data.partitioner={partitioner}", "data.dirichlet-alpha=1000000",
                             "data.classes-per-client=9", "data.params={num-tasks=1}"])  # its 9 classes
    pooled = SyntheticRows(cfg.data, 0)
    device = np.repeat(np.arange(10), client_sizes(10, 0))
    row_of = {pooled.x[i].tobytes(): i for i in range(len(pooled.x))}
    fed = load_federation(cfg.data, 0)
    reached = np.zeros((10, 10), dtype=bool)  # device × client
    for client in fed.clients():
        for split in (client.train, client.test):
            for x in split.x.numpy():
                reached[device[row_of[x.tobytes()]], client.client_id] = True
    large = client_sizes(10, 0) >= 100
    assert large.any() and reached[large].sum(axis=1).min() >= 9


def _pooled(fed, split="train"):
    clients = fed.clients()
    x = np.concatenate([getattr(c, split).x.numpy() for c in clients]).astype(np.float64)
    y = np.concatenate([getattr(c, split).targets["task0"].numpy() for c in clients])
    return x, y, clients


def test_synthetic_iid_labels_every_device_s_inputs_of_mean_zero_with_one_linear_model():
    """Li et al.'s ``synthetic_iid``: one global (W, b) and v_k = 0. One multinomial logistic
    regression then fits every device's examples: fitted on half the devices it labels the
    other half's almost as well as its own (the non-IID devices, each with its own model and
    input means, leave it far behind)."""
    from sklearn.linear_model import LogisticRegression

    iid = load_federation(_cfg("data.params.num-tasks=1", "data.num-clients=40", dataset="synthetic-iid").data, 0)
    x, y, clients = _pooled(iid)
    assert abs(x.mean(axis=0)).max() < 0.05  # every device's inputs have mean 0
    np.testing.assert_allclose(x.var(axis=0), np.arange(1, DIMENSION + 1) ** -1.2, rtol=0.1)
    sizes = client_sizes(40, 0)
    assert [len(c.train) + len(c.test) for c in clients] == sizes.tolist()  # sizes and splits as non-IID

    def transfer(fed):
        x, y, clients = _pooled(fed)
        half = sum(len(c.train) for c in clients[:20])
        model = LogisticRegression(C=100.0, max_iter=3000).fit(x[:half], y[:half])
        return model.score(x[half:], y[half:])

    assert transfer(iid) > 0.9
    non_iid = load_federation(_cfg("data.params.num-tasks=1", "data.num-clients=40").data, 0)
    assert transfer(non_iid) < 0.6


def test_synthetic_iid_refuses_alpha_it_has_no_use_for():
    with pytest.raises(ConfigError, match="alpha"):
        _cfg("data.params.alpha=0.5", dataset="synthetic-iid")


def test_synthetic_iid_with_related_tasks_labels_each_task_with_its_own_global_model():
    fed = load_federation(_cfg("data.params.num-tasks=2", "data.params.relatedness=1", dataset="synthetic-iid").data, 0)
    for client in fed.clients()[:5]:
        assert (client.train.targets["task0"] == client.train.targets["task1"]).all()
    other = load_federation(_cfg("data.params.relatedness=0", dataset="synthetic-iid").data, 0)
    agree = np.mean([(c.train.targets["task0"] == c.train.targets["task1"]).float().mean().item()
                     for c in other.clients()])
    assert agree < 0.5
