"""A resume finds the run's tables whole and in agreement with its checkpoint, or refuses in
one line before writing anything (``fedmtl/run_tables.py``); one process at a time writes a
run folder (``fedmtl/folder_lock.py``)."""

from __future__ import annotations

import pytest

from fedmtl.folder_lock import RunFolderBusy, holding
from fedmtl.run_tables import table_problems

HEADER = "round,client,task,split,metric,value\n"
ROUNDS = "round,elapsed_s,sampled,aggregated,evaluated\n1,0.1,2,2,2\n2,0.2,2,2,0\n3,0.3,2,0,2\n"


def metric_rows(*rounds: int) -> str:
    out = []
    for r in rounds:
        out.append(f"{r},0,left,train,loss,0.5\n")
        out.append(f"{r},0,left,test,accuracy,0.7\n")
    return "".join(out)


def folder(tmp_path, metrics: str, rounds: str = ROUNDS):
    (tmp_path / "metrics.csv").write_text(metrics)
    (tmp_path / "rounds.csv").write_text(rounds)
    return tmp_path


def test_whole_tables_agree_with_the_checkpoint(tmp_path):
    assert table_problems(folder(tmp_path, HEADER + metric_rows(1, 2, 3)), 3) == []
    # rows of rounds after the checkpoint, a cut line of one included, are dropped by the resume
    later = HEADER + metric_rows(1, 2, 3, 4) + "5,0,le"
    assert table_problems(folder(tmp_path, later, ROUNDS + "4,0.4,2,2,2\n"), 3) == []


@pytest.mark.parametrize(("metrics", "rounds", "problem"), [
    (HEADER + metric_rows(1, 2) + "3,0,left,tr", ROUNDS,
     "metrics.csv: its last line (of round 3) is cut short: a write was stopped part-way"),
    (HEADER + metric_rows(1, 3), ROUNDS, "metrics.csv has no training rows of round 2, which rounds.csv says "
                                         "aggregated clients"),
    (HEADER + metric_rows(1, 2, 3) + "1,2,3,4,5,6,7,8\n", ROUNDS, "metrics.csv does not parse"),
    (HEADER + metric_rows(1, 2, 3), ROUNDS.replace("2,0.2,2,2,0\n", ""), "rounds.csv has no row of round 2"),
    (HEADER + metric_rows(1, 2, 3), ROUNDS + "1,0.1,2,2,2\n", "rounds.csv has a round twice"),
    ("round,client,task\n1,0,left\n", ROUNDS, "metrics.csv's header is round,client,task, not the "),
])
def test_lost_or_broken_rows_of_checkpointed_rounds_are_named(tmp_path, metrics, rounds, problem):
    found = table_problems(folder(tmp_path, metrics, rounds), 3)
    assert found and found[0].startswith(problem), found


def test_rows_lost_at_a_line_end_are_found_by_the_checkpoints_count(tmp_path):
    """A table cut at a line end has no half line, and every round still has rows: only the
    count the checkpoint recorded (metrics-rows) tells that rows of round 3 are gone."""
    whole = HEADER + metric_rows(1, 2, 3) + "3,1,left,test,accuracy,0.6\n"
    assert table_problems(folder(tmp_path, whole), 3, metric_rows=7) == []
    cut = whole.rsplit("3,1,left", 1)[0]  # the last client's rows gone, at a line end
    assert table_problems(folder(tmp_path, cut), 3) == []  # without the count: nothing to see
    assert table_problems(folder(tmp_path, cut), 3, metric_rows=7) == [
        "metrics.csv has 6 rows of rounds 1-3, where the checkpoint of round 3 counted 7: rows were lost"]
    added = whole + "2,5,left,test,accuracy,0.9\n"
    assert table_problems(folder(tmp_path, added), 3, metric_rows=7)[0].endswith("counted 7: rows were added")


