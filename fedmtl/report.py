"""Reports over many runs: who each configuration serves, and at what cost in accuracy.

``fedmtl report RUN_OR_SWEEP_DIR ... [--reference LABEL] [--out DIR]`` finds every finished
run folder under its arguments, groups runs whose configs differ only in ``run.seed`` (or
their name and output folder) into one *configuration*, and writes to ``DIR``:

- ``report.md``: per configuration, each task's (and overall: each client's mean over its
  tasks) mean client metric, worst-10% mean, Jain's index and Gini coefficient, each with a 95%
  interval (over seeds: Student t; with one seed: a bootstrap over clients), and Δm% against the
  reference configuration (Maninis et al. 2019; lower is better) with a paired interval; the
  differences against the reference (paired by seed, or by client with one seed); a
  group-fairness table when the data has sensitive attributes, saying where a model predicts one
  class for a whole task or group; links to the figures;
- ``report.csv``: the same numbers, one row per configuration and statistic (tidy form);

The reference is the configuration named with ``--reference``, else the first in command-line
order (inside a sweep folder, the order of its ``sweep.json``: the grid's order).
- the figures of :func:`fedmtl.plots.report_figures` (``client_cdf``, ``fairness_accuracy``,
  ``round_curves``, ``client_task_heatmap``, ``fairness_rounds`` and, when recorded,
  ``group_fairness``), as PNG, PDF or SVG;
- ``report.html``: the tables, the figures (interactive) and a per-client view in one
  self-contained file (:mod:`fedmtl.html_report`).

For a method with a global and a personal model (the runs' ``summary.json`` has ``global``),
the report adds a table of the global model's statistics, and the CDF, plane and round curves
show it beside the personal model's (dashed lines, hollow markers). When runs recorded their
clients' participation (``participation.csv``), a participation table says how many evaluated
clients never trained and how many of each task's worst-10% clients never trained.

A configuration's label lists the config keys that differ between configurations
(``server.weighting=qffl server.params={q = 1}``), or the run name when there is only one.

Figures are :class:`matplotlib.figure.Figure` objects saved directly: importing or calling
this module neither imports ``matplotlib.pyplot`` nor changes matplotlib's backend or rcParams.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedmtl.atomic import write_bytes
from fedmtl.fairness import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    bootstrap_interval,
    delta_m,
    row_statistics,
    t_interval,
    worst_fraction_mean,
)
from fedmtl.group_fairness import OneClass, one_class_predictions, resampled_group_gaps
from fedmtl.html_report import HTML_FILE, write_html_report
from fedmtl.labels import format_value
from fedmtl.one_line import counted, one_line, visible
from fedmtl.plots import (
    DEFAULT_DPI,
    REPORT_FIGURES,
    check_format,
    checked_table,
    higher_is_better,
    pareto_front,  # noqa: F401 (part of this module's interface)
    report_figure_files,
    report_figures,
)
from fedmtl.protocol import TEST, TEST_GLOBAL
from fedmtl.results import (
    GLOBAL,
    OVERALL,
    PARTICIPATION_FILE,
    SUMMARY_LAYOUT,
    participation_problem,
    read_summary,
)
from fedmtl.screening import evaluation_range
from fedmtl.stop_record import read_stop

IGNORED_KEYS = ("run.seed", "run.name", "run.output-dir", "run.parquet", "run.trackers", "run.plugins",
                "client.head-store-dir", "engine.supernodes", "engine.backend", "run.deterministic")
"""Config keys that do not make a different configuration (seeds, names, folders, which copies of
the results a run wrote, and how many virtual SuperNodes played the clients or which backend ran
them, neither of which changes a run's results; whether GPU kernels were deterministic, which
changes no CPU number and a GPU run's by rounding; where the plugin files lie is recorded in each
run's config)."""
TABLE_STATS = (("mean", "mean"), ("worst10", "worst-10%"), ("jain", "Jain"), ("gini", "Gini"))


@dataclass
class RunResult:
    """One finished run folder, read for the report."""

    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    final: pd.DataFrame  # client, task, value (primary metric at the last evaluated round)
    curves: pd.DataFrame  # round, client, task, value (primary metric every evaluated round)
    global_final: pd.DataFrame = field(default_factory=pd.DataFrame)
    """As ``final``, of the global model (split ``test-global``; empty: the run has no global view)."""
    global_curves: pd.DataFrame = field(default_factory=pd.DataFrame)
    """As ``curves``, of the global model."""
    participation: pd.DataFrame | None = None
    """The run's ``participation.csv`` (``None``: not recorded)."""
    final_metrics: pd.DataFrame = field(default_factory=pd.DataFrame)
    """client, task, metric, value: every metric of split ``test`` at the final round (the group
    metrics of :mod:`fedmtl.group_fairness` among them)."""
    rounds: pd.DataFrame | None = None
    """The run's ``rounds.csv`` as read and checked with the run (``None``: the figures read it
    from ``path``)."""

    @property
    def has_global(self) -> bool:
        """The run measured a global model beside the personal one."""
        return bool(self.summary.get(GLOBAL, {}).get("final"))

    @property
    def seed(self) -> int:
        """``run.seed``."""
        return int(self.config.get("run.seed", 0))

    @property
    def tasks(self) -> dict[str, str]:
        """``{task: primary metric}``."""
        return {t: s["metric"] for t, s in self.summary["final"].items()}

    def identity(self) -> str:
        """The config without the keys that differ between seeds of one configuration (seed, name, folders)."""
        return json.dumps({k: v for k, v in self.config.items() if k not in IGNORED_KEYS},
                          sort_keys=True, default=str)


@dataclass
class Configuration:
    """Runs of one configuration (its seeds)."""

    label: str
    runs: list[RunResult] = field(default_factory=list)
    repeats: list[tuple[RunResult, RunResult]] = field(default_factory=list)
    """``(kept, left out)``: a run of the same configuration and seed as a kept one, left out of
    the statistics (a seed counts once)."""


def _flatten(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in nested.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and not prefix:
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


SWEEP_MANIFEST = "sweep.json"
"""A sweep folder's manifest (``fedmtl.launch.sweep``): its runs in grid × seed order."""


def _runs_in_order(folder: Path) -> list[Path]:
    """The finished runs at or under ``folder``: a sweep's in the order of its ``sweep.json``
    (the grid's order, then the seeds), then any others, sub-folder by sub-folder in name order;
    symbolic links are not followed."""
    if (folder / "summary.json").is_file():
        return [folder]
    found: list[Path] = []
    try:
        listed = json.loads((folder / SWEEP_MANIFEST).read_text())["runs"]
        found = [folder / r["folder"] for r in listed if (folder / r["folder"] / "summary.json").is_file()]
    except (OSError, ValueError, KeyError, TypeError):
        found = []
    for child in sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()):
        found += [r for r in _runs_in_order(child) if r not in found]
    return found


def find_run_dirs(paths: list[str | Path]) -> list[Path]:
    """Every finished run folder (one with ``summary.json``) at or under ``paths``, in order.

    The order is the command line's: the paths in the order given and, inside a sweep folder,
    the order of its ``sweep.json`` (grid order, then seeds), never alphabetical; so the first
    configuration, the report's default reference, is the first one the user named.

    Raises
    ------
    FileNotFoundError
        Naming a path that does not exist, is a file, or holds no finished run.
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"'{path}' does not exist")
        if not path.is_dir():
            raise FileNotFoundError(f"'{path}' is a file, not a folder: give run folders, sweep folders "
                                    "or folders holding them")
        runs = _runs_in_order(path)
        if not runs:
            stopped = read_stop(path)  # a run folder that says why its run stopped (fedmtl.stop_record)
            raise FileNotFoundError(f"'{path}' holds no finished run (no summary.json under it)"
                                    + (f"; its run stopped: {stopped}" if stopped else ""))
        seen = {r.resolve() for r in found}  # one run given twice, or under two spellings, counts once
        found += [r for r in runs if r.resolve() not in seen]
    return found


SUMMARY_CHECKED_STATS = ("mean", "worst10", "jain", "gini")
"""The statistics of ``summary.json``'s ``final`` the report shows: each must be what the
final round's per-client rows of ``metrics.csv`` give (:func:`_check_final_against_rows`)."""


UNUSABLE_HINT = "give the report the other runs' folders, or run this one again"
"""What an error about a run folder the report cannot use says to do."""


def _unusable(file: Path, what: str) -> ValueError:
    """The one-line error of a run folder's ``file`` the report cannot use, saying ``what`` is wrong."""
    return ValueError(f"'{file}' {what}: {UNUSABLE_HINT}")


def _check_final_section(path: Path, final: dict) -> None:
    """``summary.json``'s ``final``: a table per task naming its metric, statistics as numbers."""
    for task, stats in final.items():
        if not isinstance(stats, dict) or not isinstance(stats.get("metric"), str):
            raise _unusable(path / "summary.json", f"has no metric name for task '{task}' under final")
        for stat in SUMMARY_CHECKED_STATS:
            value = stats.get(stat)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise _unusable(path / "summary.json", f"has final.{task}.{stat} = {value!r}, not a number")


def _check_rows_in_range(path: Path, final: dict, rows: pd.DataFrame) -> None:
    """Every per-client value of a task's primary metric in ``rows`` (round, client, task, value:
    every evaluated round, as the report's curves and figures use them) within its metric's
    range: the server screens out evaluation replies outside it, so a run never records one."""
    for task, stats in final.items():
        mine = rows[rows["task"] == task]
        values = mine["value"].to_numpy(dtype=np.float64)
        bounds = evaluation_range(stats["metric"], math.inf)
        if not len(values) or bounds is None:
            continue
        outside = (values < bounds[0]) | (values > bounds[1]) | np.isnan(values)
        if outside.any():
            at = int(np.argmax(outside))
            raise _unusable(path / "metrics.csv", f"has a round-{int(mine['round'].iloc[at])} {task} "
                                                  f"{stats['metric']} of {values[at]:g}, "
                                                  f"outside [{bounds[0]:g}, {bounds[1]:g}]")


def _check_final_against_rows(path: Path, final: dict, rows: pd.DataFrame) -> None:
    """Every statistic of ``summary.json``'s ``final`` the one the final round's per-client
    values give (the report's table reads the summary, its per-client columns ``metrics.csv``:
    the two must agree)."""
    for task, stats in final.items():
        values = rows.loc[rows["task"] == task, "value"].to_numpy(dtype=np.float64)
        if not len(values):
            continue
        recomputed = row_statistics(values[None, :], higher_is_better(stats["metric"]))
        for stat in SUMMARY_CHECKED_STATS:
            if stats.get(stat) is None:
                continue
            found, expected = float(stats[stat]), float(recomputed[stat][0])
            same = (math.isnan(found) and math.isnan(expected)) or math.isclose(found, expected, rel_tol=1e-9,
                                                                                 abs_tol=1e-12)
            if not same:
                raise _unusable(path / "summary.json", f"has final.{task}.{stat} = {found!r}, where the final "
                                                       f"round's rows of metrics.csv give {expected!r}")


def read_run(path: Path) -> RunResult:
    """Read one run folder's config, summary and per-client primary metrics.

    Raises
    ------
    ValueError
        Naming the file when ``summary.json``, ``config.toml`` or ``metrics.csv`` cannot be read
        or parsed, or disagree with each other (:func:`_check_final_against_rows`), or ``run.seed``
        is not a whole number.
    """
    try:
        summary = read_summary(path)
        if not isinstance(summary, dict) or not isinstance(summary.get("final"), dict):
            raise ValueError("it holds no run summary")
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise _unusable(path / "summary.json", f"cannot be read ({one_line(error, 200)})") from None
    try:
        config = _flatten(tomllib.loads((path / "config.toml").read_text()))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise _unusable(path / "config.toml", f"cannot be read ({one_line(error, 200)})") from None
    seed = config.get("run.seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise _unusable(path / "config.toml", f"has run.seed = {seed!r}, not a whole number")
    _load_run_plugins(config)
    _check_final_section(path, summary["final"])
    metrics = _run_table(path, "metrics")  # metrics.parquet when current
    rounds = _run_table(path, "rounds", required=False)
    participation = _run_table(path, "participation", required=False)
    primary = {t: s["metric"] for t, s in summary["final"].items()}

    def primary_rows(split: str) -> pd.DataFrame:
        rows = metrics[(metrics["split"] == split) & metrics["task"].isin(list(primary))]
        rows = rows[rows["metric"] == rows["task"].map(primary)]
        return rows[["round", "client", "task", "value"]].reset_index(drop=True)

    curves, global_curves = primary_rows(TEST), primary_rows(TEST_GLOBAL)
    last = summary.get("final_round") or (int(curves["round"].max()) if len(curves) else 0)
    final = curves[curves["round"] == last][["client", "task", "value"]].reset_index(drop=True)
    global_final = global_curves[global_curves["round"] == last][["client", "task", "value"]].reset_index(drop=True)
    final_metrics = metrics[(metrics["split"] == TEST) & (metrics["round"] == last)]
    final_metrics = final_metrics[["client", "task", "metric", "value"]].reset_index(drop=True)
    _check_rows_in_range(path, summary["final"], curves)
    _check_rows_in_range(path, summary["final"], global_curves)
    _check_final_against_rows(path, summary["final"], final)
    _check_participation(path, summary, participation)
    return RunResult(path, config, summary, final, curves, global_final, global_curves, participation,
                     final_metrics, pd.DataFrame({"round": []}) if rounds is None else rounds)


def _check_participation(path: Path, summary: dict, participation: pd.DataFrame | None) -> None:
    """Refuse a ``participation.csv`` deleted or changed since the run recorded its counts in
    ``summary.json`` (:func:`fedmtl.results.participation_problem`): a report would otherwise
    say that the run did not record participation, or count an edited file."""
    if problem := participation_problem(participation, summary.get("participation")):
        raise _unusable(path / PARTICIPATION_FILE, problem)


def _load_run_plugins(config: dict[str, Any]) -> None:
    """Import the plugins a run names (``run.plugins``), so that a plugin's task kind says which
    way its metrics are better. One that cannot be imported (moved, edited into an error) is left
    out: a report of built-in metrics does not need it, and one of its kind's metrics then says
    what is missing (:func:`fedmtl.plots.higher_is_better`)."""
    from fedmtl.plugins import PluginError, import_plugin, load_entry_points, plugin_entries

    with contextlib.suppress(PluginError):  # installed packages' plugins: one that is broken stops none of the run's
        load_entry_points()
    for entry in plugin_entries({"run": {"plugins": config.get("run.plugins", [])}}):
        with contextlib.suppress(PluginError):
            import_plugin(entry)


def _run_table(path: Path, name: str, required: bool = True) -> pd.DataFrame | None:
    """Table ``name`` of run folder ``path`` (:func:`fedmtl.plots.checked_table`: its Parquet copy
    when current, whole rows, numbers where numbers belong); ``None`` when it is not ``required``
    and has no CSV file (a run of an older fedmtl, a centralized run).

    Raises
    ------
    ValueError
        Naming the file when it is missing (and ``required``) or cannot be read.
    """
    if not required and not (path / f"{name}.csv").is_file():
        return None
    try:
        return checked_table(path, name)
    except ValueError as error:  # it names the file
        raise ValueError(f"{error}: {UNUSABLE_HINT}") from None


def check_one_dataset(runs: list[RunResult]) -> None:
    """Refuse runs of different datasets in one report: their clients and tasks are not the
    same, so pairing them by client (the paired intervals, Δm%) would compare unrelated numbers.

    Raises
    ------
    ValueError
        Naming a run of each dataset.
    """
    first: dict[str, Path] = {}
    for run in runs:
        first.setdefault(str(run.config.get("data.dataset", "")), run.path)
    if len(first) > 1:
        named = "; ".join(f"{dataset or '(none)'} in '{path}'" for dataset, path in first.items())
        raise ValueError(f"the runs are of {len(first)} datasets ({named}): a report compares runs of one "
                         "dataset; give it the folders of one")


def group_configurations(runs: list[RunResult]) -> list[Configuration]:
    """Group runs by configuration and label each one by the keys that differ."""
    groups: dict[str, Configuration] = {}
    for run in runs:
        group = groups.setdefault(run.identity(), Configuration(""))
        kept = next((r for r in group.runs if r.seed == run.seed), None)
        if kept is None:
            group.runs.append(run)
        else:  # the same configuration and seed again (a run made twice): its seed counts once
            group.repeats.append((kept, run))
    configurations = list(groups.values())
    keys = sorted({k for c in configurations for k in c.runs[0].config} - set(IGNORED_KEYS))
    varying = [k for k in keys
               if len({json.dumps(c.runs[0].config.get(k), sort_keys=True, default=str)
                       for c in configurations}) > 1]
    for c in configurations:
        config = c.runs[0].config
        c.label = visible(" ".join(f"{k}={format_value(config[k])}" for k in varying if k in config)
                          or str(config.get("run.name", c.runs[0].path.name)))
        c.runs.sort(key=lambda r: r.seed)
    return configurations


def _scale(metric: str) -> float:
    return 100.0 if metric == "accuracy" else 1.0


def _task_order(configurations: list[Configuration]) -> dict[str, str]:
    tasks: dict[str, str] = {}
    for c in configurations:
        for run in c.runs:
            tasks.update({t: m for t, m in run.tasks.items() if t not in tasks})
    return tasks


GLOBAL_STAT = "global_"
"""Prefix of the global model's statistics in ``report.csv`` (``global_<task>.<stat>``)."""


def _run_values(run: RunResult, tasks: dict[str, str], views: bool = False,
                participation: bool = False, overall: str | None = None) -> dict[str, float]:
    """The table's statistics of one run: ``{"<task>.<stat>": value}`` (metric scaled); with
    ``overall`` (its metric) also ``overall.<stat>``; with ``views`` also the global model's
    (``global_<task>.<stat>``, NaN for a run without); with ``participation`` also
    :func:`participation_values`."""
    out = {}
    sections = (("", run.summary), (GLOBAL_STAT, run.summary.get(GLOBAL, {})))
    for prefix, summary in sections:
        if prefix and not views:
            continue
        panels = dict(tasks) | ({OVERALL: overall} if overall else {})
        for task, metric in panels.items():
            stats = summary.get(OVERALL) if task == OVERALL else summary.get("final", {}).get(task)
            for stat, _ in TABLE_STATS:
                value = stats.get(stat) if stats else None
                if value is not None and stat in ("mean", "worst10"):
                    value *= _scale(metric)
                out[f"{prefix}{task}.{stat}"] = math.nan if value is None else float(value)
    if participation:
        out.update(participation_values(run, tasks))
    return out


def worst_clients(final: pd.DataFrame, task: str, metric: str, fraction: float = 0.1) -> list[int]:
    """The ``max(1, ⌊fraction·n⌋)`` worst clients of ``task`` in ``final`` (the clients counted
    in the worst-10% statistic; ties broken by client id)."""
    rows = final[final["task"] == task].sort_values(["value", "client"], ascending=[higher_is_better(metric), True])
    if rows.empty:
        return []
    return [int(c) for c in rows["client"].head(max(1, math.floor(fraction * len(rows))))]


def participation_values(run: RunResult, tasks: dict[str, str]) -> dict[str, float]:
    """A run's participation statistics (NaN without ``participation.csv``): ``never_trained``
    (clients evaluated at the final round whose training never was accepted),
    ``rounds_trained.min/median/max`` (over all clients), and per task
    ``<task>.worst10_never_trained`` (of its worst-10% clients at the final round, how many
    never trained) and ``<task>.trained_worst10`` (the worst-10% mean over the clients that
    trained, metric scaled)."""
    keys = ["never_trained", "rounds_trained.min", "rounds_trained.median", "rounds_trained.max"]
    keys += [f"{t}.{k}" for t in tasks for k in ("worst10_never_trained", "trained_worst10")]
    table = run.participation
    if table is None:
        return dict.fromkeys(keys, math.nan)
    rounds = dict(zip(table["client"].astype(int), table["rounds_trained"].astype(int), strict=True))
    never = {c for c, n in rounds.items() if n == 0}
    trained = table["rounds_trained"].astype(float)
    out = {"never_trained": float(len(set(run.final["client"].astype(int)) & never)),
           "rounds_trained.min": trained.min(), "rounds_trained.median": trained.median(),
           "rounds_trained.max": trained.max()}
    for task, metric in tasks.items():
        worst = worst_clients(run.final, task, metric)
        rows = run.final[(run.final["task"] == task) & ~run.final["client"].isin(list(never))]
        out[f"{task}.worst10_never_trained"] = float(sum(c in never for c in worst)) if worst else math.nan
        out[f"{task}.trained_worst10"] = worst_fraction_mean(
            rows["value"].to_numpy(), 0.1, higher_is_better(metric)) * _scale(metric)
    return out


# -- estimates: means with intervals, differences with paired intervals ---------------------
DELTA = ".delta"
"""Suffix of a difference against the reference in ``report.csv`` (``<task>.<stat>.delta``)."""
DELTA_STATS = ("mean", "worst10")
"""The statistics whose difference against the reference the report gives."""


@dataclass(frozen=True)
class Estimate:
    """A mean with its 95% interval.

    Attributes
    ----------
    mean : float
        The estimate (NaN: none).
    low, high : float
        The interval (NaN: none, e.g. one value and nothing to resample).
    std : float
        The sample standard deviation of the values over seeds (NaN with one).
    n : int
        Seeds, or clients for a bootstrap.
    method : str
        How the interval was computed (``"t, 3 seeds"``, ``"bootstrap, 10 clients"``, ``"paired
        t, 3 seeds"``, ``"paired bootstrap, 10 clients"``), or why there is none.
    missing : int
        Seeds whose run has no value of the statistic (NaN: Jain's index of all-zero accuracies,
        a table the run did not record), left out of the mean: the cell says so.
    """

    mean: float
    low: float = math.nan
    high: float = math.nan
    std: float = math.nan
    n: int = 0
    method: str = ""
    missing: int = 0

    def cell(self, digits: int) -> str:
        """``mean [low, high]``; the mean alone without an interval; ``–`` without a mean; with
        ``(n of N seeds)`` after it when seeds without a value were left out."""
        if math.isnan(self.mean):
            return "–"
        fewer = f" ({self.n} of {self.n + self.missing} seeds)" if self.missing else ""
        if math.isnan(self.low) or math.isnan(self.high):
            return f"{self.mean:.{digits}f}{fewer}"
        mark = CUT_MARK if CUT_NOTE in self.method else ""
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]{mark}{fewer}"


def seed_estimate(values: list[float], paired: bool = False) -> Estimate:
    """The mean of one statistic over seeds with its Student-t interval (n − 1 degrees of freedom;
    none with one seed); seeds without a value (``None``, NaN) are left out and counted
    (:attr:`Estimate.missing`)."""
    finite = [v for v in values if v is not None and not math.isnan(v)]
    mean, low, high = t_interval(finite)
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else math.nan
    method = f"{'paired ' if paired else ''}t, {len(finite)} seeds" if len(finite) > 1 else ""
    missing = len(values) - len(finite) if finite else 0
    if missing:
        method = "; ".join(filter(None, [method, f"{missing} of {len(values)} seeds without a value, left out"]))
    return Estimate(mean, low, high, std, len(finite), method, missing)


def _panel_stats(values: np.ndarray, metric: str, name: str) -> dict[str, np.ndarray]:
    """``<name>.<stat>`` of each row of ``values`` (NaN: no value), as the run's summary computes
    them (:func:`fedmtl.fairness.row_statistics`), the metric scaled."""
    stats = row_statistics(values, higher_is_better(metric))
    return {f"{name}.{stat}": stats[stat] * (_scale(metric) if stat in ("mean", "worst10") else 1.0)
            for stat, _ in TABLE_STATS}


def client_matrix(final: pd.DataFrame, tasks: list[str], clients: list[int]) -> np.ndarray:
    """``final`` (client, task, value) as a clients × tasks array (NaN: the client does not hold the task)."""
    if final.empty:
        return np.full((len(clients), len(tasks)), math.nan)
    table = final.pivot_table(index="client", columns="task", values="value", aggfunc="first")
    return table.reindex(index=clients, columns=tasks).to_numpy(dtype=np.float64)


def matrix_stats(matrix: np.ndarray, tasks: dict[str, str], overall: str | None, prefix: str = "",
                 rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The table's statistics of the clients of ``matrix`` (:func:`client_matrix`) per task and,
    with ``overall`` (its metric), of each client's mean over the tasks it holds; one value per
    row of ``rows`` (each a resample of the clients' row indices; default: every client once)."""
    rows = np.arange(len(matrix))[None, :] if rows is None else np.atleast_2d(rows)
    out: dict[str, np.ndarray] = {}
    for k, (task, metric) in enumerate(tasks.items()):
        out.update(_panel_stats(matrix[:, k][rows], metric, f"{prefix}{task}"))
    if overall:
        held = ~np.all(np.isnan(matrix), axis=1)
        means = np.full(len(matrix), math.nan)
        means[held] = np.nanmean(matrix[held], axis=1)
        out.update(_panel_stats(means[rows], overall, f"{prefix}{OVERALL}"))
    return out


def _clients(*finals: pd.DataFrame) -> list[int]:
    """The clients in every one of ``finals`` (sorted)."""
    sets = [set(f["client"].astype(int)) for f in finals if not f.empty]
    return sorted(set.intersection(*sets)) if sets else []


def bootstrap_run(run: RunResult, tasks: dict[str, str], overall: str | None, views: bool) -> dict[str, Estimate]:
    """The table's statistics of one run with percentile-bootstrap intervals over its clients
    (:func:`fedmtl.fairness.bootstrap_interval`; a resample draws clients, each with all its tasks)."""
    out = {key: Estimate(value, n=1) for key, value in _run_values(run, tasks, views, False, overall).items()}
    for prefix, final in (("", run.final), (GLOBAL_STAT, run.global_final)):
        if prefix and not (views and run.has_global):
            continue
        clients = _clients(final)
        matrix = client_matrix(final, list(tasks), clients)
        keys = list(matrix_stats(matrix, tasks, overall, prefix))
        low, high = bootstrap_interval(
            lambda rows, m=matrix, p=prefix: np.stack(list(matrix_stats(m, tasks, overall, p, rows).values()), 1),
            len(clients), batched=True)
        for k, key in enumerate(keys):
            if key in out and not math.isnan(low[k]):
                out[key] = Estimate(out[key].mean, float(low[k]), float(high[k]), math.nan, len(clients),
                                    f"bootstrap, {len(clients)} clients")
    return out


def _delta_m_of(results: dict[str, float], reference: dict[str, float], tasks: dict[str, str]) -> float:
    """Δm% of the tasks' means ``results`` against ``reference`` (tasks whose reference mean is
    0 or missing left out; NaN when a reference task has no result)."""
    base = {t: v for t, v in reference.items() if t in tasks and not math.isnan(v) and v != 0}
    if not base or any(t not in results or math.isnan(results[t]) for t in base):
        return math.nan
    return delta_m(results, base, {t: higher_is_better(tasks[t]) for t in base})


def _delta_keys(tasks: dict[str, str], overall: str | None) -> list[str]:
    panels = [*tasks, *([OVERALL] if overall else [])]
    return [f"{t}.{stat}" for t in panels for stat in DELTA_STATS]


def _seed_deltas(run: RunResult, ref: RunResult, tasks: dict[str, str], overall: str | None) -> dict[str, float]:
    """One seed's differences (this run − the reference's run) and its Δm%."""
    a, b = _run_values(run, tasks, overall=overall), _run_values(ref, tasks, overall=overall)
    out = {key + DELTA: a[key] - b[key] for key in _delta_keys(tasks, overall)}
    means = {t: a[f"{t}.mean"] for t in tasks}
    out["delta_m"] = _delta_m_of(means, {t: b[f"{t}.mean"] for t in tasks}, tasks)
    return out


def _bootstrap_deltas(run: RunResult, ref: RunResult, tasks: dict[str, str], overall: str | None
                      ) -> dict[str, Estimate]:
    """Differences of one run against the reference's run of the same seed: each run's statistics
    over all its evaluated clients (the main table's), with a percentile bootstrap over clients.

    When both evaluated the same clients the bootstrap is paired (the same resampled clients for
    both); otherwise (a different ``server.fraction-evaluate``, failed evaluations) each run's
    clients are resampled apart."""
    mine_clients, ref_clients = _clients(run.final), _clients(ref.final)
    mine = client_matrix(run.final, list(tasks), mine_clients)
    theirs = client_matrix(ref.final, list(tasks), ref_clients)
    keys = _delta_keys(tasks, overall)
    whole = matrix_stats(theirs, tasks, overall)
    base = [t for t in tasks if np.isfinite(whole[f"{t}.mean"][0]) and whole[f"{t}.mean"][0] != 0]

    def deltas(rows: np.ndarray, ref_rows: np.ndarray | None = None) -> np.ndarray:
        ref_rows = rows if ref_rows is None else ref_rows
        a, b = matrix_stats(mine, tasks, overall, rows=rows), matrix_stats(theirs, tasks, overall, rows=ref_rows)
        columns = [a[k] - b[k] for k in keys]
        with np.errstate(invalid="ignore", divide="ignore"):  # Δm% (fedmtl.fairness.delta_m) of each resample
            ratios = [(-1.0 if higher_is_better(tasks[t]) else 1.0) * (a[f"{t}.mean"] - b[f"{t}.mean"])
                      / np.where(b[f"{t}.mean"] == 0, math.nan, b[f"{t}.mean"]) for t in base]
            columns.append(100.0 * np.mean(ratios, axis=0) if base else np.full(len(rows), math.nan))
        return np.stack(columns, axis=1)

    point = deltas(np.arange(len(mine_clients))[None, :], np.arange(len(ref_clients))[None, :])[0]
    if mine_clients == ref_clients:
        low, high = bootstrap_interval(deltas, len(mine_clients), batched=True)
        method = f"paired bootstrap, {len(mine_clients)} clients (seed {run.seed})"
    else:
        low, high = bootstrap_interval(deltas, (len(mine_clients), len(ref_clients)), batched=True)
        method = (f"bootstrap, each run's clients apart ({len(mine_clients)} and {len(ref_clients)} "
                  f"evaluated; seed {run.seed})")
    n = min(len(mine_clients), len(ref_clients))
    return {key: Estimate(float(point[k]), float(low[k]), float(high[k]), math.nan, n,
                          method if not math.isnan(low[k]) else "")
            for k, key in enumerate([k + DELTA for k in keys] + ["delta_m"])}


def compare(configuration: Configuration, reference: Configuration, tasks: dict[str, str],
            overall: str | None) -> dict[str, Estimate]:
    """Differences of ``configuration`` against ``reference`` with paired 95% intervals.

    - Both have two or more seeds in common: the differences of their runs of the same seed
      (a run's statistic − the reference run's; Δm% of a run against the reference run of its
      seed), their mean and Student-t interval over those seeds.
    - One seed in common: the two runs of that seed (each over all the clients it evaluated, as
      in the main table), with a percentile bootstrap over clients: paired (the same resampled
      clients for both) when both evaluated the same clients, else each run's clients apart.
    - No seed in common: the difference of the means over seeds (Δm% against the reference's
      mean), no interval.

    Returns ``{"<task>.<stat>.delta": …, "overall.<stat>.delta": …, "delta_m": …}``; all NaN
    for the reference itself.
    """
    keys = [k + DELTA for k in _delta_keys(tasks, overall)] + ["delta_m"]
    if configuration is reference:
        return {key: Estimate(math.nan, method="reference") for key in keys}
    by_seed = {r.seed: r for r in reference.runs}
    common = [r for r in configuration.runs if r.seed in by_seed]
    if len(common) >= 2:
        per_seed = [_seed_deltas(r, by_seed[r.seed], tasks, overall) for r in common]
        return {key: seed_estimate([d[key] for d in per_seed], paired=True) for key in keys}
    if len(common) == 1:
        return _bootstrap_deltas(common[0], by_seed[common[0].seed], tasks, overall)
    mine = [_run_values(r, tasks, overall=overall) for r in configuration.runs]
    theirs = [_run_values(r, tasks, overall=overall) for r in reference.runs]

    def mean(rows: list[dict[str, float]], key: str) -> float:
        return float(np.nanmean([r[key] for r in rows])) if any(not math.isnan(r[key]) for r in rows) else math.nan

    out = {key + DELTA: Estimate(mean(mine, key) - mean(theirs, key), method="unpaired: no common seed")
           for key in _delta_keys(tasks, overall)}
    base = {t: mean(theirs, f"{t}.mean") for t in tasks}
    out["delta_m"] = Estimate(mean([{"v": _delta_m_of({t: r[f"{t}.mean"] for t in tasks}, base, tasks)}
                                    for r in mine], "v"), method="unpaired: no common seed")
    return out


def overall_metric(configurations: list[Configuration]) -> str | None:
    """The metric of the overall panel when every run has one (the same), else ``None``."""
    metrics = {(r.summary.get(OVERALL) or {}).get("metric") for c in configurations for r in c.runs}
    return next(iter(metrics)) if len(metrics) == 1 and None not in metrics else None


COUNT_STATS = ("never_trained", "rounds_trained.min", "rounds_trained.median", "rounds_trained.max",
               "worst10_never_trained")
"""Participation statistics that count clients or rounds (:func:`participation_values`): never negative."""


def statistic_range(key: str, tasks: dict[str, str], overall: str | None) -> tuple[float, float] | None:
    """The values statistic ``key`` (``[global_]<task>.<stat>``, as :func:`_run_values` and
    :func:`participation_values` name them) can take: Jain's index and the Gini coefficient in
    [0, 1]; a mean, worst-10% or trained clients' worst-10% in the range of its metric
    (:func:`fedmtl.screening.evaluation_range`, scaled as the table shows it: an accuracy in
    [0, 100] %); a count of clients or rounds at least 0; ``None`` for any other statistic."""
    if key in COUNT_STATS or key.endswith(".worst10_never_trained"):
        return 0.0, math.inf
    name, _, stat = key.rpartition(".")
    if stat in ("jain", "gini"):
        return 0.0, 1.0
    if stat not in ("mean", "worst10", "trained_worst10"):
        return None
    name = name.removeprefix(GLOBAL_STAT)
    metric = overall if name == OVERALL else tasks.get(name)
    bounds = evaluation_range(metric, 1.0) if metric else None
    return None if bounds is None else (bounds[0] * _scale(metric), bounds[1] * _scale(metric))


GAP_RANGE = (0.0, 1.0)
"""What a group gap can be (:mod:`fedmtl.group_fairness`: the largest minus the smallest of a
rate, or of an accuracy, over the groups)."""

CUT_MARK = "†"
"""Marks a cell whose interval was cut to the statistic's range (:func:`within_range`)."""
CUT_NOTE = ", cut to "
"""What :func:`within_range` adds to a cut interval's method (``t, 2 seeds, cut to [0, 100]``)."""


def within_range(estimate: Estimate, bounds: tuple[float, float] | None) -> Estimate:
    """``estimate`` with its interval cut to ``bounds`` where it reaches beyond (a t interval of
    few seeds can: accuracy 75.2 [14.9, 135.6] %), its method saying so."""
    if bounds is None or math.isnan(estimate.low) or (bounds[0] <= estimate.low and estimate.high <= bounds[1]):
        return estimate
    shown = f"[{bounds[0]:g}, {bounds[1]:g}]" if math.isfinite(bounds[1]) else f"≥ {bounds[0]:g}"
    return replace(estimate, low=max(estimate.low, bounds[0]), high=min(estimate.high, bounds[1]),
                   method=f"{estimate.method}{CUT_NOTE}{shown}")


def estimate_configuration(configuration: Configuration, tasks: dict[str, str], overall: str | None,
                           views: bool, participation: bool) -> dict[str, Estimate]:
    """Every statistic of a configuration with its interval: over seeds with two or more (Student
    t, cut to the statistic's range: :func:`within_range`), else over the clients of its one run
    (bootstrap; participation counts get none)."""
    per_run = [_run_values(r, tasks, views, participation, overall) for r in configuration.runs]
    if len(per_run) >= 2:
        return {key: within_range(seed_estimate([v[key] for v in per_run]), statistic_range(key, tasks, overall))
                for key in per_run[0]}
    boot = bootstrap_run(configuration.runs[0], tasks, overall, views)
    return {key: boot.get(key, Estimate(value, n=1)) for key, value in per_run[0].items()}


TIDY_COLUMNS = ["configuration", "statistic", "mean", "low", "high", "std", "n", "interval", "seeds", "missing"]
"""``report.csv``'s columns."""


def summarize_configurations(
    configurations: list[Configuration], reference: Configuration
) -> pd.DataFrame:
    """One row per configuration and statistic (tidy): the mean, its 95% interval (``low``,
    ``high``), the sample std over seeds, ``n`` (seeds or clients), how the interval was
    computed, and the configuration's number of seeds; differences against ``reference``
    (``<panel>.<stat>.delta``, ``delta_m``) with paired intervals (:func:`compare`)."""
    tasks = _task_order(configurations)
    overall = overall_metric(configurations)
    views = any(r.has_global for c in configurations for r in c.runs)
    participation = any(r.participation is not None for c in configurations for r in c.runs)
    rows = []
    for c in configurations:
        estimates = estimate_configuration(c, tasks, overall, views, participation)
        estimates |= compare(c, reference, tasks, overall)
        for key, e in estimates.items():
            rows.append({"configuration": c.label, "statistic": key, "mean": e.mean, "low": e.low,
                         "high": e.high, "std": e.std, "n": e.n, "interval": e.method, "seeds": len(c.runs),
                         "missing": e.missing})
    return pd.DataFrame(rows, columns=TIDY_COLUMNS)


def _estimates(tidy: pd.DataFrame, label: str) -> dict[str, Estimate]:
    rows = tidy[tidy["configuration"] == label]
    return {r.statistic: Estimate(r.mean, r.low, r.high, r.std, int(r.n), "" if pd.isna(r.interval) else r.interval,
                                  int(r.missing)) for r in rows.itertuples()}


def _interval_note(estimates: dict[str, Estimate], keys: list[str]) -> str:
    """How the intervals of a row were made: the method of the first of ``keys`` (one per task,
    in the table's order) that the row has (a configuration may lack the report's first task)."""
    method = next((estimates[k].method for k in keys if k in estimates and estimates[k].method), "")
    return method or "none (one value)"


def markdown_table(configurations: list[Configuration], tidy: pd.DataFrame) -> str:
    """The report's main table: each statistic's mean [95% interval]; Δm% against the reference
    with its paired interval (a dash for the reference)."""
    tasks = _task_order(configurations)
    overall = any(s.startswith(f"{OVERALL}.") for s in tidy["statistic"])
    header = ["configuration", "seeds", "interval"]
    for task, metric in tasks.items():
        unit = " (%)" if metric == "accuracy" else ""
        header += [f"{task} {metric}{unit}", f"{task} worst-10%{unit}", f"{task} Jain", f"{task} Gini"]
    if overall:
        metric = next(iter(tasks.values()))
        unit = " (%)" if metric == "accuracy" else ""
        header += [f"overall {metric}{unit}", f"overall worst-10%{unit}"]
    header.append("Δm% (↓)")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    means = [f"{task}.mean" for task in tasks]
    for c in configurations:
        e = _estimates(tidy, c.label)
        cells = [c.label.replace("|", "\\|"), str(len(c.runs)), _interval_note(e, means)]
        for task in tasks:
            for stat, _ in TABLE_STATS:
                cells.append(e[f"{task}.{stat}"].cell(1 if stat in ("mean", "worst10") else 3))
        if overall:
            cells += [e[f"{OVERALL}.mean"].cell(1), e[f"{OVERALL}.worst10"].cell(1)]
        cells.append("– (reference)" if e["delta_m"].method == "reference" else e["delta_m"].cell(2))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def delta_table(configurations: list[Configuration], tidy: pd.DataFrame, reference: Configuration) -> str:
    """Each configuration's differences against the reference (mean and worst-10% per task and
    overall, Δm%) with paired 95% intervals and how they were paired (``""`` with one configuration)."""
    others = [c for c in configurations if c is not reference]
    if not others:
        return ""
    tasks = _task_order(configurations)
    panels = [*tasks, *([OVERALL] if any(s.startswith(f"{OVERALL}.") for s in tidy["statistic"]) else [])]
    header = ["configuration", "paired by"]
    for panel in panels:
        unit = " (points)" if tasks.get(panel, next(iter(tasks.values()))) == "accuracy" else ""
        header += [f"{panel} Δ mean{unit}", f"{panel} Δ worst-10%{unit}"]
    header.append("Δm% (↓)")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c in others:
        e = _estimates(tidy, c.label)
        method = e["delta_m"].method or _interval_note(e, [f"{panel}.mean{DELTA}" for panel in panels])
        cells = [c.label.replace("|", "\\|"), method]
        for panel in panels:
            cells += [e[f"{panel}.{stat}{DELTA}"].cell(2) for stat in DELTA_STATS]
        cells.append(e["delta_m"].cell(2))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def global_table(configurations: list[Configuration], tidy: pd.DataFrame) -> str:
    """The global model's statistics, beside the personal ones of the main table, for methods
    with a global and a personal model (``""`` when no run has a global view)."""
    if not any(r.has_global for c in configurations for r in c.runs):
        return ""
    tasks = _task_order(configurations)
    header = ["configuration", "seeds"]
    for task, metric in tasks.items():
        unit = " (%)" if metric == "accuracy" else ""
        header += [f"{task} {metric}{unit} personal / global", f"{task} worst-10%{unit} personal / global",
                   f"{task} Jain global", f"{task} Gini global"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c in configurations:
        e = _estimates(tidy, c.label)
        cells = [c.label.replace("|", "\\|"), str(len(c.runs))]
        for task in tasks:
            for stat in ("mean", "worst10"):
                cells.append(f"{e[f'{task}.{stat}'].cell(1)} / {e[f'{GLOBAL_STAT}{task}.{stat}'].cell(1)}")
            cells += [e[f"{GLOBAL_STAT}{task}.jain"].cell(3), e[f"{GLOBAL_STAT}{task}.gini"].cell(3)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def participation_table(configurations: list[Configuration], tidy: pd.DataFrame) -> str:
    """Who trained: per configuration, the evaluated clients that never trained, rounds trained
    per client, and per task how many of the worst-10% clients never trained and the worst-10%
    mean over trained clients only (``""`` when no run recorded participation)."""
    if not any(r.participation is not None for c in configurations for r in c.runs):
        return ""
    tasks = _task_order(configurations)
    header = ["configuration", "seeds", "evaluated clients never trained", "rounds trained min / median / max"]
    for task, metric in tasks.items():
        unit = " (%)" if metric == "accuracy" else ""
        header += [f"{task} worst-10% clients never trained", f"{task} worst-10%{unit} of trained clients"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c in configurations:
        e = _estimates(tidy, c.label)
        cells = [c.label.replace("|", "\\|"), str(len(c.runs)), e["never_trained"].cell(1),
                 " / ".join(e[f"rounds_trained.{k}"].cell(1) for k in ("min", "median", "max"))]
        for task in tasks:
            worst = [len(worst_clients(r.final, task, tasks[task])) for r in c.runs]
            cells += [f"{e[f'{task}.worst10_never_trained'].cell(1)} of {max(worst)}",
                      e[f"{task}.trained_worst10"].cell(1)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _client_group_metrics(run: RunResult, task: str) -> list[dict[str, float]]:
    """Each client's metrics of ``task`` at the final round (split ``test``), in client order."""
    rows = run.final_metrics[run.final_metrics["task"] == task] if not run.final_metrics.empty else run.final_metrics
    return [dict(zip(g["metric"], g["value"].astype(float), strict=True)) for _, g in rows.groupby("client")]


def group_estimates(configuration: Configuration, task: str, keys: list[str]) -> dict[str, Estimate]:
    """The group gaps ``keys`` (``<gap>-<g>.pooled`` / ``.mean``) of one task with their
    intervals: over seeds (t) with two or more, else a bootstrap over the run's clients."""
    values = [[r.summary.get("group", {}).get(task, {}).get(k, math.nan) for k in keys] for r in configuration.runs]
    if len(values) >= 2:
        return {k: within_range(seed_estimate([v[i] for v in values]), GAP_RANGE) for i, k in enumerate(keys)}
    clients = _client_group_metrics(configuration.runs[0], task)

    def gaps(rows: np.ndarray) -> np.ndarray:
        drawn = resampled_group_gaps(clients, rows)
        return np.stack([drawn.get(k, np.full(len(rows), math.nan)) for k in keys], axis=1)

    low, high = bootstrap_interval(gaps, len(clients), batched=True) if clients else ([math.nan] * len(keys),) * 2
    return {k: Estimate(values[0][i], low[i], high[i], math.nan, len(clients),
                        f"bootstrap, {len(clients)} clients" if not math.isnan(low[i]) else "")
            for i, k in enumerate(keys)}


def one_class_note(configuration: Configuration, task: str) -> str:
    """Whether the configuration's models predict one class for the whole task or a whole group
    (:func:`fedmtl.group_fairness.one_class_predictions`, summed over its runs); ``""`` if not."""
    found = OneClass()
    for run in configuration.runs:
        found = found + one_class_predictions(_client_group_metrics(run, task))
    return found.describe()


def group_table(configurations: list[Configuration]) -> str:
    """Group-fairness gaps (pooled over clients / the mean client's) with their intervals, per
    configuration and task, and a note where the models predict one class for a whole task or
    group (a gap of such a model says nothing about fairness)."""
    gaps: list[str] = []
    tasks: list[str] = []
    for c in configurations:
        for run in c.runs:
            for task, values in run.summary.get("group", {}).items():
                tasks += [task] if task not in tasks else []
                for gap in (key.rsplit(".", 1)[0] for key in values):
                    gaps += [gap] if gap not in gaps else []
    if not gaps:
        return ""
    header = ["configuration", "task", *[f"{g} pooled / client mean" for g in gaps], "predictions"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c in configurations:
        for task in tasks:
            keys = [f"{g}.{kind}" for g in gaps for kind in ("pooled", "mean")]
            e = group_estimates(c, task, keys)
            cells = [c.label.replace("|", "\\|"), task]
            cells += [f"{e[f'{g}.pooled'].cell(3)} / {e[f'{g}.mean'].cell(3)}" for g in gaps]
            cells.append(one_class_note(c, task) or "–")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


FIGURES = {f"{name}.png": fn for name, fn in REPORT_FIGURES.items()}
"""The figures every report has, as PNG (drawn by :mod:`fedmtl.plots`; ``make_report``'s
``fmt`` chooses another format)."""


def choose_reference(configurations: list[Configuration], reference: str | None) -> Configuration:
    """The configuration whose label equals (or alone contains) ``reference``; else the first
    (in command-line and sweep order, :func:`find_run_dirs`).

    Raises
    ------
    ValueError
        When ``reference`` matches no configuration or several, listing the labels.
    """
    if reference is None:
        return configurations[0]
    exact = [c for c in configurations if c.label == reference]
    matches = exact or [c for c in configurations if reference in c.label]
    if len(matches) != 1:
        labels = "; ".join(c.label for c in configurations)
        raise ValueError(f"--reference '{reference}' matches {len(matches)} configurations; "
                         f"give one of: {labels}")
    return matches[0]


def older_layout_runs(runs: list[RunResult]) -> list[str]:
    """One line per run whose clients an older fedmtl built otherwise than this one builds them
    for its config (``summary.json``'s ``data_layout``, 1 when absent:
    :func:`fedmtl.data.layout.layout_changes`), naming the change."""
    from fedmtl.data.layout import layout_changes

    lines = []
    for run in runs:
        params = run.config.get("data.params", {})
        changes = layout_changes(run.summary.get(SUMMARY_LAYOUT), str(run.config.get("data.dataset", "")),
                                 str(run.config.get("data.partitioner", "")),
                                 params if isinstance(params, dict) else {})
        if changes:
            lines.append(f"`{visible(run.path)}`: {'; '.join(changes)}")
    return lines


def repeated_runs(configurations: list[Configuration]) -> list[str]:
    """One line per run left out as a repeat of a kept run of the same configuration and seed,
    saying whether its final per-client results equal the kept run's (a run that did not
    reproduce is named as such)."""
    lines = []
    for c in configurations:
        for kept, repeat in c.repeats:
            same = _same_results(kept, repeat)
            lines.append(f"`{visible(repeat.path)}` repeats `{visible(kept.path)}` (configuration `{c.label}`, "
                         f"seed {kept.seed}): "
                         "left out; " + ("its final results are the same" if same else
                                         "its final per-client results DIFFER: the run did not reproduce"))
    return lines


def _same_results(a: RunResult, b: RunResult) -> bool:
    """Whether two runs' final per-client metrics are equal (both views)."""
    def rows(frame: pd.DataFrame) -> pd.DataFrame:
        return frame if frame.empty else frame.sort_values(list(frame.columns)).reset_index(drop=True)

    return all(rows(x).equals(rows(y)) for x, y in ((a.final_metrics, b.final_metrics),
                                                     (a.global_final, b.global_final)))


def two_view_methods() -> str:
    """The registered personalization methods with a global view (split ``test-global``), named
    as configs name them (``personalization.method``)."""
    from fedmtl.training.methods import METHODS

    return ", ".join(f"`{name}`" for name in sorted(METHODS.names()) if TEST_GLOBAL in METHODS.get(name).views)


def placement_hosts(configurations: list[Configuration]) -> list[str]:
    """The hosts that computed replies in any run (``summary.json``'s ``placement``: ``host/node/device``)."""
    return sorted({where.split("/", 1)[0] for c in configurations for r in c.runs
                   for where in r.summary.get("placement", {})})


def placement_table(configurations: list[Configuration]) -> str:
    """A Markdown table of replies per ``host/node/device`` per configuration (``""`` unless
    replies were computed on more than one host: on one machine Ray's node ids say nothing)."""
    if len(placement_hosts(configurations)) < 2:
        return ""
    rows = []
    for configuration in configurations:
        counts: dict[str, int] = {}
        for run in configuration.runs:
            for where, n in run.summary.get("placement", {}).items():
                counts[where] = counts.get(where, 0) + n
        rows += [f"| {configuration.label} | `{where}` | {n} |" for where, n in sorted(counts.items())]
    if not rows:
        return ""
    return "\n".join(["| configuration | host / Ray node / device | replies |", "|---|---|---|", *rows])


REPORT_FILES = ("report.md", "report.csv")
"""The report's files besides the figures."""
REPORT_MARKER = ".fedmtl-report"
"""Written into a report folder before anything else: the files of the report's names there are
an earlier report's (also one stopped part-way), which a new report replaces."""


REPORT_TITLE = "# fedmtl report"
"""The first line of every ``report.md`` fedmtl writes."""


def holds_earlier_report(out: Path) -> bool:
    """Whether ``out`` holds a report fedmtl wrote: its :data:`REPORT_MARKER`, or (a report by a
    fedmtl that wrote no marker) a ``report.md`` whose first line is :data:`REPORT_TITLE` beside
    a ``report.csv``. A ``report.md`` of the user's own is not one."""
    if (out / REPORT_MARKER).is_file():
        return True
    if not all((out / name).is_file() for name in REPORT_FILES):
        return False
    try:
        with open(out / "report.md", encoding="utf-8", errors="replace") as file:
            first = file.readline()
    except OSError:
        return False
    return first.rstrip("\r\n") == REPORT_TITLE


def check_report_targets(out: Path) -> None:
    """Refuse to write a report through a symbolic link (``out`` or any file it would write), or
    over files of its names in a folder that holds no earlier report
    (:func:`holds_earlier_report`).

    Raises
    ------
    ValueError
        Naming the link, or the files.
    """
    names = (*REPORT_FILES, HTML_FILE, *report_figure_files())
    for path in [out, *(out / name for name in names)]:
        if path.is_symlink():
            raise ValueError(f"'{path}' is a symbolic link; fedmtl report never writes through one: "
                             "remove it or choose another --out")
    if holds_earlier_report(out):
        return
    if taken := [name for name in names if (out / name).exists()]:  # someone else's files: kept
        raise ValueError(f"'{out}' holds {', '.join(taken[:3])}{' and more' if len(taken) > 3 else ''}, not "
                         "written by a fedmtl report, which a report would replace; choose another --out (or "
                         "move those files away)")


def make_report(paths: list[str | Path], out: str | Path, reference: str | None = None, fmt: str = "png",
                dpi: int = DEFAULT_DPI, highlight: int | None = None) -> dict[str, Any]:
    """Write ``report.md``, ``report.csv``, ``report.html`` and the figures to ``out``; return what was written.

    Parameters
    ----------
    paths : list
        Run folders, sweep folders or any folders holding run folders.
    out : str or Path
        The report folder (created).
    reference : str, optional
        The label (or a unique part of it) of the reference configuration (Δm% and the
        differences); default the first configuration in ``paths`` order (a sweep's in grid order).
    fmt : str
        The figures' format: ``png``, ``pdf`` or ``svg``.
    dpi : int
        Dots per inch of PNG figures.
    highlight : int, optional
        A client id to mark in the figures (and to show first in ``report.html``).

    Returns
    -------
    dict
        ``report``, ``csv``, ``html``, ``figures`` (paths), ``table`` (markdown), ``configurations``
        (labels), ``replaced`` (whether a ``report.md`` was there before), ``repeats`` (one
        line per run left out as a repeat of a configuration and seed: :func:`repeated_runs`)
        and ``older_layout`` (one line per run whose clients an older fedmtl built otherwise:
        :func:`older_layout_runs`).

    Raises
    ------
    ValueError
        When ``out`` or a file of the report is a symbolic link (nothing is written), or the
        runs cannot be reported.
    """
    check_format(fmt, dpi)
    runs = [read_run(p) for p in find_run_dirs(paths)]
    check_one_dataset(runs)
    out = Path(out)
    check_report_targets(out)
    replaced = (out / "report.md").is_file()  # an earlier report's: check_report_targets refused any other
    made = [folder for folder in (out, *out.parents) if not folder.exists()]  # deepest first
    marked = (out / REPORT_MARKER).is_file()
    out.mkdir(parents=True, exist_ok=True)
    with _one_report_at_a_time(out):  # creates the marker
        _remove_stale_staging(out)
        try:
            staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
        except OSError as error:  # a read-only folder: name it, not the hidden folder that was to be
            _undo_folder(out, marked, made)
            raise OSError(error.errno, error.strerror, str(out)) from None
        try:
            try:
                written = _write_report(runs, paths, staging, reference, fmt, dpi, highlight)
                figures = _publish(staging, out, fmt)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        except BaseException as error:
            _undo_folder(out, marked, made)
            if isinstance(error, OSError):
                _name_in_out(error, staging, out)
            raise
    return {**written, "report": out / "report.md", "csv": out / "report.csv", "html": out / HTML_FILE,
            "figures": figures, "replaced": replaced}


@contextlib.contextmanager
def _one_report_at_a_time(out: Path) -> Iterator[None]:
    """Hold ``out``'s :data:`REPORT_MARKER` locked (:func:`fedmtl.folder_lock.holding`, which
    creates it) while the report is written and moved in: two reports into one folder at once
    would interleave their files. The second is refused at once, in one line (a ``ValueError``),
    before it writes anything."""
    from fedmtl.folder_lock import RunFolderBusy, holding

    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(holding(out, marker=REPORT_MARKER, user="a report into it"))
        except RunFolderBusy as exc:
            raise ValueError(str(exc)) from None
        yield


STAGING_PREFIX = ".fedmtl-report-staging-"
"""The hidden folder inside ``--out`` a report is written into before it is moved into place."""


def _remove_stale_staging(out: Path) -> None:
    """Remove the staging folders of reports killed before they could (``kill -9``). Called
    under ``out``'s lock (:func:`_one_report_at_a_time`): no other report is under way there."""
    for folder in out.glob(f"{STAGING_PREFIX}*"):
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)


def _name_in_out(error: OSError, staging: Path, out: Path) -> None:
    """Make ``error`` (a full disk, a read-only folder) name the report's file in ``out``, not
    its copy in the hidden staging folder, which the user never sees."""
    for attribute in ("filename", "filename2"):
        name = getattr(error, attribute)
        if isinstance(name, str) and Path(name).is_relative_to(staging):
            setattr(error, attribute, str(out / Path(name).relative_to(staging)))


def _undo_folder(out: Path, marked: bool, made: list[Path]) -> None:
    """After a report that failed before moving its files in: take back the marker it put in
    ``out`` (unless ``out`` had one: an earlier report's folder) and the folders it made
    (``made``, deepest first), each only while it is empty (another report may have finished
    there meanwhile)."""
    if not marked and not any(name.exists() for name in (out / n for n in REPORT_FILES)):
        (out / REPORT_MARKER).unlink(missing_ok=True)
    for folder in made:
        try:
            folder.rmdir()
        except OSError:  # not empty, or gone: left as it is
            break


def _publish(staging: Path, out: Path, fmt: str) -> list[Path]:
    """Move the report written whole in ``staging`` into ``out``, replacing an earlier report's
    files; a figure of this format that the earlier report drew and this one does not (a group
    figure) goes, so that ``out`` holds one report. Return the figures' paths in ``out``."""
    figures = []
    for name in (*REPORT_FILES, HTML_FILE, *report_figure_files(fmt)):
        if (staging / name).is_file():
            os.replace(staging / name, out / name)
            if name in report_figure_files(fmt):
                figures.append(out / name)
        else:
            (out / name).unlink(missing_ok=True)
    return figures


def _write_report(runs: list[RunResult], paths: list[str | Path], out: Path, reference: str | None, fmt: str,
                  dpi: int, highlight: int | None) -> dict[str, Any]:
    """Write every file of the report of ``runs`` into ``out`` (:func:`make_report`); return the
    table, the configurations' labels and the repeats."""
    configurations = group_configurations(runs)
    repeats = repeated_runs(configurations)
    ref = choose_reference(configurations, reference)
    tidy = summarize_configurations(configurations, ref)
    write_bytes(out / "report.csv", tidy.to_csv(index=False).encode())  # an error names the file
    figures = report_figures(configurations, out, fmt, dpi, highlight)
    table = markdown_table(configurations, tidy)
    deltas = delta_table(configurations, tidy, ref)
    views = global_table(configurations, tidy)
    participation = participation_table(configurations, tidy)
    groups = group_table(configurations)
    how = "named with --reference" if reference is not None else "the first configuration given"
    lines = [
        REPORT_TITLE, "",
        f"{len(runs) - len(repeats)} runs in {len(configurations)} configurations, from "
        + ", ".join(f"`{visible(p)}`" for p in paths) + f". Reference: `{ref.label}` ({how})."
        + (f" {counted(len(repeats), 'repeated run')} (a configuration and seed already counted) left out: "
           "see Repeated runs." if repeats else ""), "",
        "Values are the final evaluation round's statistics across clients. Each cell is a mean "
        "and its 95% interval [low, high]: with two or more seeds, the mean over seeds and the "
        "Student-t interval (n − 1 degrees of freedom); with one seed, the run's value and a "
        f"percentile bootstrap over its clients ({BOOTSTRAP_RESAMPLES} resamples of the clients, "
        f"each with all its tasks; seed {BOOTSTRAP_SEED}); the `interval` column says which. "
        f"{CUT_MARK}: a t interval that reached beyond what the statistic can be (an accuracy "
        "below 0% or above 100%, a count below 0), cut to that range (`report.csv` says so in its "
        "`interval` column). "
        "Accuracy in %. Worst-10%: mean of the worst 10% of clients. Jain's index (1 = all clients "
        "equal) and Gini coefficient (0 = all equal) of the client metric. Overall: the same of "
        "each client's mean over the tasks it holds. "
        f"Δm%: mean relative change of the tasks' mean client metric against `{ref.label}` "
        "(sign-adjusted per metric; lower is better) over the reference's tasks (a task the "
        "reference does not report does not count), with a paired interval (see below); the "
        "reference itself has none (–).", "",
        table, "",
    ]
    if deltas:
        lines += ["## Against the reference", "",
                  f"Each configuration minus `{ref.label}`, with a paired 95% interval. Paired by seed "
                  "(`paired t`): the runs of the seeds both have, the difference of each pair, its mean "
                  "and Student-t interval. With one seed in common (`paired bootstrap`): the two runs of "
                  "that seed resampled by client together (the same clients for both; when the two "
                  "evaluated different clients, each run's clients are resampled apart). Without a common "
                  "seed the difference of the means is given without an interval. An interval that "
                  "excludes 0 is a difference these seeds or clients resolve; one that includes 0 is not.",
                  "", deltas, ""]
    if views:
        lines += ["## Global model", "",
                  f"For methods with a global and a personal model ({two_view_methods()}), "
                  "the main table is the personal model's (split `test`); here each statistic of the "
                  "personal model beside the global model's (split `test-global`), at the final round. "
                  "The figures draw the global model dashed (CDF, round curves) or hollow (plane).",
                  "", views, ""]
    if participation:
        lines += ["## Participation", "",
                  "Clients trained in a round when the server accepted their training reply, or "
                  "rejected only its update while its metrics were usable (the client saved its state "
                  "all the same; `participation.csv` in each run folder). A client that never trained is evaluated "
                  "with personal state it never trained (for FedPer: untrained heads on the global "
                  "backbone), so it may be among the worst for that reason alone. Per task: how many of "
                  "the final round's worst-10% clients never trained, of how many, and the worst-10% "
                  "mean over the clients that trained only.", "", participation, ""]
    if groups:
        lines += ["## Group fairness", "",
                  "Gaps between the groups of the sensitive attribute at the final round: over all "
                  "clients' test examples pooled / mean over clients (lower is fairer), each with its "
                  "95% interval as above. `predictions` says when a model predicts one class for every "
                  "example of the task or of a group (`degenerate`): its gaps are then 0 or near it "
                  "because it does not discriminate at all, not because it is fair.", "", groups, ""]
    placement = placement_table(configurations)
    if placement:
        lines += ["## Placement", "",
                  "Replies (training and evaluation) per host, Ray node and device, summed over each "
                  "configuration's runs (`placement.csv` in each run folder); shown when more than one "
                  "host computed.", "", placement, ""]
    if repeats:
        lines += ["## Repeated runs", "",
                  "Runs of a configuration and seed already counted (the first found is kept: a seed "
                  "counts once in the intervals).", ""] + [f"- {line}" for line in repeats] + [""]
    older = older_layout_runs(runs)
    if older:
        lines += ["## Data layout", "",
                  "These runs' clients were built by an older fedmtl, which made them otherwise than this "
                  "one does for their config: a run of the same config today trains on other client data, "
                  "so compare them with runs built alike.", ""] + [f"- {line}" for line in older] + [""]
    lines += ["## Figures", ""] + [f"![{f.stem}]({f.name})" for f in figures] + [""]
    write_bytes(out / "report.md", "\n".join(lines).encode())
    write_html_report(out / HTML_FILE, configurations, "\n".join(lines), highlight)
    return {"table": table, "configurations": [c.label for c in configurations], "repeats": repeats,
            "older_layout": older}
