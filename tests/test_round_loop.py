"""The server's round loop (retry, skip, stop, evaluation) over a tiny fake grid (no Ray).

``FakeGrid`` offers the two grid methods the strategy calls, ``get_node_ids`` and
``send_and_receive``; it gives each message an id, as a real grid does, and answers it with
a scripted client. The real engine path is covered by the simulation tests.
"""

from __future__ import annotations

import functools
import itertools
import sys
from collections.abc import Callable

import pandas as pd
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import Error, MessageType

from fedmtl import protocol as wire
from fedmtl.data import dataset_tasks
from fedmtl.progress import Progress
from fedmtl.results import RunRecorder
from fedmtl.server.discovery import ClientDirectory
from fedmtl.server.strategy import ClientsFailed, FedMTLStrategy
from fedmtl.validation import load_config

STATE = {"w": torch.zeros(3), "b": torch.zeros(2)}
Script = Callable[[Message, wire.TrainCall], Message | list[Message] | None]


@pytest.fixture(autouse=True)
def task_identity():
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    yield


class FakeGrid:
    """Answers each message with ``script(message, call)``: a reply, several, or none."""

    def __init__(self, num_clients: int, script: Script) -> None:
        self.nodes = [100 + c for c in range(num_clients)]
        self.script = script
        self.ids = itertools.count()
        self.sent: list[tuple[str, int, int]] = []
        """``(message type, attempt, client)`` of every message sent."""

    def get_node_ids(self) -> list[int]:
        return self.nodes

    def send_and_receive(self, messages, *, timeout=None) -> list[Message]:
        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = f"m{next(self.ids)}"
            call = wire.read_call(dict(msg.content[wire.CALL].items()))
            self.sent.append((msg.metadata.message_type, call.attempt, call.client))
            out = self.script(msg, call)
            replies += out if isinstance(out, list) else [] if out is None else [out]
        return replies


class TrickleGrid(FakeGrid):
    """The same scripted clients on a grid that polls, as the Simulation Engine's does (it has
    a ``pull_interval``): the server pushes, then pulls the replies to one message at a time and
    reads each batch as it comes (``fedmtl.server.exchange.send_and_read``)."""

    pull_interval = 0.0

    def __init__(self, num_clients: int, script: Script) -> None:
        super().__init__(num_clients, script)
        self.waiting: list[Message] = []

    def push_messages(self, messages) -> list[str]:
        messages = list(messages)
        self.waiting += FakeGrid.send_and_receive(self, messages)
        return [m.metadata.message_id for m in messages]

    def pull_messages(self, message_ids) -> list[Message]:
        """The replies to one of ``message_ids`` (every reply to it, as a grid's state gives them)."""
        wanted = set(message_ids)
        first = next((r.metadata.reply_to_message_id for r in self.waiting
                      if r.metadata.reply_to_message_id in wanted), None)
        batch = [r for r in self.waiting if r.metadata.reply_to_message_id == first]
        self.waiting = [r for r in self.waiting if r.metadata.reply_to_message_id != first]
        return batch

    def send_and_receive(self, messages, *, timeout=None) -> list[Message]:
        if messages and messages[0].metadata.message_type == MessageType.TRAIN:
            raise AssertionError("training replies are read as they come")
        return FakeGrid.send_and_receive(self, messages, timeout=timeout)


GRIDS = {"all-at-once": FakeGrid, "as-they-come": TrickleGrid}


@pytest.fixture(autouse=True, params=list(GRIDS))
def grid_kind(request, monkeypatch):
    """Every test of the round loop runs on both kinds of grid: the outcomes must not differ."""
    monkeypatch.setattr(f"{__name__}.GRID", GRIDS[request.param])
    return request.param


GRID: type[FakeGrid] = FakeGrid
"""The grid :func:`run` builds (set by :func:`grid_kind`)."""


def client_test_examples(msg: Message, client: int) -> int:
    """The client's test examples under the run config the message carries: the server knows
    them (``server.max-examples = 0``) and an honest evaluation reports all of them."""
    return _split_sizes(tuple(sorted(msg.content[wire.CONFIG].items())))[client][1]


def client_train_examples(msg: Message, client: int) -> int:
    """The client's training examples under the run config the message carries (an honest
    training reply reports all of them, as the server knows)."""
    return _split_sizes(tuple(sorted(msg.content[wire.CONFIG].items())))[client][0]


@functools.lru_cache(maxsize=16)
def _split_sizes(config: tuple) -> dict[int, tuple[int, int]]:
    """Every client's (training, test) examples under a flat run config (checked once per config)."""
    from fedmtl.data import load_federation
    from fedmtl.validation import config_from_flat

    cfg = config_from_flat(dict(config))
    federation = load_federation(cfg.data, cfg.run.seed)
    return {c: tuple(federation.sizes(c)[:2]) for c in range(cfg.data.num_clients)}