def digests_of(run, done: int) -> dict[str, str]:
    import hashlib

    from fedmtl.run_tables import rounds_digest, rows_up_to

    return {"metrics.csv": hashlib.blake2b(rows_up_to((run / "metrics.csv").read_bytes(), done)).hexdigest(),
            "rounds.csv": rounds_digest((run / "rounds.csv").read_bytes(), done)}


@pytest.mark.parametrize(("table", "edit"), [
    ("metrics.csv", lambda text: text.replace("2,0,left,test,accuracy,0.7", "2,0,left,test,accuracy,0.999")),
    ("metrics.csv", lambda text: text.replace("2,0,left,test,accuracy,0.7\n", "1,0,left,test,accuracy,0.7\n")),
    ("rounds.csv", lambda text: text.replace("2,0.2,2,2,0", "2,0.2,3,2,0")),
    ("metrics.csv", lambda text: text.replace("2,0,left,test,accuracy,0.7", '"2",0,left,test,accuracy,0.7')),
])
def test_rows_edited_in_place_are_found_by_the_checkpoints_digests(tmp_path, table, edit):
    """A value edited, or a row replaced by a copy of another, keeps the row count: the resume
    carried such edits into the run's results."""
    run = folder(tmp_path, HEADER + metric_rows(1, 2, 3))
    recorded = digests_of(run, 3)
    assert table_problems(run, 3, metric_rows=6, digests=recorded) == []
    (run / table).write_text(edit((run / table).read_text()))
    assert table_problems(run, 3, metric_rows=6, digests=recorded) == [
        f"{table}'s rows of rounds 1-3 are not those the checkpoint of round 3 recorded: they were edited since"]


def test_the_rounds_digest_reads_numbers_not_their_spelling(tmp_path):
    """rounds.csv is written whole every round: a count read 2 in one version may read 2.0 in
    the next, and rows of later rounds (a cut one too) are not the checkpoint's."""
    from fedmtl.run_tables import rounds_digest

    data = ROUNDS.encode()
    respelled = ROUNDS.replace("1,0.1,2,2,2", "1,0.10,2.0,2,2").encode() + b"4,0.4,2,2,2\n5,0"
    assert rounds_digest(respelled, 3) == rounds_digest(data, 3) != rounds_digest(data, 2)


def test_a_recorder_s_checkpoint_holds_the_digests_of_its_tables(tmp_path):
    """The digests a run's checkpoint records are those a resume computes from its tables."""
    import torch

    from fedmtl.data import dataset_tasks
    from fedmtl.results import METRIC_DIGEST, ROUNDS_DIGEST, RunRecorder, recorded_digests
    from fedmtl.validation import load_config

    cfg = load_config(None, ["data.num-clients=2", "run.rounds=3"])
    recorder = RunRecorder(tmp_path / "run", cfg, dataset_tasks(cfg.data))
    for r in (1, 2):
        recorder.log_metrics([(r, c, "left", "train", "loss", 0.5 / (r + c)) for c in range(2)])
        recorder.log_round({"round": r, "aggregated": 2, "train_loss": 0.25 * r}, None)
        recorder.save_checkpoint(r, {})
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "round-2.pt", weights_only=False)
    assert set(recorded_digests(checkpoint)) == {"metrics.csv", "rounds.csv"}
    assert recorded_digests(checkpoint) == digests_of(tmp_path / "run", 2)
    assert checkpoint[METRIC_DIGEST] == digests_of(tmp_path / "run", 2)["metrics.csv"]
    recorder.log_metrics([(3, 0, "left", "train", "loss", 0.1)])  # round 3, after the checkpoint
    assert table_problems(tmp_path / "run", 2, checkpoint["metrics-rows"], recorded_digests(checkpoint)) == []
    assert checkpoint[ROUNDS_DIGEST] == digests_of(tmp_path / "run", 2)["rounds.csv"]


