"""Experiment trackers (``run.trackers``): TensorBoard event files and an MLflow store in the run
folder hold the config, every ``rounds.csv`` number per round and the summary; a resume replays
the kept rounds so that no round is logged twice; missing packages and unknown names are one-line
config errors; a failing tracker is switched off without stopping the run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from fedmtl.config import ConfigError
from fedmtl.data import dataset_tasks
from fedmtl.results import RunRecorder
from fedmtl.trackers import TRACKERS, Trackers, TrackerSpec, scalars
from fedmtl.trackers.mlflow_tracker import ARTIFACTS, metric_key, store_uri
from fedmtl.trackers.tensorboard_tracker import FOLDER, tag
from fedmtl.validation import load_config

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")


@pytest.fixture(autouse=True)
def no_figures(monkeypatch):
    monkeypatch.setattr("fedmtl.plots.plot_run", lambda run_dir: [])


def per_client(r: int, shift: float = 0.0) -> dict[int, dict[str, dict[str, float]]]:
    return {c: {"left": {"accuracy": 0.2 + c / 10 + r / 30 + shift, "loss": 1 / (r + c + 2)},
                "right": {"accuracy": 0.4 + c / 9 + r / 40, "loss": 2 / (r + 3)}} for c in range(3)}


def log_rounds(recorder: RunRecorder, rounds: range, shift: float = 0.0):
    final = None
    for r in rounds:
        final = recorder.record_evaluation(r, per_client(r, shift), {0: 10, 1: 20, 2: 30})
        recorder.log_round({"round": r, "aggregated": 3, "train_loss": 1 / (r + 0.5)}, final)
    return final


@pytest.fixture(scope="module")
def tracked(tmp_path_factory) -> Path:
    """A 3-round run logged to both trackers, then resumed after round 2 and round 3 redone with
    other values (as a run killed after round 3's rows, before its checkpoint, would)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("fedmtl.plots.plot_run", lambda run_dir: [])
        run = tmp_path_factory.mktemp("tracked") / "run"
        cfg = load_config(None, ["data.num-clients=3", "run.rounds=3", "run.name=tracked",
                                 'run.trackers=["tensorboard", "mlflow"]'])
        recorder = RunRecorder(run, cfg, dataset_tasks(cfg.data))
        log_rounds(recorder, range(1, 4))
        recorder.trackers.close()  # the process dies here: no summary
        resumed = RunRecorder(run, load_config(run / "config.toml"), dataset_tasks(cfg.data), resume_round=2)
        final = log_rounds(resumed, range(3, 4), shift=0.05)
        resumed.finish(final)
    return run


def expected_series(run: Path) -> dict[str, dict[int, float]]:
    rounds = pd.read_csv(run / "rounds.csv")
    out: dict[str, dict[int, float]] = {}
    for row in rounds.to_dict("records"):
        for key, value in scalars({k: v for k, v in row.items() if not pd.isna(v)}).items():
            out.setdefault(key, {})[int(row["round"])] = value
    return out


def test_tensorboard_holds_every_round_number_once_and_the_config_and_summary(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tracked / FOLDER), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    expected = expected_series(tracked)
    assert "left.accuracy.mean" in expected and "elapsed_s" in expected
    assert sorted(events.Tags()["scalars"]) == sorted(tag(k) for k in expected)
    assert tag("left.accuracy.mean") == "left/accuracy.mean" and tag("aggregated") == "run/aggregated"
    for key, series in expected.items():
        logged = events.Scalars(tag(key))
        assert [e.step for e in logged] == sorted(series), key  # each round once, round 3 the resumed one
        for event in logged:
            assert math.isclose(event.value, series[event.step], rel_tol=1e-6, abs_tol=1e-12), key  # float32
    assert any(t.startswith("config") for t in events.Tags()["tensors"])
    assert any(t.startswith("summary") for t in events.Tags()["tensors"])


def test_a_tracker_set_in_a_run_folder_reaches_a_finished_run_only_when_it_is_extended(tmp_path):
    """docs/results.md said that a resume adds a tracker set in a finished run's config.toml: a
    finished run is not resumed; its extension replays the earlier rounds into the tracker."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import fedmtl

    smoke = Path(__file__).resolve().parents[1] / "configs" / "smoke.toml"
    run = fedmtl.run(smoke, ["run.rounds=1", "engine.backend=inprocess"], out=tmp_path / "run").folder
    config = run / "config.toml"
    config.write_text(config.read_text().replace("trackers = []", 'trackers = ["tensorboard"]'))
    assert 'trackers = ["tensorboard"]' in config.read_text()
    fedmtl.resume(run)  # finished: nothing runs, nothing is replayed
    assert not (run / FOLDER).exists()
    fedmtl.resume(run, rounds=2)
    events = EventAccumulator(str(run / FOLDER), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars(tag("aggregated"))] == [1, 2]  # round 1 replayed


def test_mlflow_store_holds_the_params_metric_histories_and_summary(tracked):
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store_uri(tracked))
    experiment = client.get_experiment_by_name("tracked")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1  # the resume's MLflow run, with the kept rounds replayed
    run = runs[0]
    every = client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL)
    assert len(every) == 2 and {r.info.lifecycle_stage for r in every} == {"active", "deleted"}
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    cfg = load_config(tracked / "config.toml")
    assert run.data.params == {k: str(v) for k, v in cfg.to_flat().items()}
    for key, series in expected_series(tracked).items():
        history = client.get_metric_history(run.info.run_id, metric_key(key))
        assert {m.step: m.value for m in history} == series, key  # float64: exact
        assert len(history) == len(series), key
    assert sorted(p.name for p in (tracked / ARTIFACTS).rglob("*.json")) == ["summary.json"]
    summary = json.loads((tracked / "summary.json").read_text())
    assert summary["final_round"] == 3


def test_a_tracker_without_its_package_or_an_unknown_one_is_a_config_error(monkeypatch):
    assert load_config(None, ["run.trackers=tensorboard,mlflow"]).run.trackers == ["tensorboard", "mlflow"]
    with pytest.raises(ConfigError, match=r"unknown tracker 'tensorbord' \(did you mean 'tensorboard'\?\)"):
        load_config(None, ["run.trackers=tensorbord"])
    monkeypatch.setattr(TrackerSpec, "available", lambda self: False)
    with pytest.raises(ConfigError, match=r"tracker 'mlflow' needs the mlflow package.*pip install 'fedmtl\[mlflow\]'"):
        load_config(None, ['run.trackers=["mlflow"]'])


def test_a_failing_tracker_is_switched_off_and_the_run_goes_on(tmp_path, caplog):
    class Broken:
        def log_round(self, row):
            raise OSError("disk full")

        def finish(self, summary):
            raise AssertionError("switched off: never called")

        def close(self):
            pass

    cfg = load_config(None, ["data.num-clients=3", "run.rounds=2"])
    recorder = RunRecorder(tmp_path, cfg, dataset_tasks(cfg.data))
    recorder.trackers.active["broken"] = Broken()
    final = log_rounds(recorder, range(1, 3))
    recorder.finish(final)
    assert "tracker 'broken' failed and is switched off: OSError: disk full" in caplog.text
    assert caplog.text.count("disk full") == 1 and len(pd.read_csv(tmp_path / "rounds.csv")) == 2


def test_a_tracker_that_does_not_start_is_switched_off_and_the_run_goes_on(tmp_path, caplog, monkeypatch):
    """docs/results.md: a failing tracker is switched off; that holds at its start too (it used to
    end the run with a traceback, leaving a folder without a checkpoint)."""

    def refuses(self, run_dir, cfg, run_id, resume):  # noqa: ANN001, ANN202
        raise PermissionError("cannot create the tracking store")

    monkeypatch.setattr(TrackerSpec, "start", refuses)
    cfg = load_config(None, ["data.num-clients=3", "run.rounds=2", "run.trackers=tensorboard"])
    recorder = RunRecorder(tmp_path, cfg, dataset_tasks(cfg.data))
    assert recorder.trackers.active == {}
    recorder.finish(log_rounds(recorder, range(1, 3)))
    assert ("tracker 'tensorboard' did not start and is switched off: PermissionError: cannot create the tracking "
            "store") in caplog.text
    assert len(pd.read_csv(tmp_path / "rounds.csv")) == 2 and (tmp_path / "summary.json").is_file()


def test_the_registry_names_both_trackers():
    assert TRACKERS.names() == ["mlflow", "tensorboard"]
    assert Trackers(Path("."), load_config(None, [])).active == {}


def test_a_copied_run_folder_resumed_writes_its_mlflow_artifacts_into_the_copy(tmp_path, monkeypatch):
    """MLflow records an experiment's artifact location as an absolute path: the store of a copied
    folder would put the resumed run's files into the folder it was copied from."""
    import shutil

    from mlflow.tracking import MlflowClient

    monkeypatch.setattr("fedmtl.plots.plot_run", lambda run_dir: [])
    original = tmp_path / "original"
    cfg = load_config(None, ["data.num-clients=3", "run.rounds=2", "run.name=copied", 'run.trackers=["mlflow"]'])
    recorder = RunRecorder(original, cfg, dataset_tasks(cfg.data))
    recorder.finish(log_rounds(recorder, range(1, 3)))
    before = sorted(p.relative_to(original) for p in (original / ARTIFACTS).rglob("*"))
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)

    resumed = RunRecorder(copy, load_config(copy / "config.toml"), dataset_tasks(cfg.data), resume_round=1)
    resumed.finish(log_rounds(resumed, range(2, 3), shift=0.05))

    assert sorted(p.relative_to(original) for p in (original / ARTIFACTS).rglob("*")) == before
    client = MlflowClient(tracking_uri=store_uri(copy))
    experiment = client.get_experiment_by_name("copied")
    assert experiment.artifact_location == (copy / ARTIFACTS).resolve().as_uri()
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.artifact_uri.startswith((copy / ARTIFACTS).resolve().as_uri())
    assert [p.name for p in (copy / ARTIFACTS).rglob("summary.json") if run.info.run_id in str(p)] == ["summary.json"]
