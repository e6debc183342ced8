"""Reading replies and screening them: pure functions over hand-built Flower Messages (no Ray)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import Error, MessageType

from fedmtl import protocol as wire
from fedmtl.aggregation.plans import WHOLE
from fedmtl.server.replies import (
    Accepted,
    Evaluated,
    Failed,
    Ignored,
    Rejected,
    SecondReply,
    addressee,
    addressees,
    client_error_message,
    placement_row,
    read_evaluate_reply,
    read_train_reply,
)
from fedmtl.server.updates import screen_norms

LIKE = {"a.weight": torch.zeros(2, 3), "a.bias": torch.zeros(2), "count": torch.tensor(0)}
SIZE = 2 * 3 + 2 + 1


@pytest.fixture(autouse=True)
def task_identity():
    """Messages need the process's task identity (the Flower runtime sets it)."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    yield


def sent(client: int, kind: str = MessageType.TRAIN, message_id: str | None = None) -> Message:
    """A message for ``client`` as the grid leaves it after sending (with its id)."""
    call = ConfigRecord(wire.TrainCall(3, client=client).values())
    msg = Message(RecordDict({wire.CALL: call}), dst_node_id=100 + client, message_type=kind)
    msg.metadata.__dict__["_message_id"] = message_id or f"message-{client}"
    return msg


def train_metrics(client: int, tasks=("left", "right"), **changes) -> dict[str, float]:
    metrics = {wire.PARTITION_ID: client, wire.NUM_EXAMPLES: 10, wire.HEADS_IN: 0.5, wire.HEADS_OUT: 0.7}
    for task in tasks:
        metrics[wire.metric_key(wire.TRAIN, task, wire.LOSS)] = 1.0
        metrics[wire.metric_key(wire.TRAIN, task, wire.WEIGHT)] = 0.5
    return {**metrics, **changes}


def reply_to(msg: Message, metrics: dict | None = None, **arrays: dict[str, torch.Tensor]) -> Message:
    content = RecordDict({name: ArrayRecord(state) for name, state in arrays.items()})
    if metrics is not None:
        content[wire.METRICS] = MetricRecord(metrics)
    content[wire.PLACEMENT] = ConfigRecord({"host": "h", "node": "n", "device": "cpu"})
    return Message(content, reply_to=msg)


def update(scale: float = 0.1) -> dict[str, torch.Tensor]:
    return {k: (torch.full_like(v, scale) if v.is_floating_point() else v) for k, v in LIKE.items()}


def parts(*tasks: str, size: int = SIZE, value: float = 0.1) -> dict[str, torch.Tensor]:
    return {t: torch.full((size,), value) for t in tasks}


# -- training replies -------------------------------------------------------------------
def test_a_good_update_is_accepted_as_one_flat_row():
    msg = sent(2)
    outcome = read_train_reply(reply_to(msg, train_metrics(2), update=update()), 2, LIKE, parts=False)
    assert isinstance(outcome, Accepted) and outcome.client == 2
    assert list(outcome.rows) == [WHOLE]
    row = outcome.rows[WHOLE]
    assert row.dtype == torch.float32 and row.shape == (SIZE,)
    assert torch.equal(row[:8], torch.full((8,), 0.1)) and row[8] == 0  # the integer buffer, cast
    assert outcome.metrics[wire.NUM_EXAMPLES] == 10


def test_good_task_parts_are_accepted_as_rows_in_task_order():
    msg = sent(1)
    outcome = read_train_reply(reply_to(msg, train_metrics(1), parts=parts("right", "left")), 1, LIKE, parts=True)
    assert isinstance(outcome, Accepted) and list(outcome.rows) == ["left", "right"]
    assert all(r.dtype == torch.float32 and r.shape == (SIZE,) for r in outcome.rows.values())


def test_the_reply_counts_as_the_client_its_message_was_sent_to():
    messages = [sent(0, message_id="m0"), sent(5, message_id="m5")]
    table = addressees(messages)
    assert table == {"m0": 0, "m5": 5}
    good = reply_to(messages[1], train_metrics(5), update=update())
    assert addressee(good, table) == 5
    # claims to be client 0, but answers the message sent to client 5
    liar = reply_to(messages[1], train_metrics(0), update=update())
    outcome = read_train_reply(liar, addressee(liar, table), LIKE, parts=False)
    assert outcome == Rejected(5, "partition-id 0.0 in the reply to client 5")
    # a reply to no message of this round
    stray = reply_to(sent(7, message_id="old"), train_metrics(7), update=update())
    assert addressee(stray, table) is None
    assert read_train_reply(stray, None, LIKE, parts=False) == Ignored(None, "a reply to no message of this round")


