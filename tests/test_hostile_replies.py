"""Hostile replies: every crafted reply is read to an outcome (never an exception), and every
self-reported quantity is bounded. Pure functions over hand-built Flower Messages (no Ray)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import MessageType

from fedmtl import protocol as wire
from fedmtl.data import load_federation
from fedmtl.screening import (
    MAX_LOSS,
    MAX_PLACEMENT,
    MAX_TASK_WEIGHT,
    ClientLimits,
    KnownClients,
    as_integer,
    number_values,
)
from fedmtl.server.replies import (
    Accepted,
    Evaluated,
    Ignored,
    Refused,
    Rejected,
    placement_row,
    read_evaluate_reply,
    read_train_reply,
)
from fedmtl.validation import load_config

LIKE = {"a.weight": torch.zeros(2, 3), "a.bias": torch.zeros(2)}
SIZE = 8
HELD = ClientLimits(frozenset({"left", "right"}), max_train=50, max_test=20)


def limits(client: int) -> ClientLimits:
    return HELD


@pytest.fixture(autouse=True)
def task_identity():
    """Messages need the process's task identity (the Flower runtime sets it)."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    yield


def sent(client: int = 2, kind: str = MessageType.TRAIN) -> Message:
    call = ConfigRecord(wire.TrainCall(3, client=client).values())
    msg = Message(RecordDict({wire.CALL: call}), dst_node_id=100 + client, message_type=kind)
    msg.metadata.__dict__["_message_id"] = f"message-{client}"
    return msg


def train_metrics(client: int = 2, tasks=("left", "right"), **changes) -> dict:
    metrics = {wire.PARTITION_ID: client, wire.NUM_EXAMPLES: 10, wire.HEADS_IN: 0.5, wire.HEADS_OUT: 0.7}
    for task in tasks:
        metrics[f"train.{task}.loss"] = 1.0
        metrics[f"train.{task}.weight"] = 0.5
    return {**metrics, **changes}


def test_metrics(client: int = 2, **changes) -> dict:
    return {wire.PARTITION_ID: client, wire.NUM_EXAMPLES: 20, "test.left.accuracy": 0.5, "test.left.loss": 1.5,
            "test.right.accuracy": 0.25, **changes}


test_metrics.__test__ = False  # a helper, not a test


def metric_record(values: dict) -> MetricRecord:
    """A metric record holding ``values`` as they are, even those Flower's checks refuse
    (a record decoded from the wire is not checked again)."""
    record = MetricRecord()
    for key, value in values.items():
        record.__dict__["_data"][key] = value
    return record


def reply_to(msg: Message, metrics: dict | None, records: dict | None = None, placement: dict | None = None) -> Message:
    content = RecordDict(records or {})
    if metrics is not None:
        content[wire.METRICS] = metric_record(metrics)
    content[wire.PLACEMENT] = ConfigRecord(placement or {"host": "h", "node": "n", "device": "cpu"})
    return Message(content, reply_to=msg)


def update(scale: float = 0.1, dtype=torch.float32) -> ArrayRecord:
    return ArrayRecord({k: torch.full(v.shape, scale, dtype=dtype) for k, v in LIKE.items()})


def parts(*tasks: str, value: float = 0.1) -> ArrayRecord:
    return ArrayRecord({t: torch.full((SIZE,), value) for t in tasks})


def read(metrics: dict | None, records: dict | None = None, with_limits: bool = True, parts_: bool = False):
    reply = reply_to(sent(), metrics, records if records is not None else {wire.UPDATE: update()})
    return read_train_reply(reply, 2, LIKE, parts_, limits=limits if with_limits else None, node=102)


# -- crashes: each of these raised out of the server --------------------------------------
def test_a_float64_update_finite_only_before_the_float32_cast_is_rejected():
    outcome = read(train_metrics(), {wire.UPDATE: update(1e300, torch.float64)})
    assert outcome == Rejected(2, "update: 'a.weight' has non-finite values (NaN or Inf)")


