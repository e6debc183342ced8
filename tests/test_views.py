"""Both views measured (the personal model under ``test``, the global model under ``test-global``)
and each client's participation recorded: replies, the round loop, checkpoint/resume, the run
folder and ``fedmtl report``; one short real simulation checks ``participation.csv`` against the
training the run logged (in-process, ``engine.backend = "inprocess"``: the records, not the
engine, are the subject)."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import MessageType

from fedmtl import protocol as wire
from fedmtl.data import dataset_tasks
from fedmtl.progress import Progress
from fedmtl.results import (
    GLOBAL_PREFIX,
    PARTICIPATION_COLUMNS,
    RoundStats,
    RunRecorder,
    load_checkpoint,
    load_run,
    participation_summary,
)
from fedmtl.screening import ClientLimits
from fedmtl.server.discovery import ClientDirectory
from fedmtl.server.replies import Evaluated, Rejected, read_evaluate_reply
from fedmtl.server.strategy import FedMTLStrategy
from fedmtl.validation import load_config
from tests.helpers import is_png
from tests.test_round_loop import STATE, FakeGrid, failed, good

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def task_identity():
    """Messages need the process's task identity (the Flower runtime sets it)."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    yield


def evaluate_message(client: int) -> Message:
    call = ConfigRecord(wire.Call(3, client=client).values())
    msg = Message(RecordDict({wire.CALL: call}), dst_node_id=100 + client, message_type=MessageType.EVALUATE)
    msg.metadata.__dict__["_message_id"] = f"message-{client}"
    return msg


def evaluate_reply(client: int, **metrics: float) -> Message:
    values = {wire.PARTITION_ID: client, wire.NUM_EXAMPLES: 20, "test.left.accuracy": 0.5, "test.left.loss": 1.5}
    values.update({k.replace("__", "."): v for k, v in metrics.items()})
    return Message(RecordDict({wire.METRICS: MetricRecord(values)}), reply_to=evaluate_message(client))


# -- replies ------------------------------------------------------------------------------
def test_an_evaluation_reply_may_carry_the_global_view_beside_the_personal_one():
    reply = evaluate_reply(1, **{"test-global__left__accuracy": 0.25, "test-global__left__loss": 2.0})
    outcome = read_evaluate_reply(reply, 1, lambda c: ClientLimits(frozenset({"left"}), 0, 20))
    assert outcome == Evaluated(1, {"left": {"accuracy": 0.5, "loss": 1.5}}, 20,
                                {"left": {"accuracy": 0.25, "loss": 2.0}})
    # a one-model reply: no global view
    assert read_evaluate_reply(evaluate_reply(1), 1).global_per_task == {}


@pytest.mark.parametrize(("metrics", "problem"), [
    # bounded as the test split is
    ({"test-global__left__accuracy": 1.5}, "metric 'test-global.left.accuracy' is 1.5, outside [0, 1]"),
    ({"test-global__left__loss": -1.0}, "metric 'test-global.left.loss' is -1, outside [0, 10000]"),
    ({"test-global__left__count-colour-0": 21.0}, "metric 'test-global.left.count-colour-0' is 21, outside [0, 20]"),
    ({"test-global__left__magic": 0.1}, "unexpected metric 'test-global.left.magic'"),
    # of the client's own tasks only
    ({"test-global__right__accuracy": 0.5}, "metric 'test-global.right.accuracy' of task 'right', which the client"
                                            " does not hold"),
    # other splits are still unknown
    ({"test-local__left__accuracy": 0.5}, "unexpected metric 'test-local.left.accuracy'"),
    ({"test-global__left": 0.5}, "unexpected metric 'test-global.left'"),
])
def test_a_global_view_is_bounded_like_the_test_split(metrics, problem):
    limits = lambda c: ClientLimits(frozenset({"left"}), 0, 20)  # noqa: E731
    assert read_evaluate_reply(evaluate_reply(1, **metrics), 1, limits) == Rejected(1, problem)


