"""The real ClientApp, called with real Flower Messages and a node Context.

These tests drive ``fedmtl.clients.app.app`` exactly as the SuperNode runtime does
(``app(message, context)``) without the engine, to look inside every reply.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import MessageType

from fedmtl import protocol as wire
from fedmtl.clients.app import app
from fedmtl.data import dataset_input_shape, dataset_tasks
from fedmtl.models import build_model
from fedmtl.validation import load_config


@pytest.fixture(autouse=True)
def task_identity():
    """Set the process's task identity, as the SuperNode runtime does before calling the app."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 100
    yield


def _cfg(tmp_path, store):
    return load_config(
        None,
        [
            "data.num-clients=3", "data.params.pairs-per-digit=1", "data.params.test-pairs-per-digit=1",
            "client.batch-size=64", f"client.head-store={store}",
            f"client.head-store-dir={tmp_path / 'heads'}",
        ],
    )


def _global(cfg):
    torch.manual_seed(0)
    return build_model(cfg.model, dataset_input_shape(cfg.data), dataset_tasks(cfg.data))


def _send(cfg, model, kind, server_round, context, **needs):
    """Send ``kind`` with the run config; ``needs`` are the train call's flags
    (``needs_losses_before``, ``task_parts``), in a ``"call"`` record as the server sends them."""
    content = RecordDict(
        {
            "arrays": ArrayRecord(model.backbone_state()),
            "config": ConfigRecord({**cfg.to_flat(), "server-round": server_round}),
        }
    )
    if needs:
        content["call"] = ConfigRecord(wire.TrainCall(server_round, **needs).values())
    msg = Message(content=content, dst_node_id=context.node_id, message_type=kind)
    reply = app(msg, context)
    assert not reply.has_error(), reply.error
    return reply


def _context(client_id, num=3):
    return Context(
        run_id=1, node_id=100 + client_id,
        node_config={"partition-id": client_id, "num-partitions": num},
        state=RecordDict(), run_config={},
    )


@pytest.mark.parametrize("store", ["disk", "context"])
def test_no_head_tensor_in_any_reply(tmp_path, store):
    cfg = _cfg(tmp_path, store)
    model = _global(cfg)
    context = _context(1)
    replies = [
        _send(cfg, model, MessageType.QUERY, 0, context),
        _send(cfg, model, MessageType.TRAIN, 1, context),
        _send(cfg, model, MessageType.EVALUATE, 1, context),
    ]
    # the client's heads after training, from its own store
    from fedmtl.clients.app import head_store

    heads = head_store(cfg, context).load(1)
    assert heads is not None
    head_arrays = [v.numpy() for v in heads.values()]
    backbone_keys = set(model.backbone_state())
    for reply in replies:
        for name, record in reply.content.array_records.items():
            assert set(record.keys()) <= backbone_keys, f"{name} carries non-backbone arrays"
            for array in record.to_torch_state_dict().values():
                for head in head_arrays:
                    assert not (array.shape == head.shape and np.allclose(array.numpy(), head)), (
                        f"a head tensor travels in reply record '{name}'"
                    )
        for record in reply.content.metric_records.values():
            assert all(not isinstance(v, list) or len(v) < 10 for v in record.values())
    train = replies[1]
    assert set(train.content.array_records) == {"update"}
    assert set(train.content["update"].keys()) == backbone_keys


@pytest.mark.parametrize("store", ["disk", "context"])
def test_heads_after_round_r_are_the_heads_of_round_r_plus_1(tmp_path, store):
    cfg = _cfg(tmp_path, store)
    model = _global(cfg)
    context = _context(2)
    first = _send(cfg, model, MessageType.TRAIN, 1, context).content["metrics"]
    # the server moves the backbone between rounds; heads must not move
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(0.01)
    second = _send(cfg, model, MessageType.TRAIN, 2, context).content["metrics"]
    assert first["heads-fingerprint-in"] != first["heads-fingerprint-out"]  # training moved them
    assert second["heads-fingerprint-in"] == first["heads-fingerprint-out"]
    # a different client starts from different (its own deterministic) heads
    other = _send(cfg, model, MessageType.TRAIN, 1, _context(0)).content["metrics"]
    assert other["heads-fingerprint-in"] != first["heads-fingerprint-in"]
    # same client, fresh node state and fresh store: the same first-visit heads again
    cfg_fresh = _cfg(tmp_path / "fresh", store)
    again = _send(cfg_fresh, model, MessageType.TRAIN, 1, _context(2)).content["metrics"]
    assert again["heads-fingerprint-in"] == first["heads-fingerprint-in"]


