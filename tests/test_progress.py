"""The terminal display says what it measures: the federated final table is the personalized
(`test`) view with the replies counted per round; the centralized baseline's is the pooled-data
model on each client's test split, with no replies (it has none). In-process, no Ray."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fedmtl.results import create_run_dir
from fedmtl.validation import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_the_centralized_baseline_prints_what_it_measures_and_no_replies(tmp_path, capsys):
    from fedmtl.training.centralized import run_centralized

    cfg = load_config(ROOT / "configs/synthetic.toml", ["run.mode=centralized", "run.rounds=1", "data.num-clients=2"])
    run_centralized(cfg, create_run_dir(cfg, tmp_path / "run"), quiet=False)
    out = capsys.readouterr().out
    assert "Pooled-data model: test metrics on each client's test split (round 1)" in out
    assert "Personalized" not in out
    assert "replies" not in out
    assert "round 1/1" in out


def test_a_federated_round_line_counts_replies_and_the_table_is_the_personalized_view(capsys):
    from fedmtl.progress import Progress
    from fedmtl.results import RoundStats

    stats = RoundStats(round=2, stats={"left": {"mean": 0.5, "wmean": 0.5, "std": 0.1, "worst": 0.4,
                                                "worst10": 0.4, "best": 0.6, "jain": 0.96}},
                       metric={"left": "accuracy"})
    progress = Progress(3)
    progress.round(stats, 1.0, {"aggregated": 4, "failures": 1})
    progress.final_table(stats)
    out = capsys.readouterr().out
    assert "replies 4 (1 failed)" in out
    assert "Personalized test metrics across clients (round 2)" in out
    # a skipped round aggregated nothing (rounds.csv: aggregated 0); the line counts its usable replies
    progress.round(stats, 1.0, {"replies": 3, "rejected": 1, "failures": 2, "aggregated": 0, "skipped": 1})
    assert "replies 2 (2 failed, 1 rejected, round skipped)" in capsys.readouterr().out


def test_a_method_with_a_global_model_shows_its_numbers_under_the_table(capsys):
    from fedmtl.progress import Progress
    from fedmtl.results import RoundStats

    def stats(mean: float, worst: float, view: RoundStats | None = None) -> RoundStats:
        return RoundStats(round=2, stats={"left": {"mean": mean, "wmean": mean, "std": 0.1, "worst": worst,
                                                   "worst10": worst, "best": 0.9, "jain": 0.96}},
                          metric={"left": "accuracy"}, global_view=view)

    Progress(3).final_table(stats(0.8, 0.6, view=stats(0.55, 0.25)))
    out = capsys.readouterr().out
    assert "global model (the same clients' test data, test-global): left mean 55.0% worst 25.0% worst 10% 25.0%" \
        in out
    Progress(3).final_table(stats(0.8, 0.6))
    out = capsys.readouterr().out
    assert "global model" not in out
    # round 2 of 3: the last round's evaluations were all rejected, and the run's numbers are round 2's
    assert "note: no evaluation after round 2 of 3 was accepted (see the warnings above): the table and " \
           "summary.json's final results are round 2's, not the final model's" in " ".join(out.split())
    Progress(2).final_table(stats(0.8, 0.6))
    assert "no evaluation after" not in capsys.readouterr().out


# -- the terminal of a run: header, bar or plain lines, client errors (#21) -----------------

ANSI = "\x1b["


def _plain_console():
    import io

    from rich.console import Console

    return Console(file=io.StringIO(), force_terminal=False, width=120)


def _stats(server_round: int):
    from fedmtl.results import RoundStats

    return RoundStats(round=server_round, stats={"left": {"mean": 0.5, "wmean": 0.5, "std": 0.1, "worst": 0.4,
                                                          "worst10": 0.4, "best": 0.6, "jain": 0.96}},
                      metric={"left": "accuracy"})


def test_without_a_terminal_the_header_and_every_round_are_plain_lines_with_an_eta(tmp_path):
    from fedmtl.progress import Progress, header_lines

    cfg = load_config(ROOT / "configs/smoke.toml", ["run.rounds=3", "run.evaluate-every=2"])
    console = _plain_console()
    progress = Progress(3, console=console)
    progress.header(header_lines(cfg, tmp_path / "run", ROOT / "configs/smoke.toml"))
    with progress.rounds():
        for r in (1, 2, 3):
            if r != 1:
                progress.round(_stats(r), float(r), {"aggregated": 2, "failures": 1 if r == 3 else 0})
            progress.advance(r, float(r), {"aggregated": 2}, evaluated=r != 1)
    progress.final_table(_stats(3))
    out = console.file.getvalue()
    assert ANSI not in out
    lines = out.splitlines()
    assert lines[0] == f"config    {ROOT / 'configs/smoke.toml'}" and lines[1] == f"run       {tmp_path / 'run'}"
    assert lines[2] == "engine    local Ray, all CPUs; 1 CPU per client"
    assert lines[3] == "clients   2 registered, 2 sampled per round (uniform)"
    assert lines[4] == "rounds    3, evaluated every 2; rule fedavg; client tasks mean; personalization fedper"
    assert lines[5].startswith("round 1/3  |  replies 2  |     1.0 s  |  ETA ")  # a round without evaluation
    assert lines[6].startswith("round 2/3  |  left: mean  50.0% worst  40.0%  |  replies 2  |     2.0 s  |  ETA ")
    assert lines[7].startswith("round 3/3  |  left") and "(1 failed)" in lines[7] and "ETA" not in lines[7]
    assert len([line for line in lines if line.startswith("round ")]) == 3


def test_on_a_terminal_a_bar_counts_the_rounds_and_no_color_drops_colours(monkeypatch):
    import io

    from rich.console import Console

    from fedmtl.progress import Progress, make_console

    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    progress = Progress(2, console=console)
    with progress.rounds():
        progress.advance(1, 1.0, {}, evaluated=False)
        progress.round(_stats(2), 2.0, {"aggregated": 2})
        progress.advance(2, 2.0, {}, evaluated=True)
    out = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", console.file.getvalue())
    assert "left: mean  50.0%" in out and "ETA" in out and "2/2" in out  # the evaluation line and the bar

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    coloured = make_console(Terminal())
    coloured.print("[red]failed[/red]")
    assert "failed" in coloured.file.getvalue() and "\x1b[31m" not in coloured.file.getvalue()


def test_a_failing_client_is_reported_once_per_distinct_error_and_every_error_logged(tmp_path):
    """Two clients fail the same way and one differently, in both rounds: the console gets one
    line per distinct error (with how many clients), the log file every error."""
    from flwr.app import ArrayRecord, Message
    from flwr.common import Error
    from flwr.supercore.task_identity import TaskIdentity

    from fedmtl.data import dataset_tasks
    from fedmtl.progress import CLIENT_ERRORS, ClientErrors, Progress
    from fedmtl.results import RunRecorder
    from fedmtl.server.discovery import ClientDirectory
    from fedmtl.server.strategy import FedMTLStrategy
    from tests.test_round_loop import STATE, FakeGrid, good

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1

    def script(msg, call):
        if msg.metadata.message_type != "train" or call.client == 3:
            return good(msg, call)
        reason = "ValueError: out of memory" if call.client in (0, 1) else "KeyError: 'left'"
        return Message(error=Error(code=1, reason=f"<class 'ClientAppException'>:<'Message: {reason}'>"),
                       reply_to=msg)

    cfg = load_config(None, ["data.num-clients=4", "run.rounds=2", "server.fraction-train=1",
                             "server.fraction-evaluate=1", "server.min-replies=1"])
    directory = ClientDirectory(cfg.data.num_clients)
    directory.infos = {100 + c: (c, cfg.data.num_clients) for c in range(cfg.data.num_clients)}
    directory.clients = {c: 100 + c for c in range(cfg.data.num_clients)}
    console = _plain_console()
    strategy = FedMTLStrategy(cfg, directory, RunRecorder(tmp_path, cfg, dataset_tasks(cfg.data)),
                              Progress(cfg.run.rounds, console=console))
    strategy.start(FakeGrid(cfg.data.num_clients, script), ArrayRecord(STATE))  # type: ignore[arg-type]
    shown = [line for line in console.file.getvalue().splitlines() if "failed" in line and "round" in line
             and "|" not in line]
    log = tmp_path / CLIENT_ERRORS
    assert shown == [
        f"round 1 training: 2 clients failed (0, 1): ValueError: out of memory (all client errors: {log})",
        f"round 1 training: a client failed (2): KeyError: 'left' (all client errors: {log})",
    ]
    assert log.read_text().splitlines() == [
        f"round {r} training: client {c}: {reason}" for r in (1, 2)
        for c, reason in ((0, "ValueError: out of memory"), (1, "ValueError: out of memory"), (2, "KeyError: 'left'"))]
    assert ClientErrors.kind("client 3 dropped out") == ClientErrors.kind("client 12 dropped  out")
    assert strategy.errors.summary() == (
        f"client errors: 6 in all, 2 distinct (4× ValueError: out of memory; 2× KeyError: 'left'); "
        f"details and tracebacks: {log}")


def test_the_engine_tracebacks_of_failed_clients_go_to_the_log_not_the_console(tmp_path, capsys):
    import logging

    from fedmtl.launch.simulation import quiet_flower

    flwr = logging.getLogger("flwr")
    record = logging.LogRecord("flwr", logging.ERROR, "/site-packages/flwr/vce/vce_api.py", 1,
                               "Traceback (most recent call last):\n  ValueError: boom", None, None)
    with quiet_flower(False, tmp_path / "client-errors.log"):
        flwr.handle(record)
    assert "boom" not in capsys.readouterr().err
    assert (tmp_path / "client-errors.log").read_text() == (
        "engine (vce_api): Traceback (most recent call last):\n      ValueError: boom\n")


def test_a_client_s_exception_text_cannot_forge_or_flood_the_error_log(tmp_path, capsys):
    """The engine's record of a failure holds the client's exception text verbatim: its lines
    'round 9 training: client 0: ...' were read back by a resume as fedmtl's own entries (a
    resume then wiped round 1's real entry, or counted errors of a client that never failed),
    its terminal escapes reached the log and, with -v, the console, and a 3,000,000-character
    message made a 9 MB log. Continuation lines are now indented, escapes written as escapes,
    and a record kept to MAX_ENGINE_RECORD characters."""
    import logging

    from fedmtl.launch.simulation import MAX_ENGINE_RECORD, quiet_flower
    from fedmtl.progress import ClientErrors

    path = tmp_path / "client-errors.log"
    errors = ClientErrors(path, lambda line: None)
    errors.report(1, "training", [(1, "ClientAppException: disk full round 9 training: client 0: forged")])
    forged = ("Traceback (most recent call last):\nClientAppException: disk full\nround 9 training: client 0: "
              "forged\nround 1 training: client 0: poisoned data detected\n\x1b[2J\x1b[31mred\nengine (x): y")
    flwr = logging.getLogger("flwr")
    for text in (forged, "x" * 3_000_000):
        record = logging.LogRecord("flwr", logging.ERROR, "/site-packages/flwr/vce/vce_api.py", 1, text, None, None)
        with quiet_flower(True, path):
            flwr.handle(record)
    log = path.read_text()
    assert "\x1b" not in log and "\x1b" not in capsys.readouterr().err and "\\x1b[31mred" in log
    starts = [line for line in log.splitlines() if not line.startswith("    ")]
    assert starts == ["round 1 training: client 1: ClientAppException: disk full round 9 training: client 0: forged",
                      "engine (vce_api): Traceback (most recent call last):",
                      "engine (vce_api): " + "x" * MAX_ENGINE_RECORD]
    assert len(log) < 2 * MAX_ENGINE_RECORD + 1000 and "(2980000 characters more, not kept)" in log
    with quiet_flower(False, tmp_path / "escapes.log"):  # 8 characters written for each: kept to the limit as written
        flwr.handle(logging.LogRecord("flwr", logging.ERROR, "/flwr/vce_api.py", 1, "\x00" * 100_000, None, None))
    assert len((tmp_path / "escapes.log").read_text()) < MAX_ENGINE_RECORD + 1000
    resumed = ClientErrors(path, lambda line: None)
    resumed.resume_after(1)  # round 1's entry kept; the engine's records after it are a later round's
    assert path.read_text() == log[:log.index("\nengine (vce_api): Traceback")] + "\n"
    assert resumed.summary().startswith("client errors: 1 in all, 1 distinct")


def test_the_sweep_eta_waits_for_a_finished_run_and_counts_the_runs_left():
    from fedmtl.progress import sweep_eta

    assert sweep_eta(0, 4, []) == "ETA after the first run"
    assert sweep_eta(1, 4, [40.0]) == "about 2 min 0 s left"
    assert sweep_eta(3, 4, [1.0, 2.0, 3.0]) == "about 2 s left"
    assert sweep_eta(4, 4, [1.0] * 4) == ""


def test_the_header_names_every_rule_with_the_parameters_the_config_sets():
    from fedmtl.progress import header_lines

    cfg = load_config(ROOT / "configs/smoke.toml", ["client.weighting=fairgrad", "client.params={alpha=2}",
                                                   "server.plan=tasks-then-clients", "server.task-weighting=mgda"])
    line = header_lines(cfg, Path("run"), None)[-1]
    assert line == ("rounds    2; rule tasks-then-clients: fedavg / mgda; client tasks fairgrad (alpha=2, "
                    "warm-start=true); personalization fedper")


def test_a_resume_cuts_the_client_error_log_after_its_checkpoint_and_counts_what_it_keeps(tmp_path):
    """The rounds after the checkpoint are redone: their errors were logged twice and the
    closing line counted only the resumed part (found by an adversarial pass)."""
    from fedmtl.progress import ClientErrors

    path = tmp_path / "client-errors.log"
    first = ClientErrors(path, lambda line: None)
    first.report(1, "training", [(1, "client 1 dropped out of this round (faults.dropout)")])
    path.write_text(path.read_text() + "engine (ray_backend): a traceback\n  of two lines\n")
    first.report(2, "training", [(0, "update not finite\nsecond line"), (None, "lost")])
    kept = path.read_text()
    path.write_text(kept + "engine (ray_backend): round 3's engine line\n")
    first.report(3, "training", [(2, "client 2 dropped out of this round (faults.dropout)")])
    resumed = ClientErrors(path, lambda line: None)
    resumed.resume_after(2)
    assert path.read_text() == kept
    assert resumed.counts == {"client # dropped out of this round (faults.dropout)": 1,
                              "update not finite second line": 1, "lost": 1}
    resumed.report(3, "training", [(2, "client 2 dropped out of this round (faults.dropout)")])
    assert resumed.summary().startswith("client errors: 4 in all, 3 distinct (2× e.g. client 1 dropped out")
    ClientErrors(path, lambda line: None).resume_after(0)
    assert path.read_text() == ""
    ClientErrors(tmp_path / "none.log", lambda line: None).resume_after(3)  # no log: nothing to cut
    assert not (tmp_path / "none.log").exists()


def test_a_rounds_console_line_counts_the_clients_of_every_attempt(tmp_path):
    """With ``server.on-too-few = retry`` the line was printed after the first attempt: it said
    2 clients failed where the round's record (and the log) counted 3 (found by an audit)."""
    from fedmtl.progress import ClientErrors

    shown: list[str] = []
    errors = ClientErrors(tmp_path / "client-errors.log", shown.append)
    dropped = "client {} dropped out of this round (faults.dropout)"
    errors.report(1, "training", [(0, dropped.format(0)), (4, dropped.format(4))])
    errors.report(1, "training", [(6, dropped.format(6))])  # the retry
    assert shown == []  # the stage is not over
    errors.flush()
    log = tmp_path / "client-errors.log"
    assert shown == [f"round 1 training: 3 clients failed (0, 4, 6): client 0 dropped out of this round "
                     f"(faults.dropout) (all client errors: {log})"]
    errors.report(1, "evaluation", [(2, "KeyError: 'left'"), (5, dropped.format(5))])
    errors.report(2, "training", [(1, dropped.format(1))])
    errors.flush()
    assert shown[1:] == [f"round 1 evaluation: a client failed (2): KeyError: 'left' (all client errors: {log})"]
    assert len(log.read_text().splitlines()) == 6
    assert errors.summary().startswith("client errors: 6 in all, 2 distinct (5× e.g. client 0 dropped out")


