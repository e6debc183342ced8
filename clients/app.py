"""The fedmtl ClientApp.

The messages and their replies are those of :mod:`fedmtl.protocol`. A client is identified
by its node's ``partition-id`` (``--node-config`` in a deployment, set by the Simulation
Engine in simulation), unless the message names one (``client-id`` in its ``call`` record,
beside the run config in ``config``): a large simulation's virtual SuperNodes take turns
playing many clients. Every reply to ``train`` and ``evaluate`` carries its placement
(host, Ray node, device). What a reply carries is decided by the message alone, never by
the server's settings in the run config. Messages:

- ``query`` (discovery): replies its partition id and the number of partitions;
- ``train``: loads the global backbone, restores its own heads, local weighting state and
  personalization state (or initialises them from the seed and its id on a first visit),
  refuses to go on when they are not the heads the call names (:func:`heads_refusal`),
  measures its loss before training when the call asks for it (``needs-losses-before``),
  trains locally as the personalization method says (``personalization.method``,
  :mod:`fedmtl.training.methods`), saves its heads and the method's state, and replies
  the backbone *update* (local − global) — or its per-task parts, flat, when the call asks for
  them (``task-parts``) — and metrics. Heads and personal state never leave the client.
- ``train`` with ``[faults]``: a client may drop out (an error in place of its reply), reply
  late (a straggler) or corrupt its update (:mod:`fedmtl.faults`).
- ``evaluate``: the method's views on the local test split: the model it personalises
  (global backbone + own heads for FedPer) under ``test`` and, for a method with a global and
  a personal model, the global one under ``test-global`` (refused, as training, when the heads
  are not those the call names).
"""

from __future__ import annotations

import contextlib
import functools
import socket
import time
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import Error, MessageType
from flwr.common.constant import ErrorCode

from fedmtl import protocol as wire
from fedmtl.aggregation import Weighting, make_weighting
from fedmtl.clients.context_store import ContextHeadStore
from fedmtl.clients.parts import flat_parts
from fedmtl.config import ExperimentConfig
from fedmtl.data import ClientData, load_federation
from fedmtl.determinism import use_deterministic
from fedmtl.faults import Fault, corrupt, draw_fault
from fedmtl.models import MultiTaskModel, build_model
from fedmtl.personalization import (
    DiskHeadStore,
    HeadStore,
    HeadStoreError,
    RunIdentity,
    kept_fingerprint,
    restore_client,
    save_client_state,
    unpack_state,
)
from fedmtl.plugins import forget_on_edit
from fedmtl.seeds import TORCH_RNG_LOCK, Stream, draws_at_random, seeded_global_rng
from fedmtl.tasks import TaskSpec
from fedmtl.training import measure_losses
from fedmtl.training.methods import ClientRun, Method, make_method, train_checked
from fedmtl.training.setup import select_device
from fedmtl.validation import config_from_flat

app = ClientApp()


@functools.lru_cache(maxsize=8)
def _parse_config(items: tuple[tuple[str, object], ...]) -> ExperimentConfig:
    return config_from_flat(dict(items))


forget_on_edit(_parse_config.cache_clear)  # a config naming an edited plugin is parsed (and the plugin imported) anew


def read_call(msg: Message) -> wire.TrainCall:
    """The message's per-message values (:class:`fedmtl.protocol.TrainCall`): from its
    ``"call"`` record, or from its ``"config"`` record when a sender puts everything there."""
    content = msg.content
    source = content[wire.CALL] if wire.CALL in content.config_records else content[wire.CONFIG]
    return wire.read_call({key: source[key] for key in wire.PER_MESSAGE if key in source})


def read_config(msg: Message) -> tuple[ExperimentConfig, int]:
    """The run config and the server round carried by a message."""
    values = {k: v for k, v in msg.content[wire.CONFIG].items() if k not in wire.PER_MESSAGE + wire.PER_RUN}
    return _parse_config(tuple(sorted(values.items()))), read_call(msg).server_round


