"""APFL (``personalization.method = "apfl"``) pinned to its definition (Deng, Kamani & Mahdavi
2020): the mixture v̄ = α v + (1 − α) w, v's gradient α ∇f(v̄), α's update
α ← clip(α − η ⟨v − w, ∇f(v̄)⟩, 0, 1) — in the core on a tiny model, and through the real
ClientApp called with Flower Messages. The simulation uses the in-process engine
(``engine.backend = "inprocess"``: Flower's Simulation Engine without Ray's start-up): the
method, not the engine, is the subject."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import MessageType

from fedmtl import protocol as wire
from fedmtl.aggregation import make_weighting
from fedmtl.config import ConfigError, ModelSection
from fedmtl.data import ClientData, Split, dataset_input_shape, dataset_tasks
from fedmtl.models import build_model
from fedmtl.personalization.head_store import PERSONAL_PREFIX
from fedmtl.seeds import Stream, seeded_torch_init
from fedmtl.tasks import TaskSpec
from fedmtl.training import evaluate
from fedmtl.training.methods import ClientRun, make_method
from fedmtl.training.methods.apfl import ALPHA_KEY, mixed_model, mixture
from fedmtl.training.methods.base import MODEL_PREFIX
from fedmtl.validation import config_from_flat, load_config

BASE = ["data.num-clients=3", "data.params.pairs-per-digit=1", "data.params.test-pairs-per-digit=1",
        "client.batch-size=64"]
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def task_identity():
    """The process's task identity, as the SuperNode runtime sets it before calling the app."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 100
    yield


# -- the config -----------------------------------------------------------------------------
def test_apfl_federates_the_heads_by_default_and_lists_its_options():
    cfg = load_config(None, ["personalization.method=apfl"])
    assert cfg.model.heads == "global"
    assert cfg.personalization.params == {"alpha": 0.5, "adaptive-alpha": False, "alpha-lr": 0.0}
    assert config_from_flat(cfg.to_flat()) == cfg
    cfg = load_config(None, ["personalization.method=apfl", "model.heads=personal",
                             "personalization.params.adaptive-alpha=true", "personalization.params.alpha-lr=0.01"])
    assert (cfg.model.heads, cfg.personalization.params["adaptive-alpha"]) == ("personal", True)
    assert config_from_flat(cfg.to_flat()) == cfg


@pytest.mark.parametrize(("overrides", "named"), [
    (["personalization.params.alpha=1.5"], ["personalization.params", "alpha = 1.5"]),
    (["personalization.params.alpha=-0.1"], ["personalization.params", "alpha = -0.1"]),
    (["personalization.params.alpha-lr=0.1"],
     ["personalization.params.alpha-lr", "personalization.params.adaptive-alpha"]),
    (["personalization.params.alfa=0.1"], ["method 'apfl' has no option 'alfa'", "alpha, adaptive-alpha, alpha-lr"]),
    (["data.task-sets=one"], ["model.heads", "data.task-sets"]),
    (["run.mode=centralized"], ["run.mode", "personalization.method"]),
])
def test_bad_options_and_combinations_are_named(overrides, named):
    with pytest.raises(ConfigError) as info:
        load_config(None, ["personalization.method=apfl", *overrides])
    assert all(key in str(info.value) for key in named), str(info.value)


# -- in the core, on a tiny model ------------------------------------------------------------------
TASKS = [TaskSpec("a", "multiclass", 4), TaskSpec("b", "binary")]


def _split(n, seed, tasks):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return Split(x, {t.name: torch.randint(0, t.num_classes if t.kind == "multiclass" else 2, (n,), generator=g)
                     for t in tasks})


def _run(*overrides, tasks=TASKS, n=48, batch_size=16):
    """A client whose stored v is its global model w plus noise (so that v − w ≠ 0)."""
    cfg = load_config(None, ["personalization.method=apfl", f"client.batch-size={batch_size}", *overrides])
    torch.manual_seed(0)
    model = build_model(ModelSection(backbone="mlp", width=8, head_hidden=5), (6,), tasks)
    g = torch.Generator().manual_seed(7)
    personal = {MODEL_PREFIX + k: v + 0.3 * torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}
    data = ClientData(0, _split(n, 0, tasks), _split(32, 1, tasks))
    return ClientRun(cfg, 0, 1, model, data, tasks, CPU, personal,
                     lambda: make_weighting(cfg.client.weighting, **cfg.client.params))


def _v(run):
    v = copy.deepcopy(run.model)
    v.load_state_dict({k[len(MODEL_PREFIX):]: t for k, t in run.personal.items() if k.startswith(MODEL_PREFIX)})
    return v