def test_a_line_cut_inside_its_round_number_is_dropped_and_the_counts_decide(tmp_path):
    """``1`` may be the start of ``12,...``: the line says no round, so it is dropped as a later
    round's, and the checkpoint's count says whether a row of its rounds went with it."""
    whole = HEADER + metric_rows(1, 2, 3)
    assert table_problems(folder(tmp_path, whole + "1"), 3, metric_rows=6) == []
    two = whole + "3,1,left,test,accuracy,0.6\n"
    assert table_problems(folder(tmp_path, two[:-len("3,1,left,test,accuracy,0.6\n")] + "3"), 3,
                          metric_rows=7) == [
        "metrics.csv has 6 rows of rounds 1-3, where the checkpoint of round 3 counted 7: rows were lost"]
    assert table_problems(folder(tmp_path, whole, ROUNDS + "4"), 3) == []  # rounds.csv alike


@pytest.mark.parametrize(("table", "text", "problem"), [
    ("metrics.csv", "round,client,split,task,metric,value\n" + metric_rows(1, 2, 3),
     "metrics.csv's header is round,client,split,task,metric,value, not the round,client,task,split,metric,value"),
    ("metrics.csv", "round,client,task,split,metric,value,note\n", "metrics.csv's header is"),
    ("placement.csv", "round,client,stage,host,node\n1,0,train,h,n\n", "placement.csv's header is"),
    ("placement.csv", "round,client,stage,host,node,device\nx,0,train,h,n,cpu\n",
     "placement.csv has no whole-number 'round' column"),
    ("placement.csv", "round,client,stage,host,node,device\n3,0,tra", "placement.csv: its last line (of round 3)"),
    ("rounds.csv", ROUNDS.replace("elapsed_s,", "").replace(",0.1,", ",").replace(",0.2,", ",").replace(",0.3,", ","),
     "rounds.csv has no column 'elapsed_s'"),
])
def test_tables_a_resume_would_append_to_wrongly_are_named(tmp_path, table, text, problem):
    """A resume appends rows as fedmtl writes them: a table with other columns would get rows
    that do not fit it (task and split swapped, a field short), placement.csv garbage would
    stop the run at its end, rounds.csv without elapsed_s before its first round."""
    run = folder(tmp_path, HEADER + metric_rows(1, 2, 3))
    (run / table).write_text(text)
    found = table_problems(run, 3)
    assert found and found[0].startswith(problem), found


def test_rows_up_to_drops_a_cut_last_line_whatever_it_starts_with():
    from fedmtl.results import rows_up_to

    table = b"round,x\n1,a\n11,b\n"
    assert rows_up_to(table + b"1", 11) == table  # the start of "12,c": not round 1
    assert rows_up_to(table + b"12,c", 11) == table
    assert rows_up_to(table, 1) == b"round,x\n1,a\n"


def test_a_run_whose_rounds_were_all_skipped_has_an_empty_metrics_table(tmp_path):
    skipped = "round,elapsed_s,sampled,aggregated,evaluated\n1,0.1,2,0,0\n2,0.2,2,0,0\n"
    assert table_problems(folder(tmp_path, HEADER, skipped), 2) == []
    # an older fedmtl wrote a skipped round's usable replies as `aggregated`: no training rows either
    older = "round,elapsed_s,sampled,aggregated,skipped,evaluated\n1,0.1,2,1,1,0\n2,0.2,2,1,1,0\n"
    assert table_problems(folder(tmp_path, HEADER, older), 2) == []
    unskipped = older.replace(",1,1,0\n", ",1,0,0\n")
    assert table_problems(folder(tmp_path, HEADER, unskipped), 2)[0].startswith("metrics.csv has no training rows")


def test_missing_tables_are_named(tmp_path):
    (tmp_path / "rounds.csv").write_text(ROUNDS)
    assert table_problems(tmp_path, 3) == ["metrics.csv is missing"]
    (tmp_path / "metrics.csv").write_text(HEADER + metric_rows(1, 2, 3))
    (tmp_path / "rounds.csv").unlink()
    assert table_problems(tmp_path, 3) == ["rounds.csv is missing"]