def good(msg: Message, call: wire.TrainCall, client: int | None = None) -> Message:
    """A well-formed reply of the client the message is for (or the one named): every metric of
    both its tasks, from the heads the call named (``heads-fingerprint-in``); its evaluation
    counts all its test examples, and its accuracies are whole numbers of them (0.5 and 0.25
    with 4 clients: 500 test examples each)."""
    who = call.client if client is None else client
    if msg.metadata.message_type == MessageType.EVALUATE:
        n = client_test_examples(msg, who)
        metrics = {wire.PARTITION_ID: who, wire.NUM_EXAMPLES: n, "test.left.accuracy": round(n / 2) / n,
                   "test.left.loss": 1.5, "test.right.accuracy": round(n / 4) / n, "test.right.loss": 2.5}
        return Message(RecordDict({wire.METRICS: MetricRecord(metrics)}), reply_to=msg)
    heads_in = 0.1 if call.heads_in is None else call.heads_in
    metrics = {wire.PARTITION_ID: who, wire.NUM_EXAMPLES: client_train_examples(msg, who), wire.HEADS_IN: heads_in,
               wire.HEADS_OUT: 0.2,
               "train.left.loss": 1.0, "train.right.loss": 2.0}
    update = ArrayRecord({k: torch.full_like(v, 0.1 * (who + 1)) for k, v in STATE.items()})
    return Message(RecordDict({wire.METRICS: MetricRecord(metrics), wire.UPDATE: update,
                               wire.PLACEMENT: ConfigRecord({"host": "h", "node": "", "device": "cpu"})}),
                   reply_to=msg)


def good_parts(msg: Message, call: wire.TrainCall) -> Message:
    """:func:`good`, its training reply the update's task parts (two-level plans)."""
    reply = good(msg, call)
    if msg.metadata.message_type == MessageType.EVALUATE:
        return reply
    size = sum(v.numel() for v in STATE.values())
    parts = ArrayRecord({task: torch.full((size,), 0.05 * (call.client + 1)) for task in ("left", "right")})
    return Message(RecordDict({wire.METRICS: reply.content[wire.METRICS], wire.PARTS: parts,
                               wire.PLACEMENT: reply.content[wire.PLACEMENT]}), reply_to=msg)


def failed(msg: Message, call: wire.TrainCall) -> Message:
    return Message(error=Error(code=1, reason=f"client {call.client} is down"), reply_to=msg)


def run(tmp_path, script: Script, *sets: str) -> tuple[FedMTLStrategy, FakeGrid, pd.DataFrame]:
    cfg = load_config(None, ["data.num-clients=4", "run.rounds=2", "server.fraction-train=1",
                             "server.fraction-evaluate=1", "server.min-replies=3",
                             "server.timeout=0.3", *sets])  # how long a polling grid waits for a silent client
    directory = ClientDirectory(cfg.data.num_clients)
    directory.infos = {100 + c: (c, cfg.data.num_clients) for c in range(cfg.data.num_clients)}
    directory.clients = {c: 100 + c for c in range(cfg.data.num_clients)}
    grid = GRID(cfg.data.num_clients, script)
    strategy = FedMTLStrategy(cfg, directory, RunRecorder(tmp_path, cfg, dataset_tasks(cfg.data)),
                              Progress(cfg.run.rounds, enabled=False))
    try:
        strategy.start(grid, ArrayRecord(STATE))  # type: ignore[arg-type]
    finally:
        rounds = pd.read_csv(tmp_path / "rounds.csv") if (tmp_path / "rounds.csv").is_file() else None
    return strategy, grid, rounds


def test_rounds_with_good_replies_move_the_model_and_are_recorded(tmp_path):
    strategy, grid, rounds = run(tmp_path, good)
    assert list(rounds["aggregated"]) == [4, 4] and list(rounds["skipped"]) == [0, 0]
    assert list(rounds["evaluated"]) == [4, 4] and list(rounds.columns[:3]) == ["round", "elapsed_s", "sampled"]
    assert not torch.equal(strategy.state["w"], STATE["w"])
    assert [s for s in grid.sent if s[0] == MessageType.TRAIN] == [("train", 0, c) for c in range(4)] * 2
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["round-1.pt", "round-2.pt"]
    strategy.check_progress()


def test_too_few_replies_are_retried_with_the_other_clients(tmp_path):
    def script(msg, call):  # clients 0 and 1 fail their first attempt
        return failed(msg, call) if call.attempt == 0 and call.client in (0, 1) else good(msg, call)

    _, grid, rounds = run(tmp_path, script, "server.on-too-few=retry", "server.max-retries=2")
    first = rounds.iloc[0]
    assert (first.sampled, first.replies, first.failures, first.retries, first.aggregated, first.skipped) == (
        6, 4, 2, 1, 4, 0)
    retried = [s for s in grid.sent if s[0] == MessageType.TRAIN and s[1] == 1]
    assert retried[:2] == [("train", 1, 0), ("train", 1, 1)]