def test_a_global_view_alone_is_no_evaluation():
    values = {wire.PARTITION_ID: 1, wire.NUM_EXAMPLES: 20, "test-global.left.accuracy": 0.5}
    reply = Message(RecordDict({wire.METRICS: MetricRecord(values)}), reply_to=evaluate_message(1))
    assert read_evaluate_reply(reply, 1) == Rejected(1, "no test metrics")


# -- the round loop, in process ---------------------------------------------------------
def with_global_view(msg: Message, call: wire.TrainCall) -> Message:
    """Well-formed replies; evaluations also carry the global model's metrics."""
    reply = good(msg, call)
    if msg.metadata.message_type == MessageType.EVALUATE:
        reply.content[wire.METRICS]["test-global.left.accuracy"] = 0.1 * (call.client + 1)
        reply.content[wire.METRICS]["test-global.right.accuracy"] = 0.75
        reply.content[wire.METRICS]["test-global.left.loss"] = 1.0
        reply.content[wire.METRICS]["test-global.right.loss"] = 1.0
    return reply


def strategy_for(folder: Path, *sets: str, resume_round: int | None = None) -> FedMTLStrategy:
    cfg = load_config(None, ["data.num-clients=4", "run.rounds=2", "server.fraction-train=1",
                             "server.fraction-evaluate=1", "server.min-replies=1", *sets])
    directory = ClientDirectory(cfg.data.num_clients)
    directory.infos = {100 + c: (c, cfg.data.num_clients) for c in range(cfg.data.num_clients)}
    directory.clients = {c: 100 + c for c in range(cfg.data.num_clients)}
    recorder = RunRecorder(folder, cfg, dataset_tasks(cfg.data), resume_round=resume_round)
    return FedMTLStrategy(cfg, directory, recorder, Progress(cfg.run.rounds, enabled=False))


def test_the_global_views_statistics_are_recorded_beside_the_personal_ones(tmp_path):
    strategy = strategy_for(tmp_path, "personalization.method=fedbabu")  # a method with a global view
    strategy.start(FakeGrid(4, with_global_view), ArrayRecord(STATE))  # type: ignore[arg-type]
    metrics = pd.read_csv(tmp_path / "metrics.csv", dtype={"task": str})
    view = metrics[metrics.split == "test-global"]
    assert len(view) == 2 * 4 * 2 * 2  # rounds × clients × tasks × (accuracy, loss)
    left = view[(view["round"] == 2) & (view.task == "left") & (view.metric == "accuracy")].sort_values("client")
    assert list(left.value) == pytest.approx([0.1, 0.2, 0.3, 0.4])
    test = metrics[metrics.split == "test"]
    assert set(test[(test.task != "all") & (test.metric == "accuracy")].value) == {0.5, 0.25}  # the personal model's

    rounds = pd.read_csv(tmp_path / "rounds.csv")
    personal = [c for c in rounds.columns if c.startswith(("left.", "right.", "overall."))]
    assert [c for c in rounds.columns if c.startswith(GLOBAL_PREFIX)] == [GLOBAL_PREFIX + c for c in personal]
    last = rounds.iloc[-1]
    assert last["left.accuracy.mean"] == 0.5 and last["global_left.accuracy.mean"] == pytest.approx(0.25)
    assert last["global_left.accuracy.worst"] == pytest.approx(0.1)
    assert last["global_right.accuracy.jain"] == pytest.approx(1.0)
    assert last["global_overall.accuracy.mean"] == pytest.approx((0.25 + 0.75) / 2)

    # the checkpoint keeps the global view's statistics, and a resume reads them back
    checkpoint, _ = load_checkpoint(tmp_path)
    restored = RoundStats.from_dict(checkpoint["last_stats"])
    assert restored == strategy.last_stats and restored.global_view is not None
    summary = strategy.recorder.finish(strategy.last_stats)
    assert summary["global"]["final"]["left"]["mean"] == pytest.approx(0.25)
    assert summary["global"]["final"]["left"]["metric"] == "accuracy"
    assert summary["final"]["left"]["mean"] == 0.5
    assert json.loads((tmp_path / "summary.json").read_text())["global"]["overall"]["metric"] == "accuracy"
    assert is_png(tmp_path / "plots" / "accuracy.png") and is_png(tmp_path / "plots" / "final_distribution.png")