def test_a_reply_without_a_required_metric_is_rejected():
    metrics = {k: v for k, v in train_metrics().items() if k != wire.HEADS_IN}
    assert read(metrics) == Rejected(2, "no heads-fingerprint-in")


def test_metrics_of_a_task_the_client_does_not_hold_are_rejected():
    evil = train_metrics(**{"train.evil.weight": 1.0})
    assert read(evil) == Rejected(2, "metric 'train.evil.weight' of task 'evil', which the client does not hold")
    # without limits a task still needs its loss
    assert read(evil, with_limits=False) == Rejected(2, "no train.evil.loss")


@pytest.mark.parametrize(
    ("value", "problem"),
    [([1.0, 2.0], "metric 'train.left.loss' is a list, not a number"),
     ("1.0", "metric 'train.left.loss' is a str, not a number"),
     (True, "metric 'train.left.loss' is a bool, not a number"),
     (10**30, f"metric 'train.left.loss' is {10**30}, out of range")],
)
def test_metrics_that_are_not_numbers_are_rejected(value, problem):
    assert read(train_metrics(**{"train.left.loss": value})) == Rejected(2, problem)


def test_array_bytes_shorter_than_their_declared_shape_are_rejected():
    record = update()
    good = record["a.weight"]  # float32 (2, 3): 24 bytes of values after a 128-byte header
    record["a.weight"] = Array(dtype=good.dtype, shape=good.shape, stype=good.stype, data=good.data[:-8])
    outcome = read(train_metrics(), {wire.UPDATE: record})
    assert outcome == Rejected(2, "update: 'a.weight' has 16 bytes after its header, not 24")


def _npy_header(fields: bytes) -> bytes:
    """A version 1.0 ``.npy`` header around ``fields`` (padded to 64 bytes, as numpy writes it)."""
    fields += b" " * (63 - (10 + len(fields)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(fields).to_bytes(2, "little") + fields


def _npz() -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros((2, 3), np.float32))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        # an archive of arrays, not one array: np.load would return an NpzFile
        (_npz(), "'a.weight' cannot be decoded: ValueError: the magic string is not correct"),
        (b"PK\x03\x04" + b"\x00" * 100, "'a.weight' cannot be decoded: ValueError: the magic string is not correct"),
        # a header claiming 2**40 floats (4 TiB) before 24 bytes of data: never allocated
        (_npy_header(b"{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776,), }") + b"\x00" * 24,
         "'a.weight' decodes to shape (1099511627776,) and dtype float32, not those declared"),
        # a header that is not a Python literal (numpy's reader raises a tokenizer error)
        (_npy_header(b"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)") + b"\x00" * 24,
         "'a.weight' cannot be decoded: TokenError: "),
        (_npy_header(b"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }") + b"\x00" * 32,
         "'a.weight' has 32 bytes after its header, not 24"),
        (b"\x93NUMPY\x09\x00" + b"\x00" * 100, "'a.weight' cannot be decoded: "),
    ],
)
def test_array_bytes_that_are_not_one_npy_array_of_the_declared_shape_are_rejected(data, problem):
    record = update()
    record["a.weight"] = Array(dtype="float32", shape=(2, 3), stype="numpy.ndarray", data=data)
    outcome = read(train_metrics(), {wire.UPDATE: record})
    assert isinstance(outcome, Rejected) and outcome.problem.startswith(f"update: {problem}"), outcome
    assert "\n" not in outcome.problem and len(outcome.problem) < 300


def test_a_fortran_ordered_array_decodes_to_its_values():
    values = np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3) / 100)
    record = update()
    record["a.weight"] = Array(values)
    outcome = read(train_metrics(), {wire.UPDATE: record})
    assert isinstance(outcome, Accepted), outcome
    whole = next(iter(outcome.rows.values()))  # a.weight's values, row by row, then a.bias's
    assert torch.equal(whole[:6], torch.from_numpy(np.ascontiguousarray(values)).flatten())


