"""The Simulation Engine's waits (server/latency.py): wake the dispatcher on a push, the server on a reply."""

from __future__ import annotations

import queue
import threading
import time

from flwr.server.superlink.fleet.vce import vce_api

from fedmtl.server.latency import (
    MESSAGES_PUSHED,
    POLL_INTERVAL,
    REPLIES_STORED,
    RESCAN_INTERVAL,
    _CountingQueue,
    _WakeOnPush,
    dispatch_on_push,
    poll_replies_often,
    signal_pushes,
    signal_replies,
)


class Grid:
    """A grid's two attributes that fedmtl changes."""

    def __init__(self) -> None:
        self.pull_interval = 0.1
        self.pushed: list[list[str]] = []

    def push_messages(self, messages):
        self.pushed.append(list(messages))
        return [f"id-{m}" for m in messages]


def test_signal_pushes_sets_the_event_after_each_push_and_wraps_once():
    grid = Grid()
    signal_pushes(grid)
    signal_pushes(grid)
    MESSAGES_PUSHED.clear()
    assert grid.push_messages(["a", "b"]) == ["id-a", "id-b"]
    assert MESSAGES_PUSHED.is_set() and grid.pushed == [["a", "b"]]  # pushed once, not twice
    poll_replies_often(grid)
    assert grid.pull_interval == POLL_INTERVAL


def _moved_one() -> _CountingQueue:
    """A dispatcher queue whose last scan moved a message (so a wait takes Flower's timeout)."""
    moved = _CountingQueue(queue.Queue())
    moved.put("m")
    return moved


def test_the_dispatcher_wait_ends_on_a_push_and_reports_the_stop_event():
    stop = threading.Event()
    MESSAGES_PUSHED.clear()
    results: list[bool] = []
    waiter = threading.Thread(target=lambda: results.append(_WakeOnPush(stop, _moved_one()).wait(None)))
    waiter.start()
    MESSAGES_PUSHED.set()
    waiter.join(timeout=30)
    assert not waiter.is_alive(), "a push did not end the dispatcher's wait"
    assert results == [False] and not MESSAGES_PUSHED.is_set()
    stop.set()
    assert _WakeOnPush(stop, _moved_one()).wait(0) is True and _WakeOnPush(stop, _moved_one()).is_set()


class State:
    """The two LinkState calls the dispatcher makes: messages per node, taken once."""

    def __init__(self) -> None:
        self.inbox: dict[int, list[str]] = {1: [], 2: []}
        self.lock = threading.Lock()

    def get_message_ins(self, node_id: int, limit: int | None = None) -> list[str]:
        with self.lock:
            taken, self.inbox[node_id] = self.inbox[node_id][:limit], self.inbox[node_id][limit:]
        return taken


def test_flowers_dispatcher_is_wrapped_once_and_still_moves_every_message():
    assert dispatch_on_push() is True and dispatch_on_push() is True
    dispatcher = vce_api.add_messages_to_queue
    assert getattr(dispatcher, "_fedmtl_wakes_on_push", False)
    state, out, stop = State(), queue.Queue(), threading.Event()
    thread = threading.Thread(target=dispatcher, args=(state, out, {1: 0, 2: 1}, stop))
    thread.start()
    try:
        with state.lock:
            state.inbox[1] += ["m1"]
            state.inbox[2] += ["m2"]
        MESSAGES_PUSHED.set()
        got = {out.get(timeout=30), out.get(timeout=30)}
        assert got == {"m1", "m2"}
    finally:
        stop.set()
        MESSAGES_PUSHED.set()
        thread.join(timeout=30)
    assert not thread.is_alive()


class ReplyState:
    """The LinkState call the engine makes for each reply."""

    def __init__(self) -> None:
        self.stored: list[str] = []

    def store_message_res(self, message: str) -> str:
        self.stored.append(message)
        return f"id-{message}"


def test_signal_replies_sets_the_grids_event_on_each_stored_reply_and_wraps_once():
    grid = Grid()
    grid.state = ReplyState()
    signal_replies(grid)
    event = getattr(grid, REPLIES_STORED)
    signal_replies(grid)
    assert getattr(grid, REPLIES_STORED) is event  # wrapped once
    assert not event.is_set()
    assert grid.state.store_message_res("r1") == "id-r1"
    assert event.is_set() and grid.state.stored == ["r1"]  # stored once, then signalled
    bare = Grid()  # a grid without a LinkState (a deployed one) is left as it is
    signal_replies(bare)
    assert not hasattr(bare, REPLIES_STORED)


def test_after_a_scan_that_moved_nothing_the_dispatcher_waits_the_rescan_interval():
    stop, moved = threading.Event(), _CountingQueue(queue.Queue())
    wake = _WakeOnPush(stop, moved)
    MESSAGES_PUSHED.clear()
    start = time.monotonic()
    assert wake.wait(0.1) is False  # Flower asks for 0.1 s; nothing was moved
    assert time.monotonic() - start >= RESCAN_INTERVAL * 0.99


def test_a_nodes_second_message_is_moved_without_a_new_push(monkeypatch):
    """A scan moves one message per node: SuperNodes shared by several clients get several per
    exchange, and the next scan must come soon, not after the idle rescan interval."""
    import fedmtl.server.latency as latency

    monkeypatch.setattr(latency, "RESCAN_INTERVAL", 600.0)
    assert dispatch_on_push() is True
    state, out, stop = State(), queue.Queue(), threading.Event()
    thread = threading.Thread(target=vce_api.add_messages_to_queue, args=(state, out, {1: 0, 2: 1}, stop))
    thread.start()
    try:
        with state.lock:
            state.inbox[1] += ["m1", "m1-second"]
        MESSAGES_PUSHED.set()
        assert [out.get(timeout=60), out.get(timeout=60)] == ["m1", "m1-second"]
    finally:
        stop.set()
        MESSAGES_PUSHED.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
