"""Live terminal display: the run's header, a progress bar over rounds with its ETA, one line
per evaluated round (printed above the bar), each distinct client error once, and a final
per-task table.

On a terminal the bar is a :mod:`rich.progress` bar, redrawn every round; when the output is
not a terminal (redirected to a file, piped) there is no bar and no colour codes: every round
prints one plain line instead, with the ETA. ``NO_COLOR`` (any value) turns colours off on a
terminal too (Rich reads it).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from fedmtl.atomic import write_bytes
from fedmtl.one_line import counted, one_line
from fedmtl.results import OVERALL, RoundStats

if TYPE_CHECKING:
    from fedmtl.config import ExperimentConfig

CLIENT_ERRORS = "client-errors.log"
"""The file of a run folder holding every client error: each failed reply (round, stage,
client, the client's message) and, for a run of ``fedmtl run``, the engine's traceback of it."""


def make_console(file: Any = None) -> Console:
    """The display's console: ``file`` (default stdout); no colour codes and 120 columns when it
    is not a terminal; no colours when ``NO_COLOR`` is set."""
    console = Console(highlight=False, file=file)
    if not console.is_terminal:
        console = Console(highlight=False, file=file, width=120, no_color=True)
    return console


def natural_width(console: Console, table: Table) -> tuple[int, int]:
    """The fewest columns ``table`` takes without cutting a word of a cell, and the most it
    takes with no line of a cell wrapped, whatever ``console``'s width."""
    from rich.measure import Measurement

    measured = Measurement.get(console, console.options.update(max_width=1_000_000), table)
    return measured.minimum, measured.maximum


def print_table(console: Console, title: str, columns: tuple[str, ...], rows: list[list[str]],
                left: tuple[str, ...] = ()) -> None:
    """Print ``rows`` under ``columns`` as a table when it fits ``console``'s width without
    cutting a cell; otherwise (a narrow terminal, where the table would show ``0.…`` for a
    number) as one line per row, ``first second: column value, ...``, wrapped by the terminal.
    Columns in ``left`` are left-aligned, the others right-aligned."""
    table = Table(title=Text(title))
    for column in columns:
        table.add_column(Text(column), justify="left" if column in left else "right")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))  # cells as text, never read as markup
    if natural_width(console, table)[0] <= console.width:
        console.print(table)
        return
    console.print(title, soft_wrap=True, markup=False)
    keys = len(left) or 1
    for row in rows:
        named = ", ".join(f"{column} {value.strip()}" for column, value in zip(columns[keys:], row[keys:], strict=True))
        console.print(f"{' '.join(row[:keys])}: {named}", soft_wrap=True, markup=False)


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 5 s``, ``1 h 02 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def sweep_eta(done: int, total: int, durations: list[float]) -> str:
    """The ETA of a sweep with ``done`` of ``total`` runs done, from the finished runs' mean
    duration: ``ETA after the first run`` while none has finished, ``""`` when none is left."""
    if done >= total:
        return ""
    if not durations:
        return "ETA after the first run"
    return f"about {format_duration((total - done) * sum(durations) / len(durations))} left"


