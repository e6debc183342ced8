"""Figures of one run folder (:func:`plot_run`, written to ``plots/``) and of a report over
many runs (:func:`report_figures`, written beside ``report.md``).

Every figure is written in one format per call (:data:`FORMATS`: ``png`` at ``dpi`` dots per
inch, default :data:`DEFAULT_DPI`; ``pdf`` and ``svg`` as vectors, without a creation date so
that the same data gives the same file). Round and client axes have integer ticks only; panels
of one metric across tasks share their y-axis. ``highlight`` (a client id) marks one client's
line, point or row wherever the figure shows clients.

A run folder's figures (:func:`plot_run`):

- ``accuracy``: per task, the personalized test metric vs round: the mean across clients, the
  10th-90th percentile band and the min-max band; for a method with a global and a personal
  model, also the global model's mean and 10th-90th percentile band (split ``test-global``,
  dashed);
- ``final_distribution``: per task, the distribution of client test metrics at the last
  evaluation round (box plot and every client as a point); with a global view, one box for the
  personal and one for the global model per task;
- ``clients``: per task, every client's final test metric by client id (hollow: the client
  never trained, from ``participation.csv``);
- ``fairness_rounds``: from ``rounds.csv``, per task (and overall): the worst-10% clients'
  mean, Jain's index and the best-worst gap over rounds (the global model's dashed);
- ``group_fairness`` (when ``rounds.csv`` records group gaps): per task and sensitive
  attribute, each gap between groups over rounds, pooled over clients (solid) and the mean
  client's (dashed).

A report's figures (:func:`report_figures`; ``configurations`` are
:class:`fedmtl.report.Configuration` objects: a ``label`` and ``runs`` read by
:func:`fedmtl.report.read_run`):

- ``client_cdf``: per task, the empirical CDF of the clients' final metric, one line per run;
- ``fairness_accuracy``: per task (and overall), mean vs worst-10% client metric per
  configuration with seed error bars and the Pareto front;
- ``round_curves``: per task, the mean client metric per round with the 10th-90th percentile
  band across clients (pooled over seeds);
- ``client_task_heatmap``: per configuration, every client's final metric on every task,
  averaged over the configuration's seeds, its colour scale fitted to the data and the values
  written in the cells (up to :data:`VALUES_UP_TO` clients; grey: the client holds no task);
- ``fairness_rounds``: per task (and overall), worst-10% mean, Jain's index and best-worst gap
  per round, one line per configuration (mean over seeds; from ``rounds.csv``);
- ``group_fairness`` (when some run recorded group gaps): each gap over rounds, one line per
  configuration.

Figures are :class:`matplotlib.figure.Figure` objects saved directly: importing or calling
this module neither imports ``matplotlib.pyplot`` nor changes matplotlib's backend or rcParams.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
import textwrap
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib import rcsetup
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from fedmtl import seeds
from fedmtl.atomic import write_bytes
from fedmtl.fairness import summarize
from fedmtl.protocol import TEST_GLOBAL as GLOBAL_SPLIT

PREFERRED = ("accuracy", "mse", "mae", "loss")
FORMATS = ("png", "pdf", "svg")
"""The formats a figure can be written in."""
DEFAULT_DPI = 150
"""Dots per inch of a PNG figure unless told otherwise."""
MAX_DPI = 1200
"""The most dots per inch a PNG figure may have: a 10 × 6 inch figure at 1,200 dpi is 86
million pixels (about 350 MB while drawn); 100,000 dpi asked for terabytes."""
VALUES_UP_TO = 30
"""The client × task heatmap writes each cell's value when it shows at most this many clients."""
GLOBAL_PREFIX = "global_"
"""Prefix of the global model's ``rounds.csv`` columns."""
TRAINED_PREFIX = "trained_"
"""Prefix of the ``rounds.csv`` columns over the evaluated clients that trained at least once."""
VIEWS = {"personal": ("", "-", "o", "all evaluated clients"),
         "global": (GLOBAL_PREFIX, "--", "s", "global model"),
         "trained": (TRAINED_PREFIX, ":", "^", "clients that trained only")}
"""The views of a round's statistics in ``rounds.csv``: column prefix, line style, marker, legend."""
OVERALL = "overall"
GAP_NAMES = {"demographic-parity-diff": "demographic parity difference",
             "equalized-odds-diff": "equalized odds difference", "accuracy-gap": "accuracy gap"}
"""The group gaps of :mod:`fedmtl.group_fairness`, as the figures name them."""
FAIRNESS_STATS = (("worst10", "worst-10% clients' mean"), ("jain", "Jain's index (1 = equal)"),
                  ("gap", "best − worst client"))
"""The ``rounds.csv`` statistics of the fairness-over-rounds figures, with their axis labels."""
HIGHLIGHT = "black"
_GROUP_COLUMN = re.compile(r"^(?P<view>global_|trained_)?(?P<task>[^.]+)\.(?P<gap>" + "|".join(GAP_NAMES)
                           + r")-(?P<attribute>[^.]+)\.(?P<stat>pooled|mean|worst)$")


def primary_metric(test: pd.DataFrame, task: str, rounds: pd.DataFrame | None = None) -> str:
    """The metric shown for ``task``: the one ``rounds`` (``rounds.csv``) has statistics of (its
    kind's first metric, a plugin kind's too); without them accuracy if recorded, else MSE, MAE
    or loss, else the first one recorded."""
    recorded = list(dict.fromkeys(test.loc[test["task"] == task, "metric"]))
    if rounds is not None:
        summarised = [m for m in recorded if f"{task}.{m}.mean" in rounds.columns]
        if summarised:
            return summarised[0]
    return next((m for m in PREFERRED if m in recorded), recorded[0])


@contextlib.contextmanager
def backend_left_unset() -> Iterator[None]:
    """Keep matplotlib's backend unchosen while drawing on a :class:`Figure` of our own.

    Some Axes methods (``boxplot``) read every rcParam; reading an unchosen ``backend`` makes
    matplotlib import pyplot and choose one for the whole process. No backend is needed to
    draw and save a Figure, so the entry holds ``agg`` meanwhile and is put back on exit.
    """
    params = matplotlib.rcParams
    unset = params._get("backend")  # RcParams._get/_set: the raw access matplotlib documents
    if unset is not rcsetup._auto_backend_sentinel:
        yield
        return
    params._set("backend", "agg")
    try:
        yield
    finally:
        params._set("backend", unset)


