"""A run folder's tables as a resume finds them: whole, and in agreement with the checkpoint.

A resume keeps the rows of rounds up to its checkpoint's round and appends the rounds it runs
(:meth:`fedmtl.results.RunRecorder._truncate`). It can only be exact when those rows are all
there: :func:`table_problems` says what is not, in one line per table, before anything is
written. It finds

- a table that is missing (``metrics.csv`` or, after round 1, ``rounds.csv``) or that does not
  parse (a line with more or fewer fields than the header, bytes that are not text);
- a last line cut short (a write that a crash or a full disk stopped) of a round the
  checkpoint holds (a cut line of a later round is dropped with that round, and so is one cut
  inside its round number, ``1`` of ``12,...``: the row counts below tell whether a row of
  the checkpoint's rounds was lost);
- a header other than the one fedmtl writes (``metrics.csv``, ``placement.csv``: the resumed
  rounds' rows would land in the wrong columns), ``rounds.csv`` without ``round`` or
  ``elapsed_s``, and a ``placement.csv`` row whose round is not a whole number;
- ``rounds.csv`` without exactly one row for each round up to the checkpoint's;
- a round that ``rounds.csv`` says aggregated updates or evaluated clients, whose training or
  test rows ``metrics.csv`` lacks;
- ``metrics.csv`` with more or fewer rows of those rounds than the checkpoint counted when it
  was written (``metrics-rows``): a table cut at a line end, or edited, loses no line
  half-way;
- ``metrics.csv`` or ``rounds.csv`` whose rows of those rounds are not those the checkpoint's
  digests were made of (``metrics-digest``, ``rounds-digest``): a value edited, or a row
  replaced by another, keeps the count.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pandas as pd

from fedmtl.one_line import one_line

METRIC_COLUMNS = ("round", "client", "task", "split", "metric", "value")
"""The columns of ``metrics.csv``."""

PLACEMENT_COLUMNS = ["round", "client", "stage", "host", "node", "device"]
"""The columns of ``placement.csv``."""

HEADERS = {"metrics.csv": list(METRIC_COLUMNS), "placement.csv": PLACEMENT_COLUMNS}
"""The tables a resume appends rows to as they are written (no header read): their exact header."""


CUT_IN_ROUND = 2**62
""":func:`_cut_line_round` of a line cut inside its round number: a round after any checkpoint's
as far as the line can say (the counts of the rows that stay say whether one was lost)."""


def _cut_line_round(data: bytes) -> int | None:
    """The round of ``data``'s last line when it lacks its line end (``None``: the line is
    whole); :data:`CUT_IN_ROUND` when the cut falls inside the round number (no field ends on
    the line: ``1`` may be the start of ``12``); ``-1`` when its round cannot be read."""
    if not data or data.endswith(b"\n"):
        return None
    last = data.rsplit(b"\n", 1)[-1]
    if b"," not in last:
        return CUT_IN_ROUND
    try:
        return int(last.split(b",", 1)[0])
    except ValueError:
        return -1


def _read(path: Path, done: int) -> tuple[pd.DataFrame | None, str]:
    """The table at ``path`` without a cut last line of a round after ``done``, or why it
    cannot be used."""
    if not path.is_file():
        return None, f"{path.name} is missing"
    data = path.read_bytes()
    cut = _cut_line_round(data)
    if cut is not None and not cut > done:
        where = f"of round {cut}" if cut >= 0 else "whose round cannot be read"
        return None, f"{path.name}: its last line ({where}) is cut short: a write was stopped part-way"
    if cut is not None:
        data = data.rsplit(b"\n", 1)[0] + b"\n"
    try:
        table = pd.read_csv(io.BytesIO(data), dtype={"task": str, "split": str, "metric": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        return None, f"{path.name} does not parse: {one_line(exc)}"
    if "round" not in table.columns or (len(table) and not pd.api.types.is_integer_dtype(table["round"])):
        return None, f"{path.name} has no whole-number 'round' column"
    if (header := HEADERS.get(path.name)) is not None and list(table.columns) != header:
        return None, (f"{path.name}'s header is {','.join(map(str, table.columns))}, not the "
                      f"{','.join(header)} fedmtl writes: the resumed rounds' rows would not fit it")
    return (table[table["round"] <= done] if len(table) else table), ""


def rows_up_to(table: bytes, last_round: int) -> bytes:
    """The header and the rows of round ≤ ``last_round`` of a CSV table whose first column is
    the round, byte for byte as they were written (a resumed run's ``metrics.csv`` then equals
    an uninterrupted run's)."""
    lines = table.splitlines(keepends=True)
    if len(lines) > 1 and not lines[-1].endswith(b"\n"):  # cut short: a row of a round the resume redoes
        lines = lines[:-1]
    kept = [line for line in lines[1:] if line.strip() and int(line.split(b",", 1)[0]) <= last_round]
    return b"".join(lines[:1] + kept)


def rounds_digest(data: bytes, done: int) -> str:
    """The BLAKE2b digest of the values of the rows of rounds ≤ ``done`` of ``rounds.csv``
    (``data``): each row's non-empty cells, numbers as the floats they read as. The file is
    written whole every round and a column may read ``1`` in one version and ``1.0`` in the next
    (a column of whole numbers until then), so its bytes are not compared: its numbers are."""
    if data and not data.endswith(b"\n"):  # cut short: a row of a round after ``done`` (table_problems)
        data = data.rsplit(b"\n", 1)[0] + b"\n"
    table = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    rows = []
    for row in table.to_dict("records"):
        if int(row["round"]) <= done:
            rows.append({key: _number_or_text(value) for key, value in row.items() if value != ""})
    return hashlib.blake2b(json.dumps(rows, sort_keys=True).encode()).hexdigest()


def _number_or_text(text: str) -> str:
    """A cell as :func:`rounds_digest` compares it: ``repr`` of its float, else its text."""
    try:
        return repr(float(text))
    except ValueError:
        return text


def table_problems(run_dir: str | Path, done: int, metric_rows: int | None = None,
                   digests: dict[str, str] | None = None) -> list[str]:
    """Why the tables of ``run_dir`` cannot be resumed after round ``done`` exactly (see the
    module docstring; ``[]``: they can). ``metric_rows``: the rows of ``metrics.csv`` up to
    round ``done`` that the checkpoint counted (``None``: a checkpoint of an older fedmtl);
    ``digests``: the digests it recorded of ``metrics.csv`` (its bytes up to round ``done``)
    and ``rounds.csv`` (:func:`rounds_digest`), which the tables must still have."""
    run_dir = Path(run_dir)
    metrics, problem = _read(run_dir / "metrics.csv", done)
    problems = [problem] if problem else []
    if (run_dir / "placement.csv").is_file() and (problem := _read(run_dir / "placement.csv", done)[1]):
        problems.append(problem)
    if done < 1:
        return problems
    rounds, problem = _read(run_dir / "rounds.csv", done)
    if problem:
        return [*problems, problem]
    assert rounds is not None
    if "elapsed_s" not in rounds.columns:
        return [*problems, "rounds.csv has no column 'elapsed_s'"]
    listed = sorted(int(r) for r in rounds["round"])
    if listed != list(range(1, done + 1)):
        absent = sorted(set(range(1, done + 1)) - set(listed))
        what = f"has no row of round {absent[0]}" if absent else "has a round twice"
        return [*problems, f"rounds.csv {what} (the checkpoint is of round {done})"]
    if metrics is None:
        return problems
    # a skipped round aggregated nothing (an older fedmtl wrote its usable replies as `aggregated`)
    skipped = rounds["skipped"].fillna(0) > 0 if "skipped" in rounds.columns else pd.Series(False, index=rounds.index)
    for column, split, what in (("aggregated", "train", "training"), ("evaluated", "test", "test")):
        if column not in rounds.columns:
            continue
        counted = rounds[column].where(~skipped, 0) if column == "aggregated" else rounds[column]
        expected = {int(r) for r, n in zip(rounds["round"], counted, strict=True) if n > 0}
        found = {int(r) for r in metrics.loc[metrics["split"] == split, "round"]}
        if lost := sorted(expected - found):
            problems.append(f"metrics.csv has no {what} rows of round {lost[0]}, which rounds.csv says "
                            f"{column} clients")
    return problems or _count_problem(metrics, done, metric_rows) or _digest_problems(run_dir, done, digests or {})


def _digest_problems(run_dir: Path, done: int, digests: dict[str, str]) -> list[str]:
    """The tables whose rows up to round ``done`` are not those the checkpoint's digests were
    made of (a value edited, a row swapped for another: the count alone does not tell)."""
    found = {}
    if "metrics.csv" in digests:
        try:
            kept = rows_up_to((run_dir / "metrics.csv").read_bytes(), done)
        except ValueError:  # a round written otherwise than fedmtl writes it ('"2"'): pandas read it as 2
            kept = b""
        found["metrics.csv"] = hashlib.blake2b(kept).hexdigest()
    if "rounds.csv" in digests:
        found["rounds.csv"] = rounds_digest((run_dir / "rounds.csv").read_bytes(), done)
    return [f"{name}'s rows of rounds 1-{done} are not those the checkpoint of round {done} recorded: they were "
            "edited since" for name, digest in found.items() if digest != digests[name]]


def _count_problem(metrics: pd.DataFrame, done: int, metric_rows: int | None) -> list[str]:
    """Rows of rounds up to ``done`` lost or added since the checkpoint counted them."""
    if not isinstance(metric_rows, int) or len(metrics) == metric_rows:
        return []
    how = "lost" if len(metrics) < metric_rows else "added"
    return [f"metrics.csv has {len(metrics)} rows of rounds 1-{done}, where the checkpoint of round {done} "
            f"counted {metric_rows}: rows were {how}"]