@pytest.mark.parametrize(
    ("array", "problem"),
    [
        (Array(dtype="float32", shape=(2, 3), stype="numpy.ndarray", data=b"\x00" * 10),
         "'a.weight' has 10 bytes of data, not the 24 its shape and dtype need (and a header)"),
        (Array(dtype="object", shape=(2, 3), stype="numpy.ndarray", data=b"\x00" * 200),
         "'a.weight' has serialization 'numpy.ndarray' and dtype 'object'"),
        (Array(dtype="float32", shape=(2, 3), stype="pickle", data=b"\x00" * 200),
         "'a.weight' has serialization 'pickle' and dtype 'float32'"),
        (Array(dtype="float32", shape=(2, 3), stype="numpy.ndarray", data=Array(np.zeros((3, 2), np.float64)).data),
         "'a.weight' decodes to shape (3, 2) and dtype float64, not those declared"),
        (Array(dtype="float32", shape=(2, 3), stype="numpy.ndarray", data=Array(np.zeros(6, np.float32)).data),
         "'a.weight' decodes to shape (6,) and dtype float32, not those declared"),
    ],
)
def test_arrays_are_checked_before_they_are_decoded(array, problem):
    record = update()
    record["a.weight"] = array
    assert read(train_metrics(), {wire.UPDATE: record}) == Rejected(2, f"update: {problem}")


@pytest.mark.parametrize("bad", [math.nan, math.inf, 1e30, 0, 2.5])
def test_an_evaluation_count_that_is_not_a_whole_number_in_range_is_rejected(bad):
    outcome = read_evaluate_reply(reply_to(sent(kind=MessageType.EVALUATE), test_metrics(**{wire.NUM_EXAMPLES: bad})),
                                  2, limits, 102)
    assert isinstance(outcome, Rejected) and outcome.client == 2 and "num-examples" in outcome.problem


def test_an_evaluation_reply_without_metrics_or_count_is_rejected():
    msg = sent(kind=MessageType.EVALUATE)
    assert read_evaluate_reply(reply_to(msg, None), 2, limits, 102) == Rejected(2, "no metrics")
    no_count = {k: v for k, v in test_metrics().items() if k != wire.NUM_EXAMPLES}
    assert read_evaluate_reply(reply_to(msg, no_count), 2, limits, 102) == Rejected(2, "no num-examples")
    assert read_evaluate_reply(reply_to(msg, {wire.PARTITION_ID: 2, wire.NUM_EXAMPLES: 3}), 2, limits, 102) == (
        Rejected(2, "no test metrics"))


# -- bounds on what a client reports ------------------------------------------------------
def test_a_count_above_the_clients_data_is_rejected():
    assert read(train_metrics(**{wire.NUM_EXAMPLES: 1e30})) == Rejected(2, "num-examples is 1e+30")
    assert read(train_metrics(**{wire.NUM_EXAMPLES: 1e6})) == Rejected(
        2, "num-examples is 1e+06, more than the 50 examples the client holds")
    assert isinstance(read(train_metrics(**{wire.NUM_EXAMPLES: 50})), Accepted)
    assert read(train_metrics(**{wire.NUM_EXAMPLES: 10.5})) == Rejected(2, "num-examples is 10.5")


@pytest.mark.parametrize("loss", [1e30, -1.0, MAX_LOSS * 2])
def test_losses_outside_their_range_are_rejected(loss):
    outcome = read(train_metrics(**{"train.right.loss": loss}))
    assert outcome == Rejected(2, f"metric 'train.right.loss' is {loss:g}, outside [0, {MAX_LOSS:g}]")
    before = read(train_metrics(**{"train.right.loss-before": loss}))
    assert before == Rejected(2, f"metric 'train.right.loss-before' is {loss:g}, outside [0, {MAX_LOSS:g}]")