def test_a_run_without_a_global_view_has_no_global_columns(tmp_path):
    strategy = strategy_for(tmp_path)
    strategy.start(FakeGrid(4, good), ArrayRecord(STATE))  # type: ignore[arg-type]
    rounds = pd.read_csv(tmp_path / "rounds.csv")
    assert not [c for c in rounds.columns if "global" in c]
    metrics = pd.read_csv(tmp_path / "metrics.csv", dtype={"task": str})
    assert set(metrics.split) == {"train", "test"}
    summary = strategy.recorder.finish(strategy.last_stats)
    assert "global" not in summary and strategy.last_stats.global_view is None


def participation_script(msg: Message, call: wire.TrainCall) -> Message | None:
    """Client 1's training replies are malformed (rejected), client 2 never answers training."""
    if msg.metadata.message_type == MessageType.TRAIN and call.client == 1:
        reply = good(msg, call)
        reply.content[wire.METRICS]["train.left.loss"] = -1.0
        return reply
    if msg.metadata.message_type == MessageType.TRAIN and call.client == 2:
        return failed(msg, call)
    return good(msg, call)


def test_participation_counts_the_rounds_each_clients_training_was_accepted(tmp_path):
    strategy = strategy_for(tmp_path, "run.rounds=5", "server.fraction-train=0.5", "data.num-clients=6")
    grid = FakeGrid(6, participation_script)
    strategy.start(grid, ArrayRecord(STATE))  # type: ignore[arg-type]
    table = pd.read_csv(tmp_path / "participation.csv", dtype={"last_round": "Int64"})
    assert list(table.columns) == PARTICIPATION_COLUMNS and list(table.client) == list(range(6))
    asked: dict[int, list[int]] = {}
    rounds = [r for r in range(1, 6) for _ in range(3)]  # 3 of 6 clients a round, no retries
    for (_, _, client), server_round in zip([s for s in grid.sent if s[0] == MessageType.TRAIN], rounds,
                                               strict=True):
        asked.setdefault(client, []).append(server_round)
    for row in table.itertuples():
        expected = [] if row.client in (1, 2) else asked.get(row.client, [])
        assert row.rounds_trained == len(expected) == row.rounds_aggregated
        assert (None if pd.isna(row.last_round) else row.last_round) == (max(expected) if expected else None)
    assert table.set_index("client").loc[[1, 2], "rounds_trained"].tolist() == [0, 0]
    # the record equals what metrics.csv logged of the aggregated training
    metrics = pd.read_csv(tmp_path / "metrics.csv", dtype={"task": str})
    logged = metrics[(metrics.split == "train") & (metrics.metric == wire.HEADS_OUT)].groupby("client").size()
    assert {c: n for c, n in logged.items()} == {r.client: r.rounds_aggregated for r in table.itertuples()
                                                 if r.rounds_aggregated}
    summary = strategy.recorder.finish(strategy.last_stats)["participation"]
    never = sorted(int(c) for c in table.client[table.rounds_trained == 0])
    assert summary["clients"] == 6 and summary["never_trained"] == len(never) >= 2
    assert summary["evaluated"] == 6 and summary["evaluated_never_trained_clients"] == never
    assert summary["rounds_trained"]["min"] == 0