def _method(run):
    return make_method("apfl", run.cfg.personalization.params)


def _equal_states(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.7, 1.0])
def test_the_personal_view_is_exactly_alpha_v_plus_one_minus_alpha_w(alpha):
    run = _run(f"personalization.params.alpha={alpha}")
    v, w = _v(run), run.model
    by_hand = {k: alpha * v.state_dict()[k] + (1 - alpha) * w.state_dict()[k] for k in w.state_dict()}
    assert _equal_states(mixture(v, w, alpha), by_hand)
    assert _equal_states(mixed_model(v, w, alpha).state_dict(), by_hand)
    views = _method(run).evaluate(run)
    assert views[wire.TEST] == evaluate(mixed_model(v, w, alpha), run.data.test, run.tasks)
    assert views[wire.TEST_GLOBAL] == evaluate(w, run.data.test, run.tasks)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_the_global_model_trains_as_without_personalization_bit_for_bit(alpha):
    run = _run(f"personalization.params.alpha={alpha}", "personalization.params.adaptive-alpha=true")
    plain = copy.deepcopy(run.model)
    expected = run.train(plain, run.new_weighting(), track_parts=True)
    result = _method(run).train(run, run.new_weighting(), track_parts=True)
    assert _equal_states(run.model.state_dict(), plain.state_dict())
    assert result.task_losses == expected.task_losses and torch.equal(result.parts, expected.parts)


def test_alpha_zero_gives_the_global_model_s_predictions_and_leaves_v():
    run = _run("personalization.params.alpha=0", "client.epochs=2")
    start = _v(run).state_dict()
    method = _method(run)
    method.train(run, run.new_weighting())
    assert _equal_states(_v(run).state_dict(), start)  # its gradient α ∇f(v̄) is zero
    assert float(run.personal[ALPHA_KEY]) == 0.0
    views = method.evaluate(run)
    assert views[wire.TEST] == views[wire.TEST_GLOBAL]
    personalized = mixed_model(_v(run), run.model, 0.0)
    with torch.no_grad():
        mine, theirs = personalized(run.data.test.x), run.model(run.data.test.x)
    assert all(torch.equal(mine[t], theirs[t]) for t in theirs)


def test_alpha_one_trains_v_as_plain_local_training():
    run = _run("personalization.params.alpha=1", "client.epochs=2", "client.momentum=0.9")
    expected = _v(run)
    run.train(expected, run.new_weighting())  # plain local training of v, the same batches
    method = _method(run)
    method.train(run, run.new_weighting())
    assert _equal_states(_v(run).state_dict(), expected.state_dict())
    assert method.evaluate(run)[wire.TEST] == evaluate(expected, run.data.test, run.tasks)  # v̄ = v


class _BatchNormBackbone(torch.nn.Module):
    """A plugin backbone with buffers (BatchNorm's running statistics)."""

    input_rank = None

    def __init__(self, input_shape, out_dim=8):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, out_dim), torch.nn.BatchNorm1d(out_dim),
                                       torch.nn.ReLU())
        self.out_dim = out_dim

    def forward(self, x):
        return self.net(x)


def test_alpha_one_gives_v_the_batchnorm_statistics_of_plain_local_training(monkeypatch):
    """v̄'s forward passes updated the running statistics of a throw-away copy only: v kept its
    first ones forever, and α = 1 (v̄ = v) evaluated with them, unlike plain local training
    (found by an audit, with a plugin backbone)."""
    from fedmtl.models import BACKBONES

    monkeypatch.setitem(BACKBONES._entries, "test-batchnorm", _BatchNormBackbone)
    run = _run("personalization.params.alpha=1", "client.epochs=2")
    torch.manual_seed(0)
    run.model = build_model(ModelSection(backbone="test-batchnorm", width=8, head_hidden=5), (6,), TASKS)
    run.personal = {MODEL_PREFIX + k: t.clone() for k, t in run.model.state_dict().items()}
    expected = _v(run)
    run.train(expected, run.new_weighting())  # plain local training of v, the same batches
    method = _method(run)
    method.train(run, run.new_weighting())
    trained = _v(run).state_dict()
    assert int(trained["backbone.net.2.num_batches_tracked"]) == 2 * 3  # 2 epochs of 48 / 16
    assert _equal_states(trained, expected.state_dict())
    assert method.evaluate(run)[wire.TEST] == evaluate(expected, run.data.test, run.tasks)


def _loss(model, split, task):
    return task.task_kind.loss(model.heads[task.name](model.backbone(split.x)), split.targets[task.name])


