"""Worker processes that run a sweep's runs several at a time (``fedmtl sweep --jobs N``).

A :class:`WorkerPool` starts ``N`` persistent worker processes (the ``spawn`` start method: a
fresh interpreter, no fork of a process with threads), so each pays its start-up (imports) once,
not once per run. The sweep (:func:`fedmtl.launch.sweep.run_sweep`) hands each idle worker a run
(:meth:`WorkerPool.submit`: the config file, the ``--set`` strings and the run folder; the worker
loads the config itself, so the user's plugins are imported there too) and waits for the next
outcome (:meth:`WorkerPool.wait`). The sweep alone writes ``sweep.json``, prints and moves run
folders; a worker only runs.

A worker that dies (killed, a crash) fails only the run it held, with an error naming its exit
code or signal, and is replaced. :meth:`WorkerPool.stop` ends every worker and what it started
(Ctrl-C, SIGTERM on the sweep); a run stopped so is left as an interrupted run, which the next
invocation of the sweep continues from its checkpoint. Workers ignore SIGINT (a Ctrl-C on a
terminal reaches every process of the group): the sweep stops them.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from fedmtl.one_line import error_and_traceback

Runner = Callable[[Any, Path, bool], None]
"""``runner(config, run folder, quiet)``: :func:`fedmtl.launch.sweep.execute_run`, or any
function a worker can import by name (it is pickled by reference)."""


@dataclass
class Job:
    """One run for a worker: ``load_config(config, overrides)`` run into ``run_dir``; ``key``
    names it in the outcome."""

    key: int
    config: str | None
    overrides: list[str]
    run_dir: str


@dataclass
class Outcome:
    """How a job ended: ``error`` is ``""`` when the run finished, else its error in one line
    (:func:`fedmtl.one_line.error_and_traceback`) or why its worker died, and ``traceback`` the end of
    its traceback; ``duration_s`` as the worker measured it (since it was handed over when the
    worker died)."""

    key: int
    error: str
    duration_s: float
    traceback: str = ""


def _die_with_the_sweep() -> None:
    """Have the kernel kill this worker when the sweep's process ends (Linux: ``prctl``'s
    ``PR_SET_PDEATHSIG``). A sweep killed outright (``kill -9``) cannot stop its workers, and
    they ran their runs on, orphaned, into folders that the same sweep command, run again,
    resumes: two processes on one run. Elsewhere a worker still notices the sweep's end between
    runs (its pipe closes)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = multiprocessing.parent_process()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent is not None and os.getppid() != parent.pid:  # the sweep ended before the call
        os._exit(1)


PR_SET_PDEATHSIG = 1
"""``prctl``'s option: the signal this process gets when its parent ends (linux/prctl.h)."""


def _work(conn: Connection, runner: Runner, quiet: bool) -> None:
    """A worker's loop: run each job received until ``None`` or the sweep's end of the pipe closes."""
    _die_with_the_sweep()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the sweep stops its workers
    from fedmtl.validation import load_config

    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        started, error, trace = time.monotonic(), "", ""
        try:
            runner(load_config(job.config, job.overrides), Path(job.run_dir), quiet)
        except Exception as exc:  # noqa: BLE001 - recorded as the run's failure, as in a sweep of one job
            error, trace = error_and_traceback(exc)
        conn.send(Outcome(job.key, error, round(time.monotonic() - started, 2), trace))


def death_message(exitcode: int | None) -> str:
    """``the worker process running this run died (killed by SIGKILL)`` or ``(exit code 3)``."""
    if exitcode is not None and exitcode < 0:
        try:
            how = f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            how = f"killed by signal {-exitcode}"
    else:
        how = f"exit code {exitcode}"
    return f"the worker process running this run died ({how}); the other runs went on"


@dataclass
class _Worker:
    process: Any  # multiprocessing's SpawnProcess
    conn: Connection
    job: Job | None = None
    handed_at: float = 0.0


