"""The fedmtl ClientApp.

A client is identified by its node's ``partition-id`` (``--node-config`` in a deployment,
set by the Simulation Engine in simulation), unless the message names one (``client-id`` in
its ``call`` record, beside the run config in ``config``):
a large simulation's virtual SuperNodes take turns playing many clients. Every reply to
``train`` and ``evaluate`` carries its placement (host, Ray node, device). Messages:

- ``query`` (discovery): replies its partition id and the number of partitions;
- ``train``: loads the global backbone, restores its own heads and local weighting state
  (or initialises them from the seed and its id on a first visit), measures its loss before
  training when the server weighting needs it, trains locally, saves its heads, and replies
  the backbone *update* (local − global) — or its per-task parts when the server's plan
  needs them — and metrics. Heads never leave the client.
- ``train`` with ``[faults]``: a client may drop out (an error in place of its reply), reply
  late (a straggler) or corrupt its update (:mod:`fedmtl.faults`).
- ``evaluate``: the personalized model (global backbone + own heads) on the local test split.
"""

from __future__ import annotations

import functools
import socket
import time
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import Error, MessageType
from flwr.common.constant import ErrorCode

from fedmtl.aggregation import WEIGHTINGS, Weighting, make_weighting
from fedmtl.aggregation.plans import needs_task_parts, uses_task_weighting
from fedmtl.config import ExperimentConfig, config_from_flat
from fedmtl.data import ClientData, load_federation
from fedmtl.faults import Fault, corrupt, draw_fault
from fedmtl.models import MultiTaskModel, build_model
from fedmtl.personalization import (
    ContextHeadStore,
    DiskHeadStore,
    HeadStore,
    heads_fingerprint,
    restore_client,
    save_client_state,
    unpack_state,
)
from fedmtl.tasks import TaskSpec
from fedmtl.training import evaluate, measure_losses, train_local
from fedmtl.training.setup import select_device, seeded_generator

app = ClientApp()


@functools.lru_cache(maxsize=8)
def _parse_config(items: tuple[tuple[str, object], ...]) -> ExperimentConfig:
    return config_from_flat(dict(items))


PER_MESSAGE = ("server-round", "server-attempt", "client-id")
"""Values of one message (its ``"call"`` record), as opposed to the run config."""


def call_values(msg: Message) -> dict[str, int]:
    """The per-message values (:data:`PER_MESSAGE`): from the message's ``"call"`` record, or
    from its ``"config"`` record when a sender puts everything there."""
    source = msg.content["call"] if "call" in msg.content.config_records else msg.content["config"]
    return {key: int(source[key]) for key in PER_MESSAGE if key in source}


def read_config(msg: Message) -> tuple[ExperimentConfig, int]:
    """The run config and the server round carried by a message."""
    values = {k: v for k, v in msg.content["config"].items() if k not in PER_MESSAGE}
    return _parse_config(tuple(sorted(values.items()))), call_values(msg).get("server-round", 0)


def partition_id(context: Context) -> int:
    """This node's client id (``partition-id`` of its node config)."""
    try:
        return int(context.node_config["partition-id"])
    except KeyError:
        raise RuntimeError(
            "this SuperNode has no 'partition-id' in its node config; start it with "
            "--node-config 'partition-id=<i> num-partitions=<N>'"
        ) from None


def head_store(cfg: ExperimentConfig, context: Context) -> HeadStore:
    """The configured head store of this node."""
    if cfg.client.head_store == "context":
        return ContextHeadStore(context.state)
    root = context.node_config.get("head-store-dir") or cfg.client.head_store_dir
    return DiskHeadStore(str(root))


def client_id(msg: Message, context: Context) -> int:
    """The client this message is for: the ``client-id`` the server names (a simulation's
    SuperNodes may take turns playing many clients), else this node's partition id."""
    named = call_values(msg).get("client-id")
    return named if named is not None else partition_id(context)


@dataclass
class LocalSetup:
    """Everything a train or evaluate call works with on this node."""

    cfg: ExperimentConfig
    server_round: int
    client: int
    model: MultiTaskModel
    store: HeadStore
    data: ClientData
    tasks: list[TaskSpec]
    device: torch.device
    weighting_state: torch.Tensor | None
    """The local weighting's state saved with the heads, packed (``None`` on a first visit)."""


def local_setup(msg: Message, context: Context) -> LocalSetup:
    """Config from ``msg``; global backbone from ``msg`` + this client's heads; its data."""
    cfg, server_round = read_config(msg)
    torch.set_num_threads(cfg.engine.client_num_cpus)
    client = client_id(msg, context)
    fed = load_federation(cfg.data, cfg.run.seed)
    tasks = fed.client_tasks(client)
    model = build_model(cfg.model, fed.input_shape, tasks)
    store = head_store(cfg, context)
    # training in round R starts from the heads of an earlier round (a resumed run may find
    # this round's heads from before it was killed); evaluation uses this round's
    until = server_round - 1 if msg.metadata.message_type == MessageType.TRAIN else server_round
    _, weighting_state = restore_client(model, store, cfg.run.seed, client, until)
    model.load_federated_state(msg.content["arrays"].to_torch_state_dict())  # global heads win
    return LocalSetup(
        cfg, server_round, client, model, store, fed.client(client), tasks,
        select_device(cfg.client.device), weighting_state,
    )


def placement(device: torch.device) -> ConfigRecord:
    """Where this reply was computed: the host, the Ray node (in a simulation) and the device."""
    node = ""
    try:
        import ray

        if ray.is_initialized():
            node = ray.get_runtime_context().get_node_id()
    except ImportError:  # a SuperNode without Ray
        pass
    return ConfigRecord({"host": socket.gethostname(), "node": node, "device": str(device)})


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Discovery: report this node's partition id and the number of partitions."""
    info = MetricRecord(
        {
            "partition-id": partition_id(context),
            "num-partitions": int(context.node_config.get("num-partitions", -1)),
        }
    )
    return Message(RecordDict({"info": info}), reply_to=msg)


