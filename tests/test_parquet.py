"""Parquet copies of a run's tables: equal to the CSV tables (values bit for bit, the documented
dtypes), ignored once stale, removed by a resume, and ``run.parquet`` (``auto``/``true``/``false``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fedmtl import parquet
from fedmtl.config import ConfigError
from fedmtl.data import dataset_tasks
from fedmtl.results import RunRecorder, load_run
from fedmtl.validation import load_config


@pytest.fixture(autouse=True)
def no_figures(monkeypatch):
    monkeypatch.setattr("fedmtl.plots.plot_run", lambda run_dir: [])


def finished_run(folder: Path, *sets: str, rounds: int = 3) -> Path:
    """A run folder of ``rounds`` rounds (round 2 not evaluated), with participation, finished."""
    cfg = load_config(None, ["data.num-clients=3", f"run.rounds={rounds}", *sets])
    recorder = RunRecorder(folder, cfg, dataset_tasks(cfg.data))
    final = None
    for r in range(1, rounds + 1):
        stats = None
        if r != 2:
            per_client = {c: {"left": {"accuracy": 0.1 * c + 0.2 + r / 3, "loss": 1 / (r + c + 7)},
                              "right": {"accuracy": 0.3 + c / 7 + r / 11, "loss": 2 / (r + 3)}} for c in range(3)}
            stats = final = recorder.record_evaluation(r, per_client, {0: 10, 1: 20, 2: 30},
                                                       participation={0: (r, r), 1: (0, None), 2: (r - 1, r - 1)})
        recorder.log_round({"round": r, "aggregated": 2, "train_loss": 1 / (r + 0.3)}, stats)
    recorder.record_participation([(0, rounds, rounds, rounds), (1, 0, None, 0), (2, rounds - 1, rounds - 1, 1)])
    recorder.finish(final)
    return folder


def test_the_parquet_copies_equal_the_csv_tables_with_the_documented_dtypes(tmp_path):
    run = finished_run(tmp_path / "run")
    for name in parquet.TABLES:
        assert (run / f"{name}.parquet").is_file()
        from_parquet = pd.read_parquet(run / f"{name}.parquet")
        from_csv = parquet.read_csv_table(run / f"{name}.csv", name)
        pd.testing.assert_frame_equal(from_parquet, from_csv, check_exact=True)
        assert parquet.fresh_parquet(run, name) == run / f"{name}.parquet"
    tables = load_run(run)
    metrics = tables["metrics"]
    assert {c: str(t) for c, t in metrics.dtypes.items() if c in ("round", "client", "value")} == {
        "round": "int64", "client": "int64", "value": "float64"}
    assert all(pd.api.types.is_string_dtype(metrics[c]) for c in ("task", "split", "metric"))
    # the values are the computed floats, bit for bit
    left = metrics[(metrics["round"] == 3) & (metrics["client"] == 1) & (metrics["task"] == "left")
                   & (metrics["metric"] == "loss")]["value"]
    assert left.tolist() == [1 / (3 + 1 + 7)]
    rounds = tables["rounds"]
    assert str(rounds["round"].dtype) == "int64" and rounds["train_loss"].tolist() == [1 / 1.3, 1 / 2.3, 1 / 3.3]
    assert rounds["left.accuracy.mean"].isna().tolist() == [False, True, False]
    # a count that round 2 lacks is still written as a whole number (it read '3.0')
    text = pd.read_csv(run / "rounds.csv", dtype=str, keep_default_na=False)
    assert text["evaluated_never_trained"].tolist() == ["2", "", "1"] and text["aggregated"].tolist() == ["2"] * 3
    participation = tables["participation"]
    assert str(participation["last_round"].dtype) == "Int64" and participation["last_round"].isna().tolist() == [
        False, True, False]
    assert str(participation["rounds_trained"].dtype) == "int64"


def test_a_stale_copy_is_not_read_and_a_resume_removes_the_copies(tmp_path):
    run = finished_run(tmp_path / "run")
    with (run / "metrics.csv").open("a") as handle:
        handle.write("4,0,left,test,accuracy,0.5\n")
    assert parquet.fresh_parquet(run, "metrics") is None
    assert load_run(run)["metrics"]["round"].max() == 4  # from the CSV file
    # an edit that keeps the file's size (a digit for a digit) makes the copy stale too
    same_size = finished_run(tmp_path / "same-size")
    text = (same_size / "rounds.csv").read_text()
    assert parquet.fresh_parquet(same_size, "rounds") is not None and ",2," in text
    (same_size / "rounds.csv").write_text(text.replace(",2,", ",7,", 1))
    assert parquet.fresh_parquet(same_size, "rounds") is None
    assert 7 in parquet.read_table(same_size, "rounds")["aggregated"].tolist()
    cfg = load_config(run / "config.toml")
    RunRecorder(run, cfg, dataset_tasks(cfg.data), resume_round=1)
    assert not any(run.glob("*.parquet"))
    assert parquet.read_table(run, "metrics")["round"].max() == 1


def test_run_parquet_false_writes_none_and_true_needs_pyarrow(tmp_path, monkeypatch):
    run = finished_run(tmp_path / "run", "run.parquet=false")
    assert (run / "metrics.csv").is_file() and not any(run.glob("*.parquet"))
    assert load_config(None, ["run.parquet=true"]).run.parquet is True
    monkeypatch.setattr(parquet, "parquet_available", lambda: False)
    assert not parquet.wants_parquet("auto")
    with pytest.raises(ConfigError, match=r"run.parquet = true: writing Parquet needs pyarrow.*pip install pyarrow"):
        load_config(None, ["run.parquet=true"])
    assert load_config(None, []).run.parquet == "auto"
    with pytest.raises(ConfigError, match="run.parquet"):
        load_config(None, ["run.parquet=sometimes"])


def test_a_resume_rewrites_rounds_csv_byte_for_byte(tmp_path):
    """A resume reads rounds.csv back and writes it again: counts stay whole numbers, floats
    stay the floats, missing cells stay missing (round 2 was not evaluated)."""
    run = finished_run(tmp_path / "run")
    before = (run / "rounds.csv").read_bytes()
    cfg = load_config(run / "config.toml")
    recorder = RunRecorder(run, cfg, dataset_tasks(cfg.data), resume_round=3)
    assert (run / "rounds.csv").read_bytes() == before
    assert recorder.rounds[0]["evaluated_never_trained"] == 2 and isinstance(recorder.rounds[0]["train_loss"], float)
    RunRecorder(run, cfg, dataset_tasks(cfg.data), resume_round=1)
    assert (run / "rounds.csv").read_bytes() == b"".join(before.splitlines(keepends=True)[:2])


def test_a_resume_cuts_placement_csv_keeping_its_rows_byte_for_byte(tmp_path):
    """The rows of rounds up to the checkpoint stay as written (csv's line ends), so the rows the
    resumed run appends match them: the file equals an uninterrupted run's."""
    cfg = load_config(None, ["run.rounds=3"])
    whole = RunRecorder(tmp_path / "whole", cfg, dataset_tasks(cfg.data))
    rows = {r: [(r, c, stage, "host", "", "cpu") for c in (0, 1) for stage in ("train", "evaluate")] for r in (1, 2, 3)}
    for r in (1, 2, 3):
        whole.log_placement(rows[r])
    cut = RunRecorder(tmp_path / "cut", cfg, dataset_tasks(cfg.data))
    for r in (1, 2, 3):
        cut.log_placement(rows[r])
    resumed = RunRecorder(tmp_path / "cut", cfg, dataset_tasks(cfg.data), resume_round=1)
    for r in (2, 3):
        resumed.log_placement(rows[r])
    assert (tmp_path / "cut" / "placement.csv").read_bytes() == (tmp_path / "whole" / "placement.csv").read_bytes()


def test_a_resume_of_a_folder_without_placement_csv_lists_the_resumed_rounds(tmp_path):
    """A folder of a fedmtl before placement.csv (or one whose file was deleted): the resumed
    rounds' placement goes under a header (it stopped the run at its end with a KeyError)."""
    cfg = load_config(None, ["run.rounds=3"])
    first = RunRecorder(tmp_path / "run", cfg, dataset_tasks(cfg.data))
    first.log_placement([(1, 0, "train", "host", "", "cpu")])
    (tmp_path / "run" / "placement.csv").unlink()
    resumed = RunRecorder(tmp_path / "run", cfg, dataset_tasks(cfg.data), resume_round=1)
    resumed.log_placement([(2, 0, "train", "host", "", "cpu")])
    assert resumed.placement_summary() == {"host//cpu": 1}
    assert (tmp_path / "run" / "placement.csv").read_text().splitlines() == [
        "round,client,stage,host,node,device", "2,0,train,host,,cpu"]