@pytest.mark.parametrize("width", [40, 80, 120])
def test_the_final_table_never_cuts_a_number_on_a_narrow_terminal(width):
    """On an 80-column terminal the table showed ``0.…`` for a worst-10% and ``0.85…`` for a
    Jain index (found by an audit): a table that does not fit is printed as one line per task."""
    import io

    from rich.console import Console

    from fedmtl.progress import Progress
    from fedmtl.results import RoundStats

    stats = RoundStats(round=2, stats={"accuracy-task": {"mean": 0.487, "wmean": 0.4891, "std": 0.101, "worst": 0.0,
                                                         "worst10": 0.0, "best": 0.991, "jain": 0.857312}},
                       metric={"accuracy-task": "accuracy"})
    console = Console(file=io.StringIO(), force_terminal=True, width=width, color_system=None)
    Progress(2, console=console).final_table(stats)
    out = console.file.getvalue()
    assert "…" not in out
    if width == 120:
        assert "│ 0.8573 │" in out and "48.9% │" in out
    else:
        assert out.splitlines() == [
            "Personalized test metrics across clients (round 2)",
            "accuracy-task accuracy: mean 48.7%, weighted mean 48.9%, std 10.1 pp, worst 0.0%, worst 10% 0.0%, "
            "best 99.1%, Jain 0.8573"]