def test_a_round_with_too_few_replies_is_skipped_and_the_model_kept(tmp_path):
    def script(msg, call):
        return failed(msg, call) if call.client in (0, 1) and msg.metadata.message_type == "train" else good(msg, call)

    strategy, _, rounds = run(tmp_path, script, "server.on-too-few=skip", "server.max-failed-rounds=0")
    assert list(rounds["skipped"]) == [1, 1] and list(rounds["failures"]) == [2, 2]
    # the usable replies of a skipped round are counted (replies - rejected), none aggregated
    assert list(rounds["replies"] - rounds["rejected"]) == [2, 2] and list(rounds["aggregated"]) == [0, 0]
    assert "train_loss" not in rounds.columns
    assert torch.equal(strategy.state["w"], STATE["w"])
    with pytest.raises(ClientsFailed, match=r"none of the 2 round\(s\) moved the model \(each needs "
                                            r"server.min-replies = 3 valid replies and a finite update\); last "
                                            r"round: 2 usable replies < server.min-replies = 3 \(2 failed, 0 "
                                            r"rejected\); first error: client 0: client 0 is down"):
        strategy.check_progress()


def test_a_resume_with_no_round_left_of_a_run_that_never_moved_the_model_fails_again(tmp_path, monkeypatch):
    """Before, it ended as a finished run (summary.json, trained 0), its failure forgotten."""
    from fedmtl.cli import failed_run_advice
    from fedmtl.server.rounds import RunTally

    strategy, _, _ = run(tmp_path, failed, "server.max-failed-rounds=0")
    strategy.tally = RunTally()  # a resumed process: no round left to run
    with pytest.raises(ClientsFailed, match="all 2 rounds of this run are done and none of them moved the model"):
        strategy.check_progress()
    strategy.participation.note_aggregated([1])  # one round did move it ...
    with pytest.raises(ClientsFailed, match="no evaluation reply was accepted in any of the run's 0 evaluation "
                                            "round"):
        strategy.check_progress()  # ... but no evaluation was ever accepted: the run has no results
    from fedmtl.results import RoundStats

    strategy.last_stats = RoundStats(2, {"left": {"mean": 0.5}}, {"left": "accuracy"})  # it has: a finished run
    strategy.check_progress()
    monkeypatch.setattr("fedmtl.results.newest_checkpoint_round", lambda run_dir: 2)
    assert failed_run_advice(tmp_path, 2).endswith(f"start it again (a resume has no round left to run), or add "
                                                   f"rounds: fedmtl run --resume {tmp_path} --set run.rounds=3")
    assert failed_run_advice(tmp_path, 5).endswith(f"continue with: fedmtl run --resume {tmp_path}")


def test_a_server_rule_that_raises_stops_the_run_in_one_line(tmp_path):
    from fedmtl.aggregation import Weighting, register
    from fedmtl.aggregation.registry import RULES
    from fedmtl.server.strategy import RuleFailed

    @register("raises-on-the-server")
    class Raises(Weighting):
        def compute(self, objectives):  # noqa: ANN001, ANN202
            return [0.5] * len(objectives)  # a list, not a tensor

    try:
        with pytest.raises(RuleFailed) as info:
            run(tmp_path, good, "server.weighting=raises-on-the-server")
    finally:
        del RULES._entries["raises-on-the-server"]
    text = str(info.value)
    assert len(text.splitlines()) == 1 and text.startswith("round 1: plan 'clients' with weighting")
    assert "TypeError: weighting 'raises-on-the-server' returned weights of type list, not a torch.Tensor" in text


@pytest.mark.parametrize(("sets", "key"), [
    (["server.weighting=keeps-a-lock"], "server.weighting"),
    (["server.plan=clients-then-tasks", "server.task-weighting=keeps-a-lock"], "server.task-weighting"),
])
@pytest.mark.parametrize("every", [1, 2])
def test_a_server_rule_whose_state_cannot_be_copied_stops_the_run_in_one_line(tmp_path, sets, key, every):
    """At a checkpoint (every round) or before the next round's aggregation (every other one):
    its state_dict's error used to escape as an 88-line traceback without an error line."""
    import threading

    from fedmtl.aggregation import Weighting, register
    from fedmtl.aggregation.registry import RULES
    from fedmtl.server.strategy import RuleFailed

    @register("keeps-a-lock")
    class KeepsALock(Weighting):
        state_attributes = ("cache",)

        def __init__(self, *args, **kwargs):  # noqa: ANN002, ANN003
            super().__init__(*args, **kwargs)
            self.cache = None  # copied when the config is checked

        def compute(self, objectives):  # noqa: ANN001, ANN202
            self.cache = threading.Lock()  # not any more
            return torch.ones(len(objectives), dtype=torch.float64) / len(objectives)

    try:
        with pytest.raises(RuleFailed) as info:
            run(tmp_path, good_parts if "task" in key else good, *sets, f"run.checkpoint-every={every}")
    finally:
        del RULES._entries["keeps-a-lock"]
    text = str(info.value)
    assert len(text.splitlines()) == 1 and text.startswith(f"round {'1' if every == 1 else '2'}: {key} = "
                                                           "'keeps-a-lock' failed: RuntimeError: weighting "
                                                           "'keeps-a-lock': its state attribute 'cache' cannot be "
                                                           "copied for checkpoints"), text


