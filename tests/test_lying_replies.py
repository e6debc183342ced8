"""Replies of clients that lie or leave things out: each is refused in one line, and nothing
the server keeps (the model, its optimizer and weightings, the logs, the placement rows)
takes anything from it. The real strategy runs over a scripted grid (``tests/test_round_loop``).
"""

from __future__ import annotations

import itertools
import logging

import pandas as pd
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import Error, MessageType

from fedmtl import protocol as wire
from fedmtl.one_line import described, one_line
from fedmtl.screening import ClientLimits, evaluate_metrics_problem, norm_outliers
from fedmtl.server.discovery import ClientDirectory, FederationMismatch
from fedmtl.server.replies import Failed, Ignored, Rejected, placement_row, read_train_reply
from tests.plugin_support import restored_registries
from tests.test_round_loop import STATE, failed, good, run

registries = pytest.fixture(restored_registries, name="registries")


@pytest.fixture(autouse=True)
def task_identity():
    """Messages built outside a Flower run need a task identity (as in ``tests/test_round_loop``)."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1


def rejected_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]


def drop_metrics(reply: Message, unwanted) -> Message:  # noqa: ANN001 - a predicate on metric names
    """``reply`` without the metrics whose name ``unwanted`` holds true of."""
    metrics = reply.content[wire.METRICS]
    reply.content[wire.METRICS] = MetricRecord({k: v for k, v in metrics.items() if not unwanted(k)})
    return reply


def raw_metrics(values: dict[str, object]) -> MetricRecord:
    """A metric record holding ``values`` as they are (what a client's wire bytes can hold)."""
    record = MetricRecord()
    record.__dict__["_data"].update(values)
    return record


# -- evaluation replies ---------------------------------------------------------------------
def test_an_evaluation_without_its_tasks_main_metric_is_refused_and_the_run_goes_on(tmp_path, caplog):
    """It used to pass the range checks and crash the server's statistics (KeyError 'accuracy')."""
    def script(msg, call):
        reply = good(msg, call)
        if msg.metadata.message_type == MessageType.EVALUATE and call.client == 0:
            drop_metrics(reply, lambda name: name == "test.left.accuracy")
        if msg.metadata.message_type == MessageType.EVALUATE and call.client == 1:
            reply.content[wire.METRICS]["test.right.mse"] = 0.5  # a regression metric on a classification task
        return reply

    _, _, rounds = run(tmp_path, script)
    assert list(rounds["evaluated"]) == [2, 2] and list(rounds["evaluate_failures"]) == [2, 2]
    lines = rejected_lines(caplog)
    assert any("client 0: test.left: no 'accuracy', which a multiclass task reports" in line for line in lines)
    assert any("client 1: test.right: 'mse': not a metric of this task's kind" in line for line in lines)


def test_a_reply_that_leaves_out_one_of_its_tasks_is_refused_in_training_and_evaluation(tmp_path, caplog):
    def script(msg, call):
        reply = good(msg, call)
        return drop_metrics(reply, lambda name: ".right." in name) if call.client == 0 else reply

    _, _, rounds = run(tmp_path, script)
    assert list(rounds["aggregated"]) == [3, 3] and list(rounds["evaluated"]) == [3, 3]
    lines = rejected_lines(caplog)
    assert any("client 0: no train metrics of task 'right', which the client holds" in line for line in lines)
    assert any("client 0: no test metrics of task 'right', which the client holds" in line for line in lines)
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert 0 not in set(metrics.client)


BINARY = ClientLimits(frozenset({"t"}), 0, 0, (("t", "binary"),))


def honest_group_metrics(predictions: list[int], targets: list[int], sex: list[int]) -> dict[str, float]:
    """What an honest client reports of binary task ``t`` (``fedmtl.training.evaluate``)."""
    from fedmtl.group_fairness import group_metrics

    p, y = torch.tensor(predictions), torch.tensor(targets)
    metrics = {"accuracy": int((p == y).sum()) / len(p), "loss": 0.7,
               **group_metrics(p, y, {"sex": torch.tensor(sex)}, True, {"sex": ["f", "m"]})}
    return {f"test.t.{name}": value for name, value in metrics.items()}


# 6 f (2 positives), 4 m (1 positive): accuracies 4/6 and 3/4, TPRs 1/2 and 1, FPRs 1/4 and 1/3
GROUPED = honest_group_metrics([1, 0, 1, 0, 0, 0, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0, 1, 0, 0, 0],
                               [0, 0, 0, 0, 0, 0, 1, 1, 1, 1])


@pytest.mark.parametrize(("change", "problem"), [
    ({}, ""),
    ({"test.t.positives-sex-m": 5.0}, "positives-sex-m is 5, more than its count 4"),
    ({"test.t.count-sex-m": 3.0}, "the counts of attribute 'sex' add up to 9, not the 10 test examples"),
    ({"test.t.count-sex-m": 3.5, "test.t.count-sex-f": 6.5}, "a count of attribute 'sex' is not a whole number"),
    ({"test.t.accuracy-race-x": 0.5}, "'accuracy-race-x': not a metric of this task's kind"),
    ({"test.t.accuracy-gap-age": 0.5}, "'accuracy-gap-age': not a metric of this task's kind"),
    ({"test.t.loss": None}, "no 'loss', which a binary task reports"),
])
def test_group_metrics_must_be_a_set_the_task_could_have_produced(change, problem):
    values = {wire.PARTITION_ID: 0, wire.NUM_EXAMPLES: 10, **GROUPED, **change}
    values = {k: v for k, v in values.items() if v is not None}
    found = evaluate_metrics_problem(values, BINARY)
    assert (problem in found and found) if problem else found == ""


@pytest.mark.parametrize(("change", "problem"), [
    ({"test.t.accuracy": 0.123456789}, "accuracy 0.123456789 is not a whole number of correct answers out of the 10"),
    ({"test.t.accuracy": 0.6}, "attribute 'sex' answer 7 examples correctly, but the task's accuracy 0.6"),
    ({"test.t.accuracy-gap-sex": 1.0}, "accuracy-gap-sex is 1, not 0.0833333333333, the largest of its values' rates"),
    ({"test.t.demographic-parity-diff-sex": 1.0}, "demographic-parity-diff-sex is 1, not 0.166666666667"),
    ({"test.t.equalized-odds-diff-sex": 1.0}, "equalized-odds-diff-sex is 1, not 0.5"),
    ({"test.t.equalized-odds-diff-sex": None}, "equalized-odds-diff-sex is missing, not 0.5"),
    ({"test.t.positives-sex-f": 2.5}, "positives-sex-f is missing or not a whole number"),
    ({"test.t.accuracy-sex-f": 0.55}, "accuracy-sex-f 0.55 is not a whole number of examples out of 6"),
    ({"test.t.tpr-sex-m": None}, "no 'tpr-sex-m', which a value with examples reports"),
    ({"test.t.fpr-sex-m": 0.1}, "fpr-sex-m 0.1 is not a whole number of examples out of 3"),
    ({"test.t.top-class-rate": None}, "no 'top-class-rate', which a task with group counts reports"),
    ({"test.t.positive-rate-sex-m": None}, "no 'positive-rate-sex-m'"),
    ({"test.t.top-class-rate": 0.0}, "top-class-rate 0 is not the share of a most frequent prediction among 10"),
    ({"test.t.top-class-rate-sex-f": 0.0}, "top-class-rate-sex-f 0 is not a whole number of examples out of 6"),
])
def test_group_metrics_must_come_from_one_set_of_predictions(change, problem):
    """Each rate a client reports is a ratio of whole counts and each gap the spread of its
    values' rates: gaps, accuracies or counts that its own rates contradict are refused."""
    values = {wire.PARTITION_ID: 0, wire.NUM_EXAMPLES: 10, **GROUPED, **change}
    values = {k: v for k, v in values.items() if v is not None}
    found = evaluate_metrics_problem(values, BINARY)
    assert problem in found, found


def test_a_client_cannot_leave_itself_out_of_the_group_statistics_or_a_view():
    declared = ClientLimits(frozenset({"t"}), 0, 10, (("t", "binary"),), (("sex", ("f", "m")),), exact=True)
    honest = {wire.PARTITION_ID: 0, wire.NUM_EXAMPLES: 10, **GROUPED}
    assert evaluate_metrics_problem(honest, declared, ("test",)) == ""
    plain = {k: v for k, v in honest.items() if k.split(".")[-1] in ("accuracy", "loss") or "." not in k}
    assert evaluate_metrics_problem(plain, declared, ("test",)) == (
        "test.t: no group metrics of attribute 'sex', which the dataset's examples all have")
    # the server built the client's data: it evaluates on all of its 10 test examples
    assert evaluate_metrics_problem({**honest, wire.NUM_EXAMPLES: 1}, declared, ("test",)) == (
        "num-examples is 1, not the 10 test examples the client holds (a client evaluates on all of them)")
    # a method with two views: a reply without the global model's metrics hides the client from them
    assert evaluate_metrics_problem(honest, declared, ("test", "test-global")) == (
        "no 'test-global' metrics, which the run's personalization method reports")
    both = {**honest, **{k.replace("test.", "test-global.", 1): v for k, v in GROUPED.items()}}
    assert evaluate_metrics_problem(both, declared, ("test", "test-global")) == ""
    assert evaluate_metrics_problem(honest, declared) == ""  # the views not known: test-global may be absent


def test_binary_group_metrics_are_refused_on_a_multiclass_task():
    limits = ClientLimits(frozenset({"t"}), 0, 0, (("t", "multiclass"),))
    values = {wire.PARTITION_ID: 0, wire.NUM_EXAMPLES: 10, **GROUPED}
    assert "-sex-f': a metric of binary tasks only" in evaluate_metrics_problem(values, limits)


@pytest.mark.parametrize(("change", "problem"), [
    ({}, ""),
    ({"test.t.hit": -3.5}, ""),
    ({"test.t.hit": 1e101}, "metric 'test.t.hit' is 1e+101, outside [-1e+100, 1e+100]"),
    ({"test.t.loss": 2e4}, "metric 'test.t.loss' is 20000, outside [0, 10000]"),
    ({"test.t.miss": 0.5}, "unexpected metric 'test.t.miss'"),
    ({"test.t.hit": None}, "test.t: no 'hit', which a hits task reports"),
])
def test_a_plugin_kinds_own_metric_is_accepted_within_its_bound(registries, change, problem):
    """A metric a plugin's kind declares and no built-in range covers passes at any magnitude up
    to MAX_KIND_METRIC (it used to be refused: "unexpected metric 'test.t.hit'")."""
    from fedmtl.tasks import TASK_KINDS, TaskKind

    @TASK_KINDS.register("hits")
    class Hits(TaskKind):
        metrics = {"hit": True, "loss": False}

    limits = ClientLimits(frozenset({"t"}), 0, 10, (("t", "hits"),))
    values = {wire.PARTITION_ID: 0, wire.NUM_EXAMPLES: 10, "test.t.hit": 7.0, "test.t.loss": 0.5, **change}
    values = {k: v for k, v in values.items() if v is not None}
    assert evaluate_metrics_problem(values, limits, ("test",)) == problem


def test_made_up_metric_names_cannot_flood_the_results(tmp_path):
    def script(msg, call):
        reply = good(msg, call)
        if msg.metadata.message_type == MessageType.EVALUATE and call.client == 0:
            reply.content[wire.METRICS][f"test.left.accuracy-gap-{'y' * 300}"] = 0.5
        if msg.metadata.message_type == MessageType.EVALUATE and call.client == 1:
            for i in range(5000):
                reply.content[wire.METRICS][f"test.left.accuracy-gap-a{i}"] = 0.5
        return reply

    _, _, rounds = run(tmp_path, script)
    assert list(rounds["evaluated"]) == [2, 2]
    assert not [c for c in rounds.columns if "accuracy-gap" in c or len(c) > 64]


# -- training replies ---------------------------------------------------------------------
def test_a_reply_that_did_not_start_from_the_heads_the_call_named_is_refused(tmp_path, caplog):
    calls = []

    def script(msg, call):
        calls.append(call)
        reply = good(msg, call)
        if msg.metadata.message_type == MessageType.TRAIN and call.client == 0 and call.heads_in is not None:
            reply.content[wire.METRICS][wire.HEADS_IN] = 999.0  # heads replaced since, and it says so
        return reply

    _, _, rounds = run(tmp_path, script)
    assert any(c.heads_in == 0.2 for c in calls if c.client == 0)  # round 2 names round 1's heads-out
    assert list(rounds["aggregated"]) == [4, 3] and list(rounds["rejected"]) == [0, 1]
    assert any("heads-fingerprint-in 999.0, not the 0.2 the call named" in line for line in rejected_lines(caplog))
    train = pd.read_csv(tmp_path / "metrics.csv").query("split == 'train' and metric == 'heads-fingerprint-in'")
    assert 999.0 not in set(train.value)


def test_a_stale_reply_sent_again_is_rejected_every_round(tmp_path, caplog):
    """Client 0 answers every call with its round-1 reply. Its heads-fingerprint-in contradicts
    what round 2's call named: rejected, and the server keeps naming the heads it knew, so the
    same stale reply is rejected in round 3 too (it was accepted there before: the rejection
    made the server forget the heads and check nothing in the next call)."""
    first: dict[str, Message] = {}
    calls = []

    def script(msg, call):
        calls.append(call)
        reply = good(msg, call)
        if msg.metadata.message_type != MessageType.TRAIN or call.client != 0:
            return reply
        if "reply" not in first:
            first["reply"] = reply
            return reply
        stale = first["reply"]
        return Message(RecordDict({name: record for name, record in stale.content.items()}), reply_to=msg)

    _, _, rounds = run(tmp_path, script, "run.rounds=3")
    assert list(rounds["aggregated"]) == [4, 3, 3] and list(rounds["rejected"]) == [0, 1, 1]
    named = {(c.server_round, c.heads_in) for c in calls if c.client == 0 and c.server_round > 1}
    assert named == {(2, 0.2), (3, 0.2)}  # round 1's heads, named again in round 3 (not unchecked)
    train = pd.read_csv(tmp_path / "metrics.csv").query("split == 'train' and client == 0")
    assert sorted(train["round"].unique()) == [1]  # nothing of the stale replies is recorded
    participation = pd.read_csv(tmp_path / "participation.csv").set_index("client")
    assert participation.loc[0, "rounds_trained"] == 1


def with_losses_before(msg, call):
    reply = good(msg, call)
    if msg.metadata.message_type == MessageType.TRAIN and call.needs_losses_before:
        for task in ("left", "right"):
            reply.content[wire.METRICS][wire.metric_key(wire.TRAIN, task, wire.LOSS_BEFORE)] = 1.5
    return reply


def test_losses_before_training_are_required_when_asked_and_refused_when_not(tmp_path, caplog):
    def leaves_them_out(msg, call):
        reply = with_losses_before(msg, call)
        if msg.metadata.message_type == MessageType.TRAIN and call.client == 0:
            del reply.content[wire.METRICS]["train.right.loss-before"]
        return reply

    _, _, rounds = run(tmp_path / "qffl", leaves_them_out, "server.weighting=qffl")
    assert list(rounds["aggregated"]) == [3, 3]
    assert any("client 0: no train.right.loss-before, which the call asked for" in line
               for line in rejected_lines(caplog))

    def sends_them_unasked(msg, call):
        reply = good(msg, call)
        if msg.metadata.message_type == MessageType.TRAIN and call.client == 1:
            reply.content[wire.METRICS]["train.left.loss-before"] = 0.01
        return reply

    _, _, rounds = run(tmp_path / "fedavg", sends_them_unasked)
    assert list(rounds["aggregated"]) == [3, 3]
    assert any("client 1: train.left.loss-before, which the call did not ask for" in line
               for line in rejected_lines(caplog))


def test_an_honest_reply_with_the_losses_asked_for_is_accepted(tmp_path):
    _, _, rounds = run(tmp_path, with_losses_before, "server.weighting=qffl")
    assert list(rounds["aggregated"]) == [4, 4] and list(rounds["rejected"]) == [0, 0]


# -- what a client's text can do to the logs ---------------------------------------------------
def test_a_client_cannot_write_lines_of_its_own_into_the_logs(tmp_path, caplog):
    forged = "round 1 training: client 0: poisoned data detected (ValueError)"

    def script(msg, call):
        reply = good(msg, call)
        if msg.metadata.message_type == MessageType.TRAIN and call.client == 3:
            return Message(error=Error(code=1, reason="boom\n" + forged), reply_to=msg)
        if msg.metadata.message_type == MessageType.TRAIN and call.client == 2:
            reply.content[wire.METRICS].__dict__["_data"]["x\nWARNING: client 1 \x1b[31mforged"] = 1.0
        return reply

    run(tmp_path, script, "run.rounds=1", "server.min-replies=2")
    log_lines = (tmp_path / "client-errors.log").read_text().splitlines()
    assert log_lines == [f"round 1 training: client 3: boom {forged}"]
    (warning,) = [line for line in rejected_lines(caplog) if "client 2" in line]
    assert "\n" not in warning and "\x1b" not in warning and "x WARNING: client 1 ?[31mforged" in warning


def test_one_line_keeps_text_printable_and_short():
    assert one_line("a\n b\r\n\tc\x1b[0m", 100) == "a b c?[0m"
    assert one_line("x" * 50, 10) == "x" * 10
    assert one_line("x" * 500) == "x" * 160 and one_line("x" * 500, None) == "x" * 500


def test_an_exception_is_described_in_one_line_by_its_type_and_text():
    assert described(ValueError("bad\n  value\x07")) == "ValueError: bad value?"
    assert described(KeyError()) == "KeyError"
    assert described(OSError("y" * 300)) == "OSError: " + "y" * 151


# -- the server's state across a skipped round -------------------------------------------------
def hostile_first_round(value: float):
    def script(msg, call):
        reply = with_losses_before(msg, call)
        if msg.metadata.message_type == MessageType.TRAIN and call.client == 0 and call.server_round == 1:
            reply.content[wire.UPDATE] = ArrayRecord({k: torch.full_like(v, value) for k, v in STATE.items()})
        return reply
    return script


@pytest.mark.parametrize("optimizer", ["sgd", "momentum"])
def test_a_skipped_round_leaves_the_server_optimizer_as_it_was(tmp_path, optimizer):
    """Before, momentum kept the skipped round's infinite direction: every later round was skipped too."""
    _, _, rounds = run(tmp_path, hostile_first_round(3e38), "data.num-clients=2", "server.min-replies=1",
                       "run.rounds=4", "server.lr=10", f"server.optimizer={optimizer}", "server.max-failed-rounds=0",
                       "run.evaluate-every=100")
    assert list(rounds["skipped"]) == [1, 0, 0, 0]


def test_an_update_too_large_for_adams_moments_skips_the_round_and_leaves_them_finite(tmp_path):
    """1e20 is finite in float32, its square is not: Adam's second moment would stay infinite."""
    strategy, _, rounds = run(tmp_path, hostile_first_round(1e20), "data.num-clients=2", "server.min-replies=1",
                              "run.rounds=4", "server.optimizer=adam", "run.evaluate-every=100")
    assert list(rounds["skipped"]) == [1, 0, 0, 0]
    assert bool(torch.isfinite(strategy.optimizer.second).all()) and strategy.optimizer.finite()
    assert all(bool((v != 0).all()) for v in strategy.state.values())  # the honest rounds moved the model


def test_a_skipped_round_leaves_the_server_weighting_as_it_was(tmp_path):
    """AFL's λ moved in a round whose combined update was then found not finite, and skipped."""
    def weighting_state(strategy):
        return str({level: w.state_dict() for level, w in strategy.plan.weightings().items()})

    common = ("data.num-clients=2", "run.rounds=1", "server.weighting=afl", "server.lr=10", "run.evaluate-every=100",
              "server.max-failed-rounds=0")
    hostile, _, rounds = run(tmp_path / "hostile", hostile_first_round(3e38), *common, "server.min-replies=1")
    honest, _, _ = run(tmp_path / "honest", with_losses_before, *common, "server.min-replies=1")
    never, _, _ = run(tmp_path / "never", failed, *common, "server.min-replies=1")  # skipped before aggregating
    assert list(rounds["skipped"]) == [1]
    assert weighting_state(honest) != weighting_state(never)  # aggregating moves AFL's state
    assert weighting_state(hostile) == weighting_state(never)


# -- who a reply is from ----------------------------------------------------------------------
def test_an_error_from_another_node_is_not_counted_as_the_addressees_and_its_placement_is_not_kept():
    message = Message(RecordDict({wire.CALL: ConfigRecord({wire.CLIENT_ID: 2})}), dst_node_id=102,
                      message_type=MessageType.TRAIN)
    message.metadata.__dict__["_message_id"] = "m1"
    error = Message(error=Error(code=1, reason="down"), reply_to=message)
    error.metadata.__dict__["_src_node_id"] = 999
    outcome = read_train_reply(error, 2, dict(STATE), False, node=102)
    assert isinstance(outcome, Ignored) and not isinstance(outcome, Failed | Rejected)
    assert outcome.problem == "an error from node 999 to the message sent to client 2 on node 102"
    reply = Message(RecordDict({wire.METRICS: MetricRecord({wire.PARTITION_ID: 2}),
                                wire.PLACEMENT: ConfigRecord({"host": "impostor", "node": "", "device": "cpu"})}),
                    reply_to=message)
    reply.metadata.__dict__["_src_node_id"] = 999
    assert placement_row(reply, 2, 1, "train", node=102) is None
    reply.metadata.__dict__["_src_node_id"] = 102
    assert placement_row(reply, 2, 1, "train", node=102) == (1, 2, "train", "impostor", "", "cpu")


def test_the_superlinks_error_for_a_lost_node_is_the_addressees_failure():
    """Flower's SuperLink answers a message to a node it lost with an error of its own (source
    node 1): the client failed (counted in failures), it is no stranger's reply; a reply with
    content from the SuperLink's id, or a second answer, is ignored (it counts nothing)."""
    from flwr.common.constant import SUPERLINK_NODE_ID

    message = Message(RecordDict({wire.CALL: ConfigRecord({wire.CLIENT_ID: 2})}), dst_node_id=102,
                      message_type=MessageType.TRAIN)
    message.metadata.__dict__["_message_id"] = "m1"
    error = Message(error=Error(code=1, reason="node unavailable"), reply_to=message)
    error.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
    outcome = read_train_reply(error, 2, dict(STATE), False, node=102)
    assert isinstance(outcome, Failed) and outcome.client == 2
    assert outcome.reason.startswith("the SuperLink answered for its node 102: ")
    assert "node unavailable" in outcome.reason
    assert isinstance(read_train_reply(error, 2, dict(STATE), False, seen={2}, node=102), Ignored)
    content = Message(RecordDict({wire.METRICS: MetricRecord({wire.PARTITION_ID: 2})}), reply_to=message)
    content.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
    assert isinstance(read_train_reply(content, 2, dict(STATE), False, node=102), Ignored)


class QueryGrid:
    """Answers every discovery query with the partition id each node claims (``None``: the
    node never answers; the queries each node got are counted)."""

    def __init__(self, claims: dict[int, int | None]) -> None:
        self.claims, self.ids = claims, itertools.count()
        self.asked: dict[int, int] = {}

    def get_node_ids(self) -> list[int]:
        return list(self.claims)

    def send_and_receive(self, messages, timeout=None):  # noqa: ANN001, ANN201 - Flower's signature
        replies = []
        for m in messages:
            m.metadata.__dict__["_message_id"] = f"q{next(self.ids)}"
            self.asked[m.metadata.dst_node_id] = self.asked.get(m.metadata.dst_node_id, 0) + 1
            if self.claims[m.metadata.dst_node_id] is None:
                continue
            info = MetricRecord({wire.PARTITION_ID: self.claims[m.metadata.dst_node_id], wire.NUM_PARTITIONS: 2})
            reply = Message(RecordDict({wire.INFO: info}), reply_to=m)
            reply.metadata.__dict__["_src_node_id"] = m.metadata.dst_node_id
            replies.append(reply)
        return replies


def test_two_nodes_claiming_one_client_fail_start_up_and_are_both_ignored_during_a_run(caplog):
    with pytest.raises(FederationMismatch, match="nodes 17, 9000000000 all claim partition-id 0"):
        ClientDirectory(2).update(QueryGrid({9_000_000_000: 0, 17: 0, 42: 1}), 1.0, strict=True)
    directory = ClientDirectory(2)
    directory.update(QueryGrid({42: 1, 5: 0}), 1.0)
    with caplog.at_level(logging.WARNING, logger="fedmtl"):
        directory.update(QueryGrid({42: 1, 5: 0, 9_000_000_000: 0, 17: 0}), 1.0, strict=False)
    assert directory.clients == {0: 5, 1: 42} and directory.ignored == {17, 9_000_000_000}
    assert "all claim partition-id 0" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fedmtl"):
        assert directory.update(QueryGrid({42: 1, 77: 0}), 1.0, strict=False) == [0]  # node 5 gone: reconnected
    assert directory.clients == {0: 77, 1: 42} and not caplog.text


def test_a_node_that_never_answers_discovery_is_asked_once_and_named(caplog):
    """A silent node held up every later query (each round's, twice) by the whole timeout."""
    grid = QueryGrid({42: 1, 5: 0, 66: None})
    directory = ClientDirectory(2)
    with caplog.at_level(logging.WARNING, logger="fedmtl"):
        directory.update(grid, 1.0)  # start-up: the clients it needs are there
        for _ in range(3):
            directory.update(grid, 1.0, strict=False)  # the rounds' checks for reconnected nodes
    assert directory.clients == {0: 5, 1: 42} and directory.ignored == {66} and grid.asked[66] == 1
    assert "node 66 ignored: it did not answer client discovery within 1 s" in caplog.text


def test_a_second_node_claiming_a_client_during_start_up_fails_it_naming_both():
    """Duplicate partition ids are refused at start-up whatever the order the nodes connect in
    (a claim arriving in a later query was taken for a reconnection)."""
    directory = ClientDirectory(2)
    directory.update(QueryGrid({5: 0}), 1.0)  # node 5 connects first; the others later
    with pytest.raises(FederationMismatch, match="nodes 5 and 77 both claim partition-id 0 .the second connected"):
        directory.update(QueryGrid({5: 0, 77: 0, 42: 1}), 1.0)
    restarted = ClientDirectory(2)  # node 5 gone from the SuperLink's list: 77 is it, restarted
    restarted.update(QueryGrid({5: 0}), 1.0)
    restarted.update(QueryGrid({77: 0, 42: 1}), 1.0)
    assert restarted.clients == {0: 77, 1: 42}


def test_a_node_taking_over_a_client_whose_node_is_still_connected_is_a_warning(caplog):
    directory = ClientDirectory(2)
    directory.update(QueryGrid({42: 1, 5: 0}), 1.0)
    with caplog.at_level(logging.WARNING, logger="fedmtl"):
        assert directory.update(QueryGrid({42: 1, 5: 0, 77: 0}), 1.0, strict=False) == [0]
    assert directory.clients == {0: 77, 1: 42}
    assert ("client 0 is served by node 77 from now on; node 5, which served it, is still connected" in caplog.text)


def test_the_norm_screen_flags_nothing_when_most_replies_moved_nothing():
    assert norm_outliers([0.0, 0.0, 0.3], 10) == [False, False, False]
    assert norm_outliers([1.0, 1.0, 30.0], 10) == [False, False, True]


def test_raw_metric_records_with_odd_keys_are_one_line_problems():
    message = Message(RecordDict({wire.CALL: ConfigRecord({wire.CLIENT_ID: 1})}), dst_node_id=101,
                      message_type=MessageType.TRAIN)
    message.metadata.__dict__["_message_id"] = "m2"
    reply = Message(RecordDict({wire.METRICS: raw_metrics({wire.PARTITION_ID: 1, "a" * 500: 1.0})}),
                    reply_to=message)
    reply.metadata.__dict__["_src_node_id"] = 101
    outcome = read_train_reply(reply, 1, dict(STATE), False, node=101)
    assert isinstance(outcome, Rejected) and "longer than 200 characters" in outcome.problem
    assert len(outcome.problem) < 200


def test_task_parts_that_cancel_in_the_sum_are_screened_by_their_length_together():
    """A client whose task parts are +1e6·v and −1e6·v sends an update of ordinary length (their
    sum) that a plan weighting the parts unequally turns into a step of 1e5: the length of its
    parts together is screened too, and the client is refused."""
    from fedmtl.server.replies import Accepted
    from fedmtl.server.updates import screen_norms

    gen = torch.Generator().manual_seed(0)
    honest = {c: Accepted(c, {"left": 0.01 * torch.randn(50, generator=gen),
                              "right": 0.01 * torch.randn(50, generator=gen)}, {}) for c in range(5)}
    v = torch.randn(50, generator=gen)
    lying = dict(honest)
    lying[1] = Accepted(1, {"left": honest[1].rows["left"] + 1e6 * v, "right": honest[1].rows["right"] - 1e6 * v}, {})
    sums = [float(torch.linalg.vector_norm(sum(r.rows.values()))) for r in lying.values()]
    assert max(sums) < 10 * sorted(sums)[2]  # the sum alone passes the screen
    assert screen_norms(lying, 10.0) == [0, 2, 3, 4]
    assert screen_norms(honest, 10.0) == [0, 1, 2, 3, 4] and screen_norms(lying, 0.0) == [0, 1, 2, 3, 4]
    from fedmtl.aggregation.plans import WHOLE

    whole = {c: Accepted(c, {WHOLE: 0.01 * torch.randn(50, generator=gen)}, {}) for c in range(4)}
    whole[3] = Accepted(3, {WHOLE: 1e3 * v}, {})
    assert screen_norms(whole, 10.0) == [0, 1, 2]


def test_clients_holding_fewer_tasks_are_not_screened_for_their_larger_parts():
    """With 20 tasks, a client holding one sends that task's whole share (its part is about 20
    times a full client's part of the task); screened task by task against the full clients'
    parts, every one-task client was rejected every round. Its rows together are as long as a
    full client's update or longer by at most √(T/k)."""
    from fedmtl.server.replies import Accepted
    from fedmtl.server.updates import screen_norms

    gen = torch.Generator().manual_seed(1)
    tasks = [f"t{i}" for i in range(20)]
    gradient = {c: {t: torch.randn(200, generator=gen) for t in tasks} for c in range(12)}
    held = {c: tasks if c % 3 else [tasks[c % 20]] for c in range(12)}  # clients 0, 3, 6, 9 hold one task
    formed = {c: Accepted(c, {t: gradient[c][t] / len(held[c]) for t in held[c]}, {}) for c in range(12)}
    assert screen_norms(formed, 10.0) == list(range(12))


def test_the_norm_screen_names_the_clients_it_rejects(caplog):
    from fedmtl.server.rounds import count_screened

    with caplog.at_level(logging.WARNING, logger="fedmtl"):
        assert count_screened(3, [0, 1, 2, 7, 9], [0, 2, 9], 10.0) == 2
        assert count_screened(4, [0, 1, 2], [0, 1, 2], 10.0) == 0
    assert [r.getMessage() for r in caplog.records] == [
        "round 3: norm screening rejected the update of client(s) 1, 7: longer than 10 × the median "
        "(its update, or its task parts together; times its local steps over the median client's where it takes "
        "more; server.norm-screening)"]


def test_a_refusal_that_carries_a_placement_adds_no_placement_row(tmp_path):
    """A refusal (the client neither trained nor evaluated) that also carried a placement was
    counted as rejected, yet its made-up host was recorded in placement.csv and summary.json."""
    def script(msg, call):
        reply = good(msg, call)
        if msg.metadata.message_type == MessageType.TRAIN and call.client == 1:  # with its metrics too
            reply.content[wire.REFUSAL] = ConfigRecord({wire.REFUSAL_REASON: "not my heads"})
            reply.content[wire.PLACEMENT] = ConfigRecord({"host": "FORGED", "node": "", "device": "cpu"})
        return reply

    _, _, rounds = run(tmp_path, script, "run.rounds=1")
    assert list(rounds["rejected"]) == [1]
    placement = pd.read_csv(tmp_path / "placement.csv", keep_default_na=False)
    assert "FORGED" not in set(placement["host"])
    assert len(placement[placement["stage"] == "train"]) == 3


def test_a_client_whose_update_alone_is_rejected_counts_as_trained_not_aggregated(tmp_path):
    """A reply rejected for its update alone (not finite) while its metrics were usable: the
    client trained and saved its heads (the server's heads ledger knows them), yet
    participation.csv said it never trained, and the report counted it among the clients
    evaluated with heads they never trained."""
    def script(msg, call):
        reply = good(msg, call)
        if msg.metadata.message_type == MessageType.TRAIN and call.client == 1:
            reply.content[wire.UPDATE] = ArrayRecord({k: torch.full_like(v, float("nan")) for k, v in STATE.items()})
        return reply

    run(tmp_path, script)
    participation = pd.read_csv(tmp_path / "participation.csv", keep_default_na=False).set_index("client")
    assert participation.loc[1, "rounds_trained"] == 2 and participation.loc[1, "last_round"] == 2
    assert participation.loc[1, "rounds_aggregated"] == 0
    assert list(participation["rounds_aggregated"]) == [2, 0, 2, 2]


def test_a_client_that_saved_heads_in_an_attempt_and_failed_its_retry_counts_as_trained(tmp_path):
    """Trained in a round's first attempt (its update alone rejected, its heads saved), then
    asked again in the round's retry and failed: it trained that round all the same."""
    def script(msg, call):
        if msg.metadata.message_type == MessageType.TRAIN and call.client == 1 and call.server_round == 1:
            if call.attempt == 0:
                reply = good(msg, call)
                nan = {k: torch.full_like(v, float("nan")) for k, v in STATE.items()}
                reply.content[wire.UPDATE] = ArrayRecord(nan)
                return reply
            return failed(msg, call)
        return good(msg, call)

    run(tmp_path, script, "server.min-replies=4", "server.on-too-few=retry", "server.max-retries=1",
        "model.heads=personal")
    participation = pd.read_csv(tmp_path / "participation.csv", keep_default_na=False).set_index("client")
    assert participation.loc[1, "rounds_trained"] == 2 and participation.loc[1, "rounds_aggregated"] == 1

