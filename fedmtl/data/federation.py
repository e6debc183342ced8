"""Federations: per-client train/test splits built once per process, lazily per client."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from fedmtl.data.checks import DataError, check_client_data
from fedmtl.seeds import Stream
from fedmtl.seeds import rng as rng_of
from fedmtl.tasks import TaskSpec

if TYPE_CHECKING:
    from fedmtl.config import DataSection


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
    group_names : dict[str, tuple[str, ...]]
        Attribute name -> the names of its values (group ``i`` is ``group_names[g][i]``), used
        in the group metrics' names; an attribute without names is shown by its integer codes.
    """

    x: torch.Tensor
    targets: dict[str, torch.Tensor]
    groups: dict[str, torch.Tensor] = field(default_factory=dict)
    group_names: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.x)

    def restrict(self, tasks: list[str]) -> Split:
        """The same inputs with the targets of ``tasks`` only."""
        return Split(self.x, {t: self.targets[t] for t in tasks}, self.groups, self.group_names)

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
            splits[0].group_names,
        )


@dataclass
class ClientData:
    """One client's local data."""

    client_id: int
    train: Split
    test: Split
    validation: Split | None = None

    @property
    def tasks(self) -> list[str]:
        """Names of the tasks this client holds labels for."""
        return list(self.train.targets)


CLIENT_CACHE_SIZE = 1024
"""Clients whose data a process keeps built (least recently used ones are dropped)."""


@dataclass
class Federation:
    """The clients of one dataset under one partition.

    Clients are built on first access by ``build_client`` and cached, so a process that
    serves a few clients never materialises the others. The cache keeps the
    :data:`CLIENT_CACHE_SIZE` clients used last, so a process that serves many clients over a
    long run holds a bounded amount of data (a client dropped from it is rebuilt, identically,
    when it comes back).

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
    split_sizes : Callable[[int], tuple[int, int]] or None
        Client ``i``'s ``(train, test)`` example counts without building its data (``None``:
        :meth:`sizes` builds the client to count them). What a server needs to bound the
        counts clients report (:class:`fedmtl.screening.KnownClients`).
    """

    input_shape: tuple[int, ...]
    tasks: list[TaskSpec]
    num_clients: int
    build_client: Callable[[int], ClientData]
    task_sets: list[list[str]] | None = None
    transform: Callable[[ClientData], ClientData] | None = None
    split_sizes: Callable[[int], tuple[int, int]] | None = None
    name: str = ""
    """The dataset's registered name (in the messages of :mod:`fedmtl.data.checks`)."""
    declared_groups: dict[str, tuple[str, ...]] | None = None
    """The group attributes and value names the dataset declares
    (:attr:`fedmtl.data.DatasetEntry.groups`; ``None``: not declared): every split's groups
    must be these (:mod:`fedmtl.data.checks`)."""
    _cache: dict[int, ClientData] = field(default_factory=dict, repr=False)
    _cache_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)
    """Guards ``_cache``: ClientApp calls in threads of one process (the in-process backend)
    ask for different clients at once; a client is built outside it."""

    def __getstate__(self) -> dict:
        """Pickled and copied without its lock (a copy gets a fresh one)."""
        state = dict(self.__dict__)
        state.pop("_cache_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._cache_lock = threading.Lock()

    def client(self, client_id: int) -> ClientData:
        """Client ``client_id``'s data (built once, then cached; safe from several threads)."""
        self._check_id(client_id)
        with self._cache_lock:
            data = self._cache.pop(client_id, None)
            if data is not None:
                self._cache[client_id] = data  # most recently used last
                return data
        data = self._build(client_id)
        with self._cache_lock:
            self._cache[client_id] = data
            while len(self._cache) > CLIENT_CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))
        return data

    def check_client(self, client_id: int) -> None:
        """Build client ``client_id``'s data and check it against the declared tasks and input
        shape, without keeping it (:func:`fedmtl.data.checks.check_client_data`).

        Raises
        ------
        DataError
            Naming the dataset, the client, the split and the task.
        """
        self._check_id(client_id)
        self._built(client_id)

    def _check_id(self, client_id: int) -> None:
        if not 0 <= client_id < self.num_clients:
            raise IndexError(f"client id {client_id} outside [0, {self.num_clients})")

    def _built(self, client_id: int) -> ClientData:
        """Client ``client_id``'s data as the dataset builds it, checked against the declared
        tasks and input shape (:func:`fedmtl.data.checks.check_client_data`)."""
        data = self.build_client(client_id)
        splits = {"train": data.train, "test": data.test}
        if data.validation is not None:
            splits["validation"] = data.validation
        check_client_data(self.name or "?", client_id, splits, self.tasks, self.input_shape, self.declared_groups)
        return data

    def _build(self, client_id: int) -> ClientData:
        """Client ``client_id``'s data, its tasks restricted and its inputs transformed."""
        data = self._built(client_id)
        if self.task_sets is not None:
            held = self.task_sets[client_id]
            data = ClientData(
                client_id, data.train.restrict(held), data.test.restrict(held),
                data.validation.restrict(held) if data.validation is not None else None,
            )
        if self.transform is not None:
            data = self.transform(data)
        return data

    def sizes(self, client_id: int) -> tuple[int, int]:
        """Client ``client_id``'s ``(train, test)`` example counts.

        From its cached data, else from :attr:`split_sizes` (no data built), else from its data
        built once and dropped (not cached). Task sets and feature skew keep every row, so the
        counts are those of :meth:`client`.
        """
        self._check_id(client_id)
        with self._cache_lock:
            data = self._cache.get(client_id)
        if data is None and self.split_sizes is not None:
            return self.split_sizes(client_id)
        if data is None:
            data = self._built(client_id)
        return len(data.train), len(data.test)

    def client_tasks(self, client_id: int) -> list[TaskSpec]:
        """The task specs client ``client_id`` holds (in dataset order)."""
        if self.task_sets is None:
            return list(self.tasks)
        held = set(self.task_sets[client_id])
        return [t for t in self.tasks if t.name in held]

    def clients(self) -> list[ClientData]:
        """All clients (builds every one)."""
        return [self.client(i) for i in range(self.num_clients)]