def test_each_evaluation_records_participation_and_the_statistics_over_trained_clients(tmp_path, capsys):
    strategy = strategy_for(tmp_path, "run.rounds=5", "server.fraction-train=0.5", "data.num-clients=6")
    strategy.progress.enabled = True
    strategy.start(FakeGrid(6, participation_script), ArrayRecord(STATE))  # type: ignore[arg-type]
    metrics = pd.read_csv(tmp_path / "metrics.csv", dtype={"task": str})
    trained = metrics[(metrics.split == "train") & (metrics.metric == wire.HEADS_OUT)]
    rounds = pd.read_csv(tmp_path / "rounds.csv")
    for server_round in range(1, 6):
        # metrics.csv: per evaluated client, its rounds trained and last round trained so far
        rows = metrics[(metrics["round"] == server_round) & (metrics.task == "all") & (metrics.split == "test")]
        logged = rows.pivot(index="client", columns="metric", values="value")
        upto = trained[trained["round"] <= server_round].groupby("client")["round"]
        expected_rounds = upto.size().reindex(logged.index, fill_value=0)
        expected_last = upto.max().reindex(logged.index, fill_value=0)
        assert logged["rounds-trained"].tolist() == expected_rounds.tolist()
        assert logged["last-trained-round"].tolist() == expected_last.tolist()
        # rounds.csv: how many evaluated clients never trained, and the statistics over the others
        row = rounds[rounds["round"] == server_round].iloc[0]
        never = int((expected_rounds == 0).sum())
        assert row["evaluated_never_trained"] == never
        test = metrics[(metrics["round"] == server_round) & (metrics.split == "test") & (metrics.task == "left")
                       & (metrics.metric == "accuracy")].set_index("client")["value"]
        kept = test[expected_rounds.reindex(test.index) > 0]
        if len(kept):
            assert row["trained_left.accuracy.mean"] == pytest.approx(kept.mean())
            assert row["trained_left.accuracy.worst"] == pytest.approx(kept.min())
    assert (rounds["evaluated_never_trained"] > 0).any()  # clients 1 and 2 never train
    summary = strategy.recorder.finish(strategy.last_stats)
    assert summary["trained_only"]["evaluated_never_trained"] == strategy.last_stats.never_trained >= 2
    assert summary["trained_only"]["final"]["left"]["metric"] == "accuracy"
    checkpoint, _ = load_checkpoint(tmp_path)
    assert RoundStats.from_dict(checkpoint["last_stats"]) == strategy.last_stats
    strategy.progress.final_table(strategy.last_stats)
    out = capsys.readouterr().out
    assert f"{strategy.last_stats.never_trained} of 6 evaluated clients never trained" in out
    assert "evaluated never trained" in out  # on the round lines too


def test_norm_screened_clients_trained_but_were_not_aggregated(tmp_path):
    def script(msg, call):
        reply = good(msg, call)
        if msg.metadata.message_type == MessageType.TRAIN and call.client == 3:
            reply.content[wire.UPDATE] = ArrayRecord({k: torch.full_like(v, 1e3) for k, v in STATE.items()})
        return reply

    strategy = strategy_for(tmp_path)
    strategy.start(FakeGrid(4, script), ArrayRecord(STATE))  # type: ignore[arg-type]
    table = pd.read_csv(tmp_path / "participation.csv").set_index("client")
    assert table.loc[3].tolist() == [2, 2, 0] and table.loc[0].tolist() == [2, 2, 2]


def test_participation_survives_a_checkpoint_and_resume_exactly(tmp_path):
    sets = ("run.rounds=5", "server.fraction-train=0.4", "data.num-clients=5")
    whole = strategy_for(tmp_path / "whole", *sets)
    whole.start(FakeGrid(5, participation_script), ArrayRecord(STATE))  # type: ignore[arg-type]

    def killed(msg, call):
        if call.server_round == 4:
            raise KeyboardInterrupt  # the process dies in round 4
        return participation_script(msg, call)

    folder = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        strategy_for(folder, *sets).start(FakeGrid(5, killed), ArrayRecord(STATE))  # type: ignore[arg-type]
    saved, _ = load_checkpoint(folder)
    assert saved["round"] == 3 and sum(saved["participation"]["trained"].values()) > 0
    for name, forget in (("resumed", False), ("resumed-old-checkpoint", True)):
        checkpoint = copy.deepcopy(saved)
        if forget:  # a checkpoint written before participation was recorded: rebuilt from metrics.csv
            del checkpoint["participation"]
        resumed = strategy_for(folder, *sets, resume_round=3)
        resumed.restore(checkpoint)
        resumed.start(FakeGrid(5, participation_script), ArrayRecord(resumed.state))  # type: ignore[arg-type]
        a, b = (pd.read_csv(f / "participation.csv") for f in (tmp_path / "whole", folder))
        pd.testing.assert_frame_equal(a, b, check_exact=True, obj=name)
        a, b = (pd.read_csv(f / "metrics.csv") for f in (tmp_path / "whole", folder))
        pd.testing.assert_frame_equal(a, b, check_exact=True, obj=name)