def test_rounds_skipped_for_rejected_replies_stop_the_run_naming_a_client_and_its_problem(tmp_path):
    """Before, the stop said only "(0 failed, 4 rejected)": no client, no reason."""
    def lying(msg, call):
        reply = good(msg, call)
        if msg.metadata.message_type == MessageType.TRAIN:
            reply.content[wire.METRICS][wire.NUM_EXAMPLES] = 1e30
        return reply

    with pytest.raises(ClientsFailed) as info:
        run(tmp_path, lying, "server.max-failed-rounds=1", "run.rounds=2")
    text = str(info.value)
    assert "(0 failed, 4 rejected)" in text
    assert "; first problem: client 0's update rejected: num-examples is 1e+30" in text


def test_too_many_failed_rounds_in_a_row_stop_the_run(tmp_path):
    with pytest.raises(ClientsFailed) as info:
        run(tmp_path, failed, "server.max-failed-rounds=2", "run.rounds=3")
    assert "round 2: 2 rounds in a row without enough valid replies (server.max-failed-rounds = 2)" in str(info.value)
    assert "first problem: client 0: client 0 is down" in str(info.value)
    rounds = pd.read_csv(tmp_path / "rounds.csv")
    assert list(rounds["skipped"]) == [1, 1] and list(rounds["failures"]) == [4, 4]


def test_lying_duplicate_and_missing_replies_are_counted(tmp_path):
    def script(msg, call):
        if msg.metadata.message_type != "train":
            return good(msg, call)
        if call.client == 0:
            return good(msg, call, client=3)  # claims to be another client
        if call.client == 1:
            return [good(msg, call), good(msg, call)]  # answers twice
        if call.client == 2:
            return None  # never answers
        return good(msg, call)

    _, _, rounds = run(tmp_path, script, "server.min-replies=1", "run.rounds=1")
    row = rounds.iloc[0]
    # client 0's reply is rejected, client 1's second answer ignored, client 2 failed: each
    # client asked counts once, by its first answer
    assert (row.sampled, row.replies, row.failures, row.rejected, row.aggregated) == (4, 3, 1, 1, 2)
    weights = pd.read_csv(tmp_path / "metrics.csv", dtype={"task": str})
    assert sorted(set(weights[weights.metric == "aggregation-weight"].client)) == [1, 3]


@pytest.mark.parametrize("error_first", [False, True])
def test_only_a_clients_first_answer_counts_an_error_after_a_reply_or_before_it(tmp_path, error_first):
    """Client 1 answers each message twice, with a reply and an error: the first answer is
    its answer (aggregated and evaluated, or failed), the second is ignored: it counts nothing
    (no reply, failure or rejection, in training or evaluation), so replies and failures add up
    to the clients asked."""
    def script(msg, call):
        if call.client != 1:
            return good(msg, call)
        answers = [good(msg, call), failed(msg, call)]
        return answers[::-1] if error_first else answers

    _, _, rounds = run(tmp_path, script, "server.min-replies=1", "run.rounds=1")
    row = rounds.iloc[0]
    counts = (row.sampled, row.replies, row.failures, row.rejected, row.aggregated, row.evaluated,
              row.evaluate_failures)
    assert counts == ((4, 3, 1, 0, 3, 3, 1) if error_first else (4, 4, 0, 0, 4, 4, 0))
    errors = tmp_path / "client-errors.log"
    assert errors.is_file() == error_first  # a client that answered is not also "down"
    participation = pd.read_csv(tmp_path / "participation.csv").set_index("client")
    assert participation.loc[1, "rounds_trained"] == (0 if error_first else 1)


@pytest.mark.parametrize("then_its_own", [False, True])
def test_an_answer_from_another_node_counts_nothing_and_the_client_s_own_answer_stands(tmp_path, then_its_own):
    """A reply and an error from node 999 to client 1's messages are ignored: with no answer of
    its own client 1 sent no reply (a failure), else its own answer counts as any client's."""
    def script(msg, call):
        if call.client != 1:
            return good(msg, call)
        stranger = [good(msg, call), failed(msg, call)]
        for answer in stranger:
            answer.metadata.__dict__["_src_node_id"] = 999
        return [*stranger, good(msg, call)] if then_its_own else stranger

    _, _, rounds = run(tmp_path, script, "server.min-replies=1", "run.rounds=1", "server.timeout=0.3")
    row = rounds.iloc[0]
    counts = (row.sampled, row.replies, row.failures, row.rejected, row.aggregated, row.evaluated,
              row.evaluate_failures)
    assert counts == ((4, 4, 0, 0, 4, 4, 0) if then_its_own else (4, 3, 1, 0, 3, 3, 1))
    participation = pd.read_csv(tmp_path / "participation.csv").set_index("client")
    assert participation.loc[1, "rounds_trained"] == (1 if then_its_own else 0)