# -- shared helpers ----------------------------------------------------------------------
def check_format(fmt: str, dpi: int = DEFAULT_DPI) -> None:
    """Refuse a format not in :data:`FORMATS` or a ``dpi`` outside 1..:data:`MAX_DPI`.

    Raises
    ------
    ValueError
        Naming the bad value and what is allowed.
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format '{fmt}' is not one of {', '.join(FORMATS)}")
    if not isinstance(dpi, int) or isinstance(dpi, bool) or not 1 <= dpi <= MAX_DPI:
        raise ValueError(f"--dpi {dpi} must be a whole number from 1 to {MAX_DPI}")


def save_figure(fig: Figure, path: Path, dpi: int = DEFAULT_DPI) -> Path:
    """Write ``fig`` to ``path`` in the format its suffix names (tight bounding box; vector
    formats without a creation date; PNG with zlib's fastest compression), atomically."""
    fmt = path.suffix.lstrip(".")
    check_format(fmt, dpi)
    metadata = {"pdf": {"CreationDate": None}, "svg": {"Date": None}}.get(fmt, {})
    # zlib's fastest level: about 10% off a run's figures for PNGs about 18% larger
    extra = {"pil_kwargs": {"compress_level": 1}} if fmt == "png" else {}
    buffer = io.BytesIO()
    # SVG element ids are hashes salted at random unless svg.hashsalt is set: the same figure
    # would differ byte for byte from one drawing to the next
    with matplotlib.rc_context({"svg.hashsalt": "fedmtl"}):
        fig.savefig(buffer, format=fmt, dpi=dpi, bbox_inches="tight", metadata=metadata, **extra)
    write_bytes(path, buffer.getvalue())  # whole or not at all: a killed run leaves no half figure
    return path


def integer_ticks(axis: Any) -> None:
    """Only whole numbers on ``axis`` (an ``Axes.xaxis`` or ``yaxis``): rounds and client ids."""
    axis.set_major_locator(MaxNLocator(integer=True))


def scale_of(metric: str) -> float:
    """100 for accuracy (shown in %), else 1."""
    return 100.0 if metric == "accuracy" else 1.0


def unit_of(metric: str) -> str:
    """``"accuracy (%)"`` or the metric's name."""
    return f"{metric} (%)" if metric == "accuracy" else metric


def higher_is_better(metric: str) -> bool:
    """The direction of a metric name, from the registered task kinds.

    Raises
    ------
    ValueError
        No registered task kind has ``metric`` (a plugin's kind whose plugin is not loaded).
    """
    from fedmtl.tasks import TASK_KINDS  # torch, only when a direction is needed

    for _, kind in TASK_KINDS.items():
        if metric in kind.metrics:
            return kind.metrics[metric]
    raise ValueError(f"metric '{metric}' is of no registered task kind, so whether higher is better is unknown (a "
                     "plugin's task kind: its plugin, the run's run.plugins, must be importable from here)")


def _wrap(label: str, width: int = 38) -> str:
    """``label`` (a configuration's, from run names and config values) wrapped at ``width``,
    every ``$`` escaped: matplotlib reads text between two ``$`` as mathematics, and a name like
    ``price $x^$`` would stop the figure with a parse error."""
    shown = label.replace("$", r"\$")
    return "\n".join(textwrap.wrap(shown, width)) or shown


def _colours(n: int) -> list[Any]:
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    array = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if len(array) == 0:
        return math.nan, math.nan
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def _panels(n: int, width: float = 5.0, height: float = 4.0, sharey: bool = False,
            rows: int = 1) -> tuple[Figure, list[Axes]]:
    cols = math.ceil(n / rows)
    fig = Figure(figsize=(width * cols, height * rows))
    axes = fig.subplots(rows, cols, squeeze=False, sharey=sharey)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat[:n]


def _save_with_legend(fig: Figure, path: Path, dpi: int, handles: list, labels: list,
                      title: str = "configuration") -> Path:
    """Save with a legend (of the configurations) below the panels."""
    fig.tight_layout()
    if handles:
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), fontsize=8,
                   ncol=min(3, len(labels)), frameon=False, title=title, title_fontsize=9)
    return save_figure(fig, path, dpi)


def _shared_metric(metrics: Sequence[str]) -> bool:
    return len(set(metrics)) == 1


def read_rounds(run_dir: Path) -> pd.DataFrame:
    """A run's ``rounds.csv`` (empty when it has none), read and checked like every table of a
    run folder (:func:`fedmtl.parquet.read_table`: whole rows, numbers where numbers belong).

    Raises
    ------
    ValueError
        Naming the file when it cannot be used.
    """
    path = Path(run_dir) / "rounds.csv"
    return checked_table(Path(run_dir), "rounds") if path.is_file() else pd.DataFrame({"round": []})


def checked_table(run_dir: Path, name: str) -> pd.DataFrame:
    """Table ``name`` of ``run_dir`` (:func:`fedmtl.parquet.read_table`).

    Raises
    ------
    ValueError
        One line naming the file, when it is missing or cannot be read as the table fedmtl writes.
    """
    from fedmtl.one_line import one_line
    from fedmtl.parquet import read_table

    try:
        return read_table(run_dir, name)
    except (OSError, ValueError, TypeError, OverflowError) as error:  # pandas' parser errors are ValueErrors
        raise ValueError(f"'{run_dir / (name + '.csv')}' cannot be read ({one_line(error, 200)})") from None


def group_columns(rounds: pd.DataFrame) -> pd.DataFrame:
    """The group-gap columns of a ``rounds.csv`` table, parsed: ``column, view, task, gap,
    attribute, stat`` (``view``: a key of :data:`VIEWS`)."""
    rows = []
    for column in rounds.columns:
        match = _GROUP_COLUMN.match(str(column))
        if match and rounds[column].notna().any():
            view = next(v for v, (prefix, *_) in VIEWS.items() if prefix == (match["view"] or ""))
            rows.append({"column": column, "view": view,
                         **{k: match[k] for k in ("task", "gap", "attribute", "stat")}})
    return pd.DataFrame(rows, columns=["column", "view", "task", "gap", "attribute", "stat"])


def _fairness_panels(rounds: pd.DataFrame, tasks: dict[str, str]) -> dict[str, str]:
    """``{task or overall: metric}`` of the tasks whose statistics ``rounds`` holds."""
    panels = {t: m for t, m in tasks.items() if f"{t}.{m}.worst10" in rounds.columns}
    overall = [str(c)[len(OVERALL) + 1:-len(".worst10")] for c in rounds.columns
               if str(c).startswith(f"{OVERALL}.") and str(c).endswith(".worst10")]
    if overall:
        panels[OVERALL] = overall[0]
    return panels