SplitCounts = Callable[[int, float, float], tuple[int, int, int]]
"""Given ``n`` rows, the test and the validation fraction: how many rows (train, validation,
test) get."""


def split_counts(n: int, test_fraction: float, validation_fraction: float) -> tuple[int, int, int]:
    """How many of ``n`` rows (train, validation, test) get: test and validation
    ``round(n · fraction)``; train and test at least one row each."""
    n_test = min(max(1, round(n * test_fraction)), n - 1)
    n_val = min(round(n * validation_fraction), n - n_test - 1)
    return n - n_test - n_val, n_val, n_test


def floor_split_counts(n: int, test_fraction: float, validation_fraction: float) -> tuple[int, int, int]:
    """The split of the Synthetic generators (REFERENCES §4): the first ⌊(1 − t − v)·n⌋
    shuffled rows train, those up to ⌊(1 − t)·n⌋ validate and the rest test (FedProx's
    ``int(0.9 * n)`` train rows at t = 0.1, v = 0; q-FFL's ``int(0.8 * n)`` and
    ``int(0.9 * n)`` at t = v = 0.1); train and test keep at least one row each."""
    n_test = min(max(1, n - int((1 - test_fraction) * n)), n - 1)
    n_train = min(max(1, int((1 - test_fraction - validation_fraction) * n)), n - n_test)
    return n_train, n - n_test - n_train, n_test


