"""Which SuperNode serves which client: discovery at start-up and after reconnections.

Every SuperNode answers a QUERY message with its ``partition-id`` (the client it serves) and
``num-partitions`` (:mod:`fedmtl.protocol`). :func:`discover_clients` waits until clients ``0..N-1`` are connected;
:class:`ClientDirectory` then follows SuperNodes that reconnect during a run (a restarted
SuperNode gets a new node id): before every round it queries nodes it has not seen and maps
their client to the newest node.
"""

from __future__ import annotations

import logging
import time

from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import MessageType
from flwr.serverapp import Grid

from fedmtl import protocol as wire
from fedmtl.config import ExperimentConfig
from fedmtl.data import DATASETS
from fedmtl.one_line import one_line
from fedmtl.screening import as_integer
from fedmtl.server.admission import Admission
from fedmtl.server.replies import has_record

log = logging.getLogger("fedmtl")


class FederationMismatch(RuntimeError):
    """The connected SuperNodes do not match ``data.num-clients``."""


def read_info(reply: Message, node: int) -> tuple[int, int] | str:
    """``(partition id, num partitions)`` of a query reply to the message sent to ``node``, or
    why it cannot be used (total: raises nothing). The reply must come from ``node`` and carry
    an ``info`` metric record whose two values are whole numbers (not bools), the partition id
    at least 0 and below num-partitions, which is at least 1 (a ClientApp whose node config
    has no ``num-partitions`` reports -1)."""
    source = reply.metadata.src_node_id
    if source != node:
        return f"its reply came from node {source}"
    if not has_record(reply.content, wire.INFO, MetricRecord):
        return f"its reply has no '{wire.INFO}' record"
    info = reply.content[wire.INFO]
    values = [as_integer(info.get(key)) for key in wire.INFO_KEYS]
    for key, value in zip(wire.INFO_KEYS, values, strict=True):
        if value is None:
            return f"its {key} is {str(info.get(key))[:40]!s}, not a whole number"
    partition, partitions = values
    if partitions == -1:
        return (f"its node config has no {wire.NUM_PARTITIONS} (start its SuperNode with --node-config "
                f"'{wire.PARTITION_ID}=<i> {wire.NUM_PARTITIONS}=<N>')")
    if partitions < 1:
        return f"its {wire.NUM_PARTITIONS} is {partitions}, not a positive whole number"
    if partition < 0 or partition >= partitions:
        return f"its partition-id {partition} is outside [0, num-partitions = {partitions})"
    return partition, partitions


def query_nodes(
    grid: Grid, node_ids: list[int], timeout: float
) -> tuple[dict[int, tuple[int, int]], dict[int, str], dict[int, str]]:
    """Ask nodes for ``(partition id, num partitions)``.

    Returns
    -------
    tuple
        ``{node id: info}`` of the nodes that answered, ``{node id: error}`` of those that
        failed, and ``{node id: problem}`` of those whose reply cannot be used
        (:func:`read_info`; a reply to no message asked is ignored with a warning).
    """
    content = RecordDict({wire.CONFIG: ConfigRecord({wire.KIND: wire.DISCOVER})})
    messages = [Message(content=content, message_type=MessageType.QUERY, dst_node_id=n) for n in node_ids]
    infos, errors, problems = {}, {}, {}
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    asked = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
    for reply in replies:
        node = asked.get(reply.metadata.reply_to_message_id)
        if node is None:
            log.warning("ignored a discovery reply from node %s to no message asked", reply.metadata.src_node_id)
        elif reply.has_error():
            errors[node] = one_line(str(reply.error.reason), 500)  # a client's text: one printable line
        elif node in infos or node in problems:
            problems[node] = "it replied twice"
        else:
            read = read_info(reply, node)
            (problems if isinstance(read, str) else infos)[node] = read
    for node in problems:
        infos.pop(node, None)
    return infos, errors, problems


