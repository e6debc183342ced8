"""Shorter waits, and less polling, in Flower's in-memory Simulation Engine.

A simulated round has two fixed waits besides the clients' work (Flower 1.41), and both are
polls that also cost CPU the clients could use:

- the *dispatcher* thread (``vce_api.add_messages_to_queue``) moves newly pushed messages to
  the actors' queue, then sleeps 0.1 s, so a round's messages wait 50 ms on average before
  the first client starts; each of its scans asks the LinkState for every node's messages;
- the in-memory grid checks for replies every ``pull_interval`` = 0.1 s, so a round waits
  50 ms on average after its last reply.

fedmtl wakes the dispatcher as soon as the server pushes messages (:func:`signal_pushes` +
:func:`dispatch_on_push`); after a scan that found nothing it scans again on the next push or
after a second (:data:`RESCAN_INTERVAL`), after one that moved messages after Flower's 0.1 s;
it wakes the server as soon as the engine stores a reply (:func:`signal_replies`, read by
:func:`fedmtl.server.exchange.send_and_read`), and the grid checks for replies every
:data:`POLL_INTERVAL` seconds where nothing wakes it (:func:`poll_replies_often`). The
engine, its queues and its actors stay Flower's own; only the waits change. With another
Flower version whose dispatcher has a different signature, :func:`dispatch_on_push` leaves it
as it is.
"""

from __future__ import annotations

import inspect
import logging
import threading
from typing import Any

log = logging.getLogger("fedmtl")

POLL_INTERVAL = 0.01
"""Seconds between the simulation grid's checks for replies (Flower's default is 0.1)."""

RESCAN_INTERVAL = 1.0
"""Seconds between the dispatcher's scans when no push wakes it (Flower's: 0.1). Its workers
already take up to a second to see the end of a run (their queue's timeout)."""

REPLY_FALLBACK = 0.1
"""Seconds the server waits for a reply signal (:func:`signal_replies`) before it checks anyway."""

REPLIES_STORED = "_fedmtl_replies_stored"
"""The grid attribute holding the :class:`threading.Event` set when a reply is stored."""

MESSAGES_PUSHED = threading.Event()
"""Set when the ServerApp pushes messages; the dispatcher wakes on it."""

_DISPATCHER_ARGS = ["state", "queue", "nodes_mapping", "f_stop"]


def poll_replies_often(grid: Any) -> None:
    """Make an in-memory grid check for replies every :data:`POLL_INTERVAL` seconds."""
    if hasattr(grid, "pull_interval"):
        grid.pull_interval = min(grid.pull_interval, POLL_INTERVAL)


def _set_after_calls(owner: Any, method: str, event: threading.Event) -> None:
    """Wrap ``owner.method`` (on this object only) so that every call sets ``event`` once it returns."""
    call = getattr(owner, method)

    def call_and_set(*args: Any, **kwargs: Any) -> Any:
        out = call(*args, **kwargs)
        event.set()
        return out

    setattr(owner, method, call_and_set)


def signal_pushes(grid: Any) -> None:
    """Set :data:`MESSAGES_PUSHED` after every ``grid.push_messages`` call (this grid only)."""
    if getattr(grid, "_fedmtl_signals_pushes", False):
        return
    _set_after_calls(grid, "push_messages", MESSAGES_PUSHED)
    grid._fedmtl_signals_pushes = True


def signal_replies(grid: Any) -> None:
    """Give an in-memory grid a :class:`threading.Event` (attribute :data:`REPLIES_STORED`)
    set whenever the engine stores a reply in the grid's LinkState (the engine and the grid
    share that state); grids without a ``state`` are left as they are."""
    state = getattr(grid, "state", None)
    if state is None or not hasattr(state, "store_message_res") or hasattr(grid, REPLIES_STORED):
        return
    stored = threading.Event()
    _set_after_calls(state, "store_message_res", stored)
    setattr(grid, REPLIES_STORED, stored)


class _CountingQueue:
    """The dispatcher's queue, counting the messages put in it."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue
        self.puts = 0

    def put(self, item: Any, *args: Any, **kwargs: Any) -> None:
        self.puts += 1
        self.queue.put(item, *args, **kwargs)


class _WakeOnPush:
    """The dispatcher's stop event, whose ``wait`` also ends when messages are pushed.

    A scan moves at most one message per node, so after a scan that moved messages the next
    one comes after Flower's own wait (a node's next message: SuperNodes shared by several
    clients get several per exchange); after a scan that moved none, the dispatcher waits for
    a push, or :data:`RESCAN_INTERVAL` seconds.
    """

    def __init__(self, stop: threading.Event, queue: _CountingQueue) -> None:
        self.stop = stop
        self.queue = queue
        self._seen = 0
        """``queue.puts`` at the previous wait: more since then means the scan moved messages."""

    def is_set(self) -> bool:
        return self.stop.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        moved, self._seen = self.queue.puts != self._seen, self.queue.puts
        MESSAGES_PUSHED.wait(timeout if moved else max(timeout or 0.0, RESCAN_INTERVAL))
        MESSAGES_PUSHED.clear()  # messages pushed before this line are found by the next scan
        return self.stop.is_set()


def dispatch_on_push() -> bool:
    """Make the Simulation Engine's dispatcher wake when messages are pushed; return whether
    it was done (``False`` for a Flower whose dispatcher looks different)."""
    from flwr.server.superlink.fleet.vce import vce_api

    dispatcher = vce_api.add_messages_to_queue
    if getattr(dispatcher, "_fedmtl_wakes_on_push", False):
        return True
    if list(inspect.signature(dispatcher).parameters) != _DISPATCHER_ARGS:
        log.debug("Flower's simulation dispatcher has changed; its 0.1 s wait stays")
        return False

    def wake_on_push(state: Any, queue: Any, nodes_mapping: Any, f_stop: threading.Event) -> None:
        counting = _CountingQueue(queue)
        dispatcher(state, counting, nodes_mapping, _WakeOnPush(f_stop, counting))

    wake_on_push._fedmtl_wakes_on_push = True  # type: ignore[attr-defined]
    vce_api.add_messages_to_queue = wake_on_push
    return True