# -- results and the report on synthetic runs -------------------------------------------
def synthetic_run(folder: Path, seed: int, views: bool, weighting: str = "mean") -> Path:
    """A run folder written by the recorder itself: 10 clients, 2 tasks, 3 evaluated rounds;
    clients 0 and 1 never trained and are the worst; the global view 0.2 lower."""
    cfg = load_config(None, ["data.num-clients=10", f"run.seed={seed}", f"client.weighting={weighting}"])
    recorder = RunRecorder(folder, cfg, dataset_tasks(cfg.data))
    final = None
    for server_round in (1, 2, 3):
        per_client = {c: {t: {"accuracy": 0.3 + 0.05 * c + 0.02 * server_round + 0.01 * seed, "loss": 1.0}
                          for t in ("left", "right")} for c in range(10)}
        view = {c: {t: {"accuracy": v["accuracy"] - 0.2} for t, v in tasks.items()}
                for c, tasks in per_client.items()} if views else None
        final = recorder.record_evaluation(server_round, per_client, dict.fromkeys(range(10), 20), view)
        recorder.log_round({"round": server_round}, final)
    recorder.record_participation([(c, 0 if c < 2 else 3, None if c < 2 else 3, 0 if c < 2 else 3)
                                   for c in range(10)])
    recorder.finish(final)
    return folder


def test_the_summary_states_the_global_view_and_who_never_trained(tmp_path):
    run = load_run(synthetic_run(tmp_path / "r", 0, views=True))
    summary = run["summary"]
    assert summary["global"]["final"]["left"]["mean"] == pytest.approx(summary["final"]["left"]["mean"] - 0.2)
    assert summary["participation"] == {
        "clients": 10, "trained": 8, "never_trained": 2, "never_aggregated": 2,
        "rounds_trained": {"min": 0, "median": 3.0, "mean": 2.4, "max": 3},
        "evaluated": 10, "evaluated_never_trained": 2, "evaluated_never_trained_clients": [0, 1]}
    assert run["participation"]["last_round"].isna().tolist() == [True, True] + [False] * 8
    assert "global_left.accuracy.worst10" in run["rounds"].columns
    table = pd.DataFrame([(0, 0, None, 0), (1, 4, 4, 3)], columns=PARTICIPATION_COLUMNS)
    assert participation_summary(table)["rounds_trained"] == {"min": 0, "median": 2.0, "mean": 2.0, "max": 4}