def split_rows(
    rows: np.ndarray, test_fraction: float, validation_fraction: float, rng: np.random.Generator,
    counts: SplitCounts = split_counts,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shuffle ``rows`` and cut them into (train, validation, test), as many rows each as
    ``counts`` says (default :func:`split_counts`): train and test get at least one row each,
    validation may be empty."""
    rows = rng.permutation(rows)
    _, n_val, n_test = counts(len(rows), test_fraction, validation_fraction)
    return rows[n_test + n_val :], rows[n_test : n_test + n_val], rows[:n_test]


def split_sizes_of(row_counts: Callable[[int], int], cfg: DataSection,
                   counts: SplitCounts = split_counts) -> Callable[[int], tuple[int, int]]:
    """A :attr:`Federation.split_sizes` for clients whose rows :func:`split_rows` splits one
    to one into examples: ``row_counts(i)`` is client ``i``'s number of rows, ``counts`` the
    split's rule."""

    def sizes(client_id: int) -> tuple[int, int]:
        train, _, test = counts(row_counts(client_id), cfg.test_fraction, cfg.validation_fraction)
        return train, test

    return sizes


class RowDataset(Protocol):
    """A dataset of indexable rows with natural clients (synthetic devices, years, celebrities)."""

    def natural_groups(self) -> list[np.ndarray]:
        """Row indices of every natural client."""

    def labels(self, task: str) -> np.ndarray:
        """Integer labels of ``task`` for every row (what label-skew partitioners split on)."""

    def split(self, rows: np.ndarray) -> Split:
        """The inputs, targets and groups of ``rows``."""


def check_natural_clients(dataset: str, count: int, num_clients: int) -> None:
    """Check that ``data.num-clients`` equals the ``count`` natural clients of ``dataset``.

    Raises
    ------
    DataError
        Naming the count and the value ``data.num-clients`` needs.
    """
    if count != num_clients:
        raise DataError(
            f"dataset '{dataset}' has {count} natural clients with this config; "
            f"set data.num-clients = {count}"
        )


def row_federation(
    data: RowDataset,
    input_shape: tuple[int, ...],
    tasks: list[TaskSpec],
    cfg: DataSection,
    seed: int,
    salt: int,
) -> Federation:
    """Clients from a :class:`RowDataset`: its natural clients (``data.partitioner =
    'natural'``) or a partition of all its rows by any registered partitioner, on the labels
    of ``data.partition-task`` (default: the first task), the rows taken in a seeded random
    order (:data:`fedmtl.seeds.Stream.POOLED_ORDER`) by a partitioner that cuts each class in
    row order (:data:`fedmtl.data.partitioners.CUTS_CLASSES_IN_ORDER`). Each client's rows are split by
    ``data.test-fraction`` and ``data.validation-fraction``, seeded by (seed, client, salt).
    """
    from fedmtl.data.partitioners import CUTS_CLASSES_IN_ORDER, partition

    if cfg.partitioner == "natural":
        groups = data.natural_groups()
        check_natural_clients(cfg.dataset, len(groups), cfg.num_clients)
    else:
        labels = data.labels(cfg.partition_task or tasks[0].name)
        if cfg.partitioner in CUTS_CLASSES_IN_ORDER:  # in a seeded random order: the pooled rows come
            # natural client by client (Synthetic's devices, CelebA's identities), and these
            # partitioners cut each class into consecutive blocks: clients got whole runs of devices
            order = rng_of(seed, Stream.POOLED_ORDER).permutation(len(labels))
            groups = [order[group] for group in partition(labels[order], cfg, seed)]
        else:
            groups = partition(labels, cfg, seed)

    def build_client(client_id: int) -> ClientData:
        rng = rng_of(seed, client_id, salt)
        train, validation, test = split_rows(groups[client_id], cfg.test_fraction, cfg.validation_fraction, rng)
        return ClientData(
            client_id, data.split(train), data.split(test),
            data.split(validation) if len(validation) else None,
        )

    return Federation(input_shape, list(tasks), cfg.num_clients, build_client,
                      split_sizes=split_sizes_of(lambda c: len(groups[c]), cfg))
