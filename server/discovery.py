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

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common import MessageType
from flwr.serverapp import Grid

from fedmtl import protocol as wire
from fedmtl.config import ExperimentConfig

log = logging.getLogger("fedmtl")


class FederationMismatch(RuntimeError):
    """The connected SuperNodes do not match ``data.num-clients``."""


def query_nodes(
    grid: Grid, node_ids: list[int], timeout: float
) -> tuple[dict[int, tuple[int, int]], dict[int, str]]:
    """Ask nodes for ``(partition id, num partitions)``.

    Returns
    -------
    tuple
        ``{node id: info}`` of the nodes that answered and ``{node id: error}`` of those
        that failed.
    """
    content = RecordDict({wire.CONFIG: ConfigRecord({wire.KIND: wire.DISCOVER})})
    messages = [Message(content=content, message_type=MessageType.QUERY, dst_node_id=n) for n in node_ids]
    infos, errors = {}, {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = reply.metadata.src_node_id
        if reply.has_error():
            errors[node] = reply.error.reason
            continue
        info = reply.content[wire.INFO]
        infos[node] = (int(info[wire.PARTITION_ID]), int(info[wire.NUM_PARTITIONS]))
    return infos, errors


class ClientDirectory:
    """``{client (partition id): node id}`` for clients ``0..expected-1``.

    Parameters
    ----------
    expected : int
        ``data.num-clients``.
    """

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.infos: dict[int, tuple[int, int]] = {}
        self.clients: dict[int, int] = {}

    def check(self, node: int) -> None:
        """Fail when a node's federation is smaller than ``expected``."""
        partitions = self.infos[node][1]
        if partitions < self.expected:
            raise FederationMismatch(
                f"the federation has num-partitions = {partitions} but data.num-clients = "
                f"{self.expected}; give it at least {self.expected} SuperNodes (for `flwr run`: "
                f"--federation-config 'num-supernodes={self.expected}', or use `fedmtl flwr-run`)"
            )

    def update(self, grid: Grid, timeout: float, strict: bool = True) -> list[int]:
        """Query nodes not seen before; map their clients to them. Return the clients remapped.

        Parameters
        ----------
        strict : bool
            Raise when a new node fails the query (at start-up); otherwise it is asked
            again next time.
        """
        new = [n for n in grid.get_node_ids() if n not in self.infos]
        if not new:
            return []
        infos, errors = query_nodes(grid, new, timeout)
        if errors and strict:
            raise FederationMismatch(f"a node failed client discovery: {next(iter(errors.values()))}")
        remapped = []
        for node in sorted(infos):  # node ids grow with time: the newest node wins
            self.infos[node] = infos[node]
            self.check(node)
            partition = infos[node][0]
            if partition < self.expected:
                if partition in self.clients and self.clients[partition] != node:
                    remapped.append(partition)
                self.clients[partition] = node
        return remapped


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
    expected = shared_supernodes(cfg) or cfg.data.num_clients
    directory = ClientDirectory(expected)
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
    idle = len(directory.infos) - expected
    if idle > 0:
        log.warning("%d SuperNodes have partition ids >= data.num-clients = %d and stay idle", idle, expected)
    return directory