def test_a_second_reply_places_nothing(tmp_path):
    def script(msg, call):
        if call.client != 1:
            return good(msg, call)
        second = good(msg, call)
        second.content[wire.PLACEMENT] = ConfigRecord({"host": "forged-host", "node": "x", "device": "cuda:7"})
        return [good(msg, call), second]

    run(tmp_path, script, "server.min-replies=1", "run.rounds=1")
    placement = pd.read_csv(tmp_path / "placement.csv")
    mine = placement[placement.client == 1]
    assert list(mine.stage) == ["train"]  # the first reply's placement, once
    assert "forged-host" not in set(placement.host)


# -- hostile replies: counted, never a crash ----------------------------------------------
def hostile(msg: Message, call: wire.TrainCall) -> Message:
    """Clients 0-2 send crafted replies (a float64 update Inf in float32, a list-valued metric,
    an array shorter than its shape); client 3 is honest."""
    reply = good(msg, call)
    if msg.metadata.message_type != MessageType.TRAIN or call.client == 3:
        return reply
    if call.client == 0:
        reply.content[wire.UPDATE] = ArrayRecord({k: torch.full(v.shape, 1e300, dtype=torch.float64)
                                                  for k, v in STATE.items()})
    elif call.client == 1:
        reply.content[wire.METRICS].__dict__["_data"]["train.left.loss"] = [1.0, 2.0]
    else:
        array = reply.content[wire.UPDATE]["w"]
        reply.content[wire.UPDATE]["w"] = type(array)(dtype=array.dtype, shape=array.shape, stype=array.stype,
                                                      data=array.data[:-4])
    return reply


def test_crafted_training_replies_are_rejected_and_counted(tmp_path):
    strategy, _, rounds = run(tmp_path, hostile, "server.min-replies=1")
    assert list(rounds["rejected"]) == [3, 3] and list(rounds["aggregated"]) == [1, 1]
    assert bool(torch.isfinite(strategy.state["w"]).all())
    weights = pd.read_csv(tmp_path / "metrics.csv", dtype={"task": str})
    assert set(weights[weights.metric == "aggregation-weight"].client) == {3}


def test_a_lying_example_count_does_not_buy_the_fedavg_weight(tmp_path):
    def script(msg, call):
        reply = good(msg, call)
        if msg.metadata.message_type == MessageType.TRAIN and call.client == 0:
            reply.content[wire.METRICS][wire.NUM_EXAMPLES] = 1e30
        return reply

    _, _, rounds = run(tmp_path, script, "server.min-replies=1", "run.rounds=1")
    assert rounds.iloc[0].rejected == 1 and rounds.iloc[0].aggregated == 3


def test_crafted_evaluation_replies_are_counted_and_the_statistics_stay_finite(tmp_path):
    def script(msg, call):
        reply = good(msg, call)
        if msg.metadata.message_type == MessageType.EVALUATE and call.client in (0, 1, 2):
            key, value = {0: ("test.left.accuracy", float("nan")), 1: (wire.NUM_EXAMPLES, float("nan")),
                          2: ("test.left.accuracy", 1e9)}[call.client]
            reply.content[wire.METRICS][key] = value
        return reply

    _, _, rounds = run(tmp_path, script, "run.rounds=1")
    row = rounds.iloc[0]
    assert (row.evaluate_failures, row.evaluated) == (3, 1)
    summary = pd.read_csv(tmp_path / "metrics.csv", dtype={"task": str})
    assert summary[summary.split == "test"].value.map(lambda v: v == v and abs(v) < 1e6).all()


def test_a_round_whose_new_model_is_not_finite_is_skipped_not_crashed(tmp_path):
    def script(msg, call):  # well-formed, finite in float32, but the server step overflows
        reply = good(msg, call)
        if msg.metadata.message_type == MessageType.TRAIN:
            reply.content[wire.UPDATE] = ArrayRecord({k: torch.full_like(v, 3e38) for k, v in STATE.items()})
        return reply

    strategy, _, rounds = run(tmp_path, script, "server.lr=10", "server.max-failed-rounds=0")
    assert list(rounds["skipped"]) == [1, 1] and "train_loss" not in rounds.columns
    assert torch.equal(strategy.state["w"], STATE["w"])
    with pytest.raises(ClientsFailed, match="none of the 2 round"):
        strategy.check_progress()