class WorkerPool:
    """``size`` worker processes, each running one job at a time with ``runner``.

    Use as a context manager: on leaving normally the workers are told to end and joined; on an
    exception (Ctrl-C, SIGTERM) they are stopped at once with their processes (:meth:`stop`).
    """

    def __init__(self, size: int, runner: Runner, quiet: bool) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._runner, self._quiet = runner, quiet
        self._workers: list[_Worker | None] = []  # None: one that died, replaced when next needed
        for _ in range(size):
            self._workers.append(self._start())

    def _start(self) -> _Worker:
        ours, theirs = self._context.Pipe()
        process = self._context.Process(target=_work, args=(theirs, self._runner, self._quiet),
                                        name="fedmtl-sweep-worker")
        process.start()
        theirs.close()
        return _Worker(process, ours)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, kind: type | None, *_: object) -> None:
        if kind is None:
            self.close()
        else:
            self.stop()

    @property
    def idle(self) -> bool:
        """A worker has no job (or one is to be replaced)."""
        return any(w is None or w.job is None for w in self._workers)

    def _busy(self) -> list[_Worker]:
        return [w for w in self._workers if w is not None and w.job is not None]

    def submit(self, job: Job) -> None:
        """Hand ``job`` to an idle worker (a dead one is replaced first)."""
        index = next(i for i, w in enumerate(self._workers) if w is None or w.job is None)
        worker = self._workers[index]
        if worker is None or not worker.process.is_alive():
            if worker is not None:
                self._retire(worker)
            worker = self._workers[index] = self._start()
        worker.conn.send(job)
        worker.job, worker.handed_at = job, time.monotonic()

    def wait(self) -> list[Outcome]:
        """Block until a job ends; the outcomes of every job that has ended (that of a worker
        that died: failed, naming its exit code or signal)."""
        busy = self._busy()
        wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
        outcomes = []
        for worker in busy:
            outcome = self._receive(worker)
            if outcome is None and worker.process.is_alive():
                continue
            if outcome is None:  # died holding its job
                worker.process.join()
                outcome = Outcome(worker.job.key, death_message(worker.process.exitcode),
                                  round(time.monotonic() - worker.handed_at, 2))
                self._retire(worker)
                self._workers[self._workers.index(worker)] = None
            else:
                worker.job = None
            outcomes.append(outcome)
        return outcomes

    @staticmethod
    def _receive(worker: _Worker) -> Outcome | None:
        """The worker's outcome, if it sent one."""
        try:
            return worker.conn.recv() if worker.conn.poll() else None
        except (EOFError, OSError):
            return None

    @staticmethod
    def _retire(worker: _Worker) -> None:
        worker.conn.close()
        worker.process.join(timeout=1.0)
        with contextlib.suppress(ValueError):
            worker.process.close()

    def close(self) -> None:
        """Tell every worker to end and wait for it."""
        for worker in filter(None, self._workers):
            with contextlib.suppress(OSError):
                worker.conn.send(None)
        for worker in filter(None, self._workers):
            worker.process.join(timeout=10.0)
        self.stop()  # any left

    def stop(self) -> None:
        """Stop every worker and the processes it started (SIGTERM, then SIGKILL)."""
        from fedmtl.launch.interrupt import descendants, stop_processes

        self._workers = [w for w in self._workers if w is not None]
        trees: dict[int, int] = {}
        for worker in self._workers:
            with contextlib.suppress(OSError, ValueError):
                if worker.process.is_alive():
                    trees.update(descendants(worker.process.pid))
        for worker in self._workers:
            with contextlib.suppress(ValueError):
                if worker.process.is_alive():
                    worker.process.terminate()
        stop_processes(trees)
        for worker in self._workers:
            with contextlib.suppress(ValueError):
                worker.process.join(timeout=3.0)
                if worker.process.is_alive():
                    worker.process.kill()
                    worker.process.join()
            self._retire(worker)
        self._workers = []