def _drawn(rounds: pd.DataFrame, column: str, personal: str, view: str) -> bool:
    """Whether ``rounds.csv``'s ``column`` is worth a line: recorded, and for the trained-only
    view, different from all evaluated clients' (when every evaluated client trained, they agree)."""
    if column not in rounds.columns or rounds[column].isna().all():
        return False
    if view != "trained" or personal not in rounds.columns:
        return True
    both = rounds[[column, personal]].dropna()
    return not np.allclose(both[column], both[personal])


def _title(task: str) -> str:
    return "overall (client mean over its tasks)" if task == OVERALL else f"task '{task}'"


# -- a run folder ------------------------------------------------------------------------
EVERY_RUN_FIGURES = ("accuracy", "final_distribution", "clients", "fairness_rounds")
"""The figures of every run folder with evaluations (``plots/<name>.<format>``)."""
RUN_FIGURES = (*EVERY_RUN_FIGURES, "group_fairness")
"""The names of a run folder's figures (``plots/<name>.<format>``; ``group_fairness`` with groups)."""


def plot_run(run_dir: str | Path, fmt: str = "png", dpi: int = DEFAULT_DPI,
             highlight: int | None = None) -> list[Path]:
    """Draw every figure of ``run_dir`` into ``run_dir/plots``; return their paths.

    Parameters
    ----------
    run_dir : str or Path
        A run folder (with ``metrics.csv``).
    fmt : str
        One of :data:`FORMATS`.
    dpi : int
        Dots per inch (PNG).
    highlight : int, optional
        A client id to mark in every figure that shows clients.

    Raises
    ------
    ValueError
        A bad format or dpi, or ``highlight`` naming no evaluated client.
    """
    check_format(fmt, dpi)
    run_dir = Path(run_dir)
    metrics = checked_table(run_dir, "metrics")
    test = metrics[(metrics["split"] == "test") & (metrics["task"] != "all")]
    view = metrics[(metrics["split"] == GLOBAL_SPLIT) & (metrics["task"] != "all")]
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    if test.empty:
        return []
    _check_highlight(highlight, set(test["client"].astype(int)), str(run_dir))
    tasks = sorted(test["task"].unique())
    rounds = read_rounds(run_dir)
    metric_of = {t: primary_metric(test, t, rounds) for t in tasks}
    written = [_curves(test, metric_of, out / f"accuracy.{fmt}", view, dpi, highlight),
               _final(test, metric_of, out / f"final_distribution.{fmt}", view, dpi, highlight),
               _clients(test, metric_of, out / f"clients.{fmt}", run_dir, dpi, highlight)]
    written.append(_run_fairness_rounds(rounds, metric_of, out / f"fairness_rounds.{fmt}", dpi))
    written.append(_run_group_fairness(rounds, out / f"group_fairness.{fmt}", dpi))
    return [p for p in written if p is not None]


def _check_highlight(highlight: int | None, clients: set[int], where: str) -> None:
    if highlight is not None and highlight not in clients:
        shown = sorted(clients)
        span = f"{shown[0]}..{shown[-1]}" if shown else "none"
        raise ValueError(f"--highlight-client {highlight}: no evaluated client {highlight} in {where} "
                         f"(clients {span})")


def _curves(test: pd.DataFrame, metric_of: dict[str, str], path: Path, view: pd.DataFrame | None = None,
            dpi: int = DEFAULT_DPI, highlight: int | None = None) -> Path:
    both = view is not None and not view.empty
    tasks, metrics = list(metric_of), list(metric_of.values())
    fig, axes = _panels(len(tasks), 5.0, 3.8, sharey=_shared_metric(metrics))
    for ax, task, metric in zip(axes, tasks, metrics, strict=True):
        label, scale = unit_of(metric), scale_of(metric)
        rows = test[(test["task"] == task) & (test["metric"] == metric)]
        per_round = rows.groupby("round")["value"]
        rounds = np.array(sorted(rows["round"].unique()))
        mean = per_round.mean().reindex(rounds).to_numpy() * scale
        lo, hi = per_round.min().reindex(rounds) * scale, per_round.max().reindex(rounds) * scale
        p10 = per_round.quantile(0.1).reindex(rounds) * scale
        p90 = per_round.quantile(0.9).reindex(rounds) * scale
        ax.fill_between(rounds, lo, hi, alpha=0.15, color="C0", label="min-max over clients")
        ax.fill_between(rounds, p10, p90, alpha=0.3, color="C0", label="10th-90th percentile")
        ax.plot(rounds, mean, color="C0", marker="o", label="mean over clients")
        rows = view[(view["task"] == task) & (view["metric"] == metric)] if both else None
        if rows is not None and not rows.empty:  # the global model of a method that has both
            per_round = rows.groupby("round")["value"]
            shown = np.array(sorted(rows["round"].unique()))
            ax.fill_between(shown, per_round.quantile(0.1).reindex(shown) * scale,
                            per_round.quantile(0.9).reindex(shown) * scale, alpha=0.15, color="C3",
                            label="global model: 10th-90th percentile")
            ax.plot(shown, per_round.mean().reindex(shown).to_numpy() * scale, color="C3", marker="s", ls="--",
                    label="global model: mean over clients")
        if highlight is not None:
            own = test[(test["task"] == task) & (test["metric"] == metric) & (test["client"] == highlight)]
            if not own.empty:
                own = own.sort_values("round")
                ax.plot(own["round"], own["value"] * scale, color=HIGHLIGHT, lw=1.6, marker="*", ms=9,
                        label=f"client {highlight}")
        ax.set_title(f"task '{task}': test {metric}, personal and global model" if both
                     else f"task '{task}': personalized test {metric}")
        ax.set_xlabel("server round")
        integer_ticks(ax.xaxis)
        ax.set_ylabel(label)
        ax.yaxis.set_tick_params(labelleft=True)
        ax.grid(alpha=0.3)
        if both:  # five entries: below the panel, clear of the bands
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, fontsize=8, frameon=False)
        else:
            ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi)