@pytest.mark.parametrize("weight", [-1e308, 1e308, 2 * MAX_TASK_WEIGHT, -2 * MAX_TASK_WEIGHT])
def test_task_weights_outside_their_range_are_rejected(weight):
    """``train.<task>.weight`` is recorded as the client sends it: a 1e308 is kept out."""
    outcome = read(train_metrics(**{"train.left.weight": weight}))
    assert outcome == Rejected(2, f"metric 'train.left.weight' is {weight:g}, outside [{-MAX_TASK_WEIGHT:g}, "
                                  f"{MAX_TASK_WEIGHT:g}]")
    for honest in (-0.3, 0.0, 0.5, 3.0):  # an aggregator's component along a row may be negative
        assert isinstance(read(train_metrics(**{"train.left.weight": honest})), Accepted)


def test_a_training_count_must_be_the_split_the_server_knows_exactly():
    exact = ClientLimits(frozenset({"left", "right"}), max_train=50, max_test=20, exact=True)
    reply = reply_to(sent(), train_metrics(**{wire.NUM_EXAMPLES: 1}), {wire.UPDATE: update()})
    assert read_train_reply(reply, 2, LIKE, False, limits=lambda c: exact, node=102) == Rejected(
        2, "num-examples is 1, not the 50 training examples the client holds")
    honest = reply_to(sent(), train_metrics(**{wire.NUM_EXAMPLES: 50}), {wire.UPDATE: update()})
    assert isinstance(read_train_reply(honest, 2, LIKE, False, limits=lambda c: exact, node=102), Accepted)
    capped = ClientLimits(frozenset({"left", "right"}), max_train=50)  # a cap, not the split: fewer pass
    fewer = reply_to(sent(), train_metrics(**{wire.NUM_EXAMPLES: 1}), {wire.UPDATE: update()})
    assert isinstance(read_train_reply(fewer, 2, LIKE, False, limits=lambda c: capped, node=102), Accepted)


def test_a_task_part_of_a_task_the_client_does_not_hold_is_rejected():
    metrics = train_metrics(tasks=("left", "right", "extra"))
    outcome = read(metrics, {wire.PARTS: parts("left", "right", "extra")}, parts_=True)
    assert outcome == Rejected(2, "metric 'train.extra.loss' of task 'extra', which the client does not hold")
    held = read(train_metrics(), {wire.PARTS: parts("left", "right")}, parts_=True)
    assert isinstance(held, Accepted) and list(held.rows) == ["left", "right"]


def test_unexpected_metric_keys_are_rejected():
    assert read(train_metrics(**{"test.left.accuracy": 0.5})) == Rejected(2, "unexpected metric 'test.left.accuracy'")
    assert read(train_metrics(**{"train.left.evil": 0.5})) == Rejected(2, "unexpected metric 'train.left.evil'")
    assert read(train_metrics(**{"extra": 0.5})) == Rejected(2, "unexpected metric 'extra'")


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [("test.left.accuracy", math.nan, "metric 'test.left.accuracy' is nan"),
     ("test.left.accuracy", 1e9, "metric 'test.left.accuracy' is 1e+09, outside [0, 1]"),
     ("test.left.accuracy-gap-colour", 1.5, "metric 'test.left.accuracy-gap-colour' is 1.5, outside [0, 1]"),
     ("test.left.tpr-colour-1", -0.1, "metric 'test.left.tpr-colour-1' is -0.1, outside [0, 1]"),
     ("test.left.count-colour-0", 21, "metric 'test.left.count-colour-0' is 21, outside [0, 20]"),
     ("test.left.loss", -1, "metric 'test.left.loss' is -1, outside [0, 10000]"),
     ("test.left.mse", 1e30, "metric 'test.left.mse' is 1e+30, outside [0, 10000]"),
     ("test.left.f1", 0.5, "unexpected metric 'test.left.f1'"),
     ("test.evil.accuracy", 0.5, "metric 'test.evil.accuracy' of task 'evil', which the client does not hold")],
)
def test_evaluation_metrics_are_screened(key, value, problem):
    outcome = read_evaluate_reply(reply_to(sent(kind=MessageType.EVALUATE), test_metrics(**{key: value})),
                                  2, limits, 102)
    assert outcome == Rejected(2, problem)
    # the same metrics in range (group metrics too) pass
    metrics = test_metrics(**{"test.left.count-colour-0": 12, "test.left.accuracy-colour-0": 0.75,
                              "test.left.accuracy-gap-colour": 0.1, "test.left.equalized-odds-diff-colour": 0.2})
    outcome = read_evaluate_reply(reply_to(sent(kind=MessageType.EVALUATE), metrics), 2, limits, 102)
    assert isinstance(outcome, Evaluated) and outcome.num_examples == 20
    assert outcome.per_task["left"]["count-colour-0"] == 12