@pytest.mark.parametrize(("dtype", "value"), [(torch.int64, 1e30), (torch.int32, -2e10), (torch.float16, 4e5)])
def test_a_round_whose_new_model_does_not_fit_a_tensor_s_dtype_is_skipped(tmp_path, monkeypatch, dtype, value):
    """An update finite in float32 that moves a tensor outside its own dtype (an int64 BatchNorm
    count cast back would wrap to -2**63; float16 ends at 65504) skips the round, naming the
    tensor, as a model that is not finite does; the global model keeps its values (``value`` is
    client 0's, one of 4 updates averaged)."""
    state = {"w": torch.zeros(3), "n": torch.tensor(5, dtype=dtype)}
    monkeypatch.setattr(sys.modules[__name__], "STATE", state)

    def script(msg, call):
        reply = good(msg, call)
        if msg.metadata.message_type == MessageType.TRAIN and call.client == 0:
            reply.content[wire.UPDATE] = ArrayRecord({"w": torch.full((3,), 0.1),
                                                      "n": torch.tensor(value, dtype=torch.float32)})
        return reply

    # norm screening off: it would reject the long update before aggregation
    strategy, _, rounds = run(tmp_path, script, "run.rounds=1", "server.max-failed-rounds=0",
                              "server.norm-screening=0")
    assert list(rounds["skipped"]) == [1] and list(rounds["aggregated"]) == [0]
    assert strategy.state["n"].dtype == dtype and float(strategy.state["n"]) == 5
    # in range, the same tensor aggregates
    ok, _, rounds = run(tmp_path / "ok", lambda msg, call: good(msg, call), "run.rounds=1")
    assert list(rounds["skipped"]) == [0] and ok.state["n"].dtype == dtype


def test_every_accepted_training_reply_has_its_rows_screened_or_skipped(tmp_path):
    """participation.csv counts a round as trained when the reply was accepted, so metrics.csv
    has that reply's training rows (its loss, examples and heads chain) even when its update
    never entered the model: screened out by its length, or in a skipped round. Only the
    aggregation-weight rows are of aggregated updates."""
    def script(msg, call):  # client 3's update is 1,000 times the others': screened every round
        reply = good(msg, call)
        if msg.metadata.message_type == MessageType.TRAIN and call.client == 3:
            update = ArrayRecord({k: torch.full_like(v, 100.0) for k, v in STATE.items()})
            reply.content[wire.UPDATE] = update
        return reply

    run(tmp_path, script, "server.norm-screening=10")
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    train = metrics[metrics.split == "train"]
    participation = pd.read_csv(tmp_path / "participation.csv").set_index("client")
    for client in range(4):
        rounds = sorted(set(train[(train.client == client) & (train.metric == wire.HEADS_OUT)]["round"]))
        assert len(rounds) == participation.loc[client, "rounds_trained"] == 2, client
    weighted = set(train[train.metric == "aggregation-weight"].client)
    assert weighted == {0, 1, 2} and participation.loc[3, "rounds_aggregated"] == 0

    def skipped(msg, call):  # two of four fail: every round is skipped, the two replies still count
        if msg.metadata.message_type == MessageType.TRAIN and call.client in (0, 1):
            return failed(msg, call)
        return good(msg, call)

    out = tmp_path / "skipped"
    out.mkdir()
    run(out, skipped, "server.on-too-few=skip", "server.max-failed-rounds=0")
    train = pd.read_csv(out / "metrics.csv").query("split == 'train'")
    assert sorted(set(train[train.metric == wire.HEADS_OUT].client)) == [2, 3]
    assert "aggregation-weight" not in set(train.metric)


@pytest.mark.parametrize("times, max_examples, screened", [
    (20, 0, False),  # client 3 takes 2.4× the median client's steps: its bound is 24× the median length
    (30, 0, True),  # ... and no more
    (20, 100_000, True),  # a server that does not know the splits allows no client more than 10×
])
def test_the_norm_screen_allows_a_client_with_more_local_steps_a_longer_update(tmp_path, times, max_examples,
                                                                                 screened):
    """Power-law splits (3840, 2560, 1924 and 7676 training examples: 120, 80, 61 and 240 steps of
    32): an honest client with more data moves further; the server counts the steps from the
    splits it knows, never from what a client reports."""
    def script(msg, call):
        reply = good(msg, call)
        if msg.metadata.message_type == MessageType.TRAIN:
            scale = 0.1 * (times if call.client == 3 else 1)
            reply.content[wire.UPDATE] = ArrayRecord({k: torch.full_like(v, scale) for k, v in STATE.items()})
        return reply

    run(tmp_path, script, "data.partitioner=power-law", "server.norm-screening=10",
        f"server.max-examples={max_examples}")
    participation = pd.read_csv(tmp_path / "participation.csv").set_index("client")
    assert participation.loc[3, "rounds_trained"] == 2
    assert participation.loc[3, "rounds_aggregated"] == (0 if screened else 2)
    assert list(participation.loc[[0, 1, 2], "rounds_aggregated"]) == [2, 2, 2]


