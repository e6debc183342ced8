"""Reading the clients' replies (:mod:`fedmtl.protocol`): pure functions of a Flower Message.

A reply counts as the client its message was sent to: :func:`addressees` maps the ids of
the messages sent to their clients, and each reply is matched through its
``reply_to_message_id``; a reply whose claimed ``partition-id`` disagrees is rejected. Each
reader returns one outcome: :class:`Accepted` (or :class:`Evaluated`), :class:`Rejected`
(a reply that cannot be used) or :class:`Failed` (an error in place of a reply).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

import torch
from flwr.app import Message

from fedmtl import protocol as wire
from fedmtl.aggregation.plans import WHOLE
from fedmtl.screening import metrics_problem, update_problem
from fedmtl.server.vectors import flatten_state


@dataclass(frozen=True)
class Accepted:
    """A usable training reply.

    Attributes
    ----------
    client : int
        The client the message was sent to.
    rows : dict[str, torch.Tensor]
        Flat float32 update rows: ``{WHOLE: update}``, or ``{task: part}`` in task order.
    metrics : dict[str, float]
        The reply's metrics.
    """

    client: int
    rows: dict[str, torch.Tensor]
    metrics: dict[str, float]


@dataclass(frozen=True)
class Evaluated:
    """A usable evaluation reply: ``{task: {metric: value}}`` and the test examples."""

    client: int
    per_task: dict[str, dict[str, float]]
    num_examples: int


@dataclass(frozen=True)
class Rejected:
    """A reply that cannot be used, and why (``client`` is ``None`` when unknown)."""

    client: int | None
    problem: str


@dataclass(frozen=True)
class Failed:
    """An error in place of a reply (the client's own message when it raised)."""

    client: int | None
    reason: str


def client_error_message(reason: str) -> str:
    """The client's own exception message out of the engine's wrapped error text."""
    marker = "Message: "
    if marker in reason:
        reason = reason[reason.rindex(marker) + len(marker) :]
    return reason.strip().removesuffix("'>").strip()


def addressees(messages: Iterable[Message]) -> dict[str, int]:
    """``{message id: client}`` of messages the grid has sent (their ids are set on sending)."""
    return {m.metadata.message_id: int(m.content[wire.CALL][wire.CLIENT_ID]) for m in messages}


def addressee(reply: Message, sent: dict[str, int]) -> int | None:
    """The client whose message ``reply`` answers (``None``: no message of ``sent``)."""
    return sent.get(reply.metadata.reply_to_message_id)


def _check_sender(reply: Message, client: int | None) -> Failed | Rejected | dict[str, float]:
    """The reply's metrics, once it is known to answer ``client``; else why not."""
    if reply.has_error():
        return Failed(client, client_error_message(reply.error.reason))
    if client is None:
        return Rejected(None, "a reply to no message of this round")
    if wire.METRICS not in reply.content.metric_records:
        return Rejected(client, "no metrics")
    values = {k: float(v) for k, v in reply.content[wire.METRICS].items()}
    claimed = values.get(wire.PARTITION_ID)
    if claimed != client:
        return Rejected(client, f"partition-id {claimed} in the reply to client {client}")
    return values


def _read_update(reply: Message, like: dict[str, torch.Tensor]) -> str | dict[str, torch.Tensor]:
    if wire.UPDATE not in reply.content.array_records:
        return f"no '{wire.UPDATE}' arrays"
    state = reply.content[wire.UPDATE].to_torch_state_dict()
    problem = update_problem(state, like)
    return f"{wire.UPDATE}: {problem}" if problem else {WHOLE: flatten_state(state, list(like))}


def _read_parts(reply: Message, like: dict[str, torch.Tensor], tasks: list[str]) -> str | dict[str, torch.Tensor]:
    if wire.PARTS not in reply.content.array_records:
        return f"no '{wire.PARTS}' arrays"
    parts = reply.content[wire.PARTS].to_torch_state_dict()
    size = sum(v.numel() for v in like.values())
    problem = update_problem(parts, {t: torch.empty(size, device="meta") for t in tasks})
    return f"{wire.PARTS}: {problem}" if problem else {t: parts[t].to(torch.float32) for t in tasks}


def read_train_reply(
    reply: Message, client: int | None, like: dict[str, torch.Tensor], parts: bool, seen: Collection[int] = ()
) -> Accepted | Rejected | Failed:
    """Read one training reply.

    Parameters
    ----------
    reply : flwr.app.Message
        The reply.
    client : int or None
        The client its message was sent to (:func:`addressee`).
    like : dict[str, torch.Tensor]
        The global federated state sent (keys, shapes, and the flat layout's order).
    parts : bool
        The message asked for task parts (one per task the reply has training metrics of).
    seen : collection of int
        Clients whose reply this round was already read.
    """
    checked = _check_sender(reply, client)
    if not isinstance(checked, dict):
        return checked
    assert client is not None
    if client in seen:
        return Rejected(client, "a second reply from the same client")
    problem = metrics_problem(checked)
    if problem:
        return Rejected(client, problem)
    tasks = sorted(wire.parse_metric_keys(checked, wire.TRAIN))
    rows = _read_parts(reply, like, tasks) if parts else _read_update(reply, like)
    return Rejected(client, rows) if isinstance(rows, str) else Accepted(client, rows, checked)


def read_evaluate_reply(reply: Message, client: int | None) -> Evaluated | Rejected | Failed:
    """Read one evaluation reply (``client``: the client its message was sent to)."""
    checked = _check_sender(reply, client)
    if not isinstance(checked, dict):
        return checked
    assert client is not None
    count = checked.get(wire.NUM_EXAMPLES)
    if count is None:
        return Rejected(client, f"no {wire.NUM_EXAMPLES}")
    return Evaluated(client, wire.parse_metric_keys(checked, wire.TEST), int(count))


def placement_row(reply: Message, client: int | None, server_round: int, stage: str) -> tuple | None:
    """The ``placement.csv`` row of a reply (``None`` for one without placement or metrics)."""
    content = reply.content
    if client is None or wire.PLACEMENT not in content.config_records or wire.METRICS not in content.metric_records:
        return None
    where = content[wire.PLACEMENT]
    return (server_round, client, stage, *(str(where.get(key, "")) for key in wire.PLACEMENT_KEYS))
