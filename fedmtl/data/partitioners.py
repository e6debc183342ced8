"""Partitioners: split example indices among clients.

Each partitioner maps ``(labels, num_partitions, seed, data_cfg)`` to one index array per
client. IID and Dirichlet label skew use flwr-datasets' partitioners on an in-memory
``datasets.Dataset``. A config no partition can satisfy (more clients than examples allow, a
Dirichlet α too small for every client to get its examples) is a
:class:`~fedmtl.data.checks.DataError` naming the keys to change.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from fedmtl.data.checks import DataError, checked_partition
from fedmtl.registry import Registry
from fedmtl.seeds import Stream, rng

if TYPE_CHECKING:
    from fedmtl.config import DataSection

Partitioner = Callable[[np.ndarray, int, int, "DataSection"], list[np.ndarray]]
PARTITIONERS: Registry[Partitioner] = Registry("partitioner")


_applied = threading.local()
"""How many partitions this thread has computed (:func:`partitions_applied`)."""


def partitions_applied() -> int:
    """How many times :func:`partition` ran in this thread: a dataset's build that did not call
    it (directly or through :func:`fedmtl.data.federation.row_federation`) applied no
    ``data.partitioner`` (:func:`fedmtl.data.load_federation` checks)."""
    return getattr(_applied, "count", 0)


def partition(labels: np.ndarray, cfg: DataSection, seed: int) -> list[np.ndarray]:
    """Each client's row indices by ``data.partitioner``, checked
    (:func:`fedmtl.data.checks.checked_partition`: one array of rows per client).

    Raises
    ------
    DataError
        No partition fits the config, the parts are not one array of rows per client, or a
        plugin's partitioner raised (naming it, the error and where it was raised).
    """
    _applied.count = partitions_applied() + 1
    partitioner = PARTITIONERS.get(cfg.partitioner)
    if PARTITIONERS.is_own(cfg.partitioner):  # fedmtl's own: a DataError naming the keys, else a bug
        parts = partitioner(labels, cfg.num_clients, seed, cfg)
    else:
        parts = _plugin_parts(partitioner, labels, cfg, seed)
    return checked_partition(cfg.partitioner, parts, cfg.num_clients, len(labels))


def _plugin_parts(partitioner: Partitioner, labels: np.ndarray, cfg: DataSection, seed: int) -> Any:
    """What a plugin's ``partitioner`` returns; an error it raises is a ``DataError`` naming
    ``data.partitioner`` (not the dataset whose build called it)."""
    from fedmtl.one_line import described, raised_at

    try:
        return partitioner(labels, cfg.num_clients, seed, cfg)
    except DataError:
        raise
    except Exception as error:  # noqa: BLE001 - a plugin's partitioner failing in any way is one line
        raise DataError(f"data.partitioner = '{cfg.partitioner}' failed: {described(error)} "
                        f"({raised_at(error)}; docs/extending.md: partitioners)") from error


def _light_flwr_datasets() -> None:
    """Make ``import flwr_datasets.partitioner`` skip the package's ``__init__`` until it is needed.

    ``flwr_datasets/__init__.py`` imports its visualization (seaborn, matplotlib) and metrics
    (1.5–4 s in every process that builds a federation: each Ray actor, each SuperNode); the
    partitioners need neither. The package module is created from its spec without running its
    ``__init__``; the first access to a name only ``__init__`` defines (``FederatedDataset``,
    ``visualization``, ...) runs it then, so other users of flwr-datasets see the whole package.
    """
    if "flwr_datasets" in sys.modules:
        return
    spec = importlib.util.find_spec("flwr_datasets")
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return  # not installed: the real import below raises the usual error
    package = importlib.util.module_from_spec(spec)
    state = {"complete": False}

    def complete(name: str) -> Any:
        if state["complete"] or name.startswith("__"):
            raise AttributeError(f"module 'flwr_datasets' has no attribute '{name}'")
        state["complete"] = True
        spec.loader.exec_module(package)  # the package's own __init__, in its namespace
        return getattr(package, name)

    package.__getattr__ = complete  # type: ignore[method-assign]
    sys.modules["flwr_datasets"] = package


def _indices_with(partitioner, labels: np.ndarray) -> list[np.ndarray]:
    from datasets import Dataset

    partitioner.dataset = Dataset.from_dict(
        {"label": labels.astype(np.int64), "index": np.arange(len(labels))}
    )
    with warnings.catch_warnings():  # one warning per Dirichlet redraw; a partition that never fits is a DataError
        warnings.filterwarnings("ignore", message="The specified min_partition_size", category=UserWarning)
        # flwr-datasets' advice (first_class_deterministic_assignment) is no option of fedmtl's:
        # pathological() says which classes no client holds in its own words
        warnings.filterwarnings("ignore", message=r"Classes: .* will NOT be used", category=UserWarning)
        return [
            np.asarray(partitioner.load_partition(i)["index"], dtype=np.int64)
            for i in range(partitioner.num_partitions)
        ]


def _check_enough(labels: np.ndarray, num_partitions: int) -> None:
    if len(labels) < 2 * num_partitions:
        raise DataError(
            f"{len(labels)} examples cannot give {num_partitions} clients at least 2 each "
            "(one to train, one to test); lower data.num-clients"
        )


CUTS_CLASSES_IN_ORDER = ("dirichlet", "pathological")
"""The partitioners that cut each class into consecutive blocks in the order of their labels
(flwr-datasets'): rows whose order carries structure (a dataset's pooled natural clients) are
shuffled before them (:func:`fedmtl.data.federation.row_federation`). The others shuffle
first themselves."""


@PARTITIONERS.register("iid")
def iid(labels: np.ndarray, num_partitions: int, seed: int, cfg: DataSection) -> list[np.ndarray]:
    """Shuffle (seeded), then cut into ``num_partitions`` near-equal parts."""
    _light_flwr_datasets()
    from flwr_datasets.partitioner import IidPartitioner

    _check_enough(labels, num_partitions)
    order = rng(seed).permutation(len(labels))
    parts = _indices_with(IidPartitioner(num_partitions), labels[order])
    return [order[p] for p in parts]


@PARTITIONERS.register("dirichlet")
def dirichlet(
    labels: np.ndarray, num_partitions: int, seed: int, cfg: DataSection
) -> list[np.ndarray]:
    """Label skew: each class is split among clients by proportions ~ Dir(α·1).

    ``data.dirichlet-alpha`` is α: small values give clients few classes; large values
    approach IID. The split of Yurochkin et al. 2019 (arXiv 1905.12022), as flwr-datasets
    implements it; Hsu, Qi & Brown 2019 (arXiv 1909.06335) draw each client's class mix
    instead. Each class is cut into consecutive blocks in the order of ``labels``: a caller
    whose rows carry structure in their order shuffles them first.
    """
    _light_flwr_datasets()
    from flwr_datasets.partitioner import DirichletPartitioner

    _check_enough(labels, num_partitions)
    min_size = int(min(10, max(2, len(labels) // (4 * num_partitions))))
    partitioner = DirichletPartitioner(
        num_partitions=num_partitions,
        partition_by="label",
        alpha=cfg.dirichlet_alpha,
        min_partition_size=min_size,
        self_balancing=False,
        shuffle=True,
        seed=seed,
    )
    try:
        return _indices_with(partitioner, labels)
    except ValueError as exc:
        raise DataError(
            f"Dirichlet partition with alpha={cfg.dirichlet_alpha} could not give every one of "
            f"{num_partitions} clients {min_size} examples ({exc}); raise data.dirichlet-alpha "
            "or lower data.num-clients"
        ) from None


@PARTITIONERS.register("pathological")
def pathological(
    labels: np.ndarray, num_partitions: int, seed: int, cfg: DataSection
) -> list[np.ndarray]:
    """Label skew by class count: each client gets examples of ``data.classes-per-client``
    classes only (McMahan et al., AISTATS 2017's pathological non-IID split).

    flwr-datasets' ``PathologicalPartitioner``: client i's first class is ``i mod C`` (so every
    class is used when there are at least C clients), the others are drawn at random (seeded).
    Examples of classes no client drew are left out.
    """
    _light_flwr_datasets()
    from flwr_datasets.partitioner import PathologicalPartitioner

    _check_enough(labels, num_partitions)
    partitioner = PathologicalPartitioner(
        num_partitions=num_partitions,
        partition_by="label",
        num_classes_per_partition=cfg.classes_per_client,
        class_assignment_mode="first-deterministic",
        shuffle=True,
        seed=seed,
    )
    try:
        parts = _indices_with(partitioner, labels)
    except ValueError as exc:
        raise DataError(
            f"pathological partition with {cfg.classes_per_client} classes per client cannot be made for "
            f"{num_partitions} clients ({exc}); lower data.classes-per-client or data.num-clients"
        ) from None
    if min(len(p) for p in parts) < 2:
        raise DataError(
            f"pathological partition with {cfg.classes_per_client} classes per client left a "
            f"client with fewer than 2 examples; lower data.num-clients or raise data.classes-per-client"
        )
    held = np.unique(labels[np.concatenate(parts)])
    if unused := np.setdiff1d(labels, held).tolist():
        warnings.warn(f"data.partitioner = 'pathological': no client holds class(es) {unused} "
                      f"({num_partitions} clients × {cfg.classes_per_client} classes per client drew "
                      f"{len(held)} of {len(held) + len(unused)}); their examples are left out. Raise "
                      "data.num-clients or data.classes-per-client to use them", UserWarning, stacklevel=2)
    return parts


def power_law_sizes(total: int, num_partitions: int, exponent: float, seed: int) -> list[int]:
    """Client sizes ``∝ r^(-exponent)`` for ranks r = 1..N in a seeded order (Zipf's law),
    at least 2 each, summing to ``total``."""
    ranks = rng(seed, Stream.POWER_LAW).permutation(num_partitions) + 1
    shares = ranks.astype(np.float64) ** -exponent
    spare = total - 2 * num_partitions
    sizes = 2 + np.floor(shares / shares.sum() * spare).astype(np.int64)
    leftover = total - int(sizes.sum())
    for i in np.argsort(-shares, kind="stable")[:leftover]:
        sizes[i] += 1
    return sizes.tolist()


@PARTITIONERS.register("power-law")
def power_law(labels: np.ndarray, num_partitions: int, seed: int, cfg: DataSection) -> list[np.ndarray]:
    """Quantity skew: a seeded shuffle cut into sizes ``∝ r^(-a)`` (a = ``data.power-law-exponent``,
    client ranks r in a seeded order; Zipf's law), via flwr-datasets' ``SizePartitioner``."""
    _light_flwr_datasets()
    from flwr_datasets.partitioner import SizePartitioner

    _check_enough(labels, num_partitions)
    sizes = power_law_sizes(len(labels), num_partitions, cfg.power_law_exponent, seed)
    order = rng(seed).permutation(len(labels))
    parts = _indices_with(SizePartitioner(sizes), labels[order])
    return [order[p] for p in parts]


@PARTITIONERS.register("natural")
def natural(labels: np.ndarray, num_partitions: int, seed: int, cfg: DataSection) -> list[np.ndarray]:
    """The dataset's own clients (synthetic devices, arrest years, celebrities); datasets with
    natural clients handle this name themselves."""
    raise DataError(f"dataset '{cfg.dataset}' has no natural clients; choose another data.partitioner")
