"""Reading the clients' replies (:mod:`fedmtl.protocol`): pure functions of a Flower Message.

A reply counts as the client its message was sent to: :func:`addressees` maps the ids of
the messages sent to their clients, and each reply is matched through its
``reply_to_message_id``; a reply whose claimed ``partition-id`` disagrees is rejected. Only a
client's first answer from the node its message went to (:func:`destinations`; or the
SuperLink's error for that node) counts: any other answer, a second one of the client, one
from another node or one to no message of the round, is :class:`Ignored`. Each reader returns
one outcome: :class:`Accepted` (or :class:`Evaluated`), :class:`Rejected` (a reply that cannot
be used; :class:`Refused` when the client refused the call because its heads are not those the
server named), :class:`Failed` (an error in place of a reply) or :class:`Ignored`.

Reading is total: whatever a reply holds, a reader returns an outcome and raises nothing.
Metrics must be numbers (:func:`fedmtl.screening.number_values`) with the required keys and
in their ranges, of the client's own tasks (:class:`fedmtl.screening.ClientLimits`); arrays
are checked (serialization, dtype, shape, byte size) before they are decoded
(:func:`read_arrays`), and updates must be finite in float32.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

import numpy as np
import numpy.lib.format as npy_format
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID

from fedmtl import protocol as wire
from fedmtl.aggregation.plans import WHOLE
from fedmtl.one_line import described, one_line
from fedmtl.screening import (
    ClientLimits,
    contradicts_heads,
    evaluate_metrics_problem,
    keys_problem,
    number_values,
    placement_text,
    train_metrics_problem,
    update_problem,
)
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
    """A usable evaluation reply: ``{task: {metric: value}}`` and the test examples.

    ``per_task`` holds the ``test`` metrics (the model the method personalises);
    ``global_per_task`` the global model's ``test-global`` metrics (empty: the method has one
    model, or the client sent no global view).
    """

    client: int
    per_task: dict[str, dict[str, float]]
    num_examples: int
    global_per_task: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Rejected:
    """A reply that cannot be used, and why (``client`` is ``None`` when unknown).

    ``heads_out`` is the reply's ``heads-fingerprint-out`` when its metrics were usable and
    only its update was not: the client saved those heads (``None``: unknown; not compared).
    """

    client: int | None
    problem: str
    heads_out: float | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        # the problem quotes what the client sent: one printable line, whatever it quoted
        object.__setattr__(self, "problem", one_line(self.problem, MAX_REASON))


@dataclass(frozen=True)
class Ignored:
    """An answer that is no client's first answer from the node its message went to: a second
    answer of a client (:class:`SecondReply`), an answer from another node, or a reply to no
    message of the round (``client`` is then ``None``). It is logged and counts nothing: no
    reply, failure or rejection, no placement, no update. Each client asked counts once, by its
    first answer, so in ``rounds.csv`` replies + failures never exceed the clients asked.
    """

    client: int | None
    problem: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "problem", one_line(self.problem, MAX_REASON))


@dataclass(frozen=True)
class SecondReply(Ignored):
    """A reply, or an error, from a client that already answered this round: ignored (its
    first answer stands)."""

    problem: str = "a second answer of the same client"


@dataclass(frozen=True)
class Refused(Rejected):
    """A client that refused the call (:data:`fedmtl.protocol.REFUSAL`): its heads are not
    those the server named, and it neither trained nor saved heads. Counted as rejected."""


@dataclass(frozen=True)
class Contradicted(Rejected):
    """A training reply whose ``heads-fingerprint-in`` is not the one its call named (a reply
    of another call replayed, or a client that trained from other heads than the server knows
    it has): rejected, and it says nothing of the client's heads: the server keeps naming
    those it knew (:func:`fedmtl.server.heads.attempt_heads`), so a stale reply sent again is
    rejected every time, not every other time."""


@dataclass(frozen=True)
class Failed:
    """An error in place of a reply (the client's own message when it raised)."""

    client: int | None
    reason: str


Limits = Callable[[int], ClientLimits]
"""The limits of a client (:class:`fedmtl.screening.KnownClients`)."""
ARRAY_DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8")
"""The dtypes an update array may have."""
MAX_REASON = 500
"""The most characters of a client's error message kept (logged and in the run's errors)."""
MAX_NPY_HEADER = 65_536 + 10
"""The most bytes of an array's data beyond its values (NumPy's ``.npy`` header, version 1)."""


def client_error_message(reason: object) -> str:
    """The client's own exception message out of the engine's wrapped error text, as one
    printable line of at most :data:`MAX_REASON` characters (:func:`fedmtl.one_line.one_line`:
    a client cannot write a line of its own into the logs)."""
    reason = str(reason)
    marker = "Message: "
    if marker in reason:
        reason = reason[reason.rindex(marker) + len(marker) :]
    return one_line(reason.strip().removesuffix("'>").strip(), MAX_REASON)


def refusal_problem(record: object) -> str:
    """``refused: <the client's reason>`` of a :data:`fedmtl.protocol.REFUSAL` record, the
    reason kept to one printable line of at most :data:`MAX_REASON` characters."""
    reason = record.get(wire.REFUSAL_REASON) if isinstance(record, ConfigRecord) else None
    return "refused: " + ((one_line(reason, MAX_REASON) if isinstance(reason, str) else "") or "no reason given")


def has_record(content: RecordDict, key: str, kind: type) -> bool:
    """Whether ``content`` holds a record of ``kind`` under ``key`` (what ``key in
    content.metric_records`` and its kin say, without building those views each time)."""
    return isinstance(content.get(key), kind)


def addressees(messages: Iterable[Message]) -> dict[str, int]:
    """``{message id: client}`` of messages the grid has sent (their ids are set on sending)."""
    return {m.metadata.message_id: int(m.content[wire.CALL][wire.CLIENT_ID]) for m in messages}


def destinations(messages: Iterable[Message]) -> dict[str, int]:
    """``{message id: node id}``: the node each sent message went to."""
    return {m.metadata.message_id: m.metadata.dst_node_id for m in messages}


def addressee(reply: Message, sent: dict[str, int]) -> int | None:
    """The client whose message ``reply`` answers (``None``: no message of ``sent``)."""
    return sent.get(reply.metadata.reply_to_message_id)


def array_problem(key: str, array: object, shape: tuple[int, ...]) -> str:
    """Why ``array`` is not a well-formed array of ``shape`` (``""`` if it is), read from its
    metadata and byte size alone, before any decoding."""
    if not isinstance(array, Array):
        return f"'{key}' is not an array"
    # an Array's fields can be set after Flower built and checked it: each is type-checked here
    stype, dtype, declared = array.stype, array.dtype, array.shape
    if not (isinstance(stype, str) and isinstance(dtype, str)) or stype != "numpy.ndarray" or dtype not in ARRAY_DTYPES:
        return f"'{key}' has serialization '{one_line(stype, 32)}' and dtype '{one_line(dtype, 32)}'"
    if not isinstance(declared, tuple | list) or not all(type(n) is int for n in declared):
        return f"'{key}' has shape {one_line(declared, 64)}, expected {tuple(shape)}"
    declared = tuple(declared)
    if declared != tuple(shape):
        return f"'{key}' has shape {declared}, expected {tuple(shape)}"
    needed = math.prod(shape) * np.dtype(array.dtype).itemsize
    if not isinstance(array.data, bytes) or not needed < len(array.data) <= needed + MAX_NPY_HEADER:
        size = len(array.data) if isinstance(array.data, bytes) else None
        return f"'{key}' has {size} bytes of data, not the {needed} its shape and dtype need (and a header)"
    return ""


def npy_header(data: bytes) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """The shape, Fortran order, dtype and data offset an ``.npy`` header declares, read
    without decoding the data; raises on anything that is not a version 1 or 2 header."""
    stream = io.BytesIO(data)
    version = npy_format.read_magic(stream)
    readers = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}
    if version not in readers:
        raise ValueError(f"npy format version {version}")
    shape, fortran_order, dtype = readers[version](stream)
    return tuple(shape), bool(fortran_order), dtype, stream.tell()


