"""Personalization methods compose with what exists (#19).

Every method runs one federated round in process — the real ClientApp behind the real round
loop (:class:`~fedmtl.server.strategy.FedMTLStrategy` on a grid that hands each message to the
app) — with a two-level server plan, cross-task weightings on the client, clients that hold
some tasks only and both head stores; combinations without a meaning fail in validation
naming both keys. The server accepts a global view from the methods that have one only. One
short real simulation runs Ditto with injected faults.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common import MessageType

from fedmtl import protocol as wire
from fedmtl.aggregation.plans import needs_task_parts
from fedmtl.config import ConfigError, ExperimentConfig
from fedmtl.data import dataset_input_shape, dataset_tasks, load_federation
from fedmtl.models import build_model
from fedmtl.personalization.head_store import PERSONAL_PREFIX
from fedmtl.progress import Progress
from fedmtl.results import RunRecorder
from fedmtl.screening import ClientLimits
from fedmtl.seeds import Stream, seeded_torch_init
from fedmtl.server.discovery import ClientDirectory
from fedmtl.server.replies import Evaluated, Rejected, read_evaluate_reply
from fedmtl.server.strategy import FedMTLStrategy
from fedmtl.training.methods import METHODS
from fedmtl.validation import load_config
from tests.test_round_loop import FakeGrid

ROOT = Path(__file__).resolve().parents[1]
METHOD_NAMES = ("fedper", "none", "fedprox", "fedrep", "fedbabu", "finetune", "ditto", "apfl", "local")
TWO_VIEWS = {"ditto", "apfl", "finetune", "fedbabu"}
"""The methods with a global and a personal model: they report ``test-global`` too."""
KEEPS_STATE = {"ditto": "model.", "apfl": "model.", "local": "backbone."}
"""Methods with personal state beyond the heads, and the prefix of its keys in the store."""
SMALL = ["data.dataset=synthetic", "model.backbone=mlp", "model.width=16", "model.head-hidden=8",
         "data.params.num-tasks=3", "data.num-clients=3", "data.tasks-per-client=1",
         "data.full-task-fraction=0.3", "run.rounds=1", "server.fraction-train=1", "server.fraction-evaluate=1",
         "server.min-replies=3", "client.batch-size=64",
         # short local phases: every method trains and fine-tunes, and the file stays fast
         "personalization.params.finetune-epochs=1", "personalization.params.head-epochs=1"]
"""Three Synthetic clients; with ``data.task-sets = "mixed"`` client 0 holds the three tasks and
clients 1 and 2 task0 only; with ``"one"`` each holds one task."""
CASES = {
    "two-level/fairgrad/mixed/disk": ("clients-then-tasks", "fairgrad", "mixed", "disk"),
    "clients/mgda/one/context": ("clients", "mgda", "one", "context"),
    "two-level/upgrad/all/context": ("clients-then-tasks", "upgrad", "all", "context"),
    "clients/graddrop/all/disk": ("clients", "graddrop", "all", "disk"),  # an aggregator on the client
}
"""``(server.plan, client.weighting, data.task-sets, client.head-store)``: together every value of
each setting meets every method."""


@pytest.fixture(autouse=True)
def task_identity():
    """The process's task identity, as the Flower runtime sets it before calling an app."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 100
    yield


