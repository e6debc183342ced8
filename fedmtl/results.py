"""The run folder: the stable results format of fedmtl.

Each run writes one folder::

    config.toml     the fully resolved config: every default, the rules' and the method's
                    parameters included (client.head-store-dir relative to the run folder)
    run-id          the run's random identity, written once (checkpoints and head files carry it)
    metrics.csv     long format: round, client, task, split, metric, value
    placement.csv   where each reply was computed: round, client, stage, host, node, device
    rounds.csv      one row per round: server-side counts and across-client statistics (and,
                    for a method with a global and a personal model, the global view's: global_*)
    participation.csv  per client of the federation: rounds_trained, last_round, rounds_aggregated
    *.parquet       metrics, rounds and participation as Parquet, written when the run finishes
                    (``run.parquet``; the CSV files stay the source of truth: fedmtl.parquet)
    summary.json    final per-task statistics, participation, duration, paths, the config's
                    fingerprint and provenance (versions, git commit, host, times: fedmtl.provenance)
    checkpoints/    round-<r>.pt: the server's state after round r (the two latest), with the
                    run's identity and config (a resume refuses a different one)
    heads/          clients-<lo>-<hi>/client-<id>.r<round>.safetensors: each client's heads (disk
                    head store, by default; 100 clients per folder)
    plots/*.png     figures (see fedmtl.plots)
    tensorboard/, mlflow.db, mlflow-artifacts/   the trackers' files (``run.trackers``: fedmtl.trackers)

``metrics.csv`` rows with ``task == "all"`` are client-level (example counts, the client's
aggregation weight, head fingerprints). Split ``test`` holds the evaluated model the method
personalises; split ``test-global`` the global model's metrics of methods that have both
(:data:`GLOBAL_SPLIT`). pandas reads everything (``load_run``: the Parquet copies when they
are current, else the CSV files; the same DataFrames either way).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import shutil
import time
import tomllib
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedmtl import strict_json
from fedmtl.atomic import naming, torch_save, write_bytes
from fedmtl.background import BackgroundWork
from fedmtl.config import ExperimentConfig
from fedmtl.fairness import summarize
from fedmtl.group_fairness import one_class_predictions, summarize_group_gaps
from fedmtl.one_line import one_line
from fedmtl.parquet import CutShort, read_table, remove_parquet, wants_parquet, write_parquet
from fedmtl.plugins import plugin_digests
from fedmtl.protocol import TEST_GLOBAL
from fedmtl.provenance import collect_provenance, finish_provenance, utc_now
from fedmtl.run_tables import METRIC_COLUMNS as TABLE_METRIC_COLUMNS
from fedmtl.run_tables import PLACEMENT_COLUMNS, rounds_digest, rows_up_to, table_problems
from fedmtl.stop_record import STOPPED_FILE
from fedmtl.tasks import TaskSpec
from fedmtl.trackers import Trackers

METRIC_COLUMNS = list(TABLE_METRIC_COLUMNS)
METRIC_DIGEST = "metrics-digest"
"""A checkpoint's BLAKE2b digest of ``metrics.csv`` as it was when written (its header and every
row up to its round): a resume finds rows edited since, even where their count is unchanged
(:func:`fedmtl.run_tables.table_problems`)."""
ROUNDS_DIGEST = "rounds-digest"
"""A checkpoint's digest of the values of ``rounds.csv``'s rows up to its round
(:func:`fedmtl.run_tables.rounds_digest`)."""
METRIC_ROWS = "metrics-rows"
"""A checkpoint's count of the ``metrics.csv`` rows written up to its round: a resume finds
rows lost from a table cut at a line end (:func:`fedmtl.run_tables.table_problems`)."""
PARTICIPATION_COLUMNS = ["client", "rounds_trained", "last_round", "rounds_aggregated"]
CLIENT_LEVEL = "all"
GLOBAL_SPLIT = TEST_GLOBAL
"""``metrics.csv`` split of the global model's test metrics (:data:`fedmtl.protocol.TEST_GLOBAL`)."""
GLOBAL_PREFIX = "global_"
"""Prefix of the global view's ``rounds.csv`` columns (``global_<task>.<metric>.<stat>``)."""
GLOBAL = "global"
"""``summary.json`` key of the global view's final statistics (``final``, ``overall``, ``group``)."""
TRAINED_PREFIX = "trained_"
"""Prefix of the ``rounds.csv`` columns of the statistics over the evaluated clients that trained
at least once (``trained_<task>.<metric>.<stat>``, :data:`TRAINED_STATS` only)."""
TRAINED = "trained_only"
"""``summary.json`` key of the final statistics over the evaluated clients that trained."""
TRAINED_STATS = ("mean", "worst", "worst10", "jain", "gap")
"""The statistics repeated over trained clients only in ``rounds.csv``."""
ROUNDS_TRAINED = "rounds-trained"
"""``metrics.csv`` client-level metric: the rounds whose training reply the server accepted from the
client, up to and including the evaluated round."""
LAST_TRAINED = "last-trained-round"
"""``metrics.csv`` client-level metric: the last of those rounds (0: the client never trained)."""
NEVER_TRAINED = "evaluated_never_trained"
"""``rounds.csv`` column: evaluated clients whose model never trained in this run."""


RUN_MARKER = ".fedmtl-run"
"""The empty file :func:`create_run_dir` puts in every run folder it creates: ``fedmtl sweep``
deletes an unfinished folder only when it carries it."""


def create_run_dir(cfg: ExperimentConfig, out: str | Path | None = None) -> Path:
    """Create a new, empty run folder (holding only :data:`RUN_MARKER`).

    ``out`` is used as given (it must be absent or empty); otherwise the folder is
    ``<run.output-dir>/<run.name>-<timestamp>``.

    Raises
    ------
    FileExistsError
        When ``out`` exists and is not empty.
    ValueError
        When the folder made of ``run.name`` would not lie directly in ``run.output-dir``.
    """
    if out is not None:
        path = Path(out)
        # a folder holding only the marker is a run's that was stopped before it wrote anything: reused
        if path.exists() and not nothing_recorded(path):
            raise FileExistsError(f"run folder '{path}' exists and is not empty; choose another "
                                  "(--out; from Python: out=)")
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path(cfg.run.output_dir) / f"{cfg.run.name}-{stamp}"
        suffix = 1
        while path.exists():
            suffix += 1
            path = Path(cfg.run.output_dir) / f"{cfg.run.name}-{stamp}-{suffix}"
        if path.resolve().parent != Path(cfg.run.output_dir).resolve():
            raise ValueError(f"run.name = {cfg.run.name!r} would put the run folder outside "
                             f"run.output-dir = {cfg.run.output_dir!r}")
    path.mkdir(parents=True, exist_ok=True)
    (path / RUN_MARKER).touch()
    return path.resolve()


def remove_unused_run_dir(run_dir: str | Path) -> bool:
    """Delete a run folder that holds no file but :data:`RUN_MARKER` (a run that never
    started, e.g. Ray could not host it); return whether it was deleted."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or any(p.is_file() and p.name != RUN_MARKER for p in run_dir.rglob("*")):
        return False
    shutil.rmtree(run_dir)
    return True


def rounds_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """``rounds.csv`` of these rows: a column of whole numbers (counts) stays one where some
    rows lack it (a round that stopped early), written ``6``, not ``6.0``."""
    table = pd.DataFrame(rows)
    counts = [c for c in table.columns if _whole_numbers([r[c] for r in rows if r.get(c) is not None])]
    return table.astype(dict.fromkeys(counts, "Int64"))


def _cell(text: str) -> int | float | str:
    """A ``rounds.csv`` cell as it was logged: ``6`` an int, ``6.0`` or ``0.25`` a float, else text."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _whole_numbers(values: list[Any]) -> bool:
    """Whether ``values`` (not empty) are all integers (booleans are not)."""
    return bool(values) and all(isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_)
                                for v in values)


