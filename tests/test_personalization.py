"""Personalization methods (``[personalization]``): the config, the training hooks, and each
method pinned to its definition — in the core (:class:`ClientRun`) and through the real
ClientApp called with Flower Messages. The simulations use the in-process engine
(``engine.backend = "inprocess"``: Flower's Simulation Engine without Ray's start-up): the
methods, not the engine, are the subject."""

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
from fedmtl.data import Split, dataset_input_shape, dataset_tasks, load_federation
from fedmtl.models import build_model
from fedmtl.personalization.head_store import PERSONAL_PREFIX
from fedmtl.seeds import Stream, seeded_torch_init
from fedmtl.tasks import TaskSpec
from fedmtl.training import evaluate, train_local
from fedmtl.training.local import Proximal
from fedmtl.training.methods import METHODS, ClientRun, initial_heads, initial_state, make_method
from fedmtl.training.methods.base import MODEL_PREFIX, MethodError, initial_model
from fedmtl.training.methods.ditto import LAMBDA_KEY
from fedmtl.validation import config_from_flat, load_config
from tests.plugin_support import restored_registries

BASE = ["data.num-clients=3", "data.params.pairs-per-digit=1", "data.params.test-pairs-per-digit=1",
        "client.batch-size=64"]


@pytest.fixture(autouse=True)
def task_identity():
    """The process's task identity, as the SuperNode runtime sets it before calling the app."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 100
    yield


# -- the config -----------------------------------------------------------------------------
def test_fedper_is_the_default_and_each_key_alone_sets_the_other():
    cfg = load_config(None, [])
    assert (cfg.personalization.method, cfg.model.heads) == ("fedper", "personal")
    cfg = load_config(None, ["model.heads=global"])  # as before the section existed
    assert (cfg.personalization.method, cfg.model.heads) == ("none", "global")
    for method, heads in [("none", "global"), ("fedprox", "global"), ("finetune", "global"), ("ditto", "global"),
                          ("fedrep", "personal"), ("fedbabu", "personal"), ("fedper", "personal"),
                          ("local", "personal")]:
        cfg = load_config(None, [f"personalization.method={method}"])
        assert cfg.model.heads == heads, method
        assert config_from_flat(cfg.to_flat()) == cfg  # the flat (Flower) form reads back the same
    cfg = load_config(None, ["personalization.method=fedprox", "model.heads=personal"])
    assert (cfg.personalization.method, cfg.model.heads) == ("fedprox", "personal")


def test_a_resolved_config_lists_every_option_of_the_method():
    cfg = load_config(None, ["personalization.method=ditto", "personalization.params.lambda=0.5"])
    assert cfg.personalization.params == {"lambda": 0.5, "lambda-grid": []}
    cfg = load_config(None, ["personalization.method=fedrep"])
    assert cfg.personalization.params == {"head-epochs": 5, "body-epochs": 1}
    cfg = load_config(None, ["personalization.method=finetune", "personalization.params.finetune-epochs=0"])
    assert cfg.personalization.params["finetune-epochs"] == 0  # allowed: the global model itself
    cfg = load_config(None, ["personalization.method=ditto", "personalization.params.lambda-grid=[0.1, 1, 2]",
                             "data.validation-fraction=0.2"])
    assert cfg.personalization.params["lambda-grid"] == [0.1, 1.0, 2.0]
    assert config_from_flat(cfg.to_flat()) == cfg


@pytest.mark.parametrize(("overrides", "named"), [
    (["personalization.method=fedrep", "model.heads=global"], ["personalization.method", "model.heads"]),
    (["personalization.method=fedbabu", "model.heads=global"], ["personalization.method", "model.heads"]),
    (["personalization.method=none", "model.heads=personal"], ["personalization.method", "model.heads"]),
    (["personalization.method=fedper", "model.heads=global"], ["personalization.method", "model.heads"]),
    (["personalization.method=ditto", "data.task-sets=one"], ["model.heads", "data.task-sets"]),
    (["personalization.method=finetune", "server.plan=flat"], ["model.heads", "server.plan"]),
    (["personalization.method=ditto", "personalization.params.lambda-grid=[0.1, 1]"],
     ["personalization.params.lambda-grid", "data.validation-fraction"]),
    (["personalization.method=fedprox", "personalization.params.mu=100"], ["personalization.params.mu", "client.lr"]),
    (["personalization.method=ditto", "personalization.params.lambda=1000"],
     ["personalization.params.lambda", "client.lr"]),
    (["personalization.method=fedrep", "personalization.params.head-epochs=0", "personalization.params.body-epochs=0"],
     ["personalization.params.head-epochs", "personalization.params.body-epochs"]),
    (["personalization.method=ditto", "run.mode=centralized"], ["run.mode", "personalization.method"]),
    (["personalization.method=local", "server.weighting=qffl"], ["personalization.method", "server.weighting"]),
    (["personalization.method=local", "model.heads=global"], ["personalization.method", "model.heads"]),
])
def test_combinations_that_make_no_sense_fail_naming_both_keys(overrides, named):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert all(key in str(info.value) for key in named), str(info.value)


def test_unknown_methods_and_options_are_named():
    with pytest.raises(ConfigError, match=r"personalization.method = 'dito'.*did you mean 'ditto'"):
        load_config(None, ["personalization.method=dito"])
    with pytest.raises(ConfigError, match=r"personalization.params: method 'fedprox' has no option 'muu'.*'mu'"):
        load_config(None, ["personalization.method=fedprox", "personalization.params.muu=1"])
    with pytest.raises(ConfigError, match=r"personalization.params: finetune-epochs = -1"):
        load_config(None, ["personalization.method=finetune", "personalization.params.finetune-epochs=-1"])
    with pytest.raises(ConfigError, match=r"personalization.params: method 'fedper' has no option 'mu'"):
        load_config(None, ["personalization.params.mu=1"])


def test_every_method_has_its_table_entries():
    for name, cls in METHODS.items():
        assert cls.name == name and cls.heads and cls.trains and cls.keeps and cls.costs and cls.paper
        assert cls.views[0] == wire.TEST and set(cls.views) <= {wire.TEST, wire.TEST_GLOBAL}


# -- the training hooks ---------------------------------------------------------------------
TASKS = [TaskSpec("a", "multiclass", 4), TaskSpec("b", "binary")]


def _data(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return Split(x, {"a": torch.randint(0, 4, (n,), generator=g), "b": torch.randint(0, 2, (n,), generator=g)})


def _model(seed=0):
    torch.manual_seed(seed)
    return build_model(ModelSection(backbone="mlp", width=8, head_hidden=5), (6,), TASKS)


def _train(model, *, batch_size=16, epochs=2, momentum=0.5, lr=0.1, **hooks):
    return train_local(model, _data(), TASKS, make_weighting("mean"), epochs=epochs, batch_size=batch_size, lr=lr,
                       momentum=momentum, device=torch.device("cpu"), generator=torch.Generator().manual_seed(3),
                       **hooks)


@pytest.mark.parametrize("track_parts", [False, True])
def test_a_zero_proximal_term_trains_bit_for_bit_as_none(track_parts):
    plain, prox = _model(), _model()
    anchors = [p.detach() + 1.0 for p in prox.parameters()]  # far away: only μ = 0 makes it vanish
    a = _train(plain, track_parts=track_parts)
    b = _train(prox, track_parts=track_parts, proximal=Proximal.towards(0.0, list(prox.parameters()), anchors))
    for (name, p), q in zip(plain.state_dict().items(), prox.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    assert a.task_losses == b.task_losses
    if track_parts:
        assert torch.equal(a.parts, b.parts)


@pytest.mark.parametrize("track_parts", [False, True])
def test_the_proximal_gradient_is_mu_times_theta_minus_w(track_parts):
    """One SGD step without momentum: θ₁ = θ₀ − η (∇F(θ₀) + μ (θ₀ − w))."""
    mu, lr = 0.7, 0.1
    plain, prox = _model(), _model()
    start = {k: v.clone() for k, v in prox.state_dict().items()}
    g = torch.Generator().manual_seed(5)
    anchors = [p.detach() + torch.randn(p.shape, generator=g) for p in prox.parameters()]
    backbone = list(prox.backbone.parameters())  # FedProx with personal heads: the backbone only
    _train(plain, batch_size=64, epochs=1, momentum=0.0, lr=lr)
    result = _train(prox, batch_size=64, epochs=1, momentum=0.0, lr=lr, track_parts=track_parts,
                    proximal=Proximal.towards(mu, backbone, anchors[:len(backbone)]))
    names = [k for k, _ in prox.named_parameters()]
    anchor = dict(zip(names, anchors, strict=True))
    for name, p in prox.named_parameters():
        expected = plain.state_dict()[name].clone()
        if name.startswith("backbone."):
            expected -= lr * mu * (start[name] - anchor[name])
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-7)
    if track_parts:  # the parts still add up to the backbone's change
        change = torch.cat([(p.detach() - start[n]).reshape(-1) for n, p in prox.named_parameters()
                            if n.startswith("backbone.")])
        torch.testing.assert_close(result.parts.sum(dim=0), change, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("track_parts", [False, True])
def test_frozen_groups_do_not_move(track_parts):
    model = _model()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    _train(model, freeze=("heads",), track_parts=track_parts)
    moved = {k for k, v in model.state_dict().items() if not torch.equal(v, start[k])}
    assert moved and all(k.startswith("backbone.") for k in moved)
    model = _model()
    result = _train(model, freeze=("backbone",), track_parts=track_parts)
    moved = {k for k, v in model.state_dict().items() if not torch.equal(v, start[k])}
    assert moved and all(k.startswith("heads.") for k in moved)
    if track_parts:
        assert not result.parts.any()
    with pytest.raises(ValueError, match="freeze"):
        _train(_model(), freeze=("head",))


class _BatchNormBackbone(torch.nn.Module):
    """A plugin backbone with BatchNorm (running statistics as buffers)."""

    input_rank = None

    def __init__(self, input_shape, out_dim=8):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(6, out_dim), torch.nn.BatchNorm1d(out_dim), torch.nn.ReLU())
        self.out_dim = out_dim

    def forward(self, x):
        return self.net(x)


def test_a_frozen_backbone_keeps_its_batchnorm_statistics(monkeypatch):
    """A frozen backbone's BatchNorm ran in training mode and moved its running statistics:
    FedRep's head phase sent a backbone update with body-epochs = 0 (found by an audit, with a
    plugin backbone). Frozen, it normalises with them and they stay; trained, they move."""
    from fedmtl.models import BACKBONES

    monkeypatch.setitem(BACKBONES._entries, "test-batchnorm", _BatchNormBackbone)
    torch.manual_seed(0)
    model = build_model(ModelSection(backbone="test-batchnorm", width=8, head_hidden=5), (6,), TASKS)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    _train(model, freeze=("backbone",))
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items() if k.startswith("backbone."))
    assert model.backbone.training  # the model is left in training mode; only the frozen BatchNorm is not
    _train(model, freeze=("heads",))
    assert int(model.state_dict()["backbone.net.1.num_batches_tracked"]) > 0


# -- methods in the core (ClientRun) ---------------------------------------------------------
def _client_run(overrides, client=0, server_round=1, personal=None):
    cfg = load_config(None, [*BASE, *overrides])
    fed = load_federation(cfg.data, cfg.run.seed)
    tasks = fed.client_tasks(client)
    with seeded_torch_init(Stream.MODEL_INIT, cfg.run.seed):
        model = build_model(cfg.model, fed.input_shape, tasks)
    return ClientRun(cfg, client, server_round, model, fed.client(client), tasks, torch.device("cpu"),
                     dict(personal or {}), lambda: make_weighting(cfg.client.weighting, **cfg.client.params))


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _personal_state(run):
    return {k[len(MODEL_PREFIX):]: v for k, v in run.personal.items() if k.startswith(MODEL_PREFIX)}


def test_ditto_with_lambda_zero_trains_the_personal_model_as_plain_local_training():
    run = _client_run(["personalization.method=ditto", "personalization.params.lambda=0"])
    method = make_method("ditto", run.cfg.personalization.params)
    expected = initial_model(run)  # a client's v starts as its round-0 model
    run.train(expected, run.new_weighting())  # plain local training, the same batches
    global_before = _state(run.model)
    method.train(run, run.new_weighting())
    personal = _personal_state(run)
    assert personal.keys() == expected.state_dict().keys()
    for k, v in expected.state_dict().items():
        assert torch.equal(personal[k], v), k
    assert float(run.personal[LAMBDA_KEY]) == 0.0
    assert any(not torch.equal(v, global_before[k]) for k, v in run.model.state_dict().items())  # trained too


def test_ditto_with_a_very_large_lambda_gives_the_global_model_s_predictions():
    distances, outputs = [], {}
    g = torch.Generator().manual_seed(0)
    for lam in (0.0, 10.0, 100.0, 1000.0):  # client.lr × λ ≤ 1: every step stays stable
        run = _client_run(["personalization.method=ditto", f"personalization.params.lambda={lam}",
                           "client.lr=0.001", "client.momentum=0"])
        trained = run.cfg.with_values(client={"lr": 0.05, "epochs": 5})
        ClientRun(trained, 0, 1, run.model, run.data, run.tasks, run.device).train(  # a global model with opinions
            run.model, run.new_weighting())
        g.manual_seed(0)  # a stored personal model far from the received global one
        run.personal = {MODEL_PREFIX + k: v + 0.3 * torch.randn(v.shape, generator=g)
                        for k, v in run.model.state_dict().items()}
        received = copy.deepcopy(run.model)
        make_method("ditto", run.cfg.personalization.params).train(run, run.new_weighting())
        v = copy.deepcopy(received)
        v.load_state_dict(_personal_state(run))
        distances.append(sum(float((p - q).detach().pow(2).sum())
                             for p, q in zip(v.parameters(), received.parameters(), strict=True)) ** 0.5)
        with torch.no_grad():
            outputs[lam], outputs["global"] = v(run.data.test.x), received(run.data.test.x)
    assert distances == sorted(distances, reverse=True) and distances[-1] < 0.01 * distances[0]
    for task, out in outputs[1000.0].items():
        reference = outputs["global"][task]
        assert float((out - reference).norm()) < 0.01 * float((outputs[0.0][task] - reference).norm()), task
        # the same prediction wherever the global model's margin exceeds the outputs' difference
        top2 = reference.topk(2, dim=1).values
        clear = (top2[:, 0] - top2[:, 1]) > 2 * (out - reference).abs().amax(dim=1)
        assert clear.float().mean() > 0.9, task
        assert torch.equal(out.argmax(dim=1)[clear], reference.argmax(dim=1)[clear]), task


def test_ditto_picks_lambda_from_the_grid_by_validation_loss():
    overrides = ["personalization.method=ditto", "personalization.params.lambda-grid=[0, 2, 20]",
                 "data.validation-fraction=0.3", "data.params.pairs-per-digit=2"]
    run = _client_run(overrides)
    assert run.data.validation is not None and len(run.data.validation) >= 4
    method = make_method("ditto", run.cfg.personalization.params)
    candidates = {}
    for lam in (0.0, 2.0, 20.0):  # each candidate trained alone from the same start
        alone = _client_run([*overrides[:1], f"personalization.params.lambda={lam}", *overrides[2:]])
        make_method("ditto", alone.cfg.personalization.params).train(alone, alone.new_weighting())
        v = copy.deepcopy(alone.model)
        v.load_state_dict(_personal_state(alone))
        from fedmtl.training import measure_losses

        losses = measure_losses(v, run.data.validation, run.tasks, batch_size=64, device=torch.device("cpu"))
        candidates[lam] = (sum(losses.values()) / len(losses), _personal_state(alone))
    method.train(run, run.new_weighting())
    chosen = float(run.personal[LAMBDA_KEY])
    assert chosen == min(candidates, key=lambda lam: candidates[lam][0])
    for k, v in candidates[chosen][1].items():
        assert torch.equal(_personal_state(run)[k], v), k


def test_fedrep_with_zero_body_epochs_leaves_the_backbone_update_zero():
    run = _client_run(["personalization.method=fedrep", "personalization.params.body-epochs=0"])
    start = _state(run.model)
    result = make_method("fedrep", run.cfg.personalization.params).train(run, run.new_weighting(), track_parts=True)
    for k, v in run.model.state_dict().items():
        assert torch.equal(v, start[k]) == k.startswith("backbone."), k
    assert not result.parts.any() and result.steps > 0


def test_fedrep_with_zero_head_epochs_leaves_the_heads_unchanged():
    run = _client_run(["personalization.method=fedrep", "personalization.params.head-epochs=0"])
    start = _state(run.model)
    make_method("fedrep", run.cfg.personalization.params).train(run, run.new_weighting())
    for k, v in run.model.state_dict().items():
        assert torch.equal(v, start[k]) == k.startswith("heads."), k


def test_fedrep_trains_heads_first_then_the_backbone():
    """Its two phases are train_local with the backbone frozen, then with the heads frozen."""
    run = _client_run(["personalization.method=fedrep", "personalization.params.head-epochs=2"])
    expected = copy.deepcopy(run.model)
    generator = run.generator()
    run.train(expected, run.new_weighting(), epochs=2, generator=generator, freeze=("backbone",))
    run.train(expected, run.new_weighting(), epochs=1, generator=generator, freeze=("heads",))
    make_method("fedrep", run.cfg.personalization.params).train(run, run.new_weighting())
    for k, v in expected.state_dict().items():
        assert torch.equal(run.model.state_dict()[k], v), k


def test_finetune_with_zero_epochs_equals_the_global_model():
    run = _client_run(["personalization.method=finetune", "personalization.params.finetune-epochs=0"])
    views = make_method("finetune", run.cfg.personalization.params).evaluate(run)
    assert views[wire.TEST] == views[wire.TEST_GLOBAL] == evaluate(run.model, run.data.test, run.tasks)


def test_finetuning_happens_on_a_copy():
    for method in ("finetune", "fedbabu"):
        run = _client_run([f"personalization.method={method}", "personalization.params.finetune-epochs=2"])
        start = _state(run.model)
        views = make_method(method, run.cfg.personalization.params).evaluate(run)
        assert views[wire.TEST] != views[wire.TEST_GLOBAL]
        assert views[wire.TEST_GLOBAL] == evaluate(run.model, run.data.test, run.tasks)
        for k, v in run.model.state_dict().items():
            assert torch.equal(v, start[k]), (method, k)


@pytest.mark.parametrize("method", ["finetune", "fedbabu"])
def test_finetune_lr_is_the_fine_tuning_s_learning_rate_and_0_is_client_lr(method):
    """``finetune-lr = x`` fine-tunes exactly as ``client.lr = x`` would; 0 keeps ``client.lr``."""
    options = [f"personalization.method={method}", "personalization.params.finetune-epochs=1"]
    own = _client_run([*options, "personalization.params.finetune-lr=0.003"])
    as_client = _client_run([*options, "client.lr=0.003"])
    default = _client_run([*options, "personalization.params.finetune-lr=0"])
    views = {name: make_method(method, run.cfg.personalization.params).evaluate(run)
             for name, run in [("own", own), ("client", as_client), ("default", default)]}
    assert views["own"][wire.TEST] == views["client"][wire.TEST]
    assert views["own"][wire.TEST] != views["default"][wire.TEST]
    assert views["default"][wire.TEST] == make_method(method, {"finetune-epochs": 1}).evaluate(default)[wire.TEST]


def test_fedbabu_heads_are_the_shared_initial_heads_and_never_train():
    run = _client_run(["personalization.method=fedbabu"])
    method = make_method("fedbabu", run.cfg.personalization.params)
    method.first_visit(run.model, run.cfg, run.client)
    shared = initial_heads(run.cfg, [t.name for t in run.tasks])
    assert shared and all(torch.equal(run.model.heads.state_dict()[k], v) for k, v in shared.items())
    # the server's initial model, as the server builds it
    with seeded_torch_init(Stream.MODEL_INIT, run.cfg.run.seed):
        server = build_model(run.cfg.model, dataset_input_shape(run.cfg.data), dataset_tasks(run.cfg.data))
    assert all(torch.equal(initial_state(run.cfg)[k], v) for k, v in server.federated_state(True).items())
    start = _state(run.model)
    method.train(run, run.new_weighting())
    for k, v in run.model.state_dict().items():
        assert torch.equal(v, start[k]) == k.startswith("heads."), k


def test_fedprox_anchors_the_federated_parameters_only(monkeypatch):
    """The term is on the backbone, and on the heads when they are global, towards the received model."""
    for heads in ("personal", "global"):
        run = _client_run(["personalization.method=fedprox", f"model.heads={heads}", "personalization.params.mu=0.5"])
        received = _state(run.model)
        seen = {}

        def train(model, weighting, seen=seen, **hooks):
            seen.update(hooks)

        monkeypatch.setattr(run, "train", train)
        make_method("fedprox", run.cfg.personalization.params).train(run, run.new_weighting())
        proximal = seen["proximal"]
        names = {id(p): k for k, p in run.model.named_parameters()}
        anchored = {names[id(p)]: a for p, a in proximal.pairs}
        expected = {k for k in names.values() if k.startswith("backbone.") or heads == "global"}
        assert proximal.strength == 0.5 and set(anchored) == expected, heads
        assert all(torch.equal(a, received[k]) for k, a in anchored.items())


# -- through the ClientApp ---------------------------------------------------------------------
def _cfg(tmp_path, *overrides, store="disk"):
    return load_config(None, [*BASE, f"client.head-store={store}", f"client.head-store-dir={tmp_path / 'heads'}",
                              *overrides])


def _server_model(cfg):
    with seeded_torch_init(Stream.MODEL_INIT, cfg.run.seed):
        return build_model(cfg.model, dataset_input_shape(cfg.data), dataset_tasks(cfg.data))


def _context(client_id, num=3):
    return Context(run_id=1, node_id=100 + client_id, node_config={"partition-id": client_id, "num-partitions": num},
                   state=RecordDict(), run_config={})


def _send(cfg, model, kind, server_round, context, **needs):
    from fedmtl.clients.app import app

    content = RecordDict({
        "arrays": ArrayRecord(model.federated_state(cfg.model.heads == "global")),
        "config": ConfigRecord({**cfg.to_flat(), "server-round": server_round}),
        "call": ConfigRecord(wire.TrainCall(server_round, **needs).values()),
    })
    reply = app(Message(content=content, dst_node_id=context.node_id, message_type=kind), context)
    assert not reply.has_error(), reply.error
    return reply


def _stored(cfg, context, client):
    from fedmtl.clients.app import head_store

    return head_store(cfg, context).load(client)


@pytest.mark.parametrize("heads", ["global", "personal"])
def test_fedprox_with_mu_zero_replies_today_s_update_bit_for_bit(tmp_path, heads):
    today = "none" if heads == "global" else "fedper"
    updates = []
    for i, method in enumerate([today, "fedprox"]):
        cfg = _cfg(tmp_path / str(i), f"personalization.method={method}", f"model.heads={heads}",
                   *(["personalization.params.mu=0"] if method == "fedprox" else []))
        reply = _send(cfg, _server_model(cfg), MessageType.TRAIN, 1, _context(1))
        updates.append(reply.content["update"].to_torch_state_dict())
    assert updates[0].keys() == updates[1].keys()
    assert all(torch.equal(updates[0][k], updates[1][k]) for k in updates[0])


def test_fedrep_through_the_app(tmp_path):
    cfg = _cfg(tmp_path / "a", "personalization.method=fedrep", "personalization.params.body-epochs=0")
    reply = _send(cfg, _server_model(cfg), MessageType.TRAIN, 1, _context(0))
    assert not any(v.any() for v in reply.content["update"].to_torch_state_dict().values())
    metrics = reply.content["metrics"]
    assert metrics["heads-fingerprint-in"] != metrics["heads-fingerprint-out"]
    cfg = _cfg(tmp_path / "b", "personalization.method=fedrep", "personalization.params.head-epochs=0")
    reply = _send(cfg, _server_model(cfg), MessageType.TRAIN, 1, _context(0))
    metrics = reply.content["metrics"]
    assert metrics["heads-fingerprint-in"] == metrics["heads-fingerprint-out"]
    assert any(v.any() for v in reply.content["update"].to_torch_state_dict().values())


@pytest.mark.parametrize("store", ["disk", "context"])
def test_fedbabu_heads_are_unchanged_by_federated_training(tmp_path, store):
    cfg = _cfg(tmp_path, "personalization.method=fedbabu", "personalization.params.finetune-epochs=1", store=store)
    model = _server_model(cfg)
    contexts = {c: _context(c) for c in range(3)}
    fingerprints = set()
    for server_round in (1, 2):
        for context in contexts.values():
            metrics = _send(cfg, model, MessageType.TRAIN, server_round, context).content["metrics"]
            assert metrics["heads-fingerprint-in"] == metrics["heads-fingerprint-out"]
            fingerprints.add(metrics["heads-fingerprint-out"])
        with torch.no_grad():
            for p in model.backbone.parameters():
                p.add_(0.01)  # the server moves the backbone; the heads stay
    assert len(fingerprints) == 1  # every client holds the same (initial) heads
    stored = _stored(cfg, contexts[0], 0)
    heads = {k: v for k, v in stored.items() if not k.startswith("__")}
    assert all(torch.equal(heads[k], v) for k, v in initial_heads(cfg, list(model.heads)).items())
    metrics = _send(cfg, model, MessageType.EVALUATE, 2, contexts[0]).content["metrics"]
    assert metrics["test.left.loss"] != metrics["test-global.left.loss"]  # the fine-tuned copy vs the global
    after = _stored(cfg, contexts[0], 0)
    assert after.keys() == stored.keys() and all(torch.equal(after[k], v) for k, v in stored.items())


def test_finetune_through_the_app(tmp_path):
    cfg = _cfg(tmp_path / "a", "personalization.method=finetune", "personalization.params.finetune-epochs=0")
    model = _server_model(cfg)
    reply = _send(cfg, model, MessageType.TRAIN, 1, _context(0))
    assert set(reply.content["update"].keys()) == set(model.federated_state(True))  # heads federated
    metrics = dict(_send(cfg, model, MessageType.EVALUATE, 1, _context(0)).content["metrics"])
    tests = {k.removeprefix("test."): v for k, v in metrics.items() if k.startswith("test.")}
    globals_ = {k.removeprefix("test-global."): v for k, v in metrics.items() if k.startswith("test-global.")}
    assert tests and tests == globals_
    cfg = _cfg(tmp_path / "b", "personalization.method=finetune", "personalization.params.finetune-epochs=1")
    metrics = _send(cfg, model, MessageType.EVALUATE, 1, _context(0)).content["metrics"]
    assert metrics["test.left.loss"] != metrics["test-global.left.loss"]
    assert metrics["test-global.left.loss"] == pytest.approx(globals_["left.loss"])


def test_fedper_replies_only_the_test_view(tmp_path):
    cfg = _cfg(tmp_path)
    metrics = _send(cfg, _server_model(cfg), MessageType.EVALUATE, 1, _context(0)).content["metrics"]
    assert any(k.startswith("test.") for k in metrics) and not any(k.startswith("test-global.") for k in metrics)


@pytest.mark.parametrize("heads", ["global", "personal"])
def test_ditto_keeps_its_personal_model_in_the_store_and_reports_both_views(tmp_path, heads):
    cfg = _cfg(tmp_path, "personalization.method=ditto", f"model.heads={heads}", "personalization.params.lambda=0.5")
    model = _server_model(cfg)
    context = _context(2)
    reply = _send(cfg, model, MessageType.TRAIN, 1, context)
    assert set(reply.content.array_records) == {"update"}
    assert set(reply.content["update"].keys()) == set(model.federated_state(heads == "global"))
    stored = _stored(cfg, context, 2)
    personal = {k[len(PERSONAL_PREFIX + MODEL_PREFIX):]: v for k, v in stored.items()
                if k.startswith(PERSONAL_PREFIX + MODEL_PREFIX)}
    assert personal.keys() == model.state_dict().keys()  # backbone and heads: the client holds every task
    metrics = _send(cfg, model, MessageType.EVALUATE, 1, context).content["metrics"]
    assert {"test.left.accuracy", "test-global.left.accuracy"} <= set(metrics.keys())
    assert metrics["test.left.loss"] != metrics["test-global.left.loss"]


def test_a_ditto_round_retrained_after_a_resume_gives_the_same_personal_model(tmp_path):
    """A resumed run re-runs round C + 1 from the store's version of a round ≤ C: the personal
    model is versioned with the heads, so the re-run round gives the same personal model."""
    cfg = _cfg(tmp_path, "personalization.method=ditto", "model.heads=personal")
    model = _server_model(cfg)
    context = _context(1)
    first = {}
    for server_round in (1, 2):
        _send(cfg, model, MessageType.TRAIN, server_round, context)
        first[server_round] = _stored(cfg, context, 1)
    _send(cfg, model, MessageType.TRAIN, 2, _context(1))  # round 2 again, as after a resume from round 1
    again = _stored(cfg, context, 1)
    assert again.keys() == first[2].keys()
    assert all(torch.equal(again[k], v) for k, v in first[2].items())
    assert any(not torch.equal(first[1][k], v) for k, v in first[2].items() if k.startswith(PERSONAL_PREFIX))


def test_local_sends_no_update_and_keeps_its_whole_model(tmp_path):
    from fedmtl.training.methods.local import BACKBONE_PREFIX

    cfg = _cfg(tmp_path, "personalization.method=local")
    model = _server_model(cfg)
    context = _context(0)
    own = []
    for server_round in (1, 2):
        reply = _send(cfg, model, MessageType.TRAIN, server_round, context, task_parts=server_round == 2)
        sent = reply.content["update" if server_round == 1 else "parts"].to_torch_state_dict()
        assert sent and not any(v.any() for v in sent.values())  # nothing it learnt leaves it
        stored = _stored(cfg, context, 0)
        own.append({k[len(PERSONAL_PREFIX + BACKBONE_PREFIX):]: v for k, v in stored.items()
                    if k.startswith(PERSONAL_PREFIX + BACKBONE_PREFIX)})
    initial = model.backbone.state_dict()
    assert own[0].keys() == own[1].keys() == initial.keys()
    assert any(not torch.equal(own[0][k], v) for k, v in initial.items())  # it trained from the initial backbone
    assert any(not torch.equal(own[1][k], v) for k, v in own[0].items())  # and went on from its own
    # evaluation: its own backbone with its heads
    mine = copy.deepcopy(model)
    mine.backbone.load_state_dict(own[1])
    mine.heads.load_state_dict({k: v for k, v in stored.items() if not k.startswith("__")})
    metrics = _send(cfg, model, MessageType.EVALUATE, 2, context).content["metrics"]
    fed = load_federation(cfg.data, cfg.run.seed)
    expected = evaluate(mine, fed.client(0).test, fed.client_tasks(0))
    assert metrics["test.left.accuracy"] == expected["left"]["accuracy"]
    assert not any(k.startswith("test-global.") for k in metrics)


registries = pytest.fixture(restored_registries, name="registries")


@pytest.mark.parametrize(("state", "said"), [
    ({"count": 3}, "the state ClientRun.personal must be a dict of str -> torch.Tensor; 'count' is of type int"),
    ([torch.zeros(2)], "the state ClientRun.personal must be a dict of str -> torch.Tensor, not of type list"),
    ({"v": {"a": torch.zeros(2)}}, "'v' is of type dict"),
    ({1: torch.zeros(2)}, "it has the key 1 of type int"),
    (None, "train returned None (of type NoneType); it must return the fedmtl.training.TrainResult of ClientRun.train"),
])
def test_a_method_leaving_a_state_that_is_not_tensors_fails_in_one_line_naming_it(tmp_path, registries, state,
                                                                                   said):
    """It used to fail later, naming neither the method nor the problem ('int' object has no
    attribute 'layout', 'NoneType' object has no attribute 'num_examples')."""
    from fedmtl.clients.app import app
    from fedmtl.training.methods.base import Method, register

    @register
    class Counting(Method):
        name = "counting"
        keeps_state = True

        def train(self, run, weighting, *, track_parts=False):
            result = run.train(run.model, weighting, track_parts=track_parts)
            if state is None:
                return None
            run.personal = state
            return result

    cfg = _cfg(tmp_path, "personalization.method=counting")
    context = _context(0)
    content = RecordDict({"arrays": ArrayRecord(_server_model(cfg).federated_state(False)),
                          "config": ConfigRecord({**cfg.to_flat(), "server-round": 1}),
                          "call": ConfigRecord(wire.TrainCall(1).values())})
    with pytest.raises(MethodError) as error:  # the SuperNode replies its one line as the client's error
        app(Message(content=content, dst_node_id=context.node_id, message_type=MessageType.TRAIN), context)
    message = str(error.value)
    assert message.startswith("personalization.method = 'counting': ") and said in message and "\n" not in message
    assert _stored(cfg, context, 0) is None  # nothing of it was saved


# -- a real simulation -------------------------------------------------------------------------
@pytest.mark.slow
def test_methods_run_in_the_simulation_and_report_both_views(tmp_path):
    from pathlib import Path

    from tests.simulation_batch import run_batch

    root = Path(__file__).resolve().parents[1]
    jobs = [{"config": str(root / "configs/smoke.toml"), "out": str(tmp_path / m),
             "overrides": [f"personalization.method={m}", "engine.backend=inprocess"]} for m in ("ditto", "fedbabu")]
    results = run_batch(jobs, tmp_path)
    assert results == {job["out"]: "" for job in jobs}, results
    for method in ("ditto", "fedbabu"):
        metrics = pd.read_csv(tmp_path / method / "metrics.csv")
        assert {"test", "test-global"} <= set(metrics["split"]), method


@pytest.mark.slow
def test_a_ditto_run_resumed_after_its_last_checkpoint_gives_the_same_metrics(tmp_path):
    """The run is cut back to its checkpoint of round 3 (round 4's heads and personal models
    already saved, as by a run killed before its last checkpoint) and resumed."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sets = ["run.rounds=4", "data.num-clients=3", "server.fraction-train=0.67", "client.weighting=rlw",
            "personalization.method=ditto", "model.heads=personal", "engine.backend=inprocess"]
    args = [a for s in sets for a in ("--set", s)]
    whole = subprocess.run([sys.executable, "-m", "fedmtl", "run", str(root / "configs/smoke.toml"), *args,
                            "--out", str(tmp_path / "whole"), "-q"], capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:]
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "whole", cut)
    (cut / "checkpoints" / "round-4.pt").unlink()
    (cut / "summary.json").unlink()
    # what a run killed after round 4's training leaves: round-4 heads and personal models on the store
    from fedmtl.personalization import DiskHeadStore

    store = DiskHeadStore(cut / "heads")
    latest = [c for c in range(3) if max(store.versions(c), default=0) == 4]
    assert latest and all(any(k.startswith(PERSONAL_PREFIX + MODEL_PREFIX) for k in store.load(c)) for c in latest)
    resumed = subprocess.run([sys.executable, "-m", "fedmtl", "run", "--resume", str(cut)], capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0 and "Resuming" in resumed.stdout, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    a, b = (pd.read_csv(tmp_path / name / "metrics.csv") for name in ("whole", "cut"))
    assert {"test", "test-global"} <= set(a["split"])
    assert set(a[(a["split"] == "test-global") & (a["round"] == 4)]["client"]) == {0, 1, 2}
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    # both views' statistics and who trained, too
    ra, rb = (pd.read_csv(tmp_path / name / "rounds.csv").drop(columns="elapsed_s") for name in ("whole", "cut"))
    assert any(c.startswith("global_") for c in ra.columns)
    pd.testing.assert_frame_equal(ra, rb, check_exact=True)
    pa, pb = (pd.read_csv(tmp_path / name / "participation.csv") for name in ("whole", "cut"))
    pd.testing.assert_frame_equal(pa, pb, check_exact=True)
