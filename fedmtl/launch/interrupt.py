"""Stopping ``fedmtl run`` and ``fedmtl sweep`` on Ctrl-C (SIGINT) or SIGTERM.

Within :func:`stop_on_signals` either signal raises :class:`Stopped` in the main thread
(which Flower's simulation leaves waiting on its worker threads, so it wakes at once), with
the processes this one had started when the signal came. :func:`finish_interrupted` then
shuts Ray down, stops every process this one started (Ray's GCS server, raylet, workers,
dashboard and runtime-env agents; also those that Flower's own shutdown of Ray, on the way
out of the simulation, left orphaned and still running), prints which round the
run stopped after and the command that continues it, and ends the process with exit code
130 (SIGINT) or 143 (SIGTERM) without waiting for the ServerApp's thread, which Flower
started and which would otherwise wait out ``server.timeout``.

Every file of a completed round is already on disk: ``rounds.csv``, ``summary.json`` and the
checkpoints are written atomically (:mod:`fedmtl.atomic`), and a resumed run cuts
``metrics.csv`` back to its checkpoint's round.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

from fedmtl.one_line import shell_path

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
"""Exit code per signal: 128 + the signal's number, as a shell reports a process it killed."""


class Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; ``signum`` says which, and ``processes`` (``{pid: start
    time}``) are this process's descendants at that moment."""

    def __init__(self, signum: int, processes: dict[int, int] | None = None) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.processes = dict(processes or {})


@contextlib.contextmanager
def _handling_signals(handler: Callable[[int, object], None]) -> Iterator[None]:
    """Within the block, ``handler`` handles SIGINT and SIGTERM (the previous handlers come back
    on exit); outside the main thread nothing is done."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {s: signal.getsignal(s) for s in EXIT_CODES}
    for s in saved:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, previous in saved.items():  # None: a handler not set from Python, put back as the default
            signal.signal(s, signal.SIG_DFL if previous is None else previous)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM silence the ``flwr`` logger and raise
    :class:`Stopped` in the main thread; the previous handlers are restored on exit. Outside
    the main thread nothing is done."""

    def _raise(signum: int, frame: object) -> None:
        # from now on Flower's workers would log every in-flight message's lost actor
        logging.getLogger("flwr").disabled = True
        # now, before unwinding: Flower's way out shuts Ray down, and Ray's workers, orphaned
        # by their raylet, may run on for a second or more, no longer our descendants
        raise Stopped(signum, living_descendants())

    with _handling_signals(_raise):
        yield


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Within the block (a shutdown), SIGINT and SIGTERM are noted, not acted on: a second
    Ctrl-C cannot cut a shutdown short and leave processes running. One that came raises
    :class:`KeyboardInterrupt` when the block ends. Outside the main thread nothing is done."""
    came: list[int] = []
    ignored = {s for s in EXIT_CODES if signal.getsignal(s) == signal.SIG_IGN}  # a background job's SIGINT
    with _handling_signals(lambda signum, frame: None if signum in ignored else came.append(signum)):
        yield
    if came:
        raise KeyboardInterrupt(signal.Signals(came[0]).name)


def _stat(pid: int) -> tuple[int, int] | None:
    """``(parent pid, start time)`` of a process from ``/proc/<pid>/stat``, ``None`` if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # after "pid (name)": state, ppid, ..., starttime
    return int(fields[1]), int(fields[19])


def descendants(pid: int | None = None) -> dict[int, int]:
    """Every living descendant of ``pid`` (default this process): ``{pid: start time}``."""
    root = os.getpid() if pid is None else pid
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            stats[int(entry.name)] = stat
    found: dict[int, int] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, start) in stats.items():
            if ppid == parent and child not in found:
                found[child] = start
                frontier.append(child)
    return found


def living_descendants() -> dict[int, int]:
    """:func:`descendants`, or ``{}`` where ``/proc`` cannot be read."""
    try:
        return descendants()
    except OSError:
        return {}


def _alive(processes: dict[int, int]) -> dict[int, int]:
    """Those of ``processes`` still running (same pid, same start time, not a zombie)."""
    alive = {}
    for pid, start in processes.items():
        stat = _stat(pid)
        if stat is None or stat[1] != start:
            continue
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive[pid] = start
    return alive