def test_a_reply_from_another_node_than_the_message_went_to_is_ignored():
    reply = reply_to(sent(), train_metrics(), {wire.UPDATE: update()})
    reply.metadata.__dict__["_src_node_id"] = 999
    assert read_train_reply(reply, 2, LIKE, False, limits=limits, node=102) == Ignored(
        2, "a reply from node 999 to the message sent to client 2 on node 102")
    evaluation = reply_to(sent(kind=MessageType.EVALUATE), test_metrics())
    evaluation.metadata.__dict__["_src_node_id"] = 999
    assert read_evaluate_reply(evaluation, 2, limits, node=102) == Ignored(
        2, "a reply from node 999 to the message sent to client 2 on node 102")


def test_a_refusal_is_a_rejection_with_the_clients_reason_on_one_bounded_line():
    reason = "client 2's heads are missing from '/h' (its last training left heads-fingerprint 0.7)"
    refused = reply_to(sent(), None, {wire.REFUSAL: ConfigRecord({wire.REFUSAL_REASON: reason})})
    outcome = read_train_reply(refused, 2, LIKE, False, limits=limits, node=102)
    assert outcome == Refused(2, f"refused: {reason}") and isinstance(outcome, Rejected)
    evaluation = reply_to(sent(kind=MessageType.EVALUATE), None, {wire.REFUSAL: ConfigRecord({"other": 1})})
    assert read_evaluate_reply(evaluation, 2, limits, node=102) == Refused(2, "refused: no reason given")
    long = reply_to(sent(), None, {wire.REFUSAL: ConfigRecord({wire.REFUSAL_REASON: "a\nb\x00" + "x" * 10_000})})
    problem = read_train_reply(long, 2, LIKE, False, limits=limits, node=102).problem
    assert problem.startswith("refused: a b?x") and len(problem) <= len("refused: ") + 500
    # only the node the message went to may refuse for its client
    long.metadata.__dict__["_src_node_id"] = 999
    assert type(read_train_reply(long, 2, LIKE, False, limits=limits, node=102)) is Ignored


def test_a_rejected_update_keeps_the_heads_the_client_saved():
    outcome = read(train_metrics(), {wire.UPDATE: update(math.nan)})
    assert isinstance(outcome, Rejected) and outcome.heads_out == 0.7
    assert read(train_metrics(**{"train.left.loss": math.inf})).heads_out is None


def test_placement_strings_are_bounded():
    reply = reply_to(sent(), train_metrics(), placement={"host": "x" * 1_000_000, "node": "a\nb", "device": "cpu"})
    row = placement_row(reply, 2, 1, "train")
    assert row == (1, 2, "train", "x" * MAX_PLACEMENT, "a?b", "cpu")


def test_numbers_and_integers():
    assert number_values({"a": 1, "b": 2.5}) == {"a": 1.0, "b": 2.5}
    assert number_values({"a": [1]}) == "metric 'a' is a list, not a number"
    assert [as_integer(v) for v in (3, 3.0, 2.5, math.nan, math.inf, True, "3", -1, 2**63)] == [
        3, 3, None, None, None, None, None, -1, None]


