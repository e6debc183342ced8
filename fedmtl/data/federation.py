"""Federations: per-client train/test splits built once per process, lazily per client."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from fedmtl.tasks import TaskSpec


@dataclass
class Split:
    """Inputs and one target tensor per task.

    Parameters
    ----------
    x : torch.Tensor
        Inputs, shape ``(n, *input_shape)``.
    targets : dict[str, torch.Tensor]
        Task name -> targets of shape ``(n,)``.
    groups : dict[str, torch.Tensor]
        Sensitive/group attribute name -> integer group of every example (may be empty).
    """

    x: torch.Tensor
    targets: dict[str, torch.Tensor]
    groups: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.x)

    def restrict(self, tasks: list[str]) -> "Split":
        """The same inputs with the targets of ``tasks`` only."""
        return Split(self.x, {t: self.targets[t] for t in tasks}, self.groups)

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        """Mini-batches; shuffled when a ``generator`` is given, in order otherwise."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        out = []
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            out.append((self.x[idx], {t: y[idx] for t, y in self.targets.items()}))
        return out

    @staticmethod
    def concat(splits: list[Split]) -> Split:
        """Pool several splits (same tasks) into one."""
        tasks = splits[0].targets.keys()
        groups = splits[0].groups.keys()
        return Split(
            torch.cat([s.x for s in splits]),
            {t: torch.cat([s.targets[t] for s in splits]) for t in tasks},
            {g: torch.cat([s.groups[g] for s in splits]) for g in groups},
        )


@dataclass
class ClientData:
    """One client's local data."""

    client_id: int
    train: Split
    test: Split

    @property
    def tasks(self) -> list[str]:
        """Names of the tasks this client holds labels for."""
        return list(self.train.targets)


@dataclass
class Federation:
    """The clients of one dataset under one partition.

    Clients are built on first access by ``build_client`` and cached, so a process that
    serves a few clients never materialises the others.

    Parameters
    ----------
    input_shape : tuple[int, ...]
        Shape of one input.
    tasks : list[TaskSpec]
        The dataset's tasks.
    num_clients : int
        Number of clients.
    build_client : Callable[[int], ClientData]
        Builds client ``i``'s data.
    task_sets : list[list[str]] or None
        The tasks each client holds (``None``: all); other tasks' labels are dropped.
    transform : Callable[[ClientData], ClientData] or None
        Applied to every client's data once (feature skew).
    """

    input_shape: tuple[int, ...]
    tasks: list[TaskSpec]
    num_clients: int
    build_client: Callable[[int], ClientData]
    task_sets: list[list[str]] | None = None
    transform: Callable[[ClientData], ClientData] | None = None
    _cache: dict[int, ClientData] = field(default_factory=dict, repr=False)

    def client(self, client_id: int) -> ClientData:
        """Client ``client_id``'s data (built once, then cached)."""
        if not 0 <= client_id < self.num_clients:
            raise IndexError(f"client id {client_id} outside [0, {self.num_clients})")
        if client_id not in self._cache:
            data = self.build_client(client_id)
            if self.task_sets is not None:
                held = self.task_sets[client_id]
                data = ClientData(client_id, data.train.restrict(held), data.test.restrict(held))
            if self.transform is not None:
                data = self.transform(data)
            self._cache[client_id] = data
        return self._cache[client_id]

    def client_tasks(self, client_id: int) -> list[TaskSpec]:
        """The task specs client ``client_id`` holds (in dataset order)."""
        if self.task_sets is None:
            return list(self.tasks)
        held = set(self.task_sets[client_id])
        return [t for t in self.tasks if t.name in held]

    def clients(self) -> list[ClientData]:
        """All clients (builds every one)."""
        return [self.client(i) for i in range(self.num_clients)]
