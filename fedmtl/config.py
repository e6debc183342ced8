"""Experiment configuration: one validated schema for ``fedmtl run`` and ``flwr run``.

A config is a TOML file of sections (``[run]``, ``[data]``, ``[model]``, ``[client]``,
``[server]``, ``[engine]``, ``[faults]``, ``[personalization]``) whose keys are kebab-case
scalars, so that the same file is a valid ``flwr run --run-config`` file (Flower flattens it
to ``"data.num-clients"`` keys). Every key has a default; ``docs/config.md`` lists them. The
parameter tables (``[data.params]``, ``[client.params]``, ``[server.params]``,
``[server.task-params]``, ``[personalization.params]``) are tables in TOML and JSON text in
Flower's flat form.

This module is the schema only: types, ranges, unknown keys. It imports no registry and
names no dataset or backbone; registered names (``data.dataset``, ``model.backbone``,
weightings, ...) are plain strings here. :mod:`fedmtl.validation` holds the loaders
(``load_config``, ``build_config``, ``config_from_flat``) that check them, each dataset's
``[data.params]`` and the rules across sections, after this schema.

Errors are :class:`ConfigError`: one line naming the key, the bad value and what is
allowed, with a did-you-mean for misspelt keys and names.
"""

from __future__ import annotations

import difflib
import json
import math
import numbers
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import (
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from fedmtl import defaults
from fedmtl.registry import did_you_mean
from fedmtl.shipped import missing_config, resolve_config
from fedmtl.strict_scalars import StrictScalars


class ConfigError(ValueError):
    """A config file, key or value is invalid; the message says which and why."""


def _kebab(name: str) -> str:
    return name.replace("_", "-")


class Section(StrictScalars):
    """Base of config sections: kebab-case keys, unknown keys rejected, and no lax coercion of
    booleans and numbers (:class:`fedmtl.strict_scalars.StrictScalars`)."""

    model_config = ConfigDict(
        extra="forbid", alias_generator=_kebab, populate_by_name=True, frozen=True,
        allow_inf_nan=False,
    )


ParamValue = bool | int | float | str


def _parse_params(value: Any, what: str = "weighting parameters", table: str = "[server.params] alpha = 2",
                  example: str = '{"alpha": 2}', lists: bool = False) -> Any:
    """Accept a table (``[server.params]``) or its JSON text (Flower's flat form), whose values
    are each a finite number, a boolean or text (or, with ``lists``, a list of finite numbers)."""
    if isinstance(value, str):
        if not value.strip():
            return {}
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"{what} must be a table, e.g. {table}, or its JSON text, e.g. '{example}'") from None
        if not isinstance(value, dict):
            raise ValueError(f"{what} must be a table of name = value")
    if isinstance(value, dict):
        value = {name: _native(item) for name, item in value.items()}
        for name, item in value.items():
            if not _param_value_ok(item, lists):
                kinds = "a finite number, true/false, text or a list of finite numbers" if lists else (
                    "a finite number, true/false or text")
                raise ValueError(f"its {name!r} = {item!r} is not {kinds}")
    return value


def _param_value_ok(value: Any, lists: bool) -> bool:
    """A parameter value a rule or method can take: a boolean, an integer, a finite real
    number (NumPy's too), text (a list of finite numbers where ``lists``)."""
    if isinstance(value, str) or _is_number(value):
        return True
    return lists and isinstance(value, list) and all(_is_number(v) and not isinstance(v, bool) for v in value)


def _native(value: Any) -> Any:
    """A NumPy scalar as the Python value it holds (``np.int64(3)`` -> ``3``; items of a list
    too); else ``value``."""
    if isinstance(value, list):
        return [_native(v) for v in value]
    if type(value).__module__ == "numpy" and getattr(value, "shape", None) == ():
        return value.item()
    return value


def _is_number(value: Any) -> bool:
    """A boolean, an integer or a finite real number (Python's or NumPy's)."""
    if isinstance(value, numbers.Integral):
        return True
    return isinstance(value, numbers.Real) and math.isfinite(value)


MAX_NAME_LENGTH = 100
"""The longest ``run.name``: the run folder adds a timestamp and stays under the usual 255-byte
limit of a file name."""
MAX_CLIENTS = 100_000
"""The most clients (``data.num-clients``)."""
MAX_SEED = (2**63 - 1 - 17 - 31 * (MAX_CLIENTS - 1)) // 1_000_003
"""The largest ``run.seed``: every torch stream's seed stays below 2**63 (the feature-skew mix
``seed * 1_000_003 + client * 31 + 17`` of :mod:`fedmtl.seeds` is the largest)."""
ROUND_TIMEOUT_S = 3600.0
"""The default ``server.timeout``: seconds a round waits for its replies."""
MAX_WAIT_S = 1e9
"""The longest wait a config may set (``server.timeout``, ``server.connect-timeout``,
``faults.straggler-delay``), in seconds (about 31 years: "no limit"; ``time.sleep`` refuses
waits beyond about 9.2e9 s)."""