def test_train_reply_is_the_backbone_update_and_evaluation_uses_own_heads(tmp_path):
    cfg = _cfg(tmp_path, "disk")
    model = _global(cfg)
    context = _context(0)
    before = _send(cfg, model, MessageType.EVALUATE, 1, context).content["metrics"]
    reply = _send(cfg, model, MessageType.TRAIN, 1, context)
    update = reply.content["update"].to_torch_state_dict()
    assert any(v.abs().sum() > 0 for v in update.values())
    metrics = reply.content["metrics"]
    assert metrics["partition-id"] == 0 and metrics["num-examples"] > 0
    assert {"train.left.loss", "train.right.loss", "train.left.weight"} <= set(metrics.keys())
    # evaluating the *same* global backbone again now uses the trained heads
    after = _send(cfg, model, MessageType.EVALUATE, 1, context).content["metrics"]
    assert after["test.left.loss"] != before["test.left.loss"]
    assert after["num-examples"] == before["num-examples"] > 0


def test_query_reports_partition():
    cfg = load_config(None, ["data.num-clients=3"])
    reply = _send(cfg, _global(cfg), MessageType.QUERY, 0, _context(2))
    assert dict(reply.content["info"].items()) == {"partition-id": 2, "num-partitions": 3}


def test_missing_partition_id_is_a_clear_error(tmp_path):
    cfg = _cfg(tmp_path, "disk")
    context = Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config={})
    content = RecordDict({"arrays": ArrayRecord(_global(cfg).backbone_state()),
                          "config": ConfigRecord(cfg.to_flat())})
    with pytest.raises(RuntimeError, match="--node-config 'partition-id=<i> num-partitions=<N>'"):
        app(Message(content=content, dst_node_id=5, message_type=MessageType.TRAIN), context)


def test_task_parts_in_the_reply_sum_to_the_whole_update(tmp_path):
    """A call asking for task parts makes the real ClientApp send one flat part per task, laid
    out as the server flattens the backbone state; they sum to the update the same client
    sends when the call does not ask for parts (same seed, round and heads)."""
    from fedmtl.server.vectors import flatten_state

    base = _cfg(tmp_path, "disk")
    model = _global(base)
    whole = _send(base.with_values(client={"head-store-dir": str(tmp_path / "a")}), model,
                  MessageType.TRAIN, 1, _context(2))
    parts = _send(base.with_values(client={"head-store-dir": str(tmp_path / "b")}), model,
                  MessageType.TRAIN, 1, _context(2), task_parts=True)
    assert "update" not in parts.content and set(parts.content.array_records) == {"parts"}
    flat = parts.content["parts"].to_torch_state_dict()
    assert list(flat) == ["left", "right"]
    total = whole.content["update"].to_torch_state_dict()
    keys = list(model.backbone_state())
    assert list(total) == keys
    vector = flatten_state(total, keys)
    assert flat["left"].dtype == flat["right"].dtype == torch.float32
    assert flat["left"].shape == flat["right"].shape == vector.shape
    torch.testing.assert_close(flat["left"] + flat["right"], vector, rtol=1e-4, atol=1e-6)
    offset = 0
    for key in keys:  # every tensor of the state has its slice, and the parts differ in each
        n = total[key].numel()
        assert not torch.equal(flat["left"][offset : offset + n], flat["right"][offset : offset + n])
        offset += n


def test_a_backbone_buffer_travels_as_zeros_in_the_flat_parts(tmp_path):
    from fedmtl.clients.parts import flat_parts

    model = _global(_cfg(tmp_path, "disk"))
    params = dict(model.backbone.named_parameters())
    like = {}
    for key, p in params.items():  # a buffer after the first parameter, as a BatchNorm has
        like[key] = p.detach()
        if len(like) == 1:
            like["running_mean"] = torch.ones(2)
    size = sum(p.numel() for p in params.values())
    parts = torch.arange(2 * size, dtype=torch.float32).reshape(2, size)
    flat = flat_parts(parts, model, like, ["left", "right"])
    first = next(iter(params.values())).numel()
    assert flat["left"].shape == (size + 2,) and flat["left"].dtype == torch.float32
    assert torch.equal(flat["left"][:first], parts[0, :first])
    assert torch.equal(flat["left"][first : first + 2], torch.zeros(2))
    assert torch.equal(flat["right"][first + 2 :], parts[1, first:])


def test_loss_before_training_is_reported_when_the_call_asks_for_it(tmp_path):
    cfg = _cfg(tmp_path, "disk")
    reply = _send(cfg, _global(cfg), MessageType.TRAIN, 1, _context(0), needs_losses_before=True)
    metrics = reply.content["metrics"]
    assert metrics["train.left.loss-before"] > 0 and metrics["train.right.loss-before"] > 0
    plain = _send(_cfg(tmp_path, "disk"), _global(cfg), MessageType.TRAIN, 1, _context(1))
    assert "train.left.loss-before" not in plain.content["metrics"]


