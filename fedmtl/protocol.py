"""The wire protocol between the fedmtl ServerApp and ClientApp, written down once.

Both apps build and read their messages with these names; nothing here knows Flower (the
records are Flower's ``RecordDict`` entries, named below). Three kinds of message:

``query`` (client discovery)
    carries ``"config"`` = ``{"kind": "discover"}``; the reply carries ``"info"`` =
    ``{"partition-id", "num-partitions"}`` (:data:`INFO_KEYS`).
``train``
    carries ``"arrays"`` (the global federated state, in state-dict order), ``"config"``
    (the run config, flat, and the run's identity :data:`RUN_ID`) and ``"call"``
    (:class:`TrainCall`: round, attempt, the client to play, the heads it must start from, and
    what the server needs back). The reply carries ``"metrics"`` (:data:`TRAIN_REPLY_KEYS`
    and ``train.<task>.<loss|loss-before|weight>``), ``"placement"`` (:data:`PLACEMENT_KEYS`)
    and either ``"update"`` (local − global, keyed like ``"arrays"``) or, when the call asks
    for task parts, ``"parts"``: one flat float32 vector per task, laid out as the server
    flattens ``"arrays"`` (:func:`flat_layout`).
``evaluate``
    carries ``"arrays"``, ``"config"`` and ``"call"`` (:class:`Call`); the reply carries
    ``"metrics"`` (``partition-id``, ``num-examples``, ``test.<task>.<metric>`` and, for a
    method with a global and a personal model, the global model's ``test-global.<task>.<metric>``:
    :data:`TEST_GLOBAL`) and ``"placement"``.

A client whose heads are not those the call names (:attr:`Call.heads_in`,
:attr:`Call.fresh_heads`) does not train or evaluate: its reply carries only ``"refusal"``
(:data:`REFUSAL`), which the server counts as a rejected reply.

Metric keys follow the grammar ``<stage>.<task>.<metric>`` (:func:`metric_key`,
:func:`parse_metric_keys`); the other metric keys have no dots.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# -- record names -------------------------------------------------------------------------
ARRAYS = "arrays"
"""Request: the global federated state (backbone, and heads when they are global)."""
CONFIG = "config"
"""Request: the run config, flat (``ExperimentConfig.to_flat``); a query's ``kind``."""
CALL = "call"
"""Request: the values of this one message (:class:`Call`, :class:`TrainCall`)."""
METRICS = "metrics"
"""Reply: the client's metrics."""
UPDATE = "update"
"""Train reply: the update (local − global state), keyed like :data:`ARRAYS`."""
PARTS = "parts"
"""Train reply with task parts: ``{task: flat float32 vector}`` (:func:`flat_layout`)."""
PLACEMENT = "placement"
"""Reply: where it was computed (:data:`PLACEMENT_KEYS`)."""
INFO = "info"
"""Query reply: the node's partition (:data:`INFO_KEYS`)."""
REFUSAL = "refusal"
"""Train or evaluate reply of a client that refuses the call (its heads are not those the
call names): ``{"reason": <one line>}`` (:data:`REFUSAL_REASON`), and nothing else."""
REFUSAL_REASON = "reason"

# -- per-message values (the "call" record) ----------------------------------------------
SERVER_ROUND = "server-round"
SERVER_ATTEMPT = "server-attempt"
CLIENT_ID = "client-id"
NEEDS_LOSSES_BEFORE = "needs-losses-before"
TASK_PARTS = "task-parts"
EXPECTED_HEADS = "expected-heads-in"
"""The ``heads-fingerprint`` the client's heads must have before it trains or evaluates."""
FRESH_HEADS = "expected-fresh-heads"
"""1: the client has not trained in this run, so it must have no saved heads."""
PER_MESSAGE = (SERVER_ROUND, SERVER_ATTEMPT, CLIENT_ID, NEEDS_LOSSES_BEFORE, TASK_PARTS, EXPECTED_HEADS, FRESH_HEADS)
"""Keys of the ``"call"`` record (a sender may also put them in ``"config"``)."""

# -- per-run values (in the "config" record, beside the run config) -----------------------
RUN_ID = "run-id"
"""The run's identity (its run folder's ``run-id``): a client writes it into its head files
and refuses heads written by another run (absent: nothing is checked)."""
PER_RUN = (RUN_ID,)
"""Keys of the ``"config"`` record that are not run-config keys."""

# -- query -------------------------------------------------------------------------------
KIND = "kind"
DISCOVER = "discover"
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"
INFO_KEYS = (PARTITION_ID, NUM_PARTITIONS)

# -- reply metrics -----------------------------------------------------------------------
NUM_EXAMPLES = "num-examples"
HEADS_IN = "heads-fingerprint-in"
HEADS_OUT = "heads-fingerprint-out"
TRAIN_REPLY_KEYS = (PARTITION_ID, NUM_EXAMPLES, HEADS_IN, HEADS_OUT)
"""The plain (dot-free) metrics of a train reply."""
EVALUATE_REPLY_KEYS = (PARTITION_ID, NUM_EXAMPLES)
"""The plain metrics of an evaluate reply."""
PLACEMENT_KEYS = ("host", "node", "device")