FORCED_RESUMES = "forced-resumes.jsonl"
"""The run folder's record of its resumes that ``--force`` let go of a problem: one JSON line
each (:func:`record_forced_resume`); ``summary.json``'s ``provenance`` lists them."""
FORCED_KEY = "forced_resumes"
"""``summary.json``'s ``provenance`` key of :func:`forced_resumes`."""


RUN_FILES = ("run-id", "flower-run-id", "metrics.csv", "rounds.csv", "placement.csv", "participation.csv",
             "summary.json", "client-errors.log", STOPPED_FILE, "metrics.parquet", "rounds.parquet",
             "participation.parquet", "mlflow.db", "checkpoints", "plots", "heads", "tensorboard", "mlflow-artifacts",
             FORCED_RESUMES)
"""What a run writes into its folder besides ``config.toml`` (``heads``: the default head store)."""


def unfinished_outputs(run_dir: str | Path, cfg: ExperimentConfig) -> list[str]:
    """What a finished run (it has ``summary.json``) lacks of its last outputs, written after
    the summary: the figures of :data:`fedmtl.plots.EVERY_RUN_FIGURES`, and the Parquet copies
    when ``run.parquet`` wants them (a run stopped while it wrote them)."""
    from fedmtl.parquet import TABLES, wants_parquet
    from fedmtl.plots import EVERY_RUN_FIGURES

    run_dir = Path(run_dir)
    names = [f"plots/{name}.png" for name in EVERY_RUN_FIGURES]
    if wants_parquet(cfg.run.parquet):
        names += [f"{table}.parquet" for table in TABLES if (run_dir / f"{table}.csv").is_file()]
    return [name for name in names if not (run_dir / name).is_file()]


def write_unfinished_outputs(run_dir: str | Path, cfg: ExperimentConfig) -> None:
    """Draw the run's figures and write its Parquet copies again (:func:`unfinished_outputs`)."""
    from fedmtl.parquet import wants_parquet, write_parquet
    from fedmtl.plots import plot_run

    plot_run(run_dir)
    if wants_parquet(cfg.run.parquet):
        write_parquet(run_dir)


def finished_table_problems(run_dir: str | Path, checkpoint: dict[str, Any] | None = None) -> list[str]:
    """What a finished run's tables lack of the rounds its newest checkpoint (or ``checkpoint``)
    holds (:func:`fedmtl.run_tables.table_problems`: rows lost, added or cut short; ``[]``
    without a checkpoint to check against). A resume of a finished run does nothing, and a
    sweep counts it as done: damage found here would otherwise stay."""
    if checkpoint is None:
        if newest_checkpoint_round(run_dir) is None:
            return []
        try:
            checkpoint, _ = load_checkpoint(run_dir)
        except CheckpointError:
            return []
    problems = table_problems(run_dir, int(checkpoint["round"]), checkpoint.get(METRIC_ROWS),
                              recorded_digests(checkpoint))
    return problems + _summary_problems(Path(run_dir)) + _participation_problems(Path(run_dir))


def read_summary(run_dir: str | Path) -> Any:
    """A run folder's ``summary.json`` as written, with its statistics' ``null`` read back as NaN
    (:data:`SUMMARY_STATISTICS`; the file is strict JSON, :mod:`fedmtl.strict_json`).

    Raises
    ------
    OSError, UnicodeDecodeError, ValueError
        When the file cannot be read or is not JSON.
    """
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    if isinstance(summary, dict):
        summary.update({key: strict_json.nan_for_null(summary[key]) for key in SUMMARY_STATISTICS
                        if isinstance(summary.get(key), dict)})
    return summary


def _summary_problems(run_dir: Path) -> list[str]:
    """A finished run's ``summary.json`` that no longer reads as a run summary (what
    ``fedmtl report`` refuses), as one problem naming the file; ``[]`` when it is absent."""
    path = run_dir / "summary.json"
    if not path.exists():
        return []
    try:
        summary = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        return [f"summary.json cannot be read ({one_line(error, 200)})"]
    if not isinstance(summary, dict) or not isinstance(summary.get("final"), dict):
        return ["summary.json holds no run summary"]
    return []


def _participation_problems(run_dir: Path) -> list[str]:
    """A finished run's ``participation.csv`` deleted or changed since ``summary.json`` recorded
    its counts (:func:`participation_problem`), as one problem naming the file."""
    try:
        recorded = json.loads((run_dir / "summary.json").read_text()).get("participation")
    except (OSError, ValueError, AttributeError):  # a summary that cannot be read is another check's to name
        return []
    if not isinstance(recorded, dict):
        return []
    try:
        table = read_participation(run_dir)
    except CutShort:  # written once, when the run ends: no resume cuts it back or writes it again
        return [f"{PARTICIPATION_FILE} cannot be read ({CutShort.WHAT})"]
    except (OSError, ValueError) as error:  # text where counts belong
        return [f"{PARTICIPATION_FILE} cannot be read ({one_line(error, 200)})"]
    problem = participation_problem(table, recorded)
    return [f"{PARTICIPATION_FILE} {problem}"] if problem else []


def written_by_run(run_dir: str | Path, head_store: str | Path | None = None) -> list[str]:
    """The names in ``run_dir`` of what a run writes there (:data:`RUN_FILES`, and the head
    store ``head_store`` where it lies inside the folder, at any depth) that are present."""
    run_dir = Path(run_dir)
    names = set(RUN_FILES)
    if head_store is not None:
        heads = Path(head_store).resolve()
        if heads != run_dir.resolve() and heads.is_relative_to(run_dir.resolve()):
            names.add(str(heads.relative_to(run_dir.resolve())))
    return sorted(n for n in names if (run_dir / n).exists() or (run_dir / n).is_symlink())


def nothing_recorded(folder: str | Path) -> bool:
    """``folder`` holds nothing but :data:`RUN_MARKER` (a run stopped in its start-up), or nothing."""
    return all(p.name == RUN_MARKER for p in Path(folder).iterdir())


def reset_run_dir(run_dir: str | Path, head_store: str | Path | None = None) -> list[str]:
    """Take a run folder back to what a new run starts from, for a run that starts again from
    round 1 (it has no checkpoint): delete what a run writes (:data:`RUN_FILES`, and the head
    store ``head_store`` when it lies in the folder), keep ``config.toml``, :data:`RUN_MARKER`
    and every other file (a user's notes); return the names deleted. Links are removed, never
    followed.

    Raises
    ------
    ValueError
        ``run_dir`` is a link, or not a folder fedmtl made (no :data:`RUN_MARKER`).
    """
    run_dir = Path(run_dir)
    if run_dir.is_symlink() or not (run_dir / RUN_MARKER).is_file():
        raise ValueError(f"'{run_dir}' is not a run folder fedmtl made (no {RUN_MARKER}); nothing was deleted")
    deleted = written_by_run(run_dir, head_store)
    for name in deleted:
        entry = run_dir / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    return deleted


OVERALL = "overall"
SUMMARY_STATISTICS = ("final", OVERALL, "group", GLOBAL, TRAINED)
"""The sections of ``summary.json`` that hold statistics, where ``null`` stands for a number
that was not finite (:mod:`fedmtl.strict_json`)."""


