"""Experiment trackers: optional copies of a run's config, round statistics and summary.

``run.trackers`` names them (a list, default none: ``trackers = ["tensorboard", "mlflow"]``):

- ``tensorboard``: event files in ``<run>/tensorboard/`` (``pip install 'fedmtl[tensorboard]'``),
- ``mlflow``: an MLflow run in the local store ``<run>/mlflow.db`` (SQLite; artifacts in
  ``<run>/mlflow-artifacts/``; ``pip install 'fedmtl[mlflow]'``).

Both write local files only: no server, no network. Each gets the run's flat config
(:meth:`fedmtl.config.ExperimentConfig.to_flat`) when the run starts, every ``rounds.csv`` row's
numbers as it is logged (step = the round) and ``summary.json`` when the run finishes.

When a run resumes (or is extended), each tracker starts afresh and replays the ``rounds.csv``
rows the resume keeps, then logs the new rounds; so no round is logged twice, and a round
redone after an interruption shows its new values only (TensorBoard: the event files are
written again; MLflow: a new MLflow run, the earlier one of the same run is deleted, which
MLflow keeps until ``mlflow gc``). A tracker that fails while the run goes on is reported once and switched
off; the run and its CSV files are unaffected.

This package imports neither TensorBoard nor MLflow until a tracker starts; a new tracker
registers a :class:`TrackerSpec` in :data:`TRACKERS`.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fedmtl.config import ExperimentConfig
from fedmtl.one_line import described
from fedmtl.registry import Registry

logger = logging.getLogger(__name__)


class Tracker(Protocol):
    """What a tracker does: the run's values in, its own files out."""

    def log_round(self, row: Mapping[str, float]) -> None:
        """Log one ``rounds.csv`` row's numbers (:func:`scalars`) at step ``row["round"]``."""

    def finish(self, summary: Mapping[str, Any]) -> None:
        """Log the final ``summary.json`` and close the tracker's files."""

    def close(self) -> None:
        """Close the tracker's files without a summary (the run stopped)."""


@dataclass(frozen=True)
class TrackerSpec:
    """A registered tracker.

    Attributes
    ----------
    module : str
        The module whose ``start(run_dir, cfg, run_id, resume)`` returns the :class:`Tracker`.
    package : str
        The top-level package it needs (checked without importing it).
    extra : str
        The ``fedmtl`` extra that installs that package.
    description : str
        One line for the docs.
    """

    module: str
    package: str
    extra: str
    description: str

    def available(self) -> bool:
        """Whether :attr:`package` is installed."""
        return importlib.util.find_spec(self.package) is not None

    def start(self, run_dir: Path, cfg: ExperimentConfig, run_id: str, resume: bool) -> Tracker:
        """Start the tracker on ``run_dir``, whose identity is ``run_id`` (``resume``: what it
        logged of this run before is replaced)."""
        factory: Callable[[Path, ExperimentConfig, str, bool], Tracker] = importlib.import_module(self.module).start
        return factory(run_dir, cfg, run_id, resume)


TRACKERS: Registry[TrackerSpec] = Registry("tracker")
TRACKERS.register("tensorboard")(TrackerSpec(
    "fedmtl.trackers.tensorboard_tracker", "tensorboard", "tensorboard",
    "TensorBoard event files in <run>/tensorboard/ (tensorboard --logdir <run>/tensorboard)"))
TRACKERS.register("mlflow")(TrackerSpec(
    "fedmtl.trackers.mlflow_tracker", "mlflow", "mlflow",
    "an MLflow run in the local SQLite store <run>/mlflow.db "
    "(mlflow ui --backend-store-uri sqlite:///<run>/mlflow.db)"))


def tracker_names(setting: Iterable[str]) -> list[str]:
    """The names of ``run.trackers``, in order, without repeats."""
    return list(dict.fromkeys(n.strip() for n in setting if n.strip()))


def tracker_errors(setting: Iterable[str]) -> list[str]:
    """One-line config errors of ``run.trackers``: unknown names, or trackers whose package is missing."""
    errors, setting = [], list(setting)
    for name in tracker_names(setting):
        if name not in TRACKERS:
            errors.append(f"run.trackers = {setting!r}: {TRACKERS.unknown_message(name)}")
        elif not (spec := TRACKERS.get(name)).available():
            errors.append(f"run.trackers = {setting!r}: tracker '{name}' needs the {spec.package} package, "
                          f"which is not installed: pip install 'fedmtl[{spec.extra}]'")
    return errors


def scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """A ``rounds.csv`` row's finite numbers but ``round`` (booleans as 0/1), by column name."""
    out = {}
    for key, value in row.items():
        if key == "round" or isinstance(value, str) or value is None:
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            out[key] = number
    return out


class Trackers:
    """The run's started trackers, each switched off (reported once) if it fails.

    Parameters
    ----------
    run_dir : Path
        The run folder.
    cfg : ExperimentConfig
        The run's config (``run.trackers`` names the trackers).
    run_id : str
        The run's identity (``run-id``).
    earlier : Iterable[Mapping[str, Any]], optional
        On a resume, the ``rounds.csv`` rows the run keeps: replayed into the restarted trackers.
    resume : bool
        Whether the run resumes (the trackers' earlier files are started again).
    """

    def __init__(self, run_dir: Path, cfg: ExperimentConfig, run_id: str = "",
                 earlier: Iterable[Mapping[str, Any]] = (), resume: bool = False) -> None:
        self.active: dict[str, Tracker] = {}
        for name in tracker_names(cfg.run.trackers):
            try:
                self.active[name] = TRACKERS.get(name).start(Path(run_dir), cfg, run_id, resume)
            except Exception as exc:  # noqa: BLE001 - a tracker never stops the run, not even at its start
                logger.warning("tracker '%s' did not start and is switched off: %s", name, described(exc))
        for row in earlier:
            self.log_round(row)

    def _each(self, call: Callable[[Tracker], None]) -> None:
        for name, tracker in list(self.active.items()):
            try:
                call(tracker)
            except Exception as exc:  # noqa: BLE001 - a tracker never stops the run
                logger.warning("tracker '%s' failed and is switched off: %s", name, described(exc))
                self.active.pop(name, None)

    def log_round(self, row: Mapping[str, Any]) -> None:
        """Give every tracker one ``rounds.csv`` row."""
        self._each(lambda tracker: tracker.log_round(row))

    def finish(self, summary: Mapping[str, Any]) -> None:
        """Give every tracker the summary and close it."""
        self._each(lambda tracker: tracker.finish(summary))
        self.active.clear()

    def close(self) -> None:
        """Close every tracker without a summary."""
        self._each(lambda tracker: tracker.close())
        self.active.clear()
