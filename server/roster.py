"""Which clients the server can ask, on which node, and the seeded sampling among them."""

from __future__ import annotations

import math
from logging import INFO

from flwr.common import log
from flwr.serverapp import Grid

from fedmtl.config import ExperimentConfig
from fedmtl.seeds import Stream, rng
from fedmtl.server.discovery import ClientDirectory, shared_supernodes


class Roster:
    """Client id -> node, kept current with reconnections, and the sampling RNG.

    Parameters
    ----------
    cfg : ExperimentConfig
        The run config (``data.num-clients``, ``engine.supernodes``, ``run.seed``).
    directory : ClientDirectory
        Client discovery's result (followed when SuperNodes reconnect).
    """

    def __init__(self, cfg: ExperimentConfig, directory: ClientDirectory) -> None:
        self.cfg = cfg
        self.directory = directory
        self.shared = shared_supernodes(cfg)
        """SuperNodes taking turns playing the clients (0: each client has its own)."""
        self.rng = rng(cfg.run.seed, Stream.SAMPLING)
        self.nodes: list[int] = []
        self.clients: dict[int, int] = {}
        """Client id -> its node id (the node of its first turn with shared SuperNodes)."""
        self._map_clients()

    def _map_clients(self) -> None:
        nodes = dict(sorted(self.directory.clients.items()))
        if self.shared:
            self.nodes = [nodes[slot] for slot in range(self.shared)]
            self.clients = {c: self.nodes[c % self.shared] for c in range(self.cfg.data.num_clients)}
        else:
            self.nodes = list(nodes.values())
            self.clients = nodes

    def follow_reconnections(self, grid: Grid) -> None:
        """Map clients whose SuperNode reconnected (a new node id) to their new node."""
        for client in self.directory.update(grid, self.cfg.server.connect_timeout, strict=False):
            log(INFO, "client %d reconnected: now served by node %d", client, self.directory.clients[client])
        self._map_clients()

    def node(self, index: int, client: int) -> int:
        """The node of the ``index``-th message of an exchange, for ``client`` (with shared
        SuperNodes, the i-th message goes to the i-th node)."""
        return self.nodes[index % self.shared] if self.shared else self.clients[client]

    def sample(self, fraction: float, minimum: int, pool: list[int] | None = None) -> list[int]:
        """Sample client ids (from ``pool``, default all) without replacement."""
        ids = list(self.clients) if pool is None else list(pool)
        k = min(len(ids), max(minimum, math.ceil(fraction * len(ids))))
        if k == len(ids):
            return ids
        return sorted(int(i) for i in self.rng.choice(ids, size=k, replace=False))