TRAIN = "train"
"""Stage of the training metrics: ``train.<task>.<metric>``."""
TEST = "test"
"""Stage of the evaluation metrics: ``test.<task>.<metric>`` (the model the method personalises)."""
TEST_GLOBAL = "test-global"
"""Stage of the global model's evaluation metrics, ``test-global.<task>.<metric>``, sent beside
:data:`TEST` by methods with a global and a personal model (the global view; optional)."""
LOSS = "loss"
LOSS_BEFORE = "loss-before"
WEIGHT = "weight"


@dataclass(frozen=True)
class Call:
    """What one message asks of the client besides the run config.

    Attributes
    ----------
    server_round : int
        The round (0 for discovery).
    attempt : int
        The training attempt of the round (0, then 1, 2, ... for retries).
    client : int or None
        The client to play (``None``: the node's own partition).
    heads_in : float or None
        The :data:`HEADS_IN` fingerprint the client's saved heads must have: the
        :data:`HEADS_OUT` of its last training the server knows of (``None``: not checked).
    fresh_heads : bool
        The client has not trained in this run: it must have no saved heads.
    """

    server_round: int = 0
    attempt: int = 0
    client: int | None = None
    heads_in: float | None = None
    fresh_heads: bool = False

    def values(self) -> dict[str, int | float]:
        """The ``"call"`` record's values (the heads' keys only when they are set)."""
        out: dict[str, int | float] = {SERVER_ROUND: self.server_round, SERVER_ATTEMPT: self.attempt}
        if self.client is not None:
            out[CLIENT_ID] = self.client
        if self.heads_in is not None:
            out[EXPECTED_HEADS] = self.heads_in
        if self.fresh_heads:
            out[FRESH_HEADS] = 1
        return out


@dataclass(frozen=True)
class TrainCall(Call):
    """A training call: :class:`Call` plus what the server needs in the reply.

    Attributes
    ----------
    needs_losses_before : bool
        Measure and report each task's loss before local training
        (``train.<task>.loss-before``): a server weighting weights by it.
    task_parts : bool
        Reply per-task parts of the update (:data:`PARTS`) instead of the whole
        :data:`UPDATE`: the aggregation plan combines tasks.
    """

    needs_losses_before: bool = False
    task_parts: bool = False

    def values(self) -> dict[str, int | float]:
        """The ``"call"`` record's values (the flags as 0 or 1)."""
        return {**super().values(), NEEDS_LOSSES_BEFORE: int(self.needs_losses_before),
                TASK_PARTS: int(self.task_parts)}


def read_call(values: Mapping[str, object]) -> TrainCall:
    """The :class:`TrainCall` of a ``"call"`` record's values (absent keys: defaults; an
    evaluate call reads as a train call with both flags off)."""
    client, heads_in = values.get(CLIENT_ID), values.get(EXPECTED_HEADS)
    return TrainCall(
        server_round=int(values.get(SERVER_ROUND, 0)),  # type: ignore[call-overload]
        attempt=int(values.get(SERVER_ATTEMPT, 0)),  # type: ignore[call-overload]
        client=None if client is None else int(client),  # type: ignore[call-overload]
        heads_in=None if heads_in is None else float(heads_in),  # type: ignore[arg-type]
        fresh_heads=bool(values.get(FRESH_HEADS, 0)),
        needs_losses_before=bool(values.get(NEEDS_LOSSES_BEFORE, 0)),
        task_parts=bool(values.get(TASK_PARTS, 0)),
    )


def metric_key(stage: str, task: str, metric: str) -> str:
    """``metric_key("train", "left", "loss") == "train.left.loss"``.

    Parameters
    ----------
    stage : str
        :data:`TRAIN` or :data:`TEST`.
    task : str
        A task name (dot-free, or :func:`parse_metric_keys` cannot read the key back).
    metric : str
        A metric name (dot-free, likewise).
    """
    return f"{stage}.{task}.{metric}"


def parse_metric_keys(record: Mapping[str, object], stage: str) -> dict[str, dict[str, float]]:
    """``{"test.left.accuracy": v}`` -> ``{"left": {"accuracy": v}}`` for one ``stage``.

    Keys of other stages and keys outside the grammar are left out.
    """
    out: dict[str, dict[str, float]] = {}
    for key, value in record.items():
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == stage:
            out.setdefault(parts[1], {})[parts[2]] = float(value)  # type: ignore[arg-type]
    return out


def task_metrics(stage: str, per_task: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Inverse of :func:`parse_metric_keys`: ``{task: {metric: v}}`` -> flat metric keys."""
    return {metric_key(stage, task, m): v for task, values in per_task.items() for m, v in values.items()}


def flat_layout(state_sizes: Iterable[tuple[str, int]], parameters: Iterable[str]) -> list[tuple[str, int, bool]]:
    """How a task part is laid out as one flat vector.

    The vector concatenates the federated state's tensors in state-dict order (the order of
    :data:`ARRAYS`), each flattened; a tensor that is not a trained parameter (a buffer)
    holds zeros.

    Parameters
    ----------
    state_sizes : iterable of (str, int)
        ``(key, number of elements)`` of the federated state, in order.
    parameters : iterable of str
        The keys that are trained parameters.

    Returns
    -------
    list of (str, int, bool)
        ``(key, number of elements, is a parameter)`` in vector order; the vector's length
        is the sum of the sizes.
    """
    trained = set(parameters)
    return [(key, size, key in trained) for key, size in state_sizes]