def test_one_step_is_the_paper_s_update_of_v_and_alpha():
    """One task, one full batch, no momentum: v' = v − η α g and α' = α − η_α ⟨v − w, g⟩ with
    g = ∇f(v̄); ⟨v − w, g⟩ is the derivative of f(v̄) in α, so α moves downhill."""
    tasks = [TaskSpec("a", "multiclass", 4)]
    alpha, lr, alpha_lr = 0.4, 0.1, 0.05
    run = _run(f"personalization.params.alpha={alpha}", "personalization.params.adaptive-alpha=true",
               f"personalization.params.alpha-lr={alpha_lr}", "client.epochs=1", "client.momentum=0",
               f"client.lr={lr}", tasks=tasks, n=40, batch_size=64)
    v, w, train = _v(run), copy.deepcopy(run.model), run.data.train
    mixed = mixed_model(v, w, alpha)
    g = torch.autograd.grad(_loss(mixed, train, tasks[0]), list(mixed.parameters()))
    slope = sum(float(((pv - pw) * gi).sum()) for pv, pw, gi in zip(v.parameters(), w.parameters(), g, strict=True))
    with torch.no_grad():  # the slope is d f(α v + (1 − α) w) / dα
        h = 1e-3
        up, down = (float(_loss(mixed_model(v, w, alpha + s), train, tasks[0])) for s in (h, -h))
    assert slope == pytest.approx((up - down) / (2 * h), rel=1e-2)

    _method(run).train(run, run.new_weighting())
    trained = dict(_v(run).named_parameters())
    for (name, p), gi in zip(v.named_parameters(), g, strict=True):
        torch.testing.assert_close(trained[name].detach(), p.detach() - lr * alpha * gi, rtol=1e-5, atol=1e-6)
    new_alpha = float(run.personal[ALPHA_KEY])
    assert new_alpha == pytest.approx(alpha - alpha_lr * slope, rel=1e-5)
    assert (new_alpha < alpha) == (slope > 0)
    with torch.no_grad():  # a small step on α lowers the mixture's loss (v and w as before)
        assert float(_loss(mixed_model(v, w, new_alpha), train, tasks[0])) < float(_loss(mixed, train, tasks[0]))


def test_alpha_is_clipped_to_the_unit_interval_and_kept_by_the_client():
    ends = set()
    for start in (0.05, 0.95):
        run = _run(f"personalization.params.alpha={start}", "personalization.params.adaptive-alpha=true",
                   "personalization.params.alpha-lr=1000")
        method = _method(run)
        method.train(run, run.new_weighting())
        alpha = float(run.personal[ALPHA_KEY])
        assert alpha in (0.0, 1.0)
        ends.add(alpha)
        assert method.alpha(run) == alpha  # the next call starts from the learnt α
    fixed = _run("personalization.params.alpha=0.3")
    method = _method(fixed)
    method.train(fixed, fixed.new_weighting())
    assert float(fixed.personal[ALPHA_KEY]) == 0.3 and method.alpha(fixed) == 0.3


def test_v_steps_from_w_as_it_is_before_w_s_own_step_on_the_same_batch():
    """Two full-batch steps: v₁ = v₀ − η α ∇f(α v₀ + (1 − α) w₀), v₂ = v₁ − η α ∇f(α v₁ + (1 − α) w₁)
    (the paper's Algorithm 1), not with w₁, w₂ (w after its step, as the paper's code orders them)."""
    tasks = [TaskSpec("a", "multiclass", 4)]
    alpha, lr = 0.5, 0.2
    run = _run(f"personalization.params.alpha={alpha}", "client.epochs=2", "client.momentum=0", f"client.lr={lr}",
               tasks=tasks, n=40, batch_size=64)
    v0, w0 = _v(run), copy.deepcopy(run.model)
    w1 = copy.deepcopy(w0)
    run.train(w1, run.new_weighting(), epochs=1)
    w2 = copy.deepcopy(run.model)
    run.train(w2, run.new_weighting())

    def step(v, w):
        mixed = mixed_model(v, w, alpha)
        g = torch.autograd.grad(_loss(mixed, run.data.train, tasks[0]), list(mixed.parameters()))
        out = copy.deepcopy(v)
        with torch.no_grad():
            for p, gi in zip(out.parameters(), g, strict=True):
                p -= lr * alpha * gi
        return out

    paper = step(step(v0, w0), w1)
    after = step(step(v0, w1), w2)
    _method(run).train(run, run.new_weighting())
    trained = _v(run).state_dict()
    for k, value in paper.state_dict().items():
        torch.testing.assert_close(trained[k], value, rtol=1e-5, atol=1e-6)
    assert max(float((trained[k] - value).abs().max()) for k, value in after.state_dict().items()) > 1e-4


