"""Synthetic(α, β): the federated benchmark of Shamir et al. / Li et al., extended to T tasks.

The construction of Li et al. ("Federated Optimization in Heterogeneous Networks" (FedProx),
MLSys 2020, after Shamir, Srebro & Zhang, ICML 2014; also used by q-FFL, ICLR 2020), as in
their generator (``data/synthetic_1_1/generate_synthetic.py``), for device k:

- ``u_k ~ N(0, α²)``, ``B_k ~ N(0, β²)`` (the code's standard deviations; the paper writes
  ``N(0, α)``);
- ``v_k ∈ R^60`` with entries ``~ N(B_k, 1)``; inputs ``x ~ N(v_k, Σ)``,
  ``Σ = diag(j^(-1.2))``, j = 1..60;
- ``W_k ∈ R^(60×10)``, ``b_k ∈ R^10`` with entries ``~ N(u_k, 1)``;
  ``y = argmax(xᵀ W_k + b_k)``;
- ``n_k = ⌊LogNormal(4, 2)⌋ + 50`` examples (the paper calls it a power law).

**T tasks (ours).** Task t of device k has its own ``(W_{k,t}, b_{k,t})``, each entry
``u_k + √ρ Z_k + √(1−ρ) Z_{k,t}`` with standard normal ``Z_k`` shared by the device's tasks
and ``Z_{k,t}`` per task. Every task's parameters are ``N(u_k, 1)`` as in the paper (T = 1
is exactly the paper's construction); ρ (``data.params.relatedness``) is the correlation
between two tasks' parameters: ρ = 1 gives identical tasks, ρ = 0 independent ones.

**α changes no label.** ``u_k`` is added to every entry of ``W_k`` and ``b_k``, so it adds
``u_k (Σ_j x_j + 1)`` to all ten class scores alike and the argmax never moves: the labels
(and the inputs) are the same for every α, in the published generator too. Devices differ
through β (their inputs' means) and the per-entry noise of their ``W_k``, ``b_k``.

With ``data.partitioner = "natural"`` each device is one client (``data.num-clients``
devices), its examples shuffled and split as the generators split them
(:func:`fedmtl.data.federation.floor_split_counts`): the first ``⌊(1 − t)·n_k⌋`` train
(FedProx's ``int(0.9 * n)`` at ``data.test-fraction`` t = 0.1), the rest test; with a
``data.validation-fraction`` v, the first ``⌊(1 − t − v)·n_k⌋`` train and those up to
``⌊(1 − t)·n_k⌋`` validate (q-FFL's 80/10/10). Other partitioners re-split the devices'
pooled examples.

**Synthetic-IID** (``data.dataset = "synthetic-iid"``): the same authors' IID variant
(``data/synthetic_iid/generate_iid.py``): one model ``W ∈ R^(60×10)``, ``b ∈ R^10`` with
``N(0, 1)`` entries labels every device's inputs, and ``v_k = 0`` (``x ~ N(0, Σ)``); sizes
and splits as above; no α or β. With T tasks, each task's global model is built from shared
and own ``N(0, 1)`` parts as above (ρ).

Options (``[data.params]``, see :class:`Params`): ``num-tasks``, ``alpha``, ``beta``,
``relatedness``; Synthetic-IID's (:class:`IidParams`): ``num-tasks``, ``relatedness``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from pydantic import Field

from fedmtl import seeds
from fedmtl.config import Section
from fedmtl.data.federation import (
    ClientData,
    Federation,
    Split,
    floor_split_counts,
    row_federation,
    split_rows,
    split_sizes_of,
)
from fedmtl.tasks import TaskSpec

if TYPE_CHECKING:
    from fedmtl.config import DataSection

DIMENSION = 60
CLASSES = 10
INPUT_SHAPE = (DIMENSION,)


class Params(Section):
    """``[data.params]`` of Synthetic(α, β)."""

    num_tasks: int = Field(2, ge=1, le=100, description="Number of tasks T.")
    alpha: float = Field(1.0, ge=0, description="α, spread of the devices' models (std of u_k); it shifts "
                         "every class score alike, so it changes no label (as in the published generator).")
    beta: float = Field(1.0, ge=0, description="β, spread of the devices' inputs (std of B_k).")
    relatedness: float = Field(
        0.5, ge=0, le=1, description="Correlation ρ of two tasks' parameters (1 = identical tasks)."
    )


class IidParams(Section):
    """``[data.params]`` of Synthetic-IID (``data.dataset = "synthetic-iid"``)."""

    num_tasks: int = Field(2, ge=1, le=100, description="Number of tasks T.")
    relatedness: float = Field(
        0.5, ge=0, le=1, description="Correlation ρ of two tasks' global models (1 = identical tasks)."
    )


IID_NAME = "synthetic-iid"
"""The registered name of Synthetic-IID."""


MOVED = {
    "num-tasks": "num-tasks", "synthetic-alpha": "alpha", "synthetic-beta": "beta",
    "synthetic-relatedness": "relatedness",
}
"""Keys of ``[data]`` before ``[data.params]`` -> their ``[data.params]`` names."""


def options(cfg: DataSection) -> Params | IidParams:
    """The Synthetic (or Synthetic-IID) options of ``cfg`` (``data.params``, defaults filled in)."""
    return (IidParams if cfg.dataset == IID_NAME else Params).model_validate(dict(cfg.params))


def task_names(num_tasks: int) -> list[str]:
    """``["task0", "task1", ...]``."""
    return [f"task{t}" for t in range(num_tasks)]


def tasks(cfg: DataSection) -> tuple[TaskSpec, ...]:
    """The ``data.params.num-tasks`` tasks, 10 classes each."""
    return tuple(TaskSpec(name, "multiclass", CLASSES) for name in task_names(options(cfg).num_tasks))


def client_sizes(num_clients: int, seed: int) -> np.ndarray:
    """``n_k = ⌊LogNormal(4, 2)⌋ + 50`` for every device (seeded)."""
    rng = seeds.rng(seed, seeds.Stream.SYNTHETIC_MODELS)
    return rng.lognormal(4, 2, num_clients).astype(np.int64) + 50


INPUT_STD = np.sqrt(np.arange(1, DIMENSION + 1, dtype=np.float64) ** -1.2)
"""Standard deviation of input feature j: ``Σ = diag(j^(-1.2))``, j = 1..60."""


def task_models(u: float, num_tasks: int, relatedness: float,
                rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(W_t, b_t)`` of each task: every entry ``u + √ρ Z + √(1−ρ) Z_t``, ``Z`` shared by the
    tasks, ``Z_t`` each task's own (all standard normal)."""
    shared_w = rng.normal(0.0, 1.0, (DIMENSION, CLASSES))
    shared_b = rng.normal(0.0, 1.0, CLASSES)
    models = []
    for _ in range(num_tasks):
        own_w = rng.normal(0.0, 1.0, (DIMENSION, CLASSES))
        own_b = rng.normal(0.0, 1.0, CLASSES)
        models.append((u + np.sqrt(relatedness) * shared_w + np.sqrt(1 - relatedness) * own_w,
                       u + np.sqrt(relatedness) * shared_b + np.sqrt(1 - relatedness) * own_b))
    return models