def stop_processes(processes: dict[int, int], grace: float = 3.0) -> None:
    """SIGTERM ``processes`` (``{pid: start time}``), then SIGKILL those alive after ``grace`` s."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 1.0)):
        left = _alive(processes)
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while _alive(left) and time.monotonic() < deadline:
            time.sleep(0.05)


def shutdown_engine(started_before: dict[int, int] | None = None) -> None:
    """Shut Ray down (when this process started or joined it) and stop every process this
    one started that is still running afterwards: its descendants now and after the
    shutdown, and ``started_before`` (``{pid: start time}``, e.g. :attr:`Stopped.processes`:
    a process that has lost its parent since is no descendant any more)."""
    # before Ray's raylet goes: its agents and workers would lose their parent
    started = {**(started_before or {}), **descendants()}
    from fedmtl.launch.ray_pipeline import shut_down_ray

    shut_down_ray()  # the engine's threads, still running, submit nothing to it from now on
    stop_processes({**started, **descendants()})


def interrupted_message(run_dir: Path | None, resume: str | None = None) -> str:
    """``interrupted after round R; continue with: ...`` for a run folder (or ``resume``,
    the command that continues, e.g. a sweep's)."""
    if resume is not None:
        return f"interrupted; continue with: {resume}"
    if run_dir is None:
        return "interrupted before the run started"
    from fedmtl.results import nothing_recorded

    if finished(run_dir):
        return _finished_message(run_dir)
    from fedmtl.results import newest_checkpoint_round

    done = newest_checkpoint_round(run_dir)
    if done is None and run_dir.is_dir() and nothing_recorded(run_dir):
        return f"interrupted before the run started; nothing was recorded (run again: --out {run_dir} reuses it)"
    from fedmtl.resumption import not_resumable

    why = not_resumable(run_dir)
    if done is None:
        if why is not None:
            return f"interrupted before the first checkpoint; nothing to resume in {run_dir} ({why})"
        return ("interrupted before the first checkpoint; start it again from round 1 with: "
                f"fedmtl run --resume {shell_path(run_dir)}")
    if why is not None:
        return (f"interrupted after round {done}; its results so far are in {run_dir}; "
                f"a resume cannot continue it ({why})")
    return f"interrupted after round {done}; continue with: fedmtl run --resume {shell_path(run_dir)}"


def finished(run_dir: Path) -> bool:
    """The run in ``run_dir`` has finished the rounds its ``config.toml`` asks for: its
    ``summary.json`` is written and counts as many rounds (a resume that extends a finished run
    rewrites ``config.toml`` with more rounds before its old summary is removed)."""
    import json
    import tomllib

    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        rounds = tomllib.loads((run_dir / "config.toml").read_text())["run"]["rounds"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return isinstance(summary, dict) and summary.get("rounds") == rounds


def _finished_message(run_dir: Path) -> str:
    """What an interrupt after the run's last round says: its results are complete, or which
    of its last files it had not written yet and the command that writes them (the resume
    where one works, else ``fedmtl plot`` for the figures)."""
    from fedmtl.results import unfinished_outputs
    from fedmtl.resumption import not_resumable
    from fedmtl.validation import load_config

    try:
        missing = unfinished_outputs(run_dir, load_config(run_dir / "config.toml"))
    except Exception:  # noqa: BLE001 - the message must come whatever the folder holds
        missing = None
    if missing == []:
        return f"interrupted after the run finished; its results are complete in {run_dir}"
    files = f" ({', '.join(missing)})" if missing else ""
    what = f"interrupted after the run finished, while it wrote its last files{files}"
    if not_resumable(run_dir) is None:
        return f"{what}; write them with: fedmtl run --resume {shell_path(run_dir)}"
    return f"{what}; its tables are complete; draw its figures with: fedmtl plot {shell_path(run_dir)}"


def _stopped_midway(run_dir: Path) -> bool:
    """``run_dir`` is a run's folder that recorded something and has rounds left to run."""
    from fedmtl.results import nothing_recorded

    return ((run_dir / "config.toml").is_file() and not nothing_recorded(run_dir)
            and not finished(run_dir))


def finish_interrupted(stopped: Stopped, run_dir: Path | None, resume: str | None = None) -> NoReturn:
    """Stop Ray and this process's children, print :func:`interrupted_message` to stderr and
    end the process with :data:`EXIT_CODES` of the signal (further signals are ignored)."""
    for s in EXIT_CODES:
        signal.signal(s, signal.SIG_IGN)
    logging.getLogger("flwr").disabled = True  # again: leaving simulate restored it
    from fedmtl import stop_record
    from fedmtl.results import newest_checkpoint_round

    stop_record.close()  # the run stopped for the signal, not for what its ServerApp raises now
    shutdown_engine(stopped.processes)
    message = interrupted_message(run_dir, resume)
    if resume is None and run_dir is not None and _stopped_midway(run_dir):
        stop_record.record_stop(run_dir, f"interrupted by {signal.Signals(stopped.signum).name}",
                                newest_checkpoint_round(run_dir), last=True)
    print(message, file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(EXIT_CODES.get(stopped.signum, 130))