def use_threads(count: int) -> None:
    """Give torch ``count`` intra-op threads in this process (``engine.client-num-cpus``).

    The setting is process-wide: it is changed only when it differs, so after a process's
    first message every message finds and leaves it as it is.
    """
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)


def partition_id(context: Context) -> int:
    """This node's client id (``partition-id`` of its node config)."""
    try:
        return int(context.node_config[wire.PARTITION_ID])
    except KeyError:
        raise RuntimeError(
            "this SuperNode has no 'partition-id' in its node config; start it with "
            "--node-config 'partition-id=<i> num-partitions=<N>'"
        ) from None


def run_identity(msg: Message, cfg: ExperimentConfig) -> RunIdentity:
    """The run this message belongs to (:data:`fedmtl.protocol.RUN_ID`, ``""`` when the server
    sends none) and the fingerprint of its config: written into the heads, checked on load."""
    from fedmtl.results import config_fingerprint  # imported on use: fedmtl.results brings pandas (0.3 s per actor)

    return RunIdentity(str(msg.content[wire.CONFIG].get(wire.RUN_ID, "")), config_fingerprint(cfg))


def head_store(cfg: ExperimentConfig, context: Context, identity: RunIdentity | None = None) -> HeadStore:
    """The configured head store of this node (a disk store refuses heads of a run other than ``identity``'s)."""
    if cfg.client.head_store == "context":
        return ContextHeadStore(context.state)
    root = context.node_config.get("head-store-dir") or cfg.client.head_store_dir
    return DiskHeadStore(str(root), identity)


def head_store_failure(msg: Message, context: Context, exc: HeadStoreError) -> Message:
    """The error reply of a client whose heads cannot be used: one line naming the file
    (the server logs and counts it like any client error; no traceback)."""
    reason = f"client {client_id(msg, context)}: {exc}"
    return Message(error=Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)


def client_id(msg: Message, context: Context) -> int:
    """The client this message is for: the ``client-id`` the server names (a simulation's
    SuperNodes may take turns playing many clients), else this node's partition id."""
    named = read_call(msg).client
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
    found_heads: bool
    """Heads were found in the store (``False``: initialised, a first visit)."""
    method: Method
    """The personalization method (``personalization.method``)."""
    personal: dict[str, torch.Tensor]
    """The method's own state saved with the heads (empty on a first visit)."""


def local_setup(msg: Message, context: Context) -> LocalSetup:
    """Config from ``msg``; global backbone from ``msg`` + this client's heads; its data."""
    cfg, server_round = read_config(msg)
    use_threads(cfg.engine.client_num_cpus)
    use_deterministic(cfg.run.deterministic)
    client = client_id(msg, context)
    fed = load_federation(cfg.data, cfg.run.seed)
    tasks = fed.client_tasks(client)
    with TORCH_RNG_LOCK:  # its initial draws (overwritten below) must not fall between another thread's
        model = build_model(cfg.model, fed.input_shape, tasks)
    store = head_store(cfg, context, run_identity(msg, cfg))
    # training in round R starts from the heads of an earlier round (a resumed run may find
    # this round's heads from before it was killed); evaluation uses this round's
    until = server_round - 1 if msg.metadata.message_type == MessageType.TRAIN else server_round
    personal: dict[str, torch.Tensor] = {}
    found, weighting_state = restore_client(model, store, cfg.run.seed, client, until, personal)
    method = make_method(cfg.personalization.method, cfg.personalization.params)
    if not found:
        method.first_visit(model, cfg, client)
    model.load_federated_state(msg.content[wire.ARRAYS].to_torch_state_dict())  # global heads win
    return LocalSetup(
        cfg, server_round, client, model, store, fed.client(client), tasks,
        select_device(cfg.client.device), weighting_state, found, method, personal,
    )


