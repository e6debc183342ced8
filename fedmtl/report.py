"""Reports over many runs: who each configuration serves, and at what cost in accuracy.

``fedmtl report RUN_OR_SWEEP_DIR ... [--reference LABEL] [--out DIR]`` finds every finished
run folder under its arguments, groups runs whose configs differ only in ``run.seed`` (or
their name and output folder) into one *configuration*, and writes to ``DIR``:

- ``report.md``: per configuration, mean ± std over seeds of each task's mean client metric,
  worst-10% mean, Jain's index and Gini coefficient, and Δm% against the reference
  configuration (Maninis et al. 2019; lower is better); a group-fairness table when the data
  has sensitive attributes; links to the figures;
- ``report.csv``: the same numbers, one row per configuration and statistic (tidy form);
- ``client_cdf.png``: per task, the empirical CDF of the clients' final metric, one line per run;
- ``fairness_accuracy.png``: per task (and overall), mean vs worst-10% client metric per
  configuration with seed error bars and the Pareto front;
- ``round_curves.png``: per task, the mean client metric per round with the 10th–90th
  percentile band across clients (pooled over seeds);
- ``client_task_heatmap.png``: per configuration (first seed), every client's final metric on
  every task (grey: the client does not hold the task).

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

import json
import math
import textwrap
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from fedmtl.fairness import delta_m, worst_fraction_mean
from fedmtl.labels import format_value
from fedmtl.protocol import TEST, TEST_GLOBAL
from fedmtl.results import GLOBAL, read_participation
from fedmtl.tasks import TASK_KINDS

IGNORED_KEYS = ("run.seed", "run.name", "run.output-dir", "client.head-store-dir", "engine.supernodes")
"""Config keys that do not make a different configuration (seeds, names, folders, and how many
virtual SuperNodes played the clients, which does not change a run's results)."""
TABLE_STATS = (("mean", "mean"), ("worst10", "worst-10%"), ("jain", "Jain"), ("gini", "Gini"))


def higher_is_better(metric: str) -> bool:
    """The direction of a metric name, from the registered task kinds."""
    for _, kind in TASK_KINDS.items():
        if metric in kind.metrics:
            return kind.metrics[metric]
    raise KeyError(f"unknown metric '{metric}'")


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


def _flatten(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in nested.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and not prefix:
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def find_run_dirs(paths: list[str | Path]) -> list[Path]:
    """Every finished run folder (one with ``summary.json``) at or under ``paths``, in order.

    Raises
    ------
    FileNotFoundError
        Naming a path that does not exist or holds no finished run.
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"'{path}' does not exist")
        runs = [path] if (path / "summary.json").is_file() else sorted(
            p.parent for p in path.rglob("summary.json"))
        if not runs:
            raise FileNotFoundError(f"'{path}' holds no finished run (no summary.json under it)")
        found += [r for r in runs if r not in found]
    return found


def read_run(path: Path) -> RunResult:
    """Read one run folder's config, summary and per-client primary metrics."""
    summary = json.loads((path / "summary.json").read_text())
    config = _flatten(tomllib.loads((path / "config.toml").read_text()))
    metrics = pd.read_csv(path / "metrics.csv")
    primary = {t: s["metric"] for t, s in summary["final"].items()}

    def primary_rows(split: str) -> pd.DataFrame:
        rows = metrics[(metrics["split"] == split) & metrics["task"].isin(list(primary))]
        rows = rows[rows["metric"] == rows["task"].map(primary)]
        return rows[["round", "client", "task", "value"]].reset_index(drop=True)

    curves, global_curves = primary_rows(TEST), primary_rows(TEST_GLOBAL)
    last = summary.get("final_round") or (int(curves["round"].max()) if len(curves) else 0)
    final = curves[curves["round"] == last][["client", "task", "value"]].reset_index(drop=True)
    global_final = global_curves[global_curves["round"] == last][["client", "task", "value"]].reset_index(drop=True)
    return RunResult(path, config, summary, final, curves, global_final, global_curves, read_participation(path))


def group_configurations(runs: list[RunResult]) -> list[Configuration]:
    """Group runs by configuration and label each one by the keys that differ."""
    groups: dict[str, Configuration] = {}
    for run in runs:
        groups.setdefault(run.identity(), Configuration("")).runs.append(run)
    configurations = list(groups.values())
    keys = sorted({k for c in configurations for k in c.runs[0].config} - set(IGNORED_KEYS))
    varying = [k for k in keys
               if len({json.dumps(c.runs[0].config.get(k), sort_keys=True, default=str)
                       for c in configurations}) > 1]
    for c in configurations:
        config = c.runs[0].config
        c.label = " ".join(f"{k}={format_value(config[k])}" for k in varying if k in config) \
            or str(config.get("run.name", c.runs[0].path.name))
        c.runs.sort(key=lambda r: r.seed)
    return configurations


def _scale(metric: str) -> float:
    return 100.0 if metric == "accuracy" else 1.0


def _unit(metric: str) -> str:
    return f"{metric} (%)" if metric == "accuracy" else metric


def _mean_std(values: list[float]) -> tuple[float, float]:
    array = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if len(array) == 0:
        return math.nan, math.nan
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def _fmt(mean: float, std: float, n: int, digits: int) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def _task_order(configurations: list[Configuration]) -> dict[str, str]:
    tasks: dict[str, str] = {}
    for c in configurations:
        for run in c.runs:
            tasks.update({t: m for t, m in run.tasks.items() if t not in tasks})
    return tasks


GLOBAL_STAT = "global_"
"""Prefix of the global model's statistics in ``report.csv`` (``global_<task>.<stat>``)."""


def _run_values(run: RunResult, tasks: dict[str, str], views: bool = False,
                participation: bool = False) -> dict[str, float]:
    """The table's statistics of one run: ``{"<task>.<stat>": value}`` (metric scaled); with
    ``views`` also the global model's (``global_<task>.<stat>``, NaN for a run without); with
    ``participation`` also :func:`participation_values`."""
    out = {}
    final = run.summary["final"]
    for prefix, stats_of in (("", final), (GLOBAL_STAT, run.summary.get(GLOBAL, {}).get("final", {}))):
        if prefix and not views:
            continue
        for task, metric in tasks.items():
            stats = stats_of.get(task)
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


def _delta_m(run: RunResult, reference: dict[str, float], tasks: dict[str, str]) -> float:
    results = {t: run.summary["final"][t]["mean"] for t in reference if t in run.summary["final"]}
    if set(results) != set(reference):
        return math.nan
    return delta_m(results, reference, {t: higher_is_better(tasks[t]) for t in reference})


def summarize_configurations(
    configurations: list[Configuration], reference: Configuration
) -> pd.DataFrame:
    """One row per configuration, per run statistic: mean, std and number of seeds (tidy)."""
    tasks = _task_order(configurations)
    base = {t: float(np.mean([r.summary["final"][t]["mean"] for r in reference.runs
                              if t in r.summary["final"]])) for t in tasks}
    base = {t: v for t, v in base.items() if not math.isnan(v) and v != 0}
    views = any(r.has_global for c in configurations for r in c.runs)
    participation = any(r.participation is not None for c in configurations for r in c.runs)
    rows = []
    for c in configurations:
        per_run = [_run_values(r, tasks, views, participation)
                   | {"delta_m": _delta_m(r, base, tasks) if base else math.nan} for r in c.runs]
        for key in per_run[0]:
            mean, std = _mean_std([v[key] for v in per_run])
            rows.append({"configuration": c.label, "statistic": key, "mean": mean, "std": std,
                         "seeds": len(c.runs)})
    return pd.DataFrame(rows)


def markdown_table(configurations: list[Configuration], tidy: pd.DataFrame) -> str:
    """The report's main table (mean ± std over seeds)."""
    tasks = _task_order(configurations)
    header = ["configuration", "seeds"]
    for task, metric in tasks.items():
        unit = " (%)" if metric == "accuracy" else ""
        header += [f"{task} {metric}{unit}", f"{task} worst-10%{unit}", f"{task} Jain", f"{task} Gini"]
    header.append("Δm% (↓)")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c in configurations:
        rows = tidy[tidy["configuration"] == c.label].set_index("statistic")
        n = len(c.runs)
        cells = [c.label.replace("|", "\\|"), str(n)]
        for task in tasks:
            for stat, _ in TABLE_STATS:
                digits = 1 if stat in ("mean", "worst10") else 3
                cells.append(_fmt(rows.at[f"{task}.{stat}", "mean"], rows.at[f"{task}.{stat}", "std"], n, digits))
        cells.append(_fmt(rows.at["delta_m", "mean"], rows.at["delta_m", "std"], n, 2))
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
        rows = tidy[tidy["configuration"] == c.label].set_index("statistic")
        n = len(c.runs)

        def cell(key: str, digits: int, rows: pd.DataFrame = rows, n: int = n) -> str:
            return _fmt(rows.at[key, "mean"], rows.at[key, "std"], n, digits)

        cells = [c.label.replace("|", "\\|"), str(n)]
        for task in tasks:
            for stat in ("mean", "worst10"):
                cells.append(f"{cell(f'{task}.{stat}', 1)} / {cell(f'{GLOBAL_STAT}{task}.{stat}', 1)}")
            cells += [cell(f"{GLOBAL_STAT}{task}.jain", 3), cell(f"{GLOBAL_STAT}{task}.gini", 3)]
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
        rows = tidy[tidy["configuration"] == c.label].set_index("statistic")
        n = len(c.runs)

        def cell(key: str, digits: int, rows: pd.DataFrame = rows, n: int = n) -> str:
            return _fmt(rows.at[key, "mean"], rows.at[key, "std"], n, digits)

        cells = [c.label.replace("|", "\\|"), str(n), cell("never_trained", 1),
                 " / ".join(cell(f"rounds_trained.{k}", 1) for k in ("min", "median", "max"))]
        for task in tasks:
            worst = [len(worst_clients(r.final, task, tasks[task])) for r in c.runs]
            cells += [f"{cell(f'{task}.worst10_never_trained', 1)} of {max(worst)}",
                      cell(f"{task}.trained_worst10", 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def group_table(configurations: list[Configuration]) -> str:
    """Group-fairness gaps (pooled over clients, and the mean client's) when recorded."""
    names: list[tuple[str, str]] = []
    for c in configurations:
        for run in c.runs:
            for task, gaps in run.summary.get("group", {}).items():
                for key in gaps:
                    gap = key.rsplit(".", 1)[0]
                    if (task, gap) not in names:
                        names.append((task, gap))
    if not names:
        return ""
    header = ["configuration"] + [f"{t} {g} pooled / client mean" for t, g in names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c in configurations:
        cells = [c.label.replace("|", "\\|")]
        for task, gap in names:
            pooled = _mean_std([r.summary.get("group", {}).get(task, {}).get(f"{gap}.pooled", math.nan)
                                for r in c.runs])
            client = _mean_std([r.summary.get("group", {}).get(task, {}).get(f"{gap}.mean", math.nan)
                                for r in c.runs])
            cells.append(f"{_fmt(*pooled, len(c.runs), 3)} / {_fmt(*client, len(c.runs), 3)}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- figures ----------------------------------------------------------------------------
def _colours(n: int) -> list[Any]:
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _wrap(label: str, width: int = 38) -> str:
    return "\n".join(textwrap.wrap(label, width)) or label


def _panels(n: int, width: float = 5.0, height: float = 4.0):
    fig = Figure(figsize=(width * n, height))
    axes = fig.subplots(1, n, squeeze=False)
    return fig, list(axes[0])


def _save(fig: Figure, path: Path, legend_handles: list, legend_labels: list) -> Path:
    """Save with the configurations' legend below the panels."""
    fig.tight_layout()
    if legend_handles:
        fig.legend(legend_handles, legend_labels, loc="upper center", bbox_to_anchor=(0.5, 0.0),
                   fontsize=8, ncol=min(3, len(legend_labels)), frameon=False,
                   title="configuration", title_fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def plot_client_cdf(configurations: list[Configuration], path: Path) -> Path:
    """Per task, the empirical CDF of client final metrics, one line per run."""
    tasks = _task_order(configurations)
    fig, axes = _panels(len(tasks))
    handles, labels = [], []
    for colour, c in zip(_colours(len(configurations)), configurations, strict=True):
        for i, run in enumerate(c.runs):
            for ax, (task, metric) in zip(axes, tasks.items(), strict=True):
                for final, style in ((run.final, "-"), (run.global_final, "--")):
                    if final.empty:
                        continue
                    values = np.sort(final.loc[final["task"] == task, "value"].to_numpy()) * _scale(metric)
                    if len(values) == 0:
                        continue
                    line, = ax.step(values, np.arange(1, len(values) + 1) / len(values), where="post", ls=style,
                                    color=colour, alpha=0.9 if i == 0 else 0.45, lw=1.6 if i == 0 else 1.0)
                    if i == 0 and ax is axes[0] and style == "-":
                        handles.append(line)
                        labels.append(_wrap(c.label))
    _view_legend(configurations, axes[0])
    for ax, (task, metric) in zip(axes, tasks.items(), strict=True):
        ax.set_title(f"task '{task}': clients' final test {metric}")
        ax.set_xlabel(f"client test {_unit(metric)}")
        ax.set_ylabel("fraction of clients at or below")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    return _save(fig, path, handles, labels)


def _view_handles(configurations: list[Configuration], marker: bool = False) -> tuple[list[Any], list[str]]:
    """Legend entries telling the personal and the global model's lines (or filled and hollow
    markers) apart; none when no run has a global view."""
    if not any(r.has_global for c in configurations for r in c.runs):
        return [], []
    if marker:
        handles = [Line2D([], [], color="0.3", ls="none", marker="o", mfc=fill) for fill in ("0.3", "none")]
    else:
        handles = [Line2D([], [], color="0.3", ls=style) for style in ("-", "--")]
    return handles, ["personal model", "global model"]


def _view_legend(configurations: list[Configuration], ax: Any) -> None:
    """:func:`_view_handles` as a small legend of ``ax`` (lines)."""
    handles, labels = _view_handles(configurations)
    if handles:
        ax.legend(handles, labels, loc="upper left", fontsize=8)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (both maximised)."""
    front = []
    for i, (x, y) in enumerate(points):
        if any(ox >= x and oy >= y and (ox > x or oy > y) for j, (ox, oy) in enumerate(points) if j != i):
            continue
        front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def plot_fairness_plane(configurations: list[Configuration], path: Path) -> Path:
    """Per task and overall: mean vs worst-10% client metric per configuration, Pareto front."""
    panels = dict(_task_order(configurations))
    overall = [c for c in configurations if all(r.summary.get("overall") for r in c.runs)]
    if overall and len(overall) == len(configurations):
        panels["overall"] = configurations[0].runs[0].summary["overall"]["metric"]
    fig, axes = _panels(len(panels))
    handles, labels = [], []
    colours = _colours(len(configurations))
    for ax, (task, metric) in zip(axes, panels.items(), strict=True):
        sign = 1.0 if higher_is_better(metric) else -1.0
        points, kept = [], []
        for k, c in enumerate(configurations):
            stats = [r.summary["overall"] if task == "overall" else r.summary["final"].get(task)
                     for r in c.runs]
            stats = [s for s in stats if s]
            if not stats:
                continue
            xs = [s["mean"] * _scale(metric) for s in stats]
            ys = [s["worst10"] * _scale(metric) for s in stats]
            (x, xe), (y, ye) = _mean_std(xs), _mean_std(ys)
            handle = ax.errorbar(x, y, xerr=xe, yerr=ye, fmt="o", color=colours[k], ms=7, capsize=3)
            points.append((sign * x, sign * y))
            kept.append((x, y))
            views = [(r.summary[GLOBAL].get("overall") if task == "overall" else r.summary[GLOBAL]["final"].get(task))
                     for r in c.runs if r.has_global]
            views = [v for v in views if v]
            if views:  # the global model: hollow, joined to the personal model's point
                gx = _mean_std([v["mean"] * _scale(metric) for v in views])
                gy = _mean_std([v["worst10"] * _scale(metric) for v in views])
                ax.errorbar(gx[0], gy[0], xerr=gx[1], yerr=gy[1], fmt="o", color=colours[k], mfc="none",
                            ms=7, capsize=3)
                ax.plot([gx[0], x], [gy[0], y], color=colours[k], lw=0.8, ls=":")
            if ax is axes[0]:
                handles.append(handle)
                labels.append(_wrap(c.label))
        front = pareto_front(points)
        if front:  # dashed line through the front, each front point ringed
            line, = ax.plot([kept[i][0] for i in front], [kept[i][1] for i in front], "--o", color="0.2",
                            lw=1.2, ms=14, mfc="none", mew=1.4, zorder=3, label="Pareto front")
            views, names = _view_handles(configurations, marker=True) if ax is axes[0] else ([], [])
            ax.legend([line, *views], ["Pareto front", *names], loc="best", fontsize=8)
        better = "higher" if sign > 0 else "lower"
        ax.set_title(f"{'overall (client mean over its tasks)' if task == 'overall' else f'task {task!r}'}"
                     f"\nfairness vs accuracy ({better} is better)")
        ax.set_xlabel(f"mean client test {_unit(metric)}")
        ax.set_ylabel(f"worst-10% clients' mean test {_unit(metric)}")
        ax.grid(alpha=0.3)
    return _save(fig, path, handles, labels)


def plot_round_curves(configurations: list[Configuration], path: Path) -> Path:
    """Per task: mean client metric per round and the 10th-90th percentile band across clients."""
    tasks = _task_order(configurations)
    fig, axes = _panels(len(tasks))
    handles, labels = [], []
    for colour, c in zip(_colours(len(configurations)), configurations, strict=True):
        curves = pd.concat([r.curves.assign(seed=r.seed) for r in c.runs])
        for ax, (task, metric) in zip(axes, tasks.items(), strict=True):
            rows = curves[curves["task"] == task]
            if rows.empty:
                continue
            scale = _scale(metric)
            mean = rows.groupby(["round", "seed"])["value"].mean().groupby("round").mean() * scale
            band = rows.groupby("round")["value"]
            ax.fill_between(mean.index, band.quantile(0.1) * scale, band.quantile(0.9) * scale,
                            color=colour, alpha=0.18, lw=0)
            line, = ax.plot(mean.index, mean.to_numpy(), color=colour, marker="o", ms=3)
            views = [r.global_curves.assign(seed=r.seed) for r in c.runs if not r.global_curves.empty]
            view = pd.concat(views) if views else pd.DataFrame(columns=["task"])
            view = view[view["task"] == task]
            if not view.empty:  # the global model's mean, dashed
                view_mean = view.groupby(["round", "seed"])["value"].mean().groupby("round").mean() * scale
                ax.plot(view_mean.index, view_mean.to_numpy(), color=colour, marker="s", ms=3, ls="--")
            if ax is axes[0]:
                handles.append(line)
                labels.append(_wrap(c.label))
    _view_legend(configurations, axes[0])
    for ax, (task, metric) in zip(axes, tasks.items(), strict=True):
        ax.set_title(f"task '{task}': mean over clients\n(band: 10th-90th percentile of clients)")
        ax.set_xlabel("server round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"client test {_unit(metric)}")
        ax.grid(alpha=0.3)
    return _save(fig, path, handles, labels)


def plot_client_task_heatmap(configurations: list[Configuration], path: Path) -> Path:
    """Per configuration (its first seed): clients × tasks final metric."""
    tasks = _task_order(configurations)
    metrics = set(tasks.values())
    shown = configurations[:12]
    cols = min(4, len(shown))
    rows = math.ceil(len(shown) / cols)
    clients = max(int(c.runs[0].final["client"].nunique()) for c in shown)
    height = min(3.0 + 0.12 * clients, 12.0)
    fig = Figure(figsize=(1.6 + 1.3 * len(tasks) * cols, height * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    scale = _scale(next(iter(metrics))) if len(metrics) == 1 else 1.0
    image = None
    for k, (ax, c) in enumerate(zip(axes.flat, shown, strict=False)):
        table = c.runs[0].final.pivot_table(index="client", columns="task", values="value")
        table = table.reindex(columns=list(tasks)) * scale
        image = ax.imshow(np.ma.masked_invalid(table.to_numpy()), aspect="auto", cmap="viridis",
                          interpolation="nearest",
                          vmin=0 if metrics == {"accuracy"} else None, vmax=100 if metrics == {"accuracy"} else None)
        image.cmap.set_bad("0.8")
        ax.set_xticks(range(len(tasks)), list(tasks), rotation=30 if len(tasks) > 3 else 0)
        ax.set_xlabel("task")
        if k % cols == 0:
            ax.set_ylabel("client id")
        step = max(1, len(table.index) // 15)
        ax.set_yticks(range(0, len(table.index), step), [str(i) for i in table.index[::step]])
        ax.set_title(_wrap(f"{c.label} (seed {c.runs[0].seed})", 34), fontsize=9)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    if image is not None:
        label = f"client test {_unit(next(iter(metrics)))}" if len(metrics) == 1 else "client test metric"
        fig.colorbar(image, ax=list(axes.flat), label=label + " (grey: task not held)", shrink=0.8)
    fig.suptitle("Final metric of every client on every task", fontsize=11)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


FIGURES = {
    "client_cdf.png": plot_client_cdf,
    "fairness_accuracy.png": plot_fairness_plane,
    "round_curves.png": plot_round_curves,
    "client_task_heatmap.png": plot_client_task_heatmap,
}


def choose_reference(configurations: list[Configuration], reference: str | None) -> Configuration:
    """The configuration whose label equals (or alone contains) ``reference``; else the first."""
    if reference is None:
        return configurations[0]
    exact = [c for c in configurations if c.label == reference]
    matches = exact or [c for c in configurations if reference in c.label]
    if len(matches) != 1:
        labels = "; ".join(c.label for c in configurations)
        raise ValueError(f"--reference '{reference}' matches {len(matches)} configurations; "
                         f"give one of: {labels}")
    return matches[0]


def placement_table(configurations: list[Configuration]) -> str:
    """A Markdown table of replies per ``host/node/device`` per configuration (``""`` if no run
    recorded its placement)."""
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


def check_report_targets(out: Path) -> None:
    """Refuse to write a report through a symbolic link: ``out`` or any file it would write.

    Raises
    ------
    ValueError
        Naming the link.
    """
    for path in [out, *(out / name for name in (*REPORT_FILES, *FIGURES))]:
        if path.is_symlink():
            raise ValueError(f"'{path}' is a symbolic link; fedmtl report never writes through one: "
                             "remove it or choose another --out")


def make_report(paths: list[str | Path], out: str | Path, reference: str | None = None) -> dict[str, Any]:
    """Write ``report.md``, ``report.csv`` and the figures to ``out``; return what was written.

    Parameters
    ----------
    paths : list
        Run folders, sweep folders or any folders holding run folders.
    out : str or Path
        The report folder (created).
    reference : str, optional
        The label (or a unique part of it) of the Δm% reference configuration; default the
        first configuration found.

    Returns
    -------
    dict
        ``report``, ``csv``, ``figures`` (paths), ``table`` (markdown), ``configurations``
        (labels) and ``replaced`` (whether a ``report.md`` was there before).

    Raises
    ------
    ValueError
        When ``out`` or a file of the report is a symbolic link (nothing is written), or the
        runs cannot be reported.
    """
    runs = [read_run(p) for p in find_run_dirs(paths)]
    out = Path(out)
    check_report_targets(out)
    replaced = (out / "report.md").is_file()
    out.mkdir(parents=True, exist_ok=True)
    configurations = group_configurations(runs)
    ref = choose_reference(configurations, reference)
    tidy = summarize_configurations(configurations, ref)
    tidy.to_csv(out / "report.csv", index=False)
    figures = [fn(configurations, out / name) for name, fn in FIGURES.items()]
    table = markdown_table(configurations, tidy)
    views = global_table(configurations, tidy)
    participation = participation_table(configurations, tidy)
    groups = group_table(configurations)
    lines = [
        "# fedmtl report", "",
        f"{len(runs)} runs in {len(configurations)} configurations, from "
        + ", ".join(f"`{p}`" for p in paths) + ".",
        "Values are the final evaluation round's statistics across clients, mean ± sample std "
        "over seeds. Accuracy in %. Worst-10%: mean of the worst 10% of clients. Jain's index "
        "(1 = all clients equal) and Gini coefficient (0 = all equal) of the client metric. "
        f"Δm%: mean relative change of the tasks' mean client metric against `{ref.label}` "
        "(sign-adjusted per metric; lower is better).", "",
        table, "",
    ]
    if views:
        lines += ["## Global model", "",
                  "For methods with a global and a personal model (Ditto, fine-tuning, FedBABU, FedRep), "
                  "the main table is the personal model's (split `test`); here each statistic of the "
                  "personal model beside the global model's (split `test-global`), at the final round. "
                  "The figures draw the global model dashed (CDF, round curves) or hollow (plane).",
                  "", views, ""]
    if participation:
        lines += ["## Participation", "",
                  "Clients trained in a round when the server accepted their training reply "
                  "(`participation.csv` in each run folder). A client that never trained is evaluated "
                  "with personal state it never trained (for FedPer: untrained heads on the global "
                  "backbone), so it may be among the worst for that reason alone. Per task: how many of "
                  "the final round's worst-10% clients never trained, of how many, and the worst-10% "
                  "mean over the clients that trained only.", "", participation, ""]
    if groups:
        lines += ["## Group fairness", "",
                  "Gaps between the groups of the sensitive attribute at the final round: over all "
                  "clients' test examples pooled / mean over clients (lower is fairer).", "", groups, ""]
    placement = placement_table(configurations)
    if placement:
        lines += ["## Placement", "",
                  "Replies (training and evaluation) per host, Ray node and device, summed over each "
                  "configuration's runs (`placement.csv` in each run folder).", "", placement, ""]
    lines += ["## Figures", ""] + [f"![{f.stem}]({f.name})" for f in figures] + [""]
    (out / "report.md").write_text("\n".join(lines))
    return {"report": out / "report.md", "csv": out / "report.csv", "figures": figures,
            "table": table, "configurations": [c.label for c in configurations], "replaced": replaced}
