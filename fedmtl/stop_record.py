"""Why a run stopped before its end, recorded in its folder: ``stopped.txt``.

The terminal that started a run says why it stopped, but a run folder is read later and
elsewhere: a deployment's ServerApp runs next to the SuperLink, far from the terminal that
submitted it, and a sweep prints many runs' lines. So a run that stops early writes
``stopped.txt`` into its folder: its first line is the reason in one line (the error, or the
signal that interrupted it), then when it stopped, the round of the newest checkpoint (what
``fedmtl run --resume`` continues after) and, for an error, its traceback.

A run that starts (or resumes) removes the file, so a folder holds it only while its run is
stopped; a finished run has none. A run killed outright (``kill -9``, a machine that lost power)
cannot write it: its folder then holds neither ``stopped.txt`` nor ``summary.json``.
"""

from __future__ import annotations

import contextlib
import traceback
from datetime import UTC, datetime
from pathlib import Path

from fedmtl.atomic import write_bytes
from fedmtl.one_line import one_line

STOPPED_FILE = "stopped.txt"
"""The file, in a run folder, that says why its run stopped before its end."""

_closed = False
"""Set by :func:`close`: this process is stopping, and says why itself."""


def close() -> None:
    """From now on only ``record_stop(..., last=True)`` writes: an interrupted process says
    why it stopped, not the errors its ServerApp's thread raises while the engine shuts down."""
    global _closed
    _closed = True


def record_stop(
    run_dir: str | Path, reason: str, checkpoint: int | None, error: BaseException | None = None, last: bool = False,
) -> None:
    """Write ``stopped.txt`` into ``run_dir``: ``reason`` in one line, the time (UTC), the
    round of its newest checkpoint (``checkpoint``; ``None``: none yet) and, with ``error``,
    its traceback. After :func:`close` only ``last=True`` writes.

    Writing it never raises: a run stopped by a full disk or a read-only folder keeps the error
    that stopped it (the file is then missing)."""
    run_dir = Path(run_dir)
    if (_closed and not last) or not run_dir.is_dir():  # a folder already removed is not made again
        return
    with contextlib.suppress(Exception):
        lines = [one_line(reason, None),
                 f"stopped at: {datetime.now(UTC).isoformat(timespec='seconds')}",
                 f"newest checkpoint: {'none' if checkpoint is None else f'round {checkpoint}'}"]
        if error is not None:
            lines += ["", "".join(traceback.format_exception(error)).rstrip()]
        write_bytes(run_dir / STOPPED_FILE, ("\n".join(lines) + "\n").encode())


def clear_stop(run_dir: str | Path) -> None:
    """Remove ``stopped.txt`` from ``run_dir`` (its run starts again); absent is fine."""
    (Path(run_dir) / STOPPED_FILE).unlink(missing_ok=True)


def read_stop(run_dir: str | Path) -> str | None:
    """The one-line reason in ``run_dir``'s ``stopped.txt``, or ``None`` without one."""
    try:
        text = (Path(run_dir) / STOPPED_FILE).read_text(errors="replace")
    except OSError:
        return None
    return text.splitlines()[0] if text.strip() else None