def move(model: MultiTaskModel, device: torch.device) -> None:
    """Move ``model`` to ``device`` in place.

    Parameters
    ----------
    model : MultiTaskModel
        The client's model.
    device : torch.device
        Where it goes. Nothing is done for a model on the CPU that stays there
        (``Module.to`` would still visit every module and tensor, for every message).
    """
    if device.type != "cpu" or any(p.device.type != "cpu" for p in model.parameters()):
        model.to(device)


def call_rng(s: LocalSetup, msg: Message) -> contextlib.AbstractContextManager[None]:
    """Torch's global generator seeded for this call (run seed, round, attempt, client, train or
    evaluate; :func:`fedmtl.seeds.seeded_global_rng`): a plugin's dropout or ``torch.rand``
    draws the same numbers whichever worker runs the call, in every run with the seed. A model
    with dropout holds the generator to itself for the call (ClientApps in threads share it)."""
    kind = 0 if msg.metadata.message_type == MessageType.TRAIN else 1
    return seeded_global_rng(Stream.CLIENT_CALL, s.cfg.run.seed, s.server_round, read_call(msg).attempt, s.client,
                             kind, exclusive=draws_at_random(s.model))


def client_run(s: LocalSetup) -> ClientRun:
    """What the personalization method works with in this call (:class:`fedmtl.training.methods.ClientRun`)."""
    return ClientRun(s.cfg, s.client, s.server_round, s.model, s.data, s.tasks, s.device, s.personal,
                     functools.partial(local_weighting, s))


def kept(s: LocalSetup, personal: dict[str, torch.Tensor]) -> float:
    """The fingerprint of what the client keeps between rounds: its personal heads (not global
    ones, which the server sends) and its method's state ``personal`` (:func:`kept_fingerprint`)."""
    return kept_fingerprint(s.model, personal, s.cfg.model.heads != "global")


def heads_refusal(call: wire.Call, s: LocalSetup, fingerprint: float | None = None) -> str:
    """Why the client must not train or evaluate from the heads it restored (``""``: it may).

    The server names the heads the client's last training left (:attr:`fedmtl.protocol.Call.heads_in`)
    or says that it has not trained in this run (``fresh_heads``); heads deleted or replaced
    since would otherwise be re-initialised, or used, without anyone noticing. ``fingerprint``
    is the restored heads' and state's :func:`kept_fingerprint` when the caller has it (computed
    here otherwise)."""
    where = f"'{s.store.root}'" if isinstance(s.store, DiskHeadStore) else "its node's context"
    if call.fresh_heads and s.found_heads:
        return f"client {s.client} has not trained in this run, yet {where} holds heads of it"
    if call.heads_in is None:
        return ""
    if not s.found_heads:
        return (f"client {s.client}'s heads are missing from {where} (its last training left heads-fingerprint "
                f"{call.heads_in!r}); they were deleted since")
    found = kept(s, s.personal) if fingerprint is None else fingerprint
    if found != call.heads_in:
        return (f"client {s.client}'s heads in {where} have heads-fingerprint {found!r}, not the "
                f"{call.heads_in!r} its last training left; they were replaced since")
    return ""


def refusal(msg: Message, reason: str) -> Message:
    """The reply of a client that refuses the call (:data:`fedmtl.protocol.REFUSAL`); the server
    counts it as a rejected reply and logs ``reason``."""
    return Message(RecordDict({wire.REFUSAL: ConfigRecord({wire.REFUSAL_REASON: reason})}), reply_to=msg)


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
            wire.PARTITION_ID: partition_id(context),
            wire.NUM_PARTITIONS: int(context.node_config.get(wire.NUM_PARTITIONS, -1)),
        }
    )
    return Message(RecordDict({wire.INFO: info}), reply_to=msg)


def local_weighting(s: LocalSetup) -> Weighting:
    """The client's cross-task weighting, with the state it saved last round."""
    weighting = make_weighting(s.cfg.client.weighting, **s.cfg.client.params)
    if s.weighting_state is not None:
        weighting.load_state_dict(unpack_state(s.weighting_state))
    return weighting


