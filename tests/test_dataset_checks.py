"""A dataset's data is checked against what it declares (fedmtl.data.checks): a plugin's mistake
is one line naming the dataset, the client, the split and the task, never a shape error deep in
PyTorch or a silent NaN. Every built-in dataset passes (tests/test_data.py and the simulation
tests build them through the same checks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmtl.data import ClientData, Federation, Split
from fedmtl.data.checks import DataError, check_federation, checked_partition
from fedmtl.tasks import TaskSpec

TASKS = [TaskSpec("above", "multiclass", 3), TaskSpec("flag", "binary", 2), TaskSpec("size", "regression")]


def _split(n: int = 6, **change) -> Split:
    x = torch.randn(n, 4)
    targets = {"above": torch.arange(n) % 3, "flag": (torch.arange(n) % 2).float(), "size": torch.randn(n)}
    targets.update({k: v for k, v in change.items() if k in targets or k == "extra"})
    targets = {k: v for k, v in targets.items() if v is not None}
    return Split(change.get("x", x), targets)


def _federation(test: Split, train: Split | None = None) -> Federation:
    return Federation((4,), TASKS, 2, lambda c: ClientData(c, train or _split(), test), name="mine")


def test_data_that_fits_its_declaration_passes():
    fed = _federation(_split(3))
    assert len(fed.client(1).test) == 3 and fed.sizes(0) == (6, 3)


@pytest.mark.parametrize(("test", "said"), [
    (_split(above=None), "no targets of task 'above' (each split holds every declared task: above, flag, size; "
                         "data.task-sets gives clients fewer)"),
    (_split(extra=torch.zeros(6)), "targets of task 'extra', which the dataset does not declare (its tasks: above, "
                                   "flag, size)"),
    (_split(above=torch.tensor([0, 1, 2, 3, 0, 1])), "task 'above' (multiclass, 3 classes): class labels span 0..3, "
                                                     "outside 0..2"),
    (_split(above=torch.tensor([0, -1, 2, 1, 0, 1])), "class labels span -1..2, outside 0..2"),
    (_split(above=torch.zeros(6)), "task 'above' (multiclass, 3 classes): class labels must be integers, not "
                                   "torch.float32"),
    (_split(flag=torch.full((6,), 2)), "task 'flag' (binary, 2 classes): binary labels must be 0 or 1"),
    (_split(size=torch.tensor([0.0, float("nan"), 1, 2, 3, 4])), "task 'size' (regression, 0 classes): regression "
                                                                  "targets must be finite"),
    (_split(above=torch.zeros(5, dtype=torch.int64)), "task 'above': targets of shape (5,), expected (6,): one per "
                                                      "example"),
    (_split(above=torch.zeros(6, 1, dtype=torch.int64)), "task 'above': targets of shape (6, 1), expected (6,)"),
    (_split(x=torch.randn(6, 4, dtype=torch.float64)), "inputs are torch.float64; give torch.float32"),
    (_split(x=torch.randn(6, 5)), "inputs of shape (5,), but the dataset declares (4,)"),
    (_split(x=torch.tensor([[float("nan")] * 4] * 6)), "24 input value(s) are not finite (NaN or infinite)"),
    (_split(0), "no examples (a client trains and is tested on at least one each)"),
])
def test_a_client_whose_data_does_not_fit_is_one_line_naming_where(test, said):
    fed = _federation(test)
    for build in (lambda: fed.client(1), lambda: fed.sizes(1)):
        with pytest.raises(DataError) as error:
            build()
        message = str(error.value)
        assert message.startswith("data.dataset = 'mine', client 1, split 'test': ") and said in message, message
        assert "\n" not in message


def _grouped(codes: object, names: dict | None = None, attribute: str = "g") -> Split:
    split = _split()
    return Split(split.x, split.targets, {attribute: codes}, {"g": ("a", "b")} if names is None else names)


CODES = torch.tensor([0, 1, 0, 1, 1, 0])


@pytest.mark.parametrize(("test", "declared", "said"), [
    (_grouped(CODES[:5]), None, "group attribute 'g': codes of shape (5,), expected (6,): one per example"),
    (_grouped(CODES.float() / 2), None, "group attribute 'g': codes must be integers, not torch.float32"),
    (_grouped(CODES.bool()), None, "codes must be integers, not torch.bool"),
    (_grouped(CODES + 6), None, "group attribute 'g': codes span 6..7, outside 0..1 (its group_names: a, b)"),
    (_grouped(CODES - 1, {}), None, "codes span -1..0; a group code is at least 0"),
    (_grouped([0, 1, 0, 1, 1, 0]), None, "codes of shape list, expected (6,)"),
    (_grouped(CODES, {"g": ("a", "b-c")}), None, "group value name 'b-c' cannot be part of a metric name"),
    (_grouped(CODES, {"g": ("a", "b"), "h": ("x",)}), None, "group_names of attribute 'h', which has no groups"),
    (_grouped(CODES), {"g": ("a", "b"), "h": ("x",)}, "group attributes ['g'], but the dataset declares ['g', 'h']"),
    (_grouped(CODES, {"g": ("a", "c")}), {"g": ("a", "b")}, "group attribute 'g': value 'c' (code 1), which the "
                                                            "dataset does not declare (its values: a, b)"),
    (_grouped(CODES, {}), {"g": ("a", "b")}, "value '0' (code 0), which the dataset does not declare"),
])
def test_a_client_whose_groups_do_not_fit_is_one_line_naming_where(test, declared, said):
    """Groups of the wrong length or dtype, or codes no value names, used to pass and fail every
    evaluation in PyTorch (a mask of 5 on 6 examples) or with a division by zero."""
    fed = _federation(test, _grouped(CODES) if declared else None)  # a declared dataset's splits all have groups
    fed.declared_groups = declared
    with pytest.raises(DataError) as error:
        fed.client(1)
    message = str(error.value)
    assert message.startswith("data.dataset = 'mine', client 1, split '") and said in message, message
    assert "\n" not in message


def test_groups_that_fit_their_declaration_pass():
    for declared in (None, {"g": ("a", "b")}):
        fed = _federation(_grouped(CODES), _grouped(torch.zeros(6, dtype=torch.int64)))
        fed.declared_groups = declared
        assert len(fed.client(0).test) == 6
    fed = _federation(_grouped(CODES.to(torch.int32) + 3, {}))  # codes without names, shown as codes
    assert len(fed.client(0).test) == 6


def test_every_split_holds_the_same_tasks():
    fed = Federation((4,), TASKS[:1], 1, lambda c: ClientData(c, Split(torch.randn(4, 4), {"above": torch.zeros(
        4, dtype=torch.int64)}), Split(torch.randn(2, 4), {})), name="mine")
    with pytest.raises(DataError, match="split 'test': no targets of task 'above'"):
        fed.client(0)


def test_a_federation_with_other_tasks_or_inputs_than_declared_is_refused():
    check_federation("mine", TASKS, (4,), list(TASKS), (4,))
    with pytest.raises(DataError, match=r"declares inputs of shape \(4,\) but built a federation of shape \(5,\)"):
        check_federation("mine", TASKS, (4,), list(TASKS), (5,))
    with pytest.raises(DataError, match=r"declares the tasks above \(multiclass, 3 classes\), flag .* but built a "
                                        r"federation of above \(multiclass, 5 classes\)"):
        check_federation("mine", TASKS, (4,), [TaskSpec("above", "multiclass", 5)], (4,))


@pytest.mark.parametrize(("parts", "said"), [
    ([np.arange(3)], "data.partitioner = 'mine' returned 1 parts for data.num-clients = 2; a partitioner returns one "
                     "array of row indices per client"),
    (np.arange(6).reshape(2, 3), "data.partitioner = 'mine' returned a ndarray for data.num-clients = 2"),
    ([np.arange(3), np.array([3, 9])], "data.partitioner = 'mine': client 1's part holds row 9, outside the "
                                       "dataset's 6 rows"),
    ([np.arange(3), np.array([-1, 4])], "client 1's part holds row -1"),
    ([np.arange(3), np.array([3.0, 4.0])], "client 1's part is not a 1-D array of integer row indices (shape (2,), "
                                           "dtype float64)"),
    # a row in two parts, or twice in one, is one client's training data and another's (or its own) test data
    ([np.arange(4), np.array([3, 4, 5])], "row 3 is in the parts of clients 0, 1; each row belongs to one client"),
    ([np.arange(3), np.array([3, 4, 4, 5])], "client 1's part holds row 4 2 times; each row belongs to one client "
                                             "once"),
    ([np.arange(5), np.array([5])], "client 1's part has 1 row(s); a client needs at least 2 (one to train on, one "
                                    "to test on)"),
    ([np.arange(6), []], "client 1's part has 0 row(s)"),
])
def test_a_partition_that_is_not_one_index_array_per_client_is_one_line(parts, said):
    with pytest.raises(DataError) as error:
        checked_partition("mine", parts, 2, 6)
    assert said in str(error.value), str(error.value)


def test_a_partition_of_index_arrays_passes_as_int64():
    parts = checked_partition("mine", [[0, 1, 2], np.array([3, 4, 5], dtype=np.int32)], 2, 6)
    assert [p.dtype for p in parts] == [np.int64, np.int64] and parts[1].tolist() == [3, 4, 5]


def test_a_federation_of_another_number_of_clients_than_the_config_s_is_refused(tmp_path):
    """A plugin's build that ignores cfg.num_clients (here: always 3 clients) was accepted: the
    run then sampled among clients its data did not have, or left some out."""
    from fedmtl.data import load_federation
    from fedmtl.validation import load_config
    from tests.plugin_support import PLUGIN, restored_registries

    plugin = tmp_path / "fixed_size.py"
    plugin.write_text(PLUGIN.replace("Federation((8,), list(TASKS), cfg.num_clients, build_client)",
                                     "Federation((8,), list(TASKS), 3, build_client)"))
    registries = restored_registries()
    next(registries)
    try:
        sets = [f"run.plugins={plugin}", "data.dataset=blobs", "model.backbone=mlp"]
        assert load_federation(load_config(None, [*sets, "data.num-clients=3"]).data, 0).num_clients == 3
        with pytest.raises(DataError) as error:
            load_federation(load_config(None, [*sets, "data.num-clients=5"]).data, 0)
    finally:
        next(registries, None)
    assert str(error.value) == ("data.dataset = 'blobs' built a federation of 3 clients for data.num-clients = 5 "
                                "(its build passes cfg.num_clients to Federation)")