# -- what the server knows of each client -------------------------------------------------
def test_known_clients_bound_by_each_clients_own_data_and_tasks():
    cfg = load_config(None, ["data.num-clients=6", "data.task-sets=one"])
    known = KnownClients(cfg.data, cfg.run.seed, 0)
    fed = load_federation(cfg.data, cfg.run.seed)
    for client in range(6):
        got = known(client)
        assert got.tasks == {t.name for t in fed.client_tasks(client)} and len(got.tasks) == 1
        assert (got.max_train, got.max_test) == (len(fed.client(client).train), len(fed.client(client).test))
        assert got.kinds == tuple((t.name, t.kind) for t in fed.client_tasks(client))
    # a cap instead: no data needed, the same task sets and kinds
    capped = KnownClients(cfg.data, cfg.run.seed, 500)
    assert [capped(c) for c in range(6)] == [ClientLimits(known(c).tasks, 500, 500, known(c).kinds, ())
                                             for c in range(6)]
    assert known(0).groups == ()  # MultiMNIST has no group attributes


def test_known_clients_know_the_datasets_group_attributes():
    from fedmtl.data import DATASETS, dataset_groups

    cfg = load_config(None, ["data.dataset=arrests", "model.backbone=mlp", "data.partitioner=natural",
                             "data.num-clients=6"])
    assert KnownClients(cfg.data, cfg.run.seed, 0)(1).groups == (("colour", ("White", "Black")),)
    assert KnownClients(cfg.data, cfg.run.seed, 500)(1).groups == (("colour", ("White", "Black")),)
    # the group names the clients' evaluation reports are those the dataset declares
    client = load_federation(cfg.data, cfg.run.seed).client(1)
    declared = dataset_groups(cfg.data)
    assert {g: tuple(client.test.group_names[g]) for g in client.test.groups} == declared
    assert all(DATASETS.get(name).groups is not None for name in DATASETS.names())  # each shipped one declares


@pytest.mark.parametrize(
    ("extra", "problem"),
    [({"count-fake-0": 12.0, "count-fake-1": 8.0, "accuracy-fake-0": 0.5, "accuracy-fake-1": 0.5,
       "accuracy-gap-fake": 0.0}, "group attribute 'fake', which the dataset does not have"),
     ({"count-colour-White": 12.0, "count-colour-Purple": 8.0, "accuracy-colour-White": 0.5,
       "accuracy-colour-Purple": 0.5}, "value 'Purple' of group attribute 'colour', which the dataset does not have")],
)
def test_groups_the_dataset_does_not_have_are_rejected(extra, problem):
    kinds, declared_groups = (("left", "binary"), ("right", "binary")), (("colour", ("White", "Black")),)
    groups = ClientLimits(HELD.tasks, 50, 20, kinds, declared_groups)
    metrics = test_metrics(**{f"test.left.{k}": v for k, v in extra.items()}, **{"test.right.loss": 1.0})
    outcome = read_evaluate_reply(reply_to(sent(kind=MessageType.EVALUATE), metrics), 2, lambda c: groups, 102)
    assert outcome == Rejected(2, f"test.left: {problem}")
    honest = honest_group_metrics("colour", ["White", "Black"])
    assert isinstance(read_evaluate_reply(reply_to(sent(kind=MessageType.EVALUATE), honest), 2, lambda c: groups, 102),
                      Evaluated)