def injected_fault(msg: Message, context: Context) -> Fault:
    """This client's fault in this training attempt (``[faults]``; none by default)."""
    cfg, server_round = read_config(msg)
    attempt = read_call(msg).attempt
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
    call = read_call(msg)
    try:
        s = local_setup(msg, context)
    except HeadStoreError as exc:
        return head_store_failure(msg, context, exc)
    model, client, cfg = s.model, s.client, s.cfg
    fingerprint_in = kept(s, s.personal)
    refused = heads_refusal(call, s, fingerprint_in)
    if refused:  # it neither trains nor saves: its store keeps what was found
        return refusal(msg, refused)
    weighting = local_weighting(s)
    global_heads = cfg.model.heads == "global"
    global_state = {k: v.clone() for k, v in model.federated_state(global_heads).items()}
    move(model, s.device)
    metrics: dict[str, float | int] = {}
    if call.needs_losses_before:
        before = measure_losses(model, s.data.train, s.tasks, batch_size=cfg.client.batch_size, device=s.device)
        metrics.update({wire.metric_key(wire.TRAIN, task, wire.LOSS_BEFORE): loss for task, loss in before.items()})
    track_parts = call.task_parts
    run = client_run(s)
    with call_rng(s, msg):
        result = train_checked(s.method, run, weighting, track_parts=track_parts)
    move(model, torch.device("cpu"))
    save_client_state(s.store, client, model, weighting.state_dict(), s.server_round, cfg.run.checkpoint_every,
                      run.personal)
    metrics.update({
        wire.PARTITION_ID: client,
        wire.NUM_EXAMPLES: result.num_examples,
        wire.HEADS_IN: fingerprint_in,
        wire.HEADS_OUT: kept(s, run.personal),
    })
    for task, loss in result.task_losses.items():
        metrics[wire.metric_key(wire.TRAIN, task, wire.LOSS)] = loss
        metrics[wire.metric_key(wire.TRAIN, task, wire.WEIGHT)] = result.task_weights[task]
    records: dict[str, ArrayRecord | MetricRecord | ConfigRecord] = {
        wire.METRICS: MetricRecord(metrics), wire.PLACEMENT: placement(s.device)}
    if track_parts:
        records[wire.PARTS] = ArrayRecord(flat_parts(result.parts, model, global_state, [t.name for t in s.tasks]))
    else:
        records[wire.UPDATE] = ArrayRecord(
            {k: v - global_state[k] for k, v in model.federated_state(global_heads).items()})
    if fault.delay:
        time.sleep(fault.delay)  # a straggler: its heads are saved, its reply is late
    return Message(RecordDict(with_corruption(records, fault.corruption)), reply_to=msg)


@app.evaluate()
def evaluate_personalized(msg: Message, context: Context) -> Message:
    """Evaluate the method's views (global backbone + own heads for FedPer) on the local test split."""
    try:
        s = local_setup(msg, context)
    except HeadStoreError as exc:
        return head_store_failure(msg, context, exc)
    refused = heads_refusal(read_call(msg), s)
    if refused:
        return refusal(msg, refused)
    test = s.data.test
    move(s.model, s.device)
    metrics: dict[str, float | int] = {wire.PARTITION_ID: s.client, wire.NUM_EXAMPLES: len(test)}
    with call_rng(s, msg):
        views = s.method.evaluate(client_run(s))
    if set(views) != set(s.method.views):  # the server accepts the views the method declares, no others
        raise RuntimeError(f"personalization.method = '{s.cfg.personalization.method}' evaluated the views "
                           f"{sorted(views)}, not those it declares: {list(s.method.views)}")
    for stage, results in views.items():
        metrics.update(wire.task_metrics(stage, results))
    return Message(RecordDict({wire.METRICS: MetricRecord(metrics), wire.PLACEMENT: placement(s.device)}),
                   reply_to=msg)
