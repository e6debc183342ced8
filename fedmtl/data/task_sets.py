"""Task-set assignment: which tasks each client holds labels for.

A client without task t has no head for t, trains no loss for t, sends no update part for t
and is not evaluated on t. Assignments (``data.task-sets``), deterministic by seed:

``all``
    Every client holds every task (the default).
``one``
    One task per client, round robin: client i holds task ``i mod T`` (the single-task
    clients of MaT-FL, Cai et al. 2022, and FedHCA², Lu et al., CVPR 2024).
``random``
    ``data.tasks-per-client`` = k distinct tasks drawn uniformly per client.
``mixed``
    Each client holds every task with probability ``data.full-task-fraction``, otherwise k
    random tasks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from fedmtl.registry import Registry
from fedmtl.seeds import Stream, rng

if TYPE_CHECKING:
    from fedmtl.config import DataSection

TaskSetAssigner = Callable[[int, list[str], int, "DataSection"], list[list[str]]]
TASK_SETS: Registry[TaskSetAssigner] = Registry("task-set assignment")


def _rng(seed: int) -> np.random.Generator:
    return rng(seed, Stream.TASK_SETS)


def _random_k(rng: np.random.Generator, tasks: list[str], k: int) -> list[str]:
    chosen = set(rng.choice(len(tasks), size=min(k, len(tasks)), replace=False).tolist())
    return [t for i, t in enumerate(tasks) if i in chosen]


@TASK_SETS.register("all")
def all_tasks(num_clients: int, tasks: list[str], seed: int, cfg: DataSection) -> list[list[str]]:
    """Every client holds every task."""
    return [list(tasks) for _ in range(num_clients)]


@TASK_SETS.register("one")
def one_task(num_clients: int, tasks: list[str], seed: int, cfg: DataSection) -> list[list[str]]:
    """Client i holds task ``i mod T``."""
    return [[tasks[i % len(tasks)]] for i in range(num_clients)]


@TASK_SETS.register("random")
def random_tasks(num_clients: int, tasks: list[str], seed: int, cfg: DataSection) -> list[list[str]]:
    """``data.tasks-per-client`` distinct random tasks per client."""
    rng = _rng(seed)
    return [_random_k(rng, tasks, cfg.tasks_per_client) for _ in range(num_clients)]


@TASK_SETS.register("mixed")
def mixed_tasks(num_clients: int, tasks: list[str], seed: int, cfg: DataSection) -> list[list[str]]:
    """All tasks with probability ``data.full-task-fraction``, else k random tasks."""
    rng = _rng(seed)
    out = []
    for _ in range(num_clients):
        full = rng.random() < cfg.full_task_fraction
        out.append(list(tasks) if full else _random_k(rng, tasks, cfg.tasks_per_client))
    return out


def assign_tasks(num_clients: int, tasks: list[str], seed: int, cfg: DataSection) -> list[list[str]]:
    """The task set of every client under ``cfg.task_sets`` (each set in dataset order)."""
    return TASK_SETS.get(cfg.task_sets)(num_clients, tasks, seed, cfg)
