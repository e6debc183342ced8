"""Figures of a run folder (written to ``plots/``).

- ``accuracy.png``: per task, the personalized test metric vs round: the mean across
  clients, the 10th-90th percentile band and the min-max band; for a method with a global
  and a personal model, also the global model's mean and 10th-90th percentile band (split
  ``test-global``, dashed).
- ``final_distribution.png``: per task, the distribution of client test metrics at the last
  evaluation round (box plot and every client as a point); with a global view, one box for
  the personal and one for the global model per task.

Figures are :class:`matplotlib.figure.Figure` objects saved directly: importing or calling
this module neither imports ``matplotlib.pyplot`` nor changes matplotlib's backend or rcParams.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib import rcsetup
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fedmtl import seeds
from fedmtl.protocol import TEST_GLOBAL as GLOBAL_SPLIT

PREFERRED = ("accuracy", "mse", "mae", "loss")


def primary_metric(test: pd.DataFrame, task: str) -> str:
    """The metric shown for ``task``: accuracy if recorded, else MSE, MAE or loss."""
    recorded = set(test.loc[test["task"] == task, "metric"])
    return next(m for m in PREFERRED if m in recorded)


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


def _label(metric: str) -> tuple[str, float]:
    return ("accuracy (%)", 100.0) if metric == "accuracy" else (metric, 1.0)


def plot_run(run_dir: str | Path) -> list[Path]:
    """Draw every figure of ``run_dir``; return their paths."""
    run_dir = Path(run_dir)
    metrics = pd.read_csv(run_dir / "metrics.csv")
    test = metrics[(metrics["split"] == "test") & (metrics["task"] != "all")]
    view = metrics[(metrics["split"] == GLOBAL_SPLIT) & (metrics["task"] != "all")]
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    if test.empty:
        return []
    tasks = sorted(test["task"].unique())
    return [_curves(test, tasks, out / "accuracy.png", view),
            _final(test, tasks, out / "final_distribution.png", view)]


def _curves(test: pd.DataFrame, tasks: list[str], path: Path, view: pd.DataFrame | None = None) -> Path:
    both = view is not None and not view.empty
    fig = Figure(figsize=(5 * len(tasks), 3.8))
    axes = fig.subplots(1, len(tasks), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        metric = primary_metric(test, task)
        label, scale = _label(metric)
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
        ax.set_title(f"task '{task}': test {metric}, personal and global model" if both
                     else f"task '{task}': personalized test {metric}")
        ax.set_xlabel("server round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if both:  # five entries: below the panel, clear of the bands
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, fontsize=8, frameon=False)
        else:
            ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, **({"bbox_inches": "tight"} if both else {}))
    return path


def _final(test: pd.DataFrame, tasks: list[str], path: Path, view: pd.DataFrame | None = None) -> Path:
    last = test["round"].max()
    view = view[view["round"] == last] if view is not None else None
    both = view is not None and not view.empty
    fig = Figure(figsize=(1.8 + 1.8 * len(tasks) * (2 if both else 1), 3.8))
    ax = fig.subplots()
    data, labels = [], []
    for task in tasks:
        metric = primary_metric(test, task)
        label, scale = _label(metric)
        rows = test[(test["round"] == last) & (test["task"] == task) & (test["metric"] == metric)]
        data.append(rows["value"].to_numpy() * scale)
        labels.append(f"{task}\n({metric})" + ("\npersonal" if both else ""))
        if both:
            rows = view[(view["task"] == task) & (view["metric"] == metric)]
            data.append(rows["value"].to_numpy() * scale)
            labels.append(f"{task}\n({metric})\nglobal")
    with backend_left_unset():
        ax.boxplot(data, showfliers=False)
    rng = seeds.rng(0)
    for i, values in enumerate(data, start=1):
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(values)), values, s=12, alpha=0.7, color="C1")
    ax.set_xticks(range(1, len(labels) + 1), labels)
    ax.set_ylabel("client test metric (accuracy in %)")
    ax.set_title(f"Client distribution at round {last} ({len(data[0])} clients)")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
