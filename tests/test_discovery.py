"""Client discovery: the advice for a too-small federation, following reconnected nodes, and
replies that cannot be used (a clear error at start-up, ignored with a warning during a run)."""

from __future__ import annotations

import itertools
import logging

import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from fedmtl import protocol as wire
from fedmtl.server.discovery import ClientDirectory, FederationMismatch


def test_a_federation_smaller_than_num_clients_fails_naming_the_fix():
    directory = ClientDirectory(expected=3)
    directory.infos[11] = (0, 2)  # node 11 serves client 0 of a 2-partition federation
    with pytest.raises(FederationMismatch) as info:
        directory.check(11)
    said = str(info.value)
    # the way out of a simulation through `flwr run`, of a deployment, and of the config
    assert "--federation-config 'num-supernodes=3'" in said and "lower data.num-clients to 2" in said
    assert "a deployment: 3 SuperNodes, each with --node-config 'partition-id=<0..2> num-partitions=3'" in said
    assert "\n" not in said
    directory.infos[12] = (1, 3)
    directory.check(12)  # big enough: no error
    # a dataset of natural clients has the count its data gives: not advised to lower it
    natural = ClientDirectory(expected=6, can_lower=False)
    natural.infos[11] = (0, 2)
    with pytest.raises(FederationMismatch) as info:
        natural.check(11)
    assert "lower data.num-clients" not in str(info.value) and "give it 6 clients" in str(info.value)


# -- hostile discovery replies ----------------------------------------------------------------

@pytest.fixture(autouse=True)
def task_identity():
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    yield


def info(partition, partitions=3) -> RecordDict:
    record = MetricRecord()
    record.__dict__["_data"].update({wire.PARTITION_ID: partition, wire.NUM_PARTITIONS: partitions})
    return RecordDict({wire.INFO: record})


class QueryGrid:
    """Nodes 10, 11, 12 answer discovery queries as ``answers[node]`` says (a ``RecordDict``,
    or a ``(node, RecordDict)`` pair for a reply sent from another node)."""

    def __init__(self, answers: dict) -> None:
        self.answers = answers
        self.ids = itertools.count()
        self.asked: list[int] = []

    def get_node_ids(self) -> list[int]:
        return list(self.answers)

    def send_and_receive(self, messages, *, timeout=None) -> list[Message]:
        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = f"q{next(self.ids)}"
            node = msg.metadata.dst_node_id
            self.asked.append(node)
            answer = self.answers[node]
            source, content = answer if isinstance(answer, tuple) else (node, answer)
            reply = Message(content, reply_to=msg)
            reply.metadata.__dict__["_src_node_id"] = source
            replies.append(reply)
        return replies


BAD = [
    (info(float("nan")), "its partition-id is nan, not a whole number"),
    (info(float("inf")), "its partition-id is inf, not a whole number"),
    (info(1.7), "its partition-id is 1.7, not a whole number"),
    (info(-1), "its partition-id -1 is outside [0, num-partitions = 3)"),
    (info(True), "its partition-id is True, not a whole number"),
    (info(5), "its partition-id 5 is outside [0, num-partitions = 3)"),
    (info(1, float("nan")), "its num-partitions is nan, not a whole number"),
    (info(1, -1), "its node config has no num-partitions (start its SuperNode with --node-config "
                  "'partition-id=<i> num-partitions=<N>')"),
    (info(0, -5), "its num-partitions is -5, not a positive whole number"),
    (info(0, 0), "its num-partitions is 0, not a positive whole number"),
    (RecordDict({}), "its reply has no 'info' record"),
    (RecordDict({wire.INFO: ConfigRecord({wire.PARTITION_ID: "1", wire.NUM_PARTITIONS: "3"})}),
     "its reply has no 'info' record"),
    ((99, info(1)), "its reply came from node 99"),
]