def _labels(x: np.ndarray, models: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """``argmax(x W_t + b_t)`` of every task, ``(n, T)`` int64."""
    return np.stack([np.argmax(x @ w + b, axis=1) for w, b in models], axis=1).astype(np.int64)


def generate_device(
    n: int, alpha: float, beta: float, num_tasks: int, relatedness: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One device's ``(x, y)``: ``x`` is ``(n, 60)`` float32, ``y`` is ``(n, T)`` int64."""
    u = rng.normal(0.0, alpha)
    b_mean = rng.normal(0.0, beta)
    v = rng.normal(b_mean, 1.0, DIMENSION)
    x = rng.normal(v, INPUT_STD, (n, DIMENSION))
    return x.astype(np.float32), _labels(x, task_models(u, num_tasks, relatedness, rng))


def generate_iid_device(n: int, models: list[tuple[np.ndarray, np.ndarray]],
                        rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One Synthetic-IID device's ``(x, y)``: inputs ``N(0, Σ)`` labelled by the global ``models``."""
    x = rng.normal(0.0, INPUT_STD, (n, DIMENSION))
    return x.astype(np.float32), _labels(x, models)


SPLIT_SALT = seeds.Stream.SYNTHETIC_SPLIT


def device_examples(cfg: DataSection, seed: int, device: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Device ``device``'s ``n`` examples (seeded by the run seed and the device id)."""
    rng = seeds.rng(seed, device, seeds.Stream.SYNTHETIC_DEVICE)
    params = options(cfg)
    if isinstance(params, IidParams):
        models = task_models(0.0, params.num_tasks, params.relatedness,
                             seeds.rng(seed, seeds.Stream.SYNTHETIC_IID_MODELS))
        return generate_iid_device(n, models, rng)
    return generate_device(n, params.alpha, params.beta, params.num_tasks, params.relatedness, rng)


def _split(x: np.ndarray, y: np.ndarray, rows: np.ndarray, names: list[str]) -> Split:
    index = torch.from_numpy(np.asarray(rows, dtype=np.int64))
    return Split(torch.from_numpy(x)[index], {n: torch.from_numpy(y[rows, t].copy()) for t, n in enumerate(names)})


class SyntheticRows:
    """Every device's examples, pooled, as a :class:`~fedmtl.data.federation.RowDataset`
    (for partitioners other than ``natural``, which re-split the pool)."""

    def __init__(self, cfg: DataSection, seed: int) -> None:
        examples = [device_examples(cfg, seed, d, int(n)) for d, n in enumerate(client_sizes(cfg.num_clients, seed))]
        self.x = np.concatenate([x for x, _ in examples])
        self.y = np.concatenate([y for _, y in examples])
        self.names = task_names(options(cfg).num_tasks)

    def natural_groups(self) -> list[np.ndarray]:
        raise NotImplementedError("natural clients are built per device, lazily (see build)")

    def labels(self, task: str) -> np.ndarray:
        return self.y[:, self.names.index(task)]

    def split(self, rows: np.ndarray) -> Split:
        return _split(self.x, self.y, rows, self.names)


def build(cfg: DataSection, seed: int) -> Federation:
    """One device per client (``data.partitioner = "natural"``), generated on the client's
    first use, or the pooled examples of ``data.num-clients`` devices re-partitioned by
    another partitioner."""
    if cfg.partitioner != "natural":
        return row_federation(SyntheticRows(cfg, seed), INPUT_SHAPE, list(tasks(cfg)), cfg, seed, salt=SPLIT_SALT)
    sizes = client_sizes(cfg.num_clients, seed)
    names = task_names(options(cfg).num_tasks)

    def build_client(client_id: int) -> ClientData:
        x, y = device_examples(cfg, seed, client_id, int(sizes[client_id]))
        rng = seeds.rng(seed, client_id, SPLIT_SALT)
        train, validation, test = split_rows(np.arange(len(x)), cfg.test_fraction, cfg.validation_fraction, rng,
                                             counts=floor_split_counts)
        return ClientData(
            client_id, _split(x, y, train, names), _split(x, y, test, names),
            _split(x, y, validation, names) if len(validation) else None,
        )

    return Federation(INPUT_SHAPE, list(tasks(cfg)), cfg.num_clients, build_client,
                      split_sizes=split_sizes_of(lambda c: int(sizes[c]), cfg, floor_split_counts))