def header_lines(cfg: ExperimentConfig, run_dir: Path, config: str | Path | None) -> list[str]:
    """What a run is and where it goes: its config file (or ``defaults``), its run folder, the
    engine (in this process, local Ray or a cluster's address, CPUs, CPUs and GPUs per client), the clients
    (registered, sampled per round), the rounds, the aggregation rule and the personalization."""
    server, engine = cfg.server, cfg.engine
    lines = [f"config    {config if config is not None else 'defaults (no config file)'}",
             f"run       {run_dir}"]
    if cfg.run.mode == "centralized":
        lines.append(f"mode      centralized baseline: {cfg.data.num_clients} clients' training data pooled, "
                     f"{cfg.run.rounds} rounds of {cfg.client.epochs} epoch(s)")
        return lines
    if engine.backend == "inprocess":
        at_once = min(engine.clients_at_once(), cfg.data.num_clients)  # never more than there are
        where = f"in this process, {at_once} client{'s' if at_once > 1 else ''} at a time"
    elif engine.address:
        where = f"Ray cluster at {engine.address}"
    else:
        cpus = engine.cpus()
        where = f"local Ray, {cpus} CPUs" if cpus else "local Ray, all CPUs"
    cpu_word = "CPU" if engine.client_num_cpus == 1 else "CPUs"
    per_client = f"{engine.client_num_cpus} {cpu_word}" + (f", {engine.client_num_gpus:g} GPU" if engine.client_num_gpus
                                                          else "")
    n = cfg.data.num_clients
    sampled = min(n, max(server.min_train_clients, math.ceil(server.fraction_train * n)))  # as the server samples
    evaluate = "" if cfg.run.evaluate_every == 1 else f", evaluated every {cfg.run.evaluate_every}"
    rule = _named(server.weighting, server.params)
    if server.plan != "clients":
        rule = f"{server.plan}: {rule} / {_named(server.task_weighting, server.task_params)}"
    lines += [f"engine    {where}; {per_client} per client",
              f"clients   {n} registered, {sampled} sampled per round ({server.sampling})",
              f"rounds    {cfg.run.rounds}{evaluate}; rule {rule}; client tasks "
              f"{_named(cfg.client.weighting, cfg.client.params)}; personalization "
              f"{_named(cfg.personalization.method, cfg.personalization.params)}"]
    return lines


def _named(name: str, params: dict | None) -> str:
    """A rule or method with the parameters the config sets: ``fairgrad (alpha=2)``."""
    if not params:
        return name
    shown = (f"{key}={value if isinstance(value, str) else json.dumps(value)}" for key, value in params.items())
    return f"{name} (" + ", ".join(shown) + ")"


class ClientErrors:
    """A run's client errors: every one appended to ``path`` as it is reported; on the console,
    once a round's stage is over (:meth:`flush`: all its attempts, retries included), each
    distinct error (:meth:`kind`) new to the run once, with how many clients had it in that
    stage; the later ones counted (:meth:`summary`).

    Parameters
    ----------
    path : Path
        The log file (:data:`CLIENT_ERRORS` of the run folder).
    show : callable
        Prints one console line.
    """

    def __init__(self, path: Path, show: Callable[[str], None]) -> None:
        self.path = path
        self.show = show
        self.counts: dict[str, int] = {}
        """How many times each distinct error (:meth:`kind`) happened, in order of first appearance."""
        self.examples: dict[str, str] = {}
        """The first message of each distinct error."""
        self.shown: set[str] = set()
        """The distinct errors already on the console (or in the log a resumed run keeps)."""
        self.pending: dict[tuple[int, str], list[tuple[int | None, str]]] = {}
        """The errors of each ``(round, stage)`` reported since the last :meth:`flush`."""

    @staticmethod
    def kind(reason: str) -> str:
        """What makes errors the same: their message with every number as ``#`` (``client 3
        dropped out`` and ``client 7 dropped out`` are one error)."""
        return re.sub(r"\d+", "#", " ".join(reason.split()))

    def report(self, server_round: int, stage: str, errors: list[tuple[int | None, str]]) -> None:
        """Record one exchange's errors, ``(client or None, message)`` each: in the log now, on
        the console at the next :meth:`flush`."""
        if not errors:
            return
        with contextlib.suppress(OSError), self.path.open("a", encoding="utf-8") as log:
            for client, reason in errors:
                who = f"client {client}" if client is not None else "a client"
                log.write(f"round {server_round} {stage}: {who}: {one_line(reason, None)}\n")  # one line each
        for _, reason in errors:
            kind = self.kind(reason)
            self.counts[kind] = self.counts.get(kind, 0) + 1
            self.examples.setdefault(kind, reason)
        self.pending.setdefault((server_round, stage), []).extend(errors)

    def flush(self) -> None:
        """Show the errors reported since the last call: per round and stage, each distinct
        error not shown before, once, with the clients that had it there."""
        pending, self.pending = self.pending, {}
        for (server_round, stage), errors in pending.items():
            grouped: dict[str, tuple[str, list[int | None]]] = {}
            for client, reason in errors:
                grouped.setdefault(self.kind(reason), (reason, []))[1].append(client)
            for kind, (reason, clients) in grouped.items():
                if kind in self.shown:
                    continue
                self.shown.add(kind)
                who = _who_failed(clients)
                text = " ".join(reason.split()) or "no message"
                self.show(f"round {server_round} {stage}: {who}: {text} (all client errors: {self.path})")

    def resume_after(self, done: int) -> None:
        """A resumed run redoes the rounds after ``done``: cut the log after round ``done``'s
        last entry (the engine's lines before a round's entries are that round's) and count the
        errors it keeps, so that the run's summary counts each error once."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return
        kept, entries = _entries_up_to(text, done)
        with contextlib.suppress(OSError):
            write_bytes(self.path, kept.encode("utf-8"))
        for reason in entries:
            kind = self.kind(reason)
            self.counts[kind] = self.counts.get(kind, 0) + 1
            self.examples.setdefault(kind, reason)
            self.shown.add(kind)

    def summary(self) -> str | None:
        """One line on the run's client errors (``None`` when there were none)."""
        if not self.counts:
            return None
        total, distinct = sum(self.counts.values()), len(self.counts)
        repeats = "; ".join(f"{n}× {_example(self.examples[k], n)}" for k, n in self.counts.items())
        return (f"client errors: {total} in all, {distinct} distinct ({repeats}); details and tracebacks: "
                f"{self.path}")