@pytest.mark.parametrize(("answer", "problem"), BAD)
def test_a_bad_node_at_start_up_fails_in_one_line_naming_it(answer, problem):
    grid = QueryGrid({10: info(0), 11: answer, 12: info(2)})
    with pytest.raises(FederationMismatch) as raised:
        ClientDirectory(expected=3).update(grid, 1.0)
    assert str(raised.value) == f"node 11 failed client discovery: {problem}"


@pytest.mark.parametrize(("answer", "problem"), BAD)
def test_a_bad_node_during_a_run_is_ignored_with_a_warning(answer, problem, caplog):
    directory = ClientDirectory(expected=3)
    directory.update(QueryGrid({10: info(0), 12: info(2)}), 1.0)  # at start-up: 2 good nodes
    grid = QueryGrid({10: info(0), 12: info(2), 11: answer, 13: info(1)})
    with caplog.at_level(logging.WARNING, logger="fedmtl"):
        assert directory.update(grid, 1.0, strict=False) == []
    assert directory.clients == {0: 10, 1: 13, 2: 12}
    assert f"node 11 ignored: {problem}" in caplog.text
    directory.update(grid, 1.0, strict=False)
    assert grid.asked == [11, 13]  # the bad node is not asked again


def test_a_too_small_federation_during_a_run_is_ignored_not_raised(caplog):
    directory = ClientDirectory(expected=3)
    directory.update(QueryGrid({10: info(0), 11: info(1), 12: info(2)}), 1.0)
    with caplog.at_level(logging.WARNING, logger="fedmtl"):
        directory.update(QueryGrid({10: info(0), 11: info(1), 12: info(2), 14: info(1, 2)}), 1.0, strict=False)
    assert directory.clients == {0: 10, 1: 11, 2: 12}
    assert "node 14 ignored: the federation has num-partitions = 2" in caplog.text


class ErrorGrid(QueryGrid):
    """As :class:`QueryGrid`, but a node whose answer is a ``flwr.common.Error`` replies with it."""

    def send_and_receive(self, messages, *, timeout=None) -> list[Message]:
        from flwr.common import Error

        failing = {n for n, a in self.answers.items() if isinstance(a, Error)}
        replies = super().send_and_receive([m for m in messages if m.metadata.dst_node_id not in failing])
        for msg in messages:
            if msg.metadata.dst_node_id in failing:
                msg.metadata.__dict__["_message_id"] = f"q{next(self.ids)}"
                self.asked.append(msg.metadata.dst_node_id)
                reply = Message(self.answers[msg.metadata.dst_node_id], reply_to=msg)
                reply.metadata.__dict__["_src_node_id"] = msg.metadata.dst_node_id
                replies.append(reply)
        return replies


def test_a_discovery_error_reaches_the_console_as_one_printable_line_said_once(caplog):
    """A SuperNode's error text went into the start-up error as it was: three lines, one a forged
    'ERROR: round 3: ...', one a terminal escape; during a run such a node was asked every round
    and never said (found by an adversarial pass)."""
    from flwr.common import Error

    reason = "boom\nERROR: round 3: client 0 poisoned the model\x1b[31m"
    grid = ErrorGrid({10: info(0), 11: Error(code=1, reason=reason), 12: info(2)})
    with pytest.raises(FederationMismatch) as raised:
        ClientDirectory(expected=3).update(grid, 1.0)
    assert str(raised.value) == "node 11 failed client discovery: boom ERROR: round 3: client 0 poisoned the model?[31m"
    directory = ClientDirectory(expected=3)
    caplog.set_level("WARNING", logger="fedmtl")
    for _ in range(3):
        directory.update(grid, 1.0, strict=False)
    said = [r.getMessage() for r in caplog.records if "failed client discovery" in r.getMessage()]
    assert said == ["node 11 failed client discovery: boom ERROR: round 3: client 0 poisoned the model?[31m (it is "
                    "asked again each round, said once)"]
    assert grid.asked.count(11) == 4
