"""Which clients the server can ask, on which node, and the seeded sampling among them.

Training clients are drawn without replacement with the server's sampling RNG
(:data:`fedmtl.seeds.Stream.SAMPLING`, checkpointed with the run), as ``server.sampling`` says:

- ``"uniform"``: every client alike;
- ``"proportional"``: by the client's number of training examples ``n_k``, as in the code of
  q-FFL (Li, Sanjabi, Beirami & Smith, "Fair Resource Allocation in Federated Learning",
  ICLR 2020; ``litian96/fair_flearn``, ``fedbase.select_clients`` with ``sampling = 2``:
  ``np.random.choice(..., replace=False, p=n_k / Σ n)``). Without replacement, each draw takes
  one of the clients not yet drawn with probability ∝ ``n_k`` among them: the first draw is
  exactly ∝ ``n_k``; a large client's chance to be in the round saturates at 1.

The paper then averages the sampled updates uniformly (``n_k`` is already in the sampling):
pair ``"proportional"`` with a uniform ``server.weighting`` (``"mean"``, or ``"qffl"``, whose
q = 0 is the plain mean), not ``"fedavg"``, which would weight by ``n_k`` a second time.
Evaluation clients (``server.fraction-evaluate``) are always drawn uniformly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from logging import INFO

import numpy as np
from flwr.common import log
from flwr.serverapp import Grid

from fedmtl.config import ExperimentConfig
from fedmtl.screening import KnownClients
from fedmtl.seeds import Stream, rng
from fedmtl.server.discovery import ClientDirectory, shared_supernodes

Sizes = Callable[[int], int]
"""A client id -> its number of training examples."""


def training_sizes(known: KnownClients) -> Sizes | None:
    """Each client's number of training examples, when the server knows them: it builds the
    federation as the clients do (``server.max-examples = 0``); ``None`` otherwise."""
    if known.max_examples:
        return None
    return lambda client: known(client).max_train


class Roster:
    """Client id -> node, kept current with reconnections, and the sampling RNG.

    Parameters
    ----------
    cfg : ExperimentConfig
        The run config (``data.num-clients``, ``engine.supernodes``, ``run.seed``,
        ``server.sampling``).
    directory : ClientDirectory
        Client discovery's result (followed when SuperNodes reconnect).
    sizes : Sizes or None
        Each client's number of training examples (:func:`training_sizes`); needed by
        ``server.sampling = "proportional"``, asked once per client at its first draw.
    """

    def __init__(self, cfg: ExperimentConfig, directory: ClientDirectory, sizes: Sizes | None = None) -> None:
        self.cfg = cfg
        self.directory = directory
        self.shared = shared_supernodes(cfg)
        """SuperNodes taking turns playing the clients (0: each client has its own)."""
        self.rng = rng(cfg.run.seed, Stream.SAMPLING)
        self.nodes: list[int] = []
        self.clients: dict[int, int] = {}
        """Client id -> its node id (the node of its first turn with shared SuperNodes)."""
        if cfg.server.sampling == "proportional" and sizes is None:
            raise ValueError(
                "server.sampling = 'proportional' needs every client's number of training examples, which "
                "this server does not know (it builds no data: server.max-examples > 0); use "
                "server.sampling = 'uniform'")
        self._sizes = sizes
        self._known_sizes: dict[int, int] = {}
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
        """Sample client ids (from ``pool``, default all) uniformly without replacement."""
        ids = list(self.clients) if pool is None else list(pool)
        k = min(len(ids), max(minimum, math.ceil(fraction * len(ids))))
        if k == len(ids):
            return ids
        return sorted(int(i) for i in self.rng.choice(ids, size=k, replace=False))

    def sample_train(self, fraction: float, minimum: int, pool: list[int] | None = None) -> list[int]:
        """Sample a round's training clients (from ``pool``, default all) as ``server.sampling`` says.

        ``"uniform"`` is :meth:`sample`. ``"proportional"`` draws the same number of clients
        without replacement, each draw ∝ ``n_k`` among the clients not yet drawn.
        """
        if self.cfg.server.sampling == "uniform":
            return self.sample(fraction, minimum, pool)
        ids = list(self.clients) if pool is None else list(pool)
        k = min(len(ids), max(minimum, math.ceil(fraction * len(ids))))
        if k == len(ids):
            return ids
        p = self.probabilities(ids)
        k = min(k, int(np.count_nonzero(p)))
        return sorted(int(i) for i in self.rng.choice(ids, size=k, replace=False, p=p))

    def size(self, client: int) -> int:
        """``client``'s number of training examples (asked once, then kept)."""
        if self._sizes is None:
            raise ValueError("the server does not know the clients' numbers of training examples")
        if client not in self._known_sizes:
            self._known_sizes[client] = int(self._sizes(client))
        return self._known_sizes[client]

    def probabilities(self, ids: list[int]) -> np.ndarray:
        """The chance of each of ``ids`` to be one draw: ``n_k / Σ n`` over ``ids`` (a client
        without training examples is never drawn)."""
        sizes = np.array([max(self.size(c), 0) for c in ids], dtype=np.float64)
        if not sizes.sum():
            raise ValueError("server.sampling = 'proportional': none of the clients to draw from has training examples")
        return sizes / sizes.sum()