def _final(test: pd.DataFrame, metric_of: dict[str, str], path: Path, view: pd.DataFrame | None = None,
           dpi: int = DEFAULT_DPI, highlight: int | None = None) -> Path:
    last = test["round"].max()
    view = view[view["round"] == last] if view is not None else None
    both = view is not None and not view.empty
    fig = Figure(figsize=(1.8 + 1.8 * len(metric_of) * (2 if both else 1), 3.8))
    ax = fig.subplots()
    data, labels, marked = [], [], []
    for task, metric in metric_of.items():
        scale = scale_of(metric)
        sources = [(test[test["round"] == last], "\npersonal" if both else "")]
        if both:
            sources.append((view, "\nglobal"))
        for frame, suffix in sources:
            rows = frame[(frame["task"] == task) & (frame["metric"] == metric)]
            data.append(rows["value"].to_numpy() * scale)
            labels.append(f"{task}\n({metric})" + suffix)
            own = rows.loc[rows["client"] == highlight, "value"] if highlight is not None else []
            marked.append(float(own.iloc[0]) * scale if len(own) else None)
    with backend_left_unset():
        ax.boxplot(data, showfliers=False)
    rng = seeds.rng(0)
    for i, values in enumerate(data, start=1):
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(values)), values, s=12, alpha=0.7, color="C1")
    points = [(i, v) for i, v in enumerate(marked, start=1) if v is not None]
    if points:
        ax.scatter(*zip(*points, strict=True), marker="*", s=160, color=HIGHLIGHT, zorder=4,
                   label=f"client {highlight}")
        ax.legend(loc="best", fontsize=8)
    ax.set_xticks(range(1, len(labels) + 1), labels)
    shown = set(metric_of.values())
    ax.set_ylabel(f"client test {unit_of(shown.pop())}" if len(shown) == 1 else "client test metric (per box)")
    evaluated = test.loc[test["round"] == last, "client"].nunique()  # with task sets, a task has fewer
    ax.set_title(f"Client distribution at round {last} ({evaluated} clients)")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return save_figure(fig, path, dpi)


def _clients(test: pd.DataFrame, metric_of: dict[str, str], path: Path, run_dir: Path, dpi: int = DEFAULT_DPI,
             highlight: int | None = None) -> Path:
    """Per task, each client's final metric by client id (hollow: never trained)."""
    last = test["round"].max()
    tasks, metrics = list(metric_of), list(metric_of.values())
    participation = Path(run_dir) / "participation.csv"
    never: set[int] = set()
    if participation.is_file():
        table = pd.read_csv(participation)
        never = set(table.loc[table["rounds_trained"] == 0, "client"].astype(int))
    clients = sorted(test["client"].astype(int).unique())
    width = min(max(5.0, 0.12 * len(clients) + 2.0), 12.0)
    fig, axes = _panels(len(tasks), width, 3.6, sharey=_shared_metric(metrics), rows=len(tasks))
    for ax, task, metric in zip(axes, tasks, metrics, strict=True):
        rows = test[(test["round"] == last) & (test["task"] == task) & (test["metric"] == metric)]
        rows = rows.assign(client=rows["client"].astype(int)).sort_values("client")
        values = rows["value"].to_numpy() * scale_of(metric)
        trained = ~rows["client"].isin(list(never)).to_numpy()
        ax.vlines(rows["client"], 0 if metric == "accuracy" else values.min(), values, color="0.8", lw=0.8)
        ax.scatter(rows["client"][trained], values[trained], s=24, color="C0", zorder=3, label="trained")
        if (~trained).any():
            ax.scatter(rows["client"][~trained], values[~trained], s=24, facecolor="white", edgecolor="C3",
                       zorder=3, label="never trained")
        if highlight is not None and highlight in set(rows["client"]):
            value = values[rows["client"].to_numpy() == highlight][0]
            ax.scatter([highlight], [value], marker="*", s=220, color=HIGHLIGHT, zorder=4,
                       label=f"client {highlight}")
            ax.annotate(f"client {highlight}", (highlight, value), xytext=(6, 6), textcoords="offset points",
                        fontsize=8)
        ax.set_title(f"task '{task}': each client's test {metric} at round {last}")
        ax.set_xlabel("client id")
        integer_ticks(ax.xaxis)
        ax.set_ylabel(f"client test {unit_of(metric)}")
        ax.yaxis.set_tick_params(labelleft=True)
        ax.grid(alpha=0.3, axis="y")
        if (~trained).any() or highlight is not None:
            ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi)


def _run_fairness_rounds(rounds: pd.DataFrame, tasks: dict[str, str], path: Path,
                         dpi: int = DEFAULT_DPI) -> Path | None:
    """From ``rounds.csv``: per task, worst-10% mean, Jain's index and best-worst gap per round."""
    panels = _fairness_panels(rounds, tasks)
    if not panels:
        return None
    shared = _shared_metric(list(panels.values()))
    fig = Figure(figsize=(4.6 * len(panels), 2.6 * len(FAIRNESS_STATS) + 0.6))
    axes = fig.subplots(len(FAIRNESS_STATS), len(panels), squeeze=False, sharex=True,
                        sharey="row" if shared else False)
    shown_views: set[str] = set()
    for col, (task, metric) in enumerate(panels.items()):
        for row, (stat, label) in enumerate(FAIRNESS_STATS):
            ax = axes[row][col]
            scale = 1.0 if stat == "jain" else scale_of(metric)
            for view, (prefix, style, marker, _) in VIEWS.items():
                column = f"{prefix}{task}.{metric}.{stat}"
                if not _drawn(rounds, column, f"{task}.{metric}.{stat}", view):
                    continue
                shown = rounds[["round", column]].dropna()
                ax.plot(shown["round"], shown[column] * scale, ls=style, marker=marker, ms=3, color="C0")
                shown_views.add(view)
            if row == 0:
                ax.set_title(_title(task))
            if row == len(FAIRNESS_STATS) - 1:
                ax.set_xlabel("server round")
            integer_ticks(ax.xaxis)
            ax.set_ylabel(label if stat == "jain" else f"{label}\n{unit_of(metric)}")
            ax.yaxis.set_tick_params(labelleft=True)
            ax.grid(alpha=0.3)
    handles, labels = _views_legend(shown_views)
    fig.suptitle("Fairness across clients over rounds")
    return _save_with_legend(fig, path, dpi, handles, labels, title="")