class RunSection(Section):
    """``[run]``: what to run and where results go."""

    name: str = Field(
        "fedmtl", min_length=1, max_length=MAX_NAME_LENGTH,
        description="Run name; prefix of the run folder: one folder name of at most 100 characters "
        "(no '/', '\\' or control characters; not '.' or '..').",
    )
    mode: Literal["federated", "centralized"] = Field(
        "federated",
        description="'federated' (Flower simulation) or 'centralized' (pooled-data baseline).",
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of data partitions, initialisation and sampling.")
    rounds: int = Field(10, ge=1, description="Server rounds (centralized: training epochs).")
    evaluate_every: int = Field(1, ge=1, description="Evaluate every N rounds (and the last).")
    checkpoint_every: int = Field(
        1, ge=1, description="Checkpoint every N rounds (and the last); `fedmtl run --resume` "
        "continues from the latest.",
    )
    deterministic: bool = Field(
        False, description="Deterministic GPU kernels in every process of the run (torch.use_deterministic_algorithms, "
        "cuDNN's deterministic convolutions): two GPU runs then give the same numbers; an operation with no "
        "deterministic kernel fails, naming it. CPU runs are deterministic without it, and it slows them "
        "(docs/deploy.md).",
    )
    output_dir: str = Field("runs", min_length=1, description="Parent folder of run folders.")
    parquet: bool | Literal["auto"] = Field(
        "auto", description="Write metrics, rounds and participation as Parquet next to their CSV files when the "
        "run finishes: 'auto' when pyarrow is installed, true (pyarrow required) or false (docs/results.md).",
    )
    trackers: list[str] = Field(
        default_factory=list,
        description="Experiment trackers that also log the run, into local files of the run folder: "
        "'tensorboard', 'mlflow' (each an extra: pip install 'fedmtl[tensorboard]'; docs/results.md).",
    )
    plugins: list[str] = Field(
        default_factory=list,
        description="Modules (on sys.path) or .py files (relative to the config file) imported in every process "
        "before the config is checked: they register weightings, datasets, backbones, ... (docs/extending.md).",
    )

    @field_validator("plugins", mode="before")
    @classmethod
    def _plugins_list(cls, v: Any) -> Any:
        return names_list(v, '["my_rules", "my_data.py"]')

    @field_validator("trackers", mode="before")
    @classmethod
    def _trackers_list(cls, v: Any) -> Any:
        return names_list(v, '["tensorboard", "mlflow"]')

    @field_validator("name")
    @classmethod
    def _one_folder_name(cls, v: str) -> str:
        if v in (".", "..") or any(c in v for c in "/\\") or any(ord(c) < 32 or ord(c) == 127 for c in v):
            raise ValueError("must be one folder name: no '/', '\\', control characters, and not '.' or '..'")
        return v


def names_list(value: Any, example: str) -> Any:
    """A list of names as a config key takes it: the list, its JSON text (Flower's flat form) or
    comma-separated names (``--set run.trackers=tensorboard,mlflow``); other values pass to
    the field's own check."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text.startswith("["):
        return [name.strip() for name in text.split(",") if name.strip()]
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"must be a list of quoted names, e.g. {example}, or names separated by commas "
                         f"(in --set: 'key={example}' or key=a,b)") from None


class DataSection(Section):
    """``[data]``: dataset, federation and splits.

    Options of one dataset only live in ``[data.params]``: the dataset declares and checks
    them.
    """

    dataset: str = Field(defaults.DATASET, description="Registered dataset name (`fedmtl list datasets`).")
    num_clients: int = Field(20, ge=1, le=MAX_CLIENTS, description="Number of clients (partitions).")
    partitioner: str = Field("iid", description="Registered partitioner name.")
    dirichlet_alpha: float = Field(
        0.5, gt=0, description="Concentration of Dirichlet label skew (smaller = more skewed)."
    )
    classes_per_client: int = Field(
        2, ge=1, description="'pathological' partitioner: classes per client."
    )
    power_law_exponent: float = Field(
        1.0, ge=0, description="'power-law' partitioner: client sizes ∝ rank^(-exponent)."
    )
    partition_task: str = Field(
        "", description="Task whose labels label-skew partitioners split on ('' = the first task)."
    )
    validation_fraction: float = Field(
        0.0, ge=0, lt=1, description="Fraction of each client's examples held out for validation."
    )
    test_fraction: float = Field(
        0.2, gt=0, lt=1, description="Fraction of each client's examples held out for testing."
    )
    task_sets: str = Field(
        "all",
        description="Which tasks each client holds labels for: 'all', 'one' (round robin), "
        "'random' (data.tasks-per-client each) or 'mixed'.",
    )
    tasks_per_client: int = Field(1, ge=1, description="Tasks per client for 'random' and 'mixed'.")
    full_task_fraction: float = Field(
        0.5, ge=0, le=1, description="'mixed': probability that a client holds every task."
    )
    feature_skew: Literal["none", "rotation", "noise"] = Field(
        "none", description="Per-client input transformation: 'none', 'rotation' or 'noise'."
    )
    feature_skew_strength: float = Field(
        30.0, ge=0,
        description="Largest skew (degrees for 'rotation', noise std for 'noise'), reached by "
        "the last client; client k of N gets k/(N-1) of it.",
    )
    path: str = Field("", description="Folder of a local dataset copy (datasets read from disk).")
    params: dict[str, ParamValue] = Field(
        default_factory=dict,
        description="Options of data.dataset ([data.params]; each dataset's are listed below); "
        "a resolved config lists them all.",
    )

    _params = field_validator("params", mode="before")(
        lambda cls, v: _parse_params(v, "data.params", "[data.params] name = 1", '{"name": 1}')
    )

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> DataSection:
        if self.test_fraction + self.validation_fraction >= 1:
            raise ValueError(
                f"test-fraction + validation-fraction = {self.test_fraction + self.validation_fraction:g} "
                "leaves no training data (must be < 1)"
            )
        return self

    def __hash__(self) -> int:
        """A hash of every value, ``data.params`` included (a dict, unhashable as such), so
        that equal sections hash alike (``load_federation`` caches on it)."""
        return hash(json.dumps(self.model_dump(mode="json"), sort_keys=True))


class ModelSection(Section):
    """``[model]``: the backbone and the heads."""

    backbone: str = Field(defaults.BACKBONE, description="Registered backbone name (`fedmtl list backbones`).")
    width: int = Field(50, ge=1, le=2**24, description="Representation size of the backbone.")
    head_hidden: int = Field(50, ge=0, le=2**24, description="Hidden width of each head (0 = linear).")
    heads: Literal["personal", "global"] = Field(
        "personal",
        description="'personal': each client keeps its own heads (only the backbone is "
        "federated); 'global': the heads are federated with the backbone (one global model, "
        "as in FedAvg and q-FFL). Unset, it follows personalization.method (which may allow one only).",
    )


MAX_LR = 1e6
"""The largest learning rate a config may set (``client.lr``, ``server.lr``): far above any that
trains, and far below float32's largest number (about 3.4e38), past which torch cannot hold
the rate at all and every client would fail with an overflow that names no key."""


class ClientSection(Section):
    """``[client]``: local training and where heads live."""

    epochs: int = Field(1, ge=1, description="Local epochs per round.")
    batch_size: int = Field(32, ge=1, description="Local mini-batch size.")
    lr: float = Field(0.05, gt=0, le=MAX_LR, description="Local SGD learning rate (backbone and heads).")
    momentum: float = Field(0.5, ge=0, lt=1, description="Local SGD momentum.")
    weighting: str = Field("mean", description="Cross-task weighting of every local step.")
    params: dict[str, ParamValue] = Field(
        default_factory=dict, description="Parameters of client.weighting ([client.params])."
    )
    gradients: Literal["auto", "representation", "backbone"] = Field(
        "auto",
        description="Per-task rows of the local weighting: gradients at the shared "
        "representation (one backbone pass, MGDA-UB) or on all backbone parameters; "
        "'auto' = representation unless the weighting needs parameter rows.",
    )
    head_store: Literal["context", "disk"] = Field(
        "disk", description="Where heads persist between rounds: node 'context' or 'disk'."
    )
    head_store_dir: str = Field(
        "", description="Folder of the disk head store; a relative one is inside the run folder "
        "('' = 'heads', as config.toml records it)."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="'auto' uses CUDA when the client sees a GPU, else the CPU; 'cuda' "
        "without a visible GPU falls back to the CPU, with a warning (once per process)."
    )

    _params = field_validator("params", mode="before")(lambda cls, v: _parse_params(v))


class ServerSection(Section):
    """``[server]``: sampling, aggregation and the server step."""

    plan: Literal["clients", "flat", "clients-then-tasks", "tasks-then-clients"] = Field(
        "clients",
        description="Aggregation plan: whole client updates ('clients'), all (client, task) "
        "rows at once ('flat'), or two levels (see docs/aggregation.md).",
    )
    weighting: str = Field(
        "fedavg", description="Weighting across clients (across all rows for plan 'flat')."
    )
    params: dict[str, ParamValue] = Field(
        default_factory=dict, description="Parameters of server.weighting ([server.params])."
    )
    task_weighting: str = Field(
        "mean", description="Weighting across tasks (two-level plans only)."
    )
    task_params: dict[str, ParamValue] = Field(
        default_factory=dict,
        description="Parameters of server.task-weighting ([server.task-params]).",
    )
    optimizer: Literal["sgd", "momentum", "adam"] = Field(
        "sgd", description="Server optimizer applied to the combined update."
    )
    lr: float = Field(1.0, gt=0, le=MAX_LR, description="Server learning rate on the combined update.")
    momentum: float = Field(0.9, ge=0, lt=1, description="Server momentum μ ('momentum').")
    beta1: float = Field(0.9, ge=0, lt=1, description="First-moment factor β₁ ('adam').")
    beta2: float = Field(0.99, ge=0, lt=1, description="Second-moment factor β₂ ('adam').")
    adaptivity: float = Field(1e-3, gt=0, description="Adaptivity τ of 'adam'.")
    fraction_train: float = Field(
        1.0, gt=0, le=1, description="Fraction of clients sampled for training each round."
    )
    sampling: Literal["uniform", "proportional"] = Field(
        "uniform", description="How the training clients of a round are drawn, without replacement: "
        "'uniform', or 'proportional' to each client's number of training examples n_k (q-FFL's "
        "sampling, Li et al. 2020; then average with a uniform server.weighting such as 'mean' or "
        "'qffl', not 'fedavg', which would count n_k twice). 'proportional' needs the server to know "
        "every n_k: server.max-examples = 0. Evaluation clients are always drawn uniformly.",
    )
    fraction_evaluate: float = Field(
        1.0, gt=0, le=1, description="Fraction of clients that evaluate each evaluation round."
    )
    min_train_clients: int = Field(1, ge=1, description="Minimum clients sampled per round.")
    timeout: float = Field(ROUND_TIMEOUT_S, gt=0, le=MAX_WAIT_S,
                           description="Seconds to wait for replies per round (at most 1e9).")
    connect_timeout: float = Field(
        120.0, gt=0, le=MAX_WAIT_S, description="Seconds to wait for data.num-clients SuperNodes to connect "
        "(at most 1e9)."
    )
    min_replies: int = Field(
        1, ge=1, description="Valid training replies a round needs to move the model; with "
        "fewer, server.on-too-few decides.",
    )
    on_too_few: Literal["skip", "retry"] = Field(
        "skip", description="A round with fewer than server.min-replies valid replies: 'skip' "
        "it (the model stays) or 'retry' (ask other clients, up to server.max-retries times, "
        "then skip).",
    )
    max_retries: int = Field(2, ge=0, description="Retries of a round that had too few replies.")
    max_failed_rounds: int = Field(
        3, ge=0, description="Stop the run (checkpoint kept) after this many consecutive rounds "
        "without enough valid replies (0 = never stop).",
    )
    norm_screening: float = Field(
        10.0, ge=0, description="Reject updates whose norm exceeds this many times the round's "
        "median update norm (0 = off; else > 1; needs at least 3 well-formed updates in the round); "
        "where the server knows the clients' training splits (max-examples = 0), times a client's local "
        "steps over the median client's when it takes more.",
    )
    max_examples: int = Field(
        0, ge=0, le=2**62, description="The most examples a client's reply may report (training "
        "and test). 0 = each client's own data size: the server builds the federation from [data] "
        "as the clients do (a simulation, or a deployment whose server holds the data); set a cap "
        "when the server does not hold the data.",
    )
    device: Literal["cpu", "cuda", "auto"] = Field(
        "cpu", description="Where the server aggregates (stacks the update rows, forms their "
        "Gramian and combines them): 'cuda' needs a GPU on the server's host (checked when the run "
        "starts there, not by fedmtl validate), 'auto' uses one when present. Weight solvers and the "
        "model stay on the CPU.",
    )

    _params = field_validator("params", "task_params", mode="before")(lambda cls, v: _parse_params(v))

    @field_validator("norm_screening")
    @classmethod
    def _screening_factor(cls, v: float) -> float:
        if 0 < v <= 1:
            raise ValueError("must be 0 (off) or > 1: a factor of at most 1 would reject about half of every round")
        return v

    @model_validator(mode="after")
    def _sizes_for_proportional_sampling(self) -> ServerSection:
        if self.sampling == "proportional" and self.max_examples:
            raise ValueError(
                f"sampling = 'proportional' draws clients by their number of training examples, which a "
                f"server with max-examples = {self.max_examples} does not know (it does not build the "
                "data); use sampling = 'uniform', or max-examples = 0 where the server holds the data"
            )
        return self


class FaultsSection(Section):
    """``[faults]``: failures injected into a simulation, to test what a run survives.

    Every draw is seeded by (run.seed, round, attempt, client): the same config gives the
    same faults.
    """

    dropout: float = Field(
        0.0, ge=0, lt=1, description="Probability that a sampled client drops out of a training "
        "round (it replies an error and does not train).",
    )
    straggler: float = Field(
        0.0, ge=0, le=1, description="Probability that a sampled client is a straggler: it "
        "trains, then waits faults.straggler-delay seconds before replying.",
    )
    straggler_delay: float = Field(
        0.0, ge=0, le=MAX_WAIT_S, description="Seconds a straggler waits (at most 1e9); beyond "
        "server.timeout its reply misses the round.",
    )
    corrupt: float = Field(
        0.0, ge=0, le=1, description="Probability that a client's training reply is corrupted "
        "(its heads train normally).",
    )
    corrupt_kinds: str = Field(
        "nan,inf,huge,shape", description="Comma-separated kinds of corruption, drawn uniformly: "
        "'nan', 'inf', 'huge' (update × 1e6), 'shape' (a tensor loses an element).",
    )


class PersonalizationSection(Section):
    """``[personalization]``: what each client keeps personal and how it trains it.

    The method is a registered name (``fedmtl.training.methods``); its own options live
    in ``[personalization.params]``, checked by the method. ``model.heads`` says whether the heads
    travel with the backbone, and each method allows one or both: a config that sets only
    ``personalization.method`` gets the heads the method allows first, one that sets only
    ``model.heads = "global"`` gets ``method = "none"``, and two values that disagree are an error.
    """

    method: str = Field(
        "fedper", description="Personalization method: 'fedper' (personal heads), 'none' (one global "
        "model), 'fedprox', 'fedrep', 'fedbabu', 'finetune', 'ditto', 'apfl', 'local' (see the methods below).",
    )
    params: dict[str, ParamValue | list[float]] = Field(
        default_factory=dict, description="Options of personalization.method ([personalization.params]; "
        "each method's are listed below).",
    )

    _params = field_validator("params", mode="before")(
        lambda cls, v: _parse_params(v, "personalization.params", "[personalization.params] mu = 0.01",
                                     '{"mu": 0.01}', lists=True)
    )


ONE_NODE_PER_CLIENT_UP_TO = 200
"""Up to this many clients, a simulation gives every client its own virtual SuperNode."""


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the system has one).

    Returns
    -------
    int
        At least 1. A container's CPU quota is not read (Ray reads it: set ``engine.num-cpus``
        in a container with a quota).
    """
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity masks (macOS)
        return os.cpu_count() or 1


def engine_thread_cap() -> int:
    """How many messages Flower's Simulation Engine can hand to its backend at once: its
    workers run in a ``ThreadPoolExecutor`` of Python's default size, ``min(32, CPUs + 4)``."""
    return min(32, (os.cpu_count() or 1) + 4)


class EngineSection(Section):
    """``[engine]``: the simulation engine's backend and resources (``fedmtl run`` only)."""

    backend: Literal["ray", "inprocess"] = Field(
        "ray", description="Where the Simulation Engine runs the ClientApps: 'ray' (Ray actors, "
        "clients in parallel, clusters) or 'inprocess' (in the fedmtl process's threads, as many "
        "clients at once as Ray would run: no Ray start-up, for small and medium runs, sweeps and debugging).",
    )
    client_num_cpus: int = Field(1, ge=1, description="Whole CPUs per virtual client: its torch threads (the "
                                 "centralized baseline trains with as many).")
    client_num_gpus: float = Field(
        0.0, ge=0, le=1, description="GPU fraction per virtual client (0 = CPU only)."
    )
    num_cpus: int = Field(0, ge=0, description="CPUs Ray may use (0 = all of this machine); in-process, "
                          "the CPUs the clients share.")
    address: str = Field(
        "", description="An existing Ray cluster to run on ('host:port' of its head, or 'auto'); "
        "'' starts a Ray instance on this machine.",
    )
    max_concurrent_clients: int = Field(
        0, ge=0, description="Most virtual clients running at once on the Ray instance fedmtl "
        "starts, or in-process (0 = as many as the CPUs and GPUs fit): Ray gets this many × "
        "engine.client-num-cpus CPUs. On a cluster (engine.address) the nodes' resources decide.",
    )
    supernodes: int = Field(
        0, ge=0, description="Virtual SuperNodes (0 = one per client up to "
        f"{ONE_NODE_PER_CLIENT_UP_TO:,} clients, else as many as the most clients asked at once). "
        "With fewer SuperNodes than clients, each message names the client its SuperNode plays "
        "(heads must be on disk).",
    )

    def cpus(self) -> int:
        """The CPUs the clients get: ``max-concurrent-clients`` × ``client-num-cpus``, else
        ``num-cpus`` (0 = all of this machine's)."""
        return self.max_concurrent_clients * self.client_num_cpus if self.max_concurrent_clients else self.num_cpus

    def clients_at_once(self, gpus: int | None = None) -> int:
        """How many clients run at once on this machine, as Ray sizes Flower's actor pool.

        Parameters
        ----------
        gpus : int, optional
            The GPUs the clients can use (only read with ``client-num-gpus > 0``); by default
            those in-process clients can use (:func:`fedmtl.gpus.in_process_gpus`).

        Returns
        -------
        int
            ⌊CPUs / client-num-cpus⌋ (:meth:`cpus`, else :func:`available_cpus`), with a GPU
            fraction per client at most ⌊``gpus`` / client-num-gpus⌋, and no more than Flower's
            engine hands out at once (:func:`engine_thread_cap`); at least 1. The in-process
            backend runs this many ClientApp calls in its threads.
        """
        count = (self.cpus() or available_cpus()) // self.client_num_cpus
        if self.client_num_gpus > 0:
            if gpus is None:
                from fedmtl.gpus import in_process_gpus  # imported on use: torch

                gpus = in_process_gpus()
            count = min(count, int(gpus / self.client_num_gpus + 1e-9))
        return max(1, min(count, engine_thread_cap()))

    @model_validator(mode="after")
    def _one_way_to_size_ray(self) -> EngineSection:
        if self.backend == "inprocess" and self.address:
            raise ValueError(
                "backend = 'inprocess' runs the clients in this process; engine.address "
                "names a Ray cluster: use engine.backend = 'ray' there, or leave address empty"
            )
        if self.max_concurrent_clients and self.address:
            raise ValueError(
                "max-concurrent-clients sizes the Ray instance fedmtl starts; on a cluster "
                "(engine.address) each node runs ⌊its CPUs / engine.client-num-cpus⌋ clients: start "
                "nodes with `ray start --num-cpus N` or raise engine.client-num-cpus"
            )
        if self.max_concurrent_clients and self.num_cpus:
            raise ValueError(
                "max-concurrent-clients and num-cpus both size the engine; set one (it gets "
                "max-concurrent-clients × client-num-cpus CPUs)"
            )
        return self


SECTIONS: dict[str, type[Section]] = {
    "run": RunSection,
    "data": DataSection,
    "model": ModelSection,
    "client": ClientSection,
    "server": ServerSection,
    "engine": EngineSection,
    "faults": FaultsSection,
    "personalization": PersonalizationSection,
}


class ExperimentConfig(Section):
    """A whole experiment: one field per section."""

    run: RunSection = RunSection()
    data: DataSection = DataSection()
    model: ModelSection = ModelSection()
    client: ClientSection = ClientSection()
    server: ServerSection = ServerSection()
    engine: EngineSection = EngineSection()
    faults: FaultsSection = FaultsSection()
    personalization: PersonalizationSection = PersonalizationSection()

    # -- conversions ------------------------------------------------------------------
    def to_nested(self) -> dict[str, dict[str, Any]]:
        """``{"data": {"num-clients": 20, ...}, ...}`` with kebab-case keys."""
        return self.model_dump(by_alias=True)

    def to_flat(self) -> dict[str, Any]:
        """``{"data.num-clients": 20, ...}``: Flower's run-config form.

        Tables of weighting parameters and lists (``run.plugins``) become JSON text (Flower's
        values are scalars).
        """
        return {
            f"{section}.{key}": json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else value
            for section, values in self.to_nested().items()
            for key, value in values.items()
        }

    def to_toml(self) -> str:
        """The fully resolved config as TOML text."""
        return tomli_w.dumps(self.to_nested())

    def fingerprint(self) -> str:
        """A stable string of the values (a cache key)."""
        return json.dumps(self.to_flat(), sort_keys=True)

    def with_values(self, **sections: dict[str, Any]) -> ExperimentConfig:
        """A copy with some keys of some sections replaced, checked against the schema.

        Names and checks across sections are not re-run: pass the copy to
        :func:`fedmtl.validation.check_config` when a replaced key could break them.
        """
        nested = self.to_nested()
        for section, values in sections.items():
            nested[section].update({_kebab(k): v for k, v in values.items()})
        return parse_schema(nested)


def virtual_supernodes(cfg: ExperimentConfig) -> int:
    """How many virtual SuperNodes a simulation of ``cfg`` starts (``engine.supernodes``).

    ``0`` means: one per client up to :data:`ONE_NODE_PER_CLIENT_UP_TO` clients; beyond, as
    many as the most clients the server asks at once (training or evaluation). Flower's
    in-memory engine scans its stored messages for every SuperNode on every tick, so tens of
    thousands of SuperNodes cost more than the clients' work (``benchmarks/results/scale.md``).
    """
    clients = cfg.data.num_clients
    if cfg.engine.supernodes:
        return min(cfg.engine.supernodes, clients)
    if clients <= ONE_NODE_PER_CLIENT_UP_TO:
        return clients
    asked = max(math.ceil(cfg.server.fraction_train * clients), math.ceil(cfg.server.fraction_evaluate * clients),
                cfg.server.min_train_clients)
    return min(asked, clients)


# -- building and loading ---------------------------------------------------------------
def _quoting_hint(err: dict[str, Any], values: dict[str, Any]) -> str:
    """How to write a number ``err`` found where text belongs as text: the value in quotes or,
    for an item of a list, the whole list with its numbers in quotes (``--set 'k.0="1"'``
    would set a table)."""
    loc, value = list(err["loc"]), err.get("input")
    at = next((i for i, part in enumerate(loc) if isinstance(part, int)), None)
    container: Any = values
    for part in loc[:at]:
        container = container.get(str(part)) if isinstance(container, dict) else None
    if at is None or not isinstance(container, list):
        key, text = ".".join(map(str, loc)), f'"{value}"'
    else:
        from fedmtl.labels import toml_inline

        key = ".".join(map(str, loc[:at]))
        text = toml_inline([str(item) if isinstance(item, int | float) and not isinstance(item, bool) else item
                            for item in container])
    return f" (for the text, quote it: {key} = {text}, or --set '{key}={text}')"


def _key_outside_sections(name: str, value: Any) -> str:
    """The error for a value given outside any section (``rounds = 3`` before the first header
    of a file, ``{"rounds": 3}``), naming the sections' keys of that name (or a close one)."""
    keys = [f"{section}.{field.alias or n}" for section, model in SECTIONS.items()
            for n, field in model.model_fields.items()]
    kebab = name.replace("_", "-")
    held = [key for key in keys if key.split(".", 1)[1] == kebab]
    if not held:
        close = difflib.get_close_matches(kebab, sorted({key.split(".", 1)[1] for key in keys}), n=1, cutoff=0.75)
        held = [key for key in keys if close and key.split(".", 1)[1] == close[0]]
    where = f"key '{name}' = {value!r} is outside any section"
    if not held:
        return f"{where}: a key goes under its section's header ([run], ...); sections: {', '.join(SECTIONS)}"
    section = held[0].split(".", 1)[0]
    return (f"{where}: did you mean {' or '.join(held)}? (write it under its section's header, e.g. [{section}], "
            f"or as {held[0]})")


def _describe_error(err: dict[str, Any], values: dict[str, Any] | None = None) -> str:
    loc = [str(part) for part in err["loc"]]
    key = ".".join(loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        if len(loc) == 1 and not isinstance(err.get("input"), dict):  # `rounds = 3` above any [section]
            return _key_outside_sections(loc[0], err.get("input"))
        if len(loc) == 1:
            allowed = list(SECTIONS)
            return (
                f"unknown section '[{loc[0]}]'{did_you_mean(loc[0], allowed)}; "
                f"allowed sections: {', '.join(allowed)}"
            )
        section = SECTIONS.get(loc[0])
        allowed = [f.alias or n for n, f in section.model_fields.items()] if section else []
        return (
            f"unknown key '{key}'{did_you_mean(loc[-1], allowed)}; "
            f"allowed keys in [{loc[0]}]: {', '.join(allowed)}"
        )
    value = err.get("input")
    message = err["msg"].removeprefix("Value error, ")
    if not loc:  # a check across sections; the message names the keys
        return message
    if len(loc) == 1 and loc[0] in SECTIONS and isinstance(value, dict):
        # a check across keys of one section; the message names the key
        return "\n".join(f"{loc[0]}.{line}" for line in message.splitlines())
    if kind == "string_type" and isinstance(value, int | float) and not isinstance(value, bool):
        # --set k=nan, k=123: TOML read a number; the text is a string in quotes
        message += _quoting_hint(err, values or {})
    return f"{key} = {value!r}: {message}"


def parse_schema(values: dict[str, Any]) -> ExperimentConfig:
    """Check a nested ``{section: {key: value}}`` dict against the schema only.

    Types, ranges and unknown keys are checked; registered names and checks across
    sections are not (:func:`fedmtl.validation.build_config` runs them all).

    Raises
    ------
    ConfigError
        Naming every bad key and value (one per line).
    """
    for section, content in values.items():
        if section in SECTIONS and not isinstance(content, dict):
            raise ConfigError(f"'{section}' must be a table ([{section}]), got {content!r}")
    try:
        return ExperimentConfig.model_validate(values)
    except ValidationError as exc:
        raise ConfigError("\n".join(_describe_error(e, values) for e in exc.errors())) from None


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"data.num-clients": 3}`` -> ``{"data": {"num-clients": 3}}``."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        parts = key.split(".")
        node = nested
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"key '{key}' conflicts with '{part}' = {child!r}")
            node = child
        node[parts[-1]] = value
    return nested


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one ``--set key=value`` (value in TOML syntax; bare words are strings)."""
    if "=" not in text:
        key = text.strip() or "run.rounds"
        raise ConfigError(f"--set expects key=value, got '{text}': write --set {key}=VALUE (e.g. --set run.rounds=3)")
    key, raw = (part.strip() for part in text.split("=", 1))
    if "." not in key:
        raise ConfigError(f"--set key '{key}' must be 'section.key', e.g. 'run.rounds'")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


FOLLOWING_KEYS = ("model.heads", "personalization.method")
"""Flat keys whose Flower default is ``""`` (unset): a run config that sets one of them only
(``flwr run --run-config``) gets the other from it, as a config file does
(:func:`fedmtl.validation.heads_from_method`); both unset are ``"personal"`` and ``"fedper"``."""


RESUME_RUN_DIR, RESUME_HEADS_ON_NODES = "resume.run-dir", "resume.heads-on-nodes"
SUBMISSION_DEFAULTS: dict[str, Any] = {RESUME_RUN_DIR: "", RESUME_HEADS_ON_NODES: False}
"""The keys of a ``flwr run`` submission's run config that are not the experiment's, with their
defaults: ``resume.run-dir``, a run folder on the ServerApp's machine to continue after its
newest checkpoint (``fedmtl flwr-run --resume``; the folder's own ``config.toml`` is then the
experiment, whatever the other keys say), and ``resume.heads-on-nodes``, whether its clients
keep their heads on their own hosts (a deployment's SuperNodes; they are then not checked in
the folder). The ServerApp removes them before it reads the config."""


def flower_defaults_block() -> str:
    """The body of pyproject's ``[tool.flwr.app.config]``: every key and its default
    (``""`` for :data:`FOLLOWING_KEYS`), then :data:`SUBMISSION_DEFAULTS`."""
    lines = []
    for key, value in {**ExperimentConfig().to_flat(), **SUBMISSION_DEFAULTS}.items():
        value = "" if key in FOLLOWING_KEYS else value
        lines.append(f"{key} = {tomli_w.dumps({'v': value})[4:].strip()}")
    return "\n".join(lines) + "\n"


def sync_pyproject(path: str | Path = "pyproject.toml") -> bool:
    """Rewrite the generated defaults block of ``path``; return ``True`` if it changed."""
    path = Path(path)
    text = path.read_text()
    begin, end = "# BEGIN GENERATED DEFAULTS\n", "# END GENERATED DEFAULTS"
    start, stop = text.index(begin) + len(begin), text.index(end)
    new = text[:start] + flower_defaults_block() + text[stop:]
    path.write_text(new)
    return new != text


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file, turning I/O and syntax errors into :class:`ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(missing_config(path))
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a byte-order mark some editors write is no error
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at position {exc.start}); "
                          "save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def apply_override(values: dict[str, Any], key: str, value: Any) -> None:
    """Set the dotted ``key`` of the nested ``values`` in place.

    ``data.params.canvas`` sets one entry of a ``[data.params]`` table and keeps the others;
    ``server.params`` replaces the whole table. A value that is not a table on the way
    (``run = 3``) is replaced by one.
    """
    *path, last = key.split(".")
    node = values
    for part in path:
        child = node.get(part)
        if isinstance(child, str):  # a table given as JSON text (Flower's flat form)
            try:
                child = json.loads(child)
            except json.JSONDecodeError:
                pass
        if not isinstance(child, dict):
            child = {}
        node[part] = child
        node = child
    node[last] = value


def read_values(path: str | Path | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """The nested values of a TOML config file (or none) with ``--set`` overrides applied.

    Nothing is validated beyond TOML syntax and the override form: see
    :func:`fedmtl.validation.load_config`.

    Parameters
    ----------
    path : str or Path, optional
        A TOML file, or the name of a shipped config (``quickstart``, ``studies/qffl_paper``)
        when no such file exists (:func:`fedmtl.shipped.resolve_config`); ``None`` starts
        from the defaults.
    overrides : list[str], optional
        ``"section.key=value"`` strings applied on top, in order.
    """
    values = read_toml(resolve_config(path)) if path is not None else {}
    for text in overrides or []:
        apply_override(values, *parse_override(text))
    return values


if __name__ == "__main__":  # python -m fedmtl.config: refresh pyproject's defaults block
    print("pyproject.toml updated" if sync_pyproject() else "pyproject.toml already in sync")