class ClientDirectory:
    """``{client (partition id): node id}`` for clients ``0..expected-1``.

    Parameters
    ----------
    expected : int
        ``data.num-clients``.
    can_lower : bool, optional
        The advice for a federation smaller than ``expected`` may be to lower
        ``data.num-clients`` (not for a dataset of natural clients, whose count is the data's).
    """

    def __init__(self, expected: int, can_lower: bool = True) -> None:
        self.expected = expected
        self.can_lower = can_lower
        self.infos: dict[int, tuple[int, int]] = {}
        self.clients: dict[int, int] = {}
        self.ignored: set[int] = set()
        """Nodes whose discovery reply could not be used, during a run (never asked again)."""
        self.failed: set[int] = set()
        """Nodes whose discovery failed during a run, already said (each is asked again, said once)."""
        self.admission = Admission.from_environment()
        """Only the nodes the deployment registered, when it says which (:mod:`fedmtl.server.admission`)."""

    def mismatch(self, partitions: int) -> str:
        """Why a node's ``num-partitions`` does not fit ``expected`` (``""`` if it does)."""
        if partitions >= self.expected:
            return ""
        n = self.expected
        lower = f"lower data.num-clients to {partitions}, or " if self.can_lower else ""
        return (f"the federation has num-partitions = {partitions} but data.num-clients = {n}; {lower}"
                f"give it {n} clients (a simulation through `flwr run`: "
                f"--federation-config 'num-supernodes={n}', or use `fedmtl flwr-run`; a deployment: {n} "
                f"SuperNodes, each with --node-config 'partition-id=<0..{n - 1}> num-partitions={n}')")

    def check(self, node: int) -> None:
        """Fail when a node's federation is smaller than ``expected``."""
        problem = self.mismatch(self.infos[node][1])
        if problem:
            raise FederationMismatch(problem)

    def ignore(self, node: int, problem: str, strict: bool) -> None:
        """Refuse ``node`` for good: at start-up (``strict``) raise :class:`FederationMismatch`
        naming it; during a run log a warning and never ask it again."""
        if strict:
            raise FederationMismatch(f"node {node} failed client discovery: {problem}")
        log.warning("node %d ignored: %s", node, problem)
        self.ignored.add(node)

    def update(self, grid: Grid, timeout: float, strict: bool = True) -> list[int]:
        """Query nodes not seen before; map their clients to them. Return the clients remapped.

        Parameters
        ----------
        strict : bool
            Raise when a new node fails the query or replies what cannot be used, or claims
            a client another listed node already serves (at start-up: one line naming the
            nodes); otherwise a failed node is asked again next time, a node whose reply cannot
            be used (:func:`read_info`, a federation smaller than ``expected``) is ignored for
            good, with a warning, and a node claiming a served client takes it over (a
            reconnection: :func:`warn_if_taken_over`). Either way a node that does not answer
            within ``timeout`` is ignored for good, with a warning (asked again, it would hold
            up every later query by ``timeout``).
        """
        listed = set(grid.get_node_ids())
        new = self.admission.screen(n for n in sorted(listed) if n not in self.infos and n not in self.ignored)
        if not new:
            return []
        infos, errors, problems = query_nodes(grid, new, timeout)
        if errors and strict:
            node, error = next(iter(errors.items()))
            raise FederationMismatch(f"node {node} failed client discovery: {error}")
        for node, error in errors.items():
            if node not in self.failed:
                self.failed.add(node)
                log.warning("node %d failed client discovery: %s (it is asked again each round, said once)",
                            node, error)
        for node in new:  # asked again, a node that never answers would hold up every later query
            if node not in infos and node not in errors and node not in problems:
                log.warning("node %d ignored: it did not answer client discovery within %.0f s (a SuperNode "
                            "restarted later gets a new node id and is asked again)", node, timeout)
                self.ignored.add(node)
        for node, problem in problems.items():
            self.ignore(node, problem, strict)
        for node, problem in duplicate_claims(infos).items():
            self.ignore(node, problem, strict)
            del infos[node]
        remapped = []
        for node in sorted(infos):  # a new node claiming a mapped client is that client reconnected
            if problem := self.mismatch(infos[node][1]):
                if strict:
                    raise FederationMismatch(problem)
                self.ignore(node, problem, strict)
                continue
            partition = infos[node][0]
            served_by = self.clients.get(partition) if partition < self.expected else None
            if strict and served_by is not None and served_by != node and served_by in listed:
                raise FederationMismatch(
                    f"nodes {served_by} and {node} both claim partition-id {partition} (the second connected later); "
                    "give each SuperNode its own partition-id (a SuperNode restarted during start-up: submit the "
                    "run again once the SuperLink has dropped its old node id)")
            self.infos[node] = infos[node]
            if partition < self.expected:
                if served_by is not None and served_by != node:
                    remapped.append(partition)
                    warn_if_taken_over(partition, served_by, node, listed)
                self.clients[partition] = node
        return remapped


