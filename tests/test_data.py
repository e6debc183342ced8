"""MultiMNIST construction, partitioners and the federation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from fedmtl.config import DataSection
from fedmtl.data import load_federation
from fedmtl.data.checks import DataError
from fedmtl.data.multimnist import (
    MEAN,
    STD,
    canvases,
    load_digits,
    make_pairs,
    overlay,
)
from fedmtl.data.partitioners import PARTITIONERS


def test_embedded_digits_are_the_real_mnist_5k():
    images, labels = load_digits()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10
    assert images.max() == 255 and images.min() == 0


def test_overlay_places_left_top_left_right_shifted_and_keeps_the_max():
    left = np.zeros((1, 28, 28), np.uint8)
    right = np.zeros((1, 28, 28), np.uint8)
    left[0, 0, 0] = 200  # canvas (0, 0)
    left[0, 27, 27] = 50  # canvas (27, 27), inside the overlap
    right[0, 21, 21] = 120  # canvas (27, 27) too
    right[0, 27, 27] = 90  # canvas (33, 33)
    out = overlay(left, right)
    assert out.shape == (1, 28, 28)
    # nearest-neighbour resize 36 -> 28 by pixel centres: dst i <- src floor((i + .5) * 36 / 28)
    # (Pillow's NEAREST, which the loader uses, takes these pixels at 36: no exact ties)
    src = np.minimum(((np.arange(28) + 0.5) * 36 / 28).astype(int), 35)
    canvas = np.zeros((36, 36), np.uint8)
    canvas[0, 0], canvas[27, 27], canvas[33, 33] = 200, 120, 90
    np.testing.assert_array_equal(out[0], canvas[src][:, src])


@pytest.mark.parametrize("canvas_size", [36, 40, 44, 50, 64])
def test_overlay_resizes_as_pillow_s_nearest_on_every_canvas_size(canvas_size):
    """Sener & Koltun resize with ``scipy.misc.imresize(..., interp='nearest')``, i.e. Pillow's
    NEAREST: on a 40-pixel canvas the pixel-centre formula took columns 25 and 35 where Pillow
    takes 24 and 34 (exact ties), and canvases differed by up to 255 there."""
    from PIL import Image

    images, _ = load_digits()
    shift = canvas_size - 28 - 2
    out = overlay(images[:4], images[4:8], canvas_size=canvas_size, shift=shift)
    for k in range(4):
        canvas = np.zeros((canvas_size, canvas_size), np.uint8)
        canvas[:28, :28] = images[k]
        window = canvas[shift:shift + 28, shift:shift + 28]
        np.maximum(window, images[4 + k], out=window)
        expected = np.asarray(Image.fromarray(canvas).resize((28, 28), Image.Resampling.NEAREST))
        np.testing.assert_array_equal(out[k], expected)


def test_pairs_never_pair_a_digit_with_itself_and_stay_in_the_pool():
    rng = np.random.default_rng(0)
    pool = np.array([3, 17, 42, 99])
    left, right = make_pairs(pool, 5, rng)
    assert len(left) == 20 and (left != right).all()
    assert set(left) == set(pool) and set(right) <= set(pool)
    assert np.bincount(np.searchsorted(pool, left)).tolist() == [5, 5, 5, 5]


def test_canvases_labels_follow_the_digits_and_are_normalised():
    images, labels = load_digits()
    split = canvases(np.arange(50), 2, np.random.default_rng(1))
    assert split.x.shape == (100, 1, 28, 28) and split.x.dtype == torch.float32
    assert set(split.targets) == {"left", "right"}
    assert split.x.min().item() == pytest.approx((0 - MEAN) / STD, rel=1e-5)
    np.testing.assert_array_equal(split.targets["left"].numpy(), np.repeat(labels[:50], 2))


@pytest.mark.parametrize("name", ["iid", "dirichlet", "pathological", "power-law"])
@pytest.mark.parametrize("num", [3, 20])
def test_partitioners_cover_every_example_exactly_once(name, num):
    _, labels = load_digits()
    parts = PARTITIONERS.get(name)(labels, num, 0, DataSection(dirichlet_alpha=0.5))
    assert len(parts) == num
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined)  # disjoint
    # every example is assigned (pathological: every example of a class some client holds)
    held = np.isin(labels, labels[joined]) if name == "pathological" else np.ones(len(labels), bool)
    assert set(joined.tolist()) == set(np.flatnonzero(held).tolist())
    if name == "pathological" and num >= 10:
        assert held.all()
    assert min(len(p) for p in parts) >= 2


def test_a_pathological_partition_that_leaves_classes_out_names_them_in_fedmtl_s_keys():
    """flwr-datasets' own warning advised 'first_class_deterministic_assignment=True', an option
    fedmtl has no key for (and already uses)."""
    import warnings

    _, labels = load_digits()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parts = PARTITIONERS.get("pathological")(labels, 3, 0, DataSection(classes_per_client=2))
    said = [str(w.message) for w in caught]
    held = sorted({int(c) for c in labels[np.concatenate(parts)]})
    unused = sorted(set(range(10)) - set(held))
    assert unused and said == [f"data.partitioner = 'pathological': no client holds class(es) {unused} (3 clients × 2 "
                               f"classes per client drew {len(held)} of 10); their examples are left out. Raise "
                               "data.num-clients or data.classes-per-client to use them"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        PARTITIONERS.get("pathological")(labels, 10, 0, DataSection(classes_per_client=2))
    assert not caught  # every class held: nothing to say


def test_iid_sizes_are_balanced_and_seeded():
    _, labels = load_digits()
    parts = PARTITIONERS.get("iid")(labels, 7, 3, DataSection())
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    again = PARTITIONERS.get("iid")(labels, 7, 3, DataSection())
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = PARTITIONERS.get("iid")(labels, 7, 4, DataSection())
    assert not np.array_equal(parts[0], other[0])


def _mean_top_label_share(alpha: float) -> float:
    _, labels = load_digits()
    parts = PARTITIONERS.get("dirichlet")(labels, 10, 0, DataSection(dirichlet_alpha=alpha))
    return float(np.mean([np.bincount(labels[p], minlength=10).max() / len(p) for p in parts]))


def test_dirichlet_concentration_controls_label_skew():
    skewed, mild = _mean_top_label_share(0.1), _mean_top_label_share(100.0)
    assert skewed > 0.4 > 0.2 > mild  # IID would give about 0.1 + noise


@pytest.mark.parametrize("k", [1, 2, 3])
def test_pathological_gives_each_client_at_most_k_classes(k):
    _, labels = load_digits()
    parts = PARTITIONERS.get("pathological")(labels, 10, 0, DataSection(classes_per_client=k))
    assert all(len(np.unique(labels[p])) <= k for p in parts)
    assert sum(len(p) for p in parts) == len(labels)  # 10 clients cover all 10 classes


def test_a_pathological_partition_flwr_datasets_refuses_is_a_data_error():
    """More classes per client than the labels have: validation refuses it for fedmtl's own
    datasets (tests/test_config.py); a plugin's data meets flwr-datasets' refusal, named as fedmtl's."""
    _, labels = load_digits()
    with pytest.raises(DataError, match="pathological partition with 11 classes per client cannot be made for 2 "
                                        "clients .*; lower data.classes-per-client or data.num-clients"):
        PARTITIONERS.get("pathological")(labels, 2, 0, DataSection(classes_per_client=11))