def test_the_client_obeys_the_call_not_the_server_settings_in_the_run_config(tmp_path):
    """A run config naming a loss-based weighting and a task plan changes nothing: only the
    call's flags decide what the reply carries."""
    cfg = _cfg(tmp_path, "disk").with_values(server={"weighting": "qffl", "plan": "flat"})
    reply = _send(cfg, _global(cfg), MessageType.TRAIN, 1, _context(0))
    assert set(reply.content.array_records) == {"update"}
    assert "train.left.loss-before" not in reply.content["metrics"]
    asked = _send(cfg, _global(cfg), MessageType.TRAIN, 2, _context(0), needs_losses_before=True, task_parts=True)
    assert set(asked.content.array_records) == {"parts"} and "train.left.loss-before" in asked.content["metrics"]


def test_a_message_leaves_the_thread_setting_as_it_found_it_after_the_first(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, "disk")
    model = _global(cfg)
    _send(cfg, model, MessageType.EVALUATE, 1, _context(0))
    assert torch.get_num_threads() == cfg.engine.client_num_cpus
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    _send(cfg, model, MessageType.TRAIN, 1, _context(0))
    _send(cfg, model, MessageType.EVALUATE, 1, _context(0))
    assert calls == []


def test_local_weighting_state_survives_between_rounds(tmp_path):
    from fedmtl.clients.app import head_store
    from fedmtl.personalization import load_weighting_state

    cfg = _cfg(tmp_path, "disk").with_values(client={"weighting": "uncertainty"})
    model = _global(cfg)
    context = _context(1)
    _send(cfg, model, MessageType.TRAIN, 1, context)
    first = load_weighting_state(head_store(cfg, context), 1)
    assert set(first["log_vars"]) == {"left", "right"} and any(v != 0 for v in first["log_vars"].values())
    _send(cfg, model, MessageType.TRAIN, 2, context)
    second = load_weighting_state(head_store(cfg, context), 1)
    assert second["log_vars"] != first["log_vars"]


def test_a_client_without_a_task_has_no_head_part_or_metric_for_it(tmp_path):
    from fedmtl.clients.app import head_store

    cfg = _cfg(tmp_path, "disk").with_values(data={"task-sets": "one"}, server={"plan": "flat"})
    model = _global(cfg)
    context = _context(1)  # client 1 holds 'right' only
    reply = _send(cfg, model, MessageType.TRAIN, 1, context, task_parts=True)
    assert list(reply.content["parts"].keys()) == ["right"]
    assert not any(k.startswith("train.left") for k in reply.content["metrics"].keys())
    heads = head_store(cfg, context).load(1)
    assert heads and all(k.startswith("right.") for k in heads)
    evaluation = _send(cfg, model, MessageType.EVALUATE, 1, context)
    assert {k.split(".")[1] for k in evaluation.content["metrics"].keys() if k.startswith("test.")} == {"right"}


def test_global_heads_travel_with_the_backbone_and_are_used_for_evaluation(tmp_path):
    from fedmtl.models.multitask import HEADS_PREFIX

    cfg = load_config(None, ["data.num-clients=3", "data.params.pairs-per-digit=1",
                             "data.params.test-pairs-per-digit=1", "client.batch-size=64", "model.heads=global",
                             f"client.head-store-dir={tmp_path / 'heads'}"])
    model = _global(cfg)
    state = model.federated_state(global_heads=True)
    assert any(k.startswith(HEADS_PREFIX) for k in state) and set(model.backbone_state()) < set(state)
    context = _context(2)

    def send(kind, arrays):
        content = RecordDict({"arrays": ArrayRecord(arrays),
                              "config": ConfigRecord({**cfg.to_flat(), "server-round": 1})})
        reply = app(Message(content=content, dst_node_id=context.node_id, message_type=kind), context)
        assert not reply.has_error(), reply.error
        return reply

    update = send(MessageType.TRAIN, state).content["update"].to_torch_state_dict()
    assert set(update) == set(state)  # backbone and every head
    head_keys = [k for k in update if k.startswith(HEADS_PREFIX)]
    assert any(update[k].abs().sum() > 0 for k in head_keys)
    # evaluation uses the heads it is sent: scrambling them changes the metrics
    first = send(MessageType.EVALUATE, state).content["metrics"]
    scrambled = {k: (torch.randn_like(v) * 5 if k.startswith(HEADS_PREFIX) else v) for k, v in state.items()}
    second = send(MessageType.EVALUATE, scrambled).content["metrics"]
    assert first["test.left.loss"] != second["test.left.loss"]
    assert send(MessageType.EVALUATE, state).content["metrics"]["test.left.loss"] == first["test.left.loss"]


def test_global_heads_need_all_tasks_and_the_clients_plan():
    from fedmtl.config import ConfigError

    with pytest.raises(ConfigError, match="data.task-sets"):
        load_config(None, ["model.heads=global", "data.task-sets=one"])
    with pytest.raises(ConfigError, match="server.plan"):
        load_config(None, ["model.heads=global", "server.plan=flat"])
