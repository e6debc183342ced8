"""One fedmtl process at a time in a run folder: an exclusive lock on its marker file.

Two processes writing one run folder (a resume started twice, a run and its resume) would
overwrite each other's rows, heads and checkpoints. A process that writes a run folder holds
an advisory lock (``flock``) on the folder's :data:`fedmtl.results.RUN_MARKER` for as long as
it writes; a second one is refused at once, in one line, before it writes anything. The
operating system drops the lock when the process ends, however it ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

MARKER = ".fedmtl-run"
"""The file locked (:data:`fedmtl.results.RUN_MARKER`, which every run folder holds)."""


class RunFolderBusy(RuntimeError):
    """Another process is writing the run folder."""


_held: dict[str, int] = {}
"""The run folders this process holds (real path → nesting depth): holding one again is free."""
_held_lock = threading.Lock()


@contextlib.contextmanager
def holding(run_dir: str | Path) -> Iterator[None]:
    """Hold the run folder's lock for the block; within a block holding it already (in any
    thread of this process) the block simply runs: a resume holds its folder from its checks
    to its run's end, and the run's server, which holds its folder too, runs inside.

    Raises
    ------
    RunFolderBusy
        When another process holds it (one line naming the folder).
    """
    key = os.path.realpath(run_dir)
    with _held_lock:
        nested = key in _held
        if nested:
            _held[key] += 1
    if nested:
        try:
            yield
        finally:
            with _held_lock:
                _held[key] -= 1
        return
    path = Path(run_dir) / MARKER
    descriptor = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise RunFolderBusy(f"'{run_dir}' is in use by another fedmtl process (a run or a resume of it); "
                            "wait for it to end, or stop it") from None
    with _held_lock:
        _held[key] = 1
    try:
        yield
    finally:
        with _held_lock:
            del _held[key]
        os.close(descriptor)  # closing the file releases the lock


def refuse_if_busy(run_dir: str | Path) -> None:
    """Raise :class:`RunFolderBusy` at once when another process holds the run folder's lock
    (a resume's checks, by a caller that does not hold the folder)."""
    with holding(run_dir):
        pass