@pytest.mark.parametrize("exponent", [0.0, 1.0, 2.0])
def test_power_law_sizes_follow_zipf(exponent):
    from fedmtl.data.partitioners import power_law_sizes

    _, labels = load_digits()
    parts = PARTITIONERS.get("power-law")(labels, 10, 0, DataSection(power_law_exponent=exponent))
    sizes = np.array(sorted((len(p) for p in parts), reverse=True), dtype=float)
    assert sizes.sum() == len(labels) and sizes.min() >= 2
    expected = np.arange(1, 11, dtype=float) ** -exponent
    expected = 2 + expected / expected.sum() * (len(labels) - 20)
    assert np.abs(sizes - expected).max() <= 1.0
    assert power_law_sizes(5000, 10, exponent, 0) == power_law_sizes(5000, 10, exponent, 0)


def test_too_many_clients_is_a_clear_error():
    _, labels = load_digits()
    with pytest.raises(DataError, match="lower data.num-clients"):
        PARTITIONERS.get("iid")(labels, 3000, 0, DataSection())


def test_a_dirichlet_partition_that_never_fits_is_one_data_error_without_warnings():
    """flwr-datasets warns at each of its redraws; fedmtl says once what to change."""
    _, labels = load_digits()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        with pytest.raises(DataError, match="raise data.dirichlet-alpha or lower data.num-clients"):
            PARTITIONERS.get("dirichlet")(labels, 100, 0, DataSection(partitioner="dirichlet", dirichlet_alpha=0.001))