def _run_group_fairness(rounds: pd.DataFrame, path: Path, dpi: int = DEFAULT_DPI) -> Path | None:
    """From ``rounds.csv``: each group gap over rounds, pooled (solid) and the mean client's (dashed)."""
    columns = group_columns(rounds)
    columns = columns[columns["view"] == "personal"]
    if columns.empty:
        return None
    keys = list(dict.fromkeys(zip(columns["task"], columns["attribute"], strict=True)))
    gaps = [g for g in GAP_NAMES if g in set(columns["gap"])]
    colours = dict(zip(gaps, _colours(len(gaps)), strict=True))
    fig, axes = _panels(len(keys), 5.0, 3.6, sharey=True)
    for ax, (task, attribute) in zip(axes, keys, strict=True):
        for gap in gaps:
            for stat, style in (("pooled", "-"), ("mean", "--")):
                column = f"{task}.{gap}-{attribute}.{stat}"
                if column in rounds.columns:
                    shown = rounds[["round", column]].dropna()
                    ax.plot(shown["round"], shown[column], ls=style, marker="o", ms=3, color=colours[gap])
        ax.set_title(f"task '{task}': gaps between '{attribute}' groups")
        ax.set_xlabel("server round")
        integer_ticks(ax.xaxis)
        ax.set_ylabel("gap (0 = equal groups)")
        ax.yaxis.set_tick_params(labelleft=True)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colours[g]) for g in gaps]
    handles += [Line2D([], [], color="0.3", ls=s) for s in ("-", "--")]
    labels = [GAP_NAMES[g] for g in gaps] + ["pooled over clients' examples", "mean over clients"]
    return _save_with_legend(fig, path, dpi, handles, labels, title="")


# -- a report over many runs -------------------------------------------------------------
def task_metrics(configurations: Sequence[Any]) -> dict[str, str]:
    """``{task: primary metric}`` over every run, in the order first seen."""
    tasks: dict[str, str] = {}
    for c in configurations:
        for run in c.runs:
            tasks.update({t: m for t, m in run.tasks.items() if t not in tasks})
    return tasks


def report_clients(configurations: Sequence[Any]) -> list[int]:
    """Every client id evaluated at the final round of some run."""
    return sorted({int(x) for c in configurations for r in c.runs for x in r.final["client"]})


def _view_handles(configurations: Sequence[Any], marker: bool = False) -> tuple[list[Any], list[str]]:
    """Legend entries telling the personal and the global model's lines (or filled and hollow
    markers) apart; none when no run has a global view."""
    if not any(r.has_global for c in configurations for r in c.runs):
        return [], []
    if marker:
        handles = [Line2D([], [], color="0.3", ls="none", marker="o", mfc=fill) for fill in ("0.3", "none")]
    else:
        handles = [Line2D([], [], color="0.3", ls=style) for style in ("-", "--")]
    return handles, ["personal model", "global model"]


def _views_legend(shown: set[str]) -> tuple[list[Any], list[str]]:
    """Legend entries of the :data:`VIEWS` drawn (none when only the personal one is)."""
    if shown <= {"personal"}:
        return [], []
    views = [v for v in VIEWS if v in shown]
    return ([Line2D([], [], color="0.3", ls=VIEWS[v][1], marker=VIEWS[v][2], ms=3) for v in views],
            [VIEWS[v][3] for v in views])


def _small_legend(ax: Axes, handles: list, labels: list) -> None:
    if handles:
        ax.legend(handles, labels, loc="best", fontsize=8)


