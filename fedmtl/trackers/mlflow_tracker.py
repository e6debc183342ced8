"""The ``mlflow`` tracker: one MLflow run in the local store ``<run>/mlflow.db``.

The store is SQLite (MLflow's maintained local backend; SQLAlchemy and Alembic come with
Flower), its artifacts go to ``<run>/mlflow-artifacts/``: no tracking server, no network
(MLflow's usage telemetry is switched off while it is imported). The experiment is named
after ``run.name``, the MLflow run after the run folder (tags: ``fedmtl.run-dir``, its path,
and ``fedmtl.run-id``, the run's identity). A resumed run gets a new MLflow run, with the kept
rounds replayed, and the earlier MLflow runs of the same run are deleted (MLflow keeps deleted
runs until ``mlflow gc``). Params: the flat config (``data.num-clients`` = ``20``, ...). Metrics: each
``rounds.csv`` column, at step = the round. When the run finishes: ``summary.json`` and
``config.toml`` as artifacts, and the run marked ``FINISHED``.
``mlflow ui --backend-store-uri sqlite:///<run>/mlflow.db`` shows it.
"""

from __future__ import annotations

import os
import re
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from fedmtl.config import ExperimentConfig
from fedmtl.trackers import scalars

STORE = "mlflow.db"
"""The SQLite store's file inside the run folder."""
ARTIFACTS = "mlflow-artifacts"
"""The artifacts' folder inside the run folder."""
QUIET_IMPORT = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_CONFIGURE_LOGGING": "false"}
"""Environment set while MLflow is imported (and restored after): no telemetry, no logging setup."""
MAX_PARAMS, MAX_METRICS = 100, 1000
"""MLflow's limits per ``log_batch`` call."""
T = TypeVar("T")


@contextmanager
def _quiet_import() -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in QUIET_IMPORT}
    os.environ.update(QUIET_IMPORT)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def store_uri(run_dir: str | Path) -> str:
    """The tracking URI of a run folder's store: ``sqlite:///<run>/mlflow.db``."""
    return "sqlite:///" + str((Path(run_dir) / STORE).resolve())


def metric_key(column: str) -> str:
    """A ``rounds.csv`` column as an MLflow metric key (characters MLflow refuses become ``_``)."""
    return re.sub(r"[^\w./\- ]", "_", column)


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class MlflowTracker:
    """Logs the run to its own MLflow run through ``MlflowClient`` (no global active run)."""

    def __init__(self, run_dir: Path, cfg: ExperimentConfig, run_id: str, resume: bool) -> None:
        with _quiet_import():
            from mlflow.entities import Metric, Param
            from mlflow.tracking import MlflowClient

            self._metric = Metric
            run_dir = Path(run_dir).resolve()
            self.run_dir = run_dir
            self.client = MlflowClient(tracking_uri=store_uri(run_dir))
            if resume and run_id:  # replayed from rounds.csv into a new MLflow run: no round logged twice
                self._delete_runs_of(run_id)
            experiment_id = self._experiment(cfg.run.name, (run_dir / ARTIFACTS).as_uri())
            run = self.client.create_run(experiment_id, run_name=run_dir.name,
                                         tags={"fedmtl.run-dir": str(run_dir), "fedmtl.run-id": run_id})
        self.run_id = run.info.run_id
        """The MLflow run's id."""
        params = [Param(key, str(value)) for key, value in cfg.to_flat().items()]
        for chunk in _chunks(params, MAX_PARAMS):
            self.client.log_batch(self.run_id, params=list(chunk))

    def _experiment(self, name: str, artifacts: str) -> str:
        """The id of the store's experiment ``name`` that keeps its artifacts in ``artifacts`` (this
        run folder's), created when there is none. A folder copied or moved keeps a store whose
        experiment writes into the folder it came from (MLflow records the artifact location as
        an absolute path): that experiment is renamed (its runs stay) and a new one made here."""
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None and experiment.artifact_location != artifacts:
            self.client.rename_experiment(experiment.experiment_id,
                                          f"{name} (artifacts in {experiment.artifact_location}, "
                                          f"experiment {experiment.experiment_id})")
            experiment = None
        if experiment is not None:
            return experiment.experiment_id
        return self.client.create_experiment(name, artifact_location=artifacts)

    def _delete_runs_of(self, run_id: str) -> None:
        """Delete the store's MLflow runs of fedmtl run ``run_id`` (a resume replaces them)."""
        experiments = [e.experiment_id for e in self.client.search_experiments()]
        if experiments:
            for run in self.client.search_runs(experiments, filter_string=f"tags.`fedmtl.run-id` = '{run_id}'"):
                self.client.delete_run(run.info.run_id)

    def log_round(self, row: Mapping[str, Any]) -> None:
        """Log the row's numbers at step ``row["round"]``."""
        step, now = int(row["round"]), int(time.time() * 1000)
        metrics = [self._metric(metric_key(k), v, now, step) for k, v in scalars(row).items()]
        for chunk in _chunks(metrics, MAX_METRICS):
            self.client.log_batch(self.run_id, metrics=list(chunk))

    def finish(self, summary: Mapping[str, Any]) -> None:
        """Attach ``summary.json`` and ``config.toml``; mark the MLflow run finished."""
        for name in ("summary.json", "config.toml"):
            if (self.run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(self.run_dir / name))
        self.client.set_terminated(self.run_id, "FINISHED")

    def close(self) -> None:
        """Mark the MLflow run killed (the run stopped before its summary)."""
        self.client.set_terminated(self.run_id, "KILLED")


def start(run_dir: Path, cfg: ExperimentConfig, run_id: str, resume: bool) -> MlflowTracker:
    """The :data:`fedmtl.trackers.TRACKERS` entry point (``resume``: the earlier MLflow runs of
    ``run_id`` are deleted)."""
    return MlflowTracker(run_dir, cfg, run_id, resume)