def warn_if_taken_over(client: int, old: int, new: int, listed: set[int]) -> None:
    """Warn when node ``new`` takes ``client`` over while the SuperLink still lists ``old``,
    the node that served it: a SuperNode restarted before its old id timed out, or a second
    SuperNode started with the same ``partition-id`` (which the server cannot tell apart; the
    newer claim wins, as a reconnection does)."""
    if old in listed:
        log.warning("client %d is served by node %d from now on; node %d, which served it, is still connected "
                    "(a restarted SuperNode, or a second one started with partition-id %d)", client, new, old, client)


def duplicate_claims(infos: dict[int, tuple[int, int]]) -> dict[int, str]:
    """``{node: problem}`` of the nodes that claim the same partition id as another node of
    ``infos`` (one query's answers): which of them serves the client cannot be told, so none
    is used (Flower's node ids are random: no order says which came last)."""
    claims: dict[int, list[int]] = {}
    for node, (partition, _) in sorted(infos.items()):
        claims.setdefault(partition, []).append(node)
    return {node: f"nodes {', '.join(map(str, nodes))} all claim partition-id {partition}"
            for partition, nodes in claims.items() if len(nodes) > 1 for node in nodes}


def shared_supernodes(cfg: ExperimentConfig) -> int:
    """The number of SuperNodes that take turns playing the clients (``engine.supernodes``
    resolved by ``fedmtl run`` below ``data.num-clients``), or 0 when every client has its own."""
    nodes = cfg.engine.supernodes
    return nodes if 0 < nodes < cfg.data.num_clients else 0


def discover_clients(grid: Grid, cfg: ExperimentConfig) -> ClientDirectory:
    """Ask every node for its partition id until clients ``0..N-1`` are all connected.

    A node reporting fewer partitions than ``data.num-clients`` (N) fails at once, naming
    the fix; otherwise discovery waits up to ``server.connect-timeout`` seconds. Nodes with
    larger partition ids (more SuperNodes than clients) stay idle, with a warning. When
    SuperNodes take turns playing the clients (:func:`shared_supernodes`), the partitions
    awaited are the SuperNodes' own ``0..S-1``.
    """
    shared = shared_supernodes(cfg)
    expected = shared or cfg.data.num_clients
    natural = DATASETS.get(cfg.data.dataset).natural_clients is not None  # their count is the data's
    directory = ClientDirectory(expected, can_lower=not shared and not natural)
    deadline = time.monotonic() + cfg.server.connect_timeout
    last_report = 0.0
    while True:
        directory.update(grid, cfg.server.connect_timeout)
        if len(directory.clients) == expected:
            break
        if time.monotonic() > deadline:
            missing = sorted(set(range(expected)) - set(directory.clients))
            raise FederationMismatch(
                f"after {cfg.server.connect_timeout:.0f} s, {len(directory.clients)} of data.num-clients = "
                f"{expected} clients are connected; missing partition ids {missing[:10]}"
            )
        if time.monotonic() - last_report > 10:
            log.info("waiting for SuperNodes: %d of %d clients connected", len(directory.clients), expected)
            last_report = time.monotonic()
        time.sleep(0.5)
    idle = sorted(node for node, (partition, _) in directory.infos.items() if partition >= expected)
    if idle:
        log.warning("%d SuperNode(s) (node %s) have partition ids >= data.num-clients = %d and stay idle", len(idle),
                    ", ".join(map(str, idle[:10])), expected)
    return directory