def test_work_allowances_grow_with_steps_beyond_the_median_only():
    from fedmtl.screening import norm_outliers, work_allowances

    assert work_allowances([120, 80, 61, 240]) == pytest.approx([1.2, 1.0, 1.0, 2.4])
    assert work_allowances([5, 5, 5]) == [1.0, 1.0, 1.0] and work_allowances([]) == []
    assert norm_outliers([1, 1, 1, 20], 10, allowances=[1, 1, 1, 2.4]) == [False] * 4
    assert norm_outliers([1, 1, 1, 20], 10) == [False, False, False, True]


def test_counts_agree_with_their_nouns():
    from fedmtl.one_line import counted

    assert counted(1, "seed") == "1 seed" and counted(0, "seed") == "0 seeds" and counted(2, "seed") == "2 seeds"
    assert counted(1, "usable reply", "usable replies") == "1 usable reply"
    assert counted(3, "usable reply", "usable replies") == "3 usable replies"


def test_a_skipped_round_with_one_usable_reply_says_reply(tmp_path, caplog):
    def script(msg, call):  # three of four fail: one usable reply
        if msg.metadata.message_type == MessageType.TRAIN and call.client != 3:
            return failed(msg, call)
        return good(msg, call)

    with caplog.at_level("WARNING"):
        run(tmp_path, script, "server.on-too-few=skip", "server.max-failed-rounds=0")
    assert "round 1 skipped: 1 usable reply < server.min-replies = 3 (3 failed, 0 rejected)" in caplog.text


def _resumed(tmp_path, script, *sets: str, after: int) -> FedMTLStrategy:
    """A run of ``script`` into ``tmp_path / 'whole'`` already happened; a fresh server resumes
    it from its checkpoint of round ``after`` into ``tmp_path / 'resumed'`` and runs the rest."""
    from fedmtl.results import load_checkpoint

    cfg = load_config(None, ["data.num-clients=4", "run.rounds=2", "server.fraction-train=1",
                             "server.fraction-evaluate=1", "server.min-replies=3", "server.timeout=0.3", *sets])
    checkpoint, _ = load_checkpoint(tmp_path / "whole", tmp_path / "whole" / "checkpoints" / f"round-{after}.pt")
    directory = ClientDirectory(cfg.data.num_clients)
    directory.infos = {100 + c: (c, cfg.data.num_clients) for c in range(cfg.data.num_clients)}
    directory.clients = {c: 100 + c for c in range(cfg.data.num_clients)}
    strategy = FedMTLStrategy(cfg, directory, RunRecorder(tmp_path / "resumed", cfg, dataset_tasks(cfg.data)),
                              Progress(cfg.run.rounds, enabled=False))
    strategy.restore(checkpoint)
    strategy.start(GRID(cfg.data.num_clients, script), ArrayRecord(strategy.state))  # type: ignore[arg-type]
    return strategy


def _late_failures(msg, call):  # every training reply of rounds 3 and 4 fails: both rounds are skipped
    if msg.metadata.message_type == MessageType.TRAIN and call.server_round >= 3:
        return failed(msg, call)
    return good(msg, call)


def test_a_resume_counts_the_rounds_skipped_in_a_row_before_it(tmp_path):
    """server.max-failed-rounds = 2 stops the run at round 4 (rounds 3 and 4 skipped); resumed
    after round 3, it stops there too: the checkpoint keeps the count."""
    sets = ("run.rounds=4", "server.on-too-few=skip", "server.max-failed-rounds=2")
    (tmp_path / "whole").mkdir()
    with pytest.raises(ClientsFailed, match="round 4: 2 rounds in a row"):
        run(tmp_path / "whole", _late_failures, *sets)
    with pytest.raises(ClientsFailed, match="round 4: 2 rounds in a row"):
        _resumed(tmp_path, _late_failures, *sets, after=3)


def test_a_resume_whose_rounds_are_all_skipped_ends_as_the_uninterrupted_run(tmp_path):
    """Rounds 1 and 2 moved the model, 3 and 4 were skipped: the run finishes (exit 0). Resumed
    after round 3, its one round is skipped, and it still finishes: the whole run moved the model."""
    sets = ("run.rounds=4", "server.on-too-few=skip", "server.max-failed-rounds=0")
    (tmp_path / "whole").mkdir()
    whole, _, _ = run(tmp_path / "whole", _late_failures, *sets)
    whole.check_progress()
    resumed = _resumed(tmp_path, _late_failures, *sets, after=3)
    assert resumed.tally.train_rounds == 1 and resumed.tally.aggregated_rounds == 0
    resumed.check_progress()
    assert torch.equal(resumed.state["w"], whole.state["w"])