def _example(reason: str, times: int) -> str:
    """The first message of an error seen ``times`` times: ``e.g.`` before it when its numbers
    (the client's id, a value) may differ in the others (:meth:`ClientErrors.kind`)."""
    text = one_line(reason, 80)
    return f"e.g. {text}" if times > 1 and re.search(r"\d", reason) else text


def _who_failed(clients: list[int | None]) -> str:
    """``2 clients failed (0, 3)``; a client that failed in several attempts of the stage is
    named once, with the failures counted: ``2 failures of 1 client (0)``."""
    ids = sorted({c for c in clients if c is not None})
    named = f" ({', '.join(map(str, ids))})" if ids else ""
    unknown = sum(c is None for c in clients)
    if len(ids) + unknown == len(clients):
        return (f"{len(clients)} clients failed" if len(clients) > 1 else "a client failed") + named
    return f"{len(clients)} failures of {counted(len(ids) + unknown, 'client')}{named}"


_ENTRY = re.compile(r"^(?:round (\d+) [^:\n]+: (?:client \d+|a client): |engine \()", re.MULTILINE)


def _entries_up_to(text: str, done: int) -> tuple[str, list[str]]:
    """``client-errors.log``'s text up to the end of the last entry of a round ≤ ``done``, and
    the reasons of the round entries kept (an entry runs from its ``round R stage: client C:``
    or ``engine (`` line to the next; an engine entry belongs to the round entry after it)."""
    starts = list(_ENTRY.finditer(text))
    end, reasons = 0, []
    for i, start in enumerate(starts):
        if start.group(1) is None:
            continue
        if int(start.group(1)) > done:
            break
        stop = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        end = stop
        reasons.append(text[start.end():stop].rstrip("\n"))
    return text[:end], reasons


def _usable(counts: dict[str, Any]) -> int:
    """The round's usable training replies: those that passed every check (``replies - rejected``
    of its ``rounds.csv`` row); all of them were aggregated unless the round was skipped."""
    if "replies" not in counts:
        return int(counts.get("aggregated", 0))
    return int(counts["replies"]) - int(counts.get("rejected", 0))