@dataclass
class RoundStats:
    """Across-client statistics of one round's evaluation.

    Attributes
    ----------
    round : int
        The round evaluated.
    stats : dict[str, dict[str, float]]
        Per task, :func:`fedmtl.fairness.summarize` of its primary metric across clients.
    metric : dict[str, str]
        Per task, the name of its primary metric.
    overall : dict[str, float]
        The same statistics of each client's mean over the tasks it holds (empty when the
        tasks' primary metrics differ in name or direction); ``metric[OVERALL]`` names it.
    group : dict[str, dict[str, float]]
        Per task with group metrics, :func:`fedmtl.group_fairness.summarize_group_gaps`.
    global_view : RoundStats or None
        The same statistics of the global model (split ``test-global``), for a method with a
        global and a personal model; ``None`` when no client reported a global view.
    evaluated : int or None
        How many clients were evaluated (``None``: not recorded).
    never_trained : int or None
        How many evaluated clients never trained in this run (``None``: not known).
    trained_view : RoundStats or None
        The statistics over the evaluated clients that trained at least once (``None``: not
        known, or no evaluated client trained).
    predictions : dict[str, str]
        Per task whose client models predict one class for the whole task or a group of the
        sensitive attribute, :meth:`fedmtl.group_fairness.OneClass.describe` (its accuracy and
        gaps then say nothing of fairness); tasks without such models are absent.
    """

    round: int
    stats: dict[str, dict[str, float]]
    metric: dict[str, str]
    overall: dict[str, float] = field(default_factory=dict)
    group: dict[str, dict[str, float]] = field(default_factory=dict)
    global_view: RoundStats | None = None
    evaluated: int | None = None
    never_trained: int | None = None
    trained_view: RoundStats | None = None
    predictions: dict[str, str] = field(default_factory=dict)

    def columns(self) -> dict[str, float]:
        """The flat ``rounds.csv`` columns: ``<task>.<metric>.<stat>`` and the group gaps, then
        the global view's, each prefixed with :data:`GLOBAL_PREFIX`."""
        out = {f"{task}.{self.metric[task]}.{key}": value
               for task, values in self.stats.items() for key, value in values.items()}
        out.update({f"{OVERALL}.{self.metric[OVERALL]}.{key}": value for key, value in self.overall.items()})
        out.update({f"{task}.{key}": value for task, values in self.group.items() for key, value in values.items()})
        if self.global_view is not None:
            out.update({GLOBAL_PREFIX + key: value for key, value in self.global_view.columns().items()})
        if self.never_trained is not None:
            out[NEVER_TRAINED] = self.never_trained
        if self.trained_view is not None:
            out.update({TRAINED_PREFIX + key: value for key, value in self.trained_view.columns().items()
                        if key.rsplit(".", 1)[-1] in TRAINED_STATS and key.count(".") == 2})
        return out

    def final_summary(self) -> dict[str, Any]:
        """``summary.json``'s ``final``, ``overall`` and ``group`` of these statistics."""
        return {
            "final": {task: {"metric": self.metric[task], **values} for task, values in self.stats.items()},
            OVERALL: {"metric": self.metric[OVERALL], **self.overall} if self.overall else {},
            "group": self.group,
            **({"predictions": self.predictions} if self.predictions else {}),
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RoundStats:
        """The inverse of :func:`dataclasses.asdict` (a checkpoint's ``last_stats``)."""
        values = dict(values)
        view, trained = values.pop("global_view", None), values.pop("trained_view", None)
        return cls(**values, global_view=None if view is None else cls.from_dict(view),
                   trained_view=None if trained is None else cls.from_dict(trained))


class RunRecorder:
    """Writes a run folder incrementally while a run progresses.

    Parameters
    ----------
    run_dir : Path
        The (existing) run folder.
    cfg : ExperimentConfig
        The resolved config, written to ``config.toml``.
    tasks : list[TaskSpec]
        The dataset's tasks (their primary metrics are summarised per round).
    resume_round : int, optional
        The checkpointed round a resumed run continues after (the files are cut back to it).
    background : BackgroundWork, optional
        Draw the figures in its thread; its owner joins it (:mod:`fedmtl.background`).
    """

    def __init__(
        self, run_dir: Path, cfg: ExperimentConfig, tasks: list[TaskSpec], resume_round: int | None = None,
        background: BackgroundWork | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.background = background
        """Where :meth:`finish` draws the figures (``None``: in the calling thread, before it returns)."""
        self.cfg = cfg
        self.tasks = tasks
        self.started = time.monotonic()
        self.provenance = {**collect_provenance(), "plugins": plugin_digests(list(cfg.run.plugins)),
                           "resumed_after_round": resume_round}
        """``summary.json``'s ``provenance``, collected once as the run (or its resume) starts."""
        self.rounds: list[dict[str, Any]] = []
        self.last_evaluated: tuple[int, list[int]] | None = None
        """The round last evaluated in this process and its evaluated clients."""
        self.participation: pd.DataFrame | None = None
        """The ``participation.csv`` table once :meth:`record_participation` wrote it."""
        self.metrics_path = self.run_dir / "metrics.csv"
        self.placement_path = self.run_dir / "placement.csv"
        self.metric_rows = 0
        """Rows of ``metrics.csv`` so far (a checkpoint records it: :data:`METRIC_ROWS`)."""
        self.metric_hash = hashlib.blake2b()
        """The digest of ``metrics.csv``'s bytes so far (a checkpoint records it: :data:`METRIC_DIGEST`)."""
        for sub in ("checkpoints", "plots"):
            (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
        if resume_round is not None:
            self.run_id = read_run_id(self.run_dir) or write_run_id(self.run_dir)
            self._truncate(resume_round)
        else:
            self.run_id = write_run_id(self.run_dir)
            """The run's identity (``run-id``), carried by its checkpoints and head files."""
            write_bytes(self.run_dir / "config.toml", cfg.to_toml().encode())
            header = _csv_bytes([METRIC_COLUMNS])
            write_bytes(self.metrics_path, header)
            self.metric_hash.update(header)
            with self.placement_path.open("w", newline="") as handle:
                csv.writer(handle).writerow(PLACEMENT_COLUMNS)
        self.trackers = Trackers(self.run_dir, cfg, self.run_id, self.rounds, resume=resume_round is not None)
        """The run's experiment trackers (``run.trackers``): each ``rounds.csv`` row and the summary."""

    def _truncate(self, last_round: int) -> None:
        """Drop what rounds after ``last_round`` wrote (a resumed run redoes them)."""
        kept = rows_up_to(self.metrics_path.read_bytes(), last_round)
        write_bytes(self.metrics_path, kept)
        self.metric_rows = max(len(kept.splitlines()) - 1, 0)
        self.metric_hash = hashlib.blake2b(kept)
        if self.placement_path.is_file():  # cut as metrics.csv is: its rows stay byte for byte (csv's line ends)
            write_bytes(self.placement_path, rows_up_to(self.placement_path.read_bytes(), last_round))
        else:  # a folder of an older fedmtl, or the file was deleted: it lists the resumed rounds
            with self.placement_path.open("w", newline="") as handle:
                csv.writer(handle).writerow(PLACEMENT_COLUMNS)
        rounds_path = self.run_dir / "rounds.csv"
        if rounds_path.is_file():
            rounds = pd.read_csv(rounds_path, dtype=str, keep_default_na=False)
            rows = [{k: _cell(v) for k, v in row.items() if v != ""} for row in rounds.to_dict("records")]
            self.rounds = [row for row in rows if row["round"] <= last_round]
            write_bytes(rounds_path, rounds_table(self.rounds).to_csv(index=False).encode())
            if self.rounds:
                self.started -= float(self.rounds[-1]["elapsed_s"])
        (self.run_dir / "summary.json").unlink(missing_ok=True)
        (self.run_dir / PARTICIPATION_FILE).unlink(missing_ok=True)  # rewritten from the checkpoint's record
        remove_parquet(self.run_dir)  # rewritten when the resumed run finishes

    @property
    def elapsed(self) -> float:
        """Seconds since the recorder was created."""
        return time.monotonic() - self.started

    def log_metrics(self, rows: list[tuple[int, int, str, str, str, float]]) -> None:
        """Append ``(round, client, task, split, metric, value)`` rows to ``metrics.csv``."""
        data = _csv_bytes(rows)
        with naming(self.metrics_path), self.metrics_path.open("ab") as handle:
            handle.write(data)
        self.metric_hash.update(data)
        self.metric_rows += len(rows)

    def log_placement(self, rows: list[tuple[int, int, str, str, str, str]]) -> None:
        """Append ``(round, client, stage, host, node, device)`` rows to ``placement.csv``."""
        if rows:
            with naming(self.placement_path), self.placement_path.open("a", newline="") as handle:
                csv.writer(handle).writerows(rows)

    def placement_summary(self) -> dict[str, int]:
        """Replies per ``host/node/device`` over the run (``summary.json``'s ``placement``)."""
        if not self.placement_path.is_file():
            return {}
        rows = pd.read_csv(self.placement_path, dtype=str, keep_default_na=False)
        keys = rows["host"] + "/" + rows["node"].str[:12] + "/" + rows["device"]
        return {str(k): int(v) for k, v in keys.value_counts().sort_index().items()}

    def evaluation_stats(
        self, server_round: int, per_client: dict[int, dict[str, dict[str, float]]],
        num_examples: dict[int, int],
    ) -> RoundStats:
        """Across-client statistics of each task's primary metric, overall and of group gaps."""
        stats, metric, group, predictions = {}, {}, {}, {}
        clients = sorted(per_client)
        for task in self.tasks:
            name = task.primary_metric
            higher = task.task_kind.metrics[name]
            held = [c for c in clients if task.name in per_client[c]]
            values = [per_client[c][task.name][name] for c in held]
            weights = [num_examples.get(c, 1) for c in held]
            stats[task.name] = summarize(values, weights, higher)
            metric[task.name] = name
            gaps = summarize_group_gaps([per_client[c][task.name] for c in held])
            if gaps:
                group[task.name] = gaps
                if note := one_class_predictions([per_client[c][task.name] for c in held]).describe():
                    predictions[task.name] = note
        overall = {}
        directions = {(t.primary_metric, t.task_kind.metrics[t.primary_metric]) for t in self.tasks}
        if len(self.tasks) > 1 and len(directions) == 1:
            (name, higher), = directions
            held = [c for c in clients if any(t.name in per_client[c] for t in self.tasks)]
            values = [sum(per_client[c][t][name] for t in per_client[c] if t in metric)
                      / sum(1 for t in per_client[c] if t in metric) for c in held]
            overall = summarize(values, [num_examples.get(c, 1) for c in held], higher)
            metric[OVERALL] = name
        return RoundStats(server_round, stats, metric, overall, group, predictions=predictions)

    def record_evaluation(
        self, server_round: int, per_client: dict[int, dict[str, dict[str, float]]],
        num_examples: dict[int, int], global_per_client: dict[int, dict[str, dict[str, float]]] | None = None,
        participation: Mapping[int, tuple[int, int | None]] | None = None,
    ) -> RoundStats:
        """Log every client's test metrics to ``metrics.csv``; return the round's statistics.

        Parameters
        ----------
        server_round : int
            The round evaluated.
        per_client : dict[int, dict[str, dict[str, float]]]
            ``{client: {task: {metric: value}}}`` of the model the method personalises (split ``test``).
        num_examples : dict[int, int]
            Test examples per client.
        global_per_client : dict, optional
            The same of the global model (split ``test-global``) for the clients that sent it;
            its statistics are the returned :attr:`RoundStats.global_view`.
        participation : Mapping, optional
            ``{client: (rounds trained, last round trained or None)}`` up to this round: logged
            as :data:`ROUNDS_TRAINED` and :data:`LAST_TRAINED` (0 = never) client-level rows,
            counted in :attr:`RoundStats.never_trained`, and the statistics over the clients that
            trained are :attr:`RoundStats.trained_view`.
        """
        views = {c: v for c, v in (global_per_client or {}).items() if v}
        rows: list[tuple[int, int, str, str, str, float]] = []
        for client in sorted(per_client):
            rows.append((server_round, client, CLIENT_LEVEL, "test", "num-examples", num_examples[client]))
            if participation is not None:
                trained, last = participation.get(client, (0, None))
                rows += [(server_round, client, CLIENT_LEVEL, "test", ROUNDS_TRAINED, trained),
                         (server_round, client, CLIENT_LEVEL, "test", LAST_TRAINED, last or 0)]
            for task, values in per_client[client].items():
                rows += [(server_round, client, task, "test", m, v) for m, v in values.items()]
            for task, values in views.get(client, {}).items():
                rows += [(server_round, client, task, GLOBAL_SPLIT, m, v) for m, v in values.items()]
        self.log_metrics(rows)
        self.last_evaluated = (server_round, sorted(per_client))
        stats = self.evaluation_stats(server_round, per_client, num_examples)
        if views:
            stats.global_view = self.evaluation_stats(server_round, views, num_examples)
        stats.evaluated = len(per_client)
        if participation is not None:
            trained = {c: v for c, v in per_client.items() if participation.get(c, (0, None))[0] > 0}
            stats.never_trained = len(per_client) - len(trained)
            if trained:
                stats.trained_view = self.evaluation_stats(server_round, trained, num_examples)
        return stats

    def record_participation(self, rows: Iterable[tuple[int, int, int | None, int]]) -> Path:
        """Write ``participation.csv`` (:data:`PARTICIPATION_COLUMNS`, one row per client of
        the federation; ``last_round`` empty for a client that never trained) and keep its
        summary for ``summary.json`` (:func:`participation_summary`)."""
        table = pd.DataFrame(list(rows), columns=PARTICIPATION_COLUMNS).astype({"last_round": "Int64"})
        path = self.run_dir / PARTICIPATION_FILE
        write_bytes(path, table.to_csv(index=False).encode())
        self.participation = table
        return path

    def log_round(self, row: dict[str, Any], stats: RoundStats | None) -> None:
        """Add one ``rounds.csv`` row (server counts plus per-task statistics)."""
        row = {"round": row["round"], "elapsed_s": round(self.elapsed, 3), **row}
        if stats is not None:
            row.update(stats.columns())
        self.rounds.append(row)
        write_bytes(self.run_dir / "rounds.csv", rounds_table(self.rounds).to_csv(index=False).encode())
        self.trackers.log_round(row)

    def save_checkpoint(self, server_round: int, state: dict[str, Any], keep: int | None = None) -> Path:
        """Write ``checkpoints/round-<r>.pt`` atomically, with the run's identity and config
        (:func:`checkpoint_identity`); delete all but the ``keep`` newest
        (default :data:`fedmtl.personalization.CHECKPOINTS_KEPT`: the head store keeps what they need)."""
        from fedmtl.personalization import CHECKPOINTS_KEPT

        keep = CHECKPOINTS_KEPT if keep is None else keep
        path = self.run_dir / "checkpoints" / f"round-{server_round}.pt"
        rounds = self.run_dir / "rounds.csv"
        digests = {METRIC_DIGEST: self.metric_hash.hexdigest(),
                   ROUNDS_DIGEST: rounds_digest(rounds.read_bytes(), server_round) if rounds.is_file() else None}
        torch_save({"round": server_round, **state, **checkpoint_identity(self.run_id, self.cfg),
                    METRIC_ROWS: self.metric_rows, **digests}, path)
        for old in checkpoint_files(self.run_dir)[:-keep]:
            old.unlink(missing_ok=True)
        return path

    def final_evaluated(self, final: RoundStats) -> list[int]:
        """The clients evaluated in ``final``'s round (from memory, else from ``metrics.csv``)."""
        if self.last_evaluated is not None and self.last_evaluated[0] == final.round:
            return self.last_evaluated[1]
        metrics = pd.read_csv(self.metrics_path, dtype={"task": str, "split": str, "metric": str})
        rows = metrics[(metrics["round"] == final.round) & (metrics["split"] == "test")]
        return sorted(int(c) for c in rows["client"].unique())

    def draw_figures(self) -> None:
        """Draw the run's figures into ``plots/`` (:func:`fedmtl.plots.plot_run`)."""
        from fedmtl.plots import plot_run

        plot_run(self.run_dir)

    def finish(self, final: RoundStats | None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write ``summary.json``, the plots (in :attr:`background` when set) and the Parquet
        copies (``run.parquet``), hand the summary to the trackers; return the summary."""
        summary: dict[str, Any] = {
            "name": self.cfg.run.name,
            "mode": self.cfg.run.mode,
            "dataset": self.cfg.data.dataset,
            "num_clients": self.cfg.data.num_clients,
            "rounds": self.cfg.run.rounds,
            "duration_s": round(self.elapsed, 3),
            "final_round": final.round if final else None,
            **(final.final_summary() if final else {"final": {}, OVERALL: {}, "group": {}}),
            SUMMARY_LAYOUT: data_layout(),
        }
        if final is not None and final.global_view is not None:
            summary[GLOBAL] = final.global_view.final_summary()
        if final is not None and final.trained_view is not None:
            summary[TRAINED] = {"evaluated_never_trained": final.never_trained,
                                **final.trained_view.final_summary()}
        if self.participation is not None:
            evaluated = self.final_evaluated(final) if final is not None else None
            summary["participation"] = participation_summary(self.participation, evaluated)
        summary.update({"placement": self.placement_summary(), "run_dir": str(self.run_dir),
                        "config_fingerprint": config_fingerprint(self.cfg),
                        "provenance": {**finish_provenance(self.provenance),
                                       FORCED_KEY: forced_resumes(self.run_dir)}, **(extra or {})})
        write_bytes(self.run_dir / "summary.json", strict_json.dumps(summary, indent=2).encode())
        if self.background is None:
            self.draw_figures()
        else:
            self.background.start("fedmtl-figures", self.draw_figures)
        if wants_parquet(self.cfg.run.parquet):
            write_parquet(self.run_dir)
        self.trackers.finish(summary)
        return summary


PARTICIPATION_FILE = "participation.csv"
LISTED_CLIENTS = 100
"""The most client ids ``summary.json``'s participation lists (``participation.csv`` has all)."""


def participation_summary(table: pd.DataFrame, evaluated: Iterable[int] | None = None) -> dict[str, Any]:
    """``summary.json``'s ``participation`` of a ``participation.csv`` table.

    ``clients``, ``trained`` and ``never_trained`` (how many clients of the federation trained
    in at least one round, or in none: ``rounds_trained`` above 0 or not), ``rounds_trained`` (``min``,
    ``median``, ``mean``, ``max`` over all clients), ``never_aggregated`` (clients whose update
    never entered the model); with the final round's ``evaluated`` clients: ``evaluated``,
    ``evaluated_never_trained`` and ``evaluated_never_trained_clients`` (the first
    :data:`LISTED_CLIENTS` ids): whose evaluated model never trained in this run.
    """
    trained = table["rounds_trained"].astype(int)
    out: dict[str, Any] = {
        "clients": len(table),
        "trained": int((trained > 0).sum()),
        "never_trained": int((trained == 0).sum()),
        "never_aggregated": int((table["rounds_aggregated"].astype(int) == 0).sum()),
        "rounds_trained": {"min": int(trained.min()), "median": float(trained.median()),
                           "mean": round(float(trained.mean()), 4), "max": int(trained.max())}
        if len(table) else {},
    }
    if evaluated is not None:
        evaluated = sorted(set(evaluated))
        rounds = dict(zip(table["client"].astype(int), trained, strict=True))
        never = [c for c in evaluated if rounds.get(c, 0) == 0]
        out.update({"evaluated": len(evaluated), "evaluated_never_trained": len(never),
                    "evaluated_never_trained_clients": never[:LISTED_CLIENTS]})
    return out


PARTICIPATION_CHECKED = ("clients", "trained", "never_trained", "never_aggregated", "rounds_trained")
"""The counts of ``summary.json``'s ``participation`` that ``participation.csv`` must give
(:func:`participation_problem`)."""


def participation_problem(table: pd.DataFrame | None, recorded: Any) -> str:
    """Why ``table`` (``participation.csv``; ``None`` when missing) is not the table whose
    counts ``summary.json`` records (``recorded``: its ``participation``), ``""`` when it is,
    or when the summary records none (a run of an older fedmtl, a centralized run)."""
    if not isinstance(recorded, dict):
        return ""
    if table is None:
        return "is missing, yet summary.json records the run's participation"
    try:
        found = participation_summary(table)
    except (KeyError, ValueError, TypeError) as error:
        return f"cannot be read ({error})"
    for key in PARTICIPATION_CHECKED:
        if key in recorded and recorded[key] != found[key]:
            return (f"gives participation {key} = {found[key]!r}, but summary.json records {recorded[key]!r}: "
                    "it was changed since the run wrote it")
    return ""


def read_participation(run_dir: str | Path) -> pd.DataFrame | None:
    """A run folder's ``participation.csv`` (``None`` when it has none: a centralized run, or
    one written before participation was recorded)."""
    path = Path(run_dir) / PARTICIPATION_FILE
    if not path.is_file():
        return None
    return read_table(run_dir, "participation")


class CheckpointError(RuntimeError):
    """No usable checkpoint in a run folder."""


def checkpoint_files(run_dir: str | Path) -> list[Path]:
    """``checkpoints/round-<r>.pt`` files, oldest first."""
    files = [p for p in (Path(run_dir) / "checkpoints").glob("round-*.pt")
             if p.stem.removeprefix("round-").isdigit()]
    return sorted(files, key=lambda p: int(p.stem.removeprefix("round-")))


def newest_checkpoint_round(run_dir: str | Path) -> int | None:
    """The round of a run folder's newest checkpoint (what ``--resume`` continues after), or
    ``None`` without one."""
    files = checkpoint_files(run_dir) if Path(run_dir).is_dir() else []
    return int(files[-1].stem.removeprefix("round-")) if files else None


def load_checkpoint(run_dir: str | Path, path: str | Path | None = None) -> tuple[dict[str, Any], list[str]]:
    """The newest checkpoint that loads (or ``path``), and a note per newer one that did not.

    Raises
    ------
    CheckpointError
        When no checkpoint loads (naming each file and its error).
    """
    import torch

    candidates = [Path(path)] if path is not None else list(reversed(checkpoint_files(run_dir)))
    if not candidates:
        raise CheckpointError(f"'{run_dir}' has no checkpoint (checkpoints/round-<r>.pt); nothing to resume")
    notes = []
    for candidate in candidates:
        try:
            state = torch.load(candidate, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or "round" not in state or "backbone" not in state:
                raise ValueError("not a fedmtl checkpoint")
            return state, notes
        except Exception as exc:  # noqa: BLE001 - any unreadable file is reported, the next is tried
            notes.append(f"checkpoint '{candidate}' is unusable ({type(exc).__name__}: {str(exc)[:200]})")
    raise CheckpointError("\n".join(notes))


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """Read a run folder: ``metrics`` and ``rounds`` DataFrames, ``summary`` dict and the
    ``participation`` DataFrame (``None`` without ``participation.csv``); the tables come from
    their Parquet copies when current (:func:`fedmtl.parquet.read_table`), with the dtypes
    :mod:`fedmtl.parquet` documents."""
    run_dir = Path(run_dir)
    return {
        "metrics": read_table(run_dir, "metrics"),
        "rounds": read_table(run_dir, "rounds"),
        "summary": read_summary(run_dir),
        "participation": read_participation(run_dir),
    }


# -- run identity and resume checks --------------------------------------------------------
RUN_ID_FILE = "run-id"
RESUME_FREE_KEYS = frozenset({
    "run.name", "run.output-dir", "run.plugins", "run.parquet", "run.trackers", "client.head-store-dir",
    "engine.backend", "engine.address", "engine.num-cpus", "engine.max-concurrent-clients", "engine.supernodes",
})
"""Config keys a resumed run may change: paths, names, where Ray runs and which copies of the results
it writes (Parquet, trackers), never the results."""


def recorded_digests(checkpoint: dict[str, Any]) -> dict[str, str]:
    """The table digests a checkpoint recorded (``{"metrics.csv": ..., "rounds.csv": ...}``; those
    of a checkpoint of an older fedmtl are absent)."""
    found = {"metrics.csv": checkpoint.get(METRIC_DIGEST), "rounds.csv": checkpoint.get(ROUNDS_DIGEST)}
    return {name: digest for name, digest in found.items() if isinstance(digest, str)}


def _csv_bytes(rows: Iterable[Iterable[Any]]) -> bytes:
    """``rows`` as the csv module writes them (``\\r\\n`` line ends), in UTF-8."""
    buffer = io.StringIO(newline="")
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue().encode("utf-8")


def write_run_id(run_dir: str | Path, run_id: str | None = None) -> str:
    """Write ``run_id`` (default: a new random one) to the run folder's ``run-id``; return it."""
    run_id = run_id or uuid.uuid4().hex
    write_bytes(Path(run_dir) / RUN_ID_FILE, f"{run_id}\n".encode())
    return run_id


FLOWER_RUN_FILE = "flower-run-id"


def write_flower_run_id(run_dir: str | Path, flower_run_id: int | str) -> None:
    """Write the id Flower gave the run (``flwr ls``) to the run folder's ``flower-run-id``,
    which tells the folders of concurrent ``flwr run`` submissions apart."""
    write_bytes(Path(run_dir) / FLOWER_RUN_FILE, f"{flower_run_id}\n".encode())


def folders_of_flower_run(output_dir: str | Path, flower_run_id: int | str) -> list[Path]:
    """The run folders in ``output_dir`` that the Flower run ``flower_run_id`` wrote."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    return sorted(p for p in output_dir.iterdir() if (p / FLOWER_RUN_FILE).is_file() and (p / "config.toml").is_file()
                  and (p / FLOWER_RUN_FILE).read_text().strip() == str(flower_run_id))


def read_run_id(run_dir: str | Path) -> str:
    """The run folder's ``run-id`` (``""`` when it has none)."""
    path = Path(run_dir) / RUN_ID_FILE
    return path.read_text().strip() if path.is_file() else ""


LATER_KEYS: dict[str, Any] = {"run.deterministic": False}
"""Keys added after run folders had been recorded, with the value that runs as those did: at that
value a key is left out of :func:`resume_config` (and so of config fingerprints), so a run folder
written before the key existed, whose config.toml lacks it, resumes and keeps its heads."""


def resume_config(cfg: ExperimentConfig) -> dict[str, Any]:
    """The flat config a resume must find unchanged (all keys but :data:`RESUME_FREE_KEYS`, and
    :data:`LATER_KEYS` at their old behaviour's value)."""
    return without_later_keys({k: v for k, v in sorted(cfg.to_flat().items()) if k not in RESUME_FREE_KEYS})


def without_later_keys(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``flat`` without the :data:`LATER_KEYS` that hold their old behaviour's value."""
    return {k: v for k, v in flat.items() if not (k in LATER_KEYS and LATER_KEYS[k] == v)}


def config_fingerprint(cfg: ExperimentConfig) -> str:
    """A short hash of :func:`resume_config`: equal for configs a run may resume with."""
    return _fingerprint(resume_config(cfg))


def _fingerprint(flat: Mapping[str, Any]) -> str:
    text = json.dumps(dict(flat), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


ROUNDS_KEY = "run.rounds"
"""The one key a resume may change beyond :data:`RESUME_FREE_KEYS`, to a larger value: the
run is extended (``fedmtl run --resume RUN --set run.rounds=N``)."""


def extended_to(before: Mapping[str, Any], now: Mapping[str, Any]) -> dict[str, Any]:
    """``before`` (a checkpoint's flat config) with ``now``'s ``run.rounds`` when ``now`` has
    more rounds: a run may be extended, not shortened."""
    old, new = before.get(ROUNDS_KEY), now.get(ROUNDS_KEY)
    if isinstance(old, int) and isinstance(new, int) and new > old:
        return {**before, ROUNDS_KEY: new}
    return dict(before)


def check_extension(before: int, rounds: Any) -> None:
    """Refuse to take a run of ``before`` rounds to ``rounds``: fewer rounds, or not a whole number.

    Raises
    ------
    ValueError
        Naming ``rounds`` and the run's rounds.
    """
    if not isinstance(rounds, int) or isinstance(rounds, bool):
        raise ValueError(f"run.rounds = {rounds!r}: expected an integer")
    if rounds < before:
        raise ValueError(f"run.rounds = {rounds}: the run has {before} rounds; a resume can extend a run, "
                         "not shorten it")


def _with_rounds(path: Path, rounds: int, cfg: ExperimentConfig) -> str:
    """The text of the run's ``config.toml`` with ``run.rounds = rounds``, every other line as it
    was (relative plugin paths stay relative: the folder moves with its plugins); ``cfg``'s
    TOML when the file does not say its rounds on a line of its own."""
    try:
        text = path.read_text(encoding="utf-8")
        before = tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return cfg.to_toml()
    lines, table = text.splitlines(keepends=True), ""
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("[") and not stripped.startswith("[["):
            table = stripped.strip("[]").strip()
        elif table == "run" and re.fullmatch(r"rounds\s*=\s*\d+", stripped):
            lines[i] = f"rounds = {rounds}\n"
            edited = "".join(lines)
            if tomllib.loads(edited) == {**before, "run": {**before.get("run", {}), "rounds": rounds}}:
                return edited
            break
    return cfg.to_toml()


def extend_run(run_dir: Path, cfg: ExperimentConfig, rounds: int,
               done: int | None = None) -> tuple[ExperimentConfig, str | None]:
    """Extend the run in ``run_dir``, whose config is ``cfg``, to ``rounds`` rounds: its
    ``config.toml`` then records them (a later resume continues to them). ``done`` is the
    round of the checkpoint it resumes from (``None``: its last round, a finished run).

    Returns
    -------
    tuple
        The extended config, and a note when the result differs from a run of ``rounds``
        rounds from the start: round ``cfg.run.rounds`` was evaluated as the last round off the
        ``run.evaluate-every`` schedule (its evaluation rows stay; with
        ``server.fraction-evaluate < 1`` sampling its clients also drew from the server's
        sampling stream), else ``None``.

    Raises
    ------
    ValueError
        ``rounds`` is fewer than the run's (a run is extended, never shortened), or not a
        whole number.
    """
    before = cfg.run.rounds
    check_extension(before, rounds)
    if rounds == before:
        return cfg, None
    cfg = cfg.with_values(run={"rounds": rounds})
    write_bytes(run_dir / "config.toml", _with_rounds(run_dir / "config.toml", rounds, cfg).encode())
    if not before % cfg.run.evaluate_every or (done is not None and done < before):
        return cfg, None  # round `before` is evaluated by a run of `rounds` rounds as well, or never ran
    note = (f"round {before} was evaluated as the run's last (run.evaluate-every = {cfg.run.evaluate_every}); "
            f"its evaluation stays in the results, where a run of {rounds} rounds from the start has none")
    if cfg.server.fraction_evaluate < 1:
        note += ", and the clients sampled after it may differ from that run's"
    return cfg, note


def shorter_runs(cfg: ExperimentConfig) -> Callable[[str], bool]:
    """Whether a config fingerprint is that of ``cfg`` with fewer rounds (heads written
    before the run was extended)."""
    flat = resume_config(cfg)
    known: set[str] = set()

    def test(fingerprint: str) -> bool:
        if not known:
            known.update(_fingerprint({**flat, ROUNDS_KEY: r}) for r in range(1, cfg.run.rounds))
        return fingerprint in known

    return test


def checkpoint_identity(run_id: str, cfg: ExperimentConfig) -> dict[str, Any]:
    """What a checkpoint carries besides the server's state: ``run-id``,
    ``config-fingerprint``, ``config`` (:func:`resume_config`), ``plugins`` (the digest of
    each plugin file's text the run imported: :func:`fedmtl.plugins.plugin_digests`) and
    ``data-layout`` (:data:`fedmtl.data.layout.DATA_LAYOUT`)."""
    from fedmtl.data.layout import DATA_LAYOUT

    return {"run-id": run_id, "config-fingerprint": config_fingerprint(cfg), "config": resume_config(cfg),
            "plugins": plugin_digests(list(cfg.run.plugins)), DATA_LAYOUT_KEY: DATA_LAYOUT}


def plugin_changes(recorded: Mapping[str, str], now: Mapping[str, str]) -> list[str]:
    """How the plugin files' texts differ from those a run recorded (``{entry: digest}`` of
    :func:`fedmtl.plugins.plugin_digests`): ``"<entry>: <digest> (was <digest>)"`` per entry
    whose text changed, else (the entries moved: ``run.plugins`` may change) the two sets of
    digests when they differ; ``[]`` when the same texts are imported."""
    if sorted(recorded.values()) == sorted(now.values()):
        return []
    same_entries = [e for e in now if e in recorded]
    changed = [f"{e}: {now[e]} (was {recorded[e]})" for e in same_entries if now[e] != recorded[e]]
    if changed and len(same_entries) == len(now) == len(recorded):
        return changed
    return [f"plugin files {sorted(now.values())} (were {sorted(recorded.values())})"]


def recorded_head_store_dir(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` as ``config.toml`` records it: the default head store folder is ``"heads"``,
    relative to the run folder, so a copied or moved run folder uses its own heads."""
    if cfg.client.head_store_dir == "":
        return cfg.with_values(client={"head_store_dir": "heads"})
    return cfg


def head_store_root(cfg: ExperimentConfig, run_dir: str | Path) -> Path:
    """The disk head store's folder: ``client.head-store-dir``, a relative one (and the
    default ``""`` = ``heads``) inside the run folder."""
    root = Path(cfg.client.head_store_dir or "heads").expanduser()
    return root if root.is_absolute() else Path(run_dir).resolve() / root


def trained_rounds(run_dir: str | Path, until_round: int) -> dict[int, int]:
    """Per client, the last round ≤ ``until_round`` whose training reply was aggregated
    (from ``metrics.csv``): its heads of that round, or of a later one, are on its store."""
    from fedmtl.protocol import HEADS_OUT

    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return {}
    metrics = pd.read_csv(path, dtype={"task": str, "split": str, "metric": str})
    rows = metrics[(metrics["split"] == "train") & (metrics["metric"] == HEADS_OUT)
                   & (metrics["round"] <= until_round)]
    return {int(c): int(r) for c, r in rows.groupby("client")["round"].max().items()}


def aggregated_training(run_dir: str | Path) -> dict[int, list[int]]:
    """Per client, the rounds whose ``metrics.csv`` has its training (its ``heads-fingerprint-out``
    row), sorted: every accepted training reply since 2026-12-03, aggregated or not; only the
    aggregated ones in a ``metrics.csv`` written before (what an older checkpoint, without
    participation, rebuilds its participation from)."""
    from fedmtl.protocol import HEADS_OUT

    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return {}
    metrics = pd.read_csv(path, dtype={"task": str, "split": str, "metric": str})
    rows = metrics[(metrics["split"] == "train") & (metrics["metric"] == HEADS_OUT)]
    return {int(c): sorted(int(r) for r in set(rounds)) for c, rounds in rows.groupby("client")["round"]}


def record_forced_resume(run_dir: str | Path, after_round: int, forced: list[ResumeProblem],
                         plugins_before: object) -> None:
    """Add a forced resume to the run folder's :data:`FORCED_RESUMES`: when, after which round,
    each problem overridden and what the override does, and the plugin files' digests the rounds
    before it ran (the checkpoint's; the resumed rounds' are ``provenance.plugins``), so that every
    round's numbers stay attributable to what produced them."""
    path = Path(run_dir) / FORCED_RESUMES
    line = json.dumps({"time": utc_now(), "after_round": int(after_round),
                       "overridden": [{"problem": p.message, "override": p.forced} for p in forced],
                       "plugins_before": plugins_before if isinstance(plugins_before, dict) else None})
    before = path.read_bytes() if path.is_file() else b""
    write_bytes(path, before + line.encode() + b"\n")


def forced_resumes(run_dir: str | Path) -> list[dict[str, Any]]:
    """The forced resumes :func:`record_forced_resume` recorded in ``run_dir`` (oldest first;
    a line that does not read is kept as ``{"unreadable": text}``)."""
    path = Path(run_dir) / FORCED_RESUMES
    if not path.is_file():
        return []
    out: list[dict[str, Any]] = []
    for text in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(text)
        except ValueError:
            entry = None
        out.append(entry if isinstance(entry, dict) else {"unreadable": text[:500]})
    return out


@dataclass(frozen=True)
class ResumeProblem:
    """Why a run folder cannot be resumed exactly.

    Attributes
    ----------
    message : str
        What differs, naming the key, file or folder.
    forced : str
        What ``--force`` does about it (``""``: ``--force`` cannot override it).
    clients : tuple of int
        The clients whose heads ``--force`` lets start from other heads than their last
        training left (the server then forgets those heads: :func:`forget_heads`).
    """

    message: str
    forced: str = ""
    clients: tuple[int, ...] = ()


SUMMARY_LAYOUT = "data_layout"
"""``summary.json``'s record of how the run's clients were built (:mod:`fedmtl.data.layout`)."""


def data_layout() -> int:
    """This fedmtl's :data:`fedmtl.data.layout.DATA_LAYOUT`."""
    from fedmtl.data.layout import DATA_LAYOUT

    return DATA_LAYOUT


DATA_LAYOUT_KEY = "data-layout"
"""The checkpoint's record of how its clients were built (:mod:`fedmtl.data.layout`)."""


def _layout_problems(name: str, checkpoint: dict[str, Any], cfg: ExperimentConfig) -> list[ResumeProblem]:
    """The checkpoint was written by a fedmtl that built this config's clients otherwise."""
    from fedmtl.data.layout import layout_changes

    changes = layout_changes(checkpoint.get(DATA_LAYOUT_KEY), cfg.data.dataset, cfg.data.partitioner,
                             dict(cfg.data.params))
    if not changes:
        return []
    return [ResumeProblem(f"{name} was written by a fedmtl that built this config's clients otherwise ("
                          f"{'; '.join(changes)}): resumed, they would train on other data from here on",
                          "the rounds after it use the clients as this fedmtl builds them")]


def resume_problems(run_dir: str | Path, cfg: ExperimentConfig, checkpoint: dict[str, Any],
                    heads: bool = True) -> list[ResumeProblem]:
    """What keeps ``checkpoint`` from resuming ``run_dir`` with ``cfg`` (its ``config.toml``)
    exactly: the run identity, the config, and (disk head store, unless ``heads`` is false:
    they are on the clients' own hosts) the heads it needs.

    The checkpoint must carry the run folder's ``run-id`` and a config equal to ``cfg`` but
    for :data:`RESUME_FREE_KEYS` and a larger ``run.rounds`` (an extended run,
    :func:`extended_to`; heads written under fewer rounds are this config's). Every client
    whose training was aggregated in a round ≤ the checkpoint's round (:func:`trained_rounds`),
    or whose saved heads the checkpoint's server knows (:func:`ledger_rounds`), must have heads
    of that round or later (and ≤ the checkpoint's), and every head file the resume would read
    must be readable and of this run and config (:func:`fedmtl.personalization.check_heads`).
    First of all, the run's tables must hold every row of those rounds
    (:func:`fedmtl.run_tables.table_problems`).
    """
    run_dir = Path(run_dir)
    done = int(checkpoint["round"])
    tables = table_problems(run_dir, done, checkpoint.get(METRIC_ROWS), recorded_digests(checkpoint))
    if tables:  # rows of rounds the checkpoint holds are lost: no resume can be exact, --force or not
        return [ResumeProblem(f"{problem}; the rounds up to {done} cannot be continued exactly") for problem in tables]
    name = f"checkpoint round-{done}.pt"
    problems = []
    if done > cfg.run.rounds:
        problems.append(ResumeProblem(f"{name} is of round {done}, beyond run.rounds = {cfg.run.rounds} of "
                                      "config.toml; a run cannot be shortened"))
    run_id = read_run_id(run_dir)
    if not run_id:
        problems.append(ResumeProblem(f"'{run_dir}' has no {RUN_ID_FILE} file",
                                      "the run takes the checkpoint's identity"))
    written_by = checkpoint.get("run-id")
    if not isinstance(written_by, str) or "config" not in checkpoint:
        problems.append(ResumeProblem(f"{name} has no run identity (written by an older fedmtl)",
                                      "it is taken as this run's, with config.toml as it is now"))
    else:
        if run_id and written_by != run_id:
            problems.append(ResumeProblem(f"{name} belongs to run {written_by}, not to this folder's {run_id}",
                                          "it is taken as this run's"))
        now = resume_config(cfg)
        changed = config_changes(extended_to(without_later_keys(checkpoint["config"]), now), now)
        if changed:
            problems.append(ResumeProblem(f"config.toml differs from the run's: {', '.join(changed)}",
                                          "the run continues with config.toml as it is now"))
    if heads:  # in a deployment the nodes build the clients with their own fedmtl: not checked here
        problems += _layout_problems(name, checkpoint, cfg)
    recorded_plugins = checkpoint.get("plugins")  # an older checkpoint has none
    if isinstance(recorded_plugins, dict):
        edited = plugin_changes(recorded_plugins, plugin_digests(list(cfg.run.plugins)))
        if edited:
            problems.append(ResumeProblem(f"a plugin file's text changed since {name} was written: "
                                          f"{'; '.join(edited)}",
                                          "the rounds after it run the plugins as they are now"))
    if heads and cfg.client.head_store == "disk":
        problems += head_problems(run_dir, cfg, done, run_id or (written_by if isinstance(written_by, str) else ""),
                                  ledger_rounds(checkpoint), kept_ledger(checkpoint))
    return problems


def config_changes(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``"<key> = <now> (was <before>)"`` for every key whose value differs."""
    out = []
    for key in sorted(set(before) | set(now)):
        if before.get(key) != now.get(key):
            old = repr(before[key]) if key in before else _missing(key)
            new = repr(now[key]) if key in now else _missing(key)
            out.append(f"{key} = {new} (was {old})")
    return out


def _missing(key: str) -> str:
    """How :func:`config_changes` names a key one side lacks: a :data:`LATER_KEYS` key's value
    (left out of the flat config at it), else ``unset``."""
    return repr(LATER_KEYS[key]) if key in LATER_KEYS else "unset"


def ledger_rounds(checkpoint: dict[str, Any]) -> dict[int, int]:
    """Per client, the round of the heads the checkpoint's server expects it to start from
    (its ``heads`` entry, ``{client: (round, heads-fingerprint-out) or None}``; an older
    checkpoint has none)."""
    heads = checkpoint.get("heads")
    if not isinstance(heads, dict):
        return {}
    return {int(c): int(h[0]) for c, h in heads.items() if isinstance(h, tuple | list) and len(h) == 2}


def kept_ledger(checkpoint: dict[str, Any]) -> dict[int, tuple[int, float] | None] | None:
    """The checkpoint's ``heads`` entry when its fingerprints are those the clients compute now,
    of their heads and their method's state (``heads-fingerprints = "kept"``, fedmtl since
    2026-12-02); ``None``: nothing to check against."""
    from fedmtl.personalization import KEPT_FINGERPRINTS

    heads = checkpoint.get("heads")
    if not isinstance(heads, dict) or checkpoint.get("heads-fingerprints") != KEPT_FINGERPRINTS:
        return None
    return {int(c): (int(h[0]), float(h[1])) if isinstance(h, tuple | list) and len(h) == 2 else None
            for c, h in heads.items()}


def _kept_problems(store: Any, cfg: ExperimentConfig, ledger: Mapping[int, tuple[int, float] | None], done: int,
                   skip: set[int]) -> list[Any]:
    """:func:`fedmtl.personalization.check_kept` for the clients not in ``skip`` (problems
    already found), with a model of each client's tasks, its fingerprints computed with the
    clients' torch threads (``engine.client-num-cpus``)."""
    import torch

    from fedmtl.data import load_federation
    from fedmtl.models import build_model
    from fedmtl.personalization import check_kept

    fed = load_federation(cfg.data, cfg.run.seed)
    models: dict[tuple[str, ...], Any] = {}

    def model_of(client: int) -> Any:
        tasks = fed.client_tasks(client)
        key = tuple(t.name for t in tasks)
        if key not in models:
            models[key] = build_model(cfg.model, fed.input_shape, tasks)
        return models[key]

    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.engine.client_num_cpus)
    try:
        problems = check_kept(store, ledger, done, model_of, cfg.model.heads != "global")
    finally:
        torch.set_num_threads(threads)
    return [p for p in problems if p.client not in skip]


UNCHECKED_AFTER_FORCE = ("missing", "replaced", "unexpected")
"""Problems whose clients a forced resume's server checks no more (:func:`forget_heads`)."""


def forget_heads(checkpoint: dict[str, Any], clients: Iterable[int]) -> None:
    """Let ``clients`` start the resumed run from whatever heads they have (``--force``): the
    checkpoint's server no longer names their heads (it learns them from their next reply)."""
    heads = checkpoint.get("heads")
    if isinstance(heads, dict):
        heads.update({c: None for c in clients})


def head_problems(run_dir: Path, cfg: ExperimentConfig, done: int, run_id: str,
                  known: Mapping[int, int] | None = None,
                  ledger: Mapping[int, tuple[int, float] | None] | None = None) -> list[ResumeProblem]:
    """The heads a resume after round ``done`` needs, checked on disk (one problem per
    kind: the clients are listed in it); ``known``: per client, the round of heads the
    checkpoint's server knows it saved (:func:`ledger_rounds`), besides those of ``metrics.csv``;
    ``ledger``: what it knows of each client's heads, fingerprints included (:func:`kept_ledger`),
    which the files must match (:func:`fedmtl.personalization.check_kept`)."""
    from fedmtl.personalization import DiskHeadStore, RunIdentity, check_heads

    store = DiskHeadStore(head_store_root(cfg, run_dir), RunIdentity(run_id, config_fingerprint(cfg)))
    trained = trained_rounds(run_dir, done)
    for client, server_round in (known or {}).items():
        trained[client] = max(trained.get(client, 0), server_round)
    found = check_heads(store, trained, done, also=shorter_runs(cfg))
    if ledger is not None:
        found += _kept_problems(store, cfg, ledger, done, {p.client for p in found})
    forced = {"missing": "these clients start again from the older or fresh heads they find",
              "other-config": "these heads are used as they are",
              "no-identity": "these heads are used as they are",
              "replaced": "these clients train from the heads they find",
              "unexpected": "these clients train from the heads they find",
              "unreadable": "", "other-run": ""}
    problems = []
    for kind, then in forced.items():
        messages = [p.message for p in found if p.kind == kind]
        if messages:
            shown = "; ".join(messages[:3]) + (f"; and {len(messages) - 3} more" if len(messages) > 3 else "")
            if not then:
                shown += " (move the file away: that client then needs --force to start from fresh heads)"
            clients = tuple(p.client for p in found if p.kind == kind) if kind in UNCHECKED_AFTER_FORCE else ()
            problems.append(ResumeProblem(shown, then, clients))
    return problems
