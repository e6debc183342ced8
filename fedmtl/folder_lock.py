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
SWEEP_MARKER = ".fedmtl-sweep"
"""The file a sweep locks in its folder (:func:`holding_sweep`): one sweep at a time writes its
``sweep.json`` and starts, clears or moves its run folders."""


class RunFolderBusy(RuntimeError):
    """Another process is writing the run folder."""


_held: dict[str, list[int]] = {}
"""The run folders this process holds: real path → [holders, the locked file's descriptor]."""
_held_lock = threading.Lock()


@contextlib.contextmanager
def holding(run_dir: str | Path, join: bool = False, marker: str = MARKER,
            user: str = "a run or a resume of it") -> Iterator[None]:
    """Hold the run folder's lock for the block.

    With ``join``, a folder this process holds already is joined instead: a resume holds its
    folder from its checks to its run's end, and the run's server (in another thread) joins
    that hold. The lock goes when the last holder leaves, whichever leaves last. Without
    ``join`` a folder held anywhere, in this process too, is refused: two runs of one folder in
    threads of one process would overwrite each other as two processes would.

    ``marker`` is the file locked in the folder, ``user`` who holds it (in the error).

    Raises
    ------
    RunFolderBusy
        When another process holds it, or this one without ``join`` (one line naming the folder).
    """
    key = os.path.join(os.path.realpath(run_dir), marker)
    if join:
        with _held_lock:
            entry = _held.get(key)
            if entry is not None:
                entry[0] += 1
        if entry is not None:
            try:
                yield
            finally:
                _leave(key)
            return
    path = Path(run_dir) / marker
    descriptor = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise RunFolderBusy(f"'{run_dir}' is in use by another fedmtl process ({user}); "
                            "wait for it to end, or stop it") from None
    with _held_lock:
        _held[key] = [1, descriptor]
    try:
        yield
    finally:
        _leave(key)


def _leave(key: str) -> None:
    """One holder of ``key`` leaves; the last one releases the lock (closing the file does)."""
    with _held_lock:
        entry = _held[key]
        entry[0] -= 1
        if entry[0]:
            return
        del _held[key]
    os.close(entry[1])


def holding_sweep(folder: str | Path) -> contextlib.AbstractContextManager[None]:
    """Hold a sweep folder (:data:`SWEEP_MARKER`) for the block: a second sweep into it is
    refused at once (:class:`RunFolderBusy`), before it writes ``sweep.json`` or touches a run
    folder (two sweeps at once left a ``sweep.json`` saying a run failed that had finished)."""
    return holding(folder, marker=SWEEP_MARKER, user="a sweep into it")


def holding_run(run_dir: str | Path) -> contextlib.AbstractContextManager[None]:
    """:func:`holding` of ``run_dir`` when it is a run folder (it holds :data:`MARKER` and is no
    link), else nothing: a resume holds its folder from its checks to its run's end, and its
    checks say what is wrong with a folder that is no run's."""
    run_dir = Path(run_dir)
    if (run_dir / MARKER).is_file() and not run_dir.is_symlink():
        return holding(run_dir)
    return contextlib.nullcontext()


def refuse_if_busy(run_dir: str | Path) -> None:
    """Raise :class:`RunFolderBusy` at once when another process holds the run folder's lock
    (a resume's checks; free when this process holds it)."""
    with holding(run_dir, join=True):
        pass