def server_needs_losses(cfg: ExperimentConfig) -> bool:
    """Whether a server weighting in use weights by the loss before local training."""
    names = [cfg.server.weighting]
    if uses_task_weighting(cfg.server.plan):
        names.append(cfg.server.task_weighting)
    return any(WEIGHTINGS.get(n).needs_losses for n in names)


def local_weighting(s: "LocalSetup") -> Weighting:
    """The client's cross-task weighting, with the state it saved last round."""
    weighting = make_weighting(s.cfg.client.weighting, **s.cfg.client.params)
    if s.weighting_state is not None:
        weighting.load_state_dict(unpack_state(s.weighting_state))
    return weighting


def unflatten_parts(
    parts: torch.Tensor, model: MultiTaskModel, like: dict[str, torch.Tensor], names: list[str]
) -> dict[str, ArrayRecord]:
    """``(T, P)`` per-task parts (backbone parameters, flattened in order) -> one
    ArrayRecord per task with the keys of the backbone state ``like`` (buffers get zeros)."""
    offsets, offset = {}, 0
    for key, p in model.backbone.named_parameters():
        offsets[key] = (offset, p.numel())
        offset += p.numel()
    records = {}
    for name, flat in zip(names, parts, strict=True):
        state = {}
        for key, ref in like.items():
            if key in offsets:
                start, n = offsets[key]
                state[key] = flat[start : start + n].reshape(ref.shape).to(ref.dtype)
            else:
                state[key] = torch.zeros_like(ref)
        records[f"part.{name}"] = ArrayRecord(state)
    return records


def injected_fault(msg: Message, context: Context) -> Fault:
    """This client's fault in this training attempt (``[faults]``; none by default)."""
    cfg, server_round = read_config(msg)
    attempt = call_values(msg).get("server-attempt", 0)
    client = client_id(msg, context)
    return draw_fault(cfg.faults, cfg.run.seed, server_round, attempt, client)


def with_corruption(records: dict[str, object], kind: str) -> dict[str, object]:
    """``records`` with every update array record corrupted by ``kind`` (``faults.corrupt``)."""
    if not kind:
        return records
    return {name: ArrayRecord(corrupt(r.to_torch_state_dict(), kind)) if isinstance(r, ArrayRecord) else r
            for name, r in records.items()}


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local multi-task training; reply the backbone update (or its task parts) and metrics."""
    fault = injected_fault(msg, context)
    if fault.dropout:  # gone: the server gets an error in place of a reply, as for a lost node
        reason = f"client {client_id(msg, context)} dropped out of this round (faults.dropout)"
        return Message(error=Error(code=ErrorCode.NODE_UNAVAILABLE, reason=reason), reply_to=msg)
    s = local_setup(msg, context)
    model, client, cfg = s.model, s.client, s.cfg
    fingerprint_in = heads_fingerprint(model)
    weighting = local_weighting(s)
    global_heads = cfg.model.heads == "global"
    global_state = {k: v.clone() for k, v in model.federated_state(global_heads).items()}
    model.to(s.device)
    metrics: dict[str, float | int] = {}
    if server_needs_losses(cfg):
        before = measure_losses(model, s.data.train, s.tasks, batch_size=cfg.client.batch_size, device=s.device)
        metrics.update({f"train.{task}.loss-before": loss for task, loss in before.items()})
    track_parts = needs_task_parts(cfg.server.plan)
    result = train_local(
        model,
        s.data.train,
        s.tasks,
        weighting,
        epochs=cfg.client.epochs,
        batch_size=cfg.client.batch_size,
        lr=cfg.client.lr,
        momentum=cfg.client.momentum,
        device=s.device,
        generator=seeded_generator(cfg.run.seed, s.server_round, client),
        gradients=cfg.client.gradients,
        track_parts=track_parts,
    )
    model.to("cpu")
    save_client_state(s.store, client, model, weighting.state_dict(), s.server_round, cfg.run.checkpoint_every)
    metrics.update({
        "partition-id": client,
        "num-examples": result.num_examples,
        "heads-fingerprint-in": fingerprint_in,
        "heads-fingerprint-out": heads_fingerprint(model),
    })
    for task, loss in result.task_losses.items():
        metrics[f"train.{task}.loss"] = loss
        metrics[f"train.{task}.weight"] = result.task_weights[task]
    records: dict[str, ArrayRecord | MetricRecord | ConfigRecord] = {
        "metrics": MetricRecord(metrics), "placement": placement(s.device)}
    if track_parts:
        records.update(unflatten_parts(result.parts, model, global_state, [t.name for t in s.tasks]))
    else:
        records["update"] = ArrayRecord(
            {k: v - global_state[k] for k, v in model.federated_state(global_heads).items()})
    if fault.delay:
        time.sleep(fault.delay)  # a straggler: its heads are saved, its reply is late
    return Message(RecordDict(with_corruption(records, fault.corruption)), reply_to=msg)


@app.evaluate()
def evaluate_personalized(msg: Message, context: Context) -> Message:
    """Evaluate global backbone + own heads on the local test split."""
    s = local_setup(msg, context)
    test = s.data.test
    results = evaluate(s.model.to(s.device), test, s.tasks, device=s.device)
    metrics: dict[str, float | int] = {"partition-id": s.client, "num-examples": len(test)}
    for task, values in results.items():
        for metric, value in values.items():
            metrics[f"test.{task}.{metric}"] = value
    return Message(RecordDict({"metrics": MetricRecord(metrics), "placement": placement(s.device)}), reply_to=msg)