def read_array(key: str, array: Array, shape: tuple[int, ...]) -> torch.Tensor | str:
    """Decode one array once :func:`array_problem` passed. Its ``.npy`` header is read first
    (:func:`npy_header`): the shape and dtype it declares must be the array's, and the data
    after it exactly their size, so that nothing a client sends is decoded beyond them (an
    archive, a header claiming a larger shape); any error decoding it is a problem, not a raise."""
    try:
        header_shape, fortran_order, dtype, offset = npy_header(array.data)
    except Exception as error:  # noqa: BLE001 - whatever the bytes hold, the reply is rejected
        return f"'{key}' cannot be decoded: {described(error, 120)}"
    if header_shape != tuple(shape) or str(dtype) != array.dtype:
        return (f"'{key}' decodes to shape {one_line(header_shape, 64)} and dtype {one_line(dtype, 32)}, "
                f"not those declared")
    count = math.prod(shape)
    if len(array.data) - offset != count * dtype.itemsize:
        return f"'{key}' has {len(array.data) - offset} bytes after its header, not {count * dtype.itemsize}"
    value = np.frombuffer(array.data, dtype=dtype, count=count, offset=offset)
    return torch.from_numpy(value.reshape(shape, order="F" if fortran_order else "C").copy())


def read_arrays(record: ArrayRecord, shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor] | str:
    """The tensors of ``record``, keyed and shaped as ``shapes``, or why not: keys are
    checked first, then each array's metadata and size (:func:`array_problem`), then it is decoded."""
    problem = keys_problem(record, shapes)
    if problem:
        return problem
    out = {}
    for key, shape in shapes.items():
        problem = array_problem(key, record[key], shape)
        value = problem or read_array(key, record[key], shape)
        if isinstance(value, str):
            return value
        out[key] = value
    return out