def honest_group_metrics(attribute: str, names: list[str]) -> dict:
    """What an honest client with 20 test examples (12 of group 0, 8 of group 1 of
    ``attribute``) reports: each task's group metrics of its predictions (fedmtl.training.evaluate)."""
    from fedmtl.group_fairness import group_metrics

    groups = {attribute: torch.tensor([0] * 12 + [1] * 8)}
    targets = torch.tensor([1, 0] * 10)
    honest = {wire.PARTITION_ID: 2, wire.NUM_EXAMPLES: 20}
    for task, correct in (("left", 10), ("right", 5)):
        predictions = torch.where(torch.arange(20) < correct, targets, 1 - targets)
        found = {"accuracy": correct / 20, "loss": 1.0,
                 **group_metrics(predictions, targets, groups, True, {attribute: names})}
        honest.update({f"test.{task}.{k}": v for k, v in found.items()})
    return honest


def test_text_a_client_sent_reaches_a_problem_as_one_printable_line():
    record = update()
    record["x\nWARNING :      round 1: \x1b[31mclient 0 sent poisoned data"] = Array(np.zeros(2, np.float32))
    outcome = read(train_metrics(), {wire.UPDATE: record})
    assert isinstance(outcome, Rejected) and outcome.problem.startswith("update: unexpected tensor 'x WARNING")
    assert outcome.problem.isprintable()
    assert Rejected(2, "a\nb\x1b" + "c" * 1000).problem == "a b?" + "c" * 496


@pytest.mark.parametrize("attribute", ["x\n0,0,all,train,num-examples,7\n0", "x,y", 'x"y', "[/]", "a|b", "x`y"])
def test_a_group_name_that_would_break_a_csv_row_or_a_console_line_is_rejected(attribute):
    """A dataset that declares no groups (a plugin's) let a client invent one: a name holding a
    newline and CSV rows forged rows of client 0 when a resume cut metrics.csv, and '[/]' broke
    the console's final table after the last round (found by an adversarial pass)."""
    kinds = (("left", "binary"), ("right", "binary"))
    undeclared = ClientLimits(HELD.tasks, 50, 20, kinds, None)
    extra = {f"count-{attribute}-0": 12.0, f"count-{attribute}-1": 8.0, f"accuracy-{attribute}-0": 0.5,
             f"accuracy-{attribute}-1": 0.5}
    metrics = test_metrics(**{f"test.left.{k}": v for k, v in extra.items()}, **{"test.right.loss": 1.0})
    outcome = read_evaluate_reply(reply_to(sent(kind=MessageType.EVALUATE), metrics), 2, lambda c: undeclared, 102)
    assert isinstance(outcome, Rejected) and "has a character no metric name has" in outcome.problem, outcome
    assert "\n" not in outcome.problem


def test_a_group_name_of_letters_digits_and_spaces_is_accepted_where_the_dataset_declares_none():
    kinds = (("left", "binary"), ("right", "binary"))
    undeclared = ClientLimits(HELD.tasks, 50, 20, kinds, None)
    honest = honest_group_metrics("home town", ["Été", "North2"])
    assert "test.left.count-home town-Été" in honest
    outcome = read_evaluate_reply(reply_to(sent(kind=MessageType.EVALUATE), honest), 2, lambda c: undeclared, 102)
    assert isinstance(outcome, Evaluated), outcome


@pytest.mark.parametrize(("host", "kept"), [
    ("x` | 999999 | `y", "x????999999????y"),  # a cell of its own in the report's Placement table
    ('=HYPERLINK("http://a.example/","click")', "?HYPERLINK(?http://a.example/???click?)"),  # a spreadsheet formula
    ("-1+2", "?1?2"),
    ("node-3.lan", "node-3.lan"), ("cuda:0", "cuda:0"), ("a1b2c3", "a1b2c3"),
])
def test_placement_text_can_neither_add_a_table_cell_nor_start_a_formula(host, kept):
    """A host string of '|' and backticks pushed a forged count of 999999 into the report's
    Placement table; one starting with '=' was kept as a formula (found by an adversarial pass)."""
    reply = reply_to(sent(), train_metrics(), placement={"host": host, "node": "n", "device": "cpu"})
    assert placement_row(reply, 2, 1, "train") == (1, 2, "train", kept, "n", "cpu")
