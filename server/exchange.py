"""One exchange with the clients: the messages of an attempt, and what its replies say.

The strategy sends the messages built here through the grid and hands the replies back;
these functions read them (:mod:`fedmtl.server.replies`) and log what went wrong, in the
order the server reports it: client errors, missing replies, then rejected replies.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Collection
from logging import WARNING
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common import log
from flwr.serverapp import Grid

from fedmtl import protocol as wire
from fedmtl.server.latency import REPLIES_STORED, REPLY_FALLBACK
from fedmtl.server.replies import (
    Accepted,
    Evaluated,
    Failed,
    Ignored,
    Limits,
    Refused,
    Rejected,
    addressee,
    addressees,
    answered,
    destinations,
    placement_row,
    read_evaluate_reply,
    read_train_reply,
)
from fedmtl.server.roster import Roster


def build_messages(
    arrays: ArrayRecord, config: ConfigRecord, roster: Roster, clients: list[int], kind: str, call: wire.Call,
    heads: Callable[[int], dict[str, float | bool]] | None = None,
) -> list[Message]:
    """One message per client: the global model, the run config and the call's values (with
    ``heads``: the call fields naming the heads each client must start from,
    :meth:`fedmtl.server.heads.HeadsLedger.expected`).

    The run config is one record shared by every message (Flower checks every value of a
    new record); the per-message values travel in ``"call"``.
    """
    calls = [dataclasses.replace(call, client=c, **(heads(c) if heads else {})) for c in clients]
    return [Message(RecordDict({wire.ARRAYS: arrays, wire.CONFIG: config, wire.CALL: ConfigRecord(one.values())}),
                    dst_node_id=roster.node(i, c), message_type=kind)
            for i, (c, one) in enumerate(zip(clients, calls, strict=True))]


def train_reply_reader(
    messages: list[Message], like: dict[str, torch.Tensor], parts: bool, seen: Collection[int],
    limits: Limits | None = None,
) -> Callable[[list[Message]], list[Accepted | Rejected | Failed | Ignored]]:
    """A reader of an attempt's training replies, called on each batch as it comes; it reads
    them in order (``seen``: clients already accepted this round; a second answer of a client,
    in this batch or an earlier one, is ignored; ``limits``: each client's limits). A reply
    counts as the client its message was sent to, must come from the node it went to, and must
    agree with the call the message made (the heads named, the losses asked for).
    ``messages`` must have been sent (their ids are set)."""
    sent, nodes, done = addressees(messages), destinations(messages), set(seen)
    calls = {m.metadata.message_id: wire.read_call(m.content[wire.CALL]) for m in messages}

    def read(replies: list[Message]) -> list[Accepted | Rejected | Failed | Ignored]:
        outcomes = []
        for reply in replies:
            node = nodes.get(reply.metadata.reply_to_message_id)
            call = calls.get(reply.metadata.reply_to_message_id)
            outcome = read_train_reply(reply, addressee(reply, sent), like, parts, done, limits, node, call)
            if (client := answered(outcome, reply, node)) is not None:
                done.add(client)
            outcomes.append(outcome)
        return outcomes

    return read


def send_and_read(
    grid: Grid, messages: list[Message], timeout: float, reader: Callable[[], Callable[[list[Message]], list[Any]]],
) -> tuple[list[Message], list[Any]]:
    """Send ``messages`` and read their replies as they arrive; return the replies and what was
    read from them, both in the order they came. ``reader()`` is called once the messages are
    sent (their ids set) and gives the function that reads each batch
    (:func:`train_reply_reader`).

    The same as ``grid.send_and_receive(messages, timeout=timeout)`` followed by one read of
    all the replies, when reading a batch depends only on the batches before it. On a grid
    that polls often (the Simulation Engine's, which has a ``pull_interval``) the server reads
    the first replies while the last clients still train; where the engine signals each stored
    reply (:func:`fedmtl.server.latency.signal_replies`) it wakes on that signal, else it checks
    every ``pull_interval`` seconds. Other grids (a deployed SuperLink's, which Flower polls
    every 3 s) go through ``send_and_receive``.
    """
    interval = getattr(grid, "pull_interval", None)
    if not isinstance(interval, int | float):
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        return replies, reader()(replies)
    stored = getattr(grid, REPLIES_STORED, None)  # set by the engine on each reply (signal_replies)
    waiting = set(grid.push_messages(messages))
    read = reader()
    end = time.time() + timeout
    replies: list[Message] = []
    outcomes: list[Any] = []
    while time.time() < end:  # Flower's loop (InMemoryGrid.send_and_receive), reading each batch
        if stored is not None:
            stored.clear()  # a reply stored from here on is pulled now or wakes the wait below
        batch = list(grid.pull_messages(waiting))
        waiting.difference_update(reply.metadata.reply_to_message_id for reply in batch)
        replies += batch
        outcomes += read(batch) if batch else []
        if not waiting:
            break
        if stored is not None:
            stored.wait(max(0.0, min(REPLY_FALLBACK, end - time.time())))
        else:
            time.sleep(interval)
    return replies, outcomes


def read_evaluate_replies(
    messages: list[Message], replies: list[Message], limits: Limits | None = None,
    views: Collection[str] | None = None,
) -> list[Evaluated | Rejected | Failed | Ignored]:
    """Read an exchange's evaluation replies in order (as :func:`train_reply_reader`; a
    second answer of a client is ignored; ``views``: the views the run's method reports)."""
    sent, nodes, done, outcomes = addressees(messages), destinations(messages), set(), []
    for reply in replies:
        node = nodes.get(reply.metadata.reply_to_message_id)
        outcome = read_evaluate_reply(reply, addressee(reply, sent), limits, node, views, done)
        if (client := answered(outcome, reply, node)) is not None:
            done.add(client)
        outcomes.append(outcome)
    return outcomes


def unanswered(messages: list[Message], replies: list[Message], outcomes: list | None = None) -> int:
    """How many of ``messages`` got no answer that counts (within the grid's timeout): no reply,
    or only answers read as :class:`fedmtl.server.replies.Ignored` (``outcomes``: what was read
    from each of ``replies``, in order; ``None``: every reply counts), such as one from another
    node than the message went to."""
    counted = [True] * len(replies) if outcomes is None else [not isinstance(o, Ignored) for o in outcomes]
    answered = {reply.metadata.reply_to_message_id for reply, counts in zip(replies, counted, strict=True) if counts}
    return sum(m.metadata.message_id not in answered for m in messages)


def client_failures(outcomes: list, missing: int, timeout: float) -> list[tuple[int | None, str]]:
    """The client errors among ``outcomes``, ``(client, message)`` each, and one entry
    ``(None, reason)`` for the ``missing`` replies (when any). The strategy reports them through
    :class:`fedmtl.progress.ClientErrors`: each distinct error once on the console, every one in
    the run's ``client-errors.log``."""
    failures: list[tuple[int | None, str]] = [(o.client, o.reason) for o in outcomes if isinstance(o, Failed)]
    if missing > 0:
        failures.append((None, f"{missing} client(s) sent no reply within server.timeout = {timeout:g} s"))
    return failures


def log_rejections(server_round: int, stage: str, outcomes: list) -> list[Rejected]:
    """Log the rejected replies among ``outcomes`` and the ignored answers (which count nothing:
    :class:`fedmtl.server.replies.Ignored`); return the rejected ones."""
    for o in outcomes:
        if isinstance(o, Ignored):
            log(WARNING, "round %d %s: ignored %s", server_round, stage, o.problem)
    rejected = [o for o in outcomes if isinstance(o, Rejected)]
    for o in rejected:
        who = f"client {o.client}" if o.client is not None else "a client"
        if stage == "training":
            log(WARNING, "round %d: rejected the update of %s: %s", server_round, who, o.problem)
        else:
            log(WARNING, "round %d %s: rejected the reply of %s: %s", server_round, stage, who, o.problem)
    return rejected


def placement_rows(
    server_round: int, stage: str, messages: list[Message], replies: list[Message], outcomes: list,
) -> list[tuple]:
    """The ``placement.csv`` rows of an exchange's replies, sorted: one per client's first
    answer that is a reply (``outcomes``: what was read from each of ``replies``, in order; a
    second reply of a client, read as a :class:`fedmtl.server.replies.SecondReply`, places
    nothing, and neither does a refusal, :class:`fedmtl.server.replies.Refused`: the client
    computed nothing, and a refusal carries no placement)."""
    sent, nodes = addressees(messages), destinations(messages)
    rows = []
    for reply, outcome in zip(replies, outcomes, strict=True):
        node = nodes.get(reply.metadata.reply_to_message_id)
        if not reply.has_error() and not isinstance(outcome, Refused) and answered(outcome, reply, node) is not None:
            rows.append(placement_row(reply, addressee(reply, sent), server_round, stage, node))
    return sorted(row for row in rows if row is not None)