def answered(outcome: object, reply: Message, node: int | None) -> int | None:
    """The client ``outcome`` is the first answer of (a reply or error from the node its message
    went to, or the SuperLink's error for that node); ``None`` when it counts for no client
    (:class:`Ignored`)."""
    if isinstance(outcome, Ignored):
        return None
    return getattr(outcome, "client", None)


def from_addressee(reply: Message, node: int | None) -> bool:
    """Whether ``reply`` comes from ``node``, the node its message went to (``None``: not checked)."""
    return node is None or reply.metadata.src_node_id == node


def _check_sender(
    reply: Message, client: int | None, node: int | None, seen: Collection[int] = (),
) -> Failed | Rejected | Ignored | dict[str, float]:
    """The reply's metrics, once it is known to answer ``client`` from ``node`` for the first
    time (``seen``: the clients already answered); else why not. An error in place of a reply
    counts only from that node (or from the SuperLink, for it), and only as the client's first
    answer, too: any other answer is :class:`Ignored`."""
    kind = "an error" if reply.has_error() else "a reply"
    if client is None:
        return Ignored(None, f"{kind} to no message of this round")
    if client in seen:
        return SecondReply(client, f"a second answer ({kind}) of client {client}; its first stands")
    if not from_addressee(reply, node):
        if reply.has_error() and reply.metadata.src_node_id == SUPERLINK_NODE_ID:
            # the SuperLink answers for a node it lost, or for a message that expired: the client failed
            return Failed(client, f"the SuperLink answered for its node {node}: "
                                  f"{client_error_message(reply.error.reason)}")
        return Ignored(client, f"{kind} from node {reply.metadata.src_node_id} to the message sent to client "
                               f"{client} on node {node}")
    if reply.has_error():
        return Failed(client, client_error_message(reply.error.reason))
    if has_record(reply.content, wire.REFUSAL, ConfigRecord):
        return Refused(client, refusal_problem(reply.content[wire.REFUSAL]))
    if not has_record(reply.content, wire.METRICS, MetricRecord):
        return Rejected(client, "no metrics")
    values = number_values(reply.content[wire.METRICS])
    if isinstance(values, str):
        return Rejected(client, values)
    claimed = values.get(wire.PARTITION_ID)
    if claimed != client:
        return Rejected(client, f"partition-id {claimed} in the reply to client {client}")
    return values


def _read_update(reply: Message, like: dict[str, torch.Tensor]) -> str | dict[str, torch.Tensor]:
    if not has_record(reply.content, wire.UPDATE, ArrayRecord):
        return f"no '{wire.UPDATE}' arrays"
    state = read_arrays(reply.content[wire.UPDATE], {k: tuple(v.shape) for k, v in like.items()})
    problem = state if isinstance(state, str) else update_problem(state, like)
    return f"{wire.UPDATE}: {problem}" if problem else {WHOLE: flatten_state(state, list(like))}


