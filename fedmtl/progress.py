"""Live terminal display: one line per evaluated round and a final per-task table."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from fedmtl.results import OVERALL, RoundStats


def _fmt(metric: str, value: float) -> str:
    return f"{100 * value:5.1f}%" if metric == "accuracy" else f"{value:.4g}"


class Progress:
    """Prints round lines and the final table.

    Parameters
    ----------
    total_rounds : int
        Number of rounds, for ``round r/R``.
    enabled : bool
        ``False`` silences it (tests).
    title : str
        What the final table measures (its title, before the round).
    replies : bool
        Whether each round line counts the server's accepted replies (``False`` for the
        centralized baseline, which has no clients replying).
    """

    def __init__(self, total_rounds: int, enabled: bool = True, *,
                 title: str = "Personalized test metrics across clients", replies: bool = True) -> None:
        self.total = total_rounds
        self.console = Console(highlight=False, width=None if Console().is_terminal else 120)
        self.enabled = enabled
        self.title = title
        self.replies = replies

    def round(self, stats: RoundStats, elapsed: float, counts: dict[str, Any]) -> None:
        """One line: round, per task mean and worst client, replies (failed, rejected,
        skipped), elapsed time; ``counts`` is the round's ``rounds.csv`` row."""
        if not self.enabled:
            return
        parts = [f"[bold]round {stats.round:>{len(str(self.total))}}/{self.total}[/bold]"]
        for task, values in stats.stats.items():
            metric = stats.metric[task]
            parts.append(
                f"{task}: mean {_fmt(metric, values['mean'])} worst {_fmt(metric, values['worst'])}"
            )
        notes = [f"{counts[key]} {word}" for key, word in
                 (("failures", "failed"), ("rejected", "rejected"), ("retries", "retries")) if counts.get(key)]
        if counts.get("skipped"):
            notes.append("round skipped")

        if stats.never_trained:
            parts.append(f"{stats.never_trained} evaluated never trained")
        if self.replies:
            parts.append(f"replies {counts.get('aggregated', 0)}"
                         + (f" ([red]{', '.join(notes)}[/red])" if notes else ""))
        parts.append(f"{elapsed:6.1f} s")
        self.console.print("  |  ".join(parts))

    def final_table(self, stats: RoundStats | None) -> None:
        """Per-task statistics across clients at the last evaluation round."""
        if not self.enabled or stats is None:
            return
        table = Table(title=f"{self.title} (round {stats.round})")
        for column in ("task", "metric", "mean", "weighted mean", "std", "worst", "worst 10%", "best", "Jain"):
            table.add_column(column, justify="right" if column not in ("task", "metric") else "left")
        rows = dict(stats.stats)
        if stats.overall:
            rows[OVERALL] = stats.overall
        for task, v in rows.items():
            m = stats.metric[task]
            std = f"{100 * v['std']:.1f} pp" if m == "accuracy" else f"{v['std']:.4g}"
            table.add_row(
                task, m, _fmt(m, v["mean"]), _fmt(m, v["wmean"]), std, _fmt(m, v["worst"]),
                _fmt(m, v["worst10"]), _fmt(m, v["best"]), f"{v['jain']:.4f}",
            )
        self.console.print(table)
        if stats.never_trained:
            self.console.print(self.never_trained_line(stats))

    @staticmethod
    def never_trained_line(stats: RoundStats) -> str:
        """How many evaluated clients never trained, and each task's mean and worst client over
        the clients that did."""
        never = stats.never_trained or 0
        evaluated = stats.evaluated if stats.evaluated is not None else never
        len_trained = evaluated - never
        line = f"{never} of {evaluated} evaluated clients never trained"
        if stats.trained_view is None:
            return line + " (none trained)"
        view = stats.trained_view
        parts = [f"{task} mean {_fmt(view.metric[task], v['mean'])} worst {_fmt(view.metric[task], v['worst'])}"
                 for task, v in view.stats.items()]
        return line + f"; over the {len_trained} that trained: " + ", ".join(parts)