def test_a_second_answer_of_the_same_client_is_ignored():
    msg = sent(3)
    reply = reply_to(msg, train_metrics(3), update=update())
    second = read_train_reply(reply, 3, LIKE, parts=False, seen={3})
    assert isinstance(second, SecondReply) and isinstance(second, Ignored) and not isinstance(second, Rejected)
    assert second.problem == "a second answer (a reply) of client 3; its first stands"


@pytest.mark.parametrize(
    ("metrics", "problem"),
    [
        (None, "no metrics"),
        (train_metrics(4, **{"train.left.loss": math.nan}), "metric 'train.left.loss' is nan"),
        (train_metrics(4, **{wire.NUM_EXAMPLES: 0}), "num-examples is 0.0"),
        ({k: v for k, v in train_metrics(4).items() if k != wire.PARTITION_ID},
         "partition-id None in the reply to client 4"),
    ],
)
def test_replies_with_unusable_metrics_are_rejected(metrics, problem):
    reply = reply_to(sent(4), metrics, update=update())
    assert read_train_reply(reply, 4, LIKE, parts=False) == Rejected(4, problem)


def test_missing_misshapen_or_non_finite_updates_are_rejected():
    msg = sent(1)
    metrics = train_metrics(1)
    assert read_train_reply(reply_to(msg, metrics), 1, LIKE, False) == Rejected(1, "no 'update' arrays")
    short = {**update(), "a.bias": torch.zeros(3)}
    assert read_train_reply(reply_to(msg, metrics, update=short), 1, LIKE, False) == Rejected(
        1, "update: 'a.bias' has shape (3,), expected (2,)")
    missing = {k: v for k, v in update().items() if k != "a.weight"}
    assert read_train_reply(reply_to(msg, metrics, update=missing), 1, LIKE, False) == Rejected(
        1, "update: missing 1 tensor(s), e.g. 'a.weight'")
    nan = {**update(), "a.weight": torch.full((2, 3), math.nan)}
    assert read_train_reply(reply_to(msg, metrics, update=nan), 1, LIKE, False) == Rejected(
        1, "update: 'a.weight' has non-finite values (NaN or Inf)")
    # an update where parts were asked for
    assert read_train_reply(reply_to(msg, metrics, update=update()), 1, LIKE, True) == Rejected(
        1, "no 'parts' arrays")


@pytest.mark.parametrize(("field", "value", "said"), [
    ("shape", None, "'a.bias' has shape None, expected (2,)"),
    ("shape", 3, "'a.bias' has shape 3, expected (2,)"),
    ("shape", (2.0,), "'a.bias' has shape (2.0,), expected (2,)"),
    ("stype", np.array(["numpy.ndarray", "x"]), "'a.bias' has serialization"),
    ("dtype", np.array(["float32", "x"]), "'a.bias' has serialization 'numpy.ndarray' and dtype"),
])
@pytest.mark.parametrize("as_parts", [False, True])
def test_an_array_whose_fields_were_changed_after_it_was_built_is_rejected_not_raised(field, value, said, as_parts):
    """Flower checks an Array's fields when it builds it; a ClientApp may set them afterwards, and
    in simulation the reply object reaches the server as it is: ``shape = None`` raised a
    TypeError out of the server and the round's good replies were lost (found by an
    adversarial pass)."""
    msg = sent(1)
    if as_parts:
        record = ArrayRecord(parts("left", "right"))
        setattr(record["right"], field, value)
        reply = reply_to(msg, train_metrics(1))
        reply.content[wire.PARTS] = record
        said = said.replace("'a.bias'", "'right'").replace("expected (2,)", f"expected ({SIZE},)")
    else:
        record = ArrayRecord(update())
        setattr(record["a.bias"], field, value)
        reply = reply_to(msg, train_metrics(1))
        reply.content[wire.UPDATE] = record
    outcome = read_train_reply(reply, 1, LIKE, as_parts)
    assert isinstance(outcome, Rejected) and said in outcome.problem, outcome