def test_federation_splits_are_disjoint_in_base_digits_and_deterministic():
    cfg = DataSection(num_clients=5, partitioner="dirichlet", dirichlet_alpha=1.0, params={"pairs-per-digit": 2})
    fed = load_federation(cfg, 0)
    images, _ = load_digits()
    flat = images.reshape(len(images), -1)
    seen = set()
    for client in fed.clients():
        assert len(client.train) > 0 and len(client.test) > 0
        # recover which base digits a canvas used from its left digit's top-left 22x22 block,
        # which the right digit never covers
        def lefts(split):
            x = (split.x[:, 0].numpy() * STD + MEAN) * 255
            return {tuple(np.round(row[:16, :16]).astype(int).ravel()) for row in x}
        train, test = lefts(client.train), lefts(client.test)
        assert not (train & test), "a test digit also appears in training"
        seen |= train | test
    assert len(seen) > 0.9 * len(flat)  # nearly every base digit is used somewhere
    again = load_federation.__wrapped__(cfg, 0)
    assert torch.equal(again.client(2).train.x, fed.client(2).train.x)


def test_overlay_with_no_shift_is_the_pixelwise_max_and_bad_shift_is_refused():
    images, _ = load_digits()
    out = overlay(images[:3], images[3:6], canvas_size=28, shift=0)
    np.testing.assert_array_equal(out, np.maximum(images[:3], images[3:6]))
    with pytest.raises(ValueError, match="does not fit"):
        overlay(images[:1], images[1:2], canvas_size=30, shift=3)


def test_extra_tasks_follow_the_digit_labels():
    from fedmtl.data import dataset_tasks, load_federation
    from fedmtl.validation import load_config

    cfg = load_config(None, ["data.num-clients=2", "data.params.pairs-per-digit=1",
                             "data.params.extra-tasks=sum, same, larger"])
    assert [t.name for t in dataset_tasks(cfg.data)] == ["left", "right", "sum", "same", "larger"]
    y = load_federation(cfg.data, 0).client(1).train.targets
    torch.testing.assert_close(y["sum"], y["left"] + y["right"])
    torch.testing.assert_close(y["same"], (y["left"] == y["right"]).long())
    torch.testing.assert_close(y["larger"], (y["left"] > y["right"]).long())


def test_federation_keeps_a_bounded_cache_of_built_clients(monkeypatch):
    import fedmtl.data.federation as federation
    from fedmtl.data import synthetic

    monkeypatch.setattr(federation, "CLIENT_CACHE_SIZE", 3)
    cfg = DataSection(dataset="synthetic", partitioner="natural", num_clients=10)
    fed = synthetic.build(cfg, seed=0)
    first = fed.client(0).train.x.clone()
    for client in (1, 2, 0, 3, 4):  # 0 is used again, so 1 and 2 are the least recent
        fed.client(client)
    assert list(fed._cache) == [0, 3, 4]
    assert torch.equal(fed.client(0).train.x, first)
    rebuilt = fed.client(1)  # dropped from the cache, rebuilt identically
    assert torch.equal(rebuilt.train.x, synthetic.build(cfg, seed=0).client(1).train.x)
    assert len(fed._cache) == 3


def test_check_client_checks_a_client_without_keeping_its_data():
    import torch

    from fedmtl.data import ClientData, Federation, Split
    from fedmtl.data.checks import DataError
    from fedmtl.tasks import TaskSpec

    tasks = [TaskSpec("t", "multiclass", 2)]

    def build_client(client_id):
        x = torch.zeros(4, 3)
        labels = torch.full((4,), 7 if client_id == 1 else 1)  # client 1's labels are out of range
        return ClientData(client_id, train=Split(x, {"t": labels}), test=Split(x, {"t": labels}))

    fed = Federation((3,), tasks, 2, build_client, name="toy")
    fed.check_client(0)
    assert fed._cache == {}  # built, checked and dropped
    with pytest.raises(DataError, match=r"^data.dataset = 'toy', client 1, split 'train': task 't'"):
        fed.check_client(1)