def test_the_header_never_says_more_clients_at_a_time_than_there_are(tmp_path):
    from fedmtl.progress import header_lines

    for clients, expected in ((1, "1 client at a time"), (2, "2 clients at a time")):
        cfg = load_config(ROOT / "configs/smoke.toml", ["engine.backend=inprocess", "engine.max-concurrent-clients=4",
                                                       f"data.num-clients={clients}"])
        engine = next(line for line in header_lines(cfg, tmp_path, None) if line.startswith("engine"))
        assert engine.startswith(f"engine    in this process, {expected};"), engine


def test_a_client_that_failed_in_two_attempts_of_a_stage_is_named_once():
    """A client that dropped out in a round's first attempt and again in its retry was shown as
    '2 clients failed (0, 0)'."""
    from fedmtl.progress import ClientErrors

    shown: list[str] = []
    errors = ClientErrors(Path("/nonexistent/client-errors.log"), shown.append)
    dropped = "client 0 dropped out of this round (faults.dropout)"
    errors.report(1, "training", [(0, dropped)])
    errors.report(1, "training", [(0, dropped), (None, "no reply")])  # the retry
    errors.flush()
    assert shown[0].startswith(f"round 1 training: 2 failures of 1 client (0): {dropped}")
    assert shown[1].startswith("round 1 training: a client failed: no reply")