TRY_TO_HOLD = """
import sys
from fedmtl.folder_lock import RunFolderBusy, holding
try:
    with holding(sys.argv[1]):
        print("held")
except RunFolderBusy as exc:
    print(exc)
"""


def _other_process_holds(folder) -> str:
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", TRY_TO_HOLD, str(folder)], capture_output=True, text=True,
                          timeout=60, check=True).stdout.strip()


def test_a_second_process_cannot_write_a_run_folder_another_one_writes(tmp_path):
    with holding(tmp_path):
        assert _other_process_holds(tmp_path) == (f"'{tmp_path}' is in use by another fedmtl process (a run or a "
                                                  "resume of it); wait for it to end, or stop it")
        # a resume's run (its server, in another thread) joins the hold of the resume's checks
        with holding(tmp_path / ".", join=True), holding(str(tmp_path), join=True):
            assert _other_process_holds(tmp_path).startswith(f"'{tmp_path}' is in use")
        assert _other_process_holds(tmp_path).startswith(f"'{tmp_path}' is in use")  # the outer hold remains
        # ... but a second run of the folder in this process, not joining, is refused
        with pytest.raises(RunFolderBusy, match="is in use by another fedmtl process"):
            with holding(tmp_path):
                pass
    assert _other_process_holds(tmp_path) == "held"  # released when the first ended
    with holding(tmp_path):
        pass


def test_the_lock_goes_with_its_last_holder_whichever_leaves_last(tmp_path):
    """Flower does not join the ServerApp's thread when the main thread leaves on an error: the
    folder stays held until the server's thread leaves too."""
    import threading

    entered, leave = threading.Event(), threading.Event()

    def server() -> None:
        with holding(tmp_path, join=True):
            entered.set()
            leave.wait(30)

    with holding(tmp_path):
        thread = threading.Thread(target=server)
        thread.start()
        assert entered.wait(30)
    assert _other_process_holds(tmp_path).startswith(f"'{tmp_path}' is in use")  # the server is still in
    leave.set()
    thread.join(30)
    assert _other_process_holds(tmp_path) == "held"


def test_a_resume_holds_its_folder_from_its_checks_to_its_runs_end(tmp_path, monkeypatch):
    """Checked, then released, then taken again by the run: a process between the two (a sweep's
    worker orphaned by a kill -9, finishing the run) changed the folder the checks had passed,
    and the resume redid rounds from an old checkpoint over newer heads. The checks now run
    within the hold the run keeps."""
    import fedmtl
    from fedmtl import folder_lock
    from fedmtl import resumption as resume_module

    seen = []

    def plan(run_dir, *args, **kwargs):
        seen.append({k: list(v) for k, v in folder_lock._held.items()})
        raise resume_module.ResumeRefused("stop here")

    (tmp_path / folder_lock.MARKER).touch()
    (tmp_path / "config.toml").write_text("")
    monkeypatch.setattr(resume_module, "plan_resume", plan)
    with pytest.raises(resume_module.ResumeRefused):
        fedmtl.resume(tmp_path)
    assert [{k: v[0] for k, v in held.items()} for held in seen] == [{str(tmp_path.resolve() / folder_lock.MARKER): 1}]
    assert folder_lock._held == {}
    from fedmtl.cli import _resume  # fedmtl run --resume

    with pytest.raises((SystemExit, Exception)) as stopped:
        _resume(tmp_path, None, None, quiet=True, verbose=False)
    assert "Exit" in type(stopped.value).__name__ or isinstance(stopped.value, SystemExit)
    held_marker = str(tmp_path.resolve() / folder_lock.MARKER)
    assert [{k: v[0] for k, v in held.items()} for held in seen[1:]] == [{held_marker: 1}]
    assert folder_lock._held == {}