def test_the_report_shows_both_views_and_marks_the_never_trained_worst_clients(tmp_path):
    from fedmtl.report import FIGURES, make_report

    for seed in (0, 1):
        synthetic_run(tmp_path / "runs" / "ditto" / f"seed-{seed}", seed, views=True, weighting="rlw")
        synthetic_run(tmp_path / "runs" / "fedper" / f"seed-{seed}", seed, views=False)
    written = make_report([tmp_path / "runs"], tmp_path / "report")
    text = written["report"].read_text()
    # labels name every differing key (the weighting, and its parameters as config.toml resolves them)
    rlw_label, mean_label = (next(c for c in written["configurations"] if f"weighting={w}" in c)
                             for w in ("rlw", "mean"))
    views = text.split("## Global model", 1)[1].split("##", 1)[0]
    from fedmtl.protocol import TEST_GLOBAL
    from fedmtl.training.methods import METHODS

    named = re.findall(r"`([a-z-]+)`", views.split(")", 1)[0])  # the methods the section says have two views
    assert named == sorted(n for n in METHODS.names() if TEST_GLOBAL in METHODS.get(n).views)
    assert "fedrep" not in named and {"apfl", "ditto"} <= set(named)
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in views.splitlines()
            if line.startswith("| client.")}
    assert set(rows) == {rlw_label, mean_label}
    # personal / global mean of task left, over 2 seeds: the global view is 20 points lower
    personal, global_ = rows[rlw_label][2].split(" / ")
    assert float(personal.split(" [")[0]) - float(global_.split(" [")[0]) == pytest.approx(20.0, abs=0.06)
    assert rows[mean_label][2].endswith("/ –")  # a one-model run has no global view
    who = text.split("## Participation", 1)[1].split("##", 1)[0]
    line = next(row for row in who.splitlines() if row.startswith(f"| {rlw_label} |"))
    cells = line.split(" | ")
    assert cells[2] == "2.0 [2.0, 2.0]"  # evaluated clients never trained (mean [95% interval] over seeds)
    assert cells[4] == "1.0 [1.0, 1.0] of 1"  # task left: its worst-10% client never trained
    tidy = pd.read_csv(tmp_path / "report" / "report.csv")
    rlw = tidy[tidy.configuration == rlw_label].set_index("statistic")["mean"]
    assert rlw["global_left.mean"] == pytest.approx(rlw["left.mean"] - 20.0)
    assert rlw["left.worst10_never_trained"] == 1.0
    assert rlw["left.trained_worst10"] > rlw["left.worst10"]  # the worst were the untrained
    assert math.isnan(tidy.set_index(["configuration", "statistic"]).loc[(mean_label, "global_left.mean"), "mean"])
    for name in FIGURES:
        assert is_png(tmp_path / "report" / name), name

    alone = make_report([tmp_path / "runs" / "fedper"], tmp_path / "report-fedper")["report"].read_text()
    assert "## Global model" not in alone and "## Participation" in alone


# -- a real simulation --------------------------------------------------------------------
@pytest.mark.slow
def test_a_simulation_records_who_trained(tmp_path):
    from tests.simulation_batch import run_batch

    out = tmp_path / "run"
    sets = ["data.num-clients=6", "server.fraction-train=0.3", "run.rounds=2", "server.min-replies=1",
            "data.partitioner=iid", "engine.backend=inprocess"]
    outcome = run_batch([{"config": str(ROOT / "configs/smoke.toml"), "overrides": sets, "out": str(out)}], tmp_path)
    assert outcome == {str(out): ""}, outcome
    run = load_run(out)
    table, metrics = run["participation"], run["metrics"]
    trained = metrics[(metrics.split == "train") & (metrics.metric == wire.HEADS_OUT)]
    per_client = trained.groupby("client")["round"].agg(["size", "max"])
    assert list(table.client) == list(range(6))
    for row in table.itertuples():
        if row.client in per_client.index:
            assert (row.rounds_trained, row.last_round) == tuple(per_client.loc[row.client]) and row.rounds_aggregated
        else:
            assert row.rounds_trained == row.rounds_aggregated == 0 and pd.isna(row.last_round)
    assert (table.rounds_trained == 0).sum() >= 2  # 2 of 6 clients a round for 2 rounds: some never trained
    assert int(run["rounds"]["sampled"].sum()) == 4 and table.rounds_trained.sum() == 4
    summary = run["summary"]["participation"]
    assert summary["never_trained"] == int((table.rounds_trained == 0).sum())
    assert summary["evaluated_never_trained_clients"] == sorted(table.client[table.rounds_trained == 0])
    assert not [c for c in run["rounds"].columns if "global" in c]


def test_round_stats_round_trip_through_a_dict():
    view = RoundStats(2, {"left": {"mean": 0.1}}, {"left": "accuracy"})
    stats = RoundStats(2, {"left": {"mean": 0.5}}, {"left": "accuracy"}, global_view=view)
    assert RoundStats.from_dict(dataclasses.asdict(stats)) == stats
    assert stats.columns() == {"left.accuracy.mean": 0.5, "global_left.accuracy.mean": 0.1}
    old = dataclasses.asdict(view)
    del old["global_view"]  # a checkpoint written before the global view existed
    assert RoundStats.from_dict(old) == view
