"""``stopped.txt``: a run folder says why its run stopped (fedmtl.stop_record)."""

from __future__ import annotations

import pytest

from fedmtl import stop_record
from fedmtl.results import RUN_FILES, newest_checkpoint_round
from fedmtl.stop_record import STOPPED_FILE, clear_stop, read_stop, record_stop


@pytest.fixture(autouse=True)
def _open_again():
    yield
    stop_record._closed = False  # close() ends a process; each test is its own


def _raised() -> ValueError:
    try:
        raise ValueError("round 3: a rule\nfailed \x1b[31mbadly")
    except ValueError as exc:
        return exc


def test_a_stop_is_recorded_in_one_line_with_its_checkpoint_and_traceback(tmp_path):
    error = _raised()
    record_stop(tmp_path, f"ValueError: {error}", 2, error)
    lines = (tmp_path / STOPPED_FILE).read_text().splitlines()
    assert lines[0] == "ValueError: round 3: a rule failed ?[31mbadly"  # one printable line
    assert lines[1].startswith("stopped at: ") and lines[1].endswith("+00:00")
    assert lines[2] == "newest checkpoint: round 2"
    assert "Traceback (most recent call last):" in lines and "in _raised" in "\n".join(lines)
    assert read_stop(tmp_path) == lines[0]
    record_stop(tmp_path, "interrupted by SIGTERM", None)
    assert (tmp_path / STOPPED_FILE).read_text().splitlines()[2] == "newest checkpoint: none"
    clear_stop(tmp_path)
    assert read_stop(tmp_path) is None and not (tmp_path / STOPPED_FILE).exists()
    clear_stop(tmp_path)  # absent is fine


def test_after_close_only_the_last_word_is_written(tmp_path):
    stop_record.close()
    record_stop(tmp_path, "RuntimeError: the engine went away", 1)  # the ServerApp's thread, while Ray stops
    assert read_stop(tmp_path) is None
    record_stop(tmp_path, "interrupted by SIGINT", 1, last=True)
    assert read_stop(tmp_path) == "interrupted by SIGINT"


def test_a_failed_write_does_not_raise(tmp_path):
    (tmp_path / STOPPED_FILE).mkdir()  # cannot be replaced by a file, even by root
    record_stop(tmp_path, "OSError: no space left on device", None)  # the run's own error stays the one raised
    assert (tmp_path / STOPPED_FILE).is_dir() and read_stop(tmp_path) is None
    record_stop(tmp_path / "absent", "OSError: the folder went away", None)
    assert not (tmp_path / "absent").exists()  # a folder already removed is not made again


def test_a_run_starting_again_from_round_1_deletes_it_and_checkpoints_are_counted(tmp_path):
    assert STOPPED_FILE in RUN_FILES  # reset_run_dir deletes what a run writes
    assert newest_checkpoint_round(tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    for r in (2, 10, 9):
        (tmp_path / "checkpoints" / f"round-{r}.pt").touch()
    (tmp_path / "checkpoints" / "round-x.pt").touch()
    assert newest_checkpoint_round(tmp_path) == 10
    assert newest_checkpoint_round(tmp_path / "absent") is None
