"""The fedmtl ClientApp.

A client is identified by its node's ``partition-id`` (``--node-config`` in a deployment,
set by the Simulation Engine in simulation). Messages:

- ``query`` (discovery): replies its partition id and the number of partitions;
- ``train``: loads the global backbone, restores its own heads (or initialises them from the
  seed and its id on a first visit), trains locally, saves its heads, and replies the
  backbone *update* (local − global) and metrics. Heads never leave the client.
- ``evaluate``: the personalized model (global backbone + own heads) on the local test split.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedmtl.aggregation import make_weighting
from fedmtl.config import ExperimentConfig, config_from_flat
from fedmtl.data import ClientData, load_federation
from fedmtl.models import MultiTaskModel, build_model
from fedmtl.personalization import (
    ContextHeadStore,
    DiskHeadStore,
    HeadStore,
    heads_fingerprint,
    restore_heads,
)
from fedmtl.tasks import TaskSpec
from fedmtl.training import evaluate, train_local
from fedmtl.training.setup import select_device, seeded_generator

app = ClientApp()


@functools.lru_cache(maxsize=8)
def _parse_config(items: tuple[tuple[str, object], ...]) -> ExperimentConfig:
    return config_from_flat(dict(items))


def read_config(record: ConfigRecord) -> tuple[ExperimentConfig, int]:
    """The run config and the server round carried by a message."""
    values = dict(record.items())
    server_round = int(values.pop("server-round", 0))
    return _parse_config(tuple(sorted(values.items()))), server_round


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


def local_setup(msg: Message, context: Context) -> LocalSetup:
    """Config from ``msg``; global backbone from ``msg`` + this client's heads; its data."""
    cfg, server_round = read_config(msg.content["config"])
    torch.set_num_threads(cfg.engine.client_num_cpus)
    client = partition_id(context)
    fed = load_federation(cfg.data, cfg.run.seed)
    model = build_model(cfg.model, fed.input_shape, fed.tasks)
    model.backbone.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    store = head_store(cfg, context)
    restore_heads(model, store, cfg.run.seed, client)
    return LocalSetup(
        cfg, server_round, client, model, store, fed.client(client), fed.tasks,
        select_device(cfg.client.device),
    )


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


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local multi-task training; reply the backbone update and metrics (no heads)."""
    s = local_setup(msg, context)
    model, client, cfg = s.model, s.client, s.cfg
    fingerprint_in = heads_fingerprint(model)
    global_state = {k: v.clone() for k, v in model.backbone_state().items()}
    model.to(s.device)
    result = train_local(
        model,
        s.data.train,
        s.tasks,
        make_weighting(cfg.client.weighting),
        epochs=cfg.client.epochs,
        batch_size=cfg.client.batch_size,
        lr=cfg.client.lr,
        momentum=cfg.client.momentum,
        device=s.device,
        generator=seeded_generator(cfg.run.seed, s.server_round, client),
    )
    model.to("cpu")
    s.store.save(client, model.heads_state())
    update = {k: v - global_state[k] for k, v in model.backbone_state().items()}
    metrics = {
        "partition-id": client,
        "num-examples": result.num_examples,
        "heads-fingerprint-in": fingerprint_in,
        "heads-fingerprint-out": heads_fingerprint(model),
    }
    for task, loss in result.task_losses.items():
        metrics[f"train.{task}.loss"] = loss
        metrics[f"train.{task}.weight"] = result.task_weights[task]
    content = RecordDict({"update": ArrayRecord(update), "metrics": MetricRecord(metrics)})
    return Message(content, reply_to=msg)


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
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