def test_a_printed_resume_command_quotes_a_folder_with_spaces(tmp_path, monkeypatch):
    from fedmtl.cli import failed_run_advice

    folder = tmp_path / "runs" / "ü x"
    folder.mkdir(parents=True)
    run(folder, good)
    monkeypatch.setattr("fedmtl.results.newest_checkpoint_round", lambda run_dir: 1)
    assert failed_run_advice(folder, 5).endswith(f"continue with: fedmtl run --resume '{folder}'")
    plain = tmp_path / "plain"
    plain.mkdir()
    run(plain, good)
    assert failed_run_advice(plain, 5).endswith(f"continue with: fedmtl run --resume {plain}")


def test_a_rule_that_returns_numbers_that_are_not_finite_skips_the_round_naming_itself(tmp_path):
    """Extreme but accepted replies (an overflow, a loss of 30 under AFL) made a shipped rule
    return NaN, which stopped the whole run with RuleFailed (found by an adversarial pass): a
    numerical failure now skips the round, and the run stops only after
    server.max-failed-rounds of them in a row, naming the rule."""
    from fedmtl.aggregation import Weighting, register
    from fedmtl.aggregation.registry import RULES

    @register("nan-on-the-server")
    class NaNWeights(Weighting):
        """Returns NaN weights."""

        def compute(self, objectives):  # noqa: ANN001, ANN202
            return torch.full((len(objectives),), float("nan"), dtype=torch.float64)

    try:
        with pytest.raises(ClientsFailed) as info:
            run(tmp_path, good, "server.weighting=nan-on-the-server", "server.max-failed-rounds=2")
    finally:
        del RULES._entries["nan-on-the-server"]
    assert ("last round: weighting 'nan-on-the-server' returned weights that are not finite: [nan, nan, nan, nan] "
            "(plan 'clients', weighting 'nan-on-the-server')") in str(info.value)
    assert list(pd.read_csv(tmp_path / "rounds.csv")["skipped"]) == [1, 1]


@pytest.mark.parametrize("plan", ["clients-then-tasks", "tasks-then-clients"])
def test_a_failing_task_weighting_is_named_not_the_client_weighting(tmp_path, plan):
    """A two-level plan's task weighting that raised, or whose weights overflowed, was blamed on
    server.weighting ('fedavg' failed: ValueError: boom in my rule; 'fedavg': ... diverged)."""
    from fedmtl.aggregation import Weighting, register
    from fedmtl.aggregation.registry import RULES
    from fedmtl.server.strategy import RuleFailed

    @register("raises-boom")
    class Raises(Weighting):
        def compute(self, objectives):  # noqa: ANN001, ANN202
            raise ValueError("boom in my rule")

    @register("huge-weights")
    class Huge(Weighting):
        def compute(self, objectives):  # noqa: ANN001, ANN202
            return torch.full((len(objectives),), 1e300, dtype=torch.float64)

    sets = [f"server.plan={plan}", "server.weighting=fedavg", "server.max-failed-rounds=2"]
    try:
        with pytest.raises(RuleFailed) as raised:
            run(tmp_path / "raises", good_parts, *sets, "server.task-weighting=raises-boom")
        with pytest.raises(ClientsFailed) as skipped:
            run(tmp_path / "huge", good_parts, *sets, "server.task-weighting=huge-weights")
    finally:
        del RULES._entries["raises-boom"], RULES._entries["huge-weights"]
    assert str(raised.value) == (f"round 1: plan '{plan}' with task-weighting 'raises-boom' failed: ValueError: "
                                 "boom in my rule")
    assert (f"last round: weighting 'huge-weights' combined finite rows into a direction that is not finite (NaN or "
            f"Inf) (plan '{plan}', task-weighting 'huge-weights')") in str(skipped.value), str(skipped.value)


@pytest.mark.parametrize("weighting", ["fedmgda+", "pcgrad"])
def test_an_update_of_subnormal_numbers_does_not_make_a_rule_skip_the_round(tmp_path, weighting):
    """One client's update of 1e-44 (finite, accepted: its squared norm underflows to 0) made
    FedMGDA+ and PCGrad return NaN every round and FedFV stop the run (found by an adversarial
    pass): the server reads subnormal entries as 0."""
    from server.updates import without_subnormals

    def script(msg, call):
        reply = good(msg, call)
        if msg.metadata.message_type == MessageType.TRAIN and call.client == 3:
            reply.content[wire.UPDATE] = ArrayRecord({k: torch.full_like(v, 1e-44) for k, v in STATE.items()})
        return reply

    _, _, rounds = run(tmp_path, script, f"server.weighting={weighting}")
    assert list(rounds["aggregated"]) == [4, 4] and list(rounds["skipped"]) == [0, 0]
    tiny = torch.tensor([1e-44, -1e-44, 1.5e-38, 0.0, -2.0], dtype=torch.float32)
    assert without_subnormals(tiny).tolist() == [0.0, 0.0, tiny[2].item(), 0.0, -2.0]