def _fmt(metric: str, value: float) -> str:
    return f"{100 * value:5.1f}%" if metric == "accuracy" else f"{value:.4g}"


class Progress:
    """Prints the header, the progress bar and round lines, client errors and the final table.

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
    console : rich.console.Console, optional
        Where to print (default :func:`make_console`: stdout).
    """

    def __init__(self, total_rounds: int, enabled: bool = True, *,
                 title: str = "Personalized test metrics across clients", replies: bool = True,
                 console: Console | None = None) -> None:
        self.total = total_rounds
        self.console = console if console is not None else make_console()
        self.enabled = enabled
        self.title = title
        self.replies = replies
        self._bar: Any = None
        self._task: Any = None
        self._began: tuple[float, int] | None = None
        """When the rounds began in this process (monotonic time) and the rounds done before."""

    def header(self, lines: list[str]) -> None:
        """The run's header (:func:`header_lines`), one line each."""
        if not self.enabled:
            return
        for line in lines:
            self.console.print(Text(line), soft_wrap=True)

    def notice(self, line: str) -> None:
        """One line above the bar (printed as written); on stderr when the display is off."""
        if self.enabled:
            self.console.print(Text(line), soft_wrap=True)
        else:
            print(line, file=sys.stderr, flush=True)

    def eta(self, done: int) -> float | None:
        """Seconds left once ``done`` rounds are done, from this process's mean round time
        (``None`` before the first round)."""
        if self._began is None or done <= self._began[1]:
            return None
        started, before = self._began
        return (time.monotonic() - started) / (done - before) * (self.total - done)

    @contextlib.contextmanager
    def rounds(self, done: int = 0) -> Iterator[None]:
        """The block that runs the rounds after ``done``: a progress bar over them on a terminal
        (removed when the block ends); call :meth:`advance` after each round."""
        self._began = (time.monotonic(), done)
        if not (self.enabled and self.console.is_terminal):
            yield
            return
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.progress import Progress as Bar

        self._bar = Bar(TextColumn("round"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(),
                        TextColumn("ETA"), TimeRemainingColumn(), console=self.console, transient=True)
        self._task = self._bar.add_task("rounds", total=self.total, completed=done)
        try:
            with self._bar:
                yield
        finally:
            self._bar = self._task = None

    def advance(self, server_round: int, elapsed: float, counts: dict[str, Any], evaluated: bool) -> None:
        """Round ``server_round`` is done: move the bar; without a bar, a round that printed no
        evaluation line prints a short one (replies, elapsed time, ETA)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=server_round)
            return
        if evaluated:
            return
        parts = [f"round {server_round:>{len(str(self.total))}}/{self.total}"]
        if self.replies:
            parts.append(f"replies {_usable(counts)}" + (
                f" ({', '.join(self._notes(counts))})" if self._notes(counts) else ""))
        parts.append(f"{elapsed:6.1f} s")
        eta = self.eta(server_round)
        if eta is not None and server_round < self.total:
            parts.append(f"ETA {format_duration(eta)}")
        self.console.print(Text("  |  ".join(parts)), soft_wrap=True)

    @staticmethod
    def _notes(counts: dict[str, Any]) -> list[str]:
        notes = [f"{counts[key]} {word}" for key, word in
                 (("failures", "failed"), ("rejected", "rejected"), ("retries", "retries")) if counts.get(key)]
        if counts.get("skipped"):
            notes.append("round skipped")
        return notes

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
        notes = self._notes(counts)
        if stats.never_trained:
            parts.append(f"{stats.never_trained} evaluated never trained")
        if self.replies:
            parts.append(f"replies {_usable(counts)}"
                         + (f" ([red]{', '.join(notes)}[/red])" if notes else ""))
        parts.append(f"{elapsed:6.1f} s")
        eta = self.eta(stats.round) if self._bar is None else None
        if eta is not None and stats.round < self.total:
            parts.append(f"ETA {format_duration(eta)}")
        self.console.print("  |  ".join(parts), soft_wrap=True)

    def final_table(self, stats: RoundStats | None) -> None:
        """Per-task statistics across clients at the last evaluation round."""
        if not self.enabled or stats is None:
            return
        title = f"{self.title} (round {stats.round})"
        columns = ("task", "metric", "mean", "weighted mean", "std", "worst", "worst 10%", "best", "Jain")
        rows = dict(stats.stats)
        if stats.overall:
            rows[OVERALL] = stats.overall
        cells = []
        for task, v in rows.items():
            m = stats.metric[task]
            std = f"{100 * v['std']:.1f} pp" if m == "accuracy" else f"{v['std']:.4g}"
            cells.append([task, m, _fmt(m, v["mean"]), _fmt(m, v["wmean"]), std, _fmt(m, v["worst"]),
                          _fmt(m, v["worst10"]), _fmt(m, v["best"]), f"{v['jain']:.4f}"])
        print_table(self.console, title, columns, cells, left=("task", "metric"))
        for task, note in stats.predictions.items():  # its accuracy and gaps say nothing of fairness
            self.console.print(f"note: {task}: {note}", soft_wrap=True, markup=False)
        if stats.global_view is not None:
            self.console.print(self.global_view_line(stats.global_view), soft_wrap=True, markup=False)
        if stats.never_trained:
            self.console.print(self.never_trained_line(stats), soft_wrap=True, markup=False)
        if stats.round < self.total:  # the last round is always evaluated: none of its replies was usable
            self.console.print(f"note: no evaluation after round {stats.round} of {self.total} was accepted (see "
                               f"the warnings above): the table and summary.json's final results are round "
                               f"{stats.round}'s, not the final model's", soft_wrap=True, markup=False)

    @staticmethod
    def global_view_line(view: RoundStats) -> str:
        """The global model's mean and worst client per task (split ``test-global``), for a method
        with a global and a personal model (the table above is the personal model's)."""
        panels = dict(view.stats)
        if view.overall:
            panels[OVERALL] = view.overall
        def shown(task: str, stat: str) -> str:
            return _fmt(view.metric[task], panels[task][stat]).strip()

        parts = [f"{task} mean {shown(task, 'mean')} worst {shown(task, 'worst')} worst 10% {shown(task, 'worst10')}"
                 for task in panels]
        return "global model (the same clients' test data, test-global): " + ", ".join(parts)

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



class SweepDisplay:
    """``fedmtl sweep``'s display: its lines and, on a terminal, a bar over the runs with the ETA
    of :func:`fedmtl.progress.sweep_eta` (removed by :meth:`close`). Pass :meth:`report` and
    :meth:`progress` to :func:`fedmtl.launch.sweep.run_sweep`.

    Parameters
    ----------
    bar : bool
        Draw the bar (on a terminal only); ``False`` when each run draws its own.
    console : rich.console.Console, optional
        Where to print (default :func:`make_console`: stdout).
    """

    def __init__(self, bar: bool = True, console: Console | None = None) -> None:
        self.console = console if console is not None else make_console()
        self.draw = bar and self.console.is_terminal
        self._bar: Any = None
        self._task: Any = None

    def report(self, line: str) -> None:
        """One line (above the bar)."""
        self.console.print(Text(line), soft_wrap=True)

    def progress(self, done: int, total: int, eta: str) -> None:
        """``done`` of ``total`` runs done; ``eta`` as :func:`sweep_eta` says it."""
        if not self.draw:
            return
        if self._bar is None:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as Bar

            self._bar = Bar(TextColumn("runs"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(),
                            TextColumn("{task.fields[eta]}"), console=self.console, transient=True)
            self._task = self._bar.add_task("runs", total=total, eta=eta)
            self._bar.start()
        self._bar.update(self._task, completed=done, eta=eta)

    def close(self) -> None:
        """Remove the bar."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
