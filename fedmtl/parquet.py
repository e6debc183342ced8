"""Parquet copies of a run folder's tables: ``metrics.parquet``, ``rounds.parquet``, ``participation.parquet``.

The CSV files stay the source of truth: they are appended round by round (a killed run keeps
its rows) and a resume truncates them. When a run finishes, each CSV table is read once
(:func:`read_csv_table`) and written next to it as Parquet, atomically, with the CSV's size in
the file's metadata. A reader (:func:`read_table`, used by :func:`fedmtl.results.load_run` and
:mod:`fedmtl.report`) takes the Parquet copy only when that size still matches the CSV's, so
both give the same DataFrame: the same columns, dtypes and values, bit for bit.

Column types (pandas dtypes):

- ``metrics``: ``round``, ``client`` int64; ``task``, ``split``, ``metric`` strings; ``value`` float64.
- ``rounds``: ``round`` int64; every other column as pandas reads the CSV (int64 where every
  row holds a whole number, float64 otherwise: statistics, and counts missing in some rounds).
- ``participation``: ``client``, ``rounds_trained``, ``rounds_aggregated`` int64, ``last_round``
  Int64 (missing for a client that never trained).

``run.parquet`` chooses: ``"auto"`` (the default) writes them when pyarrow is installed (it is,
with flwr-datasets), ``true`` requires pyarrow, ``false`` writes none.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedmtl.atomic import write_bytes

if TYPE_CHECKING:
    import pandas as pd

TABLES = ("metrics", "rounds", "participation")
"""The tables copied to Parquet (``<name>.csv`` -> ``<name>.parquet``)."""
SOURCE_BYTES = b"fedmtl.csv-bytes"
"""Parquet metadata key: the size of the CSV file the copy was made from."""
SOURCE_DIGEST = b"fedmtl.csv-blake2b"
"""Parquet metadata key: the BLAKE2b digest of the CSV file the copy was made from (an edit that
keeps the file's size, a digit for a digit, makes the copy stale too)."""


def _digest(path: Path) -> bytes:
    """The BLAKE2b digest of the file at ``path``, in hex."""
    digest = hashlib.blake2b()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest().encode()
_CSV_OPTIONS: dict[str, dict[str, Any]] = {
    "metrics": {"dtype": {"round": "int64", "client": "int64", "task": str, "split": str, "metric": str,
                          "value": "float64"}},
    "rounds": {"dtype": {"round": "int64"}},
    "participation": {"dtype": {"client": "int64", "rounds_trained": "int64", "last_round": "Int64",
                                "rounds_aggregated": "int64"}},
}


def parquet_available() -> bool:
    """Whether pyarrow can be imported (without importing it)."""
    return importlib.util.find_spec("pyarrow") is not None


def wants_parquet(setting: bool | str) -> bool:
    """Whether ``run.parquet = setting`` writes Parquet copies here (``"auto"``: when pyarrow is installed)."""
    return parquet_available() if setting == "auto" else bool(setting)


def parquet_error(setting: bool | str) -> str | None:
    """The one-line config error of ``run.parquet = true`` without pyarrow (``None``: fine)."""
    if setting is True and not parquet_available():
        return ("run.parquet = true: writing Parquet needs pyarrow, which is not installed: "
                "pip install pyarrow, or set run.parquet = \"auto\" or false")
    return None


def csv_path(run_dir: str | Path, name: str) -> Path:
    """``<run_dir>/<name>.csv``."""
    return Path(run_dir) / f"{name}.csv"


def parquet_path(run_dir: str | Path, name: str) -> Path:
    """``<run_dir>/<name>.parquet``."""
    return Path(run_dir) / f"{name}.parquet"


def read_csv_table(path: str | Path, name: str) -> pd.DataFrame:
    """Read table ``name`` (one of :data:`TABLES`) from its CSV file with its documented dtypes
    (pandas parses each float exactly as written: the value the run computed)."""
    import pandas as pd  # imported on use: every process that checks a config imports this module

    if name not in _CSV_OPTIONS:
        raise ValueError(f"unknown table '{name}'; tables: {', '.join(TABLES)}")
    check_whole_rows(Path(path))
    table = pd.read_csv(path, **_CSV_OPTIONS[name])
    if name == "rounds":
        check_numbers(table)
    return table


class CutShort(ValueError):
    """A table that ends in the middle of a row (:func:`check_whole_rows`)."""

    WHAT = "it ends in the middle of a row: the file was cut short"


def check_whole_rows(path: Path) -> None:
    """Refuse a CSV file that ends in the middle of a row: every row fedmtl writes ends with a
    line break, so a file cut short (a killed copy, a full disk, an edit) would otherwise read
    its last row with a shortened number (``0.1`` for ``0.174``) or empty cells.

    Raises
    ------
    CutShort
        When the file's last byte is not a line break.
    """
    with path.open("rb") as handle:
        size = handle.seek(0, io.SEEK_END)
        if size:
            handle.seek(size - 1)
            if handle.read(1) != b"\n":
                raise CutShort(f"{CutShort.WHAT} (a run killed while writing it: fedmtl run --resume cuts its "
                               "tables back to its checkpoint)")


def check_numbers(rounds: pd.DataFrame) -> None:
    """Refuse a ``rounds.csv`` table with text where fedmtl writes only numbers (every column:
    counts, seconds, losses and statistics), naming the column and the round.

    Raises
    ------
    ValueError
        Naming the first such cell.
    """
    import pandas as pd
    from pandas.api.types import is_numeric_dtype

    for column in rounds.columns:
        if not is_numeric_dtype(rounds[column]):
            values = rounds[column]
            bad = values[values.notna() & pd.to_numeric(values, errors="coerce").isna()].index
            where = f" in round {rounds.at[bad[0], 'round']}" if len(bad) and "round" in rounds else ""
            shown = f"{values[bad[0]]!r}" if len(bad) else "text"
            raise ValueError(f"column '{column}' holds {shown}{where} where numbers belong")


def write_parquet(run_dir: str | Path) -> list[Path]:
    """Write ``<table>.parquet`` next to each ``<table>.csv`` of ``run_dir`` (atomically); return
    the files written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    written = []
    for name in TABLES:
        source = csv_path(run_dir, name)
        if not source.is_file():
            parquet_path(run_dir, name).unlink(missing_ok=True)
            continue
        size = source.stat().st_size
        table = pa.Table.from_pandas(read_csv_table(source, name), preserve_index=False)
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), SOURCE_BYTES: str(size).encode(),
                                               SOURCE_DIGEST: _digest(source)})
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        target = parquet_path(run_dir, name)
        write_bytes(target, buffer.getvalue())
        written.append(target)
    return written


def remove_parquet(run_dir: str | Path) -> None:
    """Delete the Parquet copies (a resumed run rewrites its CSV files)."""
    for name in TABLES:
        parquet_path(run_dir, name).unlink(missing_ok=True)


def fresh_parquet(run_dir: str | Path, name: str) -> Path | None:
    """``<name>.parquet`` when it exists, pyarrow can read it and it was made from the CSV file as
    it is now (same size and digest); else ``None``."""
    path, source = parquet_path(run_dir, name), csv_path(run_dir, name)
    if not path.is_file() or not source.is_file() or not parquet_available():
        return None
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_schema(path).metadata or {}
    except Exception:  # noqa: BLE001 - an unreadable copy is ignored: the CSV is the source of truth
        return None
    if metadata.get(SOURCE_BYTES) != str(source.stat().st_size).encode():
        return None
    return path if metadata.get(SOURCE_DIGEST) == _digest(source) else None


def read_table(run_dir: str | Path, name: str) -> pd.DataFrame:
    """Table ``name`` of a run folder: its Parquet copy when fresh (:func:`fresh_parquet`),
    else its CSV file (:func:`read_csv_table`); the same DataFrame either way."""
    import pandas as pd  # imported on use: every process that checks a config imports this module

    path = fresh_parquet(run_dir, name)
    if path is not None:
        return pd.read_parquet(path)
    return read_csv_table(csv_path(run_dir, name), name)