def _read_parts(reply: Message, like: dict[str, torch.Tensor], tasks: list[str]) -> str | dict[str, torch.Tensor]:
    if not has_record(reply.content, wire.PARTS, ArrayRecord):
        return f"no '{wire.PARTS}' arrays"
    size = sum(v.numel() for v in like.values())
    parts = read_arrays(reply.content[wire.PARTS], {t: (size,) for t in tasks})
    problem = parts if isinstance(parts, str) else update_problem(
        parts, {t: torch.empty(size, device="meta") for t in tasks})
    return f"{wire.PARTS}: {problem}" if problem else {t: parts[t].to(torch.float32) for t in tasks}


def read_train_reply(
    reply: Message, client: int | None, like: dict[str, torch.Tensor], parts: bool, seen: Collection[int] = (),
    limits: Limits | None = None, node: int | None = None, call: wire.TrainCall | None = None,
) -> Accepted | Rejected | Failed | Ignored:
    """Read one training reply (total: any reply gives an outcome).

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
        Clients already answered this round (a reply, or an error in place of one, from the
        node their message went to): any later reply of theirs is rejected, and counts nothing
        else.
    limits : callable, optional
        The client's limits (its tasks, its data size); ``None``: not bounded.
    node : int, optional
        The node the message went to; the reply must come from it (``None``: not checked).
    call : fedmtl.protocol.TrainCall, optional
        The call the message made; the reply must agree with it
        (:func:`fedmtl.screening.train_metrics_problem`; ``None``: not checked).
    """
    checked = _check_sender(reply, client, node, seen)
    if not isinstance(checked, dict):
        return checked
    assert client is not None
    problem = train_metrics_problem(checked, limits(client) if limits else None, call)
    if problem:
        return Contradicted(client, problem) if contradicts_heads(checked, call) else Rejected(client, problem)
    tasks = sorted(wire.parse_metric_keys(checked, wire.TRAIN))
    rows = _read_parts(reply, like, tasks) if parts else _read_update(reply, like)
    if isinstance(rows, str):
        return Rejected(client, rows, heads_out=checked[wire.HEADS_OUT])
    return Accepted(client, rows, checked)


def read_evaluate_reply(
    reply: Message, client: int | None, limits: Limits | None = None, node: int | None = None,
    views: Collection[str] | None = None, seen: Collection[int] = (),
) -> Evaluated | Rejected | Failed | Ignored:
    """Read one evaluation reply (total; ``client``: the client its message was sent to,
    ``limits``, ``node`` and ``seen`` as in :func:`read_train_reply`; ``views``: the views the
    run's personalization method reports, :attr:`fedmtl.training.methods.Method.views`: a reply
    with metrics of another view, e.g. ``test-global`` from a one-model method, or without one
    of them, is rejected; ``None``: not known)."""
    checked = _check_sender(reply, client, node, seen)
    if not isinstance(checked, dict):
        return checked
    assert client is not None
    problem = evaluate_metrics_problem(checked, limits(client) if limits else None, views)
    if problem:
        return Rejected(client, problem)
    return Evaluated(client, wire.parse_metric_keys(checked, wire.TEST), int(checked[wire.NUM_EXAMPLES]),
                     wire.parse_metric_keys(checked, wire.TEST_GLOBAL))


def placement_row(reply: Message, client: int | None, server_round: int, stage: str,
                  node: int | None = None) -> tuple | None:
    """The ``placement.csv`` row of a reply (``None`` for one without placement or metrics, or
    from another node than ``node``, the one its message went to); each value a printable
    string of at most :data:`fedmtl.screening.MAX_PLACEMENT` characters."""
    content = reply.content
    usable = client is not None and from_addressee(reply, node)
    if not usable or not has_record(content, wire.PLACEMENT, ConfigRecord) or not has_record(
            content, wire.METRICS, MetricRecord):
        return None
    where = content[wire.PLACEMENT]
    return (server_round, client, stage, *(placement_text(where.get(key, "")) for key in wire.PLACEMENT_KEYS))
