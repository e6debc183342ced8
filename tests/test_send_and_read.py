"""The server reads training replies as they arrive (``fedmtl.server.exchange.send_and_read``).

On a grid that polls (the Simulation Engine's ``InMemoryGrid`` has a ``pull_interval``), each
batch of replies is read as soon as it is pulled, while later clients still train; the
replies and what is read from them must be those of ``send_and_receive`` followed by one read
of every reply. Grids without ``pull_interval`` (a deployed SuperLink's) keep Flower's
``send_and_receive``. The round loop's tests run on both kinds of grid (``test_round_loop.py``).
"""

from __future__ import annotations

import itertools
import time

import pytest
from flwr.app import Message, MetricRecord, RecordDict
from flwr.common import MessageType

from fedmtl.server.exchange import send_and_read

pytestmark = pytest.mark.usefixtures("task_identity")  # a Message needs it


def _messages(count: int) -> list[Message]:
    return [Message(RecordDict({"x": MetricRecord({"i": i})}), dst_node_id=100 + i, message_type=MessageType.TRAIN)
            for i in range(count)]


class TrickleGrid:
    """A polling grid that lets one reply through per pull (``silent``: messages never answered)."""

    pull_interval = 0.0

    def __init__(self, silent: set[int] = frozenset()) -> None:
        self.ids, self.silent = itertools.count(), silent
        self.queue: list[Message] = []
        self.pulls = 0

    def push_messages(self, messages):  # noqa: ANN001, ANN201
        out = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = f"m{next(self.ids)}"
            out.append(msg.metadata.message_id)
            if msg.metadata.dst_node_id - 100 not in self.silent:
                reply = Message(RecordDict({"y": MetricRecord({"i": msg.metadata.dst_node_id - 100})}), reply_to=msg)
                self.queue.append(reply)
        return out

    def pull_messages(self, message_ids):  # noqa: ANN001, ANN201
        self.pulls += 1
        wanted = set(message_ids)
        for k, reply in enumerate(self.queue):
            if reply.metadata.reply_to_message_id in wanted:
                return [self.queue.pop(k)]
        return []

    def send_and_receive(self, messages, *, timeout=None):  # noqa: ANN001, ANN201
        raise AssertionError("a polling grid is read as it answers")


class AllAtOnceGrid(TrickleGrid):
    """A grid without ``pull_interval`` (as a deployed SuperLink's): only ``send_and_receive``."""

    pull_interval = None

    def send_and_receive(self, messages, *, timeout=None):  # noqa: ANN001, ANN201
        self.push_messages(messages)
        out, self.queue = self.queue, []
        return out


def _index(reply: Message) -> int:
    return int(reply.content["y"]["i"])


def test_each_reply_is_read_as_soon_as_it_is_pulled():
    grid, batches = TrickleGrid(), []

    def read(batch: list[Message]) -> list[int]:
        batches.append((grid.pulls, [_index(r) for r in batch]))
        return [_index(r) * 10 for r in batch]

    messages = _messages(4)

    def reader():  # noqa: ANN202
        assert all(m.metadata.message_id for m in messages), "the reader is built once the messages are sent"
        return read

    replies, outcomes = send_and_read(grid, messages, 5.0, reader)
    assert batches == [(1, [0]), (2, [1]), (3, [2]), (4, [3])]  # read after each pull, not once at the end
    assert [_index(r) for r in replies] == [0, 1, 2, 3] and outcomes == [0, 10, 20, 30]


def test_the_same_replies_and_outcomes_as_reading_them_all_at_once():
    def read(batch: list[Message]) -> list[tuple[int, str]]:
        return [(_index(r), r.metadata.reply_to_message_id) for r in batch]

    trickled = send_and_read(TrickleGrid(), _messages(5), 5.0, lambda: read)
    reads = []
    at_once = send_and_read(AllAtOnceGrid(), _messages(5), 5.0, lambda: lambda b: reads.append(len(b)) or read(b))
    assert reads == [5]  # one read of every reply
    assert [_index(r) for r in trickled[0]] == [_index(r) for r in at_once[0]] and trickled[1] == at_once[1]


def test_missing_replies_end_at_the_timeout_with_the_others_read():
    grid = TrickleGrid(silent={1})
    start = time.monotonic()
    replies, outcomes = send_and_read(grid, _messages(3), 0.2, lambda: lambda b: [_index(r) for r in b])
    assert time.monotonic() - start >= 0.2
    assert outcomes == [0, 2] and len(replies) == 2


def test_no_messages_return_at_once():
    grid = TrickleGrid()
    assert send_and_read(grid, [], 60.0, lambda: lambda b: [len(b)]) == ([], [])
    assert grid.pulls == 1


def test_a_stored_reply_wakes_the_server_at_once(monkeypatch):
    """With the engine's reply signal (``signal_replies``) the server does not wait out its
    fallback poll: here the fallback is a minute, and the reply comes after the first pull."""
    import threading

    import fedmtl.server.exchange as exchange
    from fedmtl.server.latency import REPLIES_STORED

    monkeypatch.setattr(exchange, "REPLY_FALLBACK", 60.0)
    grid = TrickleGrid(silent={0})
    stored = threading.Event()
    setattr(grid, REPLIES_STORED, stored)
    messages = _messages(1)

    def answer_later() -> None:
        while grid.pulls == 0:
            time.sleep(0.01)
        grid.queue.append(Message(RecordDict({"y": MetricRecord({"i": 0})}), reply_to=messages[0]))
        stored.set()

    helper = threading.Thread(target=answer_later)
    helper.start()
    start = time.monotonic()
    replies, outcomes = send_and_read(grid, messages, 120.0, lambda: lambda b: [_index(r) for r in b])
    helper.join()
    assert outcomes == [0] and grid.pulls == 2
    assert time.monotonic() - start < 30.0  # woken by the signal, not by the one-minute fallback