@pytest.fixture(autouse=True)
def torch_threads():
    """The ClientApp sets torch's threads (``engine.client-num-cpus``); give them back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def method_options(method: str) -> list[str]:
    """Only the options ``method`` has (from :data:`SMALL`'s short local phases)."""
    params = METHODS.get(method).Params.model_fields
    names = {f.alias or n for n, f in params.items()}
    return [s for s in SMALL if not s.startswith("personalization.params.") or s.split("=")[0].split(".")[-1] in names]


def overrides(method: str, plan: str, weighting: str, task_sets: str, store: str) -> list[str]:
    """The case's settings; a method that allows personal heads gets them where global ones have
    no meaning (a two-level plan, clients without every task)."""
    sets = [*method_options(method), f"personalization.method={method}", f"server.plan={plan}",
            f"client.weighting={weighting}", f"data.task-sets={task_sets}", f"client.head-store={store}"]
    if (plan != "clients" or task_sets != "all") and "personal" in METHODS.get(method).heads:
        sets.append("model.heads=personal")
    return sets


def meaningless(method: str, plan: str, task_sets: str) -> tuple[str, str] | None:
    """The two keys a combination without a meaning must name (``None``: it has one)."""
    if method == "none" and task_sets != "all":
        return "model.heads", "data.task-sets"
    if method == "none" and plan != "clients":
        return "model.heads", "server.plan"
    if method == "local" and plan != "clients":
        return "personalization.method", "server.plan"
    return None


# -- the in-process federation -------------------------------------------------------------
def federate(folder: Path, cfg: ExperimentConfig, script=None) -> tuple[FedMTLStrategy, dict, list[tuple]]:
    """Run ``cfg`` with the real ClientApp answering every message in this process (one
    :class:`Context` per client, kept across calls: the ``context`` head store lives there; the
    disk store in ``folder / "heads"``); ``script(msg, call, reply)`` may change a reply. Returns
    the strategy (its ``cfg`` is the run's), the contexts and ``(message type, reply)`` of every reply."""
    from fedmtl.clients.app import app

    n = cfg.data.num_clients
    cfg = cfg.with_values(client={"head_store_dir": str(folder / "heads")})
    contexts = {c: Context(run_id=1, node_id=100 + c, node_config={"partition-id": c, "num-partitions": n},
                           state=RecordDict(), run_config={}) for c in range(n)}
    replies: list[tuple[str, Message]] = []

    def answer(msg: Message, call: wire.TrainCall) -> Message:
        reply = app(msg, contexts[call.client])
        reply = script(msg, call, reply) if script else reply
        replies.append((msg.metadata.message_type, reply))
        return reply

    directory = ClientDirectory(n)
    directory.infos = {100 + c: (c, n) for c in range(n)}
    directory.clients = {c: 100 + c for c in range(n)}
    strategy = FedMTLStrategy(cfg, directory, RunRecorder(folder, cfg, dataset_tasks(cfg.data)),
                              Progress(cfg.run.rounds, enabled=False))
    with seeded_torch_init(Stream.MODEL_INIT, cfg.run.seed):
        model = build_model(cfg.model, dataset_input_shape(cfg.data), dataset_tasks(cfg.data))
    strategy.start(FakeGrid(n, answer), ArrayRecord(model.federated_state(cfg.model.heads == "global")))
    return strategy, contexts, replies


@pytest.mark.parametrize("method", METHOD_NAMES)
@pytest.mark.parametrize("case", list(CASES))
def test_every_method_composes_with_plans_weightings_task_sets_and_head_stores(tmp_path, method, case):
    plan, weighting, task_sets, store = CASES[case]
    sets = overrides(method, plan, weighting, task_sets, store)
    keys = meaningless(method, plan, task_sets)
    if keys is not None:
        with pytest.raises(ConfigError) as info:
            load_config(None, sets)
        assert all(key in str(info.value) for key in keys), str(info.value)
        return
    cfg = load_config(None, sets)
    assert (cfg.server.plan, cfg.client.weighting, cfg.data.task_sets) == (plan, weighting, task_sets)
    strategy, contexts, replies = federate(tmp_path, cfg)
    cfg = strategy.cfg
    with seeded_torch_init(Stream.MODEL_INIT, cfg.run.seed):
        initial = build_model(cfg.model, dataset_input_shape(cfg.data), dataset_tasks(cfg.data))
    fed = load_federation(cfg.data, cfg.run.seed)
    holds = {c: sorted(t.name for t in fed.client_tasks(c)) for c in range(3)}
    if task_sets != "all":
        assert any(len(tasks) < 3 for tasks in holds.values())

    # every reply was accepted and aggregated; only the federated update left the clients
    rounds = pd.read_csv(tmp_path / "rounds.csv").iloc[0]
    assert (rounds.failures, rounds.rejected, rounds.aggregated, rounds.skipped) == (0, 0, 3, 0)
    assert (rounds.evaluate_failures, rounds.evaluated) == (0, 3)
    sent = {wire.PARTS} if needs_task_parts(plan) else {wire.UPDATE}
    assert [set(r.content.array_records) for kind, r in replies if kind == MessageType.TRAIN] == [sent] * 3
    assert not [r.content.array_records for kind, r in replies if kind == MessageType.EVALUATE if
                r.content.array_records]
    moved = any(not torch.equal(v, initial.federated_state(cfg.model.heads == "global")[k])
                for k, v in strategy.state.items())
    assert moved == (method != "local")  # a local client sends zeros: the global model stays

    # each client's metrics, of its own tasks, in the method's views
    metrics = pd.read_csv(tmp_path / "metrics.csv", dtype={"task": str})
    views = {wire.TEST, wire.TEST_GLOBAL} if method in TWO_VIEWS else {wire.TEST}
    assert set(metrics.split) == {"train", *views}
    for split in ("train", *views):
        rows = metrics[(metrics.split == split) & metrics.task.str.startswith("task")]
        assert {c: sorted(set(g.task)) for c, g in rows.groupby("client")} == holds, split
    test = metrics[(metrics.split == wire.TEST) & (metrics.metric == "accuracy")]
    assert test.value.between(0, 1).all() and len(test) == sum(len(t) for t in holds.values())

    # personal state lives in the client's store, with its heads
    if method in KEEPS_STATE:
        from fedmtl.clients.app import head_store

        for c, context in contexts.items():
            stored = head_store(cfg, context).load(c)
            assert any(k.startswith(PERSONAL_PREFIX + KEEPS_STATE[method]) for k in stored), (c, list(stored)[:5])


@pytest.mark.parametrize(("sets", "named"), [
    (["personalization.method=ditto", "server.plan=clients-then-tasks"], ["model.heads", "server.plan"]),
    (["personalization.method=fedprox", "data.task-sets=mixed"], ["model.heads", "data.task-sets"]),
    (["personalization.method=finetune", "server.plan=tasks-then-clients"], ["model.heads", "server.plan"]),
    (["model.heads=global", "server.plan=clients-then-tasks"], ["model.heads", "server.plan"]),
    (["personalization.method=local", "server.plan=clients-then-tasks"], ["personalization.method", "server.plan"]),
    (["personalization.method=local", "server.weighting=fairgrad"], ["personalization.method", "server.weighting"]),
    (["personalization.method=ditto", "client.head-store=context", "engine.supernodes=1"],
     ["client.head-store", "engine.supernodes"]),
    (["personalization.method=local", "run.mode=centralized"], ["run.mode", "personalization.method"]),
    (["personalization.method=fedbabu", "client.weighting=graddrop", "client.gradients=representation"],
     ["client.weighting", "client.gradients"]),
])
def test_more_combinations_that_make_no_sense_fail_naming_both_keys(sets, named):
    with pytest.raises(ConfigError) as info:
        load_config(None, sets)
    assert all(key in str(info.value) for key in named), str(info.value)


@pytest.mark.parametrize("sets", [*({"personalization.method": m} for m in METHOD_NAMES), {"model.heads": "global"},
                                  {"model.heads": "personal"}, {}])
def test_flowers_flat_run_config_resolves_heads_and_method_as_a_config_file_does(sets):
    """``flwr run --run-config`` hands the ServerApp pyproject's defaults with the run's keys on
    top: a run that sets the method only, or ``model.heads`` only, is the run a config file makes."""
    import tomllib

    from flwr.common.config import flatten_dict

    from fedmtl.server.app import submission
    from fedmtl.validation import config_from_flat

    defaults = flatten_dict(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"])
    experiment, resume, _ = submission({**defaults, **sets})  # as the ServerApp reads it
    assert resume is None
    flat = config_from_flat(experiment)
    nested = load_config(None, [f"{k}={v}" for k, v in sets.items()])
    assert (flat.personalization.method, flat.model.heads) == (nested.personalization.method, nested.model.heads)
    assert config_from_flat(flat.to_flat()) == flat  # what the server sends the clients reads back the same


# -- the global view, as the server reads it ---------------------------------------------
def test_the_registry_says_which_methods_have_a_global_view():
    for name in METHOD_NAMES:
        assert (wire.TEST_GLOBAL in METHODS.get(name).views) == (name in TWO_VIEWS), name


def _evaluation(client: int, global_view: bool) -> Message:
    call = RecordDict({wire.CALL: ConfigRecord(wire.Call(1, client=client).values())})
    msg = Message(call, dst_node_id=100 + client, message_type=MessageType.EVALUATE)
    msg.metadata.__dict__["_message_id"] = f"message-{client}"
    values = {wire.PARTITION_ID: client, wire.NUM_EXAMPLES: 20, "test.left.accuracy": 0.5}
    if global_view:
        values["test-global.left.accuracy"] = 0.25
    return Message(RecordDict({wire.METRICS: MetricRecord(values)}), reply_to=msg)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_the_server_accepts_a_global_view_from_a_method_that_has_one_only(method):
    limits = lambda c: ClientLimits(frozenset({"left"}), 0, 20)  # noqa: E731
    views = METHODS.get(method).views
    outcome = read_evaluate_reply(_evaluation(1, True), 1, limits, views=views)
    if method in TWO_VIEWS:
        assert outcome == Evaluated(1, {"left": {"accuracy": 0.5}}, 20, {"left": {"accuracy": 0.25}})
    else:
        assert isinstance(outcome, Rejected) and "test-global.left.accuracy" in outcome.problem
        assert "personalization method" in outcome.problem
    without = read_evaluate_reply(_evaluation(1, False), 1, limits, views=views)
    if method in TWO_VIEWS:  # an honest client reports every view its method has: one left out hides it
        assert isinstance(without, Rejected), without
        assert without.problem == "no 'test-global' metrics, which the run's personalization method reports"
    else:
        assert isinstance(without, Evaluated)


@pytest.mark.parametrize("method", ["fedper", "fedrep"])
def test_a_global_view_from_a_one_model_client_is_rejected_and_counted(tmp_path, method):
    """A client of a one-model run that replies a global view (a stale or lying client) is
    rejected and counted as any bad reply; nothing of it reaches metrics.csv."""
    def lying(msg, call, reply):
        if msg.metadata.message_type == MessageType.EVALUATE and call.client == 1:
            reply.content[wire.METRICS]["test-global.task0.accuracy"] = 0.5
        return reply

    cfg = load_config(None, [*method_options(method), f"personalization.method={method}"])
    federate(tmp_path, cfg, lying)
    rounds = pd.read_csv(tmp_path / "rounds.csv").iloc[0]
    assert (rounds.evaluate_failures, rounds.evaluated) == (1, 2)
    metrics = pd.read_csv(tmp_path / "metrics.csv", dtype={"task": str})
    assert wire.TEST_GLOBAL not in set(metrics.split)
    assert 1 not in set(metrics[metrics.split == wire.TEST].client)


# -- fault injection with Ditto, in a real simulation ------------------------------------
@pytest.mark.slow
def test_ditto_finishes_with_both_views_when_clients_drop_out_and_corrupt_updates(tmp_path):
    from fedmtl.config import FaultsSection
    from fedmtl.faults import draw_fault
    from fedmtl.results import load_run
    from tests.simulation_batch import run_batch

    faults = {"dropout": 0.2, "corrupt": 0.3, "corrupt-kinds": "nan"}
    drawn = FaultsSection(**faults)
    expected = {(r, c): draw_fault(drawn, 0, r, 0, c) for r in (1, 2) for c in range(3)}
    dropped = [k for k, f in expected.items() if f.dropout]
    corrupted = [k for k, f in expected.items() if f.corruption]
    assert dropped == [(1, 0)] and corrupted == [(2, 2)]  # seed 0: one of each, in different rounds
    out = tmp_path / "run"
    sets = ["data.num-clients=3", "run.seed=0", "server.min-replies=1", "personalization.method=ditto",
            "data.dataset=synthetic", "data.params={}", "model.backbone=mlp", "model.width=16",
            "model.heads=personal", "faults.dropout=0.2", "faults.corrupt=0.3", 'faults.corrupt-kinds="nan"']
    outcome = run_batch([{"config": str(ROOT / "configs/smoke.toml"), "overrides": sets, "out": str(out)}], tmp_path)
    assert outcome == {str(out): ""}, outcome
    run = load_run(out)
    rounds = run["rounds"].set_index("round")
    assert rounds.loc[1, "failures"] == 1 and rounds.loc[2, "rejected"] == 1
    assert rounds.aggregated.tolist() == [2, 2] and rounds.skipped.tolist() == [0, 0]
    metrics = run["metrics"]
    for split in (wire.TEST, wire.TEST_GLOBAL):
        evaluated = metrics[(metrics.split == split) & (metrics.metric == "accuracy")]
        assert {(r, c) for r, c in zip(evaluated["round"], evaluated.client, strict=True)} == set(expected), split
    assert "global_task0.accuracy.mean" in run["rounds"].columns
    # the client that dropped out trained in one round; the one whose update alone was rejected
    # (corrupted after it trained and saved its state) trained in both and was aggregated in one
    table = run["participation"].set_index("client")
    assert table.rounds_trained.tolist() == [1, 2, 2] and table.rounds_aggregated.tolist() == [1, 2, 1]


def test_the_advice_for_a_diverging_proximal_step_names_the_way_each_key_must_move():
    """lr × strength < 2 (1 + momentum): lowering client.momentum would make it worse."""
    from fedmtl.config import ConfigError

    sets = ["personalization.method=ditto", "personalization.params={lambda=50}", "client.lr=0.05"]
    with pytest.raises(ConfigError, match=r"lower client.lr or the strength, or raise client.momentum"):
        load_config(ROOT / "configs/smoke.toml", [*sets, "client.momentum=0"])
    load_config(ROOT / "configs/smoke.toml", [*sets, "client.momentum=0.5"])  # raising it is enough here