def _highlight_handle(highlight: int | None) -> tuple[list[Any], list[str]]:
    if highlight is None:
        return [], []
    return [Line2D([], [], color=HIGHLIGHT, ls=":", marker="*", ms=9)], [f"client {highlight}"]


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (both maximised)."""
    front = []
    for i, (x, y) in enumerate(points):
        if any(ox >= x and oy >= y and (ox > x or oy > y) for j, (ox, oy) in enumerate(points) if j != i):
            continue
        front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def plot_client_cdf(configurations: Sequence[Any], path: Path, dpi: int = DEFAULT_DPI,
                    highlight: int | None = None) -> Path:
    """Per task, the empirical CDF of client final metrics, one line per run (``highlight``: the
    client's place on each configuration's first-seed line, a star)."""
    tasks = task_metrics(configurations)
    fig, axes = _panels(len(tasks), sharey=True)
    handles, labels = [], []
    for colour, c in zip(_colours(len(configurations)), configurations, strict=True):
        for i, run in enumerate(c.runs):
            for ax, (task, metric) in zip(axes, tasks.items(), strict=True):
                for final, style in ((run.final, "-"), (run.global_final, "--")):
                    if final.empty:
                        continue
                    rows = final[final["task"] == task].sort_values(["value", "client"])
                    values = rows["value"].to_numpy() * scale_of(metric)
                    if len(values) == 0:
                        continue
                    fraction = np.arange(1, len(values) + 1) / len(values)
                    line, = ax.step(values, fraction, where="post", ls=style,
                                    color=colour, alpha=0.9 if i == 0 else 0.45, lw=1.6 if i == 0 else 1.0)
                    own = rows["client"].to_numpy() == highlight
                    if highlight is not None and i == 0 and style == "-" and own.any():
                        ax.plot(values[own], fraction[own], marker="*", ms=13, color=colour, mec=HIGHLIGHT,
                                ls="none", zorder=4)
                    if i == 0 and ax is axes[0] and style == "-":
                        handles.append(line)
                        labels.append(_wrap(c.label))
    views, names = _view_handles(configurations)
    marks, marked = _highlight_handle(highlight)
    _small_legend(axes[0], views + marks, names + marked)
    for ax, (task, metric) in zip(axes, tasks.items(), strict=True):
        ax.set_title(f"task '{task}': clients' final test {metric}")
        ax.set_xlabel(f"client test {unit_of(metric)}")
        ax.set_ylabel("fraction of clients at or below")
        ax.yaxis.set_tick_params(labelleft=True)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    return _save_with_legend(fig, path, dpi, handles, labels)


def plane_panels(configurations: Sequence[Any]) -> dict[str, str]:
    """The fairness plane's panels, name -> metric: every task, and :data:`OVERALL` when every
    run has an overall statistic."""
    panels = dict(task_metrics(configurations))
    if configurations and all(r.summary.get(OVERALL) for c in configurations for r in c.runs):
        panels[OVERALL] = configurations[0].runs[0].summary[OVERALL]["metric"]
    return panels


def plane_statistics(run: Any, panel: str, view: str = "final") -> dict[str, Any] | None:
    """A run's final statistics of ``panel`` (a task or :data:`OVERALL`), of its personal model
    (``view = "final"``) or its global model (``"global"``; ``None`` when it has none)."""
    if view == "global":
        if not run.has_global:
            return None
        own = run.summary["global"]
        return own.get(OVERALL) if panel == OVERALL else own["final"].get(panel)
    return run.summary.get(OVERALL) if panel == OVERALL else run.summary["final"].get(panel)


def plot_fairness_plane(configurations: Sequence[Any], path: Path, dpi: int = DEFAULT_DPI,
                        highlight: int | None = None) -> Path:
    """Per task and overall: mean vs worst-10% client metric per configuration, Pareto front."""
    panels = plane_panels(configurations)
    fig, axes = _panels(len(panels), sharey=_shared_metric(list(panels.values())))
    handles, labels = [], []
    colours = _colours(len(configurations))
    for ax, (task, metric) in zip(axes, panels.items(), strict=True):
        sign = 1.0 if higher_is_better(metric) else -1.0
        points, kept = [], []
        for k, c in enumerate(configurations):
            stats = [s for s in (plane_statistics(r, task) for r in c.runs) if s]
            if not stats:
                continue
            xs = [s["mean"] * scale_of(metric) for s in stats]
            ys = [s["worst10"] * scale_of(metric) for s in stats]
            (x, xe), (y, ye) = _mean_std(xs), _mean_std(ys)
            handle = ax.errorbar(x, y, xerr=xe, yerr=ye, fmt="o", color=colours[k], ms=7, capsize=3)
            points.append((sign * x, sign * y))
            kept.append((x, y))
            views = [v for v in (plane_statistics(r, task, "global") for r in c.runs) if v]
            if views:  # the global model: hollow, joined to the personal model's point
                gx = _mean_std([v["mean"] * scale_of(metric) for v in views])
                gy = _mean_std([v["worst10"] * scale_of(metric) for v in views])
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
        ax.set_title(f"{_title(task)}\nfairness vs accuracy ({better} is better)")
        ax.set_xlabel(f"mean client test {unit_of(metric)}")
        ax.set_ylabel(f"worst-10% clients' mean test {unit_of(metric)}")
        ax.yaxis.set_tick_params(labelleft=True)
        ax.grid(alpha=0.3)
    return _save_with_legend(fig, path, dpi, handles, labels)


def plot_round_curves(configurations: Sequence[Any], path: Path, dpi: int = DEFAULT_DPI,
                      highlight: int | None = None) -> Path:
    """Per task: mean client metric per round and the 10th-90th percentile band across clients
    (``highlight``: the client's own metric, mean over seeds, dotted with stars)."""
    tasks = task_metrics(configurations)
    fig, axes = _panels(len(tasks), sharey=_shared_metric(list(tasks.values())))
    handles, labels = [], []
    for colour, c in zip(_colours(len(configurations)), configurations, strict=True):
        curves = pd.concat([r.curves.assign(seed=r.seed) for r in c.runs])
        for ax, (task, metric) in zip(axes, tasks.items(), strict=True):
            rows = curves[curves["task"] == task]
            if rows.empty:
                continue
            scale = scale_of(metric)
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
            own = rows[rows["client"] == highlight] if highlight is not None else rows.iloc[:0]
            if not own.empty:
                own = own.groupby("round")["value"].mean() * scale
                ax.plot(own.index, own.to_numpy(), color=colour, ls=":", marker="*", ms=9, mec=HIGHLIGHT, zorder=4)
            if ax is axes[0]:
                handles.append(line)
                labels.append(_wrap(c.label))
    views, names = _view_handles(configurations)
    marks, marked = _highlight_handle(highlight)
    _small_legend(axes[0], views + marks, names + marked)
    for ax, (task, metric) in zip(axes, tasks.items(), strict=True):
        ax.set_title(f"task '{task}': mean over clients\n(band: 10th-90th percentile of clients)")
        ax.set_xlabel("server round")
        integer_ticks(ax.xaxis)
        ax.set_ylabel(f"client test {unit_of(metric)}")
        ax.yaxis.set_tick_params(labelleft=True)
        ax.grid(alpha=0.3)
    return _save_with_legend(fig, path, dpi, handles, labels)


def _client_task_pivot(final: pd.DataFrame, tasks: Sequence[str], values: str, aggfunc: str) -> pd.DataFrame:
    """Clients × tasks: ``aggfunc`` of the ``values`` column of the runs' ``final`` rows."""
    if final.empty:
        return pd.DataFrame(columns=list(tasks), dtype=float)
    table = final.assign(client=final["client"].astype(int)).pivot_table(
        index="client", columns="task", values=values, aggfunc=aggfunc)
    return table.reindex(columns=list(tasks))


def client_task_table(configuration: Any, tasks: Sequence[str]) -> pd.DataFrame:
    """Clients × tasks: each client's final metric (unscaled), mean over the configuration's seeds
    (NaN: the client does not hold the task)."""
    return _client_task_pivot(pd.concat([r.final for r in configuration.runs]), tasks, "value", "mean")


def client_task_seeds(configuration: Any, tasks: Sequence[str]) -> pd.DataFrame:
    """Clients × tasks: how many of the configuration's runs (seeds) have a final metric for the
    cell, the runs :func:`client_task_table` averages there (NaN: none has). A cell averages
    fewer than all seeds where a seed's federation or sampling left the client without that
    task, or without a final evaluation."""
    final = pd.concat([r.final.assign(run=k) for k, r in enumerate(configuration.runs)])
    return _client_task_pivot(final.dropna(subset=["value"]), tasks, "run", "nunique").astype(float)


def seeds_note(configuration: Any, seeds: pd.DataFrame) -> str:
    """What a heatmap cell of the configuration averages (``seeds``: its
    :func:`client_task_seeds`): ``seed S`` (one run), ``mean of N seeds`` (every cell has all N)
    or ``mean of k–N seeds a cell`` (some have fewer)."""
    runs = len(configuration.runs)
    if runs == 1:
        return f"seed {configuration.runs[0].seed}"
    counts = seeds.to_numpy(dtype=float).ravel()
    counts = counts[np.isfinite(counts)]
    fewest = int(counts.min()) if len(counts) else runs
    return f"mean of {runs} seeds" if fewest == runs else f"mean of {fewest}–{runs} seeds a cell"


def _cell_text(value: float, percent: bool) -> str:
    return f"{value:.0f}" if percent else f"{value:.3g}"


def plot_client_task_heatmap(configurations: Sequence[Any], path: Path, dpi: int = DEFAULT_DPI,
                             highlight: int | None = None) -> Path:
    """Per configuration (up to 12): clients × tasks final metric, mean over seeds, on one colour
    scale fitted to the data; values in the cells up to :data:`VALUES_UP_TO` clients;
    ``highlight``: a box around the client's row."""
    tasks = task_metrics(configurations)
    metrics = set(tasks.values())
    shown = configurations[:12]
    scale = scale_of(next(iter(metrics))) if len(metrics) == 1 else 1.0
    tables = [client_task_table(c, list(tasks)) * scale for c in shown]
    clients = max(len(t.index) for t in tables)
    values = clients <= VALUES_UP_TO
    cols = min(4, len(shown))
    rows = math.ceil(len(shown) / cols)
    height = 1.2 + (0.26 * clients if values else min(2.0 + 0.12 * clients, 11.0))
    width = 0.3 + (0.75 if values else 0.55) * len(tasks) + 0.8
    fig = Figure(figsize=(width * cols + 1.2, height * rows + 0.5), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    data = np.concatenate([t.to_numpy().ravel() for t in tables])
    data = data[np.isfinite(data)]
    low, high = (float(data.min()), float(data.max())) if len(data) else (0.0, 1.0)
    if high - low < 1e-12:  # one value everywhere: a small span around it
        low, high = low - 0.5 * max(abs(low), 1e-3), high + 0.5 * max(abs(high), 1e-3)
    norm = Normalize(low, high)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.85")
    for k, (ax, c, table) in enumerate(zip(axes.flat, shown, tables, strict=False)):
        grid = table.to_numpy()
        ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
        seeds = client_task_seeds(c, list(tasks))
        counts = seeds.reindex(index=table.index).to_numpy()
        fewer = np.isfinite(counts) & (counts < len(c.runs))
        if values:
            for (i, j), value in np.ndenumerate(grid):
                if np.isfinite(value):
                    r, g, b, _ = cmap(norm(value))
                    dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
                    ax.text(j, i, _cell_text(value, scale == 100.0) + ("*" if fewer[i, j] else ""), ha="center",
                            va="center", fontsize=7, color="white" if dark else "black")
        ax.set_xticks(range(len(tasks)), list(tasks), rotation=30 if len(tasks) > 3 else 0)
        ax.set_xlabel("task")
        if k % cols == 0:
            ax.set_ylabel("client id")
        step = 1 if values else max(1, math.ceil(len(table.index) / 15))
        ax.set_yticks(range(0, len(table.index), step), [str(i) for i in table.index[::step]])
        if highlight is not None and highlight in table.index:
            row = list(table.index).index(highlight)
            ax.add_patch(Rectangle((-0.5, row - 0.5), len(tasks), 1, fill=False, ec="red", lw=2.2, zorder=5))
            if row % step == 0:
                ax.get_yticklabels()[row // step].set_color("red")
        cells = seeds_note(c, seeds) + ("; *: fewer" if values and fewer.any() else "")
        ax.set_title(_wrap(f"{c.label} ({cells})", 30), fontsize=9)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    label = f"client test {unit_of(next(iter(metrics)))}" if len(metrics) == 1 else "client test metric"
    mappable = ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(mappable, ax=list(axes.flat), label=label + "\n(grey: task not held)", shrink=0.9,
                 aspect=max(10, 8 * rows))
    more = f" (first 12 of {len(configurations)} configurations)" if len(configurations) > 12 else ""
    note = "; red box: client " + str(highlight) if highlight is not None else ""
    fig.suptitle(f"Final metric of every client on every task{more}{note}", fontsize=11)
    return save_figure(fig, path, dpi)


def run_rounds(run: Any) -> pd.DataFrame:
    """``run.rounds`` when the report read it with the run (:func:`fedmtl.report.read_run`), else
    the run folder's (:func:`read_rounds`)."""
    rounds = getattr(run, "rounds", None)
    return rounds if rounds is not None else read_rounds(run.path)


def fairness_by_round(run: Any, tasks: dict[str, str]) -> pd.DataFrame:
    """A run's across-client statistics per round: ``round, panel, stat, view, value`` (metric
    scaled; ``view``: a key of :data:`VIEWS`), from its ``rounds.csv``, else computed from its
    per-client curves."""
    rounds = run_rounds(run)
    panels = _fairness_panels(rounds, tasks)
    rows = []
    if panels:
        for panel, metric in panels.items():
            for stat, _ in FAIRNESS_STATS:
                scale = 1.0 if stat == "jain" else scale_of(metric)
                for view, (prefix, *_) in VIEWS.items():
                    column = f"{prefix}{panel}.{metric}.{stat}"
                    if _drawn(rounds, column, f"{panel}.{metric}.{stat}", view):
                        shown = rounds[["round", column]].dropna()
                        rows += [(int(r), panel, stat, view, float(v) * scale)
                                 for r, v in zip(shown["round"], shown[column], strict=True)]
    else:  # no rounds.csv: the same statistics of the recorded per-client metrics
        for view, curves in (("personal", run.curves), ("global", run.global_curves)):
            for (task, server_round), group in (curves.groupby(["task", "round"]) if not curves.empty else []):
                if task not in tasks:
                    continue
                stats = summarize(group["value"].to_numpy(), None, higher_is_better(tasks[task]))
                rows += [(int(server_round), task, stat, view,
                          stats[stat] * (1.0 if stat == "jain" else scale_of(tasks[task])))
                         for stat, _ in FAIRNESS_STATS]
    return pd.DataFrame(rows, columns=["round", "panel", "stat", "view", "value"])


def plot_fairness_rounds(configurations: Sequence[Any], path: Path, dpi: int = DEFAULT_DPI,
                         highlight: int | None = None) -> Path:
    """Per task (and overall): worst-10% mean, Jain's index and best-worst gap per round, one
    line per configuration (mean over seeds; the global model's dashed)."""
    tasks = task_metrics(configurations)
    frames = [fairness_by_round(r, tasks).assign(configuration=k, seed=r.seed)
              for k, c in enumerate(configurations) for r in c.runs]
    table = pd.concat(frames) if frames else pd.DataFrame(columns=["panel"])
    panels = [p for p in [*tasks, OVERALL] if p in set(table["panel"])] or list(tasks)
    metric_of = dict(tasks)
    if OVERALL in panels:
        overall = [r.summary.get(OVERALL, {}).get("metric") for c in configurations for r in c.runs]
        metric_of[OVERALL] = next((m for m in overall if m), next(iter(tasks.values())))
    shared = _shared_metric([metric_of[p] for p in panels])
    fig = Figure(figsize=(4.6 * len(panels), 2.6 * len(FAIRNESS_STATS) + 0.6))
    axes = fig.subplots(len(FAIRNESS_STATS), len(panels), squeeze=False, sharex=True,
                        sharey="row" if shared else False)
    colours = _colours(len(configurations))
    for col, panel in enumerate(panels):
        for row, (stat, label) in enumerate(FAIRNESS_STATS):
            ax = axes[row][col]
            rows = table[(table["panel"] == panel) & (table["stat"] == stat)] if len(table) else table
            for (k, view), group in (rows.groupby(["configuration", "view"]) if len(rows) else []):
                mean = group.groupby("round")["value"].mean()
                ax.plot(mean.index, mean.to_numpy(), color=colours[k], ls=VIEWS[view][1], marker=VIEWS[view][2],
                        ms=3)
            if row == 0:
                ax.set_title(_title(panel))
            if row == len(FAIRNESS_STATS) - 1:
                ax.set_xlabel("server round")
            integer_ticks(ax.xaxis)
            ax.set_ylabel(label if stat == "jain" else f"{label}\n{unit_of(metric_of[panel])}")
            ax.yaxis.set_tick_params(labelleft=True)
            ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colours[k], marker="o", ms=3) for k in range(len(configurations))]
    labels = [_wrap(c.label) for c in configurations]
    _small_legend(axes[0][0], *_views_legend(set(table["view"]) if len(table) else set()))
    fig.suptitle("Fairness across clients over rounds (mean over seeds)")
    return _save_with_legend(fig, path, dpi, handles, labels)


def group_gaps_by_round(run: Any) -> pd.DataFrame:
    """A run's group gaps per round from its ``rounds.csv``: ``round, task, gap, attribute, stat,
    value`` (the personal model's; empty when none was recorded)."""
    rounds = run_rounds(run)
    columns = group_columns(rounds)
    columns = columns[columns["view"] == "personal"]
    rows = []
    for entry in columns.itertuples():
        shown = rounds[["round", entry.column]].dropna()
        rows += [(int(r), entry.task, entry.gap, entry.attribute, entry.stat, float(v))
                 for r, v in zip(shown["round"], shown[entry.column], strict=True)]
    return pd.DataFrame(rows, columns=["round", "task", "gap", "attribute", "stat", "value"])


def plot_group_fairness(configurations: Sequence[Any], path: Path, dpi: int = DEFAULT_DPI,
                        highlight: int | None = None) -> Path | None:
    """Each group gap (demographic parity, equalized odds, accuracy) over rounds, one line per
    configuration: pooled over the clients' examples (solid) and the mean client's (dashed);
    ``None`` (nothing written) when no run recorded group gaps."""
    frames = [group_gaps_by_round(r).assign(configuration=k) for k, c in enumerate(configurations) for r in c.runs]
    table = pd.concat(frames) if frames else pd.DataFrame()
    if table.empty:
        return None
    order = {g: i for i, g in enumerate(GAP_NAMES)}
    keys = sorted(set(zip(table["task"], table["gap"], table["attribute"], strict=True)),
                  key=lambda k: (k[0], order[k[1]], k[2]))
    rows = math.ceil(len(keys) / 3)
    fig, axes = _panels(len(keys), 4.6, 3.6, sharey=True, rows=rows)
    colours = _colours(len(configurations))
    for ax, (task, gap, attribute) in zip(axes, keys, strict=True):
        shown = table[(table["task"] == task) & (table["gap"] == gap) & (table["attribute"] == attribute)]
        for (k, stat), group in shown.groupby(["configuration", "stat"]):
            if stat == "worst":
                continue
            mean = group.groupby("round")["value"].mean()
            ax.plot(mean.index, mean.to_numpy(), color=colours[k], ls="-" if stat == "pooled" else "--",
                    marker="o", ms=3)
        ax.set_title(f"task '{task}': {GAP_NAMES[gap]}\nbetween '{attribute}' groups", fontsize=10)
        ax.set_xlabel("server round")
        integer_ticks(ax.xaxis)
        ax.set_ylabel("gap (0 = equal groups)")
        ax.yaxis.set_tick_params(labelleft=True)
        ax.grid(alpha=0.3)
    _small_legend(axes[0], [Line2D([], [], color="0.3", ls=s) for s in ("-", "--")],
                  ["pooled over clients' examples", "mean over clients"])
    handles = [Line2D([], [], color=colours[k], marker="o", ms=3) for k in range(len(configurations))]
    fig.suptitle("Group fairness over rounds (mean over seeds; lower is fairer)")
    return _save_with_legend(fig, path, dpi, handles, [_wrap(c.label) for c in configurations])


ReportFigure = Callable[..., "Path | None"]
REPORT_FIGURES: dict[str, ReportFigure] = {
    "client_cdf": plot_client_cdf,
    "fairness_accuracy": plot_fairness_plane,
    "round_curves": plot_round_curves,
    "client_task_heatmap": plot_client_task_heatmap,
    "fairness_rounds": plot_fairness_rounds,
}
"""The figures every report has (``<name>.<format>``)."""
OPTIONAL_REPORT_FIGURES: dict[str, ReportFigure] = {"group_fairness": plot_group_fairness}
"""The figures a report has when its runs recorded what they show."""


def report_figure_files(fmt: str | None = None) -> list[str]:
    """The file names a report's figures may take (in ``fmt``, or in every format)."""
    names = [*REPORT_FIGURES, *OPTIONAL_REPORT_FIGURES]
    return [f"{n}.{f}" for n in names for f in ([fmt] if fmt else FORMATS)]


def report_figures(configurations: Sequence[Any], out: str | Path, fmt: str = "png", dpi: int = DEFAULT_DPI,
                   highlight: int | None = None) -> list[Path]:
    """Write a report's figures to ``out``; return the paths written.

    Raises
    ------
    ValueError
        A bad format or dpi, or ``highlight`` naming no client evaluated in any run.
    """
    check_format(fmt, dpi)
    _check_highlight(highlight, set(report_clients(configurations)), "the report's runs")
    out = Path(out)
    written = [fn(configurations, out / f"{name}.{fmt}", dpi=dpi, highlight=highlight)
               for name, fn in {**REPORT_FIGURES, **OPTIONAL_REPORT_FIGURES}.items()]
    return [p for p in written if p is not None]