# -- through the ClientApp ---------------------------------------------------------------------
def _cfg(tmp_path, *overrides, store="disk"):
    return load_config(None, [*BASE, f"client.head-store={store}", f"client.head-store-dir={tmp_path / 'heads'}",
                              "personalization.method=apfl", *overrides])


def _server_model(cfg):
    with seeded_torch_init(Stream.MODEL_INIT, cfg.run.seed):
        return build_model(cfg.model, dataset_input_shape(cfg.data), dataset_tasks(cfg.data))


def _context(client_id, num=3):
    return Context(run_id=1, node_id=100 + client_id, node_config={"partition-id": client_id, "num-partitions": num},
                   state=RecordDict(), run_config={})


def _send(cfg, model, kind, server_round, context):
    from fedmtl.clients.app import app

    content = RecordDict({
        "arrays": ArrayRecord(model.federated_state(cfg.model.heads == "global")),
        "config": ConfigRecord({**cfg.to_flat(), "server-round": server_round}),
        "call": ConfigRecord(wire.TrainCall(server_round).values()),
    })
    reply = app(Message(content=content, dst_node_id=context.node_id, message_type=kind), context)
    assert not reply.has_error(), reply.error
    return reply


def _stored(cfg, context, client):
    from fedmtl.clients.app import head_store

    return head_store(cfg, context).load(client)


@pytest.mark.parametrize(("heads", "store"), [("global", "disk"), ("personal", "context")])
def test_apfl_keeps_v_and_alpha_in_the_store_replies_w_s_update_and_reports_both_views(tmp_path, heads, store):
    overrides = [f"model.heads={heads}", "personalization.params.alpha=0.25",
                 "personalization.params.adaptive-alpha=true"]
    cfg = _cfg(tmp_path / "apfl", *overrides, store=store)
    model = _server_model(cfg)
    context = _context(2)
    reply = _send(cfg, model, MessageType.TRAIN, 1, context)
    assert set(reply.content.array_records) == {"update"}  # v and α never leave the client
    today = load_config(None, [*BASE, f"client.head-store={store}", f"client.head-store-dir={tmp_path / 'today'}",
                               f"personalization.method={'none' if heads == 'global' else 'fedper'}"])
    plain = _send(today, model, MessageType.TRAIN, 1, _context(2)).content["update"].to_torch_state_dict()
    assert _equal_states(reply.content["update"].to_torch_state_dict(), plain)  # w trains as without APFL
    stored = _stored(cfg, context, 2)
    personal = {k[len(PERSONAL_PREFIX + MODEL_PREFIX):]: v for k, v in stored.items()
                if k.startswith(PERSONAL_PREFIX + MODEL_PREFIX)}
    assert personal.keys() == model.state_dict().keys()  # backbone and heads: the client holds every task
    alpha = float(stored[PERSONAL_PREFIX + ALPHA_KEY])
    assert 0.0 <= alpha <= 1.0 and alpha != 0.25  # learnt
    metrics = _send(cfg, model, MessageType.EVALUATE, 1, context).content["metrics"]
    assert {"test.left.accuracy", "test-global.left.accuracy"} <= set(metrics.keys())
    assert metrics["test.left.loss"] != metrics["test-global.left.loss"]


def test_alpha_zero_through_the_app_reports_the_global_model_twice(tmp_path):
    cfg = _cfg(tmp_path, "personalization.params.alpha=0")
    model = _server_model(cfg)
    context = _context(0)
    _send(cfg, model, MessageType.TRAIN, 1, context)
    metrics = dict(_send(cfg, model, MessageType.EVALUATE, 1, context).content["metrics"])
    tests = {k.removeprefix("test."): v for k, v in metrics.items() if k.startswith("test.")}
    globals_ = {k.removeprefix("test-global."): v for k, v in metrics.items() if k.startswith("test-global.")}
    assert tests and tests == globals_


# -- a real simulation -------------------------------------------------------------------------
@pytest.mark.slow
def test_apfl_runs_in_the_simulation_and_reports_both_views(tmp_path):
    from pathlib import Path

    from tests.simulation_batch import run_batch

    root = Path(__file__).resolve().parents[1]
    out = str(tmp_path / "apfl")
    jobs = [{"config": str(root / "configs/smoke.toml"), "out": out,
             "overrides": ["personalization.method=apfl", "personalization.params.adaptive-alpha=true",
                           "engine.backend=inprocess"]}]
    assert run_batch(jobs, tmp_path) == {out: ""}
    metrics = pd.read_csv(tmp_path / "apfl" / "metrics.csv")
    assert {"test", "test-global"} <= set(metrics["split"])