def test_parts_for_the_wrong_tasks_or_of_the_wrong_length_are_rejected():
    msg = sent(2)
    metrics = train_metrics(2)  # left and right
    wrong = reply_to(msg, metrics, parts=parts("left", "middle"))
    assert read_train_reply(wrong, 2, LIKE, True) == Rejected(2, "parts: missing 1 tensor(s), e.g. 'right'")
    extra = reply_to(msg, train_metrics(2, tasks=("left",)), parts=parts("left", "right"))
    assert read_train_reply(extra, 2, LIKE, True) == Rejected(2, "parts: unexpected tensor 'right'")
    short = reply_to(msg, metrics, parts={**parts("left"), **parts("right", size=SIZE - 1)})
    assert read_train_reply(short, 2, LIKE, True) == Rejected(2, f"parts: 'right' has shape ({SIZE - 1},), "
                                                                 f"expected ({SIZE},)")
    nan = reply_to(msg, metrics, parts={**parts("left"), **parts("right", value=math.inf)})
    assert read_train_reply(nan, 2, LIKE, True) == Rejected(2, "parts: 'right' has non-finite values (NaN or Inf)")


def test_an_error_in_place_of_a_reply_is_a_failure_with_the_clients_own_message():
    msg = sent(0)
    wrapped = "<class 'RuntimeError'>: Exception raised ... Message: client 0 dropped out (faults.dropout)'>"
    reply = Message(error=Error(code=1, reason=wrapped), reply_to=msg)
    assert read_train_reply(reply, 0, LIKE, parts=False) == Failed(0, "client 0 dropped out (faults.dropout)")
    assert read_evaluate_reply(reply, 0) == Failed(0, "client 0 dropped out (faults.dropout)")
    assert client_error_message("plain reason ") == "plain reason"


# -- evaluation replies -----------------------------------------------------------------
def test_evaluation_replies():
    msg = sent(1, kind=MessageType.EVALUATE)
    metrics = {wire.PARTITION_ID: 1, wire.NUM_EXAMPLES: 20, "test.left.accuracy": 0.5, "test.left.loss": 1.5,
               "test.right.accuracy": 0.25}
    outcome = read_evaluate_reply(reply_to(msg, metrics), 1)
    assert outcome == Evaluated(1, {"left": {"accuracy": 0.5, "loss": 1.5}, "right": {"accuracy": 0.25}}, 20)
    assert read_evaluate_reply(reply_to(msg, None), 1) == Rejected(1, "no metrics")
    assert read_evaluate_reply(reply_to(msg, {**metrics, wire.PARTITION_ID: 2}), 1) == Rejected(
        1, "partition-id 2.0 in the reply to client 1")
    no_count = {k: v for k, v in metrics.items() if k != wire.NUM_EXAMPLES}
    assert read_evaluate_reply(reply_to(msg, no_count), 1) == Rejected(1, "no num-examples")
    assert placement_row(reply_to(msg, metrics), 1, 4, "evaluate") == (4, 1, "evaluate", "h", "n", "cpu")
    assert placement_row(reply_to(msg, None), 1, 4, "evaluate") is None


# -- the protocol's metric keys ---------------------------------------------------------
def test_metric_keys_round_trip():
    per_task = {"left": {"accuracy": 0.5, "loss": 1.0}, "right": {"accuracy": 0.75}}
    flat = wire.task_metrics(wire.TEST, per_task)
    assert flat == {"test.left.accuracy": 0.5, "test.left.loss": 1.0, "test.right.accuracy": 0.75}
    assert wire.parse_metric_keys({**flat, "num-examples": 3, "train.left.loss": 2.0}, wire.TEST) == per_task
    assert wire.metric_key(wire.TRAIN, "left", wire.LOSS_BEFORE) == "train.left.loss-before"


def test_a_call_record_round_trips():
    call = wire.TrainCall(4, attempt=1, client=7, needs_losses_before=True, task_parts=False)
    assert wire.read_call(call.values()) == call
    assert wire.read_call({}) == wire.TrainCall()
    assert wire.Call(2).values() == {"server-round": 2, "server-attempt": 0}


# -- norm screening ----------------------------------------------------------------------
def test_norm_screening_of_accepted_rows():
    formed = {c: Accepted(c, {"left": torch.full((4,), 0.1), "right": torch.full((4,), 0.1)}, {})
              for c in range(4)}
    formed[2] = Accepted(2, {"left": torch.full((4,), 100.0), "right": torch.zeros(4)}, {})
    assert screen_norms(formed, 5.0) == [0, 1, 3]
    assert screen_norms(formed, 0) == [0, 1, 2, 3]
